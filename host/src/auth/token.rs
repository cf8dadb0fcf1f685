//! Short-lived signed tokens: a job's read-only events token (for `EventSource`, which
//! cannot send headers) and the dashboard's session cookie.
//!
//! A token is `KIND.SUBJECT.EXPIRY.MAC`: the MAC is HMAC-SHA256 over the first three
//! parts with a secret kept in the data dir, so tokens need no table, survive a restart,
//! and are all revoked at once by deleting the secret file.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The secret's file inside the data dir.
pub const SECRET_FILE: &str = "token-secret";

/// What a token grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// Read one job's event stream; the subject is the job id.
    JobEvents,
    /// A dashboard session; the subject is the API key's name.
    Session,
}

impl TokenKind {
    fn tag(self) -> &'static str {
        match self {
            Self::JobEvents => "job",
            Self::Session => "session",
        }
    }
}

/// Signs and checks tokens.
pub struct Signer {
    secret: [u8; 32],
}

impl Signer {
    /// A signer with a fresh random secret (tokens die with the process).
    pub fn ephemeral() -> anyhow::Result<Self> {
        Ok(Self {
            secret: random_bytes()?,
        })
    }

    /// The signer of `data_dir`: reads its secret, creating it (mode 0600) on first start.
    pub fn in_data_dir(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(SECRET_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let bytes = hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .with_context(|| {
                    format!(
                        "{} is not a token secret (64 hex digits); delete it to make a new one",
                        path.display()
                    )
                })?;
            return Ok(Self { secret: bytes });
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
        let secret = random_bytes()?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&path)
            .with_context(|| format!("creating the token secret {}", path.display()))?;
        file.write_all(hex::encode(secret).as_bytes())?;
        file.sync_all()?;
        Ok(Self { secret })
    }

    /// A token of `kind` for `subject`, valid until `expires_unix` (seconds).
    pub fn sign(&self, kind: TokenKind, subject: &str, expires_unix: u64) -> String {
        let body = format!("{}.{subject}.{expires_unix}", kind.tag());
        let mac = self.mac(&body).finalize().into_bytes();
        format!("{body}.{}", hex::encode(mac))
    }

    /// The subject of `token` when it is of `kind`, unexpired at `now_unix`, and signed by
    /// this secret. The MAC is compared in constant time.
    pub fn verify(&self, kind: TokenKind, token: &str, now_unix: u64) -> Option<String> {
        let (body, mac_hex) = token.rsplit_once('.')?;
        let mac = hex::decode(mac_hex).ok()?;
        self.mac(body).verify_slice(&mac).ok()?;
        let mut parts = body.splitn(3, '.');
        let (tag, subject, expires) = (parts.next()?, parts.next()?, parts.next()?);
        let expires: u64 = expires.parse().ok()?;
        (tag == kind.tag() && now_unix < expires).then(|| subject.to_string())
    }

    fn mac(&self, body: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(b"kiln-token-v1\n");
        mac.update(body.as_bytes());
        mac
    }
}

/// 32 bytes from the operating system's generator.
pub fn random_bytes() -> anyhow::Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_until_it_expires() {
        let signer = Signer::ephemeral().unwrap();
        let token = signer.sign(TokenKind::JobEvents, "abc", 100);
        assert_eq!(
            signer.verify(TokenKind::JobEvents, &token, 99).as_deref(),
            Some("abc")
        );
        assert_eq!(signer.verify(TokenKind::JobEvents, &token, 100), None);
    }

    #[test]
    fn kind_subject_and_signature_are_all_checked() {
        let signer = Signer::ephemeral().unwrap();
        let token = signer.sign(TokenKind::JobEvents, "abc", 100);
        assert_eq!(signer.verify(TokenKind::Session, &token, 0), None);
        let forged = token.replacen("abc", "abd", 1);
        assert_eq!(signer.verify(TokenKind::JobEvents, &forged, 0), None);
        let later = token.replacen(".100.", ".999.", 1);
        assert_eq!(signer.verify(TokenKind::JobEvents, &later, 0), None);
        let other = Signer::ephemeral().unwrap();
        assert_eq!(other.verify(TokenKind::JobEvents, &token, 0), None);
        assert_eq!(signer.verify(TokenKind::JobEvents, "garbage", 0), None);
    }

    #[test]
    fn the_secret_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let token = Signer::in_data_dir(dir.path())
            .unwrap()
            .sign(TokenKind::Session, "ops", 100);
        let again = Signer::in_data_dir(dir.path()).unwrap();
        assert_eq!(
            again.verify(TokenKind::Session, &token, 0).as_deref(),
            Some("ops")
        );
    }
}
