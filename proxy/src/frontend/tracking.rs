//! Applies what a response reported ([`Reduction`], from `session::tracker`) to the session and
//! its connection, keeps the pin and reset accounting, and decides, in one place, whether the
//! connection goes back now.

use super::ClientSession;
use crate::protocol::StatusFlags;
use crate::protocol::response::Summary;
use crate::session::tracker::{CompletionType, Reduction};
use crate::session::{PinReason, PinSet, ResetReason, may_release, tracked_index};
use crate::sql::{Classification, Effect};

impl ClientSession {
    /// The pin reasons that hold the session now (its own state and its statements' cursors
    /// and long data).
    pub(in crate::frontend) fn pins(&self) -> PinSet {
        let mut pins = self.state.pins.reasons();
        pins.extend(self.stmts.hold_reasons());
        pins
    }

    /// The session's `completion_type`, as its connection reports it.
    pub(in crate::frontend) fn completion_type(&self) -> CompletionType {
        let i = tracked_index("completion_type");
        let value = self.backend.as_ref().and_then(|b| {
            i.and_then(|i| b.vars.0.get(i))
                .and_then(|v| v.as_deref())
                .map(CompletionType::from_value)
        });
        value.unwrap_or_default()
    }

    /// Brings the session up to date with a response: the connection's status, the reported
    /// variables and schema, held state, counters and diagnostics. Returns whether the server
    /// is about to close the connection (`COMMIT RELEASE`). Does not give the connection back.
    pub(in crate::frontend) async fn apply(&mut self, summary: &Summary, r: Reduction) -> bool {
        let before = self.pins();
        let Some(b) = self.backend.as_mut() else {
            return false;
        };
        let was_in_transaction = b.in_transaction();
        if let Some(status) = summary.status {
            b.status = status;
            b.autocommit = status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
        }
        let autocommit = b.autocommit;
        let schema = self.state.schema.clone();
        for effect in &r.effects {
            match effect {
                Effect::Add(reason, name) => {
                    let name = qualify(*reason, name.as_deref(), schema.as_deref());
                    self.state.pins.add(*reason, name.as_deref());
                }
                Effect::Remove(reason, name) => {
                    let name = qualify(*reason, name.as_deref(), schema.as_deref());
                    self.state.pins.remove(*reason, name.as_deref());
                }
            }
        }
        // A transaction that ended takes its pending characteristics with it.
        if r.transaction_ended || (was_in_transaction && !b.in_transaction()) {
            self.state.pins.transaction_ended();
        }
        let mut charset_changed = false;
        let mut vars_changed = false;
        for (name, value) in &r.vars {
            if let Some(i) = tracked_index(name) {
                if let Some(v) = b.vars.0.get_mut(i) {
                    *v = Some(value.clone());
                }
                charset_changed |= i < crate::session::CHARSET_VARS;
                vars_changed = true;
            }
        }
        for reason in r.taint.iter() {
            b.taint(reason);
        }
        // A reported value that a SET STATEMENT restored is MariaDB's late echo, not a change.
        let mut unreplayable = r.unreplayable.clone();
        for (name, value) in &r.reported_unreplayable {
            match b.restored.iter().position(|(n, v)| n == name && v == value) {
                Some(i) => {
                    b.restored.remove(i);
                }
                None => unreplayable = Some(name.clone()),
            }
        }
        if let Some(name) = &unreplayable {
            if !self
                .state
                .pins
                .reasons()
                .contains(PinReason::SessionVariable)
            {
                tracing::info!(client = %self.handle.id, variable = %crate::logsafe::Escaped(name), "session variable outside the replayable set");
            }
            self.state.pins.add(PinReason::SessionVariable, None);
        }
        if r.unknown_state_change {
            self.state.pins.add(PinReason::UnknownStateChange, None);
        }
        let clears_always = self.shared.dialect.is_mysql();
        let settle_marker = std::mem::take(&mut self.diagnostics_marker)
            && r.diagnostics.is_none()
            && r.diagnostics_unknown;
        match r.diagnostics {
            Some((warnings, error)) if warnings > 0 || error => {
                self.state.diagnostics.statement_ran(warnings, error);
                b.conditions = true;
            }
            Some(_) => {
                // Cleared. On MariaDB the connection's own area is certainly the session's
                // (empty) only if it held nothing before.
                let clean = clears_always || !b.conditions;
                self.state.diagnostics = crate::session::DiagnosticsArea {
                    on_backend: clean,
                    ..Default::default()
                };
                if clears_always {
                    b.conditions = false;
                }
            }
            // The server's own area says whether the session's conditions survived.
            None if r.diagnostics_unknown
                && !settle_marker
                && self.state.diagnostics.on_backend
                && !self.state.diagnostics.is_empty() =>
            {
                self.diagnostics_check = true;
            }
            None => {}
        }
        if let Some(id) = r.insert_id {
            self.state.last_insert_id = id;
            self.state.insert_id_on_backend = true;
            self.insert_id_known = true;
        }
        if r.insert_id_unknown {
            // The connection has it; read it before the connection goes back.
            self.state.insert_id_on_backend = true;
            self.insert_id_known = false;
        }
        if let Some(rc) = r.row_count {
            self.state.row_count = rc;
            self.state.counters_on_backend = true;
        }
        match r.found_rows {
            Some(Some(n)) => {
                self.state.found_rows = n;
                self.state.found_rows_on_backend = true;
                self.found_rows_known = true;
            }
            Some(None) => {
                self.state.found_rows_on_backend = true;
                self.found_rows_known = false;
            }
            None => {}
        }
        if r.results_collation_set {
            self.state.results_collation_set = true;
            b.results_collation_set = true;
        }
        if let Some(schema) = r.schema {
            self.set_schema(schema);
        }
        // The last statement read the diagnostics area: it raised nothing of its own.
        if r.diagnostics_read {
            self.state.diagnostics.raised = 0;
        }
        if settle_marker {
            self.settle_marker().await;
        }
        if std::mem::take(&mut self.diagnostics_check) {
            self.capture_diagnostics().await;
            if self
                .state
                .diagnostics
                .captured
                .as_ref()
                .is_some_and(|c| c.rows.is_empty())
            {
                self.state.diagnostics = crate::session::DiagnosticsArea::default();
            }
        }
        // GET_LOCK may have found the lock taken: ask the server which of the named locks the
        // statement asked for this connection holds (the server may release a hold).
        let asked: Vec<Vec<u8>> = r
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Add(PinReason::NamedLock, Some(n)) => Some(n.clone()),
                _ => None,
            })
            .collect();
        if !asked.is_empty() {
            self.verify_locks(&asked).await;
        }
        // Count what holds the session before any read-back: the client already has its answer.
        self.note_pin_changes(before);
        let before = self.pins();
        if r.readback_vars || charset_changed {
            self.before_own_statement().await;
            let read = match self.backend.as_mut() {
                Some(b) if r.readback_vars => b.read_all_tracked_vars().await,
                // Tracking does not report collation_connection after SET NAMES ... COLLATE.
                Some(b) => b.read_tracked_state().await,
                None => Ok(()),
            };
            self.state.own_statement_ran();
            match read {
                Ok(()) => vars_changed = true,
                Err(e) => {
                    tracing::warn!(client = %self.handle.id, error = %e, "cannot read session state");
                    if let Some(b) = self.backend.as_mut() {
                        b.broken = true;
                        b.taint(ResetReason::StateUnknown);
                    }
                    self.state.pins.add(PinReason::UnknownStateChange, None);
                }
            }
        }
        if !r.set_for_statement.is_empty() {
            // Boxed: rare, and kept out of every session task's size.
            Box::pin(self.note_restored(&r.set_for_statement)).await;
        }
        if vars_changed && let Some(b) = self.backend.as_ref() {
            self.state.vars = Some(b.vars.clone());
        }
        self.state.autocommit = Some(autocommit);
        self.note_pin_changes(before);
        r.release
    }

    /// Reads the values a `SET STATEMENT` restored to `names` (variables outside the replayable
    /// set), so that MariaDB's later echo of them is known for what it is. A name that cannot
    /// be read holds the session, as any unreplayable change would.
    async fn note_restored(&mut self, names: &[String]) {
        let readable = names
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
        if readable {
            self.before_own_statement().await;
        }
        let Some(b) = self.backend.as_mut() else {
            return;
        };
        let rows = if readable {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            b.session_variables(&names, "reading variables SET STATEMENT restored")
                .await
                .ok()
        } else {
            None
        };
        if readable {
            self.state.own_statement_ran();
        }
        let Some(b) = self.backend.as_mut() else {
            return;
        };
        let mut found = 0;
        for (name, value) in rows.unwrap_or_default() {
            if names.contains(&name) {
                b.restored.retain(|(n, _)| *n != name);
                b.restored.push((name, value));
                found += 1;
            }
        }
        if found < names.len() {
            self.state.pins.add(PinReason::SessionVariable, None);
        }
    }

    /// Forgets the named locks of `names` this connection does not hold.
    async fn verify_locks(&mut self, names: &[Vec<u8>]) {
        self.before_own_statement().await;
        let Some(b) = self.backend.as_mut() else {
            return;
        };
        let mut sql = String::from("SELECT ");
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            let hex: String = n.iter().map(|b| format!("{b:02x}")).collect();
            // A hex literal carries the name's bytes whatever they are.
            sql.push_str(&format!("IS_USED_LOCK(X'{hex}') <=> CONNECTION_ID()"));
        }
        let row = b.query_row(&sql, "checking named locks").await;
        self.state.own_statement_ran();
        match row {
            Ok(Some(values)) => {
                for (n, held) in names.iter().zip(values) {
                    if held.as_deref() != Some("1") {
                        self.state.pins.forget_lock(n);
                    }
                }
            }
            // Keep holding: only the server may say a lock is gone.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(client = %self.handle.id, error = %e, "cannot check named locks");
                if let Some(b) = self.backend.as_mut() {
                    b.broken = true;
                }
            }
        }
    }

    pub(in crate::frontend) fn set_schema(&mut self, schema: Option<String>) {
        if let Some(s) = &schema {
            self.shared.remember_schema(&self.key.user, s);
        }
        if let Some(b) = self.backend.as_mut() {
            b.schema = schema.clone();
        }
        self.state.schema = schema;
    }

    /// Counts and logs the reasons that started or stopped holding the session, and marks
    /// the connection for a reset for each reason that held it.
    pub(in crate::frontend) fn note_pin_changes(&mut self, before: PinSet) {
        let after = self.pins();
        if let Some(b) = self.backend.as_mut() {
            for reason in after.iter() {
                b.taint(ResetReason::Pinned(reason));
            }
        }
        if after != before {
            self.handle.set_pins(after);
        }
        for reason in after.iter().filter(|r| !before.contains(*r)) {
            self.shared.stats.pinned(reason);
            // Once per reason and session at info, with the statement's digest (no values).
            if self.logged_pins.insert(reason) {
                let digest = self.pending_digest.as_ref();
                tracing::info!(client = %self.id(), user = %self.key.user, reason = reason.as_str(),
                    digest = %digest.map(ToString::to_string).unwrap_or_default(),
                    statement = %crate::logsafe::Escaped(digest.map_or("", |d| d.text.as_str())),
                    "session pinned to its backend connection");
            } else {
                tracing::debug!(client = %self.id(), user = %self.key.user, reason = reason.as_str(), "session pinned to its backend connection again");
            }
        }
        self.pending_digest = None;
        for reason in before.iter().filter(|r| !after.contains(*r)) {
            self.shared.stats.unpinned(reason);
            tracing::debug!(client = %self.id(), user = %self.key.user, reason = reason.as_str(), "session state cleared; multiplexing again");
        }
    }

    /// Forgets every hold (the connection they were on is gone or reset).
    pub(in crate::frontend) fn unpin_all(&mut self) {
        let before = self.pins();
        self.state.pins = Default::default();
        self.stmts.drop_holds();
        self.note_pin_changes(before);
    }

    /// Gives the connection back if nothing holds it (see `session::holds::may_release`).
    pub(in crate::frontend) async fn release_if_free(&mut self) {
        let Some(b) = self.backend.as_ref() else {
            return;
        };
        if b.broken || may_release(self.pins(), b.in_transaction()) {
            self.release().await;
        }
    }
}

/// Temporary tables are per schema: an unqualified name means the current schema's table.
pub(super) fn qualify(
    reason: PinReason,
    name: Option<&[u8]>,
    schema: Option<&str>,
) -> Option<Vec<u8>> {
    match (reason, name, schema) {
        (PinReason::TemporaryTable, Some(n), Some(s)) if !n.contains(&b'.') => {
            let mut q = s.as_bytes().to_vec();
            q.push(b'.');
            q.extend_from_slice(n);
            Some(q)
        }
        (_, name, _) => name.map(<[u8]>::to_vec),
    }
}

/// Whether a query may pin its session, so its digest is worth computing for the pin's log
/// line: it has effects, runs stored code, or sets variables.
pub(super) fn may_pin(class: &Classification, _sql: &[u8]) -> bool {
    class.any(|s| !s.effects.is_empty() || s.stored_code || s.verb == "SET")
}
