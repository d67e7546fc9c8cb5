//! Seeded generation of client scripts: sessions of stateful SQL, written in the lexical forms
//! the servers accept (comments of each kind, executable comments above and below the server's
//! version, odd case and spacing, strings whose reading depends on `sql_mode`, statements past
//! 64 KiB), plus binary-protocol statements, cursors and the commands around them. Each step
//! carries what it does to the session in the model's terms ([`Effect`]).
//!
//! Clients only touch their own rows and tables, and never wait on a lock (`GET_LOCK(..., 0)`),
//! so a schedule runs the same way on direct connections in any order.

/// A small deterministic random generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `p` percent.
    pub fn chance(&mut self, p: u32) -> bool {
        self.below(100) < p as usize
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A command a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// Log in (a new session), with the schema to select at login, if any.
    Connect(Option<String>),
    /// COM_QUIT.
    Disconnect,
    Query(Vec<u8>),
    /// COM_STMT_PREPARE into the client's statement slot.
    Prepare {
        slot: usize,
        sql: String,
    },
    /// COM_STMT_EXECUTE of a slot with integer parameters.
    Execute {
        slot: usize,
        params: Vec<Option<i64>>,
        cursor: bool,
    },
    /// COM_STMT_FETCH.
    Fetch {
        slot: usize,
        rows: u32,
    },
    /// COM_STMT_CLOSE.
    CloseStmt {
        slot: usize,
    },
    /// COM_STMT_RESET.
    ResetStmt {
        slot: usize,
    },
    /// COM_RESET_CONNECTION.
    ResetConnection,
    /// COM_INIT_DB.
    InitDb(String),
    /// COM_PING.
    Ping,
}

/// What a step does to the session's held state, in the model's terms. Effects that depend
/// on the server's answer (a lock taken or not) say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A user variable set to a value (`true`) or to NULL (`false`).
    UserVar(String, bool),
    TempTable(String, bool),
    /// `GET_LOCK` or `RELEASE_LOCK` (taking effect if the answer's column for the call says 1).
    Lock(String, bool),
    ReleaseAllLocks,
    TableLock(bool),
    SqlPrepare(String, bool),
    Handler(String, bool),
    Xa(bool),
    /// `SET TRANSACTION` (next transaction only).
    NextTransaction,
    /// `COMMIT`/`ROLLBACK`: ends the transaction and its pending characteristics.
    EndTransaction {
        release: bool,
    },
    /// A variable Sluice cannot replay.
    Unreplayable,
    /// State the server reports without saying what (a procedure's user variable).
    UnknownState,
    /// Rows from a stored function: see [`crate::model::Holds::eof_hides_changes`].
    StoredRows,
    /// A cursor opened (`true`, if the server says so) or closed (`false`) on a statement slot.
    Cursor(usize, bool),
    /// A fetch: the cursor closes if the server says it sent the last row.
    CursorFetch(usize),
    /// `SET completion_type`.
    CompletionType(u8),
    /// The statement's effect depends on several parts.
    Several(Vec<Effect>),
}

/// One step of a client script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub cmd: Cmd,
    pub effects: Vec<Effect>,
}

impl Step {
    fn query(sql: impl Into<Vec<u8>>, effects: Vec<Effect>) -> Step {
        Step {
            cmd: Cmd::Query(sql.into()),
            effects,
        }
    }

    fn plain(sql: impl Into<Vec<u8>>) -> Step {
        Step::query(sql, Vec::new())
    }
}

/// Client options that change the wire format or the server's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKind {
    pub found_rows: bool,
    pub multi_statements: bool,
    pub deprecate_eof: bool,
}

/// One client's script: sessions one after another.
#[derive(Debug, Clone)]
pub struct Script {
    pub kind: ClientKind,
    pub steps: Vec<Step>,
    /// Isolation scripts: the steps whose answer must be a fresh session's.
    pub probes: Vec<Probe>,
}

/// A step of an isolation script whose answer must be what a fresh session gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Index in the script's steps.
    pub step: usize,
    /// Index in [`isolation_battery`].
    pub battery: usize,
    /// How the session that asks it began.
    pub start: Start,
}

/// How a session that asks the isolation battery began; a fresh session's answers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Start {
    /// A login without a schema (the schema is selected with COM_INIT_DB before the probes
    /// that need it).
    Login,
    /// A login naming the schema.
    LoginWithSchema,
    /// `COM_RESET_CONNECTION` in a session that had selected the schema (which a reset keeps).
    Reset,
}

/// Which server the statements are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    MariaDb,
    MySql,
}

/// The names a client owns in the schedule's schema.
fn table(c: usize) -> String {
    format!("t{c}")
}

/// Lock names: one per client and two shared ones (prefixed with the schema, since locks are
/// server-wide and several checkers share a server).
const SHARED_LOCKS: [&str; 2] = ["lk_shared_a", "lk_shared_b"];

