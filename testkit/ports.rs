//! Free loopback ports.

use std::net::{Ipv4Addr, TcpListener};

/// A loopback TCP port that was free a moment ago.
///
/// The port is released before returning, so another process may take it first: callers that
/// start a server on it should retry with a fresh port when binding fails.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("cannot bind an ephemeral port on 127.0.0.1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
