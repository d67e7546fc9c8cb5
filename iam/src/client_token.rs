//! The token a client logs in to Sluice with, instead of a password Sluice must store.
//!
//! It is an `sts:GetCallerIdentity` request signed with the client's AWS credentials in the
//! headers (the form HashiCorp Vault's AWS auth uses): `POST /` to STS with the body
//! [`BODY`], signing `host`, `x-amz-date`, `x-amz-security-token` (for temporary credentials)
//! and [`AUDIENCE_HEADER`], whose value names the Sluice it is for. The client sends the
//! signed parts, encoded as [`PREFIX`] + base64url(JSON), as its password over TLS.
//!
//! Sluice checks what it can itself (format, audience, STS host, age), then sends the request
//! to STS: STS verifies the signature, so a token changed in any signed part, or signed for
//! another audience and relabelled, is refused there, and says whose credentials signed it.
//!
//! Signing is deterministic: the same credentials signing for the same audience at the same
//! second produce the same token. Clients round the signing time down to [`SIGNING_STEP`], so
//! instances sharing credentials send identical tokens within a step and Sluice's cache of
//! verified tokens answers all of them after one STS call.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::sigv4::{Scope, SignError, sign_headers};
use crate::time::{floor_time, parse_amz_date};

/// What every token starts with (format version 1).
pub const PREFIX: &str = "sluice-iam-v1.";
/// The signed header naming the Sluice a token is for.
pub const AUDIENCE_HEADER: &str = "x-sluice-audience";
/// The body of the signed request.
pub const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
/// The content type the request is sent with (not signed).
pub const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
/// The signing name of STS.
pub const SERVICE: &str = "sts";
/// Longest token accepted (a session token is 1-2 KiB; a whole token stays well below this).
pub const MAX_LEN: usize = 16 * 1024;
/// The step clients round their signing time down to.
pub const SIGNING_STEP: Duration = Duration::from_secs(60);

/// STS's regional endpoint host for `region`.
pub fn regional_sts_host(region: &str) -> String {
    format!("sts.{region}.amazonaws.com")
}

/// What a token is made for.
#[derive(Debug, Clone, Copy)]
pub struct TokenRequest<'a> {
    /// The STS host (`sts.eu-west-1.amazonaws.com`, or `host:port` of a local stand-in): the
    /// one the Sluice that checks the token sends it to.
    pub sts_host: &'a str,
    /// The region the request is signed for.
    pub region: &'a str,
    /// The name of the Sluice the token is for (its `iam.audience`).
    pub audience: &'a str,
}

/// A decoded token: the signed parts of the request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientToken {
    /// The STS host the request was signed for.
    pub host: String,
    /// The audience the client claims it signed for.
    #[serde(rename = "aud")]
    pub audience: String,
    /// `x-amz-date`.
    pub date: String,
    /// `x-amz-security-token`, for temporary credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// The `authorization` header.
    #[serde(rename = "auth")]
    pub authorization: String,
}

/// A token does not even look right (checked before anything is sent anywhere).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the password is not a Sluice IAM token (it must start with `{PREFIX}`)")]
    NotAToken,
    #[error("the token is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
}

/// The parts of a SigV4 `authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'a> {
    pub access_key_id: &'a str,
    /// `YYYYMMDD` of the credential scope.
    pub scope_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    /// Lowercase header names, in the order signed.
    pub signed_headers: Vec<&'a str>,
    pub signature: &'a str,
}