/// Generates one client's script.
pub fn script(
    rng: &mut Rng,
    c: usize,
    server: Server,
    schema: &str,
    sessions: usize,
    long: bool,
) -> Script {
    generate(rng, c, server, schema, sessions, long, |g| g.session())
}

/// Generates one client's script for an isolation run: short sessions, each opening with the
/// fixed battery of probes whose answers must be those of a fresh direct session.
pub fn isolation_script(
    rng: &mut Rng,
    c: usize,
    server: Server,
    schema: &str,
    sessions: usize,
    long: bool,
) -> Script {
    generate(rng, c, server, schema, sessions, long, |g| {
        g.isolation_session()
    })
}

/// A client of a random kind and `sessions` sessions made by `session`.
fn generate(
    rng: &mut Rng,
    c: usize,
    server: Server,
    schema: &str,
    sessions: usize,
    long: bool,
    session: fn(&mut Gen<'_>),
) -> Script {
    let kind = ClientKind {
        found_rows: rng.chance(30),
        multi_statements: rng.chance(60),
        deprecate_eof: rng.chance(50),
    };
    let mut g = Gen {
        rng,
        c,
        server,
        kind,
        schema: schema.to_string(),
        long,
        slots: 0,
        steps: Vec::new(),
        probes: Vec::new(),
    };
    for _ in 0..sessions {
        session(&mut g);
    }
    Script {
        kind,
        steps: g.steps,
        probes: g.probes,
    }
}

/// What an isolation run asks at the start of every session, in order, with `Some(db)` where
/// the schema is selected first: every user variable, lock, temporary table, statement and
/// handler name the grammar uses, a write to the client's own table (refused under a leaked
/// table lock or read-only transaction), the transaction's mode and the session variables.
/// Lock probes ask whether *this* connection owns the lock, so other sessions' locks do not
/// change the answer.
pub fn isolation_battery(server: Server, schema: &str, c: usize) -> Vec<(Option<String>, String)> {
    let isolation = match server {
        Server::MariaDb => {
            "@@session.tx_isolation, @@session.tx_read_only, @@session.in_transaction"
        }
        Server::MySql => "@@session.transaction_isolation, @@session.transaction_read_only",
    };
    let owned = |name: &str| format!("IS_USED_LOCK('{name}') <=> CONNECTION_ID()");
    let db = Some(schema.to_string());
    vec![
        (
            None,
            format!(
                "SELECT @v_a, @v_b, @v_c, @from_proc, @from_func, @d_n, @v_decoy, @u, DATABASE(), \
                 @@session.time_zone, @@session.sql_mode, @@session.character_set_results, \
                 @@session.autocommit, @@session.group_concat_max_len, \
                 @@session.max_sp_recursion_depth, @@session.completion_type, {}, {}, {}, {}, \
                 {isolation}",
                owned(&format!("{schema}_{}", SHARED_LOCKS[0])),
                owned(&format!("{schema}_{}", SHARED_LOCKS[1])),
                owned(&format!("{schema}_lk_c{c}")),
                owned("lk_decoy"),
            ),
        ),
        (
            db.clone(),
            "SELECT (SELECT COUNT(*) FROM shadow_a), (SELECT COUNT(*) FROM shadow_b)".to_string(),
        ),
        (
            db.clone(),
            format!("UPDATE {} SET v = v WHERE id = 0", table(c)),
        ),
        (db.clone(), "SELECT COUNT(*) FROM tmp_c".to_string()),
        // Not EXECUTE: Sluice treats that as dynamic SQL (its effects read back afterwards).
        (db.clone(), "DEALLOCATE PREPARE ps1".to_string()),
        (db, "HANDLER h1 READ FIRST".to_string()),
    ]
}

struct Gen<'a> {
    rng: &'a mut Rng,
    c: usize,
    server: Server,
    kind: ClientKind,
    schema: String,
    long: bool,
    /// Statement slots used in this session.
    slots: usize,
    steps: Vec<Step>,
    /// See [`Script::probes`].
    probes: Vec<Probe>,
}

