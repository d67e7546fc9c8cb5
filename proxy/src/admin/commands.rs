//! The admin console's commands, in PgBouncer's vocabulary: parsing and running them.
//!
//! `SHOW POOLS | CLIENTS | SERVERS | STATS | CONFIG | VERSION | HELP`, `PAUSE`, `RESUME`,
//! `RELOAD`, `KILL <client id>`, `SHUTDOWN`. Client libraries also send a few statements of
//! their own at connect time (`SELECT @@max_allowed_packet`, `SET NAMES ...`); those get
//! plausible answers so ordinary clients work.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::resultset::{Column, ResultSet, Value};
use crate::context::Shared;
use crate::errors::ClientError;
use crate::registry::{Activity, ClientId};

/// A parsed console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    ShowPools,
    ShowClients,
    ShowServers,
    ShowStats,
    ShowConfig,
    ShowVersion,
    ShowHelp,
    Pause,
    Resume,
    Reload,
    Kill(u64),
    Shutdown,
    /// `SELECT` of system variables and simple functions, as client libraries send.
    Select(Vec<String>),
    /// `SET ...`, `USE ...`: accepted and ignored.
    Ignored,
}

/// What the console sends back.
#[derive(Debug, Clone)]
pub enum Reply {
    /// OK, with a message for the person at the console.
    Ok(String),
    Rows(ResultSet),
    Err(ClientError),
}

/// The commands `SHOW HELP` lists.
const HELP: &[(&str, &str)] = &[
    (
        "SHOW POOLS",
        "per user: client sessions, waiting borrowers, backend connections",
    ),
    (
        "SHOW CLIENTS",
        "every client session: user, address, state, pins",
    ),
    (
        "SHOW SERVERS",
        "every backend connection: idle or lent, to which client",
    ),
    ("SHOW STATS", "counters since start"),
    (
        "SHOW CONFIG",
        "the running configuration, and which settings reload live",
    ),
    (
        "SHOW VERSION",
        "Sluice's version and the version it announces",
    ),
    (
        "PAUSE",
        "hold new transactions (up to backend.borrow_timeout) until RESUME",
    ),
    ("RESUME", "let held transactions go"),
    ("RELOAD", "read the configuration file again and apply it"),
    (
        "KILL <client id>",
        "end a client session (ids from SHOW CLIENTS)",
    ),
    ("SHUTDOWN", "drain and stop, as SIGTERM does"),
];

/// Parses one command; trailing semicolons and surrounding space are ignored, case too.
pub fn parse(text: &str) -> Result<Command, ClientError> {
    let trimmed = text
        .trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    let words: Vec<String> = trimmed
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let unknown = || ClientError::unknown_admin_command(trimmed);
    if trimmed.contains(';') {
        return Err(unknown());
    }
    Ok(match words.as_slice() {
        ["SHOW", "POOLS"] => Command::ShowPools,
        ["SHOW", "CLIENTS"] => Command::ShowClients,
        ["SHOW", "SERVERS"] => Command::ShowServers,
        ["SHOW", "STATS"] => Command::ShowStats,
        ["SHOW", "CONFIG"] => Command::ShowConfig,
        ["SHOW", "VERSION"] => Command::ShowVersion,
        ["SHOW", "HELP"] | ["HELP"] => Command::ShowHelp,
        ["PAUSE"] => Command::Pause,
        ["RESUME"] => Command::Resume,
        ["RELOAD"] => Command::Reload,
        ["SHUTDOWN"] => Command::Shutdown,
        ["KILL", id] | ["KILL", "CONNECTION", id] => {
            Command::Kill(id.parse().map_err(|_| unknown())?)
        }
        ["SET", ..] | ["USE", _] => Command::Ignored,
        ["SELECT", ..] => Command::Select(select_items(trimmed).ok_or_else(unknown)?),
        _ => return Err(unknown()),
    })
}

/// The items of `SELECT a, b [LIMIT n]` when each is a system variable or a known function.
fn select_items(text: &str) -> Option<Vec<String>> {
    let body = text.get(6..)?.trim();
    let upper = body.to_ascii_uppercase();
    let body = match upper.find(" LIMIT ") {
        Some(at) => body.get(..at)?,
        None => body,
    };
    let items: Vec<String> = body.split(',').map(|i| i.trim().to_string()).collect();
    items
        .iter()
        .all(|i| select_value(i, None).is_some())
        .then_some(items)
}

