//! Who is calling and what they may see.
//!
//! API keys come from the config as SHA-256 hashes (the keys are 256-bit random strings,
//! so a plain hash cannot be brute-forced and a leaked config leaks no key). A key is an
//! `admin` (every job, operator routes) or a `client` of one tenant (its tenant's jobs
//! only; another tenant's job is a 404). Browsers get short-lived signed tokens instead of
//! keys where they cannot send headers ([`token`]).
//!
//! With no keys configured Kiln runs in *open mode*: every caller is an operator. That is
//! allowed on a loopback address, or anywhere when `auth.mode = "open"` says so.

pub mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use token::{Signer, TokenKind};

use crate::store::{BatchRecord, JobRecord};

/// Every API key starts with this, so one found in a URL or a log is recognisable.
pub const KEY_PREFIX: &str = "kiln_";

/// `[auth]` in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `"keys"` (a key on every call) or `"open"` (no keys). Default: `keys` when keys are
    /// configured, else `open`, which is then only allowed on a loopback address.
    pub mode: Option<AuthMode>,
    /// The API keys (`[[auth.keys]]`).
    pub keys: Vec<KeyConfig>,
    /// Lifetime of a job's events token, seconds. Default 3600.
    pub job_token_ttl_secs: Option<u64>,
    /// Lifetime of a dashboard session cookie, seconds. Default 43,200 (12 h).
    pub session_ttl_secs: Option<u64>,
    /// Serve `GET /metrics` without a key. Default false: it needs an admin key.
    pub public_metrics: bool,
    /// Mark the session cookie `Secure` (HTTPS only). Default: true unless the server
    /// listens on loopback.
    pub secure_cookies: Option<bool>,
}

/// `auth.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every call needs a key (or a token where one is accepted).
    Keys,
    /// No keys: every caller is an operator.
    Open,
}

/// `[[auth.keys]]`: one API key, by its hash.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// A name for logs and sessions: letters, digits, `-` and `_`.
    pub name: String,
    /// `admin` or `client`.
    pub role: Role,
    /// The tenant a client key belongs to (required for clients; optional for admins,
    /// whose jobs are then created in it).
    pub tenant: Option<String>,
    /// Hex SHA-256 of the key, as `kiln keys new` prints it.
    pub sha256: String,
}

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every job of every tenant, and the operator routes.
    Admin,
    /// Its tenant's jobs.
    Client,
}

impl Role {
    /// The name used in the config and in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Client => "client",
        }
    }
}

/// A configured key, once its hash matched.
#[derive(Debug)]
pub struct Identity {
    /// The key's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its tenant.
    pub tenant: Option<String>,
}

/// The caller of one request.
#[derive(Clone, Debug)]
pub enum Principal {
    /// Open mode: anyone, with operator rights.
    Open,
    /// An API key (from the `Authorization` header or a session cookie).
    Key(Arc<Identity>),
    /// A job's events token: that job's event stream only.
    JobReader(Uuid),
}

impl Principal {
    /// Whether operator routes are allowed.
    pub fn is_admin(&self) -> bool {
        match self {
            Self::Open => true,
            Self::Key(identity) => identity.role == Role::Admin,
            Self::JobReader(_) => false,
        }
    }

    /// The tenant new jobs are created in.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Self::Key(identity) => identity.tenant.as_deref(),
            Self::Open | Self::JobReader(_) => None,
        }
    }

    /// Whether `job` exists for this caller. A job it may not see must be answered
    /// exactly like an unknown one.
    pub fn sees(&self, job: &JobRecord) -> bool {
        match self {
            Self::JobReader(id) => *id == job.id,
            _ => self.sees_tenant(job.tenant.as_deref()),
        }
    }

    /// Whether `batch` exists for this caller (a batch's events token reads that batch
    /// only).
    pub fn sees_batch(&self, batch: &BatchRecord) -> bool {
        match self {
            Self::JobReader(id) => *id == batch.id,
            _ => self.sees_tenant(batch.tenant.as_deref()),
        }
    }

    /// Whether events of a job in `tenant` may reach this caller.
    pub fn sees_tenant(&self, tenant: Option<&str>) -> bool {
        match self {
            Self::Open => true,
            Self::Key(identity) => match identity.role {
                Role::Admin => true,
                Role::Client => tenant.is_some() && tenant == identity.tenant.as_deref(),
            },
            Self::JobReader(_) => false,
        }
    }

    /// The tenant filter for listings: `None` sees every job.
    pub fn tenant_filter(&self) -> Option<&str> {
        match self {
            Self::Key(identity) if identity.role == Role::Client => identity.tenant.as_deref(),
            _ => None,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials, and the server needs them.
    Missing,
    /// A key this server does not know.
    UnknownKey,
    /// A token (or session cookie) that is forged, expired or for something else.
    BadToken,
}

/// Access control of a running server.
pub struct Auth {
    open: bool,
    by_hash: HashMap<[u8; 32], Arc<Identity>>,
    by_name: HashMap<String, Arc<Identity>>,
    signer: Signer,
    /// Lifetime of a job's events token.
    pub job_token_ttl: Duration,
    /// Lifetime of a session cookie.
    pub session_ttl: Duration,
    /// `GET /metrics` without a key.
    pub public_metrics: bool,
    /// The session cookie's `Secure` attribute.
    pub secure_cookies: bool,
}

/// A token handed to a client, with its expiry.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The token.
    pub token: String,
    /// Expiry, ms since the epoch.
    pub expires_at_ms: u64,
}

