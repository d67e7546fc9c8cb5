//! A minimal MySQL protocol client that keeps every byte of every answer, for comparing what a
//! client gets directly from the server with what it gets through Sluice. Its response framing
//! is written from the protocol documentation, independently of Sluice's own.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sluice::protocol::CapabilityFlags;
use sluice::protocol::packets::HandshakeResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The complete answer to one command, as comparable data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Every packet payload of the response, in order.
    Packets(Vec<Vec<u8>>),
    /// Nothing: the command has no response (COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA).
    Nothing,
    /// The server closed the connection (after the packets it sent first, if any).
    Closed(Vec<Vec<u8>>),
    /// No complete answer within the time allowed.
    Timeout,
}

impl Answer {
    /// The answer's packets, however it ended.
    pub fn packets(&self) -> &[Vec<u8>] {
        match self {
            Answer::Packets(p) | Answer::Closed(p) => p,
            Answer::Nothing | Answer::Timeout => &[],
        }
    }

    /// The error code, if the answer ends with an ERR packet.
    pub fn error(&self) -> Option<u16> {
        let last = self.packets().last()?;
        (last.first() == Some(&0xFF) && last.len() >= 3)
            .then(|| u16::from_le_bytes([last[1], last[2]]))
    }

    /// The status flags of the answer's last OK or EOF packet.
    pub fn status(&self) -> Option<u16> {
        let last = self.packets().last()?;
        status_of(last)
    }