/// The value of one SELECT item, if the console knows it (`shared` absent: only checks).
fn select_value(item: &str, shared: Option<&Shared>) -> Option<Value> {
    let lower = item.to_ascii_lowercase();
    let var = lower
        .strip_prefix("@@session.")
        .or_else(|| lower.strip_prefix("@@global."))
        .or_else(|| lower.strip_prefix("@@"));
    let known = Some;
    match var {
        Some("version_comment") => known("Sluice admin console".into()),
        Some("version") => known(
            shared
                .map(|s| s.server_version.as_str())
                .unwrap_or("")
                .into(),
        ),
        // Console packets are small; what matters is that clients read result sets whole.
        Some("max_allowed_packet") => known(Value::UInt(16 * 1024 * 1024)),
        Some("wait_timeout") | Some("interactive_timeout") => known(Value::UInt(
            shared.map_or(0, |s| s.config().idle_client_timeout.as_secs()),
        )),
        Some("autocommit") => known(Value::UInt(1)),
        Some(name) if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Some(Value::Null)
        }
        Some(_) => None,
        None => match lower.replace(' ', "").as_str() {
            "database()" | "schema()" => Some(Value::Null),
            "user()" | "current_user()" | "session_user()" => known(
                shared
                    .map(|s| format!("{}@sluice", s.config().admin.username))
                    .unwrap_or_default()
                    .into(),
            ),
            "version()" => known(
                shared
                    .map(|s| s.server_version.as_str())
                    .unwrap_or("")
                    .into(),
            ),
            "connection_id()" => known(Value::UInt(0)),
            _ => None,
        },
    }
}

/// Runs a command. `SHUTDOWN` starts the drain before its reply goes out.
pub async fn run(command: Command, shared: &Shared) -> Reply {
    match command {
        Command::ShowPools => Reply::Rows(show_pools(shared)),
        Command::ShowClients => Reply::Rows(show_clients(shared)),
        Command::ShowServers => Reply::Rows(show_servers(shared)),
        Command::ShowStats => Reply::Rows(show_stats(shared)),
        Command::ShowConfig => Reply::Rows(show_config(shared)),
        Command::ShowVersion => {
            let mut rs = ResultSet::new(vec![
                Column::text("version"),
                Column::text("server_version"),
            ]);
            rs.push(vec![
                format!("Sluice {}", env!("CARGO_PKG_VERSION")).into(),
                shared.server_version.as_str().into(),
            ]);
            Reply::Rows(rs)
        }
        Command::ShowHelp => {
            let mut rs = ResultSet::new(vec![Column::text("command"), Column::text("does")]);
            for (c, d) in HELP {
                rs.push(vec![(*c).into(), (*d).into()]);
            }
            Reply::Rows(rs)
        }
        Command::Pause => {
            if shared.pool.is_paused() {
                return Reply::Ok("already paused".into());
            }
            let in_use = shared.pool.pause();
            tracing::warn!(
                backend_connections_in_use = in_use,
                "PAUSE: new transactions wait until RESUME"
            );
            Reply::Ok(format!(
                "paused: new transactions wait until RESUME (up to backend.borrow_timeout); \
                 {in_use} backend connections still in use"
            ))
        }
        Command::Resume => {
            if shared.pool.resume() {
                tracing::warn!("RESUME: transactions go on");
                Reply::Ok("resumed".into())
            } else {
                Reply::Ok("was not paused".into())
            }
        }
        Command::Reload => match shared.reload() {
            Ok(report) => {
                let mut rs = ResultSet::new(vec![Column::text("setting"), Column::text("outcome")]);
                for c in &report.changes {
                    rs.push(vec![c.key.as_str().into(), c.outcome.to_string().into()]);
                }
                Reply::Rows(rs)
            }
            Err(e) => Reply::Err(ClientError::reload_failed(&e.to_string())),
        },
        Command::Kill(id) => kill(shared, id).await,
        Command::Shutdown => {
            tracing::warn!("SHUTDOWN from the admin console: draining");
            shared.begin_shutdown();
            Reply::Ok("shutting down: no new clients; open transactions may finish".into())
        }
        Command::Select(items) => {
            let columns = items.iter().map(|i| select_column(i)).collect();
            let mut rs = ResultSet::new(columns);
            rs.push(
                items
                    .iter()
                    .map(|i| select_value(i, Some(shared)).unwrap_or(Value::Null))
                    .collect(),
            );
            Reply::Rows(rs)
        }
        Command::Ignored => Reply::Ok(String::new()),
    }
}

/// The column a SELECT item is reported in: typed after its value.
fn select_column(item: &str) -> Column {
    match select_value(item, None) {
        Some(Value::UInt(_)) => Column::count(item),
        _ => Column::text(item),
    }
}

fn secs(d: std::time::Duration) -> Value {
    Value::Double(d.as_secs_f64())
}

fn yes_no(b: bool) -> Value {
    (if b { "yes" } else { "no" }).into()
}

#[derive(Default)]
struct UserRow {
    clients: usize,
    in_transaction: usize,
    pinned: usize,
    lent: usize,
}

