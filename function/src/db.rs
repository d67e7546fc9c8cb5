//! The connection pool to the proxy, the statements the function runs, and the classification
//! of database failures into connection, authentication and query errors.

use std::fmt::Write as _;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Pool, PoolConstraints, PoolOpts, SslOpts};

use crate::config::{Config, DbTls};
use crate::error::Error;
use crate::secret::DbSecret;

/// The seed's table, in `utf8mb4` so that any name in a JSON event fits.
pub(crate) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS Customer \
     (CustID INT PRIMARY KEY, Name VARCHAR(255)) DEFAULT CHARSET=utf8mb4";

/// One customer row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Customer {
    /// `CustID`.
    pub id: i32,
    /// `Name` (NULL only for rows written by someone else).
    pub name: Option<String>,
}

/// Server error codes that mean the login was refused.
const AUTH_CODES: &[u16] = &[
    1044, // ER_DBACCESS_DENIED_ERROR
    1045, // ER_ACCESS_DENIED_ERROR
    1251, // ER_NOT_SUPPORTED_AUTH_MODE
    1698, // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
    1862, // ER_MUST_CHANGE_PASSWORD_LOGIN
    9502, // Sluice: the database refused Sluice's login as this user
];
/// Server error codes that mean the connection, not the statement, failed.
const CONNECTION_CODES: &[u16] = &[
    1040, // ER_CON_COUNT_ERROR
    1053, // ER_SERVER_SHUTDOWN
    1203, // ER_TOO_MANY_USER_CONNECTIONS
    1927, // ER_CONNECTION_KILLED (MariaDB)
    9501, // Sluice / RDS Proxy: timed out waiting for a database connection
    9503, // Sluice: the database connection broke during the command
];

/// Where a failure happened: opening a connection or running a statement on one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Connect,
    Statement(&'static str),
}

/// Whether a connect failure is a refused login (so a fresh secret may help).
pub(crate) fn is_access_denied(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if AUTH_CODES.contains(&s.code) || s.state.starts_with("28"))
}

/// Whether `e` broke the connection itself, so the same work may be tried on a fresh one.
pub(crate) fn is_broken_connection(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Io(_) | mysql_async::Error::Driver(_))
}

/// Turns a driver error into the function's error class.
pub(crate) fn classify(config: &Config, user: &str, stage: Stage, e: &mysql_async::Error) -> Error {
    let connection = |message: String| Error::Connection {
        endpoint: config.endpoint(),
        message,
    };
    match e {
        mysql_async::Error::Server(s) if is_access_denied(e) => Error::Authentication {
            user: user.to_owned(),
            endpoint: config.endpoint(),
            message: format!("ERROR {} ({}): {}", s.code, s.state, s.message),
        },
        mysql_async::Error::Server(s)
            if CONNECTION_CODES.contains(&s.code) || s.state.starts_with("08") =>
        {
            connection(format!("ERROR {} ({}): {}", s.code, s.state, s.message))
        }
        mysql_async::Error::Server(s) => match stage {
            // For example "Unknown database": the login itself failed.
            Stage::Connect => connection(format!("ERROR {} ({}): {}", s.code, s.state, s.message)),
            Stage::Statement(statement) => Error::Query {
                statement,
                message: format!("ERROR {} ({}): {}", s.code, s.state, s.message),
            },
        },
        mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => {
            connection("DB_TLS is required but the proxy does not offer TLS".to_owned())
        }
        mysql_async::Error::Io(io) => connection(io.to_string()),
        mysql_async::Error::Driver(d) => connection(d.to_string()),
        other => connection(other.to_string()),
    }
}

/// The database the function works in: `DB_NAME`, else the secret's `dbname`.
pub(crate) fn database(config: &Config, secret: &DbSecret) -> Result<String, Error> {
    config
        .db_name
        .clone()
        .or_else(|| secret.dbname.clone())
        .ok_or_else(|| {
            Error::Config(format!(
                "no database: set DB_NAME or put `dbname` in the secret {}",
                config.secret_arn
            ))
        })
}

