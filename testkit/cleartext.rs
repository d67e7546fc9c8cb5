//! A MariaDB that asks for the password in clear (`mysql_clear_password`), as RDS asks its IAM
//! users for their token: MariaDB's own test plugin `cleartext_plugin_server`, which compares
//! what the client sends with the account's authentication string.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::mariadb::{MariaDb, MariaDbOptions};
use crate::pki::Pki;

const INSTALL: &str = "scripts/test.sh fetches it (ensure_cleartext_test_plugin in \
     scripts/setup.sh: auth_test_plugin.so from the mariadb-test package of the installed \
     server's version, into ${SLUICE_CACHE:-~/.cache/sluice}/mariadb-test-plugin)";

/// The directory holding `auth_test_plugin.so`.
pub fn plugin_dir() -> Result<PathBuf> {
    let cache = std::env::var_os("SLUICE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sluice")));
    let Some(dir) = cache.map(|c| c.join("mariadb-test-plugin")) else {
        bail!("neither SLUICE_CACHE nor HOME is set; {INSTALL}");
    };
    if !dir.join("auth_test_plugin.so").is_file() {
        bail!(
            "MariaDB's test plugin {} is missing; {INSTALL}",
            dir.join("auth_test_plugin.so").display()
        );
    }
    Ok(dir)
}

/// A MariaDB serving TLS with `pki`'s server certificate and the clear-text test plugin loaded.
/// Create accounts `IDENTIFIED VIA cleartext_plugin_server USING 'what the client must send'`.
pub fn mariadb_with_cleartext_plugin(pki: &Pki) -> Result<MariaDb> {
    let dir = plugin_dir()?;
    let arg = |name: &str, file: &str| format!("--{name}={}", pki.path(file).display());
    MariaDb::start_with(MariaDbOptions {
        extra_args: vec![
            arg("ssl-cert", "server.pem"),
            arg("ssl-key", "server-key.pem"),
            format!("--plugin-dir={}", dir.display()),
            "--plugin-load-add=auth_test_plugin".to_owned(),
            // The test plugins declare no maturity; the server refuses such plugins by default.
            "--plugin-maturity=unknown".to_owned(),
        ],
        ..MariaDbOptions::default()
    })
}