impl Gen<'_> {
    fn push(&mut self, s: Step) {
        self.steps.push(s);
    }

    /// A short session for an isolation run: the battery, then a few actions, then a quit
    /// (sometimes a reset and the battery again, which must also find a fresh session).
    fn isolation_session(&mut self) {
        self.slots = 0;
        // Most drivers name a schema at login; a session without one makes Sluice leave the
        // schema the last borrower chose (a COM_CHANGE_USER), which is checked too.
        let (db, start) = if self.rng.chance(75) {
            (Some(self.schema.clone()), Start::LoginWithSchema)
        } else {
            (None, Start::Login)
        };
        self.push(Step {
            cmd: Cmd::Connect(db),
            effects: Vec::new(),
        });
        self.battery(start);
        for _ in 0..1 + self.rng.below(6) {
            self.action();
        }
        if self.rng.chance(10) {
            self.push(Step {
                cmd: Cmd::ResetConnection,
                effects: Vec::new(),
            });
            self.slots = 0;
            self.battery(Start::Reset);
        }
        self.push(Step {
            cmd: Cmd::Disconnect,
            effects: Vec::new(),
        });
    }

    /// The isolation battery, ending with the schema selected (as a session's actions expect).
    fn battery(&mut self, start: Start) {
        let mut selected = start != Start::Login;
        for (i, (db, sql)) in isolation_battery(self.server, &self.schema, self.c)
            .into_iter()
            .enumerate()
        {
            if db.is_some() && !selected {
                self.push(Step {
                    cmd: Cmd::InitDb(self.schema.clone()),
                    effects: Vec::new(),
                });
                selected = true;
            }
            self.probes.push(Probe {
                step: self.steps.len(),
                battery: i,
                start,
            });
            self.push(Step::plain(sql));
        }
    }

    fn session(&mut self) {
        self.slots = 0;
        self.push(Step {
            cmd: Cmd::Connect(None),
            effects: Vec::new(),
        });
        // What a fresh session must see, before it does anything.
        self.probe();
        self.push(Step {
            cmd: Cmd::InitDb(self.schema.clone()),
            effects: Vec::new(),
        });
        self.probe_schema();
        let n = 3 + self.rng.below(12);
        for _ in 0..n {
            self.action();
        }
        if self.rng.chance(15) {
            self.push(Step {
                cmd: Cmd::ResetConnection,
                effects: Vec::new(),
            });
            self.probe();
        }
        self.push(Step {
            cmd: Cmd::Disconnect,
            effects: Vec::new(),
        });
    }

    /// Probes that need no schema: variables, locks, the session's settings.
    fn probe(&mut self) {
        self.push(Step::plain(
            "SELECT @v_a, @v_b, @v_c, @from_proc, @from_func, @d_n, DATABASE(), @@session.time_zone, \
             @@session.sql_mode, @@session.character_set_results, @@session.autocommit, \
             @@session.group_concat_max_len, @@session.max_sp_recursion_depth, @@session.completion_type",
        ));
        let isolation = match self.server {
            Server::MariaDb => "@@session.tx_isolation, @@session.tx_read_only",
            Server::MySql => "@@session.transaction_isolation, @@session.transaction_read_only",
        };
        self.push(Step::plain(format!(
            "SELECT IS_FREE_LOCK('{s}_{a}'), IS_FREE_LOCK('{s}_{b}'), IS_FREE_LOCK('{s}_lk_c{c}'), {isolation}",
            s = self.schema,
            a = SHARED_LOCKS[0],
            b = SHARED_LOCKS[1],
            c = self.c
        )));
    }

    /// Probes that need the schema: temporary tables shadowing real ones, table locks, the
    /// next transaction's access mode.
    fn probe_schema(&mut self) {
        // shadow_a / shadow_b are real tables with one row; a temporary table would hide it.
        self.push(Step::plain(
            "SELECT (SELECT COUNT(*) FROM shadow_a), (SELECT COUNT(*) FROM shadow_b)",
        ));
        let t = table(self.c);
        // Fails if a table lock or a read-only next transaction leaked in.
        self.push(Step::plain(format!(
            "INSERT INTO {t} (v, s) VALUES (0, 'probe')"
        )));
    }

    fn action(&mut self) {
        type Action<G> = fn(&mut G);
        let weights: &[(u32, Action<Self>)] = &[
            (10, Self::user_var),
            (8, Self::session_var),
            (8, Self::data),
            (6, Self::transaction),
            (6, Self::counters),
            (6, Self::diagnostics),
            (5, Self::temp_table),
            (6, Self::named_lock),
            (3, Self::table_lock),
            (3, Self::handler),
            (4, Self::text_prepare),
            (3, Self::xa),
            (4, Self::stored_code),
            (6, Self::binary),
            (3, Self::modes),
            (3, Self::decoys),
            (3, Self::commands),
            (4, Self::batch),
            (2, Self::probes),
        ];
        let total: u32 = weights.iter().map(|w| w.0).sum();
        let mut at = self.rng.below(total as usize) as u32;
        for (w, f) in weights {
            if at < *w {
                f(self);
                return;
            }
            at -= w;
        }
    }

    fn probes(&mut self) {
        self.probe();
        self.probe_schema();
    }

    /// Writes a keyword in a random case.
    fn kw(&mut self, k: &str) -> String {
        match self.rng.below(4) {
            0 => k.to_ascii_lowercase(),
            1 => k.to_ascii_uppercase(),
            2 => k
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect(),
            _ => k.to_string(),
        }
    }

    /// Whitespace or a comment that the server skips, between tokens.
    fn gap(&mut self) -> String {
        match self.rng.below(12) {
            0 => "\n".into(),
            1 => "\t".into(),
            2 => "  ".into(),
            3 => " /* note */ ".into(),
            4 => " /*!999999 GET_LOCK('lk_decoy', 0), @v_decoy := 1, */ ".into(),
            5 => " /*M!999999 , @v_decoy := 2 */ ".into(),
            6 => " -- comment GET_LOCK('lk_decoy', 0)\n".into(),
            7 => " # SET @v_decoy = 1\n".into(),
            _ => " ".into(),
        }
    }

    /// Wraps a whole statement in a form that still runs it.
    fn wrap(&mut self, stmt: &str) -> String {
        let run_version = match self.server {
            Server::MariaDb => "/*!50100",
            Server::MySql => "/*!80000",
        };
        match self.rng.below(14) {
            0 => format!("/* lead */ {stmt}"),
            1 => format!("{run_version} {stmt} */"),
            2 if self.server == Server::MariaDb => format!("/*M!100100 {stmt} */"),
            3 => format!("{stmt} -- trailing\n"),
            4 => format!("\n\t{stmt}\n"),
            5 => format!("/*! {stmt} */"),
            6 if self.long => {
                // Past the first 64 KiB: a long comment first.
                format!("/* {} */ {stmt}", "x".repeat(70_000))
            }
            _ => stmt.to_string(),
        }
    }

    fn var_name(&mut self) -> &'static str {
        const NAMES: [&str; 3] = ["v_a", "v_b", "v_c"];
        NAMES[self.rng.below(NAMES.len())]
    }

    fn user_var(&mut self) {
        let name = self.var_name();
        let null = self.rng.chance(30);
        let value = if null {
            "NULL".to_string()
        } else {
            self.rng
                .pick(&["1", "'text'", "3.5", "0x41", "-7"])
                .to_string()
        };
        let set = self.kw("SET");
        let sql = match self.rng.below(7) {
            0 => format!("{set} @{name} = {value}"),
            1 => format!("{set} @{name} := {value}"),
            2 if !null => format!("{} @{name} := {value}", self.kw("SELECT")),
            3 if !null => format!("{} {value} {} @{name}", self.kw("SELECT"), self.kw("INTO")),
            4 => format!("{set} @`{name}` = {value}"),
            5 => format!("/*!40101 {set} @{name} = {value} */"),
            _ => format!(
                "{set}{}@{name}{}={}{value}",
                self.gap(),
                self.gap(),
                self.gap()
            ),
        };
        let sql = self.wrap(&sql);
        self.push(Step::query(
            sql,
            vec![Effect::UserVar(name.to_string(), !null)],
        ));
    }

    fn session_var(&mut self) {
        // Replayable variables in every form, and two Sluice cannot replay.
        let (var, values): (&str, &[&str]) = *self.rng.pick(&[
            ("time_zone", &["'+01:00'", "'+05:30'", "'SYSTEM'"][..]),
            ("group_concat_max_len", &["2048", "4096"][..]),
            (
                "character_set_results",
                &["'latin1'", "'utf8mb4'", "NULL"][..],
            ),
            (
                "sql_mode",
                &[
                    "'STRICT_ALL_TABLES'",
                    "'ANSI_QUOTES'",
                    "''",
                    "'NO_BACKSLASH_ESCAPES'",
                ][..],
            ),
            ("autocommit", &["1", "0"][..]),
            ("completion_type", &["'NO_CHAIN'", "'CHAIN'"][..]),
            ("max_sp_recursion_depth", &["3", "5"][..]),
        ]);
        let value = *self.rng.pick(values);
        let unreplayable = var == "max_sp_recursion_depth";
        let sql = match self.rng.below(7) {
            0 => format!("{} {var} = {value}", self.kw("SET")),
            1 => format!("{} {} {var} = {value}", self.kw("SET"), self.kw("SESSION")),
            2 => format!("{} @@session.{var} = {value}", self.kw("SET")),
            3 => format!("{} @@{var} = {value}", self.kw("SET")),
            4 => format!("{} {} {var} = {value}", self.kw("SET"), self.kw("LOCAL")),
            5 => format!("/*!40101 SET @@{var} = {value} */"),
            _ => format!(
                "{} STATEMENT {var} = {value} FOR SELECT @@{var}",
                self.kw("SET")
            ),
        };
        let set_statement = sql.contains("STATEMENT");
        let mut effects = Vec::new();
        if unreplayable && !set_statement {
            effects.push(Effect::Unreplayable);
        }
        if var == "completion_type" && !set_statement {
            effects.push(Effect::CompletionType(if value.contains("NO_CHAIN") {
                0
            } else {
                1
            }));
        }
        if var == "autocommit" && value == "0" && !set_statement {
            // Leave autocommit off only briefly: the next step turns it back on.
            self.push(Step::query(sql, effects));
            self.data();
            self.push(Step::plain("COMMIT"));
            self.push(Step::plain("SET autocommit = 1"));
            return;
        }
        self.push(Step::query(sql, effects));
    }

    fn data(&mut self) {
        let t = table(self.c);
        let v = self.rng.below(100);
        let sql = match self.rng.below(6) {
            0 => format!(
                "{} {} {t} (v, s) {} ({v}, 'x{v}')",
                self.kw("INSERT"),
                self.kw("INTO"),
                self.kw("VALUES")
            ),
            1 => format!("INSERT INTO {t} (v, s) VALUES ({v}, 'a'), ({v}, 'b'), ({v}, 'c')"),
            2 => format!("UPDATE {t} SET v = v + 1 WHERE id % 3 = {}", v % 3),
            3 => format!("DELETE FROM {t} WHERE v = {v}"),
            4 => format!("SELECT id, v, s FROM {t} ORDER BY id DESC LIMIT 3"),
            _ => format!("SELECT COUNT(*), SUM(v) FROM {t}"),
        };
        let sql = self.wrap(&sql);
        self.push(Step::plain(sql));
    }

    fn transaction(&mut self) {
        let t = table(self.c);
        if self.rng.chance(25) {
            let chars = *self.rng.pick(&[
                "ISOLATION LEVEL READ COMMITTED",
                "READ ONLY",
                "ISOLATION LEVEL SERIALIZABLE, READ WRITE",
            ]);
            let sql = if self.rng.chance(50) || self.server == Server::MySql {
                format!("{} TRANSACTION {chars}", self.kw("SET"))
            } else {
                "SET @@tx_read_only = 1".to_string()
            };
            self.push(Step::query(sql, vec![Effect::NextTransaction]));
        }
        let begin = self
            .rng
            .pick(&[
                "BEGIN",
                "START TRANSACTION",
                "START TRANSACTION READ WRITE",
                "BEGIN WORK",
            ])
            .to_string();
        self.push(Step::plain(begin));
        for _ in 0..1 + self.rng.below(3) {
            match self.rng.below(4) {
                0 => self.push(Step::plain(format!(
                    "INSERT INTO {t} (v, s) VALUES (5, 'tx')"
                ))),
                1 => self.push(Step::plain(format!("SELECT COUNT(*) FROM {t}"))),
                2 => self.push(Step::plain("SAVEPOINT sp1")),
                _ => self.user_var(),
            }
        }
        if self.rng.chance(20) {
            self.push(Step::plain("ROLLBACK TO SAVEPOINT sp1"));
        }
        let end = self
            .rng
            .pick(&[
                "COMMIT",
                "ROLLBACK",
                "COMMIT WORK",
                "COMMIT AND NO CHAIN",
                "ROLLBACK AND CHAIN",
                "COMMIT RELEASE",
            ])
            .to_string();
        let release = end.contains("RELEASE");
        self.push(Step::query(
            end.clone(),
            vec![Effect::EndTransaction { release }],
        ));
        if end.contains("AND CHAIN") {
            self.push(Step::query(
                "COMMIT",
                vec![Effect::EndTransaction { release: false }],
            ));
        }
    }

    fn counters(&mut self) {
        let t = table(self.c);
        let sql = match self.rng.below(12) {
            0 => "SELECT LAST_INSERT_ID()".to_string(),
            1 => "SELECT ROW_COUNT()".to_string(),
            2 => "SELECT FOUND_ROWS()".to_string(),
            3 => format!("SELECT SQL_CALC_FOUND_ROWS id FROM {t} LIMIT 1"),
            4 => "SELECT LAST_INSERT_ID(7)".to_string(),
            5 => format!("INSERT INTO {t} (v, s) VALUES (ROW_COUNT(), 'rc')"),
            6 => "SELECT ROW_COUNT() AS rc, FOUND_ROWS() fr".to_string(),
            7 => format!("SELECT id FROM {t} WHERE id > ROW_COUNT() ORDER BY id LIMIT 2"),
            8 => "SELECT LAST_INSERT_ID() AS a, ROW_COUNT() /*M!999999 , @u := NULL */ AS b"
                .to_string(),
            9 => "SELECT @@identity, @@last_insert_id".to_string(),
            10 => format!("UPDATE {t} SET v = LAST_INSERT_ID(v + 1) WHERE id = 1"),
            _ => "SELECT FOUND_ROWS(), ROW_COUNT(), LAST_INSERT_ID()".to_string(),
        };
        self.push(Step::plain(sql));
    }

    fn diagnostics(&mut self) {
        let t = table(self.c);
        let cause = match self.rng.below(5) {
            0 => "SELECT 1/0".to_string(),
            1 => "SELECT CAST('x' AS SIGNED), 1/0".to_string(),
            2 => format!("SELECT nosuch FROM {t}"),
            3 => "DO 1".to_string(),
            _ => format!("SELECT COUNT(*) FROM {t}"),
        };
        self.push(Step::plain(cause));
        if self.rng.chance(30) {
            // A statement between: with or without tables (MariaDB keeps warnings across
            // statements that use none).
            let between = if self.rng.chance(50) {
                "DO 1".to_string()
            } else {
                format!("SELECT COUNT(*) FROM {t}")
            };
            self.push(Step::plain(between));
        }
        let ask = *self.rng.pick(&[
            "SHOW WARNINGS",
            "SHOW ERRORS",
            "SHOW COUNT(*) WARNINGS",
            "SHOW COUNT(*) ERRORS",
            "SELECT @@warning_count",
            "SELECT @@error_count, @@session.warning_count",
            "SHOW WARNINGS LIMIT 1",
            "show warnings limit 1, 1",
        ]);
        self.push(Step::plain(ask));
    }

    fn temp_table(&mut self) {
        let name = *self.rng.pick(&["shadow_a", "shadow_b", "tmp_c"]);
        if self.rng.chance(60) {
            let sql = match self.rng.below(4) {
                0 => format!(
                    "{} {} {} {name} (a INT)",
                    self.kw("CREATE"),
                    self.kw("TEMPORARY"),
                    self.kw("TABLE")
                ),
                1 => format!("CREATE TEMPORARY TABLE IF NOT EXISTS {name} (a INT)"),
                2 => format!("CREATE OR REPLACE TEMPORARY TABLE {name} AS SELECT 1 AS a"),
                _ => format!("CREATE TEMPORARY TABLE `{name}` (a INT)"),
            };
            let sql = self.wrap(&sql);
            self.push(Step::query(sql, vec![Effect::TempTable(name.into(), true)]));
        } else {
            let sql = match self.rng.below(2) {
                0 => format!("DROP TEMPORARY TABLE IF EXISTS {name}"),
                _ => format!("DROP TEMPORARY TABLE {name}"),
            };
            self.push(Step::query(
                sql,
                vec![Effect::TempTable(name.into(), false)],
            ));
        }
    }

    fn lock_name(&mut self) -> String {
        if self.rng.chance(40) {
            format!("{}_lk_c{}", self.schema, self.c)
        } else {
            format!("{}_{}", self.schema, self.rng.pick(&SHARED_LOCKS))
        }
    }

    fn named_lock(&mut self) {
        let name = self.lock_name();
        match self.rng.below(6) {
            0..=2 => {
                let sql = match self.rng.below(5) {
                    0 => format!("SELECT GET_LOCK('{name}', 0)"),
                    1 => format!("select get_lock ( '{name}' , 0 )"),
                    2 => format!("SELECT GET_LOCK(\"{name}\", 0)"),
                    3 => format!("SELECT /* x */ GET_LOCK(_utf8mb4'{name}', 0)"),
                    _ => format!("SELECT GET_LOCK('{name}', 0) + 0"),
                };
                let sql = self.wrap(&sql);
                self.push(Step::query(sql, vec![Effect::Lock(name, true)]));
            }
            3 | 4 => {
                let sql = format!("SELECT RELEASE_LOCK('{name}')");
                self.push(Step::query(sql, vec![Effect::Lock(name, false)]));
            }
            _ => self.push(Step::query(
                "SELECT RELEASE_ALL_LOCKS()",
                vec![Effect::ReleaseAllLocks],
            )),
        }
    }

    fn table_lock(&mut self) {
        let t = table(self.c);
        let mode = *self.rng.pick(&["READ", "WRITE"]);
        self.push(Step::query(
            format!("LOCK TABLES {t} {mode}"),
            vec![Effect::TableLock(true)],
        ));
        self.push(Step::plain(format!("SELECT COUNT(*) FROM {t}")));
        if self.rng.chance(70) {
            self.push(Step::query("UNLOCK TABLES", vec![Effect::TableLock(false)]));
        }
    }

    fn handler(&mut self) {
        let t = table(self.c);
        self.push(Step::query(
            format!("HANDLER {t} OPEN AS h1"),
            vec![Effect::Handler("h1".into(), true)],
        ));
        self.push(Step::plain("HANDLER h1 READ FIRST"));
        if self.rng.chance(70) {
            self.push(Step::query(
                "HANDLER h1 CLOSE",
                vec![Effect::Handler("h1".into(), false)],
            ));
        }
    }

    fn text_prepare(&mut self) {
        let t = table(self.c);
        let (body, state): (String, bool) = match self.rng.below(3) {
            0 => ("SELECT 1 + 1".into(), false),
            1 => (format!("SELECT COUNT(*) FROM {t}"), false),
            _ => ("SET @v_c = 42".into(), true),
        };
        self.push(Step::query(
            format!("PREPARE ps1 FROM '{body}'"),
            vec![Effect::SqlPrepare("ps1".into(), true)],
        ));
        // What a text EXECUTE runs, Sluice cannot see: its rows may hide a change.
        let exec_effects = if state {
            vec![Effect::UnknownState]
        } else {
            vec![Effect::StoredRows]
        };
        self.push(Step::query("EXECUTE ps1", exec_effects));
        if self.rng.chance(70) {
            let sql = *self
                .rng
                .pick(&["DEALLOCATE PREPARE ps1", "DROP PREPARE ps1"]);
            self.push(Step::query(
                sql,
                vec![Effect::SqlPrepare("ps1".into(), false)],
            ));
        }
    }

    fn xa(&mut self) {
        let id = format!("'{}_xa_c{}_{}'", self.schema, self.c, self.rng.below(1000));
        self.push(Step::query(
            format!("XA START {id}"),
            vec![Effect::Xa(true)],
        ));
        self.push(Step::plain(format!(
            "INSERT INTO {} (v, s) VALUES (1, 'xa')",
            table(self.c)
        )));
        self.push(Step::plain(format!("XA END {id}")));
        let end = if self.rng.chance(50) {
            format!("XA COMMIT {id} ONE PHASE")
        } else {
            self.push(Step::plain(format!("XA PREPARE {id}")));
            format!("XA ROLLBACK {id}")
        };
        self.push(Step::query(end, vec![Effect::Xa(false)]));
    }

    fn stored_code(&mut self) {
        match self.rng.below(5) {
            0 => self.push(Step::query("CALL p_setvar()", vec![Effect::UnknownState])),
            1 => self.push(Step::query("CALL p_select()", vec![Effect::StoredRows])),
            // Its tracked variable comes with a bare state change a procedure may also cause
            // by invisible means: it holds until a reset.
            2 => self.push(Step::query("CALL p_timezone()", vec![Effect::UnknownState])),
            3 => self.push(Step::query(
                "SELECT f_setvar()",
                vec![Effect::UnknownState, Effect::StoredRows],
            )),
            _ => self.push(Step::query(
                "SELECT f_plain(), f_plain() + 1",
                vec![Effect::StoredRows],
            )),
        }
    }

    fn binary(&mut self) {
        if self.slots >= 3 {
            let slot = self.rng.below(self.slots);
            self.push(Step {
                cmd: Cmd::CloseStmt { slot },
                effects: vec![Effect::Cursor(slot, false)],
            });
            return;
        }
        let slot = self.slots;
        self.slots += 1;
        let t = table(self.c);
        let (sql, params): (String, usize) = match self.rng.below(4) {
            0 => ("SELECT ? + 1, ?".into(), 2),
            1 => (format!("INSERT INTO {t} (v, s) VALUES (?, 'bin')"), 1),
            2 => (format!("SELECT id, v FROM {t} WHERE id > ? ORDER BY id"), 1),
            _ => ("SELECT @v_a, LAST_INSERT_ID()".into(), 0),
        };
        let cursor_ok = sql.starts_with("SELECT id");
        self.push(Step {
            cmd: Cmd::Prepare { slot, sql },
            effects: Vec::new(),
        });
        let mut had_cursor = false;
        for _ in 0..1 + self.rng.below(2) {
            let picked = cursor_ok && !self.kind.deprecate_eof && self.rng.chance(40);
            // MySQL 9 answers an execute without a cursor, after the statement's cursor
            // closed, with column definitions ended by an OK packet and no rows: a server bug
            // that leaves a classic-EOF client waiting, directly as through Sluice (which
            // answers from another connection's copy of the statement). Not generated there.
            let cursor = picked || (had_cursor && self.server == Server::MySql);
            had_cursor |= cursor;
            let values: Vec<Option<i64>> = (0..params)
                .map(|_| {
                    if self.rng.chance(10) {
                        None
                    } else {
                        Some(self.rng.below(50) as i64)
                    }
                })
                .collect();
            self.push(Step {
                cmd: Cmd::Execute {
                    slot,
                    params: values,
                    cursor,
                },
                effects: if cursor {
                    vec![Effect::Cursor(slot, true)]
                } else {
                    Vec::new()
                },
            });
            if cursor {
                self.push(Step {
                    cmd: Cmd::Fetch { slot, rows: 1 },
                    effects: vec![Effect::CursorFetch(slot)],
                });
                let (end, effect) = if self.rng.chance(50) {
                    (Cmd::ResetStmt { slot }, Effect::Cursor(slot, false))
                } else {
                    (
                        Cmd::Fetch {
                            slot,
                            rows: 100_000,
                        },
                        Effect::CursorFetch(slot),
                    )
                };
                self.push(Step {
                    cmd: end,
                    effects: vec![effect],
                });
            }
        }
    }

    /// Statements whose reading depends on `sql_mode`: the same bytes are a string or code.
    fn modes(&mut self) {
        let mode = *self
            .rng
            .pick(&["NO_BACKSLASH_ESCAPES", "ANSI_QUOTES", "ANSI", ""]);
        self.push(Step::plain(format!("SET SESSION sql_mode = '{mode}'")));
        let name = self.lock_name();
        let (sql, runs) = match self.rng.below(3) {
            // With backslash escapes the string runs to the end; without, GET_LOCK runs.
            0 => (
                format!(r"SELECT 'a\', GET_LOCK('{name}', 0) -- '"),
                mode.contains("NO_BACKSLASH"),
            ),
            // Under ANSI_QUOTES "..." is an identifier (an error here); else a string.
            1 => (
                format!(r#"SELECT "b\" , GET_LOCK('{name}', 0) -- ""#),
                mode.contains("NO_BACKSLASH") && !mode.contains("ANSI"),
            ),
            _ => (r#"SELECT "plain", 'it''s'"#.to_string(), false),
        };
        // Whether GET_LOCK ran shows in the answer's columns; the model reads it there.
        let _ = runs;
        let effects = vec![Effect::Lock(name, true)];
        self.push(Step::query(sql, effects));
        self.push(Step::plain("SET SESSION sql_mode = DEFAULT"));
    }

    /// Text that looks like state but is not: it must not hold the session.
    fn decoys(&mut self) {
        let sql = *self.rng.pick(&[
            "SELECT 'GET_LOCK(''x'', 0)', '@v := 1', \"LOCK TABLES\"",
            "SELECT 1 /*!999999 , GET_LOCK('lk_decoy', 0) */",
            "SELECT 2 /*M!999999 , @v_decoy := 5 */",
            "SELECT 3 -- , GET_LOCK('lk_decoy', 0)\n",
            "SELECT `GET_LOCK` FROM (SELECT 1 AS `GET_LOCK`) AS d",
            "SELECT 4 # SET @v_decoy = 1\n",
            "SET STATEMENT max_sp_recursion_depth = 4 FOR SELECT @@max_sp_recursion_depth",
        ]);
        let sql = if self.server == Server::MySql && sql.contains("/*!999999") {
            // MySQL reads /*!99999 9 ...: keep the decoy a plain comment there.
            "SELECT 1 /* , GET_LOCK('lk_decoy', 0) */"
        } else {
            sql
        };
        self.push(Step::plain(sql));
    }

    fn commands(&mut self) {
        match self.rng.below(3) {
            0 => self.push(Step {
                cmd: Cmd::Ping,
                effects: Vec::new(),
            }),
            1 => self.push(Step {
                cmd: Cmd::InitDb(self.schema.clone()),
                effects: Vec::new(),
            }),
            _ => {
                self.push(Step {
                    cmd: Cmd::ResetConnection,
                    effects: Vec::new(),
                });
                self.slots = 0;
            }
        }
    }

    /// Several statements in one query (multi-statement clients only).
    fn batch(&mut self) {
        if !self.kind.multi_statements {
            return self.data();
        }
        let t = table(self.c);
        let (sql, effects) = match self.rng.below(5) {
            0 => (
                "PREPARE pb FROM 'CREATE TEMPORARY TABLE shadow_a (a INT)'; EXECUTE pb; DEALLOCATE PREPARE pb".to_string(),
                vec![Effect::UnknownState],
            ),
            1 => (format!("SET @v_a = 1; SELECT @v_a; UPDATE {t} SET v = v WHERE id < 0; SELECT ROW_COUNT(), FOUND_ROWS()"), vec![Effect::UserVar("v_a".into(), true)]),
            2 => (format!("SELECT SQL_CALC_FOUND_ROWS id FROM {t} LIMIT 1; SELECT FOUND_ROWS()"), Vec::new()),
            3 => (format!("INSERT INTO {t} (v, s) VALUES (9, 'm'); SELECT LAST_INSERT_ID(); SELECT nosuch FROM {t}; SELECT 1"), Vec::new()),
            _ => ("SELECT 1/0; SHOW WARNINGS; SHOW COUNT(*) WARNINGS".to_string(), Vec::new()),
        };
        self.push(Step::query(sql, effects));
    }
}

/// The schema every schedule starts from: one table per client, two tables temporary tables
/// may hide, and the stored programs the scripts call.
pub fn schema_sql(schema: &str, clients: usize) -> Vec<String> {
    let mut out = vec![
        format!("DROP DATABASE IF EXISTS `{schema}`"),
        format!("CREATE DATABASE `{schema}`"),
        format!("CREATE TABLE `{schema}`.shadow_a (a INT)"),
        format!("CREATE TABLE `{schema}`.shadow_b (a INT)"),
        format!("INSERT INTO `{schema}`.shadow_a VALUES (1)"),
        format!("INSERT INTO `{schema}`.shadow_b VALUES (1)"),
        format!("CREATE PROCEDURE `{schema}`.p_setvar() SET @from_proc = 1"),
        format!("CREATE PROCEDURE `{schema}`.p_select() SELECT 1 AS one"),
        format!("CREATE PROCEDURE `{schema}`.p_timezone() SET @@session.time_zone = '+02:00'"),
        format!(
            "CREATE FUNCTION `{schema}`.f_setvar() RETURNS INT BEGIN SET @from_func = 1; RETURN 1; END"
        ),
        format!("CREATE FUNCTION `{schema}`.f_plain() RETURNS INT DETERMINISTIC RETURN 1"),
    ];
    for c in 0..clients {
        out.push(format!(
            "CREATE TABLE `{schema}`.t{c} (id INT AUTO_INCREMENT PRIMARY KEY, v INT, s VARCHAR(20))"
        ));
        out.push(format!(
            "INSERT INTO `{schema}`.t{c} (v, s) VALUES (1, 'one'), (2, 'two')"
        ));
    }
    out
}
