//! Client authentication, shared by the login and COM_CHANGE_USER: who a user is (one Sluice
//! knows, one that logs in with IAM, or a database account looked up now), which plugin its
//! clients must answer, and whether their answer proves them.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime};

use crate::auth;
use crate::config::AuthPluginName;
use crate::context::Shared;
use crate::credentials::{Account, AccountRow, Credential};
use crate::errors::ClientError;
use crate::logsafe::Escaped;

/// Rows of `mysql.user` read for one name, at most (one per host).
const MAX_ACCOUNT_ROWS: usize = 256;

/// Who a login names.
#[derive(Debug)]
pub(crate) enum Who {
    /// A user Sluice knows (`[[users]]`, a secret, `[[iam.identities]]`), or a database
    /// account whose stored hash Sluice can check.
    Known(Credential),
    /// A database account whose plugin Sluice cannot log in with on the client's behalf.
    Unsupported(String),
    /// The lookup did not answer (logged): the login cannot be checked now.
    LookupFailed,
    /// Nobody by that name.
    Unknown,
}

impl Who {
    /// The plugin the client must answer (`fallback` for users Sluice does not know, so their
    /// refusal looks like any other).
    pub(crate) fn plugin(&self, fallback: AuthPluginName) -> AuthPluginName {
        match self {
            Who::Known(c) => c.auth_plugin,
            _ => fallback,
        }
    }

    /// The user, if known.
    pub(crate) fn credential(&self) -> Option<&Credential> {
        match self {
            Who::Known(c) => Some(c),
            _ => None,
        }
    }
}

/// Finds the user called `name`: Sluice's own users first, then (with
/// `[database_accounts] enabled`) the database's accounts.
pub(crate) async fn resolve(shared: &Shared, name: &str) -> Who {
    if let Some(known) = shared.credentials.get(name) {
        return Who::Known(known);
    }
    lookup(shared, name, None).await
}

/// Looks `name` up among the database's accounts (`read_since`: a login that began then failed
/// against the cached copy).
async fn lookup(shared: &Shared, name: &str, read_since: Option<Instant>) -> Who {
    let Some(accounts) = &shared.credentials.accounts else {
        return Who::Unknown;
    };
    if name.is_empty() || name.len() > 80 {
        return Who::Unknown;
    }
    let fetched = accounts
        .get(name, read_since, || {
            read_account(shared, &accounts.lookup_user, name)
        })
        .await;
    match fetched {
        Ok(Some(Account::Unsupported(plugin))) => Who::Unsupported(plugin),
        Ok(Some(account)) => Who::Known(Credential::database_account(name, account)),
        Ok(None) => Who::Unknown,
        Err(why) => {
            tracing::warn!(user = %Escaped(name), error = %why, "cannot look the account up in the database");
            Who::LookupFailed
        }
    }
}

/// Reads `name`'s rows of `mysql.user`, logged in as `lookup_user` on a connection of its own,
/// and the host the database sees Sluice as.
async fn read_account(
    shared: &Shared,
    lookup_user: &str,
    name: &str,
) -> Result<(Vec<AccountRow>, String), String> {
    let deadline = tokio::time::Instant::now() + shared.config().backend.connect_timeout;
    let mut conn = crate::admin::side_connection(shared, Arc::from(lookup_user), deadline).await?;
    // The name goes as a hex literal: nothing in it can change the statement.
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    let sql = format!(
        "SELECT Host, plugin, authentication_string, SUBSTRING_INDEX(USER(), '@', -1) \
         FROM mysql.user WHERE User = CONVERT(0x{hex} USING utf8mb4)"
    );
    let rows = conn
        .query_rows(&sql, "reading a database account", MAX_ACCOUNT_ROWS)
        .await;
    crate::admin::close_side_connection(shared, conn);
    let rows = rows.map_err(|e| format!("the lookup as `{lookup_user}` failed: {e}"))?;
    let mut our_host = String::new();
    let rows = rows
        .into_iter()
        .filter_map(|r| {
            let mut r = r.into_iter();
            let (host, plugin, auth, seen) = (r.next()?, r.next()?, r.next()?, r.next()?);
            our_host = seen.unwrap_or_default();
            Some(AccountRow {
                host: host.unwrap_or_default(),
                plugin: plugin.unwrap_or_default(),
                authentication_string: auth.unwrap_or_default(),
            })
        })
        .collect();
    Ok((rows, our_host))
}

/// What the client answered.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Answer<'a> {
    /// A response to `nonce` (mysql_native_password, caching_sha2_password, ed25519).
    Scramble { nonce: &'a [u8], response: &'a [u8] },
    /// A password sent in full (caching_sha2 full authentication, mysql_clear_password).
    Cleartext(&'a [u8]),
    /// Nothing that can prove anything (a full authentication that sent no usable password).
    Unusable,
}

impl Answer<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Answer::Scramble { response, .. } => response.is_empty(),
            Answer::Cleartext(p) => p.is_empty() || *p == [0],
            Answer::Unusable => false,
        }
    }
}

/// A refused login: what the client reads and what the log says.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub error: ClientError,
    pub reason: &'static str,
}

