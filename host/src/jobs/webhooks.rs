//! Webhooks: a job's end, POSTed to the URL given at submit (or its tenant's default),
//! signed per the Standard Webhooks spec.
//!
//! - **The outbox** is the job's record: the store's writer gives a job with a webhook a
//!   delivery in the same commit as its end (`store/batch.rs`, `queue_webhook`) and keeps
//!   an index of the due ones, so an end is never committed without its delivery and a
//!   crash loses none. Delivery is at least once: a send whose outcome was not recorded
//!   is sent again, with the same `webhook-id`.
//! - **Sending** runs on one node (the leader, with a shared store), in its own tasks, at
//!   most [`IN_FLIGHT`] at once and each bounded by `timeout`: a slow or dead receiver
//!   never holds a job slot or a plugin. Redirects are not followed. Before each send the
//!   host is resolved and refused if any address is loopback, private, link-local or
//!   otherwise not public (unless `allow_private`), and the request goes to the address
//!   that was checked, so a DNS answer cannot change between the check and the send.
//! - **Retries** back off exponentially from `first_retry` to `max_retry`, with jitter,
//!   until `retry_for` after the end; then the delivery is given up. Attempts, the last
//!   status or error and the outcome are in the job's JSON.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use super::{JobService, ServiceError, bad_request};
use crate::store::{Change, JobRecord, StoreError, WebhookRecord, now_ms};

/// Deliveries sent at once.
const IN_FLIGHT: usize = 16;

/// Due deliveries read per look at the outbox.
const BATCH: usize = 64;

/// The longest the sender waits before looking at the outbox again.
const POLL: Duration = Duration::from_millis(250);

/// Longest webhook URL.
const MAX_URL_BYTES: usize = 2048;

/// How a job is shown in a webhook's body: the job's JSON as the API shows it (the API
/// owns that shape; it hands this over at start).
pub type JobRenderer = fn(JobRecord, JobService) -> BoxFuture<'static, Result<Value, ServiceError>>;

/// The `[webhooks]` config.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Signing secrets by tenant (`None`: jobs without one), the bytes of `whsec_…`.
    pub secrets: HashMap<Option<String>, Arc<[u8]>>,
    /// The URL a tenant's jobs get when the submit names none.
    pub default_urls: HashMap<Option<String>, String>,
    /// Whether URLs may reach loopback, private and link-local addresses.
    pub allow_private: bool,
    /// Deadline of one send. Default 10 s.
    pub timeout: Duration,
    /// How long after a job's end its delivery is retried. Default 24 h.
    pub retry_for: Duration,
    /// First retry backoff; doubles per attempt. Default 5 s.
    pub first_retry: Duration,
    /// Longest backoff. Default 1 h.
    pub max_retry: Duration,
    /// Largest body; a job whose JSON is larger is sent without its result (with
    /// `"result_omitted": true`; read it from the job's URL). Default 1 MiB.
    pub max_body_bytes: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            secrets: HashMap::new(),
            default_urls: HashMap::new(),
            allow_private: false,
            timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(24 * 3600),
            first_retry: Duration::from_secs(5),
            max_retry: Duration::from_secs(3600),
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// Decodes a Standard Webhooks secret, `whsec_` followed by base64 of 16 to 64 bytes.
pub fn decode_secret(text: &str) -> Result<Arc<[u8]>, String> {
    let encoded = text
        .trim()
        .strip_prefix("whsec_")
        .ok_or("a webhook secret starts with whsec_ (whsec_ + base64 of 16 to 64 random bytes)")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("the webhook secret after whsec_ is not base64: {e}"))?;
    if !(16..=64).contains(&bytes.len()) {
        return Err(format!(
            "the webhook secret holds {} bytes; use 16 to 64",
            bytes.len()
        ));
    }
    Ok(bytes.into())
}

