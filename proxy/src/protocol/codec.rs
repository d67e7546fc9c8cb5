//! A socket with its read buffer, yielding MySQL frames and packets.

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::transport::Transport;
use super::{HEADER_LEN, MAX_FRAME, frame_len, put_packet};

/// How much spare room a read asks for; large results are relayed in chunks of about this size.
const READ_CHUNK: usize = 16 * 1024;

/// The least a [`PacketStream::fill`] asks for: a typical command or login packet in one read.
const SMALL_READ: usize = 256;

/// Buffers above this size are given back once they are empty, so an idle connection holds none.
const KEEP_CAPACITY: usize = 64 * 1024;

/// What can go wrong reading or writing MySQL packets.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection closed by peer")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("packet of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("packet out of order: expected sequence id {expected}, got {got}")]
    OutOfOrder { expected: u8, got: u8 },
    /// The peer did not send what it started within the time it was given.
    #[error("timed out waiting for the rest of a packet")]
    TimedOut,
}

/// A connection speaking the MySQL protocol (over TCP, or TLS after an upgrade), with its
/// read buffer.
#[derive(Debug)]
pub struct PacketStream {
    stream: Transport,
    buf: BytesMut,
    /// The end of a response kept back until the proxy has applied what it reported; it goes
    /// out before anything else is written and before any read waits (see `hold`).
    held: Vec<u8>,
}

impl PacketStream {
    /// Wraps a connected socket; disables Nagle, since every packet is latency-bound.
    pub fn new(stream: TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(PacketStream {
            stream: Transport::Plain(stream),
            buf: BytesMut::new(),
            held: Vec::new(),
        })
    }

    /// The stream underneath, for its TLS state.
    pub fn transport(&self) -> &Transport {
        &self.stream
    }

    /// True once the connection upgraded to TLS.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Whether the client presented a TLS certificate (verified by the handshake).
    pub fn client_certificate_presented(&self) -> bool {
        self.stream.client_certificate_presented()
    }

