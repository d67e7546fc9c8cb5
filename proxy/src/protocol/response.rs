//! Follows a server's response packet by packet to know where it ends, what status it left the
//! connection in, and which packets need rewriting for the client.

use super::codec::ProtocolError;
use super::lenenc::Reader;
use super::ok::{self, StateChange};
use super::{MAX_FRAME, StatusFlags};

/// The shape of response a command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// COM_QUERY and COM_STMT_EXECUTE: OK, ERR, LOCAL INFILE request or result sets, possibly
    /// several in a row (`SERVER_MORE_RESULTS_EXISTS`).
    ResultSets,
    /// COM_STMT_PREPARE: prepare-OK, parameter and column definitions.
    Prepare,
    /// COM_FIELD_LIST: column definitions up to a terminator.
    FieldList,
    /// COM_STMT_FETCH: rows up to a terminator.
    Fetch,
    /// A single OK, EOF or ERR (COM_PING, COM_INIT_DB, COM_SET_OPTION, COM_STMT_RESET, ...).
    Single,
    /// A single packet that is neither OK nor EOF (COM_STATISTICS's text), or an ERR.
    SingleRaw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    First,
    PrepareOk,
    Columns { left: u64 },
    ColumnsEof,
    Rows,
    Params { left: u16, columns: u16 },
    ParamsEof { columns: u16 },
    PrepColumns { left: u16 },
    PrepColumnsEof,
    UntilTerminator,
    Single,
    SingleRaw,
    Done,
}

/// A statement prepared on the server (from a prepare-OK packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    pub statement_id: u32,
    pub columns: u16,
    pub params: u16,
}

/// Session-state changes the server reported, owned so they outlive the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackedChange {
    SystemVariable { name: String, value: String },
    Schema(String),
    StateChanged,
}

/// One result of a response: what one statement of a multi-statement query (or the one
/// statement of a command) ended with.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResultSummary {
    /// Status flags of its OK or EOF packet (none after an ERR).
    pub status: Option<StatusFlags>,
    /// Error code, when it ended with an ERR.
    pub error: Option<u16>,
    /// Affected rows and last insert id of its OK packet.
    pub affected: u64,
    pub insert_id: u64,
    /// Its warning count.
    pub warnings: u16,
    /// Rows, when it was a result set.
    pub rows: Option<u64>,
    /// The result set opened a cursor: its rows come later (COM_STMT_FETCH), and only the
    /// server knows how many it found.
    pub cursor: bool,
    /// Its session-state changes: a range of [`Summary::changes`].
    pub changes: std::ops::Range<usize>,
    /// An EOF packet said the session state changed but could not say how.
    pub untold: bool,
}

/// Most results kept per response; a longer response only sets [`Summary::results_overflow`].
pub const MAX_RESULTS: usize = 4096;

/// What a response told Sluice about the connection.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Each result in order (one per statement that ran, more for a `CALL`).
    pub results: Vec<ResultSummary>,
    /// More than [`MAX_RESULTS`] results came: the list is cut.
    pub results_overflow: bool,
    /// Status flags of the last OK or EOF packet.
    pub status: Option<StatusFlags>,
    /// Error code of the ERR packet that ended the response, if one did.
    pub error: Option<u16>,
    /// Affected rows and last insert id of the last OK packet.
    pub last_ok: Option<(u64, u64)>,
    /// The last non-zero last-insert-id of the response's OK packets.
    pub insert_id: Option<u64>,
    /// Rows of the last result set, when the response ended with one (not with an OK).
    pub result_rows: Option<u64>,
    /// Warning count of the last OK or EOF packet.
    pub warnings: u16,
    /// Changes reported in session-state data, in order.
    pub changes: Vec<TrackedChange>,
    /// Set by a prepare-OK.
    pub prepared: Option<Prepared>,
    /// Set when an EOF reported `SERVER_SESSION_STATE_CHANGED` but could not say what changed
    /// (classic EOF packets carry no session-state data).
    pub untold_state_change: bool,
    /// Bytes written to the client while relaying the response (headers included).
    pub relayed_bytes: u64,
}

/// What to do with the packet just inspected.
#[derive(Debug, Default)]
pub struct Verdict {
    /// The response is complete after this packet.
    pub done: bool,
    /// The server asked for a local file: the client's data must be relayed before more
    /// response packets follow.
    pub local_infile: bool,
    /// Send these payload bytes (same sequence id) instead of the packet's own.
    pub replace: Option<Vec<u8>>,
}

/// Packets at most this long are inspected whole; longer ones (rows, big values) only by their
/// first byte, so large results stream through without being buffered.
pub const INSPECT_WHOLE: usize = 64 * 1024;

