//! Runs a schedule twice, each client on its own direct connection and then through Sluice with
//! a pool smaller than the number of clients, and compares every step's complete answer. The
//! direct run also decides the interleaving: a client steps only when the model says a pool
//! connection is free for it (or it holds one), so through Sluice no step has to wait, and one
//! that does not come back is a hang. After each step through Sluice the checker also compares
//! whether the session holds its connection with what the model says it should.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sluice::context::Shared;
use sluice::protocol::CapabilityFlags;
use sluice::registry::{Activity, ClientId};

use std::collections::HashMap;

use super::grammar::{self, ClientKind, Cmd, Effect, Rng, Script, Server, Start, Step};
use super::model::Holds;
use super::wire::{Answer, Shape, Wire, base_caps};

/// Where a run's clients connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub user: String,
    pub password: String,
}

/// Sluice in process, for the second run.
#[derive(Clone)]
pub struct SluiceUnderTest {
    pub target: Target,
    pub context: Arc<Shared>,
    /// Its pool's cap.
    pub pool: usize,
}

/// The shape of schedules to generate.
#[derive(Debug, Clone)]
pub struct Flavor {
    pub server: Server,
    /// Statements longer than 64 KiB, sometimes.
    pub long: bool,
}

/// One step of a schedule as it ran: which client, what it did.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub client: usize,
    pub step: Step,
}

/// A schedule: the clients' kinds and the steps in the order they run.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub seed: u64,
    pub kinds: Vec<ClientKind>,
    pub steps: Vec<Scheduled>,
}

/// What went wrong in a schedule.
#[derive(Debug, Clone)]
pub struct Divergence {
    pub seed: u64,
    /// Index in the schedule's steps.
    pub at: usize,
    pub what: String,
    pub direct: Answer,
    pub through_sluice: Answer,
    pub schedule: Schedule,
}

impl Divergence {
    /// The reproducer: each client's statements, in schedule order, and what differed.
    pub fn report(&self) -> String {
        let mut out = format!(
            "seed {}: step {} (client {}): {}\n",
            self.seed,
            self.at,
            self.schedule.steps.get(self.at).map_or(0, |s| s.client),
            self.what
        );
        for (i, s) in self.schedule.steps.iter().enumerate() {
            let mark = if i == self.at { ">>" } else { "  " };
            out += &format!("{mark} c{}: {}\n", s.client, render(&s.step.cmd));
        }
        for (c, k) in self.schedule.kinds.iter().enumerate() {
            out += &format!("   c{c}: {k:?}\n");
        }
        out += &format!(
            "   direct:  {}\n   through: {}\n",
            self.direct.describe(),
            self.through_sluice.describe()
        );
        out
    }
}

impl Divergence {
    /// The difference no pooler can avoid that explains this divergence, if one does: a
    /// multi-statement query reads the diagnostics area part-way (before any of its statements
    /// replaced it), and the conditions the session's previous statement left there are ones
    /// `SIGNAL` cannot raise again on another connection (a note, more than one condition, a
    /// message over 128 characters). README, "What differs through Sluice".
    pub fn inherent(&self) -> Option<&'static str> {
        let step = self.schedule.steps.get(self.at)?;
        let Cmd::Query(q) = &step.step.cmd else {
            return None;
        };
        let text = String::from_utf8_lossy(q).to_ascii_uppercase();
        let (_, rest) = text.split_once(';')?;
        if !rest.contains("SHOW WARNINGS") && !rest.contains("SHOW ERRORS") {
            return None;
        }
        let conditions: Vec<(Vec<u8>, usize)> = self
            .direct
            .packets()
            .iter()
            .filter_map(|p| condition_row(p))
            .collect();
        let unraisable = conditions.len() > 1
            || conditions
                .iter()
                .any(|(level, message_chars)| level == b"Note" || *message_chars > 128);
        unraisable.then_some(
            "a query that reads the diagnostics area part-way, after conditions SIGNAL cannot raise again",
        )
    }
}

/// A `SHOW WARNINGS` row (Level, Code, Message): its level and the message's length in
/// characters.
fn condition_row(p: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut at = 0;
    let mut field = || -> Option<&[u8]> {
        let n = usize::try_from(crate::wire::lenenc(p, &mut at)?).ok()?;
        let f = p.get(at..at + n)?;
        at += n;
        Some(f)
    };
    let level = field()?;
    let code = field()?;
    let message = field()?;
    let known = matches!(level, b"Note" | b"Warning" | b"Error");
    (known && !code.is_empty() && code.iter().all(u8::is_ascii_digit) && at == p.len()).then(|| {
        (
            level.to_vec(),
            String::from_utf8_lossy(message).chars().count(),
        )
    })
}

