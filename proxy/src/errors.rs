//! Every error Sluice itself sends to a client, with its MySQL code and SQLSTATE, in one place.
//!
//! Codes below 2000 are the server's own, used with the meaning MySQL gives them. Codes 95xx are
//! Sluice's, where no server code fits; 9501 matches RDS Proxy's code for the same condition.

use std::fmt;
use std::time::Duration;

use crate::protocol::packets;

/// An error as the client sees it: code, SQLSTATE and a message a person understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub code: u16,
    pub sql_state: [u8; 5],
    pub message: String,
}

/// `Too many connections` (1040, 08004).
pub const ER_CON_COUNT: u16 = 1040;
/// `Access denied for user` (1045, 28000).
pub const ER_ACCESS_DENIED: u16 = 1045;
/// `Bad handshake` (1043, 08S01).
pub const ER_HANDSHAKE: u16 = 1043;
/// `Connections using insecure transport are prohibited` (3159, HY000).
pub const ER_SECURE_TRANSPORT_REQUIRED: u16 = 3159;
/// `Unknown command` (1047, 08S01).
pub const ER_UNKNOWN_COM: u16 = 1047;
/// `Unknown thread id` (1094).
pub const ER_NO_SUCH_THREAD: u16 = 1094;
/// `You are not owner of thread` (1095).
pub const ER_KILL_DENIED: u16 = 1095;
/// `Got a packet bigger than 'max_allowed_packet' bytes` (1153, 08S01).
pub const ER_NET_PACKET_TOO_LARGE: u16 = 1153;
/// `Got packets out of order` (1156, 08S01).
pub const ER_NET_PACKETS_OUT_OF_ORDER: u16 = 1156;
/// `Got timeout reading communication packets` (1159, 08S01).
pub const ER_NET_READ_INTERRUPTED: u16 = 1159;
/// `Unknown prepared statement handler` (1243).
pub const ER_UNKNOWN_STMT_HANDLER: u16 = 1243;
/// `Client does not support authentication protocol requested by server` (1251, 08004).
pub const ER_NOT_SUPPORTED_AUTH_MODE: u16 = 1251;
/// COM_STMT_FETCH without an open cursor.
pub const ER_STMT_HAS_NO_OPEN_CURSOR: u16 = 1421;
/// A session prepared more statements than it may hold.
pub const ER_MAX_PREPARED_STMT_COUNT_REACHED: u16 = 1461;
/// `Server shutdown in progress` (1053, 08S01).
pub const ER_SERVER_SHUTDOWN: u16 = 1053;
/// `You have an error in your SQL syntax` (1064, 42000): an admin console command Sluice does
/// not know.
pub const ER_PARSE_ERROR: u16 = 1064;
/// `Connection was killed` (1927, 70100; MariaDB's code).
pub const ER_CONNECTION_KILLED: u16 = 1927;
/// `The client was disconnected by the server because of inactivity` (4031, HY000; MySQL 8's).
pub const ER_CLIENT_INTERACTION_TIMEOUT: u16 = 4031;
/// `Malformed communication packet` (1835).
pub const ER_MALFORMED_PACKET: u16 = 1835;
/// Timed out waiting for a backend connection (Sluice; same code as RDS Proxy).
pub const ER_BORROW_TIMEOUT: u16 = 9501;
/// The database refused Sluice's login as the client's user (Sluice).
pub const ER_BACKEND_LOGIN: u16 = 9502;
/// The backend connection broke during a command (Sluice).
pub const ER_BACKEND_LOST: u16 = 9503;
/// A statement form Sluice cannot relay safely (Sluice).
pub const ER_UNSUPPORTED: u16 = 9504;
/// RELOAD found the configuration file unreadable or invalid; nothing was changed (Sluice).
pub const ER_RELOAD_FAILED: u16 = 9505;
/// A login could not be checked now: STS or the database account lookup did not answer
/// (Sluice; trying again later may succeed).
pub const ER_AUTH_UNAVAILABLE: u16 = 9506;

