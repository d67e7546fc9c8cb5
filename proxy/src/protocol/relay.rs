//! Moves packets between a client and a backend connection: byte for byte, frame by frame, with
//! bounded buffers. Everything read in one go is written in one go, so a small query costs one
//! read and one write on each side.

use super::codec::{PacketStream, ProtocolError};
use super::response::{INSPECT_WHOLE, ResponseTracker, Summary};
use super::{HEADER_LEN, MAX_FRAME, frame_len, put_packet};

/// Which side of a relay failed; the caller's recovery differs.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The client went away or sent something unusable.
    #[error("client: {0}")]
    Client(ProtocolError),
    /// The backend went away or sent something unusable, before any of the response reached
    /// the client (so the client can still be sent an error).
    #[error("backend: {0}")]
    Backend(ProtocolError),
    /// The backend failed after part of the response was already relayed.
    #[error("backend, mid-response: {0}")]
    BackendMidResponse(ProtocolError),
    /// A client packet grew past the configured limit while being forwarded.
    #[error("packet of {size} bytes exceeds max_allowed_packet ({max} bytes)")]
    TooLarge { size: usize, max: usize },
}

/// Relays one response from `backend` to `client`, following it with `tracker`. Returns once
/// the response was relayed; its last packet is held in `client` (`PacketStream::hold`) so the
/// caller can apply what it reported before the client sees the end. LOCAL INFILE data is
/// relayed from the client to the backend in the middle, as the protocol requires.
pub async fn relay_response(
    backend: &mut PacketStream,
    client: &mut PacketStream,
    tracker: &mut ResponseTracker,
    summary: &mut Summary,
    max_packet: usize,
) -> Result<(), RelayError> {
    // Bytes at the front of the backend buffer that were inspected and go out verbatim.
    let mut cursor = 0usize;
    // Payload bytes of the current frame still to pass through.
    let mut stream_left = 0usize;
    // The current frame is full, so its packet continues in the next frame.
    let mut continues = false;
    let mut relayed = false;
    let backend_err = |relayed: bool| {
        if relayed {
            RelayError::BackendMidResponse
        } else {
            RelayError::Backend
        }
    };
    loop {
        let mut local_infile = false;
        loop {
            let buf = backend.buffered();
            if stream_left > 0 {
                let take = stream_left.min(buf.len() - cursor);
                cursor += take;
                stream_left -= take;
                if stream_left > 0 {
                    break;
                }
                continue;
            }
            if tracker.is_done() && !continues {
                break;
            }
            let Some(header) = buf.get(cursor..cursor + HEADER_LEN) else {
                break;
            };
            let header: [u8; 4] = [header[0], header[1], header[2], header[3]];
            let len = frame_len(&header);
            let avail = buf.len() - cursor - HEADER_LEN;
            if continues {
                // The rest of a long packet: data only, nothing to inspect.
                continues = len == MAX_FRAME;
                let have = avail.min(len);
                cursor += HEADER_LEN + have;
                stream_left = len - have;
                continue;
            }
            let need = if len <= INSPECT_WHOLE { len } else { 1 };
            if avail < need {
                break;
            }
            let have = avail.min(len);
            let payload = &buf[cursor + HEADER_LEN..cursor + HEADER_LEN + have];
            let verdict = tracker
                .on_packet(payload, len, summary)
                .map_err(backend_err(relayed))?;
            continues = len == MAX_FRAME;
            if let Some(replacement) = verdict.replace {
                // Replacements are only made for whole, small packets.
                let mut out = Vec::with_capacity(cursor + HEADER_LEN + replacement.len());
                out.extend_from_slice(&buf[..cursor]);
                put_packet(&mut out, header[3], &replacement);
                backend.consume(cursor + HEADER_LEN + len);
                relayed = true;
                summary.relayed_bytes += out.len() as u64;
                cursor = 0;
                if tracker.is_done() && !continues {
                    client.hold(&out);
                } else {
                    client
                        .write_all(&out)
                        .await
                        .map_err(|e| RelayError::Client(e.into()))?;
                }
            } else {
                cursor += HEADER_LEN + have;
                stream_left = len - have;
            }
            if verdict.local_infile {
                local_infile = true;
                break;
            }
        }
        if cursor > 0 {
            relayed = true;
            summary.relayed_bytes += cursor as u64;
            let chunk = &backend.buffered()[..cursor];
            if tracker.is_done() && stream_left == 0 && !continues {
                // The response's end: held whole, so a small response is still one write.
                client.hold(chunk);
            } else {
                client
                    .write_all(chunk)
                    .await
                    .map_err(|e| RelayError::Client(e.into()))?;
            }
            backend.consume(cursor);
            cursor = 0;
        }
        if local_infile {
            forward_local_infile(client, backend, max_packet).await?;
            continue;
        }
        if tracker.is_done() && stream_left == 0 && !continues {
            if !backend.buffered().is_empty() {
                return Err(RelayError::BackendMidResponse(ProtocolError::Malformed(
                    "data after the end of a response",
                )));
            }
            return Ok(());
        }
        backend.read_more().await.map_err(backend_err(relayed))?;
    }
}