fn show_pools(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(vec![
        Column::text("user"),
        Column::count("cl_active"),
        Column::count("cl_waiting"),
        Column::count("cl_in_transaction"),
        Column::count("cl_pinned"),
        Column::count("sv_active"),
        Column::count("sv_idle"),
        Column::double("maxwait"),
        Column::count("max_connections"),
        Column::text("paused"),
    ]);
    let counts = shared.pool.user_counts();
    let mut users: BTreeMap<Arc<str>, UserRow> = BTreeMap::new();
    for u in &shared.config().users {
        users.entry(Arc::from(u.username.as_str())).or_default();
    }
    for s in shared.registry.sessions() {
        let user = s.user();
        if user.is_empty() {
            continue;
        }
        let row = users.entry(user).or_default();
        row.clients += 1;
        row.in_transaction += usize::from(s.in_transaction());
        row.pinned += usize::from(!s.pins().is_empty());
        row.lent += usize::from(s.lent_thread().is_some());
    }
    for user in counts.keys() {
        users.entry(user.clone()).or_default();
    }
    let (cap, paused) = (shared.pool.max_connections(), shared.pool.is_paused());
    for (user, row) in users {
        let c = counts.get(&user).cloned().unwrap_or_default();
        rs.push(vec![
            user.as_ref().into(),
            row.clients.into(),
            c.waiting.into(),
            row.in_transaction.into(),
            row.pinned.into(),
            row.lent.into(),
            c.idle.into(),
            secs(c.longest_wait),
            cap.into(),
            yes_no(paused),
        ]);
    }
    rs
}

/// How long `KILL` may take to interrupt a running statement, login included.
const INTERRUPT_DEADLINE: Duration = Duration::from_secs(3);

/// `KILL <client id>`: ends the session, and, as MySQL's `KILL CONNECTION` does, interrupts the
/// statement it is running (with `KILL QUERY` on a connection of the console's own); an idle
/// session ends at once.
async fn kill(shared: &Shared, id: u64) -> Reply {
    let Some(target) = u32::try_from(id)
        .ok()
        .and_then(|i| shared.registry.get(ClientId(i)))
    else {
        return Reply::Err(ClientError::unknown_thread(id));
    };
    tracing::warn!(client = id, user = %target.user(), "KILL from the admin console");
    target.kill();
    let closing = format!("client {id} is being closed");
    if target.activity() != Activity::Running {
        return Reply::Ok(closing);
    }
    // Held until the KILL QUERY is done: the session takes this lock before it gives its
    // connection back, so the kill cannot reach a connection another session borrowed since.
    let slot = target.backend_thread.lock().await;
    let Some(thread) = *slot else {
        return Reply::Ok(closing);
    };
    let deadline = tokio::time::Instant::now() + INTERRUPT_DEADLINE;
    let interrupted = match super::side_connection(shared, target.user(), deadline).await {
        Ok(mut conn) => {
            let done = tokio::time::timeout_at(
                deadline,
                conn.query_row(&format!("KILL QUERY {thread}"), "KILL QUERY"),
            )
            .await;
            super::close_side_connection(shared, conn);
            match done {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the database did not answer in time".to_string()),
            }
        }
        Err(why) => Err(why),
    };
    drop(slot);
    match interrupted {
        Ok(()) => {
            tracing::info!(
                client = id,
                backend_thread = thread,
                "running statement interrupted for KILL"
            );
            Reply::Ok(format!("{closing}; its running statement was interrupted"))
        }
        Err(why) => {
            tracing::warn!(client = id, backend_thread = thread, reason = %why,
                "KILL could not interrupt the running statement; the session ends after it");
            Reply::Ok(format!(
                "{closing} after its running statement, which could not be interrupted: {why}"
            ))
        }
    }
}

fn show_clients(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(vec![
        Column::count("id"),
        Column::text("user"),
        Column::text("addr"),
        Column::text("tls"),
        Column::text("state"),
        Column::text("pinned"),
        Column::count("backend_thread"),
        Column::double("connect_seconds"),
        Column::double("idle_seconds"),
    ]);
    for s in shared.registry.sessions() {
        let pins: Vec<&str> = s.pins().iter().map(|r| r.as_str()).collect();
        rs.push(vec![
            s.id.0.into(),
            s.user().as_ref().into(),
            s.peer.to_string().into(),
            yes_no(s.tls()),
            s.activity().as_str().into(),
            pins.join(",").into(),
            s.lent_thread().into(),
            secs(s.connected_at.elapsed()),
            secs(s.idle_for()),
        ]);
    }
    rs
}