    /// Accepts a client's TLS handshake; bytes the client sent ahead are handed to it.
    pub async fn accept_tls(&mut self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<()> {
        // A copy, not a split: a split would keep the whole read buffer alive for as long as
        // the connection lasts, behind the few bytes (if any) the client sent ahead.
        let ahead = BytesMut::from(&self.buf[..]);
        self.buf = BytesMut::new();
        self.stream.accept_tls(ahead, acceptor).await
    }

    /// Starts TLS towards a server after Sluice's SSL request.
    pub async fn connect_tls(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        if !self.buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server sent data before the TLS handshake",
            ));
        }
        self.stream.connect_tls(connector, name).await
    }

    /// Sends COM_QUIT if the socket takes it at once; a TLS connection is just closed, since
    /// its records cannot be written without waiting.
    pub fn try_quit(&self) {
        if let Transport::Plain(tcp) = &self.stream {
            let _ = tcp.try_write(&[1, 0, 0, 0, super::command::COM_QUIT]);
        }
    }

    /// Bytes read but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes read but not yet consumed, for rewriting in place (a statement id, say).
    pub fn buffered_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Drops `n` consumed bytes from the front of the buffer.
    pub fn consume(&mut self, n: usize) {
        self.buf.advance(n);
    }

    /// Reads at least one more byte into the buffer. A peer that closed is an error here,
    /// because every caller is waiting for the rest of something.
    pub async fn read_more(&mut self) -> Result<(), ProtocolError> {
        // The peer may be waiting for the held bytes before it sends anything.
        self.send_held().await?;
        if self.buf.is_empty() {
            // Nothing pending: allocate only once there is data, so an idle or stalled peer
            // holds no buffer.
            self.stream.readable().await?;
        }
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        self.read_some().await
    }

    async fn read_some(&mut self) -> Result<(), ProtocolError> {
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(ProtocolError::Closed),
            _ => Ok(()),
        }
    }

    /// Reads until at least `n` bytes are buffered, growing the buffer only by what is
    /// missing (at least [`SMALL_READ`], so a small command arrives in one read): a client
    /// that stops half-way through a short packet holds a few hundred bytes, not a chunk.
    pub async fn fill(&mut self, n: usize) -> Result<(), ProtocolError> {
        while self.buf.len() < n {
            if self.buf.is_empty() {
                self.stream.readable().await?;
            }
            let want = (n - self.buf.len()).max(SMALL_READ);
            if self.buf.capacity() - self.buf.len() < want {
                self.buf.reserve(want);
            }
            self.read_some().await?;
        }
        Ok(())
    }

    /// Reads the next frame header: payload length and sequence id.
    pub async fn frame_header(&mut self) -> Result<(usize, u8), ProtocolError> {
        self.fill(HEADER_LEN).await?;
        Ok(self.peek_header().unwrap_or((0, 0)))
    }

    /// The header of the frame at the front of the buffer, if it is there.
    pub fn peek_header(&self) -> Option<(usize, u8)> {
        let h: &[u8; 4] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some((frame_len(h), h[3]))
    }

    /// Reads one whole logical packet of at most `max` bytes, joining frames. Used where packets
    /// are small and Sluice itself is the peer (handshakes, its own queries); relayed traffic
    /// is streamed frame by frame instead (see `relay`).
    pub async fn read_packet(&mut self, max: usize) -> Result<(u8, Vec<u8>), ProtocolError> {
        let mut payload = Vec::new();
        let mut first_seq = None;
        loop {
            let (len, seq) = self.frame_header().await?;
            if let Some(first) = first_seq {
                let expected = (first as usize + payload.len() / MAX_FRAME) as u8;
                if seq != expected {
                    return Err(ProtocolError::OutOfOrder { expected, got: seq });
                }
            }
            first_seq.get_or_insert(seq);
            if payload.len() + len > max {
                return Err(ProtocolError::TooLarge {
                    size: payload.len() + len,
                    max,
                });
            }
            self.fill(HEADER_LEN + len).await?;
            payload.extend_from_slice(&self.buf[HEADER_LEN..HEADER_LEN + len]);
            self.buf.advance(HEADER_LEN + len);
            if len < MAX_FRAME {
                return Ok((first_seq.unwrap_or(0), payload));
            }
        }
    }

    /// Reads and drops one logical packet (a command Sluice answers itself), frame by frame,
    /// without holding more than a chunk of it. Returns its payload length.
    pub async fn skip_packet(&mut self, max: usize) -> Result<usize, ProtocolError> {
        let mut total = 0usize;
        loop {
            let (len, _) = self.frame_header().await?;
            total += len;
            if total > max {
                return Err(ProtocolError::TooLarge { size: total, max });
            }
            let mut left = HEADER_LEN + len;
            loop {
                let n = left.min(self.buf.len());
                self.buf.advance(n);
                left -= n;
                if left == 0 {
                    break;
                }
                self.read_more().await?;
            }
            if len < MAX_FRAME {
                return Ok(total);
            }
        }
    }

    /// Writes bytes that are already framed (after any held bytes).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !self.held.is_empty() {
            self.held.extend_from_slice(bytes);
            return self.send_held().await;
        }
        self.stream.write_all(bytes).await?;
        self.flush_tls().await
    }

    /// Keeps framed bytes back until `send_held`, the next write or the next read: the proxy
    /// holds a response's last packet while it applies what the response reported, so a client
    /// that has its answer sees a proxy that has caught up with it.
    pub fn hold(&mut self, bytes: &[u8]) {
        self.held.extend_from_slice(bytes);
    }

    /// Sends the held bytes, if any.
    pub async fn send_held(&mut self) -> io::Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        let sent = self.stream.write_all(&self.held).await;
        self.held.clear();
        sent?;
        self.flush_tls().await
    }

    /// Frames and writes one packet.
    pub async fn write_packet(&mut self, seq: u8, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + HEADER_LEN);
        put_packet(&mut out, seq, payload);
        self.write_all(&out).await
    }

    /// TLS may keep records back when the socket is full; everything written must leave.
    async fn flush_tls(&mut self) -> io::Result<()> {
        if self.stream.is_tls() {
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// True if the peer has closed the connection or sent something unasked; checked without
    /// waiting, before an idle backend connection is handed out.
    pub fn is_stale(&self) -> bool {
        !self.buf.is_empty() || self.stream.has_unread_or_closed()
    }

    /// Gives back read-buffer memory once nothing is buffered: idle connections keep none.
    pub fn release_idle_memory(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
        if self.held.is_empty() {
            self.held = Vec::new();
        }
    }

    /// Shrinks a buffer that grew for a large packet, keeping small ones for reuse.
    pub fn trim_memory(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::new();
        }
        if self.held.is_empty() && self.held.capacity() > KEEP_CAPACITY {
            self.held = Vec::new();
        }
    }

    /// Shuts down the write side, flushing what was written.
    pub async fn shutdown(&mut self) {
        let _ = self.send_held().await;
        let _ = self.stream.shutdown().await;
    }
}
