//! Clients that log in with AWS IAM: the token they send as their password (a signed
//! `sts:GetCallerIdentity` request, see [`sluice_iam::client_token`]) is checked here.
//!
//! What Sluice can check itself comes first, without any network: the format, the audience
//! (this Sluice's `iam.audience`), the STS host it was signed for, and its age. Then the request
//! goes to STS, which verifies the signature and names the caller; an assumed-role session
//! resolves to its role, and `[[iam.identities]]` say which database user that may log in as.
//!
//! STS's answers are cached by token (its SHA-256) for `cache_ttl`, never beyond the token's own
//! validity, and concurrent logins with the same token share one call: instances that hold the
//! same credentials make the same token within a minute, so a burst of cold starts costs one STS
//! call per role. Only definitive answers are cached; an STS that does not answer in
//! `sts_timeout` refuses the login as "cannot verify now" and is counted.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use sluice_iam::client_token::{self, CONTENT_TYPE, ClientToken, DecodeError};
use tokio::sync::OnceCell;

use super::wildcard;
use crate::config::{IamConfig, IamIdentity, sts_authority};

/// Tokens from the future are refused beyond this much clock skew.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Verified tokens kept before the cache is swept (then cleared, if all are still live).
const CACHE_MAX: usize = 100_000;
/// STS calls in flight at most: a flood of distinct tokens waits (within `sts_timeout`) rather
/// than opening a connection each.
const MAX_STS_CALLS: usize = 64;

/// Why an IAM login was refused; the text is what the client reads (nothing secret in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IamRefusal {
    #[error("{0}")]
    Format(#[from] DecodeError),
    #[error("the token is for audience `{token}`, not for this Sluice (`{ours}`)")]
    WrongAudience { token: String, ours: String },
    #[error("the token is signed for STS at `{token}`; this Sluice asks `{ours}`")]
    WrongStsHost { token: String, ours: String },
    #[error(
        "the token expired: it was signed {}s ago and this Sluice accepts tokens for {}s; \
         sign a fresh one", age.as_secs(), max.as_secs()
    )]
    Expired { age: Duration, max: Duration },
    #[error("the token is signed {}s in the future; check the client's clock", .0.as_secs())]
    FromTheFuture(Duration),
    #[error(
        "STS refused the token's signature ({0}): it was changed after signing, or signed for \
         another audience or STS host"
    )]
    BadSignature(String),
    #[error("STS refused the token's credentials ({0})")]
    BadCredentials(String),
    #[error("{principal} may not log in as database user `{user}`")]
    NotMapped { principal: String, user: String },
    #[error("cannot verify the token now: {0}")]
    Unavailable(String),
}

impl IamRefusal {
    /// True when the refusal may pass if the client tries again later (STS did not answer).
    pub fn is_transient(&self) -> bool {
        matches!(self, IamRefusal::Unavailable(_))
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            IamRefusal::Format(_) => "malformed",
            IamRefusal::WrongAudience { .. } => "wrong_audience",
            IamRefusal::WrongStsHost { .. } => "wrong_sts_host",
            IamRefusal::Expired { .. } => "expired",
            IamRefusal::FromTheFuture(_) => "from_the_future",
            IamRefusal::BadSignature(_) => "bad_signature",
            IamRefusal::BadCredentials(_) => "bad_credentials",
            IamRefusal::NotMapped { .. } => "not_mapped",
            IamRefusal::Unavailable(_) => "sts_unavailable",
        }
    }
}

/// The IAM verifier could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IamSetupError {
    #[error(
        "iam.sts_region is empty and the AWS environment names no region (set AWS_REGION or \
         iam.sts_region)"
    )]
    NoRegion,
}

/// STS's definitive answer about one token.
#[derive(Debug, Clone)]
enum StsAnswer {
    /// The caller's ARN.
    Caller(String),
    Refused(IamRefusal),
}

/// The pending STS call of one token, shared by everyone logging in with it meanwhile.
type Pending = Arc<OnceCell<Result<StsAnswer, String>>>;