fn show_servers(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(vec![
        Column::count("thread_id"),
        Column::text("state"),
        Column::text("user"),
        Column::count("client_id"),
        Column::text("schema"),
        Column::double("age_seconds"),
        Column::double("idle_seconds"),
        Column::text("address"),
    ]);
    let address = shared.config().backend.address.clone();
    let mut rows: Vec<(u32, Vec<Value>)> = Vec::new();
    for c in shared.pool.idle_connections() {
        rows.push((
            c.thread_id,
            vec![
                c.thread_id.into(),
                "idle".into(),
                c.user.as_ref().into(),
                Value::Null,
                c.schema.into(),
                secs(c.age),
                secs(c.idle),
                address.as_str().into(),
            ],
        ));
    }
    for s in shared.registry.sessions() {
        if let Some(thread) = s.lent_thread() {
            rows.push((
                thread,
                vec![
                    thread.into(),
                    "active".into(),
                    s.user().as_ref().into(),
                    s.id.0.into(),
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    address.as_str().into(),
                ],
            ));
        }
    }
    rows.sort_by_key(|(t, _)| *t);
    for (_, row) in rows {
        rs.push(row);
    }
    rs
}

fn show_stats(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(vec![Column::text("stat"), Column::count("value")]);
    let s = shared.stats.snapshot();
    let (open, idle, waiting) = shared.pool.counts();
    let mut rows: Vec<(String, u64)> = vec![
        ("client_connections".into(), s.client_connections),
        (
            "client_connections_total".into(),
            s.client_connections_total,
        ),
        ("client_auth_failures".into(), s.client_auth_failures),
        (
            "client_handshake_failures".into(),
            s.client_handshake_failures,
        ),
        ("backend_connections".into(), s.backend_connections),
        (
            "backend_connections_peak".into(),
            s.backend_connections_peak,
        ),
        (
            "backend_connections_opened".into(),
            s.backend_connections_opened,
        ),
        (
            "backend_connect_failures".into(),
            s.backend_connect_failures,
        ),
        ("backend_resets".into(), s.backend_resets),
        ("borrows".into(), s.borrows),
        ("borrow_timeouts".into(), s.borrow_timeouts),
        ("borrow_wait_micros".into(), s.borrow_wait_micros),
        ("commands".into(), s.commands),
        ("pool_open".into(), open as u64),
        ("pool_idle".into(), idle as u64),
        ("pool_waiting".into(), waiting as u64),
    ];
    for (r, n) in &s.pins_total {
        rows.push((format!("pins_total.{r}"), *n));
    }
    for (r, n) in &s.pinned_sessions {
        rows.push((format!("pinned_now.{r}"), *n));
    }
    for (name, value) in rows {
        rs.push(vec![name.into(), value.into()]);
    }
    rs
}

fn show_config(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(vec![
        Column::text("key"),
        Column::text("value"),
        Column::text("reload"),
    ]);
    for (key, value) in crate::reload::flatten(&shared.config()) {
        let live = shared.reloads_live(&key);
        rs.push(vec![
            key.into(),
            value.into(),
            (if live { "live" } else { "restart" }).into(),
        ]);
    }
    rs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_in_any_case_with_trailing_semicolons() {
        assert_eq!(parse("show pools;").unwrap(), Command::ShowPools);
        assert_eq!(parse("  SHOW   Clients ;; ").unwrap(), Command::ShowClients);
        assert_eq!(parse("kill 42").unwrap(), Command::Kill(42));
        assert_eq!(parse("KILL CONNECTION 7").unwrap(), Command::Kill(7));
        assert_eq!(parse("pause").unwrap(), Command::Pause);
        assert_eq!(parse("SET NAMES utf8mb4").unwrap(), Command::Ignored);
        assert_eq!(
            parse("SELECT @@max_allowed_packet,@@wait_timeout,@@socket").unwrap(),
            Command::Select(vec![
                "@@max_allowed_packet".into(),
                "@@wait_timeout".into(),
                "@@socket".into()
            ])
        );
        assert!(matches!(
            parse("select @@version_comment limit 1").unwrap(),
            Command::Select(items) if items == ["@@version_comment"]
        ));
    }

    #[test]
    fn unknown_commands_get_a_clear_error() {
        for text in [
            "",
            "DROP TABLE x",
            "SHOW DATABASES",
            "KILL me",
            "KILL 99999999999999999999999",
            "SHOW POOLS; SHUTDOWN",
            "SELECT * FROM t",
            "SELECT @@x + 1",
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.code, crate::errors::ER_PARSE_ERROR, "{text}");
            assert!(e.message.contains("SHOW POOLS"), "{}", e.message);
        }
        let huge = "X".repeat(1 << 20);
        assert!(parse(&huge).unwrap_err().message.len() < 1000);
    }

    #[test]
    fn select_items_are_typed() {
        assert_eq!(
            select_column("@@max_allowed_packet").ty,
            super::super::resultset::ColumnType::UnsignedLongLong
        );
        assert_eq!(
            select_column("@@version_comment").ty,
            super::super::resultset::ColumnType::VarString
        );
    }
}