impl ClientError {
    fn new(code: u16, sql_state: &[u8; 5], message: impl Into<String>) -> Self {
        ClientError {
            code,
            sql_state: *sql_state,
            message: message.into(),
        }
    }

    /// The ERR packet payload.
    pub fn to_packet(&self) -> Vec<u8> {
        packets::err(self.code, &self.sql_state, &self.message)
    }

    /// Wrong password or unknown user, worded exactly as MySQL words it.
    pub fn access_denied(user: &str, host: &str, using_password: bool) -> Self {
        let using = if using_password { "YES" } else { "NO" };
        Self::new(
            ER_ACCESS_DENIED,
            b"28000",
            format!("Access denied for user '{user}'@'{host}' (using password: {using})"),
        )
    }

    /// A refused login with the reason a person needs to fix it (IAM tokens, database accounts
    /// whose plugin Sluice cannot use); MySQL's wording, then the reason.
    pub fn access_denied_because(user: &str, host: &str, why: &str) -> Self {
        Self::new(
            ER_ACCESS_DENIED,
            b"28000",
            format!("Access denied for user '{user}'@'{host}': {why}"),
        )
    }

    /// A login that could not be checked now (STS or the account lookup did not answer).
    pub fn cannot_verify_login(user: &str, why: &str) -> Self {
        Self::new(
            ER_AUTH_UNAVAILABLE,
            b"08004",
            format!("Sluice cannot check the login of '{user}' now: {why}; try again"),
        )
    }

    /// A TLS client without a certificate while `tls.client_ca_file` asks for one.
    pub fn client_certificate_required() -> Self {
        Self::new(
            ER_ACCESS_DENIED,
            b"28000",
            "Access denied: this server requires a TLS client certificate (mutual TLS) and \
             none was presented; connect with a certificate and key (--ssl-cert, --ssl-key)",
        )
    }

    /// A login packet that cannot be parsed.
    pub fn bad_handshake(why: &str) -> Self {
        Self::new(ER_HANDSHAKE, b"08S01", format!("Bad handshake: {why}"))
    }

    /// A plain-text login while `tls.mode` is `required`, worded as MySQL words it.
    pub fn tls_required() -> Self {
        Self::new(
            ER_SECURE_TRANSPORT_REQUIRED,
            b"HY000",
            "Connections using insecure transport are prohibited while \
             --require_secure_transport=ON.",
        )
    }

    /// A client too old to speak protocol 4.1 with plugin authentication.
    pub fn unsupported_client() -> Self {
        Self::new(
            ER_NOT_SUPPORTED_AUTH_MODE,
            b"08004",
            "Client does not support authentication protocol requested by server; \
             Sluice needs CLIENT_PROTOCOL_41 and CLIENT_SECURE_CONNECTION",
        )
    }

    /// A command byte Sluice does not relay.
    pub fn unknown_command(byte: u8) -> Self {
        Self::new(
            ER_UNKNOWN_COM,
            b"08S01",
            format!("Unknown command 0x{byte:02x}"),
        )
    }

    /// A command Sluice understands but deliberately does not relay.
    pub fn command_not_relayed(name: &str) -> Self {
        Self::new(
            ER_UNKNOWN_COM,
            b"08S01",
            format!("Sluice does not relay {name}"),
        )
    }

    /// A client packet over the limit.
    pub fn packet_too_large(max: usize) -> Self {
        Self::new(
            ER_NET_PACKET_TOO_LARGE,
            b"08S01",
            format!("Got a packet bigger than 'max_allowed_packet' bytes ({max})"),
        )
    }

    /// A packet whose sequence id is wrong.
    pub fn out_of_order() -> Self {
        Self::new(
            ER_NET_PACKETS_OUT_OF_ORDER,
            b"08S01",
            "Got packets out of order",
        )
    }

    /// A client that did not finish logging in in time.
    pub fn handshake_timeout(limit: Duration) -> Self {
        Self::new(
            ER_NET_READ_INTERRUPTED,
            b"08S01",
            format!(
                "Got timeout reading communication packets: login not completed within {}",
                humantime::format_duration(limit)
            ),
        )
    }