/// A step as SQL (or the command) for reports.
pub fn render(cmd: &Cmd) -> String {
    match cmd {
        Cmd::Query(q) => {
            let text = String::from_utf8_lossy(q);
            if text.len() > 300 {
                format!(
                    "{}... ({} bytes)",
                    &text[..text.char_indices().nth(200).map_or(text.len(), |(i, _)| i)],
                    text.len()
                )
            } else {
                text.into_owned()
            }
        }
        other => format!("{other:?}"),
    }
}

/// Makes a schedule's clients' scripts from `seed`.
pub fn scripts(seed: u64, shape: &Flavor, schema: &str) -> Vec<Script> {
    let mut rng = Rng::new(seed);
    let clients = 2 + rng.below(3);
    (0..clients)
        .map(|c| {
            let sessions = 1 + rng.below(3);
            let long = shape.long && rng.chance(10);
            grammar::script(&mut rng, c, shape.server, schema, sessions, long)
        })
        .collect()
}

/// One client's connection and statement ids during a run.
struct Client {
    wire: Option<Wire>,
    kind: ClientKind,
    /// Server statement id per slot.
    stmt_ids: Vec<u32>,
    holds: Holds,
}

impl Client {
    fn new(kind: ClientKind, server: Server) -> Client {
        Client {
            wire: None,
            kind,
            stmt_ids: Vec::new(),
            holds: Holds::new(server == Server::MySql && !kind.deprecate_eof),
        }
    }

    /// Whether `step` may end the session on the server's side: a transaction end with
    /// RELEASE, explicit or by `completion_type = 2`. Asked before the step's effects apply.
    fn may_release(&self, step: &Step) -> bool {
        step.effects.iter().any(|e| match e {
            Effect::EndTransaction { release } => *release || self.holds.completion_type == 2,
            _ => false,
        })
    }

    /// After a step that ended the session on the server's side, waits for the peer to close
    /// the connection, so that the run settles (and the server releases the session's locks)
    /// before the next step: otherwise the next client may see them still held, or not, by
    /// timing alone.
    async fn settle_release(&mut self, released: bool, answer: &Answer) {
        if !released || answer.error().is_some() {
            return;
        }
        if let Some(w) = self.wire.as_mut()
            && w.await_close().await
        {
            self.wire = None;
        }
    }

    /// The id of the client's connection, while it has one.
    fn connection_id(&self) -> Option<u32> {
        self.wire.as_ref().map(|w| w.connection_id)
    }

    fn caps(&self) -> CapabilityFlags {
        let mut caps = base_caps();
        if self.kind.found_rows {
            caps |= CapabilityFlags::CLIENT_FOUND_ROWS;
        }
        if self.kind.multi_statements {
            caps |= CapabilityFlags::CLIENT_MULTI_STATEMENTS;
        }
        if self.kind.deprecate_eof {
            caps |= CapabilityFlags::CLIENT_DEPRECATE_EOF;
        }
        caps
    }

    async fn run(&mut self, target: &Target, cmd: &Cmd) -> Answer {
        match cmd {
            Cmd::Connect(db) => {
                if let Some(w) = self.wire.take() {
                    w.quit().await;
                }
                self.stmt_ids.clear();
                self.holds.clear();
                match Wire::login(
                    target.addr,
                    &target.user,
                    &target.password,
                    db.as_deref(),
                    self.caps(),
                )
                .await
                {
                    Ok(mut w) => {
                        // MariaDB hands a new connection the FOUND_ROWS() of the last one its
                        // thread served (a server quirk): give every session a known start.
                        let first = w.command(b"\x03SELECT 1", Shape::Results).await;
                        self.wire = Some(w);
                        Answer::Packets(first.packets().to_vec())
                    }
                    Err(e) => Answer::Closed(vec![format!("login failed: {e:#}").into_bytes()]),
                }
            }
            Cmd::Disconnect => {
                if let Some(w) = self.wire.take() {
                    w.quit().await;
                }
                self.stmt_ids.clear();
                self.holds.clear();
                Answer::Nothing
            }
            _ => {
                let Some(w) = self.wire.as_mut() else {
                    return Answer::Closed(Vec::new());
                };
                let id =
                    |slot: &usize, ids: &Vec<u32>| ids.get(*slot).copied().unwrap_or(0xFFFF_FFF0);
                let (payload, shape) = match cmd {
                    Cmd::Query(q) => {
                        let mut p = vec![0x03];
                        p.extend_from_slice(q);
                        (p, Shape::Results)
                    }
                    Cmd::Prepare { sql, .. } => {
                        let mut p = vec![0x16];
                        p.extend_from_slice(sql.as_bytes());
                        (p, Shape::Prepare)
                    }
                    Cmd::Execute {
                        slot,
                        params,
                        cursor,
                    } => (
                        execute(id(slot, &self.stmt_ids), params, *cursor),
                        Shape::Results,
                    ),
                    Cmd::Fetch { slot, rows } => {
                        let mut p = vec![0x1C];
                        p.extend_from_slice(&id(slot, &self.stmt_ids).to_le_bytes());
                        p.extend_from_slice(&rows.to_le_bytes());
                        (p, Shape::Fetch)
                    }
                    Cmd::CloseStmt { slot } => {
                        let mut p = vec![0x19];
                        p.extend_from_slice(&id(slot, &self.stmt_ids).to_le_bytes());
                        (p, Shape::None)
                    }
                    Cmd::ResetStmt { slot } => {
                        let mut p = vec![0x1A];
                        p.extend_from_slice(&id(slot, &self.stmt_ids).to_le_bytes());
                        (p, Shape::Single)
                    }
                    Cmd::ResetConnection => (vec![0x1F], Shape::Single),
                    Cmd::InitDb(db) => {
                        let mut p = vec![0x02];
                        p.extend_from_slice(db.as_bytes());
                        (p, Shape::Single)
                    }
                    Cmd::Ping => (vec![0x0E], Shape::Single),
                    Cmd::Connect(_) | Cmd::Disconnect => unreachable_cmd(),
                };
                let mut answer = w.command(&payload, shape).await;
                if let (Cmd::Prepare { slot, .. }, Answer::Packets(p)) = (cmd, &mut answer) {
                    // Statement ids are each side's own: keep the id, compare without it.
                    if let Some(first) = p
                        .first_mut()
                        .filter(|f| f.first() == Some(&0) && f.len() >= 5)
                    {
                        let server_id =
                            u32::from_le_bytes([first[1], first[2], first[3], first[4]]);
                        first[1..5].copy_from_slice(&[0, 0, 0, 0]);
                        if self.stmt_ids.len() <= *slot {
                            self.stmt_ids.resize(*slot + 1, 0xFFFF_FFF0);
                        }
                        self.stmt_ids[*slot] = server_id;
                    } else if self.stmt_ids.len() > *slot {
                        self.stmt_ids[*slot] = 0xFFFF_FFF0;
                    }
                }
                if matches!(cmd, Cmd::ResetConnection) && answer.error().is_none() {
                    self.stmt_ids.clear();
                    self.holds.clear();
                }
                if w.is_closed() {
                    self.wire = None;
                    if let Answer::Packets(p) = answer {
                        answer = Answer::Closed(p);
                    }
                }
                answer
            }
        }
    }
}

