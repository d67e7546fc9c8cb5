//! The database's own accounts (`[database_accounts]`): a user Sluice does not know is looked
//! up in `mysql.user` through the lookup account, as PgBouncer's `auth_query` does.
//!
//! For a `mysql_native_password` account the stored hash, SHA1(SHA1(password)), is enough both
//! to check the client's scramble and to recover SHA1(password) from it
//! ([`crate::auth::verify_native_hash`]), which is all a backend login with that plugin needs;
//! Sluice keeps it in memory for the account's backend logins. Other plugins store nothing that
//! could do both, and their clients are told so.
//!
//! Lookups are cached for `cache_ttl` (0: every login reads its account). A login that fails
//! against a cached copy reads the account again, unless someone read it since that login
//! began, so a changed password is picked up at once; lookups run one at a time, so a storm of
//! wrong passwords costs the database one query after another, never a burst. A lookup that
//! fails refuses the login: a stale entry is never used past its time.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::{BackendSecret, wildcard};
use crate::auth::{self, NativeProof};
use crate::config::{DatabaseAccountsConfig, Secret};

/// Accounts kept before the cache is swept.
const CACHE_MAX: usize = 10_000;

/// One row of `mysql.user` for the user looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    pub host: String,
    pub plugin: String,
    pub authentication_string: String,
}

/// What the account stores that Sluice can use.
#[derive(Clone, PartialEq, Eq)]
pub enum Account {
    /// mysql_native_password with this SHA1(SHA1(password)).
    Native([u8; 20]),
    /// mysql_native_password without a password.
    NoPassword,
    /// Another plugin (named), which Sluice cannot log in with on the client's behalf.
    Unsupported(String),
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Account::Native(_) => f.write_str("Native(***)"),
            Account::NoPassword => f.write_str("NoPassword"),
            Account::Unsupported(p) => write!(f, "Unsupported({p})"),
        }
    }
}

impl Account {
    /// The account a row describes.
    pub fn from_row(row: &AccountRow) -> Account {
        let plugin = row.plugin.trim();
        if plugin == auth::NATIVE || plugin.is_empty() {
            if row.authentication_string.is_empty() {
                return Account::NoPassword;
            }
            if let Some(hash) = auth::parse_native_hash(&row.authentication_string) {
                return Account::Native(hash);
            }
        }
        Account::Unsupported(if plugin.is_empty() {
            auth::NATIVE.to_owned()
        } else {
            plugin.to_owned()
        })
    }
}

#[derive(Debug)]
struct Entry {
    account: Option<Account>,
    read: Instant,
    /// SHA1(password), from the last client login that proved it.
    proof: Option<NativeProof>,
}

/// Lookups so far, by result.
#[derive(Debug, Default)]
pub struct AccountCounts {
    pub found: AtomicU64,
    pub absent: AtomicU64,
    pub failed: AtomicU64,
}

/// Looked-up accounts.
#[derive(Debug)]
pub struct DatabaseAccounts {
    /// The user the lookups log in as.
    pub lookup_user: String,
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    /// One lookup at a time: a burst of logins for one new user costs one query.
    reading: tokio::sync::Mutex<()>,
    pub counts: AccountCounts,
}