/// The `webhook-signature` of `body` sent as message `id` at `timestamp` (seconds):
/// `v1,` + base64 of HMAC-SHA256 over `id.timestamp.body`.
pub fn signature(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// The sender's state.
#[derive(Default)]
pub(super) struct Outbox {
    renderer: OnceLock<JobRenderer>,
    /// Rung when a job with a webhook ends.
    pub(super) wake: Notify,
    /// Jobs whose delivery is being sent now.
    sending: Mutex<HashSet<Uuid>>,
}

/// How one send went.
enum Sent {
    Delivered(u16),
    Failed { status: Option<u16>, error: String },
}

impl JobService {
    /// Hands over how the API shows a job, for webhook bodies. Until it is set, nothing is
    /// sent (deliveries wait in the outbox).
    pub fn set_job_renderer(&self, renderer: JobRenderer) {
        let _ = self.inner.webhooks.renderer.set(renderer);
    }

    /// The webhook a submit asks for (`url`, else its tenant's default), checked.
    pub(super) fn webhook_for(
        &self,
        url: Option<String>,
        tenant: Option<&str>,
    ) -> Result<Option<WebhookRecord>, ServiceError> {
        let settings = &self.inner.settings.webhooks;
        let tenant_key = tenant.map(str::to_string);
        let Some(url) = url.or_else(|| settings.default_urls.get(&tenant_key).cloned()) else {
            return Ok(None);
        };
        if !settings.secrets.contains_key(&tenant_key) {
            return Err(bad_request(
                "invalid_request",
                match tenant {
                    Some(tenant) => format!(
                        "webhooks need a signing secret for tenant '{tenant}' \
                         ([webhooks.tenants.{tenant}] secret_env)"
                    ),
                    None => "webhooks need a signing secret ([webhooks] secret_env)".into(),
                },
            ));
        }
        check_url(&url, settings.allow_private).map_err(|e| bad_request("invalid_request", e))?;
        Ok(Some(WebhookRecord {
            url,
            delivery: None,
        }))
    }

    /// Sends due deliveries until the service stops (on the leader only, with a shared
    /// store).
    pub(super) async fn webhook_loop(self) {
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        loop {
            if self.is_leader() && self.inner.webhooks.renderer.get().is_some() {
                match self.inner.store.webhooks_due(now_ms(), BATCH).await {
                    Ok(due) => {
                        for job in due {
                            if !self
                                .inner
                                .webhooks
                                .sending
                                .lock()
                                .expect("outbox lock")
                                .insert(job.id)
                            {
                                continue;
                            }
                            let Ok(permit) = permits.clone().acquire_owned().await else {
                                return;
                            };
                            let service = self.clone();
                            tokio::spawn(async move {
                                let id = job.id;
                                service.deliver(job).await;
                                service
                                    .inner
                                    .webhooks
                                    .sending
                                    .lock()
                                    .expect("outbox lock")
                                    .remove(&id);
                                drop(permit);
                            });
                        }
                    }
                    Err(error) => tracing::warn!(%error, "could not read the webhook outbox"),
                }
            }
            tokio::select! {
                () = self.inner.webhooks.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                () = self.inner.stopping.cancelled() => return,
            }
        }
    }

    /// Sends one due delivery and records how it went.
    async fn deliver(&self, job: JobRecord) {
        let Some(webhook) = job.webhook.clone() else {
            return;
        };
        let Some(delivery) = webhook.delivery.clone() else {
            return;
        };
        let id = job.id;
        let span = tracing::info_span!("webhook", job_id = %id, delivery = %delivery.id);
        let sent = match self.body_of(job).await {
            Ok((body, tenant)) => {
                self.send(&webhook.url, &delivery.id, tenant.as_deref(), body)
                    .await
            }
            Err(error) => Sent::Failed {
                status: None,
                error: format!("could not render the job: {error}"),
            },
        };
        let _enter = span.enter();
        match &sent {
            Sent::Delivered(status) => tracing::info!(status, "webhook delivered"),
            Sent::Failed { status, error } => {
                tracing::warn!(?status, %error, attempt = delivery.attempts + 1, "webhook not delivered");
            }
        }
        drop(_enter);
        let settings = self.inner.settings.webhooks.clone();
        let delivery_id = delivery.id.clone();
        let recorded = self
            .inner
            .store
            .update(id, move |job| {
                record(job, &delivery_id, sent, now_ms(), &settings)
            })
            .await;
        if let Ok(job) = &recorded {
            let delivery = job.webhook.as_ref().and_then(|w| w.delivery.as_ref());
            self.inner.metrics.webhook_sent(match delivery {
                Some(d) if d.delivered_at_ms.is_some() => "delivered",
                Some(d) if d.gave_up => "gave_up",
                _ => "failed",
            });
        }
        match recorded {
            Ok(_) | Err(StoreError::NotFound | StoreError::Conflict(_)) => {}
            Err(error) => {
                tracing::error!(%error, job_id = %id, "could not record a webhook delivery")
            }
        }
    }

    /// The body of `job`'s delivery, within `max_body_bytes`, and its tenant.
    async fn body_of(&self, job: JobRecord) -> Result<(Vec<u8>, Option<String>), ServiceError> {
        let tenant = job.tenant.clone();
        let render = self
            .inner
            .webhooks
            .renderer
            .get()
            .ok_or_else(|| ServiceError::Internal("no job renderer".into()))?;
        let mut json = render(job, self.clone()).await?;
        let mut body =
            serde_json::to_vec(&json).map_err(|e| ServiceError::Internal(e.to_string()))?;
        if body.len() > self.inner.settings.webhooks.max_body_bytes {
            json["result"] = Value::Null;
            json["result_omitted"] = Value::Bool(true);
            body = serde_json::to_vec(&json).map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
        Ok((body, tenant))
    }

    /// One POST of `body` to `url`, to an address checked first.
    async fn send(&self, url: &str, id: &str, tenant: Option<&str>, body: Vec<u8>) -> Sent {
        let settings = &self.inner.settings.webhooks;
        let failed = |error: String| Sent::Failed {
            status: None,
            error,
        };
        let Some(secret) = settings.secrets.get(&tenant.map(str::to_string)) else {
            return failed("no signing secret for the job's tenant".into());
        };
        let parsed = match url::Url::parse(url) {
            Ok(parsed) => parsed,
            Err(error) => return failed(format!("invalid URL: {error}")),
        };
        let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
            return failed("the URL has no host".into());
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let address = match resolve(&host, port, settings.allow_private).await {
            Ok(address) => address,
            Err(error) => return failed(error),
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .resolve(&host, address)
            .build();
        let client = match client {
            Ok(client) => client,
            Err(error) => return failed(format!("could not make the HTTP client: {error}")),
        };
        let timestamp = now_ms() / 1000;
        let response = client
            .post(parsed)
            .header("content-type", "application/json")
            .header("user-agent", concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature(secret, id, timestamp, &body))
            .body(body)
            .send()
            .await;
        match response {
            Ok(response) if response.status().is_success() => {
                Sent::Delivered(response.status().as_u16())
            }
            Ok(response) => {
                let status = response.status();
                let error = if status.is_redirection() {
                    format!("answered {status}; redirects are not followed")
                } else {
                    format!("answered {status}")
                };
                Sent::Failed {
                    status: Some(status.as_u16()),
                    error,
                }
            }
            Err(error) if error.is_timeout() => failed(format!(
                "no answer within {} s",
                settings.timeout.as_secs_f64()
            )),
            Err(error) => failed(format!("could not send: {error}")),
        }
    }
}

/// Records how a send of delivery `delivery_id` went on `job`, and when to try again. A
/// delivery replaced meanwhile (the job was retried and ended again) is left alone.
fn record(
    job: &mut JobRecord,
    delivery_id: &str,
    sent: Sent,
    now: u64,
    settings: &WebhookSettings,
) -> Result<Change, StoreError> {
    let Some(delivery) = job
        .webhook
        .as_mut()
        .and_then(|webhook| webhook.delivery.as_mut())
        .filter(|delivery| delivery.id == delivery_id && delivery.next_at_ms.is_some())
    else {
        return Err(StoreError::Conflict("the delivery was replaced".into()));
    };
    delivery.attempts += 1;
    match sent {
        Sent::Delivered(status) => {
            delivery.last_status = Some(status);
            delivery.last_error = None;
            delivery.delivered_at_ms = Some(now);
            delivery.next_at_ms = None;
        }
        Sent::Failed { status, error } => {
            delivery.last_status = status;
            delivery.last_error = Some(error);
            let exponent = delivery.attempts.saturating_sub(1).min(30);
            let backoff = settings
                .first_retry
                .saturating_mul(1u32 << exponent)
                .min(settings.max_retry)
                .mul_f64(0.75 + fastrand::f64() * 0.5);
            let next = now.saturating_add(backoff.as_millis() as u64);
            let window_ends = delivery
                .created_at_ms
                .saturating_add(settings.retry_for.as_millis() as u64);
            if next > window_ends {
                delivery.gave_up = true;
                delivery.next_at_ms = None;
            } else {
                delivery.next_at_ms = Some(next);
            }
        }
    }
    Ok(Change::default())
}

/// Checks a webhook URL at submit: `http` or `https` with a host, no credentials, and,
/// unless `allow_private`, no literal loopback or private address (names are checked when
/// sending, against what they resolve to).
pub fn check_url(url: &str, allow_private: bool) -> Result<(), String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!("webhook url is longer than {MAX_URL_BYTES} bytes"));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("webhook url {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("webhook url {url:?}: use http or https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("webhook url must not hold credentials".into());
    }
    let refused = match parsed.host() {
        None => return Err(format!("webhook url {url:?} has no host")),
        Some(url::Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    };
    if refused && !allow_private {
        return Err(format!(
            "webhook url {url:?} points at a private or loopback address; \
             [webhooks] allow_private = true allows that"
        ));
    }
    Ok(())
}

/// The address to send to: `host` resolved, refused when any of its addresses is not
/// public (unless `allow_private`).
async fn resolve(host: &str, port: u16, allow_private: bool) -> Result<SocketAddr, String> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("could not resolve {host}: {e}"))?
        .collect();
    let first = *addresses
        .first()
        .ok_or_else(|| format!("{host} resolves to no address"))?;
    if !allow_private && let Some(private) = addresses.iter().find(|a| !is_public(a.ip())) {
        return Err(format!(
            "refused: {host} resolves to {}, not a public address \
             ([webhooks] allow_private = true allows it)",
            private.ip()
        ));
    }
    Ok(first)
}

