//! OK and EOF packets: status flags, session-state changes, and the rewrite that strips session
//! tracking for clients that did not ask for it.

use super::StatusFlags;
use super::lenenc::{self, Reader};

/// The fields of an OK packet (header 0x00, or 0xFE when it ends a result set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ok<'a> {
    pub header: u8,
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: StatusFlags,
    pub warnings: u16,
    /// Human-readable info ("Rows matched: 1  Changed: 1  Warnings: 0"), possibly empty.
    pub info: &'a [u8],
    /// Raw session-state-change data, present only with `CLIENT_SESSION_TRACK` and the
    /// `SERVER_SESSION_STATE_CHANGED` status flag.
    pub session_state: &'a [u8],
}

impl<'a> Ok<'a> {
    /// Parses an OK packet payload. `session_track` says whether the connection negotiated
    /// `CLIENT_SESSION_TRACK`, which changes how the info string is encoded.
    pub fn parse(payload: &'a [u8], session_track: bool) -> Option<Ok<'a>> {
        let mut r = Reader::new(payload);
        let header = r.u8()?;
        let affected_rows = r.lenenc_int()?;
        let last_insert_id = r.lenenc_int()?;
        let status = StatusFlags::from_bits_retain(r.u16()?);
        let warnings = r.u16()?;
        let (info, session_state) = if session_track {
            // Servers omit the info string entirely when it is empty and nothing changed.
            let info = if r.is_empty() {
                &[][..]
            } else {
                r.lenenc_bytes()?
            };
            let state =
                if status.contains(StatusFlags::SERVER_SESSION_STATE_CHANGED) && !r.is_empty() {
                    r.lenenc_bytes()?
                } else {
                    &[][..]
                };
            (info, state)
        } else {
            // Documented as string<EOF>, but servers write it length-encoded (MySQL's
            // net_send_ok, MariaDB alike), and clients such as mysql_common read it so.
            let rest = r.rest();
            let info = if rest.first().is_some_and(|&b| b > 0) {
                r.lenenc_bytes().unwrap_or(rest)
            } else {
                &[][..]
            };
            (info, &[][..])
        };
        Some(Ok {
            header,
            affected_rows,
            last_insert_id,
            status,
            warnings,
            info,
            session_state,
        })
    }

    /// Encodes the packet as a server does for a client without `CLIENT_SESSION_TRACK`: no
    /// session-state data, no `SERVER_SESSION_STATE_CHANGED` flag, and the info string
    /// (length-encoded) only when there is one.
    pub fn encode_untracked(&self, out: &mut Vec<u8>) {
        out.push(self.header);
        lenenc::put_int(out, self.affected_rows);
        lenenc::put_int(out, self.last_insert_id);
        let status = self.status - StatusFlags::SERVER_SESSION_STATE_CHANGED;
        out.extend_from_slice(&status.bits().to_le_bytes());
        out.extend_from_slice(&self.warnings.to_le_bytes());
        if !self.info.is_empty() {
            lenenc::put_bytes(out, self.info);
        }
    }

    /// `payload` (this OK packet's) with another warning count, all else kept.
    pub fn with_warnings(&self, payload: &[u8], warnings: u16) -> Vec<u8> {
        let mut out = payload.to_vec();
        let at = 1 + lenenc_len(self.affected_rows) + lenenc_len(self.last_insert_id) + 2;
        if let Some(field) = out.get_mut(at..at + 2) {
            field.copy_from_slice(&warnings.to_le_bytes());
        }
        out
    }

    /// True when [`Ok::encode_untracked`] would produce other bytes than the original.
    pub fn needs_untracking(&self, payload_len: usize) -> bool {
        let info = match self.info.len() {
            0 => 0,
            n => lenenc_len(n as u64) + n,
        };
        let untracked =
            1 + lenenc_len(self.affected_rows) + lenenc_len(self.last_insert_id) + 4 + info;
        payload_len != untracked
            || self
                .status
                .contains(StatusFlags::SERVER_SESSION_STATE_CHANGED)
    }
}

fn lenenc_len(v: u64) -> usize {
    match v {
        0..=0xFA => 1,
        0xFB..=0xFFFF => 3,
        0x1_0000..=0xFF_FFFF => 4,
        _ => 9,
    }
}

/// Reads the warning count and status flags of a classic 5-byte EOF packet.
pub fn eof_fields(payload: &[u8]) -> Option<(u16, StatusFlags)> {
    let mut r = Reader::new(payload);
    r.u8()?;
    let warnings = r.u16()?;
    Some((warnings, StatusFlags::from_bits_retain(r.u16()?)))
}

/// Reads the status flags of a classic 5-byte EOF packet.
pub fn eof_status(payload: &[u8]) -> Option<StatusFlags> {
    eof_fields(payload).map(|(_, s)| s)
}

/// True for a packet that ends a result set or a column list: 0xFE and shorter than a full frame.
/// Rows can begin with 0xFE only when their first value is 16 MiB or longer.
#[inline]
pub fn is_terminator(payload_first: u8, payload_len: usize) -> bool {
    payload_first == 0xFE && payload_len < super::MAX_FRAME
}

/// One change the server reported in an OK packet's session-state data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange<'a> {
    /// A system variable got a new value (as text; NULL reads as empty).
    SystemVariable { name: &'a [u8], value: &'a [u8] },
    /// The current schema changed.
    Schema(&'a [u8]),
    /// Some session state changed (user variables, temporary tables, prepared statements, ...).
    StateChanged,
    /// GTIDs, transaction characteristics or state: nothing Sluice acts on.
    Other,
}

const TRACK_SYSTEM_VARIABLES: u8 = 0;
const TRACK_SCHEMA: u8 = 1;
const TRACK_STATE_CHANGE: u8 = 2;

/// Decodes session-state data into changes; `None` if the data is malformed.
pub fn state_changes(data: &[u8]) -> Option<Vec<StateChange<'_>>> {
    let mut out = Vec::new();
    let mut r = Reader::new(data);
    while !r.is_empty() {
        let kind = r.u8()?;
        let mut entry = Reader::new(r.lenenc_bytes()?);
        match kind {
            TRACK_SYSTEM_VARIABLES => {
                // MySQL may pack several name/value pairs into one entry.
                while !entry.is_empty() {
                    let name = entry.lenenc_bytes()?;
                    let value = entry.lenenc_bytes()?;
                    out.push(StateChange::SystemVariable { name, value });
                }
            }
            TRACK_SCHEMA => out.push(StateChange::Schema(entry.lenenc_bytes()?)),
            // Unlike the other entries, this one's data is the bare flag, without a length.
            TRACK_STATE_CHANGE => {
                if entry.rest() == b"1" {
                    out.push(StateChange::StateChanged);
                }
            }
            _ => out.push(StateChange::Other),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from MariaDB 10.11 with CLIENT_SESSION_TRACK.
    const SET_NAMES: &[u8] = b"\x00\x00\x00\x02@\x00\x00\x00b\x00\x1d\x15character_set_results\x06latin1\x00\x1c\x14character_set_client\x06latin1\x00 \x18character_set_connection\x06latin1\x02\x011";
    const USE_MYSQL: &[u8] = b"\x00\x00\x00\x02@\x00\x00\x00\x0b\x01\x06\x05mysql\x02\x011";
    const INSERT: &[u8] = b"\x00\x02\x00\x02\x80\x00\x00&Records: 2  Duplicates: 0  Warnings: 0";

    #[test]
    fn parses_tracked_variables_and_schema() {
        let ok = Ok::parse(SET_NAMES, true).unwrap();
        assert!(
            ok.status
                .contains(StatusFlags::SERVER_SESSION_STATE_CHANGED)
        );
        let changes = state_changes(ok.session_state).unwrap();
        assert_eq!(changes.len(), 4);
        assert_eq!(
            changes[1],
            StateChange::SystemVariable {
                name: b"character_set_client",
                value: b"latin1"
            }
        );
        assert_eq!(changes[3], StateChange::StateChanged);

        let ok = Ok::parse(USE_MYSQL, true).unwrap();
        assert_eq!(
            state_changes(ok.session_state).unwrap(),
            vec![StateChange::Schema(b"mysql"), StateChange::StateChanged]
        );
    }

    #[test]
    fn untracking_strips_state_and_keeps_info() {
        // Info is length-encoded with or without session tracking: nothing to rewrite.
        let ok = Ok::parse(INSERT, true).unwrap();
        assert_eq!(ok.affected_rows, 2);
        assert_eq!(ok.info, b"Records: 2  Duplicates: 0  Warnings: 0");
        assert!(!ok.needs_untracking(INSERT.len()));
        let plain = Ok::parse(INSERT, false).unwrap();
        assert_eq!(plain.info, ok.info);

        // Info together with session state: the state goes, the info stays as the server
        // would have sent it.
        let both = b"\x00\x01\x00\x02\x40\x00\x00\x02hi\x03\x02\x011";
        let ok = Ok::parse(both, true).unwrap();
        assert!(ok.needs_untracking(both.len()));
        let mut out = Vec::new();
        ok.encode_untracked(&mut out);
        assert_eq!(out, b"\x00\x01\x00\x02\x00\x00\x00\x02hi");

        let ok = Ok::parse(USE_MYSQL, true).unwrap();
        let mut out = Vec::new();
        ok.encode_untracked(&mut out);
        assert_eq!(out, b"\x00\x00\x00\x02\x00\x00\x00");

        let bare = b"\x00\x00\x00\x02\x00\x00\x00";
        assert!(!Ok::parse(bare, true).unwrap().needs_untracking(bare.len()));
    }

    #[test]
    fn malformed_input_is_rejected() {
        assert!(Ok::parse(b"\x00\x01", true).is_none());
        assert!(Ok::parse(b"\x00\x00\x00\x02\x40\x00\x00\x10ab", true).is_none());
        assert!(state_changes(b"\x00\x05\x01a").is_none());
        assert!(eof_status(b"\xfe\x00").is_none());
    }
}