/// Checks `answer` for `who` (named `name`, connecting from `host`); counts and logs a refusal.
pub(crate) async fn verify(
    shared: &Shared,
    who: Who,
    name: &str,
    host: &str,
    plugin: AuthPluginName,
    answer: Answer<'_>,
) -> Result<Credential, Refusal> {
    let known = who.credential().is_some();
    let result = check(shared, who, name, host, plugin, answer).await;
    if let Err(refusal) = &result {
        shared.stats.client_auth_failures.fetch_add(1, Relaxed);
        shared.metrics.auth_failed(name, known);
        tracing::info!(user = %Escaped(name), %host, reason = refusal.reason, error = %Escaped(&refusal.error.message),
            "login refused");
    }
    result
}

async fn check(
    shared: &Shared,
    who: Who,
    name: &str,
    host: &str,
    plugin: AuthPluginName,
    answer: Answer<'_>,
) -> Result<Credential, Refusal> {
    let denied = || Refusal {
        error: ClientError::access_denied(name, host, !answer.is_empty()),
        reason: "wrong password or unknown user",
    };
    let cred = match who {
        Who::Known(c) => c,
        Who::Unknown => return Err(denied()),
        Who::Unsupported(plugin) => {
            return Err(Refusal {
                error: ClientError::access_denied_because(
                    name,
                    host,
                    &format!(
                        "the database account uses the {plugin} plugin, and Sluice can log in \
                         on a client's behalf only as mysql_native_password accounts; add the \
                         user to Sluice ([[users]] or a secret), or ALTER USER it IDENTIFIED \
                         WITH mysql_native_password"
                    ),
                ),
                reason: "database account with an unsupported plugin",
            });
        }
        Who::LookupFailed => return Err(lookup_failed(name)),
    };
    if matches!(answer, Answer::Unusable) {
        return Err(denied());
    }
    if cred.uses_iam() {
        return check_iam(shared, cred, name, host, answer).await;
    }
    if cred.account().is_some() {
        return check_account(shared, cred, name, host, answer).await;
    }
    let verified = shared
        .credentials
        .authenticate(Some(cred), |u| match answer {
            Answer::Cleartext(p) => u.verify_cleartext(p),
            Answer::Scramble { nonce, response } => u.verify_scramble(plugin, nonce, response),
            Answer::Unusable => false,
        })
        .await;
    verified.ok_or_else(denied)
}

/// A login whose account could not be looked up: refused as "cannot check now".
fn lookup_failed(name: &str) -> Refusal {
    Refusal {
        error: ClientError::cannot_verify_login(name, "the database account lookup failed"),
        reason: "database account lookup failed",
    }
}

/// An IAM token, sent in clear inside TLS.
async fn check_iam(
    shared: &Shared,
    cred: Credential,
    name: &str,
    host: &str,
    answer: Answer<'_>,
) -> Result<Credential, Refusal> {
    let (Some(iam), Answer::Cleartext(token)) = (&shared.credentials.iam, answer) else {
        return Err(Refusal {
            error: ClientError::access_denied_because(
                name,
                host,
                "this user logs in with an AWS IAM token, sent with mysql_clear_password over TLS",
            ),
            reason: "IAM user without a token",
        });
    };
    match iam.verify(name, token, SystemTime::now()).await {
        Ok(principal) => {
            tracing::debug!(user = %Escaped(name), %principal, "IAM login");
            Ok(cred)
        }
        Err(why) if why.is_transient() => Err(Refusal {
            error: ClientError::cannot_verify_login(name, &why.to_string()),
            reason: "STS unavailable",
        }),
        Err(why) => Err(Refusal {
            error: ClientError::access_denied_because(name, host, &why.to_string()),
            reason: why.kind(),
        }),
    }
}

/// A database account: the scramble against its stored hash; on a mismatch the account is read
/// again once (its password may have changed).
async fn check_account(
    shared: &Shared,
    cred: Credential,
    name: &str,
    host: &str,
    answer: Answer<'_>,
) -> Result<Credential, Refusal> {
    let Some(accounts) = &shared.credentials.accounts else {
        return Err(Refusal {
            error: ClientError::access_denied(name, host, !answer.is_empty()),
            reason: "database accounts are off",
        });
    };
    let began = Instant::now();
    let mut cred = cred;
    for attempt in 0..2 {
        if proves(accounts, &cred, name, answer) {
            return Ok(cred);
        }
        if attempt == 1 {
            break;
        }
        match lookup(shared, name, Some(began)).await {
            Who::Known(fresh) if fresh.account().is_some() => cred = fresh,
            Who::LookupFailed => return Err(lookup_failed(name)),
            other => {
                // Dropped, or changed to a plugin Sluice cannot use: refuse as for that.
                return Box::pin(check(
                    shared,
                    other,
                    name,
                    host,
                    AuthPluginName::MysqlNativePassword,
                    answer,
                ))
                .await;
            }
        }
    }
    Err(Refusal {
        error: ClientError::access_denied(name, host, !answer.is_empty()),
        reason: "wrong password for a database account",
    })
}

/// Whether `answer` proves `cred`'s account; a proof is kept for backend logins.
fn proves(
    accounts: &crate::credentials::DatabaseAccounts,
    cred: &Credential,
    name: &str,
    answer: Answer<'_>,
) -> bool {
    match (cred.account(), answer) {
        (Some(Account::NoPassword), Answer::Scramble { response, .. }) => response.is_empty(),
        (Some(Account::Native(stored)), Answer::Scramble { nonce, response }) => {
            match auth::verify_native_hash(nonce, stored, response) {
                Some(proof) => {
                    accounts.remember(name, proof);
                    true
                }
                None => false,
            }
        }
        _ => false,
    }
}