    /// A client that started a command and did not send the rest of it in time.
    pub fn command_read_timeout(limit: Duration) -> Self {
        Self::new(
            ER_NET_READ_INTERRUPTED,
            b"08S01",
            format!(
                "Got timeout reading communication packets: the command was not received \
                 within client_read_timeout ({})",
                humantime::format_duration(limit)
            ),
        )
    }

    /// A client idle inside a transaction for longer than `idle_in_transaction_timeout`.
    pub fn idle_in_transaction(limit: Duration) -> Self {
        Self::new(
            ER_CLIENT_INTERACTION_TIMEOUT,
            b"HY000",
            format!(
                "The client was disconnected by the server because it was idle inside a \
                 transaction for longer than idle_in_transaction_timeout ({}); the \
                 transaction was rolled back",
                humantime::format_duration(limit)
            ),
        )
    }

    /// A packet that is empty or cut short.
    pub fn malformed_packet(what: &str) -> Self {
        Self::new(
            ER_MALFORMED_PACKET,
            b"HY000",
            format!("Malformed communication packet ({what})"),
        )
    }

    /// The pool had no connection for the whole borrow timeout.
    pub fn borrow_timeout(
        waited: Duration,
        user: &str,
        cap: usize,
        waiting: usize,
        last: Option<&str>,
    ) -> Self {
        let mut msg = format!(
            "Timed out waiting to acquire database connection: waited {} for user '{user}'; \
             backend.max_connections is {cap}",
            humantime::format_duration(round_ms(waited)),
        );
        if waiting > 0 {
            msg.push_str(&format!(" and {waiting} more sessions are waiting"));
        }
        if let Some(last) = last {
            msg.push_str(&format!("; last connection attempt failed: {last}"));
        }
        Self::new(ER_BORROW_TIMEOUT, b"HY000", msg)
    }

    /// The database refused the login Sluice made for the client's user.
    pub fn backend_login(user: &str, detail: &str) -> Self {
        Self::new(
            ER_BACKEND_LOGIN,
            b"HY000",
            format!("The database refused Sluice's login as '{user}': {detail}"),
        )
    }

    /// No writable database host answered, and none can be found before this command's
    /// `borrow_timeout` runs out: failed at once instead of waiting for the timeout.
    pub fn database_unavailable(down_for: Duration, last: Option<&str>) -> Self {
        let mut msg = format!(
            "Timed out waiting to acquire database connection: no writable database host has \
             answered for {}, and none can be reached before this command's borrow_timeout ends",
            humantime::format_duration(round_ms(down_for)),
        );
        if let Some(last) = last {
            msg.push_str(&format!("; last error: {last}"));
        }
        Self::new(ER_BORROW_TIMEOUT, b"HY000", msg)
    }

    /// The database cannot serve this session (a new writer lacks a capability the session
    /// negotiated when it logged in).
    pub fn backend_incompatible(detail: &str) -> Self {
        Self::new(
            ER_BACKEND_LOST,
            b"08S01",
            format!("The database cannot serve this session: {detail}; connect again"),
        )
    }

    /// The connection to the database died while the client's statement was running: it may
    /// or may not have taken effect, and Sluice does not run it again.
    pub fn statement_interrupted(detail: &str, in_transaction: bool) -> Self {
        let what = if in_transaction {
            "the open transaction was rolled back by the database"
        } else {
            "the statement may or may not have taken effect"
        };
        Self::new(
            ER_BACKEND_LOST,
            b"08S01",
            format!(
                "Lost connection to the database while the statement was running ({detail}); \
                 {what}. Sluice did not retry it"
            ),
        )
    }

    /// The backend connection broke while a command was running.
    pub fn backend_lost(detail: &str) -> Self {
        Self::new(
            ER_BACKEND_LOST,
            b"08S01",
            format!("Lost connection to the database during the command: {detail}"),
        )
    }