/// Follows one response. Created per command.
#[derive(Debug)]
pub struct ResponseTracker {
    state: State,
    deprecate_eof: bool,
    session_track: bool,
    untrack: bool,
    /// Where the current result's changes start in the summary's list.
    changes_start: usize,
    /// The current result's OK packet: affected rows and last insert id.
    result_ok: Option<(u64, u64)>,
    /// The current result's EOF said the state changed without saying how.
    result_untold: bool,
    /// The warning count the client's OK packet carries instead of the connection's.
    ok_warnings: Option<u16>,
}

impl ResponseTracker {
    /// `deprecate_eof` and `session_track` describe the backend connection; `untrack` says the
    /// client lacks `CLIENT_SESSION_TRACK`, so OK packets carrying tracking data are rewritten.
    pub fn new(expect: Expect, deprecate_eof: bool, session_track: bool, untrack: bool) -> Self {
        let state = match expect {
            Expect::ResultSets => State::First,
            Expect::Prepare => State::PrepareOk,
            Expect::FieldList | Expect::Fetch => State::UntilTerminator,
            Expect::Single => State::Single,
            Expect::SingleRaw => State::SingleRaw,
        };
        ResponseTracker {
            state,
            deprecate_eof,
            session_track,
            untrack,
            changes_start: 0,
            result_ok: None,
            result_untold: false,
            ok_warnings: None,
        }
    }

    /// OK packets say `warnings` instead of the connection's count: MySQL's COM_PING and
    /// COM_INIT_DB report the session's diagnostics area, which another connection may hold.
    pub fn with_ok_warnings(mut self, warnings: Option<u16>) -> Self {
        self.ok_warnings = warnings;
        self
    }

    /// True once the last packet of the response was seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Inspects the packet that starts with `payload`. `len` is the packet's first-frame length;
    /// `payload` holds all of it when `len <= INSPECT_WHOLE`, else at least its first byte.
    pub fn on_packet(
        &mut self,
        payload: &[u8],
        len: usize,
        summary: &mut Summary,
    ) -> Result<Verdict, ProtocolError> {
        let complete = payload.len() >= len;
        let first = *payload
            .first()
            .ok_or(ProtocolError::Malformed("empty response packet"))?;
        let mut verdict = Verdict::default();

        // An ERR ends any response, whatever was expected.
        if first == 0xFF && self.state != State::SingleRaw {
            let e = super::packets::Err::parse(whole(payload, complete)?)
                .ok_or(ProtocolError::Malformed("ERR packet"))?;
            summary.error = Some(e.code);
            self.push_result(
                summary,
                ResultSummary {
                    error: Some(e.code),
                    ..ResultSummary::default()
                },
            );
            self.state = State::Done;
            verdict.done = true;
            return Ok(verdict);
        }

        self.state = match self.state {
            State::First => match first {
                0x00 => {
                    let more = self.on_ok(whole(payload, complete)?, summary, &mut verdict)?;
                    self.end_result(summary, None);
                    if more { State::First } else { State::Done }
                }
                0xFB => {
                    verdict.local_infile = true;
                    // The server answers the file with OK or ERR, which may announce more results.
                    State::First
                }
                _ => {
                    let n = Reader::new(whole(payload, complete)?)
                        .lenenc_int()
                        .filter(|&n| n > 0)
                        .ok_or(ProtocolError::Malformed("column count"))?;
                    summary.result_rows = Some(0);
                    State::Columns { left: n }
                }
            },
            State::Columns { left } => match left - 1 {
                0 if self.deprecate_eof => State::Rows,
                0 => State::ColumnsEof,
                left => State::Columns { left },
            },
            State::ColumnsEof => {
                let status =
                    self.expect_terminator(first, len, payload, complete, summary, &mut verdict)?;
                // A cursor was opened: rows come later, through COM_STMT_FETCH.
                if status.contains(StatusFlags::SERVER_STATUS_CURSOR_EXISTS) {
                    self.end_result(summary, Some(0));
                    if let Some(r) = summary.results.last_mut() {
                        r.cursor = true;
                    }
                    self.after_result(status)
                } else {
                    State::Rows
                }
            }
            State::Rows => {
                if ok::is_terminator(first, len) {
                    let status = self.terminator(payload, complete, summary, &mut verdict)?;
                    let rows = summary.result_rows;
                    self.end_result(summary, rows);
                    self.after_result(status)
                } else {
                    if let Some(rows) = summary.result_rows.as_mut() {
                        *rows += 1;
                    }
                    State::Rows
                }
            }
            State::PrepareOk => {
                // The prepare-OK: 0x00, statement id, columns, params, filler, warnings.
                let mut r = Reader::new(whole(payload, complete)?);
                let prepared = (|| {
                    r.u8()?;
                    let statement_id = r.u32()?;
                    let columns = r.u16()?;
                    let params = r.u16()?;
                    Some(Prepared {
                        statement_id,
                        columns,
                        params,
                    })
                })()
                .ok_or(ProtocolError::Malformed("prepare OK"))?;
                summary.prepared = Some(prepared);
                if prepared.params > 0 {
                    State::Params {
                        left: prepared.params,
                        columns: prepared.columns,
                    }
                } else {
                    self.prep_columns(prepared.columns)
                }
            }
            State::Params { left, columns } => match left - 1 {
                0 if self.deprecate_eof => self.prep_columns(columns),
                0 => State::ParamsEof { columns },
                left => State::Params { left, columns },
            },
            State::ParamsEof { columns } => {
                self.expect_terminator(first, len, payload, complete, summary, &mut verdict)?;
                self.prep_columns(columns)
            }
            State::PrepColumns { left } => match left - 1 {
                0 if self.deprecate_eof => State::Done,
                0 => State::PrepColumnsEof,
                left => State::PrepColumns { left },
            },
            State::PrepColumnsEof => {
                self.expect_terminator(first, len, payload, complete, summary, &mut verdict)?;
                State::Done
            }
            State::UntilTerminator => {
                if ok::is_terminator(first, len) {
                    self.terminator(payload, complete, summary, &mut verdict)?;
                    State::Done
                } else {
                    if let Some(rows) = summary.result_rows.as_mut() {
                        *rows += 1;
                    }
                    State::UntilTerminator
                }
            }
            State::Single => {
                match first {
                    0x00 => {
                        self.on_ok(whole(payload, complete)?, summary, &mut verdict)?;
                    }
                    0xFE => {
                        self.terminator(payload, complete, summary, &mut verdict)?;
                    }
                    _ => {}
                }
                self.end_result(summary, None);
                State::Done
            }
            State::SingleRaw => {
                if first == 0xFF {
                    summary.error =
                        super::packets::Err::parse(whole(payload, complete)?).map(|e| e.code);
                }
                State::Done
            }
            State::Done => {
                return Err(ProtocolError::Malformed(
                    "packet after the end of a response",
                ));
            }
        };
        verdict.done = self.state == State::Done;
        Ok(verdict)
    }

