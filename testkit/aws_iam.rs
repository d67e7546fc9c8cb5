//! AWS identities for tests: a private `moto_server` that checks SigV4 signatures as AWS does
//! (its IAM authentication turned on once an administrator exists), with IAM roles, users and
//! assumed-role sessions made on request. Calls are signed with `sluice-iam`'s signer, over the
//! AWS query protocol, as the SDKs send them.

use std::sync::OnceLock;
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use sluice_iam::sigv4::{Scope, sign_headers};

use crate::moto::{Moto, http_post};
use crate::sandbox::once;

/// A set of AWS credentials (long-term, or temporary with a session token).
#[derive(Clone, PartialEq, Eq)]
pub struct AwsKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKeys")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl AwsKeys {
    /// For `sluice_iam`'s signers.
    pub fn credentials(&self) -> sluice_iam::Credentials {
        sluice_iam::Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            self.session_token.clone(),
            None,
            "test",
        )
    }

    /// The standard AWS environment variables for a child process using these credentials.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
        ];
        if let Some(t) = &self.session_token {
            env.push(("AWS_SESSION_TOKEN", t.clone()));
        }
        env
    }
}

/// The trust policy of test roles: any principal of the account may assume them.
const TRUST_ANYONE: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#;

/// A moto_server whose every call must be signed by credentials it issued.
#[derive(Debug)]
pub struct IamMoto {
    moto: Moto,
    admin: AwsKeys,
}

impl IamMoto {
    /// The account moto's identities belong to.
    pub const ACCOUNT: &'static str = "123456789012";

    /// Starts a server, makes an administrator (while calls need no signature yet), then turns
    /// signature checks on.
    pub fn start() -> Result<IamMoto> {
        let moto = Moto::start()?;
        let unsigned = |action: &str, params: &[(&str, &str)]| {
            query(&moto, "iam", action, params, None).with_context(|| format!("IAM {action}"))
        };
        unsigned("CreateUser", &[("UserName", "admin")])?;
        let policy = json!({"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
        .to_string();
        unsigned(
            "PutUserPolicy",
            &[
                ("UserName", "admin"),
                ("PolicyName", "everything"),
                ("PolicyDocument", &policy),
            ],
        )?;
        let key = unsigned("CreateAccessKey", &[("UserName", "admin")])?;
        let admin = AwsKeys {
            access_key_id: xml_text(&key, "AccessKeyId")?,
            secret_access_key: xml_text(&key, "SecretAccessKey")?,
            session_token: None,
        };
        let (status, body) = moto_api(&moto, "/moto-api/reset-auth", "0")?;
        if status != 200 {
            bail!("moto refused to turn IAM authentication on: {status} {body}");
        }
        moto.start_recording()?;
        Ok(IamMoto { moto, admin })
    }

    /// The server shared by the tests of this process, started on first use.
    pub fn shared() -> &'static IamMoto {
        static SHARED: OnceLock<Result<IamMoto, String>> = OnceLock::new();
        once(&SHARED, || {
            IamMoto::start().context("cannot start moto_server with IAM authentication")
        })
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.moto.endpoint()
    }

    /// `127.0.0.1:PORT`: the STS host tokens are signed for.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.moto.port())
    }

    /// The region everything is signed for.
    pub fn region(&self) -> &'static str {
        Moto::REGION
    }

    /// The server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.moto.log_tail()
    }

    /// Creates role `name` (any principal may assume it); returns its ARN.
    pub fn create_role(&self, name: &str) -> Result<String> {
        let reply = self.call(
            "iam",
            "CreateRole",
            &[
                ("RoleName", name),
                ("AssumeRolePolicyDocument", TRUST_ANYONE),
            ],
        )?;
        xml_text(&reply, "Arn")
    }

    /// A session of role `role_arn`, as a Lambda function or an ECS task gets.
    pub fn assume_role(&self, role_arn: &str, session: &str) -> Result<AwsKeys> {
        let reply = self.call(
            "sts",
            "AssumeRole",
            &[("RoleArn", role_arn), ("RoleSessionName", session)],
        )?;
        Ok(AwsKeys {
            access_key_id: xml_text(&reply, "AccessKeyId")?,
            secret_access_key: xml_text(&reply, "SecretAccessKey")?,
            session_token: Some(xml_text(&reply, "SessionToken")?),
        })
    }

    /// Creates IAM user `name` with an access key; returns its ARN and the key.
    pub fn create_user(&self, name: &str) -> Result<(String, AwsKeys)> {
        let user = self.call("iam", "CreateUser", &[("UserName", name)])?;
        let key = self.call("iam", "CreateAccessKey", &[("UserName", name)])?;
        Ok((
            xml_text(&user, "Arn")?,
            AwsKeys {
                access_key_id: xml_text(&key, "AccessKeyId")?,
                secret_access_key: xml_text(&key, "SecretAccessKey")?,
                session_token: None,
            },
        ))
    }

    /// GetCallerIdentity signed with `keys`: the ARN STS says they belong to.
    pub fn caller_arn(&self, keys: &AwsKeys) -> Result<String> {
        let reply = query(&self.moto, "sts", "GetCallerIdentity", &[], Some(keys))?;
        xml_text(&reply, "Arn")
    }

    /// How many STS calls moto received signed with access key `access_key_id` (for a role
    /// session used only to sign IAM tokens: the tokens Sluice sent to STS).
    pub fn sts_calls_signed_by(&self, access_key_id: &str) -> Result<usize> {
        let needle = format!("Credential={access_key_id}/");
        Ok(self
            .moto
            .recorded_requests()?
            .iter()
            .filter(|r| {
                let auth = r["headers"]
                    .as_object()
                    .and_then(|h| {
                        h.iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                    })
                    .and_then(|(_, v)| v.as_str())
                    .unwrap_or("");
                auth.contains(&needle) && auth.contains("/sts/aws4_request")
            })
            .count())
    }

    /// A call signed by the administrator.
    fn call(&self, service: &str, action: &str, params: &[(&str, &str)]) -> Result<String> {
        query(&self.moto, service, action, params, Some(&self.admin))
            .with_context(|| format!("{service} {action} on {}", self.endpoint()))
    }
}