    /// The index of the first column whose name starts with `prefix` (any case).
    pub fn column_named(&self, prefix: &str) -> Option<usize> {
        let p = self.packets();
        let count = lenenc(p.first()?, &mut 0)? as usize;
        p.iter().skip(1).take(count).position(|def| {
            // catalog, schema, table, org_table, name
            let mut at = 0;
            for _ in 0..4 {
                let Some(len) = lenenc(def, &mut at) else {
                    return false;
                };
                at += len as usize;
            }
            let Some(len) = lenenc(def, &mut at) else {
                return false;
            };
            def.get(at..at + len as usize).is_some_and(|name| {
                let name: Vec<u8> = name
                    .iter()
                    .copied()
                    .filter(|b| !b.is_ascii_whitespace())
                    .collect();
                name.len() >= prefix.len()
                    && name[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            })
        })
    }

    /// The value in `column` of the first row, as text (text protocol answers).
    pub fn value(&self, column: usize) -> Option<Option<Vec<u8>>> {
        let p = self.packets();
        let count = lenenc(p.first()?, &mut 0)?;
        // Column count, definitions, (maybe an EOF), then the first row.
        let row = p
            .iter()
            .skip(1 + count as usize)
            .find(|r| !(r.first() == Some(&0xFE) && r.len() < 9))?;
        let mut at = 0;
        for i in 0..=column {
            let value = if row.get(at) == Some(&0xFB) {
                at += 1;
                None
            } else {
                let len = lenenc(row, &mut at)? as usize;
                let v = row.get(at..at + len)?.to_vec();
                at += len;
                Some(v)
            };
            if i == column {
                return Some(value);
            }
        }
        None
    }

    /// A readable rendering for reports.
    pub fn describe(&self) -> String {
        match self {
            Answer::Nothing => "(no answer)".into(),
            Answer::Timeout => "TIMEOUT".into(),
            Answer::Packets(p) => describe_packets(p),
            Answer::Closed(p) => format!("{} then CLOSED", describe_packets(p)),
        }
    }
}

fn describe_packets(p: &[Vec<u8>]) -> String {
    p.iter()
        .map(|x| {
            let text: String = x
                .iter()
                .map(|&b| {
                    if (0x20..0x7F).contains(&b) {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            format!("[{}|{}]", hex(x), text)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .take(48)
        .map(|x| format!("{x:02x}"))
        .collect::<String>()
}

fn status_of(p: &[u8]) -> Option<u16> {
    match p.first()? {
        0x00 | 0xFE if p.len() >= 7 || p[0] == 0x00 => {
            let mut at = 1;
            lenenc(p, &mut at)?;
            lenenc(p, &mut at)?;
            Some(u16::from_le_bytes([*p.get(at)?, *p.get(at + 1)?]))
        }
        0xFE if p.len() == 5 => Some(u16::from_le_bytes([p[3], p[4]])),
        _ => None,
    }
}

/// Reads a length-encoded integer at `*at`.
pub fn lenenc(p: &[u8], at: &mut usize) -> Option<u64> {
    let first = *p.get(*at)?;
    let (n, width) = match first {
        0..=0xFA => (u64::from(first), 1),
        0xFC => (
            u64::from(u16::from_le_bytes([*p.get(*at + 1)?, *p.get(*at + 2)?])),
            3,
        ),
        0xFD => (
            u64::from_le_bytes([
                *p.get(*at + 1)?,
                *p.get(*at + 2)?,
                *p.get(*at + 3)?,
                0,
                0,
                0,
                0,
                0,
            ]),
            4,
        ),
        0xFE => {
            let b = p.get(*at + 1..*at + 9)?;
            (u64::from_le_bytes(b.try_into().ok()?), 9)
        }
        _ => return None,
    };
    *at += width;
    Some(n)
}

/// The bytes before the first NUL (all of them if there is none).
fn nul_terminated(b: &[u8]) -> &[u8] {
    b.iter().position(|&x| x == 0).map_or(b, |n| &b[..n])
}

/// One connection, directly to the server or through Sluice.
pub struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    pub caps: CapabilityFlags,
    /// The connection id the handshake announced.
    pub connection_id: u32,
    closed: bool,
}

/// How long one command may take before it counts as a hang.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(10);

/// The capabilities the checker's clients ask for, besides the optional ones.
pub fn base_caps() -> CapabilityFlags {
    CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_LONG_FLAG
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS
}

impl Wire {
    /// Connects and logs in with the plugin the server asks for: `mysql_native_password`, or
    /// `caching_sha2_password` (its fast path, or full authentication with the password sent
    /// under the server's RSA key, as there is no TLS).
    pub async fn login(
        addr: SocketAddr,
        user: &str,
        password: &str,
        db: Option<&str>,
        caps: CapabilityFlags,
    ) -> Result<Wire> {
        let stream = TcpStream::connect(addr).await.context("connect")?;
        stream.set_nodelay(true)?;
        let mut w = Wire {
            stream,
            buf: Vec::new(),
            caps,
            connection_id: 0,
            closed: false,
        };
        let (seq, greeting) = w.read_packet().await?.context("no greeting")?;
        if greeting.first() == Some(&0xFF) {
            bail!("refused: {}", String::from_utf8_lossy(&greeting));
        }
        // protocol version, version string, connection id, 8 bytes of scramble, filler,
        // capabilities, charset, status, caps high, auth data length, 10 reserved, rest.
        let version_end = greeting
            .iter()
            .skip(1)
            .position(|&b| b == 0)
            .context("greeting")?
            + 2;
        let id = greeting
            .get(version_end..version_end + 4)
            .context("greeting")?;
        w.connection_id = u32::from_le_bytes(id.try_into()?);
        let mut nonce = greeting
            .get(version_end + 4..version_end + 12)
            .context("greeting")?
            .to_vec();
        let rest_at = version_end + 12 + 1 + 2 + 1 + 2 + 2 + 1 + 10;
        let rest = greeting.get(rest_at..).unwrap_or_default();
        nonce.extend_from_slice(rest.get(..12).unwrap_or_default());
        // After the 12 scramble bytes and their NUL: the plugin name.
        let plugin = nul_terminated(rest.get(13..).unwrap_or_default());
        let mut plugin = if plugin.is_empty() {
            b"mysql_native_password".to_vec()
        } else {
            plugin.to_vec()
        };
        let response = sluice::auth::client_response(&plugin, &nonce, password)?;
        let mut caps = caps;
        if db.is_some() {
            caps |= CapabilityFlags::CLIENT_CONNECT_WITH_DB;
        }
        let hello = HandshakeResponse {
            capabilities: caps,
            max_packet_size: 1 << 30,
            collation: 45,
            user: user.as_bytes(),
            auth_response: &response,
            database: db.map(str::as_bytes),
            auth_plugin: &plugin,
            connect_attributes: &[],
        }
        .encode();
        let mut seq = seq.wrapping_add(1);
        w.write_packet(seq, &hello).await?;
        loop {
            let (s, reply) = w.read_packet().await?.context("no login reply")?;
            seq = s.wrapping_add(1);
            match reply.first() {
                Some(0x00) => break,
                Some(0xFE) => {
                    // Auth switch: the plugin's name, then its nonce.
                    let body = reply.get(1..).unwrap_or_default();
                    plugin = nul_terminated(body).to_vec();
                    let data = body.get(plugin.len() + 1..).unwrap_or_default();
                    nonce = data.strip_suffix(&[0]).unwrap_or(data).to_vec();
                    let response = sluice::auth::client_response(&plugin, &nonce, password)?;
                    w.write_packet(seq, &response).await?;
                }
                Some(0x01) if reply.get(1) == Some(&sluice::auth::FAST_AUTH_OK) => {}
                Some(0x01) if reply.get(1) == Some(&sluice::auth::PERFORM_FULL_AUTH) => {
                    w.write_packet(seq, &[sluice::auth::REQUEST_PUBLIC_KEY])
                        .await?;
                }
                Some(0x01) => {
                    // The server's public key (PEM): send the password under it.
                    let pem = reply.get(1..).unwrap_or_default();
                    let cipher = sluice::auth::encrypt_password(password, &nonce, pem)?;
                    w.write_packet(seq, &cipher).await?;
                }
                _ => bail!("login refused: {}", String::from_utf8_lossy(&reply)),
            }
        }
        w.caps = caps;
        Ok(w)
    }

    async fn read_packet(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        let mut payload = Vec::new();
        loop {
            while self.buf.len() < 4 {
                if !self.fill().await? {
                    return Ok(None);
                }
            }
            let len = usize::from(self.buf[0])
                | usize::from(self.buf[1]) << 8
                | usize::from(self.buf[2]) << 16;
            let seq = self.buf[3];
            while self.buf.len() < 4 + len {
                if !self.fill().await? {
                    return Ok(None);
                }
            }
            payload.extend_from_slice(&self.buf[4..4 + len]);
            self.buf.drain(..4 + len);
            if len < 0xFF_FFFF {
                return Ok(Some((seq, payload)));
            }
        }
    }

    async fn fill(&mut self) -> Result<bool> {
        let mut chunk = [0u8; 16384];
        let n = match self.stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            self.closed = true;
            return Ok(false);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(true)
    }

    async fn write_packet(&mut self, mut seq: u8, payload: &[u8]) -> Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 8);
        let mut chunks = payload.chunks(0xFF_FFFF).peekable();
        if payload.is_empty() {
            out.extend_from_slice(&[0, 0, 0, seq]);
        }
        while let Some(c) = chunks.next() {
            let l = c.len();
            out.extend_from_slice(&[l as u8, (l >> 8) as u8, (l >> 16) as u8, seq]);
            out.extend_from_slice(c);
            seq = seq.wrapping_add(1);
            if chunks.peek().is_none() && l == 0xFF_FFFF {
                out.extend_from_slice(&[0, 0, 0, seq]);
            }
        }
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// True once the peer closed the connection.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends one command and reads its complete answer. `kind` says how the answer is shaped.
    pub async fn command(&mut self, payload: &[u8], kind: Shape) -> Answer {
        if self.closed {
            return Answer::Closed(Vec::new());
        }
        if self.write_packet(0, payload).await.is_err() {
            self.closed = true;
            return Answer::Closed(Vec::new());
        }
        if kind == Shape::None {
            return Answer::Nothing;
        }
        match tokio::time::timeout(COMMAND_LIMIT, self.read_answer(kind)).await {
            Ok(a) => a,
            Err(_) => Answer::Timeout,
        }
    }

    async fn read_answer(&mut self, kind: Shape) -> Answer {
        let mut packets = Vec::new();
        let deprecate_eof = self.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        macro_rules! next {
            () => {
                match self.read_packet().await {
                    Ok(Some((_, p))) => {
                        packets.push(p.clone());
                        p
                    }
                    _ => return Answer::Closed(packets),
                }
            };
        }
        let is_eof = |p: &[u8]| {
            p.first() == Some(&0xFE) && p.len() < 0xFF_FFFF && (p.len() < 9 || deprecate_eof)
        };
        match kind {
            Shape::None => Answer::Nothing,
            Shape::Single => {
                next!();
                Answer::Packets(packets)
            }
            Shape::Prepare => {
                let first = next!();
                if first.first() != Some(&0x00) || first.len() < 9 {
                    return Answer::Packets(packets);
                }
                let columns = u16::from_le_bytes([first[5], first[6]]);
                let params = u16::from_le_bytes([first[7], first[8]]);
                for group in [params, columns] {
                    if group > 0 {
                        for _ in 0..group {
                            next!();
                        }
                        if !deprecate_eof {
                            next!();
                        }
                    }
                }
                Answer::Packets(packets)
            }
            Shape::Fetch => loop {
                let p = next!();
                if p.first() == Some(&0xFF) || is_eof(&p) {
                    return Answer::Packets(packets);
                }
            },
            Shape::Results => loop {
                let first = next!();
                let more = match first.first() {
                    Some(0xFF) => return Answer::Packets(packets),
                    Some(0x00) => status_of(&first).unwrap_or(0) & 0x0008 != 0,
                    _ => {
                        let mut at = 0;
                        let Some(columns) = lenenc(&first, &mut at) else {
                            return Answer::Packets(packets);
                        };
                        for _ in 0..columns {
                            next!();
                        }
                        let mut cursor = false;
                        if !deprecate_eof {
                            let eof = next!();
                            cursor = status_of(&eof).unwrap_or(0) & 0x0040 != 0;
                        }
                        if cursor {
                            false
                        } else {
                            loop {
                                let p = next!();
                                if p.first() == Some(&0xFF) {
                                    return Answer::Packets(packets);
                                }
                                if is_eof(&p) {
                                    break status_of(&p).unwrap_or(0) & 0x0008 != 0;
                                }
                            }
                        }
                    }
                };
                if !more {
                    return Answer::Packets(packets);
                }
            },
        }
    }

    /// Waits (up to [`COMMAND_LIMIT`]) for the peer to close the connection, as the server
    /// does after `COMMIT RELEASE`; true once it did.
    pub async fn await_close(&mut self) -> bool {
        let wait = async {
            while !self.closed {
                if !matches!(self.fill().await, Ok(true)) {
                    self.closed = true;
                }
            }
        };
        tokio::time::timeout(COMMAND_LIMIT, wait).await.is_ok()
    }

    /// Closes the connection politely.
    pub async fn quit(mut self) {
        let _ = self.write_packet(0, &[0x01]).await;
        let _ = self.stream.shutdown().await;
    }
}

/// How a command's answer is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// No answer.
    None,
    /// One packet (OK, ERR, EOF).
    Single,
    /// COM_QUERY / COM_STMT_EXECUTE: results, possibly several.
    Results,
    /// COM_STMT_PREPARE.
    Prepare,
    /// COM_STMT_FETCH: rows up to EOF.
    Fetch,
}