/// IAM logins so far, by outcome.
#[derive(Debug, Default)]
pub struct IamCounts {
    /// Tokens STS verified (a call).
    pub verified: AtomicU64,
    /// Tokens answered from the cache (no call).
    pub cached: AtomicU64,
    /// Logins refused (any reason but an unavailable STS).
    pub refused: AtomicU64,
    /// Logins refused because STS did not answer.
    pub unavailable: AtomicU64,
    /// Calls made to STS.
    pub sts_calls: AtomicU64,
    /// Calls that failed without an answer (timeout, connection, server error).
    pub sts_failures: AtomicU64,
}

/// Checks IAM tokens.
pub struct IamVerifier {
    audience: String,
    /// `host[:port]` tokens must be signed for.
    sts_host: String,
    client: aws_sdk_sts::Client,
    max_age: Duration,
    cache_ttl: Duration,
    identities: Vec<IamIdentity>,
    cache: Mutex<HashMap<[u8; 32], (StsAnswer, Instant)>>,
    inflight: Mutex<HashMap<[u8; 32], Pending>>,
    /// Bounds the STS calls in flight.
    sts_slots: tokio::sync::Semaphore,
    sts_timeout: Duration,
    counts: IamCounts,
}

impl fmt::Debug for IamVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IamVerifier")
            .field("audience", &self.audience)
            .field("sts_host", &self.sts_host)
            .finish_non_exhaustive()
    }
}

