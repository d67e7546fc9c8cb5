//! What Sluice reads from a database server: its greeting, the authentication exchange (auth
//! switch, caching_sha2 fast/full paths, public key), OK/ERR packets, and the result sets of
//! the session-tracking setup it runs right after login. The input is everything the "server"
//! sends over a real loopback connection.
#![no_main]

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sluice::backend::{Connector, PoolKey, Route};
use sluice::config::Secret;
use sluice::protocol::CapabilityFlags;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reply = data.to_vec();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(&reply);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut sink = [0u8; 4096];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
    let stats = Arc::new(sluice::Stats::default());
    let connector = Connector::new(addr.to_string(), Duration::from_secs(5), 1 << 20, 8, stats);
    let key = PoolKey {
        user: Arc::from("app"),
        caps: CapabilityFlags::CLIENT_DEPRECATE_EOF,
        collation: 45,
        route: Route::Writer,
    };
    let _ = runtime().block_on(connector.open(&key, &Secret::new("pw").into(), Some("db")));
    let _ = server.join();
});