impl Auth {
    /// Access control from `[auth]`, for a server listening on `addr` with its token
    /// secret in `data_dir`. Refuses open mode on a non-loopback address unless
    /// `mode = "open"` asks for it.
    pub fn from_config(
        config: &AuthConfig,
        addr: SocketAddr,
        data_dir: &Path,
    ) -> anyhow::Result<Self> {
        let mut identities = Vec::new();
        for key in &config.keys {
            identities.push(key.identity()?);
        }
        let open = match config.mode {
            Some(AuthMode::Open) => {
                anyhow::ensure!(
                    config.keys.is_empty(),
                    "auth.mode = \"open\" but [[auth.keys]] are configured: remove the keys or \
                     set mode = \"keys\""
                );
                true
            }
            Some(AuthMode::Keys) => {
                anyhow::ensure!(
                    !config.keys.is_empty(),
                    "auth.mode = \"keys\" but no [[auth.keys]] are configured; make one with \
                     `kiln keys new`"
                );
                false
            }
            None if config.keys.is_empty() => {
                anyhow::ensure!(
                    addr.ip().is_loopback(),
                    "refusing to serve {addr} without API keys: anyone who can reach it could \
                     read and submit jobs. Add [[auth.keys]] (see `kiln keys new`), listen on \
                     127.0.0.1, or set auth.mode = \"open\" to accept that"
                );
                true
            }
            None => false,
        };
        let signer = Signer::in_data_dir(data_dir)?;
        let mut auth = Self::build(open, identities, signer);
        if let Some(secs) = config.job_token_ttl_secs {
            auth.job_token_ttl = Duration::from_secs(secs);
        }
        if let Some(secs) = config.session_ttl_secs {
            auth.session_ttl = Duration::from_secs(secs);
        }
        auth.public_metrics = config.public_metrics;
        auth.secure_cookies = config.secure_cookies.unwrap_or(!addr.ip().is_loopback());
        Ok(auth)
    }

    fn build(open: bool, identities: Vec<(Identity, [u8; 32])>, signer: Signer) -> Self {
        let mut by_hash = HashMap::new();
        let mut by_name = HashMap::new();
        for (identity, hash) in identities {
            let identity = Arc::new(identity);
            by_name.insert(identity.name.clone(), identity.clone());
            by_hash.insert(hash, identity);
        }
        Self {
            open,
            by_hash,
            by_name,
            signer,
            job_token_ttl: Duration::from_secs(3600),
            session_ttl: Duration::from_secs(12 * 3600),
            public_metrics: false,
            secure_cookies: false,
        }
    }

    /// Whether no key is needed.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// A one-line description for the startup log.
    pub fn describe(&self) -> String {
        if self.open {
            return "open mode: no API key is needed, every caller is an operator".into();
        }
        let admins = self
            .by_name
            .values()
            .filter(|i| i.role == Role::Admin)
            .count();
        let mut tenants: Vec<&str> = self
            .by_name
            .values()
            .filter_map(|i| i.tenant.as_deref())
            .collect();
        tenants.sort_unstable();
        tenants.dedup();
        format!(
            "API keys required: {} keys ({admins} admin), tenants {tenants:?}",
            self.by_name.len()
        )
    }

    /// The caller behind an `Authorization: Bearer` key or a session cookie. In open mode,
    /// a caller with neither is [`Principal::Open`].
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        session: Option<&str>,
    ) -> Result<Principal, Refusal> {
        if self.open {
            return Ok(Principal::Open);
        }
        if let Some(key) = bearer {
            return self
                .by_hash
                .get(&hash_bytes(key))
                .map(|identity| Principal::Key(identity.clone()))
                .ok_or(Refusal::UnknownKey);
        }
        if let Some(cookie) = session {
            return self
                .signer
                .verify(TokenKind::Session, cookie, now_unix())
                .and_then(|name| self.by_name.get(&name).cloned())
                .map(Principal::Key)
                .ok_or(Refusal::BadToken);
        }
        Err(Refusal::Missing)
    }

    /// The caller behind a job's events token, for job `id` only.
    pub fn authenticate_job_token(&self, token: &str, id: Uuid) -> Result<Principal, Refusal> {
        match self.signer.verify(TokenKind::JobEvents, token, now_unix()) {
            Some(subject) if subject == id.simple().to_string() => Ok(Principal::JobReader(id)),
            _ => Err(Refusal::BadToken),
        }
    }

    /// A read-only token for job `id`'s event stream.
    pub fn job_token(&self, id: Uuid) -> IssuedToken {
        self.issue(
            TokenKind::JobEvents,
            &id.simple().to_string(),
            self.job_token_ttl,
        )
    }

    /// A session cookie value for `identity`.
    pub fn session_token(&self, identity: &Identity) -> IssuedToken {
        self.issue(TokenKind::Session, &identity.name, self.session_ttl)
    }

    fn issue(&self, kind: TokenKind, subject: &str, ttl: Duration) -> IssuedToken {
        let expires = now_unix().saturating_add(ttl.as_secs().max(1));
        IssuedToken {
            token: self.signer.sign(kind, subject, expires),
            expires_at_ms: expires.saturating_mul(1000),
        }
    }
}