fn unreachable_cmd() -> (Vec<u8>, Shape) {
    (vec![0x0E], Shape::Single)
}

/// COM_STMT_EXECUTE with BIGINT parameters.
fn execute(id: u32, params: &[Option<i64>], cursor: bool) -> Vec<u8> {
    let mut p = vec![0x17];
    p.extend_from_slice(&id.to_le_bytes());
    p.push(u8::from(cursor));
    p.extend_from_slice(&1u32.to_le_bytes());
    if !params.is_empty() {
        let mut nulls = vec![0u8; params.len().div_ceil(8)];
        for (i, v) in params.iter().enumerate() {
            if v.is_none() {
                nulls[i / 8] |= 1 << (i % 8);
            }
        }
        p.extend_from_slice(&nulls);
        p.push(1);
        for _ in params {
            p.extend_from_slice(&[8, 0]);
        }
        for v in params.iter().flatten() {
            p.extend_from_slice(&v.to_le_bytes());
        }
    }
    p
}

/// Whether a command needs a pool connection through Sluice (a connect runs `SELECT 1`).
fn needs_connection(cmd: &Cmd) -> bool {
    !matches!(cmd, Cmd::Disconnect)
}

/// Whether client `c` may send `cmd` now without waiting through Sluice: it needs no
/// connection, already holds one, or the model says one of the `pool` is free.
fn may_step(clients: &[Client], c: usize, cmd: &Cmd, pool: usize) -> bool {
    let holding = clients.iter().filter(|c| c.holds.holds()).count();
    !needs_connection(cmd) || clients[c].holds.holds() || holding < pool
}

/// A client whose next step may run now (chosen by `rng`), if any.
fn pick_runnable(
    scripts: &[Script],
    clients: &[Client],
    next: &[usize],
    pool: usize,
    rng: &mut Rng,
) -> Option<usize> {
    let runnable: Vec<usize> = (0..scripts.len())
        .filter(|&c| {
            scripts[c]
                .steps
                .get(next[c])
                .is_some_and(|step| may_step(clients, c, &step.cmd, pool))
        })
        .collect();
    (!runnable.is_empty()).then(|| runnable[rng.below(runnable.len())])
}

/// The checker: one database, one schema, Sluice in front of it.
pub struct Checker {
    pub direct: Target,
    pub sluice: SluiceUnderTest,
    pub schema: String,
    pub shape: Flavor,
    /// Setup connection for resetting the schema between runs.
    admin: tokio::sync::Mutex<Option<Wire>>,
    max_clients: usize,
    /// Isolation runs: a fresh direct session's answers to the battery, per client kind,
    /// client and whether asked after a reset.
    fresh: tokio::sync::Mutex<HashMap<(ClientKind, usize, Start), Vec<Answer>>>,
    /// Isolation runs so far (the data is reset every few).
    isolation_runs: std::sync::atomic::AtomicU64,
}

