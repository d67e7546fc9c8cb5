//! The thin layer over the AWS SDK's SigV4 signer (`aws-sigv4`) that both token kinds use:
//! signing a request in its headers, and presigning a URL.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

/// A request could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the request: {0}")]
pub struct SignError(String);

impl SignError {
    fn from(e: impl std::fmt::Display) -> Self {
        SignError(e.to_string())
    }

    pub(crate) fn from_message(message: String) -> Self {
        SignError(message)
    }
}

/// Where and when a signature is valid: the credential scope and the signing time.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The signing name of the service (`sts`, `rds-db`, `s3`).
    pub service: &'a str,
    /// The region, such as `us-east-1`.
    pub region: &'a str,
    /// The signing time (`X-Amz-Date`).
    pub time: SystemTime,
}

/// The body a presigned request is signed for.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// These bytes (an empty body for RDS tokens).
    Bytes(&'a [u8]),
    /// `UNSIGNED-PAYLOAD`, as S3 presigns.
    Unsigned,
}

/// How the path is encoded in the canonical request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEncoding {
    /// Every service but S3: normalized and encoded twice.
    Standard,
    /// S3: as it is, encoded once.
    S3,
}

fn params<'a>(
    identity: &'a Identity,
    scope: &Scope<'a>,
    settings: SigningSettings,
) -> Result<aws_sigv4::http_request::SigningParams<'a>, SignError> {
    let params = v4::SigningParams::builder()
        .identity(identity)
        .region(scope.region)
        .name(scope.service)
        .time(scope.time)
        .settings(settings)
        .build()
        .map_err(SignError::from)?;
    Ok(params.into())
}

/// Signs a request in its headers. `headers` are signed as given (include `host`); returns the
/// headers to add: `authorization`, `x-amz-date` and, with a session token, `x-amz-security-token`
/// (which is signed too).
pub fn sign_headers(
    credentials: &Credentials,
    scope: &Scope<'_>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<(String, String)>, SignError> {
    let identity: Identity = credentials.clone().into();
    let params = params(&identity, scope, SigningSettings::default())?;
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(SignError::from)?;
    let (instructions, _) = sign(request, &params)
        .map_err(SignError::from)?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect())
}

/// Presigns `url` for `method`: returns it with the `X-Amz-*` query parameters appended, valid
/// for `expires` from the signing time.
pub fn presign_url(
    credentials: &Credentials,
    scope: &Scope<'_>,
    method: &str,
    url: &str,
    expires: Duration,
    payload: Payload<'_>,
    path: PathEncoding,
) -> Result<String, SignError> {
    let identity: Identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires);
    if path == PathEncoding::S3 {
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    let params = params(&identity, scope, settings)?;
    let body = match payload {
        Payload::Bytes(b) => SignableBody::Bytes(b),
        Payload::Unsigned => SignableBody::UnsignedPayload,
    };
    let request =
        SignableRequest::new(method, url, std::iter::empty(), body).map_err(SignError::from)?;
    let (instructions, _) = sign(request, &params)
        .map_err(SignError::from)?
        .into_parts();
    let mut url = url::Url::parse(url).map_err(SignError::from)?;
    for (name, value) in instructions.params() {
        let value: &Cow<'_, str> = value;
        url.query_pairs_mut().append_pair(name, value);
    }
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    //! AWS's published SigV4 test vectors: the Signature Version 4 test suite
    //! (<https://docs.aws.amazon.com/general/latest/gr/signature-v4-test-suite.html>, cases
    //! `get-vanilla` and `post-x-www-form-urlencoded`) and the presigned URL worked through in
    //! "Authenticating Requests: Using Query Parameters"
    //! (<https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html>).

    use super::*;
    use crate::time::parse_amz_date;

    fn suite_credentials() -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test suite",
        )
    }

    fn suite_scope() -> Scope<'static> {
        Scope {
            service: "service",
            region: "us-east-1",
            time: parse_amz_date("20150830T123600Z").unwrap(),
        }
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
    }

    #[test]
    fn get_vanilla() {
        let headers = sign_headers(
            &suite_credentials(),
            &suite_scope(),
            "GET",
            "https://example.amazonaws.com/",
            &[("host", "example.amazonaws.com")],
            b"",
        )
        .unwrap();
        assert_eq!(header(&headers, "x-amz-date"), "20150830T123600Z");
        assert_eq!(
            header(&headers, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn post_x_www_form_urlencoded() {
        let headers = sign_headers(
            &suite_credentials(),
            &suite_scope(),
            "POST",
            "https://example.amazonaws.com/",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("host", "example.amazonaws.com"),
            ],
            b"Param1=value1",
        )
        .unwrap();
        assert_eq!(
            header(&headers, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        );
    }

    #[test]
    fn presigned_url_from_the_s3_guide() {
        let credentials = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "S3 guide",
        );
        let scope = Scope {
            service: "s3",
            region: "us-east-1",
            time: parse_amz_date("20130524T000000Z").unwrap(),
        };
        let url = presign_url(
            &credentials,
            &scope,
            "GET",
            "https://examplebucket.s3.amazonaws.com/test.txt",
            Duration::from_secs(86_400),
            Payload::Unsigned,
            PathEncoding::S3,
        )
        .unwrap();
        assert_eq!(
            url,
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }
}
