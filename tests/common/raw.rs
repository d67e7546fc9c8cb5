//! A bare MySQL protocol client for tests that need exact control over the bytes: malformed
//! input, and commands high-level clients do not expose.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use sluice::protocol::CapabilityFlags;
use sluice::protocol::packets::HandshakeResponse;
use sluice::protocol::{frame_header, frame_len};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for any one packet.
pub const READ_LIMIT: Duration = Duration::from_secs(10);

/// Capabilities the raw client asks for (classic EOF packets, no session tracking).
pub fn default_caps() -> CapabilityFlags {
    CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS
}

/// One connection, speaking packets.
pub struct Raw {
    pub stream: TcpStream,
    pub greeting: Vec<u8>,
}

/// One packet as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub seq: u8,
    pub payload: Vec<u8>,
}

impl Packet {
    /// The error code if this is an ERR packet.
    pub fn err_code(&self) -> Option<u16> {
        (self.payload.first() == Some(&0xFF))
            .then(|| u16::from_le_bytes([self.payload[1], self.payload[2]]))
    }

    /// The text after the SQLSTATE of an ERR packet.
    pub fn err_message(&self) -> String {
        String::from_utf8_lossy(self.payload.get(9..).unwrap_or_default()).into_owned()
    }

    pub fn is_ok(&self) -> bool {
        self.payload.first() == Some(&0x00)
    }

    pub fn is_eof(&self) -> bool {
        self.payload.first() == Some(&0xFE) && self.payload.len() < 9
    }
}

impl Raw {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let mut raw = Raw {
            stream,
            greeting: Vec::new(),
        };
        raw.greeting = raw.read().await.expect("greeting").payload;
        assert_eq!(raw.greeting[0], 10, "protocol version");
        raw
    }

    /// The server's connection id from the greeting.
    pub fn connection_id(&self) -> u32 {
        let at = self.greeting.iter().position(|&b| b == 0).unwrap() + 1;
        u32::from_le_bytes(self.greeting[at..at + 4].try_into().unwrap())
    }

    /// The 20-byte scramble from the greeting.
    pub fn scramble(&self) -> Vec<u8> {
        let at = self.greeting.iter().position(|&b| b == 0).unwrap() + 1;
        let mut s = self.greeting[at + 4..at + 12].to_vec();
        let rest = at + 12 + 1 + 2 + 1 + 2 + 2 + 1 + 10;
        s.extend_from_slice(&self.greeting[rest..rest + 12]);
        s
    }

    /// Connects and logs in with mysql_native_password.
    pub async fn login(
        addr: SocketAddr,
        user: &str,
        password: &str,
        db: Option<&str>,
        caps: CapabilityFlags,
    ) -> Raw {
        let mut raw = Raw::connect(addr).await;
        let auth =
            sluice::auth::client_response(b"mysql_native_password", &raw.scramble(), password)
                .unwrap();
        let hello = HandshakeResponse {
            capabilities: caps,
            max_packet_size: 64 << 20,
            collation: 45,
            user: user.as_bytes(),
            auth_response: &auth,
            database: db.map(str::as_bytes),
            auth_plugin: b"mysql_native_password",
            connect_attributes: &[],
        }
        .encode();
        raw.write(1, &hello).await;
        let reply = raw.read().await.expect("login reply");
        assert!(reply.is_ok(), "login failed: {reply:?}");
        raw
    }

    /// Writes one packet (a single frame; tests keep them small unless they mean not to).
    pub async fn write(&mut self, seq: u8, payload: &[u8]) {
        let mut out = frame_header(payload.len().min(0xFF_FFFF), seq).to_vec();
        out.extend_from_slice(payload);
        self.stream.write_all(&out).await.expect("write");
    }

    /// Writes raw bytes.
    pub async fn write_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads one frame; `None` if the peer closed the connection.
    pub async fn read(&mut self) -> Option<Packet> {
        let mut h = [0u8; 4];
        match tokio::time::timeout(READ_LIMIT, self.stream.read_exact(&mut h)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return None,
            Err(_) => panic!("no packet within {READ_LIMIT:?}"),
        }
        let mut payload = vec![0u8; frame_len(&h)];
        tokio::time::timeout(READ_LIMIT, self.stream.read_exact(&mut payload))
            .await
            .ok()?
            .ok()?;
        Some(Packet { seq: h[3], payload })
    }

    /// True once the peer has closed the connection (reads EOF within the limit).
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(READ_LIMIT, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Sends a command and reads the first reply packet.
    pub async fn command(&mut self, payload: &[u8]) -> Packet {
        self.write(0, payload).await;
        self.read().await.expect("reply")
    }

    /// Sends a query and reads every packet of a classic (EOF-terminated) response.
    pub async fn query(&mut self, sql: &str) -> Vec<Packet> {
        let mut p = vec![0x03];
        p.extend_from_slice(sql.as_bytes());
        self.write(0, &p).await;
        self.read_result().await
    }

    /// Reads a whole classic response: OK, ERR, or a result set with two EOFs.
    pub async fn read_result(&mut self) -> Vec<Packet> {
        let first = self.read().await.expect("response");
        let mut out = vec![first.clone()];
        if first.is_ok() || first.err_code().is_some() {
            return out;
        }
        let mut eofs = 0;
        while eofs < 2 {
            let p = self.read().await.expect("result packet");
            if p.is_eof() {
                eofs += 1;
            }
            if p.err_code().is_some() {
                out.push(p);
                break;
            }
            out.push(p);
        }
        out
    }
}