impl DatabaseAccounts {
    /// Lookups as `config` says.
    pub fn new(config: &DatabaseAccountsConfig) -> Self {
        DatabaseAccounts {
            lookup_user: config.lookup_user.clone(),
            ttl: config.cache_ttl,
            entries: Mutex::new(HashMap::new()),
            reading: tokio::sync::Mutex::new(()),
            counts: AccountCounts::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached account of `name` (`Some(None)`: known to be absent), if it was read after
    /// `since` or, without `since`, within the TTL.
    fn cached(&self, name: &str, since: Option<Instant>) -> Option<Option<Account>> {
        let entries = self.entries();
        entries
            .get(name)
            .filter(|e| match since {
                Some(t) => e.read >= t,
                None => e.read.elapsed() < self.ttl,
            })
            .map(|e| e.account.clone())
    }

    /// The account called `name`: cached while younger than `cache_ttl`, else read with
    /// `fetch` (which returns its rows and the host the database sees Sluice as). With
    /// `read_since` (a login that began then failed against the cached copy), the account is
    /// read again unless that happened after `read_since`. `Ok(None)`: no such account.
    /// `Err`: the lookup failed; refuse the login.
    pub async fn get<F, Fut>(
        &self,
        name: &str,
        read_since: Option<Instant>,
        fetch: F,
    ) -> Result<Option<Account>, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Vec<AccountRow>, String), String>>,
    {
        if let Some(hit) = self.cached(name, read_since) {
            return Ok(hit);
        }
        let _one = self.reading.lock().await;
        // Someone else may have read it while this task waited.
        if let Some(hit) = self.cached(name, read_since) {
            return Ok(hit);
        }
        let (rows, our_host) = match fetch().await {
            Ok(r) => r,
            Err(e) => {
                self.counts.failed.fetch_add(1, Relaxed);
                return Err(e);
            }
        };
        let account = pick_row(&rows, &our_host).map(Account::from_row);
        let counter = if account.is_some() {
            &self.counts.found
        } else {
            &self.counts.absent
        };
        counter.fetch_add(1, Relaxed);
        let mut entries = self.entries();
        if entries.len() >= CACHE_MAX {
            // Proofs go last: they are what the sessions of proven accounts log in to the
            // database with, and only a client that knows a password makes one, whereas
            // anyone can fill the cache with names that do not exist.
            let ttl = self.ttl;
            entries.retain(|_, e| e.proof.is_some() || e.read.elapsed() < ttl);
            if entries.len() >= CACHE_MAX {
                entries.retain(|_, e| e.proof.is_some());
            }
            if entries.len() >= CACHE_MAX {
                entries.clear();
            }
        }
        let proof = entries
            .remove(name)
            .filter(|old| old.account == account)
            .and_then(|old| old.proof);
        entries.insert(
            name.to_owned(),
            Entry {
                account: account.clone(),
                read: Instant::now(),
                proof,
            },
        );
        Ok(account)
    }

    /// Keeps the SHA1(password) a client of `name` just proved, for backend logins.
    pub fn remember(&self, name: &str, proof: NativeProof) {
        if let Some(e) = self.entries().get_mut(name) {
            e.proof = Some(proof);
        }
    }

    /// What the backend logins of `name` use: the proof of its last client login, or an empty
    /// password for an account without one.
    pub fn backend_secret(&self, name: &str) -> Option<BackendSecret> {
        let entries = self.entries();
        let entry = entries.get(name)?;
        match (&entry.account, &entry.proof) {
            (Some(Account::NoPassword), _) => Some(BackendSecret::Password(Secret::default())),
            (Some(Account::Native(_)), Some(proof)) => Some(BackendSecret::Native(proof.clone())),
            _ => None,
        }
    }

    /// The database refused `name`'s proof: forget the account, so the next login reads it.
    pub fn forget(&self, name: &str) {
        self.entries().remove(name);
    }
}

/// The row the database would use for a connection from `our_host`, as MySQL orders them:
/// hosts without wildcards first, then patterns by how much they fix, `%` last.
fn pick_row<'a>(rows: &'a [AccountRow], our_host: &str) -> Option<&'a AccountRow> {
    let mut matching: Vec<&AccountRow> = rows
        .iter()
        .filter(|r| host_matches(&r.host, our_host))
        .collect();
    matching.sort_by_key(|r| {
        let wild = r.host.contains(['%', '_']);
        let fixed = r.host.chars().filter(|c| *c != '%' && *c != '_').count();
        (wild, std::cmp::Reverse(fixed))
    });
    matching.first().copied()
}