/// Reads the CA bundle named by `DB_TLS_CA_FILE` (or given in `DB_TLS_CA_PEM`), if any;
/// checked once at init.
pub(crate) fn load_ca(config: &Config) -> Result<Option<Vec<u8>>, Error> {
    if let Some(pem) = &config.tls_ca_pem {
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(Error::Config(
                "DB_TLS_CA_PEM holds no PEM certificate".to_owned(),
            ));
        }
        return Ok(Some(pem.as_bytes().to_vec()));
    }
    let DbTls::Required {
        ca_file: Some(path),
    } = &config.tls
    else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| {
        Error::Config(format!(
            "DB_TLS_CA_FILE {} cannot be read: {e}",
            path.display()
        ))
    })?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(Error::Config(format!(
            "DB_TLS_CA_FILE {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(Some(pem))
}

/// Connection options for the proxy with `secret`'s credentials.
///
/// `prefer_socket(false)`: otherwise, on loopback, mysql_async asks the server for its unix
/// socket and silently reconnects there, bypassing the proxy.
pub(crate) fn opts(
    config: &Config,
    secret: &DbSecret,
    database: &str,
    ca: Option<&[u8]>,
) -> OptsBuilder {
    // One connection stays open between invocations; `min <= max` always holds here.
    let constraints = PoolConstraints::new(1, config.pool_max.max(1)).unwrap_or_default();
    let mut opts = OptsBuilder::default()
        .ip_or_hostname(config.proxy_host.clone())
        .tcp_port(config.proxy_port)
        .user(Some(secret.username.clone()))
        .pass(Some(secret.password.expose().to_owned()))
        .db_name(Some(database.to_owned()))
        .prefer_socket(false)
        // IAM mode: Sluice asks for the token with mysql_clear_password (always inside TLS,
        // which IAM mode requires).
        .enable_cleartext_plugin(config.iam.is_some())
        // No prepared statements are used: the text protocol never pins a proxy session.
        .stmt_cache_size(0)
        // The function leaves no session state behind (no variables, temporary tables or
        // prepared statements), so a COM_RESET_CONNECTION on every return to the pool would
        // buy nothing and cost a round trip that, on Lambda, the freeze after the response may
        // interrupt. A connection that died while idle is replaced by the retry in the handler.
        .pool_opts(
            PoolOpts::default()
                .with_constraints(constraints)
                .with_reset_connection(false),
        );
    if let DbTls::Required { .. } = config.tls {
        let mut ssl = SslOpts::default();
        if let Some(ca) = ca {
            ssl = ssl
                .with_root_certs(vec![ca.to_vec().into()])
                .with_disable_built_in_roots(true);
        }
        opts = opts.ssl_opts(Some(ssl));
    }
    opts
}

/// A pool to the proxy for one set of credentials.
pub(crate) fn pool(opts: OptsBuilder) -> Pool {
    Pool::new(opts)
}

/// Opens (or reuses) a connection, bounded by the configured connect timeout.
pub(crate) async fn get_conn(config: &Config, pool: &Pool) -> Result<Conn, ConnectFailure> {
    match tokio::time::timeout(config.connect_timeout, pool.get_conn()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(ConnectFailure::Driver(e)),
        Err(_) => Err(ConnectFailure::Timeout),
    }
}

/// Why [`get_conn`] failed.
#[derive(Debug)]
pub(crate) enum ConnectFailure {
    Driver(mysql_async::Error),
    Timeout,
}

impl ConnectFailure {
    /// The function's error for this failure.
    pub(crate) fn classify(&self, config: &Config, user: &str) -> Error {
        match self {
            ConnectFailure::Driver(e) => classify(config, user, Stage::Connect, e),
            ConnectFailure::Timeout => Error::Connection {
                endpoint: config.endpoint(),
                message: format!(
                    "no connection within {} ms (is the proxy reachable from here?)",
                    config.connect_timeout.as_millis()
                ),
            },
        }
    }
}

/// `INSERT ... ON DUPLICATE KEY UPDATE` for `customers` (not empty).
///
/// Values are literals the server cannot misread whatever its `sql_mode`: integers, and names as
/// `_utf8mb4` hexadecimal strings. No prepared statement, so the proxy never pins the session.
pub(crate) fn upsert_sql(customers: &[Customer]) -> String {
    let mut sql = String::from("INSERT INTO Customer (CustID, Name) VALUES ");
    for (i, c) in customers.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "({}, ", c.id);
        match &c.name {
            Some(name) => push_utf8mb4(&mut sql, name),
            None => sql.push_str("NULL"),
        }
        sql.push(')');
    }
    // VALUES() works on MariaDB and MySQL alike (MySQL 8.0.20+ warns, and still runs it).
    sql.push_str(" ON DUPLICATE KEY UPDATE Name = VALUES(Name)");
    sql
}

/// `SELECT` of the rows with the ids of `customers`, in id order.
pub(crate) fn select_sql(customers: &[Customer]) -> String {
    let mut ids: Vec<i32> = customers.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let list: Vec<String> = ids.iter().map(i32::to_string).collect();
    format!(
        "SELECT CustID, Name FROM Customer WHERE CustID IN ({}) ORDER BY CustID",
        list.join(", ")
    )
}

fn push_utf8mb4(sql: &mut String, s: &str) {
    if s.is_empty() {
        sql.push_str("_utf8mb4''");
        return;
    }
    sql.push_str("_utf8mb4 X'");
    for b in s.as_bytes() {
        let _ = write!(sql, "{b:02X}");
    }
    sql.push('\'');
}

