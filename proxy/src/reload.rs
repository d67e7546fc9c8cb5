//! Configuration reload (SIGHUP and the admin console's `RELOAD`): which settings change live,
//! which need a restart, and the hooks other parts of Sluice register to apply their own
//! settings (the log level, client TLS certificates).
//!
//! A reload reads the whole file again. Settings that are read where they are used (timeouts,
//! limits, users, the admin login) or pushed to the pool take effect at once; settings that
//! cannot change in a running process (listen addresses, the backend address, worker threads)
//! keep their running values and are named in a warning and in RELOAD's reply.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::config::{Config, ConfigError};

/// Produces the configuration to reload: the binary reads its file again (with environment
/// overrides); tests may return anything.
pub type ConfigSource = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Applies part of a new configuration. Runs on every reload, whether or not its keys changed
/// (a renewed certificate keeps its file name); an error keeps the running values of its keys.
pub type ReloadHookFn = Box<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

/// A named reload hook and the configuration keys it is responsible for.
pub struct ReloadHook {
    /// Shown in RELOAD's reply when the hook fails.
    pub name: &'static str,
    /// Keys (exact, or prefixes ending in `.`) the hook applies; without the hook they need a
    /// restart.
    pub keys: &'static [&'static str],
    pub run: ReloadHookFn,
}

impl ReloadHook {
    /// Whether the hook applies `key`.
    pub fn covers(&self, key: &str) -> bool {
        matches(key, self.keys)
    }
}

impl fmt::Debug for ReloadHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadHook")
            .field("name", &self.name)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Keys applied live without a hook: read where they are used, or pushed to the pool and the
/// credentials by the reload itself.
const LIVE_KEYS: &[&str] = &[
    "handshake_timeout",
    "max_allowed_packet",
    "shutdown_timeout",
    "max_client_connections",
    "idle_client_timeout",
    "idle_in_transaction_timeout",
    "client_read_timeout",
    "max_buffered_command",
    "admin.",
    "backend.max_connections",
    "backend.min_idle",
    "backend.borrow_timeout",
    "backend.idle_timeout",
    "backend.max_lifetime",
    "backend.liveness_check_after",
    "backend.connect_timeout",
    // Applies to connections opened after the reload; open ones keep their cache's bound.
    "backend.max_prepared_statements_per_connection",
    // Read by the monitor on every check, and by the pool on every grant.
    "backend.monitor_interval",
    "backend.monitor_user",
    "backend.monitor_password",
    "backend.max_replica_lag",
    "backend.max_connections_per_user",
    "backend.per_user_scope",
    "users",
];

/// What became of one changed setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// In effect now.
    Applied,
    /// Kept at its running value until Sluice restarts.
    NeedsRestart,
    /// A hook failed to apply it; the running value stays.
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Applied => f.write_str("applied"),
            Outcome::NeedsRestart => f.write_str("needs restart"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// One changed setting and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub outcome: Outcome,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changed settings in key order, and hooks that failed.
    pub changes: Vec<Change>,
}

impl ReloadReport {
    /// Keys whose new value waits for a restart.
    pub fn needs_restart(&self) -> Vec<&str> {
        self.keys_where(|o| *o == Outcome::NeedsRestart)
    }

    /// Keys in effect now.
    pub fn applied(&self) -> Vec<&str> {
        self.keys_where(|o| *o == Outcome::Applied)
    }

    /// Keys (or hooks) that failed.
    pub fn failed(&self) -> Vec<&str> {
        self.keys_where(|o| matches!(o, Outcome::Failed(_)))
    }