/// One AWS query-protocol call (`Action=...&Version=...`), signed with `keys` if given.
fn query(
    moto: &Moto,
    service: &str,
    action: &str,
    params: &[(&str, &str)],
    keys: Option<&AwsKeys>,
) -> Result<String> {
    let version = if service == "sts" {
        "2011-06-15"
    } else {
        "2010-05-08"
    };
    let mut body = format!("Action={action}&Version={version}");
    for (k, v) in params {
        body.push('&');
        body.push_str(k);
        body.push('=');
        body.push_str(&form_encode(v));
    }
    let host = format!("127.0.0.1:{}", moto.port());
    let content_type = "application/x-www-form-urlencoded; charset=utf-8";
    let mut headers: Vec<(String, String)> = vec![("Content-Type".into(), content_type.into())];
    match keys {
        Some(keys) => {
            let scope = Scope {
                service,
                region: Moto::REGION,
                time: SystemTime::now(),
            };
            let signed = sign_headers(
                &keys.credentials(),
                &scope,
                "POST",
                &format!("http://{host}/"),
                &[("content-type", content_type), ("host", &host)],
                body.as_bytes(),
            )?;
            headers.extend(signed);
        }
        None => {
            // Before authentication is on, moto needs only the credential scope to route.
            headers.push((
                "Authorization".into(),
                format!(
                    "AWS4-HMAC-SHA256 Credential={}/20240101/{}/{service}/aws4_request, \
                     SignedHeaders=host, Signature=0",
                    Moto::ACCESS_KEY_ID,
                    Moto::REGION
                ),
            ));
        }
    }
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (status, reply) = http_post(moto.port(), &refs, body.as_bytes())?;
    let text = String::from_utf8_lossy(&reply).into_owned();
    if !(200..300).contains(&status) {
        bail!("HTTP {status}: {text}");
    }
    Ok(text)
}

/// `application/x-www-form-urlencoded` for one value.
fn form_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// POST to one of moto's own endpoints (`/moto-api/...`).
fn moto_api(moto: &Moto, path: &str, body: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", moto.port()))?;
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status from {path}"))?;
    Ok((status, reply))
}

/// The text of the first `<tag>` element (XML entities decoded).
fn xml_text(xml: &str, tag: &str) -> Result<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml
        .find(&open)
        .map(|i| i + open.len())
        .ok_or_else(|| anyhow!("no <{tag}> in {xml}"))?;
    let len = xml[start..]
        .find(&close)
        .ok_or_else(|| anyhow!("no </{tag}> in {xml}"))?;
    Ok(xml[start..start + len]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_calls_name_their_callers_and_unsigned_ones_are_refused() {
        let aws = IamMoto::shared();
        let role = aws.create_role(&Moto::unique_name("testkit-role")).unwrap();
        assert!(
            role.starts_with("arn:aws:iam::123456789012:role/testkit-role-"),
            "{role}"
        );
        let session = aws.assume_role(&role, "s1").unwrap();
        let arn = aws.caller_arn(&session).unwrap();
        let role_name = role.rsplit('/').next().unwrap();
        assert_eq!(
            arn,
            format!("arn:aws:sts::123456789012:assumed-role/{role_name}/s1")
        );
        let (user_arn, keys) = aws.create_user(&Moto::unique_name("testkit-user")).unwrap();
        assert_eq!(aws.caller_arn(&keys).unwrap(), user_arn);
        let forged = AwsKeys {
            secret_access_key: "wrong".into(),
            ..keys
        };
        let err = aws.caller_arn(&forged).unwrap_err().to_string();
        assert!(err.contains("SignatureDoesNotMatch"), "{err}");
        let err = query(&aws.moto, "iam", "ListRoles", &[], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("InvalidClientTokenId"), "{err}");
        assert_eq!(form_encode("a b/c=+"), "a%20b%2Fc%3D%2B");
        // caller_arn made one call with the session's key, the forged key one more.
        assert_eq!(aws.sts_calls_signed_by(&session.access_key_id).unwrap(), 1);
        assert_eq!(aws.sts_calls_signed_by(&forged.access_key_id).unwrap(), 2);
    }
}
