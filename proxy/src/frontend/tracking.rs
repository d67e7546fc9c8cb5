//! Brings the session up to date with what a response reported (status, session-tracking
//! data, the statement's own effects) and counts the pin reasons that start or stop.

use super::ClientSession;
use crate::protocol::StatusFlags;
use crate::protocol::response::{Summary, TrackedChange};
use crate::session::{PinEffect, PinReason, PinSet, is_ignored, tracked_index};
use crate::sql::Classification;

impl ClientSession {
    /// Brings the session up to date with what a response reported, then gives the backend
    /// back if nothing holds it.
    pub(in crate::frontend) async fn after_command(
        &mut self,
        summary: &Summary,
        class: &Classification,
    ) {
        let Some(b) = self.backend.as_mut() else {
            return;
        };
        if let Some(status) = summary.status {
            b.status = status;
            b.autocommit = status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
        }
        let autocommit = b.autocommit;
        let before = self.state.pins.reasons();
        // What the statement created counts even if it failed part-way; what it cleared only
        // if it succeeded.
        let succeeded = summary.error.is_none();
        for effect in &class.effects {
            match effect {
                PinEffect::Add(reason, name) => {
                    let name = qualify(*reason, name.as_deref(), self.state.schema.as_deref());
                    self.state.pins.add(*reason, name.as_deref());
                }
                PinEffect::Remove(reason, name) if succeeded => {
                    let name = qualify(*reason, name.as_deref(), self.state.schema.as_deref());
                    self.state.pins.remove(*reason, name.as_deref());
                }
                PinEffect::Remove(..) => {}
            }
        }
        let mut explained = !class.effects.is_empty() || class.next_transaction;
        let mut charset_changed = false;
        let mut schema_change = None;
        let mut state_changed = summary.untold_state_change;
        let mut unreplayable = None;
        let mut vars_changed = false;
        for change in &summary.changes {
            match change {
                TrackedChange::Schema(s) => {
                    explained = true;
                    schema_change = Some((!s.is_empty()).then(|| s.clone()));
                }
                TrackedChange::SystemVariable { name, value } => {
                    if name.eq_ignore_ascii_case("autocommit") || is_ignored(name) {
                        explained = true;
                    } else if let Some(i) = tracked_index(name) {
                        explained = true;
                        if let Some(v) = b.vars.0.get_mut(i) {
                            *v = Some(value.clone());
                        }
                        charset_changed |= i < crate::session::CHARSET_VARS;
                        vars_changed = true;
                    } else {
                        explained = true;
                        unreplayable = Some(name.clone());
                    }
                }
                TrackedChange::StateChanged => state_changed = true,
            }
        }
        if let Some(name) = unreplayable {
            if !self
                .state
                .pins
                .reasons()
                .contains(PinReason::SessionVariable)
            {
                tracing::info!(client = %self.handle.id, variable = %crate::logsafe::Escaped(&name), "session variable outside the replayable set");
            }
            self.state.pins.add(PinReason::SessionVariable, None);
        }
        // A procedure's user variables and temporary tables show only as "state changed",
        // whatever variables it also reports.
        if state_changed && (!explained || class.is_call) {
            self.state.pins.add(PinReason::UnknownStateChange, None);
        }
        if charset_changed {
            // Tracking does not report collation_connection after SET NAMES ... COLLATE.
            if let Err(e) = b.read_tracked_state().await {
                tracing::warn!(client = %self.handle.id, error = %e, "cannot read session state");
                b.broken = true;
                self.state.pins.add(PinReason::UnknownStateChange, None);
            }
            self.state.own_statement_ran();
        }
        if vars_changed {
            self.state.vars = Some(b.vars.clone());
        }
        self.state.autocommit = Some(autocommit);
        self.hold_for_warnings = summary.warnings > 0;
        self.hold_for_next_transaction = class.next_transaction && succeeded;
        if let Some(schema) = schema_change {
            self.set_schema(schema);
        }
        self.note_pin_changes(before);
        self.release_if_free().await;
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

    /// Counts and logs the reasons that started or stopped holding the session.
    pub(in crate::frontend) fn note_pin_changes(&mut self, before: PinSet) {
        let after = self.state.pins.reasons();
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

    pub(in crate::frontend) fn unpin_all(&mut self) {
        let before = self.state.pins.reasons();
        self.state.pins = Default::default();
        self.note_pin_changes(before);
    }
}

/// Whether a query may pin its session, so its digest is worth computing for the pin's log
/// line: it has pin effects, is a CALL, or is a SET (unreplayable variables pin only once the
/// server reports them).
pub(super) fn may_pin(class: &Classification, payload: &[u8]) -> bool {
    if !class.effects.is_empty() || class.is_call || class.next_transaction {
        return true;
    }
    let sql = payload.get(1..).unwrap_or_default();
    let start = sql
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(sql.len());
    matches!(
        sql.get(start..start + 4),
        Some([s, e, t, next]) if [*s, *e, *t].eq_ignore_ascii_case(b"SET") && !next.is_ascii_alphanumeric()
    )
}

/// Temporary tables are per schema: an unqualified name means the current schema's table.
pub(super) fn qualify(
    reason: PinReason,
    name: Option<&str>,
    schema: Option<&str>,
) -> Option<String> {
    match (reason, name, schema) {
        (PinReason::TemporaryTable, Some(n), Some(s)) if !n.contains('.') => {
            Some(format!("{s}.{n}"))
        }
        (_, name, _) => name.map(str::to_string),
    }
}