/// Whether `ip` is a public unicast address (not loopback, private, link-local,
/// carrier-grade NAT, unique-local, multicast, documentation or unspecified).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            !(ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_broadcast()
                || ip.is_documentation()
                || ip.is_unspecified()
                || ip.is_multicast()
                || a == 0
                || (a == 100 && (b & 0xc0) == 64))
        }
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = ip.segments()[0];
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_standard_webhooks_v1() {
        // The example of the Standard Webhooks spec.
        let secret = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_16_to_64_bytes() {
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(decode_secret("whsec_not base64!").is_err());
        assert!(decode_secret("whsec_AAAA").is_err());
    }

    #[test]
    fn only_public_addresses_pass_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/x",
            "http://10.1.2.3/x",
            "http://192.168.0.1/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x",
            "http://[fd00::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://localhost:8080/x",
            "http://100.64.0.1/x",
            "http://0.0.0.0/x",
        ] {
            assert!(check_url(url, false).is_err(), "{url}");
            assert!(check_url(url, true).is_ok(), "{url}");
        }
        assert!(check_url("https://hooks.example.com/kiln", false).is_ok());
        assert!(check_url("https://93.184.215.14/kiln", false).is_ok());
        assert!(check_url("ftp://hooks.example.com/", true).is_err());
        assert!(check_url("https://user:pw@hooks.example.com/", true).is_err());
        assert!(check_url("not a url", true).is_err());
    }
}