/// Signs a token for `request` with `credentials` at `time`, rounded down to
/// [`SIGNING_STEP`]; returns the text the client sends as its password.
pub fn sign(
    credentials: &Credentials,
    request: &TokenRequest<'_>,
    time: SystemTime,
) -> Result<String, SignError> {
    let time = floor_time(time, SIGNING_STEP);
    let scope = Scope {
        service: SERVICE,
        region: request.region,
        time,
    };
    let url = format!("https://{}/", request.sts_host);
    let added = sign_headers(
        credentials,
        &scope,
        "POST",
        &url,
        &[
            ("host", request.sts_host),
            (AUDIENCE_HEADER, request.audience),
        ],
        BODY.as_bytes(),
    )?;
    let get = |name: &str| {
        added
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let token = ClientToken {
        host: request.sts_host.to_owned(),
        audience: request.audience.to_owned(),
        date: get("x-amz-date").ok_or_else(|| SignError::missing("x-amz-date"))?,
        session_token: get("x-amz-security-token"),
        authorization: get("authorization").ok_or_else(|| SignError::missing("authorization"))?,
    };
    Ok(token.encode())
}

impl SignError {
    fn missing(header: &str) -> Self {
        SignError::from_message(format!("the signer added no {header} header"))
    }
}

impl ClientToken {
    /// The text a client sends: [`PREFIX`] + base64url(JSON).
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Parses a token (one trailing NUL, as `mysql_clear_password` sends it, is ignored).
    pub fn decode(text: &[u8]) -> Result<ClientToken, DecodeError> {
        let text = text.strip_suffix(&[0]).unwrap_or(text);
        if text.len() > MAX_LEN {
            return Err(DecodeError::TooLong);
        }
        let body = text
            .strip_prefix(PREFIX.as_bytes())
            .ok_or(DecodeError::NotAToken)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| DecodeError::Malformed("not base64url after the prefix"))?;
        let token: ClientToken = serde_json::from_slice(&json)
            .map_err(|_| DecodeError::Malformed("not the expected JSON object"))?;
        let printable = |s: &str| s.bytes().all(|b| (0x20..0x7F).contains(&b));
        if !printable(&token.host)
            || !printable(&token.audience)
            || !printable(&token.authorization)
            || !token.session_token.as_deref().is_none_or(printable)
        {
            return Err(DecodeError::Malformed("a field holds control characters"));
        }
        token.authorization()?;
        Ok(token)
    }

    /// When the request was signed (`x-amz-date`).
    pub fn signed_at(&self) -> Result<SystemTime, DecodeError> {
        parse_amz_date(&self.date).ok_or(DecodeError::Malformed("x-amz-date is not a date"))
    }

    /// The parts of the `authorization` header; fails unless it is a SigV4 signature for STS
    /// whose signed headers bind the host, the date and the audience.
    pub fn authorization(&self) -> Result<Authorization<'_>, DecodeError> {
        let bad = DecodeError::Malformed;
        let rest = self
            .authorization
            .strip_prefix("AWS4-HMAC-SHA256 ")
            .ok_or(bad("the signature is not AWS4-HMAC-SHA256"))?;
        let mut credential = None;
        let mut signed = None;
        let mut signature = None;
        for part in rest.split(',').map(str::trim) {
            if let Some(v) = part.strip_prefix("Credential=") {
                credential = Some(v);
            } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
                signed = Some(v);
            } else if let Some(v) = part.strip_prefix("Signature=") {
                signature = Some(v);
            }
        }
        let (credential, signed, signature) = match (credential, signed, signature) {
            (Some(c), Some(h), Some(s)) => (c, h, s),
            _ => return Err(bad("the authorization header lacks a part")),
        };
        let mut scope = credential.split('/');
        let (access_key_id, scope_date, region, service, terminator) = match (
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
        ) {
            (Some(a), Some(d), Some(r), Some(s), Some(t)) if scope.next().is_none() => {
                (a, d, r, s, t)
            }
            _ => return Err(bad("the credential scope is not key/date/region/service")),
        };
        if terminator != "aws4_request" || access_key_id.is_empty() || region.is_empty() {
            return Err(bad("the credential scope is not key/date/region/service"));
        }
        if service != SERVICE {
            return Err(bad("the request is not signed for STS"));
        }
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the signature is not 64 hex digits"));
        }
        if !self.date.starts_with(scope_date) || scope_date.len() != 8 {
            return Err(bad("the credential scope's date is not the signing date"));
        }
        let signed_headers: Vec<&str> = signed.split(';').collect();
        for needed in ["host", "x-amz-date", AUDIENCE_HEADER] {
            if !signed_headers.contains(&needed) {
                return Err(bad("the signature does not cover host, date and audience"));
            }
        }
        if self.session_token.is_some() && !signed_headers.contains(&"x-amz-security-token") {
            return Err(bad("the signature does not cover the session token"));
        }
        Ok(Authorization {
            access_key_id,
            scope_date,
            region,
            service,
            signed_headers,
            signature,
        })
    }

    /// The headers to send STS besides `host` and `content-type`: the signed ones and the
    /// signature.
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut h = vec![
            ("authorization", self.authorization.as_str()),
            ("x-amz-date", self.date.as_str()),
            (AUDIENCE_HEADER, self.audience.as_str()),
        ];
        if let Some(t) = &self.session_token {
            h.push(("x-amz-security-token", t.as_str()));
        }
        h
    }
}