    fn keys_where(&self, f: impl Fn(&Outcome) -> bool) -> Vec<&str> {
        self.changes
            .iter()
            .filter(|c| f(&c.outcome))
            .map(|c| c.key.as_str())
            .collect()
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this proxy has no configuration file to read again")]
    NoSource,
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Whether `key` matches one of `patterns` (exact, or a prefix ending in `.`).
fn matches(key: &str, patterns: &[&str]) -> bool {
    patterns
        .iter()
        .any(|p| key == *p || (p.ends_with('.') && key.starts_with(p)))
}

/// Whether `key` changes live without a hook (for `SHOW CONFIG`).
pub fn is_live(key: &str) -> bool {
    matches(key, LIVE_KEYS)
}

/// Works out the configuration to run with after a reload: `new`, except for settings that
/// cannot change live and those whose hook failed, which keep `old`'s values. Runs `hooks`.
pub fn plan(old: &Config, new: Config, hooks: &[ReloadHook]) -> (Config, ReloadReport) {
    let changed = changed_keys(old, &new);
    let mut effective = new;
    let mut failed_keys: Vec<&'static str> = Vec::new();
    let mut changes = Vec::new();
    for hook in hooks {
        if let Err(why) = (hook.run)(&effective) {
            tracing::warn!(hook = hook.name, error = %why, "reload hook failed; its settings keep their running values");
            changes.push(Change {
                key: hook.name.to_string(),
                outcome: Outcome::Failed(why),
            });
            failed_keys.extend_from_slice(hook.keys);
        }
    }
    for key in changed {
        let hooked = hooks.iter().any(|h| matches(&key, h.keys));
        let outcome = if matches(&key, &failed_keys) {
            keep_running_value(&mut effective, old, &key);
            continue; // reported under the hook's name
        } else if hooked || is_live(&key) {
            Outcome::Applied
        } else {
            keep_running_value(&mut effective, old, &key);
            Outcome::NeedsRestart
        };
        changes.push(Change { key, outcome });
    }
    (effective, ReloadReport { changes })
}

/// Copies `key`'s running value from `old` into `effective` (whole sections for sections
/// applied as a unit).
fn keep_running_value(effective: &mut Config, old: &Config, key: &str) {
    let (e, o) = (&mut *effective, old);
    match key {
        "listen" => e.listen.clone_from(&o.listen),
        "listen_backlog" => e.listen_backlog = o.listen_backlog,
        "server_version" => e.server_version.clone_from(&o.server_version),
        "worker_threads" => e.worker_threads = o.worker_threads,
        "log_format" => e.log_format = o.log_format,
        "log_level" => e.log_level.clone_from(&o.log_level),
        "http_listen" => e.http_listen.clone_from(&o.http_listen),
        "admin_listen" => e.admin_listen.clone_from(&o.admin_listen),
        "reader_listen" => e.reader_listen.clone_from(&o.reader_listen),
        "backend.address" => e.backend.address.clone_from(&o.backend.address),
        "backend.tls" => e.backend.tls = o.backend.tls,
        "backend.tls_ca_file" => e.backend.tls_ca_file.clone_from(&o.backend.tls_ca_file),
        "backend.tls_server_name" => e
            .backend
            .tls_server_name
            .clone_from(&o.backend.tls_server_name),
        k if k.starts_with("tls.") => e.tls = o.tls.clone(),
        k if k.starts_with("secrets_manager.") => e.secrets_manager = o.secrets_manager.clone(),
        k if k.starts_with("iam.") => e.iam = o.iam.clone(),
        k if k.starts_with("rds_iam.") => e.rds_iam = o.rds_iam.clone(),
        k if k.starts_with("database_accounts.") => {
            e.database_accounts = o.database_accounts.clone()
        }
        // A key added to Config later and not listed here is reported as needing a restart
        // while its new value is used where it is read: list new keys above or in LIVE_KEYS.
        _ => {}
    }
}

/// Keys whose values differ, in key order. Passwords are compared themselves, though they
/// print as `***`.
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (flatten(old), flatten(new));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    let users = |c: &Config| -> Vec<(String, String, &'static str)> {
        c.users
            .iter()
            .map(|u| {
                (
                    u.username.clone(),
                    u.password.expose().to_string(),
                    u.auth_plugin.as_str(),
                )
            })
            .collect()
    };
    if users(old) != users(new) {
        keys.push("users".into());
    }
    if old.admin.password != new.admin.password {
        keys.push("admin.password".into());
    }
    if old.backend.monitor_password != new.backend.monitor_password {
        keys.push("backend.monitor_password".into());
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Every setting as `key = value` text, secrets as `***`, users by name (for `SHOW CONFIG` and
/// for finding what a reload changed).
pub fn flatten(config: &Config) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match toml::Value::try_from(config) {
        Ok(toml::Value::Table(t)) => {
            for (k, v) in t {
                if k == "users" {
                    continue;
                }
                flatten_value(&k, &v, &mut out);
            }
        }
        // Config always serializes to a table; keep SHOW CONFIG usable if that ever changes.
        Ok(other) => {
            out.insert("config".into(), other.to_string());
        }
        Err(e) => {
            out.insert("config".into(), format!("cannot be shown: {e}"));
        }
    }
    let names: Vec<&str> = config.users.iter().map(|u| u.username.as_str()).collect();
    out.insert("users".into(), names.join(", "));
    out
}

fn flatten_value(key: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten_value(&format!("{key}.{k}"), v, out);
            }
        }
        toml::Value::String(s) => {
            out.insert(key.to_string(), s.clone());
        }
        toml::Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            out.insert(key.to_string(), parts.join(", "));
        }
        other => {
            out.insert(key.to_string(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn base() -> Config {
        Config::from_toml(
            "[backend]\naddress = \"db:3306\"\n[[users]]\nusername = \"app\"\npassword = \"pw\"\n",
            "test",
            |_| None,
        )
        .unwrap()
    }

    #[test]
    fn live_settings_apply_and_fixed_ones_wait_for_a_restart() {
        let old = base();
        let mut new = old.clone();
        new.backend.max_connections = 5;
        new.backend.borrow_timeout = std::time::Duration::from_secs(3);
        new.listen = "127.0.0.1:7000".into();
        new.backend.address = "other:3306".into();
        new.users[0].password = Secret::new("rotated");
        new.admin.password = Secret::new("s3cret");
        let (effective, report) = plan(&old, new, &[]);
        assert_eq!(
            report.applied(),
            [
                "admin.password",
                "backend.borrow_timeout",
                "backend.max_connections",
                "users"
            ]
        );
        assert_eq!(report.needs_restart(), ["backend.address", "listen"]);
        assert_eq!(effective.backend.max_connections, 5);
        assert_eq!(effective.users[0].password.expose(), "rotated");
        assert_eq!(effective.listen, old.listen, "the running value stays");
        assert_eq!(effective.backend.address, "db:3306");
    }

    #[test]
    fn hooks_apply_their_keys_and_a_failing_hook_keeps_the_running_values() {
        let old = base();
        let mut new = old.clone();
        new.log_level = "debug".into();
        new.tls.cert_file = "/new.pem".into();
        let hooks = [
            ReloadHook {
                name: "log level",
                keys: &["log_level"],
                run: Box::new(|_| Ok(())),
            },
            ReloadHook {
                name: "tls",
                keys: &["tls."],
                run: Box::new(|c| Err(format!("cannot read {}", c.tls.cert_file))),
            },
        ];
        let (effective, report) = plan(&old, new, &hooks);
        assert_eq!(report.applied(), ["log_level"]);
        assert_eq!(report.failed(), ["tls"]);
        assert!(report.needs_restart().is_empty());
        assert_eq!(effective.log_level, "debug");
        assert_eq!(
            effective.tls.cert_file, "",
            "a failed hook keeps the running values"
        );

        // Without hooks, the same keys wait for a restart.
        let mut again = old.clone();
        again.log_level = "debug".into();
        let (_, report) = plan(&old, again, &[]);
        assert_eq!(report.needs_restart(), ["log_level"]);
    }

    #[test]
    fn an_unchanged_file_changes_nothing_and_secrets_never_show() {
        let old = base();
        let (_, report) = plan(&old, old.clone(), &[]);
        assert!(report.changes.is_empty(), "{report:?}");
        let flat = flatten(&old);
        assert_eq!(flat.get("users").map(String::as_str), Some("app"));
        assert_eq!(flat.get("admin.password").map(String::as_str), Some("***"));
        assert_eq!(
            flat.get("backend.borrow_timeout").map(String::as_str),
            Some("2m")
        );
        assert!(!flat.values().any(|v| v.contains("pw")), "{flat:?}");
        assert!(is_live("admin.username") && !is_live("listen"));
    }
}
