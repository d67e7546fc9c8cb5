//! MySQL wire format: framing, the packets Sluice writes, and what it reads from the ones it relays.
//!
//! Sluice relays server packets byte for byte and parses only what it must (DESIGN.md, "The data
//! path"): packet boundaries, the first byte of each response packet, OK/EOF status flags and
//! session-state changes.

pub mod codec;
pub mod lenenc;
pub mod ok;
pub mod packets;
pub mod relay;
pub mod response;
pub mod transport;

pub use mysql_common::constants::{CapabilityFlags, StatusFlags};

/// The largest payload one frame can carry; a packet of this size or more continues in the next frame.
pub const MAX_FRAME: usize = 0xFF_FFFF;

/// Bytes in a frame header: 3 for the payload length, 1 for the sequence id.
pub const HEADER_LEN: usize = 4;

/// Command bytes a client sends as the first byte of a command packet.
pub mod command {
    pub const COM_SLEEP: u8 = 0x00;
    pub const COM_QUIT: u8 = 0x01;
    pub const COM_INIT_DB: u8 = 0x02;
    pub const COM_QUERY: u8 = 0x03;
    pub const COM_FIELD_LIST: u8 = 0x04;
    pub const COM_CREATE_DB: u8 = 0x05;
    pub const COM_DROP_DB: u8 = 0x06;
    pub const COM_REFRESH: u8 = 0x07;
    pub const COM_SHUTDOWN: u8 = 0x08;
    pub const COM_STATISTICS: u8 = 0x09;
    pub const COM_PROCESS_INFO: u8 = 0x0a;
    pub const COM_CONNECT: u8 = 0x0b;
    pub const COM_PROCESS_KILL: u8 = 0x0c;
    pub const COM_DEBUG: u8 = 0x0d;
    pub const COM_PING: u8 = 0x0e;
    pub const COM_TIME: u8 = 0x0f;
    pub const COM_DELAYED_INSERT: u8 = 0x10;
    pub const COM_CHANGE_USER: u8 = 0x11;
    pub const COM_BINLOG_DUMP: u8 = 0x12;
    pub const COM_TABLE_DUMP: u8 = 0x13;
    pub const COM_CONNECT_OUT: u8 = 0x14;
    pub const COM_REGISTER_SLAVE: u8 = 0x15;
    pub const COM_STMT_PREPARE: u8 = 0x16;
    pub const COM_STMT_EXECUTE: u8 = 0x17;
    pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const COM_STMT_CLOSE: u8 = 0x19;
    pub const COM_STMT_RESET: u8 = 0x1a;
    pub const COM_SET_OPTION: u8 = 0x1b;
    pub const COM_STMT_FETCH: u8 = 0x1c;
    pub const COM_DAEMON: u8 = 0x1d;
    pub const COM_BINLOG_DUMP_GTID: u8 = 0x1e;
    pub const COM_RESET_CONNECTION: u8 = 0x1f;

    /// A name for logs and errors.
    pub fn name(byte: u8) -> &'static str {
        match byte {
            COM_SLEEP => "COM_SLEEP",
            COM_QUIT => "COM_QUIT",
            COM_INIT_DB => "COM_INIT_DB",
            COM_QUERY => "COM_QUERY",
            COM_FIELD_LIST => "COM_FIELD_LIST",
            COM_CREATE_DB => "COM_CREATE_DB",
            COM_DROP_DB => "COM_DROP_DB",
            COM_REFRESH => "COM_REFRESH",
            COM_SHUTDOWN => "COM_SHUTDOWN",
            COM_PROCESS_INFO => "COM_PROCESS_INFO",
            COM_CONNECT => "COM_CONNECT",
            COM_DEBUG => "COM_DEBUG",
            COM_TIME => "COM_TIME",
            COM_DELAYED_INSERT => "COM_DELAYED_INSERT",
            COM_BINLOG_DUMP => "COM_BINLOG_DUMP",
            COM_TABLE_DUMP => "COM_TABLE_DUMP",
            COM_CONNECT_OUT => "COM_CONNECT_OUT",
            COM_REGISTER_SLAVE => "COM_REGISTER_SLAVE",
            COM_DAEMON => "COM_DAEMON",
            COM_BINLOG_DUMP_GTID => "COM_BINLOG_DUMP_GTID",
            COM_STATISTICS => "COM_STATISTICS",
            COM_PROCESS_KILL => "COM_PROCESS_KILL",
            COM_PING => "COM_PING",
            COM_CHANGE_USER => "COM_CHANGE_USER",
            COM_STMT_PREPARE => "COM_STMT_PREPARE",
            COM_STMT_EXECUTE => "COM_STMT_EXECUTE",
            COM_STMT_SEND_LONG_DATA => "COM_STMT_SEND_LONG_DATA",
            COM_STMT_CLOSE => "COM_STMT_CLOSE",
            COM_STMT_RESET => "COM_STMT_RESET",
            COM_SET_OPTION => "COM_SET_OPTION",
            COM_STMT_FETCH => "COM_STMT_FETCH",
            COM_RESET_CONNECTION => "COM_RESET_CONNECTION",
            _ => "unknown command",
        }
    }
}

/// Reads the 3-byte little-endian payload length of a frame header.
#[inline]
pub fn frame_len(header: &[u8; 4]) -> usize {
    usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16
}

/// Writes a frame header for `len` payload bytes (at most [`MAX_FRAME`]) and sequence id `seq`.
#[inline]
pub fn frame_header(len: usize, seq: u8) -> [u8; 4] {
    debug_assert!(len <= MAX_FRAME);
    [len as u8, (len >> 8) as u8, (len >> 16) as u8, seq]
}

/// Appends `payload` to `out` as one logical packet starting at sequence id `seq`, split into
/// frames as the protocol requires. Returns the next sequence id.
pub fn put_packet(out: &mut Vec<u8>, mut seq: u8, payload: &[u8]) -> u8 {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_FRAME);
        out.extend_from_slice(&frame_header(n, seq));
        out.extend_from_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        // A packet whose last frame is full needs an empty frame to end it.
        if n < MAX_FRAME {
            return seq;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = frame_header(0x12_3456, 7);
        assert_eq!(frame_len(&h), 0x12_3456);
        assert_eq!(h[3], 7);
    }

    #[test]
    fn put_packet_splits_large_payloads() {
        let payload = vec![1u8; MAX_FRAME + 10];
        let mut out = Vec::new();
        let next = put_packet(&mut out, 3, &payload);
        assert_eq!(next, 5);
        assert_eq!(out.len(), payload.len() + 8);
        let first: [u8; 4] = out[..4].try_into().unwrap();
        assert_eq!(frame_len(&first), MAX_FRAME);
        let second: [u8; 4] = out[4 + MAX_FRAME..8 + MAX_FRAME].try_into().unwrap();
        assert_eq!(frame_len(&second), 10);
        assert_eq!(second[3], 4);

        let mut exact = Vec::new();
        assert_eq!(put_packet(&mut exact, 0, &vec![0u8; MAX_FRAME]), 2);
        assert_eq!(
            exact.len(),
            MAX_FRAME + 8,
            "a full last frame is followed by an empty one"
        );
    }
}