/// Runs the invocation's statements on `conn`: create the table, upsert, read the rows back.
pub(crate) async fn upsert(
    conn: &mut Conn,
    customers: &[Customer],
) -> Result<Vec<Customer>, (&'static str, mysql_async::Error)> {
    conn.query_drop(CREATE_TABLE)
        .await
        .map_err(|e| ("create table", e))?;
    if customers.is_empty() {
        return Ok(Vec::new());
    }
    conn.query_drop(upsert_sql(customers))
        .await
        .map_err(|e| ("upsert", e))?;
    let rows: Vec<(i32, Option<String>)> = conn
        .query(select_sql(customers))
        .await
        .map_err(|e| ("select", e))?;
    Ok(rows
        .into_iter()
        .map(|(id, name)| Customer { id, name })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_uses_hex_literals() {
        let sql = upsert_sql(&[
            Customer {
                id: 1,
                name: Some("O'Brien\\ ✓".to_owned()),
            },
            Customer {
                id: -2,
                name: Some(String::new()),
            },
        ]);
        assert_eq!(
            sql,
            "INSERT INTO Customer (CustID, Name) VALUES \
             (1, _utf8mb4 X'4F27427269656E5C20E29C93'), (-2, _utf8mb4'') \
             ON DUPLICATE KEY UPDATE Name = VALUES(Name)"
        );
    }

    #[test]
    fn select_lists_each_id_once() {
        let c = |id| Customer { id, name: None };
        assert_eq!(
            select_sql(&[c(3), c(1), c(3)]),
            "SELECT CustID, Name FROM Customer WHERE CustID IN (1, 3) ORDER BY CustID"
        );
    }

    #[test]
    fn classification() {
        let config = Config::new("arn", "proxy", 3306);
        let server = |code: u16, state: &str| {
            mysql_async::Error::Server(mysql_async::ServerError {
                code,
                state: state.to_owned(),
                message: "m".to_owned(),
            })
        };
        let kind = |stage, e: mysql_async::Error| classify(&config, "u", stage, &e).error_type();
        let stmt = Stage::Statement("upsert");
        assert_eq!(
            kind(Stage::Connect, server(1045, "28000")),
            "AuthenticationError"
        );
        assert_eq!(kind(stmt, server(9502, "HY000")), "AuthenticationError");
        assert_eq!(
            kind(Stage::Connect, server(1049, "42000")),
            "ConnectionError"
        );
        assert_eq!(kind(stmt, server(9501, "HY000")), "ConnectionError");
        assert_eq!(kind(stmt, server(1105, "08S01")), "ConnectionError");
        assert_eq!(kind(stmt, server(1146, "42S02")), "QueryError");
        let io = mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(is_broken_connection(&io));
        assert_eq!(kind(stmt, io), "ConnectionError");
        assert!(is_access_denied(&server(1045, "28000")));
        assert!(!is_access_denied(&server(1146, "42S02")));
    }

    #[test]
    fn ca_file_is_checked_at_init() {
        let mut config = Config::new("arn", "proxy", 3306);
        assert_eq!(load_ca(&config).unwrap(), None);
        config.tls = DbTls::Required { ca_file: None };
        assert_eq!(load_ca(&config).unwrap(), None);

        let dir = std::env::temp_dir().join(format!("sluice-fn-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.pem");
        let bad = dir.join("bad.pem");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(&bad, "not a certificate").unwrap();

        config.tls = DbTls::Required {
            ca_file: Some(good.clone()),
        };
        assert!(load_ca(&config).unwrap().is_some());
        let opts = mysql_async::Opts::from(opts(
            &config,
            &DbSecret::parse("s", r#"{"username":"u","password":"p"}"#).unwrap(),
            "db",
            load_ca(&config).unwrap().as_deref(),
        ));
        let ssl = opts.ssl_opts().expect("TLS required");
        assert!(ssl.disable_built_in_roots());
        assert_eq!(ssl.root_certs().len(), 1);
        assert!(!opts.prefer_socket());

        for (path, why) in [
            (bad, "no PEM certificate"),
            (dir.join("missing.pem"), "cannot be read"),
        ] {
            config.tls = DbTls::Required {
                ca_file: Some(path),
            };
            let err = load_ca(&config).unwrap_err().to_string();
            assert!(err.contains("DB_TLS_CA_FILE") && err.contains(why), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plain_tcp_without_tls() {
        let config = Config::new("arn", "proxy", 4000);
        let opts = mysql_async::Opts::from(opts(
            &config,
            &DbSecret::parse("s", r#"{"username":"u","password":"p"}"#).unwrap(),
            "db",
            None,
        ));
        assert!(opts.ssl_opts().is_none());
        assert_eq!((opts.ip_or_hostname(), opts.tcp_port()), ("proxy", 4000));
        assert_eq!(opts.db_name(), Some("db"));
    }
}