/// SQL `LIKE` matching of a host pattern (`%` any run, `_` one character), case-insensitive;
/// an empty pattern matches any host, as in MySQL.
fn host_matches(pattern: &str, host: &str) -> bool {
    pattern.is_empty()
        || wildcard::matches(
            &pattern.to_ascii_lowercase(),
            &host.to_ascii_lowercase(),
            '%',
            Some('_'),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host: &str, plugin: &str, auth: &str) -> AccountRow {
        AccountRow {
            host: host.into(),
            plugin: plugin.into(),
            authentication_string: auth.into(),
        }
    }

    #[test]
    fn accounts_from_rows() {
        let hash = "*D821809F681A40A6E379B50D0463EFAE20BDD122";
        assert!(matches!(
            Account::from_row(&row("%", "mysql_native_password", hash)),
            Account::Native(_)
        ));
        assert_eq!(
            Account::from_row(&row("%", "mysql_native_password", "")),
            Account::NoPassword
        );
        assert_eq!(
            Account::from_row(&row(
                "%",
                "ed25519",
                "ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY"
            )),
            Account::Unsupported("ed25519".into())
        );
        assert_eq!(
            Account::from_row(&row("%", "caching_sha2_password", "$A$005$x")),
            Account::Unsupported("caching_sha2_password".into())
        );
    }

    #[test]
    fn the_most_specific_host_wins() {
        let rows = [
            row("%", "mysql_native_password", "a"),
            row("127.0.0.%", "mysql_native_password", "b"),
            row("127.0.0.1", "mysql_native_password", "c"),
            row("10.%", "mysql_native_password", "d"),
        ];
        assert_eq!(
            pick_row(&rows, "127.0.0.1").unwrap().authentication_string,
            "c"
        );
        assert_eq!(
            pick_row(&rows, "127.0.0.2").unwrap().authentication_string,
            "b"
        );
        assert_eq!(
            pick_row(&rows, "10.1.2.3").unwrap().authentication_string,
            "d"
        );
        assert_eq!(
            pick_row(&rows, "192.168.0.1")
                .unwrap()
                .authentication_string,
            "a"
        );
        assert!(pick_row(&rows[1..2], "192.168.0.1").is_none());
        assert!(host_matches("LOCALHOST", "localhost"));
        assert!(host_matches("10.0.0._", "10.0.0.7"));
        assert!(!host_matches("10.0.0._", "10.0.0.17"));
    }

    #[tokio::test]
    async fn a_full_cache_keeps_the_proofs_of_proven_accounts() {
        let accounts = DatabaseAccounts::new(&DatabaseAccountsConfig {
            enabled: true,
            lookup_user: "lookup".into(),
            cache_ttl: Duration::from_secs(60),
        });
        let native = || async {
            Ok((
                vec![row(
                    "%",
                    "mysql_native_password",
                    "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19",
                )],
                "127.0.0.1".to_owned(),
            ))
        };
        accounts.get("proven", None, native).await.unwrap();
        // The client's answer to a nonce proves "password" against the stored hash.
        let nonce = [7u8; 20];
        let response =
            crate::auth::client_response(b"mysql_native_password", &nonce, "password").unwrap();
        let proof = crate::auth::verify_native_hash(
            &nonce,
            &crate::auth::parse_native_hash("*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19").unwrap(),
            &response,
        )
        .unwrap();
        accounts.remember("proven", proof);
        assert!(accounts.backend_secret("proven").is_some());
        // Names that do not exist fill the cache.
        for i in 0..CACHE_MAX + 10 {
            let absent = || async { Ok((Vec::new(), "127.0.0.1".to_owned())) };
            accounts
                .get(&format!("nobody{i}"), None, absent)
                .await
                .unwrap();
        }
        assert!(accounts.entries().len() <= CACHE_MAX);
        assert!(
            accounts.backend_secret("proven").is_some(),
            "the proven account still logs in to the database"
        );
    }

    #[tokio::test]
    async fn cached_then_reread_and_failures_refuse() {
        let accounts = DatabaseAccounts::new(&DatabaseAccountsConfig {
            enabled: true,
            lookup_user: "lookup".into(),
            cache_ttl: Duration::from_secs(60),
        });
        let reads = std::sync::atomic::AtomicU64::new(0);
        let fetch = |auth: &'static str| {
            let reads = &reads;
            move || async move {
                reads.fetch_add(1, Relaxed);
                Ok((
                    vec![row("%", "mysql_native_password", auth)],
                    "127.0.0.1".to_owned(),
                ))
            }
        };
        let hash = "*D821809F681A40A6E379B50D0463EFAE20BDD122";
        let before = Instant::now();
        assert!(matches!(
            accounts.get("u", None, fetch(hash)).await,
            Ok(Some(Account::Native(_)))
        ));
        accounts.get("u", None, fetch(hash)).await.unwrap();
        assert_eq!(reads.load(Relaxed), 1, "the second login uses the cache");
        // A login that began before the last read does not read again...
        accounts.get("u", Some(before), fetch("")).await.unwrap();
        assert_eq!(reads.load(Relaxed), 1);
        // ...one that began after it does.
        let later = Instant::now();
        assert_eq!(
            accounts.get("u", Some(later), fetch("")).await,
            Ok(Some(Account::NoPassword))
        );
        assert_eq!(reads.load(Relaxed), 2);
        // A failed lookup refuses; it never falls back to a stale copy.
        accounts.forget("u");
        let failed = accounts
            .get("u", None, || async {
                Err::<(Vec<AccountRow>, String), _>("down".to_owned())
            })
            .await;
        assert_eq!(failed, Err("down".to_owned()));
        assert_eq!(accounts.counts.failed.load(Relaxed), 1);
        let absent = accounts
            .get("v", None, || async {
                Ok((Vec::new(), "127.0.0.1".to_owned()))
            })
            .await;
        assert_eq!(absent, Ok(None));
    }
}
