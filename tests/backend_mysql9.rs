//! Sluice in front of MySQL 9, where `caching_sha2_password` is the only password plugin: the
//! backend login's full authentication over RSA (no TLS) and its fast path, clients that log in
//! to Sluice with caching_sha2_password, and a backend that refuses Sluice's password.
//!
//! Needs the chroot from `scripts/mysql9-chroot.sh` (see `sluice_testkit::mysql9`).
//!
//! Which path a backend login took is proven twice, independently: on the wire, by a relay
//! between Sluice and the server that records the login packets, and in the server, by
//! performance_schema's record of caching_sha2's credential cache lock ([`Mysql9::sha2_auth`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Result;
use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};
use sluice::{ShutdownHandle, Stats};
use sluice_testkit::{Mysql9, Sha2Auth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Limit for anything a test waits on (a login, a query, the proxy's shutdown).
const WAIT: Duration = Duration::from_secs(30);

/// A Sluice instance running in this process.
struct Running {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: ShutdownHandle,
    task: JoinHandle<()>,
}

impl Running {
    /// Starts Sluice in front of `backend` with one user, `app`, whose password Sluice knows as
    /// `password` and whose clients authenticate with `plugin`.
    async fn start(backend: SocketAddr, password: &str, plugin: &str) -> Result<Running> {
        // Plain TCP, so the tap between Sluice and the server can read the login.
        Self::start_with(backend, password, plugin, "tls = \"disabled\"", "", 4).await
    }

    /// Sluice with a pool of one connection, its clients on caching_sha2 and the backend on
    /// Sluice's default TLS.
    async fn pool_of_one(db: &Mysql9) -> Running {
        Self::start_with(
            db.addr(),
            db.app_password(),
            "caching_sha2_password",
            "",
            "",
            1,
        )
        .await
        .expect("start Sluice")
    }

    /// As [`Running::start`], with more `[backend]` lines and top-level settings.
    async fn start_with(
        backend: SocketAddr,
        password: &str,
        plugin: &str,
        backend_extra: &str,
        top_extra: &str,
        max_connections: usize,
    ) -> Result<Running> {
        let text = format!(
            r#"
listen = "127.0.0.1:0"
http_listen = ""
admin_listen = ""
handshake_timeout = "10s"
shutdown_timeout = "5s"
{top_extra}

[backend]
address = "{backend}"
max_connections = {max_connections}
borrow_timeout = "20s"
connect_timeout = "10s"
{backend_extra}

[[users]]
username = "app"
password = "{password}"
auth_plugin = "{plugin}"
"#
        );
        let config = sluice::Config::from_toml(&text, "test", |_| None)?;
        let proxy = sluice::Proxy::bind(config).await?;
        Ok(Running {
            addr: proxy.local_addr(),
            stats: proxy.stats(),
            stop: proxy.shutdown_handle(),
            task: tokio::spawn(proxy.run()),
        })
    }

    /// A client logged in to Sluice as `app`.
    async fn connect(&self, password: &str) -> Result<Conn, mysql_async::Error> {
        tokio::time::timeout(WAIT, Conn::new(client_opts(self.addr, password)))
            .await
            .unwrap_or_else(|_| panic!("login to Sluice on {} took over {WAIT:?}", self.addr))
    }

    async fn stop(self) {
        self.stop.shutdown();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("Sluice did not stop")
            .expect("Sluice's task panicked");
    }
}

/// Client options for `app` at `addr`, over TCP.
fn client_opts(addr: SocketAddr, password: &str) -> OptsBuilder {
    sluice_testkit::client_opts(addr, "app", password, None)
        // Known values mean mysql_async sends no query while logging in, so a login to Sluice
        // alone never causes a backend login: each test decides when that happens.
        .max_allowed_packet(Some(16 << 20))
        .wait_timeout(Some(28800))
}

/// `SELECT CONNECTION_ID()`: the id of the backend connection that ran it.
async fn backend_id(conn: &mut Conn) -> u32 {
    let id: Option<u32> = conn.query_first("SELECT CONNECTION_ID()").await.unwrap();
    id.unwrap()
}

/// A login packet as seen between Sluice and the server.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wire {
    /// Server: the initial handshake.
    Greeting { connection_id: u32, plugin: String },
    /// Sluice: the handshake response.
    HandshakeResponse,
    /// Server: caching_sha2 fast authentication succeeded (AuthMoreData 0x03).
    FastAuthOk,
    /// Server: caching_sha2 wants the password (AuthMoreData 0x04).
    PerformFullAuth,
    /// Sluice: asks for the server's RSA public key (0x02).
    PublicKeyRequest,
    /// Server: its RSA public key, PEM (AuthMoreData).
    PublicKey,
    /// Server: switch to another plugin.
    AuthSwitch(String),
    /// Sluice: any other authentication data, by length.
    AuthData(usize),
    /// Server: login accepted.
    Ok,
    /// Server: login refused, with this error code.
    Err(u16),
    /// Server: a packet the tap does not know, by first byte.
    Other(u8),
}

/// What the tap recorded of one connection, until the login ended.
#[derive(Debug, Default)]
struct Transcript {
    packets: Vec<Wire>,
    server_packets: usize,
    client_packets: usize,
    done: bool,
}

impl Transcript {
    fn record(&mut self, from_server: bool, payload: &[u8]) {
        let wire = if from_server {
            self.server_packets += 1;
            match (self.server_packets, payload) {
                (1, [10, rest @ ..]) => greeting(rest),
                (_, [0x00, ..]) => Wire::Ok,
                (_, [0xFF, lo, hi, ..]) => Wire::Err(u16::from_le_bytes([*lo, *hi])),
                (_, [0x01, 0x03]) => Wire::FastAuthOk,
                (_, [0x01, 0x04]) => Wire::PerformFullAuth,
                (_, [0x01, pem @ ..]) if pem.starts_with(b"-----BEGIN PUBLIC KEY-----") => {
                    Wire::PublicKey
                }
                (_, [0xFE, rest @ ..]) => Wire::AuthSwitch(c_string(rest)),
                (_, [first, ..]) => Wire::Other(*first),
                (_, []) => Wire::Other(0),
            }
        } else {
            self.client_packets += 1;
            match (self.client_packets, payload) {
                (1, _) => Wire::HandshakeResponse,
                (_, [0x02]) => Wire::PublicKeyRequest,
                (_, data) => Wire::AuthData(data.len()),
            }
        };
        self.done = matches!(wire, Wire::Ok | Wire::Err(_));
        self.packets.push(wire);
    }
}

fn greeting(rest: &[u8]) -> Wire {
    // Version (NUL-terminated), connection id (4 bytes), ...; the plugin name comes last.
    let version_end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let id = rest
        .get(version_end + 1..version_end + 5)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let body = rest.strip_suffix(&[0]).unwrap_or(rest);
    let plugin_start = body.iter().rposition(|&b| b == 0).map_or(0, |i| i + 1);
    Wire::Greeting {
        connection_id: id,
        plugin: String::from_utf8_lossy(&body[plugin_start..]).into_owned(),
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A TCP relay between Sluice and the server that records every login's packets, then just
/// forwards bytes.
struct Tap {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<Arc<Mutex<Transcript>>>>>,
    accept: JoinHandle<()>,
}

impl Tap {
    async fn start(target: SocketAddr) -> Result<Tap> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let connections: Arc<Mutex<Vec<Arc<Mutex<Transcript>>>>> = Arc::default();
        let list = connections.clone();
        let accept = tokio::spawn(async move {
            // Dropped with this task, which aborts the relays too.
            let mut relays = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let transcript = Arc::new(Mutex::new(Transcript::default()));
                lock(&list).push(transcript.clone());
                let (client_rx, client_tx) = client.into_split();
                let (server_rx, server_tx) = server.into_split();
                relays.spawn(relay(server_rx, client_tx, true, transcript.clone()));
                relays.spawn(relay(client_rx, server_tx, false, transcript));
            }
        });
        Ok(Tap {
            addr,
            connections,
            accept,
        })
    }

    /// The packets of every login attempted through the tap, in connection order. Connections
    /// that only read the greeting (Sluice's probe at start) are left out.
    fn logins(&self) -> Vec<Vec<Wire>> {
        lock(&self.connections)
            .iter()
            .map(|t| lock(t).packets.clone())
            .filter(|p| p.contains(&Wire::HandshakeResponse))
            .collect()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Forwards `from` to `to`, recording whole packets until the login ends. Each packet is
/// recorded before it is forwarded, so the transcript's order is the order of cause and effect.
async fn relay(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    from_server: bool,
    transcript: Arc<Mutex<Transcript>>,
) {
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut t = lock(&transcript);
            if !t.done {
                pending.extend_from_slice(&chunk[..n]);
                while !t.done && pending.len() >= 4 {
                    let len = u32::from_le_bytes([pending[0], pending[1], pending[2], 0]) as usize;
                    if pending.len() < 4 + len {
                        break;
                    }
                    t.record(from_server, &pending[4..4 + len]);
                    pending.drain(..4 + len);
                }
                if t.done {
                    pending = Vec::new();
                }
            }
        }
        if to.write_all(&chunk[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The connection id a login's greeting announced.
fn greeting_id(login: &[Wire]) -> u32 {
    match login.first() {
        Some(Wire::Greeting { connection_id, .. }) => *connection_id,
        other => panic!("a login starts with a greeting, not {other:?}"),
    }
}

/// Full authentication over RSA: the server asks for the password, Sluice fetches the public key
/// and sends the password encrypted. 256 bytes is one RSA-2048 block; the password in clear
/// (24 characters plus NUL) would be 25.
fn assert_full_rsa(login: &[Wire]) {
    let sha2 = Wire::Greeting {
        connection_id: greeting_id(login),
        plugin: "caching_sha2_password".into(),
    };
    assert_eq!(
        login,
        [
            sha2,
            Wire::HandshakeResponse,
            Wire::PerformFullAuth,
            Wire::PublicKeyRequest,
            Wire::PublicKey,
            Wire::AuthData(256),
            Wire::Ok,
        ],
        "expected caching_sha2 full authentication over RSA"
    );
}

/// The fast path: the scramble alone, accepted from the server's cache.
fn assert_fast(login: &[Wire]) {
    let sha2 = Wire::Greeting {
        connection_id: greeting_id(login),
        plugin: "caching_sha2_password".into(),
    };
    assert_eq!(
        login,
        [sha2, Wire::HandshakeResponse, Wire::FastAuthOk, Wire::Ok],
        "expected caching_sha2 fast authentication"
    );
}

fn server_error(result: Result<Conn, mysql_async::Error>) -> mysql_async::ServerError {
    match result {
        Err(mysql_async::Error::Server(e)) => e,
        Err(other) => panic!("expected a server error, got {other:?}"),
        Ok(_) => panic!("expected a server error, got a connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_login_is_full_auth_over_rsa_then_fast() {
    // Its own server: the test empties the credential cache, which the shared one must keep.
    let db = Mysql9::start().unwrap();
    let tap = Tap::start(db.addr()).await.unwrap();
    for round in ["a fresh server", "FLUSH PRIVILEGES"] {
        if round == "FLUSH PRIVILEGES" {
            // Empties the server's cache of caching_sha2 credentials.
            db.sql("FLUSH PRIVILEGES").unwrap();
        }
        let seen = tap.logins().len();
        let sluice = Running::start(tap.addr, db.app_password(), "mysql_native_password")
            .await
            .unwrap();
        let mut a = sluice.connect(db.app_password()).await.unwrap();
        assert_eq!(tap.logins().len(), seen, "Sluice checks clients itself");

        // The first query needs a backend connection: Sluice logs in as app.
        a.query_drop("BEGIN").await.unwrap();
        let (id, user, version): (u32, String, String) = a
            .query_first("SELECT CONNECTION_ID(), CURRENT_USER(), VERSION()")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((user.as_str(), version.as_str()), ("app@%", db.version()));
        let logins = tap.logins();
        assert_eq!(logins.len(), seen + 1, "after {round}: {logins:?}");
        let first = &logins[seen];
        assert_eq!(greeting_id(first), id, "the query ran on the login seen");
        assert_full_rsa(first);
        assert_eq!(db.sha2_auth(id).unwrap(), Sha2Auth::Full, "after {round}");

        // a's open transaction holds its connection, so b's query needs a new login, which the
        // now cached credential lets through on the fast path.
        let mut b = sluice.connect(db.app_password()).await.unwrap();
        let id_b = backend_id(&mut b).await;
        assert_ne!(id_b, id);
        let logins = tap.logins();
        assert_eq!(logins.len(), seen + 2, "after {round}: {logins:?}");
        assert_eq!(greeting_id(&logins[seen + 1]), id_b);
        assert_fast(&logins[seen + 1]);
        assert_eq!(db.sha2_auth(id_b).unwrap(), Sha2Auth::Fast, "after {round}");

        a.query_drop("COMMIT").await.unwrap();
        // Both connections are reused from now on: no further logins.
        assert_eq!(backend_id(&mut a).await, id);
        assert_eq!(tap.logins().len(), seen + 2);
        assert_eq!(sluice.stats.snapshot().backend_connections_opened, 2);
        a.disconnect().await.unwrap();
        b.disconnect().await.unwrap();
        sluice.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_log_in_to_sluice_with_caching_sha2() {
    let db = Mysql9::shared();
    let sluice = Running::start(db.addr(), db.app_password(), "caching_sha2_password")
        .await
        .unwrap();
    let mut conn = sluice.connect(db.app_password()).await.unwrap();
    let user: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(user.as_deref(), Some("app@%"));
    // A real round trip through a table.
    conn.query_drop("CREATE DATABASE IF NOT EXISTS sluice_sha2_clients")
        .await
        .unwrap();
    conn.query_drop("USE sluice_sha2_clients").await.unwrap();
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20))")
        .await
        .unwrap();
    conn.exec_drop("INSERT INTO t VALUES (?, ?), (?, ?)", (1, "one", 2, "two"))
        .await
        .unwrap();
    let rows: Vec<(i32, String)> = conn
        .query("SELECT id, name FROM t ORDER BY id")
        .await
        .unwrap();
    assert_eq!(rows, [(1, "one".to_string()), (2, "two".to_string())]);
    conn.query_drop("DROP DATABASE sluice_sha2_clients")
        .await
        .unwrap();
    conn.disconnect().await.unwrap();

    let opened = sluice.stats.snapshot().backend_connections_opened;
    let e = server_error(sluice.connect("not-the-password").await);
    assert_eq!((e.code, e.state.as_str()), (1045, "28000"), "{e:?}");
    assert!(
        e.message
            .starts_with("Access denied for user 'app'@'127.0.0.1'"),
        "{}",
        e.message
    );
    assert_eq!(sluice.stats.snapshot().client_auth_failures, 1);
    // Refusing a client costs the database nothing.
    assert_eq!(sluice.stats.snapshot().backend_connections_opened, opened);
    sluice.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_backend_password_is_error_9502() {
    let db = Mysql9::shared();
    // Sluice knows a password the database does not: clients log in to Sluice with it.
    let stale = "StaleSluicePassword0123456";
    let sluice = Running::start(db.addr(), stale, "mysql_native_password")
        .await
        .unwrap();
    let mut conn = sluice.connect(stale).await.unwrap();
    for _ in 0..2 {
        let err = conn.query_drop("SELECT 1").await.unwrap_err();
        let mysql_async::Error::Server(e) = err else {
            panic!("expected a server error, got {err:?}")
        };
        assert_eq!((e.code, e.state.as_str()), (9502, "HY000"), "{e:?}");
        assert!(
            e.message
                .starts_with("The database refused Sluice's login as 'app': "),
            "{}",
            e.message
        );
        // The server's own reason follows.
        assert!(
            e.message.contains("Access denied for user 'app'"),
            "{}",
            e.message
        );
    }
    conn.disconnect().await.unwrap();
    sluice.stop().await;
}

/// caching_sha2 end to end over TLS: clients log in to Sluice over TLS with caching_sha2 (the
/// first login in full), and Sluice logs in to MySQL 9 over TLS, checking the server's
/// auto-generated certificate against its CA: the first backend login sends the password in
/// full inside TLS (no RSA), the next takes the fast path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_sha2_end_to_end_over_tls() {
    // Its own server, whose credential cache starts empty.
    let db = Mysql9::start().unwrap();
    let pki = sluice_testkit::Pki::generate().unwrap();
    let ca = db.dir().join("data").join("ca.pem");
    assert!(
        ca.is_file(),
        "MySQL's auto-generated CA is at {}",
        ca.display()
    );
    let backend_tls = format!("tls = \"verify-ca\"\ntls_ca_file = \"{}\"", ca.display());
    let client_tls = format!(
        "caching_sha2_full_auth = \"first-login\"\n[tls]\nmode = \"required\"\n\
         cert_file = \"{}\"\nkey_file = \"{}\"",
        pki.path("server.pem").display(),
        pki.path("server-key.pem").display()
    );
    let sluice = Running::start_with(
        db.addr(),
        db.app_password(),
        "caching_sha2_password",
        &backend_tls,
        &client_tls,
        4,
    )
    .await
    .unwrap();
    let tls_client = || {
        client_opts(sluice.addr, db.app_password()).ssl_opts(
            mysql_async::SslOpts::default().with_root_certs(vec![pki.path("ca.pem").into()]),
        )
    };
    let mut a = Conn::new(tls_client()).await.unwrap();
    a.query_drop("BEGIN").await.unwrap();
    let (id, tls): (u32, String) = a
        .query_first(
            "SELECT CONNECTION_ID(), VARIABLE_VALUE FROM performance_schema.session_status \
             WHERE VARIABLE_NAME = 'Ssl_version'",
        )
        .await
        .unwrap()
        .unwrap();
    assert!(tls.starts_with("TLSv1."), "backend TLS version {tls:?}");
    assert_eq!(db.sha2_auth(id).unwrap(), Sha2Auth::Full);
    // a's transaction holds its connection: b's query logs in again, on the fast path.
    let mut b = Conn::new(tls_client()).await.unwrap();
    let id_b = backend_id(&mut b).await;
    assert_ne!(id_b, id);
    assert_eq!(db.sha2_auth(id_b).unwrap(), Sha2Auth::Fast);
    a.query_drop("COMMIT").await.unwrap();
    let s = sluice.stats.snapshot();
    assert_eq!((s.client_tls_logins, s.client_full_auths), (2, 1));
    // A plain client is refused; the process goes on.
    let e = server_error(sluice.connect(db.app_password()).await);
    assert_eq!(e.code, 3159, "{e:?}");
    a.disconnect().await.unwrap();
    b.disconnect().await.unwrap();
    sluice.stop().await;
}

/// A session without a schema after one with a schema, on the same backend connection: Sluice
/// leaves the schema with COM_CHANGE_USER, answered with the plugin the login used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_a_schema_reauthenticates_with_caching_sha2() {
    let db = Mysql9::shared();
    db.sql("CREATE DATABASE IF NOT EXISTS sluice_leave_schema")
        .unwrap();
    let proxy = Running::pool_of_one(db).await;
    let addr = proxy.addr;
    let mut with =
        Conn::new(client_opts(addr, db.app_password()).db_name(Some("sluice_leave_schema")))
            .await
            .unwrap();
    let mut without = Conn::new(client_opts(addr, db.app_password()))
        .await
        .unwrap();
    let first: (Option<String>, u32) = with
        .query_first("SELECT DATABASE(), CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.0.as_deref(), Some("sluice_leave_schema"));
    let second: (Option<String>, u32) = without
        .query_first("SELECT DATABASE(), CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        second.1, first.1,
        "the one backend connection must be reused"
    );
    assert_eq!(
        second.0, None,
        "a session without a schema must not inherit one"
    );
    let again: Option<String> = with.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(again.as_deref(), Some("sluice_leave_schema"));
    drop((with, without));
    proxy.stop().await;
}

/// MySQL resolves a statement's parameter types at its first execution and keeps them (`SELECT
/// ?` executed with 1, then with 'abc', answers 0). Through Sluice, with one backend connection
/// shared by two clients, one client's executions never type the other's statement, and a
/// client's own statement keeps its types as it does directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_types_stay_with_their_client_statement() {
    use mysql_async::Value;
    let db = Mysql9::shared();
    let proxy = Running::pool_of_one(db).await;
    let addr = proxy.addr;
    let direct_opts = sluice_testkit::client_opts(db.addr(), "app", db.app_password(), None);
    // The same sequence on a direct connection, for what the server answers.
    let mut direct = Conn::new(direct_opts).await.unwrap();
    let mut expected = Vec::new();
    for v in [Value::from(1), Value::from("abc")] {
        let got: Option<Value> = direct.exec_first("SELECT ?", (v,)).await.unwrap();
        expected.push(got.unwrap());
    }
    assert_eq!(
        expected,
        vec![Value::Int(1), Value::Int(0)],
        "the server no longer keeps a statement's first types; revisit StatementOwner"
    );
    let mut a = Conn::new(client_opts(addr, db.app_password()))
        .await
        .unwrap();
    let mut b = Conn::new(client_opts(addr, db.app_password()))
        .await
        .unwrap();
    let first: Option<Value> = a.exec_first("SELECT ?", (1,)).await.unwrap();
    assert_eq!(first, Some(Value::Int(1)));
    // Another client's statement of the same text, on the same backend connection.
    let other: Option<Value> = b.exec_first("SELECT ?", ("abc",)).await.unwrap();
    assert_eq!(
        other,
        Some(Value::Bytes(b"abc".to_vec())),
        "a statement typed by another client's execution"
    );
    // The first client's own statement, as directly.
    let again: Option<Value> = a.exec_first("SELECT ?", ("abc",)).await.unwrap();
    assert_eq!(again.as_ref(), expected.get(1));
    // Closed and prepared again: a fresh statement, as directly.
    a.reset().await.unwrap();
    let fresh: Option<Value> = a.exec_first("SELECT ?", ("abc",)).await.unwrap();
    assert_eq!(fresh, Some(Value::Bytes(b"abc".to_vec())));
    drop((a, b, direct));
    proxy.stop().await;
}

/// The collation the server gives the result column of `SELECT 'x'` (that of
/// `character_set_results`, which the variable's text does not name).
async fn column_collation(conn: &mut Conn) -> u16 {
    let result = conn.query_iter("SELECT 'x'").await.unwrap();
    let collation = result
        .columns_ref()
        .first()
        .map(|c| c.character_set())
        .unwrap();
    result.drop_result().await.unwrap();
    collation
}

/// MySQL's COM_RESET_CONNECTION sets the character set variables to the server's defaults, not
/// to the collation the client logged in with. Through Sluice, a reset Sluice makes for its own
/// reasons (a user variable left behind) gives the next client the connection as after a
/// login, while a client's own reset gives it what the server gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_leave_each_client_the_collation_the_server_would() {
    let db = Mysql9::shared();
    let proxy = Running::pool_of_one(db).await;
    let direct_opts = sluice_testkit::client_opts(db.addr(), "app", db.app_password(), None);
    let mut direct = Conn::new(direct_opts).await.unwrap();
    let at_login = column_collation(&mut direct).await;
    direct.reset().await.unwrap();
    let after_reset = column_collation(&mut direct).await;
    assert_ne!(
        at_login, after_reset,
        "MySQL's reset no longer changes the collation; this test proves nothing"
    );
    let opts = || client_opts(proxy.addr, db.app_password());
    let mut a = Conn::new(opts()).await.unwrap();
    a.query_drop("SET @left_behind = 1").await.unwrap();
    drop(a);
    let mut b = Conn::new(opts()).await.unwrap();
    assert_eq!(
        column_collation(&mut b).await,
        at_login,
        "a reset for Sluice's own reasons left the server's defaults for the next client"
    );
    b.reset().await.unwrap();
    assert_eq!(
        column_collation(&mut b).await,
        after_reset,
        "a client's own reset"
    );
    let mut c = Conn::new(opts()).await.unwrap();
    assert_eq!(column_collation(&mut c).await, at_login, "the client after");
    drop((b, c, direct));
    proxy.stop().await;
}

/// On MySQL, `SET character_set_results` switches result columns to that character set's
/// default collation even when the value does not change. The session keeps that on every
/// connection it borrows, and no other session inherits it (differential seed 38).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_results_character_set_follows_its_session() {
    let db = Mysql9::shared();
    let proxy = Running::pool_of_one(db).await;
    let direct_opts = sluice_testkit::client_opts(db.addr(), "app", db.app_password(), None);
    let mut direct = Conn::new(direct_opts).await.unwrap();
    let at_login = column_collation(&mut direct).await;
    direct
        .query_drop("/*!40101 SET @@character_set_results = 'utf8mb4' */")
        .await
        .unwrap();
    let after_set = column_collation(&mut direct).await;
    assert_ne!(
        at_login, after_set,
        "MySQL no longer changes the collation on this SET; this test proves nothing"
    );
    let opts = || client_opts(proxy.addr, db.app_password());
    let mut a = Conn::new(opts()).await.unwrap();
    a.query_drop("/*!40101 SET @@character_set_results = 'utf8mb4' */")
        .await
        .unwrap();
    let mut b = Conn::new(opts()).await.unwrap();
    assert_eq!(column_collation(&mut b).await, at_login, "another session");
    assert_eq!(
        column_collation(&mut a).await,
        after_set,
        "the session, on the connection it borrows next"
    );
    assert_eq!(
        column_collation(&mut b).await,
        at_login,
        "another session after"
    );
    drop((a, b, direct));
    proxy.stop().await;
}

/// MySQL's OK to COM_PING counts the conditions the last statement raised itself (none after a
/// diagnostics statement), though the diagnostics area still holds them. Through Sluice, with
/// another session on the connection in between, the count is the same (MySQL 9 seed 89).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_counts_what_the_last_statement_raised() {
    let db = Mysql9::shared();
    let proxy = Running::pool_of_one(db).await;
    let direct_opts = sluice_testkit::client_opts(db.addr(), "app", db.app_password(), None);
    let opts = || client_opts(proxy.addr, db.app_password());
    let sequences: [&[&str]; 4] = [
        &["SELECT 1/0"],
        &["SELECT 1/0", "SHOW WARNINGS"],
        &["SELECT 1/0", "SHOW COUNT(*) WARNINGS"],
        // MySQL 9 seed 307: the batch's last statement is the one that counts.
        &["SELECT 1/0; SHOW WARNINGS"],
    ];
    for sequence in sequences {
        let mut counts = Vec::new();
        for through in [false, true] {
            let mut c = Conn::new(if through { opts() } else { direct_opts.clone() })
                .await
                .unwrap();
            for sql in sequence {
                c.query_drop(*sql).await.unwrap();
            }
            if through {
                // Another session takes the connection in between.
                let mut other = Conn::new(opts()).await.unwrap();
                other.query_drop("DO 1").await.unwrap();
                drop(other);
            }
            c.ping().await.unwrap();
            counts.push(c.get_warnings());
        }
        assert_eq!(counts[1], counts[0], "{sequence:?}: through Sluice, direct");
    }
    // MySQL's prepare clears the area too, also when Sluice answers it from its cache
    // (MySQL 9 seed 102).
    let mut counts = Vec::new();
    for through in [false, true] {
        let mut c = Conn::new(if through { opts() } else { direct_opts.clone() })
            .await
            .unwrap();
        c.query_drop("SELECT nosuch").await.unwrap_err();
        c.prep("SELECT @v_a, LAST_INSERT_ID()").await.unwrap();
        c.ping().await.unwrap();
        counts.push(c.get_warnings());
        let shown: Vec<(String, u16, String)> = c.query("SHOW WARNINGS").await.unwrap();
        counts.push(shown.len() as u16);
    }
    assert_eq!(
        counts[2..],
        counts[..2],
        "after a prepare: through Sluice, direct"
    );
    proxy.stop().await;
}

/// On MySQL, UPDATE sets FOUND_ROWS() to the rows it matched and DO to one; through Sluice,
/// with another session on the connection in between, the session reads the same (MySQL 9
/// seeds 102, 305).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn found_rows_after_update_and_do_is_the_servers() {
    let db = Mysql9::shared();
    let proxy = Running::pool_of_one(db).await;
    let direct_opts = sluice_testkit::client_opts(db.addr(), "app", db.app_password(), None);
    let opts = || client_opts(proxy.addr, db.app_password());
    let mut setup = Conn::new(direct_opts.clone()).await.unwrap();
    setup
        .query_drop(
            "CREATE DATABASE IF NOT EXISTS found_rows_mysql; \
             CREATE TABLE IF NOT EXISTS found_rows_mysql.t (id INT PRIMARY KEY, v INT); \
             REPLACE INTO found_rows_mysql.t VALUES (1, 1), (2, 2), (3, 3), (4, 4)",
        )
        .await
        .unwrap();
    for statement in [
        "UPDATE found_rows_mysql.t SET v = v + 1 WHERE id % 2 = 1",
        "DO 1",
    ] {
        let mut seen = Vec::new();
        for through in [false, true] {
            let mut c = Conn::new(if through { opts() } else { direct_opts.clone() })
                .await
                .unwrap();
            c.query_drop("SELECT SQL_CALC_FOUND_ROWS id FROM found_rows_mysql.t LIMIT 1")
                .await
                .unwrap();
            c.query_drop(statement).await.unwrap();
            if through {
                let mut other = Conn::new(opts()).await.unwrap();
                other
                    .query_drop("SELECT 1, 2 UNION SELECT 3, 4")
                    .await
                    .unwrap();
                drop(other);
            }
            let n: Option<i64> = c.query_first("SELECT FOUND_ROWS()").await.unwrap();
            seen.push(n);
        }
        assert_eq!(seen[1], seen[0], "{statement}: through Sluice, direct");
        assert_ne!(
            seen[0],
            Some(4),
            "{statement}: MySQL kept FOUND_ROWS(); this proves nothing"
        );
    }
    setup
        .query_drop("DROP DATABASE found_rows_mysql")
        .await
        .unwrap();
    proxy.stop().await;
}
