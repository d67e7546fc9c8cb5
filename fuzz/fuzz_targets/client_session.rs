//! Everything a client sends Sluice: the login (with auth switch and TLS requests), then
//! commands of every kind with any payload. Sluice runs in-process; its database is
//! unreachable, so commands that need one are answered with an error at once. The first
//! input byte chooses whether the rest is the login itself or, after a proper login, the
//! command stream. Sluice must answer or close, never hang or panic.
#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sluice::protocol::CapabilityFlags;
use sluice::protocol::packets::HandshakeResponse;

const CONFIG: &str = r#"
listen = "127.0.0.1:0"
http_listen = ""
admin_listen = ""
log_level = "off"
handshake_timeout = "5s"
client_read_timeout = "2s"
max_allowed_packet = 1048576
[backend]
address = "127.0.0.1:1"
borrow_timeout = "1ms"
connect_timeout = "100ms"
[[users]]
username = "app"
password = "pw"
"#;

/// A Sluice running for the whole fuzzing session.
fn proxy() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let config = sluice::Config::from_toml(CONFIG, "fuzz", |_| None).expect("config");
                let proxy = sluice::Proxy::bind(config).await.expect("bind");
                let _ = tx.send(proxy.local_addr());
                proxy.run().await;
            });
        });
        rx.recv().expect("proxy address")
    })
}

fn read_packet(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).ok()?;
    let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
    let mut p = vec![0; len];
    s.read_exact(&mut p).ok()?;
    Some(p)
}

/// The 20-byte scramble of a greeting.
fn scramble(greeting: &[u8]) -> Option<Vec<u8>> {
    let at = greeting.iter().position(|&b| b == 0)? + 1;
    let mut s = greeting.get(at + 4..at + 12)?.to_vec();
    let rest = at + 12 + 1 + 2 + 1 + 2 + 2 + 1 + 10;
    s.extend_from_slice(greeting.get(rest..rest + 12)?);
    Some(s)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let Ok(mut s) = TcpStream::connect(proxy()) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let Some(greeting) = read_packet(&mut s) else {
        return;
    };
    if mode & 1 == 1 {
        let caps = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_MULTI_STATEMENTS
            | CapabilityFlags::CLIENT_MULTI_RESULTS
            | CapabilityFlags::CLIENT_DEPRECATE_EOF;
        let Some(nonce) = scramble(&greeting) else {
            return;
        };
        let auth = sluice::auth::client_response(b"mysql_native_password", &nonce, "pw")
            .expect("scramble");
        let hello = HandshakeResponse {
            capabilities: caps,
            max_packet_size: 1 << 20,
            collation: 45,
            user: b"app",
            auth_response: &auth,
            database: None,
            auth_plugin: b"mysql_native_password",
            connect_attributes: &[],
        }
        .encode();
        let mut out = sluice::protocol::frame_header(hello.len(), 1).to_vec();
        out.extend_from_slice(&hello);
        if s.write_all(&out).is_err() || read_packet(&mut s).is_none() {
            return;
        }
    }
    let _ = s.write_all(input);
    let _ = s.shutdown(std::net::Shutdown::Write);
    // Sluice answers what it can, then closes: it must not hang on a client that left.
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("sluice neither answered nor closed within 20 s")
            }
            Err(_) => break,
        }
    }
});