    /// Records the result that just ended with the summary's last OK/EOF.
    fn end_result(&mut self, summary: &mut Summary, rows: Option<u64>) {
        let (affected, insert_id) = self.result_ok.unwrap_or_default();
        let result = ResultSummary {
            status: summary.status,
            error: None,
            affected: if rows.is_some() { 0 } else { affected },
            insert_id: if rows.is_some() { 0 } else { insert_id },
            warnings: summary.warnings,
            rows,
            cursor: false,
            changes: self.changes_start..summary.changes.len(),
            untold: self.result_untold,
        };
        self.push_result(summary, result);
    }

    fn push_result(&mut self, summary: &mut Summary, result: ResultSummary) {
        self.changes_start = summary.changes.len();
        self.result_ok = None;
        self.result_untold = false;
        if summary.results.len() < MAX_RESULTS {
            summary.results.push(result);
        } else {
            summary.results_overflow = true;
        }
    }

    fn prep_columns(&self, columns: u16) -> State {
        if columns > 0 {
            State::PrepColumns { left: columns }
        } else {
            State::Done
        }
    }

    fn after_result(&self, status: StatusFlags) -> State {
        if status.contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS) {
            State::First
        } else {
            State::Done
        }
    }

    fn expect_terminator(
        &mut self,
        first: u8,
        len: usize,
        payload: &[u8],
        complete: bool,
        summary: &mut Summary,
        verdict: &mut Verdict,
    ) -> Result<StatusFlags, ProtocolError> {
        if !ok::is_terminator(first, len) {
            return Err(ProtocolError::Malformed("expected an EOF packet"));
        }
        self.terminator(payload, complete, summary, verdict)
    }

    /// A 0xFE packet ending a result set or a definition list: an OK with
    /// `CLIENT_DEPRECATE_EOF`, else a classic EOF.
    fn terminator(
        &mut self,
        payload: &[u8],
        complete: bool,
        summary: &mut Summary,
        verdict: &mut Verdict,
    ) -> Result<StatusFlags, ProtocolError> {
        let payload = whole(payload, complete)?;
        if self.deprecate_eof && payload.len() > 5 {
            self.on_ok(payload, summary, verdict)?;
            return Ok(summary.status.unwrap_or_default());
        }
        let (warnings, status) =
            ok::eof_fields(payload).ok_or(ProtocolError::Malformed("EOF packet"))?;
        summary.warnings = warnings;
        if status.contains(StatusFlags::SERVER_SESSION_STATE_CHANGED) {
            summary.untold_state_change = true;
            self.result_untold = true;
            // A client without session tracking never sees the flag from a server.
            if self.untrack {
                let mut eof = payload.to_vec();
                let cleared = status - StatusFlags::SERVER_SESSION_STATE_CHANGED;
                if let Some(at) = eof.get_mut(3..5) {
                    at.copy_from_slice(&cleared.bits().to_le_bytes());
                }
                verdict.replace = Some(eof);
            }
        }
        summary.status = Some(status);
        Ok(status)
    }

    /// Records an OK packet; returns whether more results follow.
    fn on_ok(
        &mut self,
        payload: &[u8],
        summary: &mut Summary,
        verdict: &mut Verdict,
    ) -> Result<bool, ProtocolError> {
        let okp = ok::Ok::parse(payload, self.session_track)
            .ok_or(ProtocolError::Malformed("OK packet"))?;
        summary.status = Some(okp.status);
        summary.warnings = okp.warnings;
        summary.last_ok = Some((okp.affected_rows, okp.last_insert_id));
        self.result_ok = Some((okp.affected_rows, okp.last_insert_id));
        if okp.last_insert_id != 0 {
            summary.insert_id = Some(okp.last_insert_id);
        }
        if !okp.session_state.is_empty() {
            let changes = ok::state_changes(okp.session_state)
                .ok_or(ProtocolError::Malformed("session state data"))?;
            summary
                .changes
                .extend(changes.into_iter().filter_map(|c| match c {
                    StateChange::SystemVariable { name, value } => {
                        Some(TrackedChange::SystemVariable {
                            name: String::from_utf8_lossy(name).into_owned(),
                            value: String::from_utf8_lossy(value).into_owned(),
                        })
                    }
                    StateChange::Schema(s) => Some(TrackedChange::Schema(
                        String::from_utf8_lossy(s).into_owned(),
                    )),
                    StateChange::StateChanged => Some(TrackedChange::StateChanged),
                    StateChange::Other => None,
                }));
        }
        let warnings = self.ok_warnings.unwrap_or(okp.warnings);
        if self.untrack && okp.needs_untracking(payload.len()) {
            let mut out = Vec::with_capacity(payload.len());
            ok::Ok { warnings, ..okp }.encode_untracked(&mut out);
            verdict.replace = Some(out);
        } else if warnings != okp.warnings {
            verdict.replace = Some(okp.with_warnings(payload, warnings));
        }
        Ok(okp.status.contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS))
    }
}