impl Checker {
    /// A checker on `schema` (created here).
    pub async fn new(
        direct: Target,
        sluice: SluiceUnderTest,
        schema: &str,
        shape: Flavor,
    ) -> Result<Checker> {
        let max_clients = 4;
        let mut admin = Wire::login(
            direct.addr,
            &direct.user,
            &direct.password,
            None,
            base_caps() | CapabilityFlags::CLIENT_MULTI_STATEMENTS,
        )
        .await
        .context("checker setup connection")?;
        for sql in grammar::schema_sql(schema, max_clients) {
            let mut p = vec![0x03];
            p.extend_from_slice(sql.as_bytes());
            let a = admin.command(&p, Shape::Results).await;
            anyhow::ensure!(
                a.error().is_none(),
                "schema setup failed at {sql}: {}",
                a.describe()
            );
        }
        Ok(Checker {
            direct,
            sluice,
            schema: schema.to_string(),
            shape,
            admin: tokio::sync::Mutex::new(Some(admin)),
            max_clients,
            fresh: tokio::sync::Mutex::new(HashMap::new()),
            isolation_runs: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Puts every client table back as it started (and the auto-increment counters).
    async fn reset_data(&self) -> Result<()> {
        let mut guard = self.admin.lock().await;
        let admin = guard.as_mut().context("setup connection")?;
        let mut sql = String::new();
        for c in 0..self.max_clients {
            // Cheaper than TRUNCATE (which makes a new file) and the same state: two rows,
            // the next id 3.
            sql += &format!(
                "DELETE FROM `{s}`.t{c}; ALTER TABLE `{s}`.t{c} AUTO_INCREMENT = 1; \
                 INSERT INTO `{s}`.t{c} (v, s) VALUES (1, 'one'), (2, 'two');",
                s = self.schema
            );
        }
        // Prepared XA transactions survive their session; none may outlive a run.
        // Sessions of the last run end on the server a moment after they quit, and their locks
        // and transactions with them: wait until none is left in the schema.
        let quiet = format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{}' AND ID <> CONNECTION_ID()",
            self.schema
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut spins = 0u32;
        loop {
            let mut p = vec![0x03];
            p.extend_from_slice(quiet.as_bytes());
            let a = admin.command(&p, Shape::Results).await;
            if a.value(0) == Some(Some(b"0".to_vec())) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "sessions of the last run did not end: {}",
                a.describe()
            );
            pause(&mut spins).await;
        }
        let mut p = vec![0x03];
        p.extend_from_slice(sql.trim_end_matches(';').as_bytes());
        let a = admin.command(&p, Shape::Results).await;
        anyhow::ensure!(a.error().is_none(), "data reset failed: {}", a.describe());
        Ok(())
    }

    /// Generates and checks the schedule of `seed`.
    pub async fn check_seed(&self, seed: u64) -> Result<Option<Divergence>> {
        let scripts = scripts(seed, &self.shape, &self.schema);
        let kinds: Vec<ClientKind> = scripts.iter().map(|s| s.kind).collect();
        let mut rng = Rng::new(seed ^ 0x5EED);
        let (steps, direct, holds) = self.run_direct_scheduled(&scripts, &mut rng).await?;
        let schedule = Schedule { seed, kinds, steps };
        self.compare(schedule, direct, holds).await
    }

    /// Runs `schedule` (already ordered) both ways and compares.
    pub async fn check_schedule(&self, schedule: Schedule) -> Result<Option<Divergence>> {
        let Some((direct, holds)) = self.run_direct_ordered(&schedule).await? else {
            return Ok(None);
        };
        self.compare(schedule, direct, holds).await
    }

    async fn compare(
        &self,
        schedule: Schedule,
        direct: Vec<Answer>,
        holds: Vec<bool>,
    ) -> Result<Option<Divergence>> {
        let through = self.run_sluice(&schedule, &holds).await?;
        for (i, (d, t)) in direct.iter().zip(&through.answers).enumerate() {
            let hold_failure = || {
                through
                    .hold_failure
                    .as_ref()
                    .filter(|(at, _)| *at == i)
                    .map(|(_, what)| what.clone())
            };
            if let Some(what) = differs(d, t).or_else(hold_failure) {
                return Ok(Some(Divergence {
                    seed: schedule.seed,
                    at: i,
                    what,
                    direct: d.clone(),
                    through_sluice: t.clone(),
                    schedule,
                }));
            }
        }
        Ok(None)
    }

    /// The direct run, choosing the interleaving as it goes.
    async fn run_direct_scheduled(
        &self,
        scripts: &[Script],
        rng: &mut Rng,
    ) -> Result<(Vec<Scheduled>, Vec<Answer>, Vec<bool>)> {
        self.reset_data().await?;
        let mut clients: Vec<Client> = scripts
            .iter()
            .map(|s| Client::new(s.kind, self.shape.server))
            .collect();
        let mut next = vec![0usize; scripts.len()];
        let mut order = Vec::new();
        let mut answers = Vec::new();
        let mut holds = Vec::new();
        while let Some(c) = pick_runnable(scripts, &clients, &next, self.sluice.pool, rng) {
            let step = scripts[c].steps[next[c]].clone();
            next[c] += 1;
            let before = clients[c].connection_id();
            let released = clients[c].may_release(&step);
            let answer = clients[c].run(&self.direct, &step.cmd).await;
            clients[c].settle_release(released, &answer).await;
            self.settle_direct(before, &clients[c]).await?;
            clients[c].holds.apply(&step.effects, &answer);
            holds.push(clients[c].holds.holds());
            answers.push(answer);
            order.push(Scheduled { client: c, step });
        }
        for c in clients {
            if let Some(w) = c.wire {
                w.quit().await;
            }
        }
        Ok((order, answers, holds))
    }

    /// The direct run of an ordered schedule; `None` if the order would make a client wait
    /// through Sluice (a candidate the shrinker cannot use).
    async fn run_direct_ordered(
        &self,
        schedule: &Schedule,
    ) -> Result<Option<(Vec<Answer>, Vec<bool>)>> {
        self.reset_data().await?;
        let mut clients: Vec<Client> = schedule
            .kinds
            .iter()
            .map(|k| Client::new(*k, self.shape.server))
            .collect();
        let mut answers = Vec::new();
        let mut holds = Vec::new();
        let mut valid = true;
        for s in &schedule.steps {
            if !may_step(&clients, s.client, &s.step.cmd, self.sluice.pool) {
                valid = false;
                break;
            }
            let before = clients[s.client].connection_id();
            let released = clients[s.client].may_release(&s.step);
            let answer = clients[s.client].run(&self.direct, &s.step.cmd).await;
            clients[s.client].settle_release(released, &answer).await;
            self.settle_direct(before, &clients[s.client]).await?;
            clients[s.client].holds.apply(&s.step.effects, &answer);
            holds.push(clients[s.client].holds.holds());
            answers.push(answer);
        }
        for c in clients {
            if let Some(w) = c.wire {
                w.quit().await;
            }
        }
        Ok(valid.then_some((answers, holds)))
    }

    async fn run_sluice(&self, schedule: &Schedule, expected: &[bool]) -> Result<SluiceRun> {
        self.begin_sluice_run(true).await?;
        let mut clients: Vec<Client> = schedule
            .kinds
            .iter()
            .map(|k| Client::new(*k, self.shape.server))
            .collect();
        let mut answers = Vec::new();
        let mut hold_failure = None;
        for (i, s) in schedule.steps.iter().enumerate() {
            let before = clients[s.client].connection_id();
            let released = clients[s.client].may_release(&s.step);
            let answer = clients[s.client]
                .run(&self.sluice.target, &s.step.cmd)
                .await;
            clients[s.client].settle_release(released, &answer).await;
            self.settle_sluice(before, &clients[s.client]).await?;
            let hung = answer == Answer::Timeout;
            answers.push(answer);
            if hung {
                hold_failure.get_or_insert((
                    i,
                    "no answer: the step waited for a connection the model says is free".into(),
                ));
                break;
            }
            if hold_failure.is_some() || !needs_connection(&s.step.cmd) {
                continue;
            }
            if let Some(&expected) = expected.get(i)
                && let Some(what) = self.hold_mismatch(&clients[s.client], expected).await
            {
                hold_failure = Some((i, what));
            }
        }
        self.end_sluice_run(clients).await;
        Ok(SluiceRun {
            answers,
            hold_failure,
        })
    }

    /// Starts a run through Sluice from an empty pool, so runs do not depend on each other (the
    /// last one paused the pool, which closed its connections).
    async fn begin_sluice_run(&self, reset_data: bool) -> Result<()> {
        if reset_data {
            self.reset_data().await?;
        }
        // A session of an earlier run may still wait for a connection (a run that hung): let
        // it time out first, so it cannot take this run's.
        anyhow::ensure!(
            self.sluice
                .context
                .registry
                .wait_empty(Duration::from_secs(10))
                .await,
            "sessions of an earlier run are still in Sluice"
        );
        self.sluice.context.pool.resume();
        Ok(())
    }

    /// Ends a run through Sluice: the clients quit, and the pool closes idle connections now
    /// and the others as their sessions end.
    async fn end_sluice_run(&self, clients: Vec<Client>) {
        for c in clients {
            if let Some(w) = c.wire {
                w.quit().await;
            }
        }
        self.sluice.context.pool.pause();
    }

    /// What is wrong, if Sluice's holding (or not) of the client's connection after its last
    /// step is not what the model says.
    async fn hold_mismatch(&self, client: &Client, expected: bool) -> Option<String> {
        let id = ClientId(client.wire.as_ref()?.connection_id);
        let holds = self.session_holds(id).await?;
        if holds == expected {
            return None;
        }
        Some(if holds {
            let pins = self
                .sluice
                .context
                .registry
                .get(id)
                .map(|h| h.pins())
                .unwrap_or_default();
            format!(
                "needless pin: Sluice keeps the session's connection ({:?}) though nothing holds it",
                pins.iter().map(|p| p.as_str()).collect::<Vec<_>>()
            )
        } else {
            "missing hold: Sluice gave the connection back while the session holds state on it"
                .to_string()
        })
    }

    /// A fresh direct session's answers to the isolation battery, as client `c` of `kind`,
    /// after a login or after a reset.
    async fn fresh_answers(&self, kind: ClientKind, c: usize, start: Start) -> Result<Vec<Answer>> {
        let key = (kind, c, start);
        if let Some(a) = self.fresh.lock().await.get(&key) {
            return Ok(a.clone());
        }
        let mut client = Client::new(kind, self.shape.server);
        let setup = match start {
            Start::Login => vec![Cmd::Connect(None)],
            Start::LoginWithSchema => vec![Cmd::Connect(Some(self.schema.clone()))],
            Start::Reset => vec![
                Cmd::Connect(None),
                Cmd::InitDb(self.schema.clone()),
                Cmd::ResetConnection,
            ],
        };
        for cmd in &setup {
            let a = client.run(&self.direct, cmd).await;
            anyhow::ensure!(
                a.error().is_none() && matches!(a, Answer::Packets(_)),
                "fresh session setup failed at {cmd:?}: {}",
                a.describe()
            );
        }
        let mut answers = Vec::new();
        let mut selected = start != Start::Login;
        for (db, sql) in grammar::isolation_battery(self.shape.server, &self.schema, c) {
            if db.is_some() && !selected {
                client
                    .run(&self.direct, &Cmd::InitDb(self.schema.clone()))
                    .await;
                selected = true;
            }
            answers.push(
                client
                    .run(&self.direct, &Cmd::Query(sql.into_bytes()))
                    .await,
            );
        }
        let before = client.connection_id();
        client.run(&self.direct, &Cmd::Disconnect).await;
        self.settle_direct(before, &client).await?;
        self.fresh.lock().await.insert(key, answers.clone());
        Ok(answers)
    }

    /// Runs the isolation schedule of `seed` through Sluice alone: two to four clients, each a
    /// few short sessions, interleaved so that no step waits (the model says which sessions
    /// hold a connection), every session opening with the battery whose answers must be a
    /// fresh direct session's. Returns the number of sessions and the first failure: a leak
    /// (a probe's answer differs), a hang, an error of Sluice's own (95xx), a refused login,
    /// or a hold that differs from the model.
    pub async fn check_isolation_seed(&self, seed: u64) -> Result<(usize, Option<Divergence>)> {
        let mut rng = Rng::new(seed);
        let count = 2 + rng.below(3);
        let scripts: Vec<Script> = (0..count)
            .map(|c| {
                let sessions = 2 + rng.below(4);
                let long = self.shape.long && rng.chance(5);
                grammar::isolation_script(
                    &mut rng,
                    c,
                    self.shape.server,
                    &self.schema,
                    sessions,
                    long,
                )
            })
            .collect();
        let sessions = scripts
            .iter()
            .flat_map(|s| &s.steps)
            .filter(|s| matches!(s.cmd, Cmd::Connect(_)))
            .count();
        let mut expected = HashMap::new();
        for (c, script) in scripts.iter().enumerate() {
            for p in &script.probes {
                if let std::collections::hash_map::Entry::Vacant(e) = expected.entry((c, p.start)) {
                    e.insert(self.fresh_answers(script.kind, c, p.start).await?);
                }
            }
        }
        // No answer but the probes' is compared, and those do not depend on the data: reset it
        // only now and then, so the tables stay small.
        let runs = self
            .isolation_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.begin_sluice_run(runs.is_multiple_of(16)).await?;
        let kinds: Vec<ClientKind> = scripts.iter().map(|s| s.kind).collect();
        let mut clients: Vec<Client> = kinds
            .iter()
            .map(|k| Client::new(*k, self.shape.server))
            .collect();
        let mut next = vec![0usize; scripts.len()];
        let mut order = Vec::new();
        let mut rng = Rng::new(seed ^ 0x150_1A7E);
        // Sessions ended by a RELEASE (the server closes them; the client may not know yet).
        let mut released = vec![false; scripts.len()];
        while let Some(c) = pick_runnable(&scripts, &clients, &next, self.sluice.pool, &mut rng) {
            let k = next[c];
            let step = scripts[c].steps[k].clone();
            next[c] += 1;
            let before = clients[c].connection_id();
            // A session the server ended (`COMMIT RELEASE`) answers nothing until it logs in
            // again: its steps until then are not checked.
            let ended = (before.is_none() || released[c]) && !matches!(step.cmd, Cmd::Connect(_));
            let may_close = clients[c].may_release(&step);
            let answer = clients[c].run(&self.sluice.target, &step.cmd).await;
            clients[c].settle_release(may_close, &answer).await;
            self.settle_sluice(before, &clients[c]).await?;
            if matches!(step.cmd, Cmd::Connect(_)) {
                released[c] = false;
            } else if may_close && answer.error().is_none() {
                released[c] = true;
            }
            clients[c].holds.apply(&step.effects, &answer);
            let probe = scripts[c].probes.iter().find(|p| p.step == k && !ended);
            let fresh = probe
                .and_then(|p| expected.get(&(c, p.start))?.get(p.battery))
                .cloned()
                .unwrap_or(Answer::Nothing);
            let failure = if ended {
                None
            } else if answer == Answer::Timeout {
                Some("no answer: the step waited for a connection the model says is free".into())
            } else if matches!(step.cmd, Cmd::Connect(_)) && !matches!(answer, Answer::Packets(_)) {
                Some("the login or its first statement failed".into())
            } else if let Some(code) = answer.error().filter(|e| (9500..9600).contains(e)) {
                Some(format!("Sluice answered with its own error {code}"))
            } else if matches!(answer, Answer::Closed(_)) && !may_close {
                Some("the session was closed by a step that does not end it".into())
            } else if let Some(p) = probe {
                differs(&fresh, &answer).map(|w| {
                    format!(
                        "leak: probe {} of the battery differs from a fresh session's answer ({w})",
                        p.battery
                    )
                })
            } else if needs_connection(&step.cmd) {
                self.hold_mismatch(&clients[c], clients[c].holds.holds())
                    .await
            } else {
                None
            };
            let at = order.len();
            order.push(Scheduled { client: c, step });
            if let Some(what) = failure {
                self.end_sluice_run(clients).await;
                return Ok((
                    sessions,
                    Some(Divergence {
                        seed,
                        at,
                        what,
                        direct: fresh,
                        through_sluice: answer,
                        schedule: Schedule {
                            seed,
                            kinds,
                            steps: order,
                        },
                    }),
                ));
            }
        }
        self.end_sluice_run(clients).await;
        Ok((sessions, None))
    }

    /// The oracle's own check: the schedule of `seed` run twice on direct connections, in
    /// the same order, must give the same answers (else the checker's comparisons would
    /// blame Sluice for the server's nondeterminism).
    pub async fn check_oracle_seed(&self, seed: u64) -> Result<Option<Divergence>> {
        let scripts = scripts(seed, &self.shape, &self.schema);
        let kinds: Vec<ClientKind> = scripts.iter().map(|s| s.kind).collect();
        let mut rng = Rng::new(seed ^ 0x5EED);
        let (steps, first, _) = self.run_direct_scheduled(&scripts, &mut rng).await?;
        let schedule = Schedule { seed, kinds, steps };
        let Some((second, _)) = self.run_direct_ordered(&schedule).await? else {
            anyhow::bail!("seed {seed}: the direct run's own order is not runnable again");
        };
        for (i, (a, b)) in first.iter().zip(&second).enumerate() {
            if let Some(what) = differs(a, b) {
                return Ok(Some(Divergence {
                    seed,
                    at: i,
                    what: format!("direct against direct: {what}"),
                    direct: a.clone(),
                    through_sluice: b.clone(),
                    schedule,
                }));
            }
        }
        Ok(None)
    }

    /// A session that ended (quit, or closed by the server) ends on the server a moment later,
    /// releasing its locks: wait for that, so the next step sees the same on both sides.
    async fn settle_direct(&self, before: Option<u32>, client: &Client) -> Result<()> {
        let Some(id) = before.filter(|id| client.connection_id() != Some(*id)) else {
            return Ok(());
        };
        let mut guard = self.admin.lock().await;
        let admin = guard.as_mut().context("setup connection")?;
        let query = format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {id}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut spins = 0u32;
        loop {
            let mut p = vec![0x03];
            p.extend_from_slice(query.as_bytes());
            if admin.command(&p, Shape::Results).await.value(0) == Some(Some(b"0".to_vec())) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "connection {id} did not end");
            pause(&mut spins).await;
        }
    }

    /// Likewise through Sluice: the session is gone and its connection reset (a reset runs
    /// after the session let the connection go).
    async fn settle_sluice(&self, before: Option<u32>, client: &Client) -> Result<()> {
        let Some(id) = before.filter(|id| client.connection_id() != Some(*id)) else {
            return Ok(());
        };
        let context = &self.sluice.context;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut spins = 0u32;
        while context.registry.get(ClientId(id)).is_some()
            || context
                .stats
                .resets_in_flight
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "session {id} did not end in Sluice"
            );
            pause(&mut spins).await;
        }
        Ok(())
    }

    /// Whether the session holds its backend connection, once it has finished its command.
    async fn session_holds(&self, id: ClientId) -> Option<bool> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut spins = 0u32;
        loop {
            let handle = self.sluice.context.registry.get(id)?;
            if handle.activity() != Activity::Running {
                return Some(handle.lent_thread().is_some());
            }
            if Instant::now() > deadline {
                return None;
            }
            pause(&mut spins).await;
        }
    }

    /// Shrinks a divergence to a shorter schedule that still diverges (delta debugging over
    /// steps), within `budget`.
    pub async fn shrink(&self, mut div: Divergence, budget: Duration) -> Divergence {
        let deadline = Instant::now() + budget;
        // Steps after the divergence do not matter.
        div.schedule.steps.truncate(div.at + 1);
        let mut chunk = div.schedule.steps.len() / 2;
        while chunk >= 1 && Instant::now() < deadline {
            let mut i = 0;
            let mut progressed = false;
            while i < div.schedule.steps.len() && Instant::now() < deadline {
                let mut candidate = div.schedule.clone();
                let end = (i + chunk).min(candidate.steps.len());
                candidate.steps.drain(i..end);
                if candidate.steps.is_empty() {
                    i += chunk;
                    continue;
                }
                match self.check_schedule(candidate).await {
                    Ok(Some(smaller)) => {
                        div = smaller;
                        div.schedule.steps.truncate(div.at + 1);
                        progressed = true;
                    }
                    _ => i += chunk,
                }
            }
            if !progressed {
                chunk /= 2;
            }
        }
        div
    }
}