impl KeyConfig {
    fn identity(&self) -> anyhow::Result<(Identity, [u8; 32])> {
        let name = &self.name;
        anyhow::ensure!(
            is_plain_name(name),
            "[[auth.keys]] name {name:?}: use 1 to 64 letters, digits, '-' or '_'"
        );
        let hash = hex::decode(self.sha256.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .with_context(|| {
                format!(
                    "[[auth.keys]] {name}: sha256 must be 64 hex digits (the key's SHA-256, as \
                     `kiln keys new` prints it), never the key itself"
                )
            })?;
        if let Some(tenant) = &self.tenant {
            anyhow::ensure!(
                is_plain_name(tenant),
                "[[auth.keys]] {name}: tenant {tenant:?}: use 1 to 64 letters, digits, '-' or '_'"
            );
        }
        anyhow::ensure!(
            self.role == Role::Admin || self.tenant.is_some(),
            "[[auth.keys]] {name}: a client key needs a tenant"
        );
        let identity = Identity {
            name: name.clone(),
            role: self.role,
            tenant: self.tenant.clone(),
        };
        Ok((identity, hash))
    }
}

/// A new random API key: `kiln_` and 64 hex digits (256 bits).
pub fn new_key() -> anyhow::Result<String> {
    Ok(format!(
        "{KEY_PREFIX}{}",
        hex::encode(token::random_bytes()?)
    ))
}

/// The hex SHA-256 of `key`, as `[[auth.keys]] sha256` holds it.
pub fn hash_key(key: &str) -> String {
    hex::encode(hash_bytes(key))
}

fn hash_bytes(key: &str) -> [u8; 32] {
    Sha256::digest(key.trim().as_bytes()).into()
}

fn is_plain_name(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn now_unix() -> u64 {
    crate::store::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> AuthConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn open_mode_is_loopback_only_unless_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let none = AuthConfig::default();
        assert!(
            Auth::from_config(&none, addr("127.0.0.1:1"), dir.path())
                .unwrap()
                .is_open()
        );
        let err = Auth::from_config(&none, addr("0.0.0.0:1"), dir.path())
            .err()
            .unwrap();
        assert!(err.to_string().contains("without API keys"), "{err}");
        let asked = config("mode = \"open\"");
        assert!(
            Auth::from_config(&asked, addr("0.0.0.0:1"), dir.path())
                .unwrap()
                .is_open()
        );
    }

    #[test]
    fn keys_are_matched_by_hash_and_carry_role_and_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let key = new_key().unwrap();
        let text = format!(
            "[[keys]]\nname = \"web\"\nrole = \"client\"\ntenant = \"acme\"\nsha256 = \"{}\"",
            hash_key(&key)
        );
        let auth = Auth::from_config(&config(&text), addr("0.0.0.0:1"), dir.path()).unwrap();
        let Ok(Principal::Key(identity)) = auth.authenticate(Some(&key), None) else {
            panic!("the key was not accepted");
        };
        assert_eq!(identity.tenant.as_deref(), Some("acme"));
        assert_eq!(
            auth.authenticate(Some("kiln_wrong"), None).err(),
            Some(Refusal::UnknownKey)
        );
        assert_eq!(auth.authenticate(None, None).err(), Some(Refusal::Missing));
        let session = auth.session_token(&identity);
        assert!(matches!(
            auth.authenticate(None, Some(&session.token)),
            Ok(Principal::Key(_))
        ));
        assert_eq!(
            auth.authenticate(None, Some("session.web.99999999999.00"))
                .err(),
            Some(Refusal::BadToken)
        );
    }

    #[test]
    fn bad_key_entries_are_startup_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "[[keys]]\nname = \"a\"\nrole = \"client\"\nsha256 = \"00\"",
                "64 hex",
            ),
            (
                "[[keys]]\nname = \"a\"\nrole = \"client\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"",
                "needs a tenant",
            ),
            ("mode = \"keys\"", "no [[auth.keys]]"),
        ];
        for (text, expected) in cases {
            let err = Auth::from_config(&config(text), addr("127.0.0.1:1"), dir.path())
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn a_job_token_opens_that_job_only() {
        let auth = Auth::build(true, Vec::new(), Signer::ephemeral().unwrap());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let token = auth.job_token(a).token;
        assert!(matches!(
            auth.authenticate_job_token(&token, a),
            Ok(Principal::JobReader(id)) if id == a
        ));
        assert_eq!(
            auth.authenticate_job_token(&token, b).err(),
            Some(Refusal::BadToken)
        );
    }
}