fn whole(payload: &[u8], complete: bool) -> Result<&[u8], ProtocolError> {
    if complete && payload.len() < MAX_FRAME {
        Ok(payload)
    } else {
        Err(ProtocolError::Malformed("control packet too large"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(t: &mut ResponseTracker, packets: &[&[u8]]) -> (Summary, Vec<Verdict>) {
        let mut s = Summary::default();
        let mut v = Vec::new();
        for p in packets {
            assert!(!t.is_done(), "response ended early");
            v.push(t.on_packet(p, p.len(), &mut s).unwrap());
        }
        (s, v)
    }

    const COLDEF: &[u8] =
        b"\x03def\x00\x00\x00\x011\x00\x0c?\x00\x01\x00\x00\x00\x03\x81\x00\x00\x00\x00";
    const EOF_AUTOCOMMIT: &[u8] = b"\xfe\x00\x00\x02\x00";
    const EOF_MORE: &[u8] = b"\xfe\x00\x00\x0a\x00";

    #[test]
    fn classic_result_set() {
        let mut t = ResponseTracker::new(Expect::ResultSets, false, true, true);
        let (s, v) = feed(
            &mut t,
            &[
                b"\x01",
                COLDEF,
                EOF_AUTOCOMMIT,
                b"\x011",
                b"\x012",
                EOF_AUTOCOMMIT,
            ],
        );
        assert!(t.is_done() && v.last().unwrap().done);
        assert_eq!(s.status, Some(StatusFlags::SERVER_STATUS_AUTOCOMMIT));
    }

    #[test]
    fn multiple_results_then_ok() {
        let mut t = ResponseTracker::new(Expect::ResultSets, false, true, true);
        let ok_in_trans = b"\x00\x00\x00\x03\x00\x00\x00";
        let (s, _) = feed(
            &mut t,
            &[
                b"\x01",
                COLDEF,
                EOF_AUTOCOMMIT,
                b"\x011",
                EOF_MORE,
                ok_in_trans,
            ],
        );
        assert!(t.is_done());
        assert!(
            s.status
                .unwrap()
                .contains(StatusFlags::SERVER_STATUS_IN_TRANS)
        );
    }

    #[test]
    fn deprecate_eof_result_set_with_tracking_is_rewritten() {
        let mut t = ResponseTracker::new(Expect::ResultSets, true, true, true);
        let term = b"\xfe\x00\x00\x02\x40\x00\x00\x00\x03\x02\x011";
        let (s, v) = feed(&mut t, &[b"\x01", COLDEF, b"\x011", term]);
        assert!(t.is_done());
        assert_eq!(s.changes, vec![TrackedChange::StateChanged]);
        assert_eq!(
            v[3].replace.as_deref(),
            Some(&b"\xfe\x00\x00\x02\x00\x00\x00"[..])
        );
    }

    #[test]
    fn error_mid_rows_ends_response() {
        let mut t = ResponseTracker::new(Expect::ResultSets, true, true, true);
        let (s, _) = feed(
            &mut t,
            &[b"\x01", COLDEF, b"\x011", b"\xff\x15\x04#HY000boom"],
        );
        assert!(t.is_done());
        assert_eq!(s.error, Some(0x0415));
    }

    #[test]
    fn local_infile_then_ok() {
        let mut t = ResponseTracker::new(Expect::ResultSets, true, true, true);
        let (_, v) = feed(&mut t, &[b"\xfbdata.csv"]);
        assert!(v[0].local_infile && !t.is_done());
        feed(&mut t, &[b"\x00\x03\x00\x02\x00\x00\x00"]);
        assert!(t.is_done());
    }

    #[test]
    fn prepare_with_params_and_columns_classic() {
        let mut t = ResponseTracker::new(Expect::Prepare, false, true, true);
        let prep_ok = b"\x00\x07\x00\x00\x00\x01\x00\x02\x00\x00\x00\x00";
        let (s, _) = feed(
            &mut t,
            &[
                prep_ok,
                COLDEF,
                COLDEF,
                EOF_AUTOCOMMIT,
                COLDEF,
                EOF_AUTOCOMMIT,
            ],
        );
        assert!(t.is_done());
        assert_eq!(
            s.prepared,
            Some(Prepared {
                statement_id: 7,
                columns: 1,
                params: 2
            })
        );

        let mut t = ResponseTracker::new(Expect::Prepare, true, true, true);
        feed(
            &mut t,
            &[b"\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"],
        );
        assert!(
            t.is_done(),
            "no params, no columns: the prepare-OK is everything"
        );
    }

    #[test]
    fn cursor_ends_execute_after_metadata() {
        let mut t = ResponseTracker::new(Expect::ResultSets, false, true, true);
        let eof_cursor = b"\xfe\x00\x00\x42\x00";
        feed(&mut t, &[b"\x01", COLDEF, eof_cursor]);
        assert!(t.is_done());
    }

    #[test]
    fn large_rows_need_only_their_first_byte() {
        let mut t = ResponseTracker::new(Expect::ResultSets, true, true, true);
        let mut s = Summary::default();
        for p in [&b"\x01"[..], COLDEF] {
            t.on_packet(p, p.len(), &mut s).unwrap();
        }
        // A 20 MiB row seen only by its first bytes.
        let v = t
            .on_packet(b"\xfe\x00\x00\x40\x01", MAX_FRAME, &mut s)
            .unwrap();
        assert!(
            !v.done,
            "a 0xFE row of full-frame length is data, not a terminator"
        );
        let v = t
            .on_packet(b"\xfe\x00\x00\x02\x00\x00\x00", 7, &mut s)
            .unwrap();
        assert!(v.done);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b"\x00\x01"[..], b"\xfc\x01", b"\xff\x01"] {
            let mut t = ResponseTracker::new(Expect::ResultSets, true, true, true);
            assert!(
                t.on_packet(bad, bad.len(), &mut Summary::default())
                    .is_err()
            );
        }
        let mut t = ResponseTracker::new(Expect::Single, true, true, true);
        t.on_packet(b"\x00\x00\x00\x02\x00\x00\x00", 7, &mut Summary::default())
            .unwrap();
        assert!(t.on_packet(b"\x00", 1, &mut Summary::default()).is_err());
    }
}