/// Relays the client's file for LOAD DATA LOCAL INFILE: packets until an empty one.
async fn forward_local_infile(
    client: &mut PacketStream,
    backend: &mut PacketStream,
    max_packet: usize,
) -> Result<(), RelayError> {
    loop {
        if forward_packet(client, backend, max_packet, Direction::ToBackend).await? == 0 {
            return Ok(());
        }
    }
}

/// Which way a packet is forwarded, to blame the right side for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToBackend,
    ToClient,
}

/// [`forward_packet`] from a client to the backend, which must be done by `deadline`: a client
/// that stalls half-way through a command cannot hold a backend connection for longer.
/// Past the deadline it fails with `RelayError::Client(ProtocolError::TimedOut)`.
pub async fn forward_command_within(
    client: &mut PacketStream,
    backend: &mut PacketStream,
    max: usize,
    deadline: tokio::time::Instant,
) -> Result<usize, RelayError> {
    let forward = forward_packet(client, backend, max, Direction::ToBackend);
    tokio::time::timeout_at(deadline, forward)
        .await
        .unwrap_or(Err(RelayError::Client(ProtocolError::TimedOut)))
}

/// Forwards one logical packet from the front of `from` to `to`, frame by frame as bytes arrive.
/// Returns its payload length. Fails with `TooLarge` once it exceeds `max` bytes; the packet is
/// then half-sent and the receiving connection unusable.
pub async fn forward_packet(
    from: &mut PacketStream,
    to: &mut PacketStream,
    max: usize,
    direction: Direction,
) -> Result<usize, RelayError> {
    type Blame = fn(ProtocolError) -> RelayError;
    let (read_err, write_err): (Blame, Blame) = match direction {
        Direction::ToBackend => (RelayError::Client, RelayError::Backend),
        Direction::ToClient => (RelayError::Backend, RelayError::Client),
    };
    let mut total = 0usize;
    // After a failed write the rest of the packet is still read (and dropped), so the sender's
    // stream stays in step and it can be told what happened.
    let mut write_failed = None;
    loop {
        let (len, _) = from.frame_header().await.map_err(read_err)?;
        total += len;
        if total > max {
            return Err(RelayError::TooLarge { size: total, max });
        }
        let mut left = HEADER_LEN + len;
        loop {
            let n = left.min(from.buffered().len());
            if n > 0 {
                if write_failed.is_none()
                    && let Err(e) = to.write_all(&from.buffered()[..n]).await
                {
                    write_failed = Some(e);
                }
                from.consume(n);
                left -= n;
            }
            if left == 0 {
                break;
            }
            from.read_more().await.map_err(read_err)?;
        }
        if len < MAX_FRAME {
            return match write_failed {
                Some(e) => Err(write_err(e.into())),
                None => Ok(total),
            };
        }
    }
}