    /// A KILL whose target does not exist.
    pub fn unknown_thread(id: u64) -> Self {
        Self::new(
            ER_NO_SUCH_THREAD,
            b"HY000",
            format!("Unknown thread id: {id}"),
        )
    }

    /// A KILL aimed at another user's session.
    pub fn not_owner(id: u64) -> Self {
        Self::new(
            ER_KILL_DENIED,
            b"HY000",
            format!("You are not owner of thread {id}"),
        )
    }

    /// A statement form Sluice cannot relay safely.
    pub fn unsupported(what: &str) -> Self {
        Self::new(
            ER_UNSUPPORTED,
            b"HY000",
            format!("Sluice does not support {what}"),
        )
    }

    /// A prepared-statement command naming a statement this session does not have.
    pub fn unknown_statement(id: u32, command: &str) -> Self {
        Self::new(
            ER_UNKNOWN_STMT_HANDLER,
            b"HY000",
            format!("Unknown prepared statement handler ({id}) given to {command}"),
        )
    }

    /// COM_STMT_FETCH for a statement without an open cursor, in the words of MySQL (with a
    /// full stop) or MariaDB.
    pub fn no_open_cursor(id: u32, mysql: bool) -> Self {
        let stop = if mysql { "." } else { "" };
        Self::new(
            ER_STMT_HAS_NO_OPEN_CURSOR,
            b"HY000",
            format!("The statement ({id}) has no open cursor{stop}"),
        )
    }

    /// A session holding as many prepared statements as Sluice allows one session.
    pub fn too_many_statements(max: usize) -> Self {
        Self::new(
            ER_MAX_PREPARED_STMT_COUNT_REACHED,
            b"42000",
            format!(
                "Can't create more than max_prepared_stmt_count statements (current value: {max})"
            ),
        )
    }

    /// Sluice is shutting down.
    pub fn shutting_down() -> Self {
        Self::new(ER_SERVER_SHUTDOWN, b"08S01", "Server shutdown in progress")
    }

    /// The client limit is reached; sent after Sluice's handshake, as MySQL does.
    pub fn too_many_connections(limit: usize) -> Self {
        Self::new(
            ER_CON_COUNT,
            b"08004",
            format!("Too many connections (max_client_connections is {limit})"),
        )
    }

    /// A client still logging in, closed to make room for a new one at the client limit (the
    /// oldest unfinished login goes first, so a flood of stalled handshakes keeps no one out).
    pub fn login_evicted(limit: usize) -> Self {
        Self::new(
            ER_CON_COUNT,
            b"08004",
            format!(
                "Too many connections (max_client_connections is {limit}); this login was the \
                 oldest unfinished one and was closed to make room"
            ),
        )
    }

    /// A client idle for longer than `idle_client_timeout`, outside a transaction.
    pub fn idle_timeout(limit: Duration) -> Self {
        Self::new(
            ER_CLIENT_INTERACTION_TIMEOUT,
            b"HY000",
            format!(
                "The client was disconnected by the server because of inactivity \
                 (idle_client_timeout is {})",
                humantime::format_duration(limit)
            ),
        )
    }

    /// The session was ended by `KILL` (from another session or the admin console).
    pub fn connection_killed() -> Self {
        Self::new(ER_CONNECTION_KILLED, b"70100", "Connection was killed")
    }

    /// An admin console command Sluice does not know; the message lists the ones it does.
    pub fn unknown_admin_command(text: &str) -> Self {
        let mut shown: String = text.chars().take(64).collect();
        if shown.len() < text.len() {
            shown.push_str("...");
        }
        Self::new(
            ER_PARSE_ERROR,
            b"42000",
            format!(
                "Unknown admin console command '{shown}'; the console understands SHOW POOLS, \
                 SHOW CLIENTS, SHOW SERVERS, SHOW STATS, SHOW CONFIG, SHOW VERSION, SHOW HELP, \
                 PAUSE, RESUME, RELOAD, KILL <client id>, SHUTDOWN"
            ),
        )
    }