impl IamVerifier {
    /// A verifier for `config` (whose `audience` is set), with STS's region from the config
    /// or the standard AWS environment.
    pub async fn from_config(config: &IamConfig) -> Result<IamVerifier, IamSetupError> {
        let region = if config.sts_region.is_empty() {
            let env = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .no_credentials()
                .load()
                .await;
            env.region()
                .map(|r| r.to_string())
                .ok_or(IamSetupError::NoRegion)?
        } else {
            config.sts_region.clone()
        };
        let endpoint = if config.sts_endpoint.is_empty() {
            format!("https://{}", client_token::regional_sts_host(&region))
        } else {
            config.sts_endpoint.trim_end_matches('/').to_owned()
        };
        let sts_host = sts_authority(&endpoint)
            .map(|h| default_port_stripped(h, endpoint.starts_with("https://")))
            .unwrap_or_default();
        use aws_sdk_sts::config::retry::RetryConfig;
        use aws_sdk_sts::config::timeout::TimeoutConfig;
        use aws_sdk_sts::config::{BehaviorVersion, Region};
        let sts = aws_sdk_sts::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .endpoint_url(&endpoint)
            // The client's signature goes as it is: Sluice signs nothing.
            .allow_no_auth()
            // One attempt, bounded: a login waits at most sts_timeout.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(config.sts_timeout)
                    .connect_timeout(config.sts_timeout)
                    .build(),
            )
            .build();
        tracing::info!(%endpoint, audience = %config.audience, identities = config.identities.len(),
            "IAM logins on: tokens are checked with STS");
        Ok(IamVerifier {
            audience: config.audience.clone(),
            sts_host,
            client: aws_sdk_sts::Client::from_conf(sts),
            max_age: config.token_max_age,
            cache_ttl: config.cache_ttl,
            identities: config.identities.clone(),
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            sts_slots: tokio::sync::Semaphore::new(MAX_STS_CALLS),
            sts_timeout: config.sts_timeout,
            counts: IamCounts::default(),
        })
    }

    /// Whether some identity may log in as database user `user`.
    pub fn maps_user(&self, user: &str) -> bool {
        self.identities.iter().any(|i| i.database_user == user)
    }

    /// The database users identities map to.
    pub fn database_users(&self) -> impl Iterator<Item = &str> {
        self.identities.iter().map(|i| i.database_user.as_str())
    }

    /// Counts of logins and STS calls so far.
    pub fn counts(&self) -> &IamCounts {
        &self.counts
    }

    /// Checks `token` (the clear-text password a client sent) for a login as `user` at `now`;
    /// returns the principal (the role or user ARN) it logged in as.
    pub async fn verify(
        &self,
        user: &str,
        token: &[u8],
        now: SystemTime,
    ) -> Result<String, IamRefusal> {
        let result = self.check(user, token, now).await;
        let counter = match &result {
            Ok(_) => None,
            Err(e) if e.is_transient() => Some(&self.counts.unavailable),
            Err(_) => Some(&self.counts.refused),
        };
        if let Some(c) = counter {
            c.fetch_add(1, Relaxed);
        }
        result
    }

    async fn check(&self, user: &str, text: &[u8], now: SystemTime) -> Result<String, IamRefusal> {
        let token = ClientToken::decode(text)?;
        if token.audience != self.audience {
            return Err(IamRefusal::WrongAudience {
                token: token.audience.clone(),
                ours: self.audience.clone(),
            });
        }
        let host = token.host.to_ascii_lowercase();
        if host != self.sts_host {
            return Err(IamRefusal::WrongStsHost {
                token: token.host.clone(),
                ours: self.sts_host.clone(),
            });
        }
        let signed = token.signed_at()?;
        let remaining = match now.duration_since(signed) {
            Ok(age) if age > self.max_age => {
                return Err(IamRefusal::Expired {
                    age,
                    max: self.max_age,
                });
            }
            Ok(age) => self.max_age - age,
            Err(e) if e.duration() > MAX_CLOCK_SKEW => {
                return Err(IamRefusal::FromTheFuture(e.duration()));
            }
            Err(e) => self.max_age + e.duration(),
        };
        let key = digest(text.strip_suffix(&[0]).unwrap_or(text));
        let caller = match self.cached(&key) {
            Some(answer) => {
                self.counts.cached.fetch_add(1, Relaxed);
                answer
            }
            None => self.ask_sts(key, &token, remaining).await?,
        };
        let arn = match caller {
            StsAnswer::Caller(arn) => arn,
            StsAnswer::Refused(why) => return Err(why),
        };
        let principal = principal_of(&arn);
        if self
            .identities
            .iter()
            .any(|i| i.database_user == user && wildcard::matches(&i.arn, &principal, '*', None))
        {
            Ok(principal)
        } else {
            Err(IamRefusal::NotMapped {
                principal,
                user: user.to_owned(),
            })
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<StsAnswer> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(answer, _)| answer.clone())
    }

    /// Asks STS about `token` once for everyone holding it now; caches a definitive answer for
    /// `cache_ttl`, at most `remaining` (the token's own validity).
    async fn ask_sts(
        &self,
        key: [u8; 32],
        token: &ClientToken,
        remaining: Duration,
    ) -> Result<StsAnswer, IamRefusal> {
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            inflight.entry(key).or_default().clone()
        };
        // Leaves no entry behind, also when this login is dropped mid-call (its client left).
        let entry = InflightEntry {
            inflight: &self.inflight,
            key,
            cell,
        };
        let mut asked = false;
        let result = entry
            .cell
            .get_or_init(|| {
                asked = true;
                self.call_sts(token)
            })
            .await
            .clone();
        if asked {
            if let Ok(answer) = &result {
                let until = Instant::now() + self.cache_ttl.min(remaining);
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= CACHE_MAX {
                    let now = Instant::now();
                    cache.retain(|_, (_, until)| now < *until);
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(key, (answer.clone(), until));
            }
        } else {
            self.counts.cached.fetch_add(1, Relaxed);
        }
        result.map_err(IamRefusal::Unavailable)
    }

    /// One GetCallerIdentity call with the client's signed headers. `Err` when STS gave no
    /// answer (the text says why).
    async fn call_sts(&self, token: &ClientToken) -> Result<StsAnswer, String> {
        let Ok(Ok(_slot)) = tokio::time::timeout(self.sts_timeout, self.sts_slots.acquire()).await
        else {
            self.counts.sts_failures.fetch_add(1, Relaxed);
            return Err(format!(
                "{MAX_STS_CALLS} STS calls are already in flight and none ended in time"
            ));
        };
        self.counts.sts_calls.fetch_add(1, Relaxed);
        let headers: Vec<(&'static str, String)> = token
            .headers()
            .into_iter()
            .map(|(k, v)| (k, v.to_owned()))
            .collect();
        let started = Instant::now();
        let sent = self
            .client
            .get_caller_identity()
            .customize()
            .mutate_request(move |req| {
                let h = req.headers_mut();
                h.insert("content-type", CONTENT_TYPE);
                for (k, v) in &headers {
                    h.insert(*k, v.clone());
                }
            })
            .send()
            .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let answer = match sent {
            Ok(out) => match out.arn() {
                Some(arn) => Ok(StsAnswer::Caller(arn.to_owned())),
                None => Err("STS answered without an ARN".to_owned()),
            },
            Err(SdkError::ServiceError(e)) => {
                // The SDK reads STS's `<ErrorResponse><Error>`; a stand-in that nests it
                // differently still names the code in a `<Code>` element.
                let code = e
                    .err()
                    .code()
                    .map(str::to_owned)
                    .or_else(|| e.raw().body().bytes().and_then(xml_code))
                    .unwrap_or_else(|| "unknown".to_owned());
                let status = e.raw().status().as_u16();
                match code.as_str() {
                    "SignatureDoesNotMatch" | "IncompleteSignature" => {
                        Ok(StsAnswer::Refused(IamRefusal::BadSignature(code)))
                    }
                    "InvalidClientTokenId"
                    | "ExpiredToken"
                    | "AccessDenied"
                    | "MissingAuthenticationToken"
                    | "RequestExpired"
                    | "SignatureExpired" => {
                        Ok(StsAnswer::Refused(IamRefusal::BadCredentials(code)))
                    }
                    _ if (400..500).contains(&status) && status != 429 => {
                        Ok(StsAnswer::Refused(IamRefusal::BadCredentials(code)))
                    }
                    _ => Err(format!("STS answered {status} {code}")),
                }
            }
            Err(SdkError::TimeoutError(_)) => Err("STS did not answer in time".to_owned()),
            Err(SdkError::DispatchFailure(e)) => Err(format!(
                "cannot reach STS ({})",
                if e.is_timeout() {
                    "connect timeout".to_owned()
                } else if e.is_io() {
                    "connection failed".to_owned()
                } else {
                    "dispatch failure".to_owned()
                }
            )),
            Err(SdkError::ResponseError(_)) => Err("STS's reply could not be read".to_owned()),
            Err(_) => Err("the STS call failed".to_owned()),
        };
        match &answer {
            Ok(StsAnswer::Caller(arn)) => {
                self.counts.verified.fetch_add(1, Relaxed);
                tracing::debug!(%arn, elapsed_ms, "STS verified an IAM token");
            }
            Ok(StsAnswer::Refused(why)) => {
                tracing::info!(reason = %why, elapsed_ms, "STS refused an IAM token")
            }
            Err(why) => {
                self.counts.sts_failures.fetch_add(1, Relaxed);
                tracing::warn!(reason = %why, elapsed_ms, "cannot check an IAM token with STS");
            }
        }
        answer
    }
}

