//! RDS IAM authentication tokens: the password Sluice logs in to RDS with instead of a stored
//! one. A token is the URL `host:port/?Action=connect&DBUser=user` presigned for the
//! `rds-db` service, valid for 15 minutes; the database checks it and the `rds-db:connect`
//! permission of whoever signed it. It must only travel inside verified TLS.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;

use crate::sigv4::{PathEncoding, Payload, Scope, SignError, presign_url};

/// How long RDS accepts a token after its signing time (the most the service allows).
pub const LIFETIME: Duration = Duration::from_secs(900);

/// The signing name of RDS IAM authentication.
const SERVICE: &str = "rds-db";

/// The database endpoint and user a token is for.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The endpoint's host name, as clients connect to it.
    pub hostname: &'a str,
    pub port: u16,
    /// The database user (created `IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'`).
    pub username: &'a str,
    /// The database's region.
    pub region: &'a str,
}

/// A token for `target` signed with `credentials` at `time`, built as the AWS SDK's own
/// generator (`aws_sdk_rds::auth_token`) builds it.
pub fn auth_token(
    credentials: &Credentials,
    target: &Target<'_>,
    time: SystemTime,
) -> Result<String, SignError> {
    let url = format!(
        "https://{}:{}/?Action=connect&DBUser={}",
        target.hostname, target.port, target.username
    );
    let scope = Scope {
        service: SERVICE,
        region: target.region,
        time,
    };
    let signed = presign_url(
        credentials,
        &scope,
        "GET",
        &url,
        LIFETIME,
        Payload::Bytes(&[]),
        PathEncoding::Standard,
    )?;
    Ok(signed
        .strip_prefix("https://")
        .map(str::to_owned)
        .unwrap_or(signed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_amz_date;
    use aws_sdk_rds::auth_token::{AuthTokenGenerator, Config};

    /// The SDK's generator with a fixed clock.
    async fn sdk_token(credentials: &Credentials, target: &Target<'_>, time: SystemTime) -> String {
        use aws_config::SdkConfig;
        use aws_credential_types::provider::SharedCredentialsProvider;
        use aws_sdk_rds::config::Region;
        use aws_smithy_async::time::{SharedTimeSource, StaticTimeSource};
        let sdk = SdkConfig::builder()
            .credentials_provider(SharedCredentialsProvider::new(credentials.clone()))
            .region(Region::new(target.region.to_owned()))
            .time_source(SharedTimeSource::new(StaticTimeSource::new(time)))
            .build();
        let generator = AuthTokenGenerator::new(
            Config::builder()
                .hostname(target.hostname)
                .port(u64::from(target.port))
                .username(target.username)
                .build()
                .unwrap(),
        );
        generator.auth_token(&sdk).await.unwrap().to_string()
    }

    #[tokio::test]
    async fn tokens_match_the_sdk_generator() {
        let time = parse_amz_date("20240601T101112Z").unwrap();
        let long_term = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        let session = Credentials::new(
            "ASIAEXAMPLEEXAMPLE12",
            "secret/with+chars=",
            Some("FwoGZXIvYXdzEXAMPLE//token+with/slashes=".to_owned()),
            None,
            "test",
        );
        let targets = [
            Target {
                hostname: "prod.cluster-abc.eu-west-1.rds.amazonaws.com",
                port: 3306,
                username: "app",
                region: "eu-west-1",
            },
            Target {
                hostname: "127.0.0.1",
                port: 13306,
                username: "iam_user",
                region: "us-east-1",
            },
        ];
        for credentials in [&long_term, &session] {
            for target in &targets {
                let ours = auth_token(credentials, target, time).unwrap();
                let sdk = sdk_token(credentials, target, time).await;
                assert_eq!(ours, sdk);
                assert!(
                    ours.starts_with(&format!(
                        "{}:{}/?Action=connect&DBUser={}&X-Amz-Algorithm=AWS4-HMAC-SHA256",
                        target.hostname, target.port, target.username
                    )),
                    "{ours}"
                );
                assert!(ours.contains("X-Amz-Expires=900"), "{ours}");
                assert!(ours.contains("X-Amz-Date=20240601T101112Z"), "{ours}");
                assert_eq!(
                    ours.contains("X-Amz-Security-Token="),
                    credentials.session_token().is_some()
                );
            }
        }
        // A second later, another signature.
        let later = auth_token(&long_term, &targets[0], time + Duration::from_secs(1)).unwrap();
        assert_ne!(later, auth_token(&long_term, &targets[0], time).unwrap());
    }
}
