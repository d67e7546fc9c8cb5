//! Following a failover from inside a session. A statement sent outside a transaction that the
//! server refuses without running it, because it is no longer the writer (1290, 1836) or is
//! shutting down (1053), goes again to the new writer, unseen by the client; so does one whose
//! connection turned out to be closed before the statement could reach the server. Any such
//! error, and any lost connection, has the monitor look at the hosts at once.
//!
//! Nothing inside a transaction is sent again, and nothing that may have run: a connection
//! lost after the statement reached the server is the client's error to see.

use std::time::Duration;

use super::{ClientSession, Flow, Sync};
use crate::protocol::codec::{PacketStream, ProtocolError};
use crate::protocol::command::COM_QUERY;
use crate::protocol::{HEADER_LEN, MAX_FRAME};
use crate::session::may_release;

/// `ER_OPTION_PREVENTS_STATEMENT` (1290, `--read-only`), `ER_READ_ONLY_MODE` (1836) and
/// `ER_SERVER_SHUTDOWN` (1053): refused before anything ran.
const REFUSED_UNRUN: [u16; 3] = [1290, 1836, 1053];

/// Read-only refusals: the host is not (or no longer) the writer.
const READ_ONLY: [u16; 2] = [1290, 1836];

/// How often one statement follows the writer before its refusal goes to the client.
const MAX_REROUTES: usize = 3;

/// How long a re-routed statement waits for the monitor's next report.
const REPORT_WAIT: Duration = Duration::from_secs(2);

/// What became of sending the command and looking at the first byte of the answer.
enum Outcome {
    /// The server answered (anything but a refusal it made before running the statement).
    Answered,
    /// The server refused it unrun with this error code.
    Refused(u16),
    /// The command could not be written: the connection was closed before it got there.
    NotSent(ProtocolError),
    /// The connection failed after the command was written.
    Lost(ProtocolError),
}

impl ClientSession {
    /// Sends the client's command; a COM_QUERY outside a transaction that the server refuses
    /// unrun (or that cannot be written) goes again on a connection to the current writer.
    pub(in crate::frontend) async fn send_command_rerouting(&mut self, sync: Sync) -> Option<Flow> {
        let Some(frame) = self.reroutable_frame() else {
            return self.send_command().await;
        };
        let topology = self.shared.pool.topology().clone();
        let client = self.id();
        for attempt in 0..=MAX_REROUTES {
            let Some(b) = self.backend.as_mut() else {
                return Some(Flow::Close);
            };
            let host = b.host;
            let sent = send_and_peek(&self.client.buffered()[..frame], &mut b.stream).await;
            let last = attempt == MAX_REROUTES;
            match sent {
                Outcome::Answered => {
                    b.last_used = std::time::Instant::now();
                    self.client.consume(frame);
                    self.gauge.user().bytes_to_database.increment(frame as u64);
                    return None;
                }
                Outcome::Refused(code) if !last => {
                    tracing::info!(%client, code, host = %topology.connector(host).address,
                        "statement refused unrun by a host that is not the writer; sending it to the writer");
                    b.broken = true;
                    let mut changes = topology.subscribe();
                    changes.borrow_and_update();
                    if READ_ONLY.contains(&code) {
                        topology.suspect_read_only(host);
                    } else {
                        topology.recheck();
                    }
                    // Until the monitor no longer takes that host for the writer (the next
                    // borrow then waits for one, or goes to the new one).
                    let moved_on = async {
                        while topology.writer().is_some_and(|w| w.host == host) {
                            if changes.changed().await.is_err() {
                                return;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(REPORT_WAIT, moved_on).await;
                }
                Outcome::NotSent(e) if !last => {
                    tracing::info!(%client, error = %e,
                        "the connection was closed before the statement reached it; sending it on another");
                    b.broken = true;
                    topology.recheck();
                }
                Outcome::Refused(_) => {
                    // Relayed as the server sent it.
                    self.client.consume(frame);
                    return None;
                }
                Outcome::NotSent(e) | Outcome::Lost(e) => {
                    self.client.consume(frame);
                    return Some(self.backend_lost(e, false).await);
                }
            }
            self.release().await;
            if let Err(err) = self.acquire(sync).await {
                self.client.consume(frame);
                return Some(self.reply_error(&err).await);
            }
        }
        Some(Flow::Close)
    }

    /// The length of the buffered frame when the command may be sent again: a COM_QUERY
    /// held whole in the buffer, on a connection with no transaction open and nothing that
    /// ties the session to it.
    fn reroutable_frame(&self) -> Option<usize> {
        let (len, _) = self.client.peek_header()?;
        let frame = HEADER_LEN + len;
        let whole = len < MAX_FRAME && self.client.buffered().len() >= frame;
        let query = self.client.buffered().get(HEADER_LEN) == Some(&COM_QUERY);
        let free = self
            .backend
            .as_ref()
            .is_some_and(|b| may_release(self.pins(), b.in_transaction()));
        (whole && query && free).then_some(frame)
    }

    /// After a response: an error that says the host is not the writer (or is going away)
    /// has the monitor look now.
    pub(in crate::frontend) fn note_server_error(&self, code: Option<u16>) {
        let Some(code) = code.filter(|c| REFUSED_UNRUN.contains(c)) else {
            return;
        };
        let topology = self.shared.pool.topology();
        match self.backend.as_ref() {
            Some(b) if READ_ONLY.contains(&code) => topology.suspect_read_only(b.host),
            _ => topology.recheck(),
        }
    }
}

/// Writes `frame` to the backend and reads until the first byte of the answer (the whole
/// packet if it is an ERR, for its code), leaving what was read in the buffer for the relay.
async fn send_and_peek(frame: &[u8], backend: &mut PacketStream) -> Outcome {
    if let Err(e) = backend.write_all(frame).await {
        return Outcome::NotSent(e.into());
    }
    if let Err(e) = backend.fill(HEADER_LEN + 1).await {
        return Outcome::Lost(e);
    }
    if backend.buffered().get(HEADER_LEN) != Some(&0xFF) {
        return Outcome::Answered;
    }
    // ERR: 0xFF, then the code (2 bytes, little endian).
    if let Err(e) = backend.fill(HEADER_LEN + 3).await {
        return Outcome::Lost(e);
    }
    let code = backend
        .buffered()
        .get(HEADER_LEN + 1..HEADER_LEN + 3)
        .map(|b| u16::from_le_bytes([b[0], b[1]]));
    match code {
        Some(code) if REFUSED_UNRUN.contains(&code) => Outcome::Refused(code),
        _ => Outcome::Answered,
    }
}
