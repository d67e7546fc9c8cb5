//! Logging in to the backend as a client's user: which password (or token, or database account
//! proof) to use, and what to do when the database refuses it because the user's secret was
//! rotated.
//!
//! Every password Sluice knows for the user is tried ([`Credentials::backend_login`]: the one
//! the database accepted last, the current one, the secret's pending one, the previous one).
//! When the database refuses them all and the user comes from Secrets Manager, the secret is
//! read again (debounced across borrowers) and the login retried, for up to `retry_for`
//! (within the borrower's deadline). A borrower thus waits out a rotation instead of failing,
//! and a secret that is simply wrong gives a clear error after `retry_for`, not a hang.

use std::time::Duration;

use tokio::time::Instant;

use super::conn::{BackendConn, BackendError, Connector};
use super::pool::PoolKey;
use crate::credentials::{BackendSecret, Credentials, Reread};

/// Why no logged-in connection came out.
#[derive(Debug)]
pub(crate) enum LoginError {
    /// The database refused every password, also after the secret was read again.
    Refused(BackendError),
    /// The user is not (or no longer) known.
    UnknownUser,
    /// Anything else (unreachable, timed out, protocol trouble): worth retrying later.
    Failed(BackendError),
}

/// Opens a connection for `key`, logged in as its user.
pub(crate) async fn open(
    connector: &Connector,
    credentials: &Credentials,
    key: &PoolKey,
    deadline: Instant,
    retry_for: Duration,
) -> Result<BackendConn, LoginError> {
    let mut give_up: Option<Instant> = None;
    loop {
        let Some(login) = credentials.backend_login(&key.user, &connector.address) else {
            return Err(LoginError::UnknownUser);
        };
        let mut refused = None;
        for secret in &login.secrets {
            // No schema at login: a schema the server refuses must come back as its own error
            // (from COM_INIT_DB when the session syncs), not as a failed login.
            match connector.open(key, secret, None).await {
                Ok(conn) => {
                    credentials.backend_accepted(&key.user, secret);
                    return Ok(conn);
                }
                Err(e) if e.is_login_refused() => refused = Some(e),
                Err(e) => return Err(LoginError::Failed(e)),
            }
        }
        let Some(refused) = refused else {
            return Err(LoginError::UnknownUser);
        };
        if !login.can_reread() {
            if let Some(accounts) = &credentials.accounts
                && matches!(login.secrets.first(), Some(BackendSecret::Native(_)))
            {
                // The account's password changed since its client proved the old one: the
                // next client login reads it again.
                accounts.forget(&key.user);
            }
            return Err(LoginError::Refused(refused));
        }
        let give_up = *give_up.get_or_insert_with(|| (Instant::now() + retry_for).min(deadline));
        if Instant::now() >= give_up {
            return Err(LoginError::Refused(refused));
        }
        tracing::info!(user = %key.user, passwords = login.secrets.len(), error = %refused,
            "the database refused the login; reading the user's secret again");
        if credentials.reread_after_refusal(&login, give_up).await == Reread::NotDone {
            return Err(LoginError::Refused(refused));
        }
    }
}