/// A login's share of an in-flight STS call: when the last login holding it goes (answered, or
/// dropped mid-call), the entry goes too, so abandoned logins cannot grow the map.
struct InflightEntry<'a> {
    inflight: &'a Mutex<HashMap<[u8; 32], Pending>>,
    key: [u8; 32],
    cell: Pending,
}

impl Drop for InflightEntry<'_> {
    fn drop(&mut self) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let ours = inflight
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell));
        // Answered: later logins read the cache. Unanswered: remove it only if no other login
        // waits on it (the map's reference and this one are all there is).
        if ours && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2) {
            inflight.remove(&self.key);
        }
    }
}

/// The text of the first `<Code>` element of an error body.
fn xml_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text.get(start..)?.find("</Code>")?;
    let code = text.get(start..start + len)?;
    (!code.is_empty() && code.len() < 100 && code.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| code.to_owned())
}

/// `host[:port]` with `:443` (https) or `:80` (http) dropped, lowercased: the form SigV4 signs.
fn default_port_stripped(authority: &str, https: bool) -> String {
    let default = if https { ":443" } else { ":80" };
    authority
        .strip_suffix(default)
        .unwrap_or(authority)
        .to_ascii_lowercase()
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The identity a caller ARN logs in as: an assumed-role session
/// (`arn:aws:sts::123:assumed-role/NAME/SESSION`) is its role (`arn:aws:iam::123:role/NAME`);
/// anything else (an IAM user) is itself.
pub fn principal_of(arn: &str) -> String {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if let [prefix, partition, "sts", "", account, resource] = parts.as_slice()
        && let Some(rest) = resource.strip_prefix("assumed-role/")
        && let Some((role, _session)) = rest.split_once('/')
    {
        return format!("{prefix}:{partition}:iam::{account}:role/{role}");
    }
    arn.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assumed_roles_resolve_to_their_role() {
        assert_eq!(
            principal_of("arn:aws:sts::123456789012:assumed-role/orders/i-0abc"),
            "arn:aws:iam::123456789012:role/orders"
        );
        assert_eq!(
            principal_of("arn:aws-cn:sts::123456789012:assumed-role/r/s/extra"),
            "arn:aws-cn:iam::123456789012:role/r"
        );
        for same in [
            "arn:aws:iam::123456789012:user/alice",
            "arn:aws:sts::123456789012:federated-user/bob",
            "arn:aws:sts::123456789012:assumed-role/no-session",
            "not an arn",
        ] {
            assert_eq!(principal_of(same), same);
        }
    }

    #[tokio::test]
    async fn abandoned_sts_calls_leave_no_entry() {
        let inflight: Arc<Mutex<HashMap<[u8; 32], Pending>>> = Arc::default();
        let join = |key: [u8; 32]| {
            let inflight = inflight.clone();
            tokio::spawn(async move {
                let cell = inflight.lock().unwrap().entry(key).or_default().clone();
                let entry = InflightEntry {
                    inflight: &inflight,
                    key,
                    cell,
                };
                // An STS call that never ends.
                let _ = entry
                    .cell
                    .get_or_init(std::future::pending::<Result<StsAnswer, String>>)
                    .await;
            })
        };
        let settle = || tokio::time::sleep(Duration::from_millis(20));
        // Two logins share one call: the first leaving keeps it for the second.
        let (first, second) = (join([1; 32]), join([1; 32]));
        settle().await;
        first.abort();
        settle().await;
        assert_eq!(inflight.lock().unwrap().len(), 1);
        second.abort();
        settle().await;
        assert!(inflight.lock().unwrap().is_empty());
        // An answered call is removed by whoever goes last.
        let cell: Pending = inflight.lock().unwrap().entry([2; 32]).or_default().clone();
        let entry = InflightEntry {
            inflight: &inflight,
            key: [2; 32],
            cell,
        };
        let _ = entry
            .cell
            .get_or_init(|| async { Err("down".to_owned()) })
            .await;
        drop(entry);
        assert!(inflight.lock().unwrap().is_empty());
    }

    #[test]
    fn error_codes_from_bodies() {
        let moto = b"<ErrorResponse><Errors><Error><Code>SignatureDoesNotMatch</Code></Error></Errors></ErrorResponse>";
        assert_eq!(xml_code(moto).as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(xml_code(b"<Code></Code>"), None);
        assert_eq!(xml_code(b"<Code>a<b</Code>"), None);
        assert_eq!(xml_code(b"<Code>never closed"), None);
    }

    #[test]
    fn authorities_drop_default_ports() {
        assert_eq!(
            default_port_stripped("STS.eu-west-1.amazonaws.com:443", true),
            "sts.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            default_port_stripped("127.0.0.1:5000", false),
            "127.0.0.1:5000"
        );
        assert_eq!(default_port_stripped("h:80", false), "h");
    }
}
