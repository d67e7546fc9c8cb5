//! What Sluice logs in to the database with for one user, and what each kind may answer: a
//! password answers any plugin (in clear only inside TLS), an RDS IAM token only
//! `mysql_clear_password` inside verified TLS, and a database account's native proof only
//! `mysql_native_password`.

use std::fmt;

use crate::auth::{self, AuthError, NativeProof};
use crate::config::Secret;

/// A credential for a backend login.
#[derive(Clone, PartialEq, Eq)]
pub enum BackendSecret {
    /// A password from `[[users]]` or a secret.
    Password(Secret),
    /// An RDS IAM authentication token made from Sluice's own AWS credentials.
    RdsToken(Secret),
    /// SHA1(password) of a database account, proven by a client's mysql_native_password login.
    Native(NativeProof),
}

/// What protects the connection a response would travel on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    /// TLS whose certificate was not checked (`backend.tls = preferred`).
    Tls,
    /// TLS with a certificate checked against `backend.tls_ca_file`.
    VerifiedTls,
}

impl fmt::Debug for BackendSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendSecret::Password(_) => "Password(***)",
            BackendSecret::RdsToken(_) => "RdsToken(***)",
            BackendSecret::Native(_) => "Native(***)",
        })
    }
}

impl From<Secret> for BackendSecret {
    fn from(password: Secret) -> Self {
        BackendSecret::Password(password)
    }
}

impl BackendSecret {
    /// The answer to a server that asks for `plugin` with `nonce`, on `transport`.
    pub fn response(
        &self,
        plugin: &[u8],
        nonce: &[u8],
        transport: Transport,
    ) -> Result<Vec<u8>, AuthError> {
        let clear = plugin == auth::CLEAR_PASSWORD.as_bytes();
        match self {
            BackendSecret::Password(pw) => {
                if clear && transport == Transport::Plain {
                    return Err(AuthError::ClearTextWithoutTls);
                }
                auth::client_response(plugin, nonce, pw.expose())
            }
            BackendSecret::RdsToken(token) => {
                if clear {
                    if transport != Transport::VerifiedTls {
                        return Err(AuthError::TokenWithoutVerifiedTls);
                    }
                    return auth::client_response(plugin, nonce, token.expose());
                }
                // Any other plugin gets an empty answer (RDS switches IAM users to clear text);
                // a token is never hashed into a scramble.
                auth::client_response(plugin, nonce, "").map(|_| Vec::new())
            }
            BackendSecret::Native(proof) => {
                if plugin == auth::NATIVE.as_bytes() {
                    Ok(proof.response(nonce))
                } else {
                    Err(AuthError::NeedsPassword(
                        String::from_utf8_lossy(plugin).into_owned(),
                    ))
                }
            }
        }
    }

    /// The password itself, for caching_sha2_password's full authentication (only a password
    /// has one to send).
    pub fn password(&self) -> Option<&str> {
        match self {
            BackendSecret::Password(pw) => Some(pw.expose()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_text_needs_tls_and_tokens_need_verified_tls() {
        let pw = BackendSecret::Password(Secret::new("pw"));
        let token = BackendSecret::RdsToken(Secret::new("host:3306/?Action=connect"));
        let clear = auth::CLEAR_PASSWORD.as_bytes();
        assert!(matches!(
            pw.response(clear, b"", Transport::Plain),
            Err(AuthError::ClearTextWithoutTls)
        ));
        assert_eq!(pw.response(clear, b"", Transport::Tls).unwrap(), b"pw\0");
        for t in [Transport::Plain, Transport::Tls] {
            assert!(matches!(
                token.response(clear, b"", t),
                Err(AuthError::TokenWithoutVerifiedTls)
            ));
        }
        assert_eq!(
            token.response(clear, b"", Transport::VerifiedTls).unwrap(),
            b"host:3306/?Action=connect\0"
        );
        // The first answer, before the server switches to clear text, reveals nothing.
        assert!(
            token
                .response(b"mysql_native_password", &[1; 20], Transport::Plain)
                .unwrap()
                .is_empty()
        );
        assert!(
            token
                .response(b"dialog", b"", Transport::VerifiedTls)
                .is_err()
        );
        assert_eq!(format!("{token:?} {pw:?}"), "RdsToken(***) Password(***)");
    }

    #[test]
    fn native_proofs_answer_native_only() {
        let stored = auth::parse_native_hash("*D821809F681A40A6E379B50D0463EFAE20BDD122").unwrap();
        let nonce = [b'a'; 20];
        let response = auth::client_response(b"mysql_native_password", &nonce, "pw").unwrap();
        let proof = auth::verify_native_hash(&nonce, &stored, &response).unwrap();
        let secret = BackendSecret::Native(proof);
        let other = [b'b'; 20];
        assert_eq!(
            secret
                .response(b"mysql_native_password", &other, Transport::Plain)
                .unwrap(),
            auth::client_response(b"mysql_native_password", &other, "pw").unwrap()
        );
        assert!(matches!(
            secret.response(b"client_ed25519", &[0; 32], Transport::VerifiedTls),
            Err(AuthError::NeedsPassword(p)) if p == "client_ed25519"
        ));
        assert_eq!(secret.password(), None);
    }
}