    /// RELOAD could not use the configuration file; the running configuration is unchanged.
    pub fn reload_failed(why: &str) -> Self {
        Self::new(
            ER_RELOAD_FAILED,
            b"HY000",
            format!("Configuration not reloaded, nothing changed: {why}"),
        )
    }

    /// A short, stable name for the kind of error, for the `sluice_errors_total` metric.
    /// Errors the database itself returned (relayed with their own codes) are `database`.
    pub fn kind(&self) -> &'static str {
        match self.code {
            ER_CON_COUNT => "too_many_connections",
            ER_ACCESS_DENIED => "access_denied",
            ER_HANDSHAKE => "bad_handshake",
            ER_SECURE_TRANSPORT_REQUIRED => "tls_required",
            ER_UNKNOWN_COM => "unknown_command",
            ER_SERVER_SHUTDOWN => "shutting_down",
            ER_PARSE_ERROR => "unknown_admin_command",
            ER_NO_SUCH_THREAD => "unknown_thread",
            ER_KILL_DENIED => "kill_denied",
            ER_NET_PACKET_TOO_LARGE => "packet_too_large",
            ER_NET_PACKETS_OUT_OF_ORDER => "packets_out_of_order",
            ER_NET_READ_INTERRUPTED => "read_timeout",
            ER_UNKNOWN_STMT_HANDLER => "unknown_statement",
            ER_NOT_SUPPORTED_AUTH_MODE => "unsupported_client",
            ER_STMT_HAS_NO_OPEN_CURSOR => "no_open_cursor",
            ER_MAX_PREPARED_STMT_COUNT_REACHED => "too_many_statements",
            ER_MALFORMED_PACKET => "malformed_packet",
            ER_CONNECTION_KILLED => "killed",
            ER_CLIENT_INTERACTION_TIMEOUT => "idle_timeout",
            ER_BORROW_TIMEOUT => "borrow_timeout",
            ER_BACKEND_LOGIN => "backend_login",
            ER_BACKEND_LOST => "backend_lost",
            ER_UNSUPPORTED => "unsupported",
            ER_RELOAD_FAILED => "reload_failed",
            ER_AUTH_UNAVAILABLE => "auth_unavailable",
            _ => "database",
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ERROR {} ({}): {}",
            self.code,
            String::from_utf8_lossy(&self.sql_state),
            self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_denied_matches_mysql_wording() {
        let e = ClientError::access_denied("app", "127.0.0.1", true);
        assert_eq!(
            e.to_string(),
            "ERROR 1045 (28000): Access denied for user 'app'@'127.0.0.1' (using password: YES)"
        );
        let p = e.to_packet();
        assert_eq!(&p[..4], &[0xFF, 0x15, 0x04, b'#']);
    }

    #[test]
    fn refusals_use_mysql_codes_and_have_kinds() {
        let e = ClientError::too_many_connections(5);
        assert_eq!(
            (e.code, &e.sql_state, e.kind()),
            (1040, b"08004", "too_many_connections")
        );
        assert!(e.message.starts_with("Too many connections"));
        let e = ClientError::idle_timeout(Duration::from_secs(1800));
        assert_eq!((e.code, e.kind()), (4031, "idle_timeout"));
        assert!(e.message.contains("30m"), "{}", e.message);
        let e = ClientError::unknown_admin_command(&"x".repeat(500));
        assert_eq!(e.code, 1064);
        assert!(
            e.message.len() < 400,
            "the command is cut short: {}",
            e.message
        );
        let relayed = ClientError {
            code: 1146,
            sql_state: *b"42S02",
            message: "Table 'a.b' doesn't exist".into(),
        };
        assert_eq!(relayed.kind(), "database");
    }

    #[test]
    fn borrow_timeout_names_the_wait_and_the_cap() {
        let e = ClientError::borrow_timeout(Duration::from_millis(1500), "app", 10, 3, None);
        assert_eq!(e.code, 9501);
        assert!(
            e.message.contains("waited 1s 500ms") && e.message.contains("max_connections is 10")
        );
    }
}
