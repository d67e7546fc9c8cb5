//! AWS IAM tokens for Sluice, in both directions:
//!
//! - [`client_token`]: what a client (the Lambda, say) sends Sluice as its password to log in
//!   with its AWS identity: a signed `sts:GetCallerIdentity` request, bound to one Sluice by a
//!   signed header naming it. Sluice sends the request on to STS, which checks the signature
//!   and says whose it is.
//! - [`rds_token`]: the RDS IAM authentication token Sluice logs in to the database with
//!   (a presigned `rds-db:connect` URL).
//!
//! Both are signed by the AWS SDK's own SigV4 signer (`aws-sigv4`); [`sigv4`] is the thin layer
//! over it that both use, checked against AWS's published test vectors.

pub mod client_token;
pub mod rds_token;
pub mod sigv4;
mod time;

pub use aws_credential_types::Credentials;
pub use client_token::{ClientToken, DecodeError, TokenRequest};
pub use sigv4::SignError;
pub use time::{floor_time, format_amz_date, parse_amz_date};