/// Waits a moment for another task (Sluice's session, the server): a few yields first, which
/// usually suffice and cost microseconds, then a timer (a millisecond at least).
async fn pause(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

struct SluiceRun {
    answers: Vec<Answer>,
    hold_failure: Option<(usize, String)>,
}

/// A documented difference the comparison leaves out: a server sets "session state changed"
/// (0x4000) in classic EOF packets when a variable of its default tracking list changes, even
/// for clients that did not ask for session tracking; Sluice, tracking everything on its
/// connections, cannot tell those changes from others in an EOF and clears the flag there.
fn normalized(a: &Answer) -> Answer {
    let fix = |p: &Vec<Vec<u8>>| {
        p.iter()
            .map(|x| {
                let mut x = x.clone();
                if x.len() == 5 && x[0] == 0xFE {
                    x[4] &= !0x40;
                }
                // Statement ids are each side's own, also inside error messages and the rows
                // of SHOW WARNINGS that repeat them: compare those rows as text with the ids
                // (and the length bytes they change) left out.
                if x.first() != Some(&0xFF)
                    && [
                        &b"has no open cursor"[..],
                        &b"prepared statement handler ("[..],
                    ]
                    .iter()
                    .any(|m| x.windows(m.len()).any(|w| w == *m))
                {
                    // A text row: each value as its length and bytes.
                    let mut out = Vec::new();
                    let mut at = 0;
                    while at < x.len() {
                        let Some(len) = super::wire::lenenc(&x, &mut at) else {
                            break;
                        };
                        let end = (at + len as usize).min(x.len());
                        let mut in_parens = false;
                        for &b in &x[at..end] {
                            match b {
                                b'(' => in_parens = true,
                                b')' => in_parens = false,
                                b'0'..=b'9' if in_parens => continue,
                                _ => {}
                            }
                            out.push(b);
                        }
                        out.push(b'|');
                        at = end;
                    }
                    x = out;
                }
                if x.len() > 3 && x[0] == 0xFF {
                    let code = u16::from_le_bytes([x[1], x[2]]);
                    if matches!(code, 1243 | 1421) {
                        let text = String::from_utf8_lossy(&x).into_owned();
                        let masked: String = text
                            .split('(')
                            .enumerate()
                            .map(|(i, part)| {
                                if i == 0 {
                                    part.to_string()
                                } else {
                                    let digits =
                                        part.chars().take_while(char::is_ascii_digit).count();
                                    format!("(#{}", &part[digits..])
                                }
                            })
                            .collect::<Vec<_>>()
                            .join("");
                        x = masked.into_bytes();
                    }
                }
                x
            })
            .collect()
    };
    match a {
        Answer::Packets(p) => Answer::Packets(fix(p)),
        Answer::Closed(p) => Answer::Closed(fix(p)),
        other => other.clone(),
    }
}

/// How two answers differ, if they do.
fn differs(direct: &Answer, through: &Answer) -> Option<String> {
    let (direct, through) = (&normalized(direct), &normalized(through));
    if direct == through {
        return None;
    }
    Some(match (direct, through) {
        (Answer::Packets(a), Answer::Packets(b)) if a.len() == b.len() => {
            let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
            format!("packet {i} differs")
        }
        (Answer::Packets(a), Answer::Packets(b)) => {
            format!("{} packets directly, {} through Sluice", a.len(), b.len())
        }
        _ => "the answers differ in kind".to_string(),
    })
}