/// A token is a bearer credential: never shown.
impl fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientToken")
            .field("host", &self.host)
            .field("audience", &self.audience)
            .field("date", &self.date)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(token: Option<&str>) -> Credentials {
        Credentials::new(
            "ASIAEXAMPLEEXAMPLE12",
            "secretsecretsecret",
            token.map(str::to_owned),
            None,
            "test",
        )
    }

    const REQ: TokenRequest<'static> = TokenRequest {
        sts_host: "sts.eu-west-1.amazonaws.com",
        region: "eu-west-1",
        audience: "sluice-prod",
    };

    #[test]
    fn round_trip_binds_host_date_audience_and_session() {
        let t = parse_amz_date("20240601T101112Z").unwrap();
        let text = sign(&creds(Some("FwoG//session+token=")), &REQ, t).unwrap();
        assert!(text.starts_with(PREFIX));
        let token = ClientToken::decode(text.as_bytes()).unwrap();
        assert_eq!(token.host, "sts.eu-west-1.amazonaws.com");
        assert_eq!(token.audience, "sluice-prod");
        // Rounded down to the minute.
        assert_eq!(token.date, "20240601T101100Z");
        assert_eq!(token.session_token.as_deref(), Some("FwoG//session+token="));
        let auth = token.authorization().unwrap();
        assert_eq!(auth.access_key_id, "ASIAEXAMPLEEXAMPLE12");
        assert_eq!(
            auth.signed_headers,
            [
                "host",
                "x-amz-date",
                "x-amz-security-token",
                "x-sluice-audience"
            ]
        );
        // With a trailing NUL, as mysql_clear_password sends it.
        let mut nul = text.clone().into_bytes();
        nul.push(0);
        assert_eq!(ClientToken::decode(&nul).unwrap(), token);
        // Deterministic within the signing step, different in the next one.
        let same = sign(
            &creds(Some("FwoG//session+token=")),
            &REQ,
            t + Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(same, text);
        let next = sign(
            &creds(Some("FwoG//session+token=")),
            &REQ,
            t + Duration::from_secs(60),
        )
        .unwrap();
        assert_ne!(next, text);
        assert!(!format!("{token:?}").contains("Signature"));
    }

    #[test]
    fn long_term_credentials_need_no_session_token() {
        let t = parse_amz_date("20240601T101112Z").unwrap();
        let token = ClientToken::decode(sign(&creds(None), &REQ, t).unwrap().as_bytes()).unwrap();
        assert_eq!(token.session_token, None);
        assert_eq!(token.headers().len(), 3);
    }

    #[test]
    fn malformed_tokens_are_refused_with_a_reason() {
        assert_eq!(ClientToken::decode(b"hunter2"), Err(DecodeError::NotAToken));
        assert_eq!(
            ClientToken::decode(format!("{PREFIX}{}", "A".repeat(MAX_LEN)).as_bytes()),
            Err(DecodeError::TooLong)
        );
        assert!(matches!(
            ClientToken::decode(format!("{PREFIX}!!!").as_bytes()),
            Err(DecodeError::Malformed(_))
        ));
        let t = parse_amz_date("20240601T101112Z").unwrap();
        let good = ClientToken::decode(sign(&creds(None), &REQ, t).unwrap().as_bytes()).unwrap();
        let variants: Vec<(&str, ClientToken)> = vec![
            ("unbound", {
                let mut x = good.clone();
                x.authorization = x.authorization.replace(";x-sluice-audience", "");
                x
            }),
            ("other service", {
                let mut x = good.clone();
                x.authorization = x.authorization.replace("/sts/", "/s3/");
                x
            }),
            ("short signature", {
                let mut x = good.clone();
                x.authorization.pop();
                x
            }),
            ("sigv2", {
                let mut x = good.clone();
                x.authorization = "AWS AKID:sig".into();
                x
            }),
            ("control characters", {
                let mut x = good.clone();
                x.audience = "a\r\nb".into();
                x
            }),
            ("date mismatch", {
                let mut x = good.clone();
                x.date = "20240602T101100Z".into();
                x
            }),
        ];
        for (what, token) in variants {
            assert!(
                matches!(
                    ClientToken::decode(token.encode().as_bytes()),
                    Err(DecodeError::Malformed(_))
                ),
                "{what}"
            );
        }
        let mut bad_date = good.clone();
        bad_date.date = "2024060XT101100Z".into();
        bad_date.authorization = bad_date.authorization.replace("20240601", "2024060X");
        assert!(bad_date.signed_at().is_err());
    }
}
