//! The text result sets the admin console answers with: column definitions with real MySQL
//! types (so clients convert values as they would a server's), text rows, and the terminators
//! for clients with and without `CLIENT_DEPRECATE_EOF`.

use crate::protocol::{StatusFlags, lenenc, put_packet};

/// MySQL column types the console uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// MYSQL_TYPE_LONGLONG, unsigned: counts, ids.
    UnsignedLongLong,
    /// MYSQL_TYPE_DOUBLE: seconds.
    Double,
    /// MYSQL_TYPE_VAR_STRING, utf8mb4: text.
    VarString,
}

/// A column: its name and type.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

impl Column {
    /// An unsigned BIGINT column.
    pub fn count(name: &str) -> Self {
        Column {
            name: name.to_string(),
            ty: ColumnType::UnsignedLongLong,
        }
    }

    /// A DOUBLE column.
    pub fn double(name: &str) -> Self {
        Column {
            name: name.to_string(),
            ty: ColumnType::Double,
        }
    }

    /// A text column.
    pub fn text(name: &str) -> Self {
        Column {
            name: name.to_string(),
            ty: ColumnType::VarString,
        }
    }
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    UInt(u64),
    Double(f64),
    Text(String),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::UInt(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::UInt(v as u64)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::UInt(u64::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Double(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// A result set to send.
#[derive(Debug, Clone)]
pub struct ResultSet {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Value>>,
}

/// utf8mb4_general_ci, for text columns.
const UTF8MB4: u16 = 45;
/// The binary collation numeric columns carry.
const BINARY: u16 = 63;

const NOT_NULL_FLAG: u16 = 1;
const UNSIGNED_FLAG: u16 = 32;
const BINARY_FLAG: u16 = 128;
const NUM_FLAG: u16 = 32768;

/// Decimals value meaning "not fixed" (a DOUBLE printed as it comes).
const NOT_FIXED_DEC: u8 = 31;

impl ResultSet {
    /// An empty result set with these columns.
    pub fn new(columns: Vec<Column>) -> Self {
        ResultSet {
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing values are NULL, extra ones dropped).
    pub fn push(&mut self, mut row: Vec<Value>) {
        row.resize(self.columns.len(), Value::Null);
        self.rows.push(row);
    }

    /// The framed packets of the whole response, sequence ids from 1. With `deprecate_eof`
    /// (the client has `CLIENT_DEPRECATE_EOF`) no EOF follows the columns and an OK packet
    /// with the EOF header ends the rows.
    pub fn encode(&self, deprecate_eof: bool, status: StatusFlags) -> Vec<u8> {
        let mut out = Vec::new();
        let mut seq = 1u8;
        let mut count = Vec::new();
        lenenc::put_int(&mut count, self.columns.len() as u64);
        seq = put_packet(&mut out, seq, &count);
        for (i, c) in self.columns.iter().enumerate() {
            let nullable = self.rows.iter().any(|r| r.get(i) == Some(&Value::Null));
            seq = put_packet(&mut out, seq, &column_definition(c, nullable));
        }
        if !deprecate_eof {
            seq = put_packet(&mut out, seq, &eof(status));
        }
        for row in &self.rows {
            let mut payload = Vec::new();
            for v in row {
                match v {
                    Value::Null => payload.push(0xFB),
                    Value::UInt(n) => lenenc::put_bytes(&mut payload, n.to_string().as_bytes()),
                    Value::Double(d) => {
                        let text = if d.is_finite() {
                            format!("{d:.3}")
                        } else {
                            "0".to_string()
                        };
                        lenenc::put_bytes(&mut payload, text.as_bytes())
                    }
                    Value::Text(t) => lenenc::put_bytes(&mut payload, t.as_bytes()),
                }
            }
            seq = put_packet(&mut out, seq, &payload);
        }
        if deprecate_eof {
            let mut ok = vec![0xFE];
            lenenc::put_int(&mut ok, 0);
            lenenc::put_int(&mut ok, 0);
            ok.extend_from_slice(&status.bits().to_le_bytes());
            ok.extend_from_slice(&0u16.to_le_bytes());
            put_packet(&mut out, seq, &ok);
        } else {
            put_packet(&mut out, seq, &eof(status));
        }
        out
    }
}

fn eof(status: StatusFlags) -> Vec<u8> {
    let mut p = vec![0xFE, 0, 0];
    p.extend_from_slice(&status.bits().to_le_bytes());
    p
}

/// A ColumnDefinition41 packet.
fn column_definition(c: &Column, nullable: bool) -> Vec<u8> {
    let (charset, length, ty, mut flags, decimals): (u16, u32, u8, u16, u8) = match c.ty {
        ColumnType::UnsignedLongLong => {
            (BINARY, 20, 0x08, UNSIGNED_FLAG | BINARY_FLAG | NUM_FLAG, 0)
        }
        ColumnType::Double => (BINARY, 22, 0x05, BINARY_FLAG | NUM_FLAG, NOT_FIXED_DEC),
        // 1024 characters of up to 4 bytes.
        ColumnType::VarString => (UTF8MB4, 4096, 0xFD, 0, 0),
    };
    if !nullable {
        flags |= NOT_NULL_FLAG;
    }
    let mut p = Vec::with_capacity(32 + 2 * c.name.len());
    lenenc::put_bytes(&mut p, b"def");
    lenenc::put_bytes(&mut p, b"");
    lenenc::put_bytes(&mut p, b"");
    lenenc::put_bytes(&mut p, b"");
    lenenc::put_bytes(&mut p, c.name.as_bytes());
    lenenc::put_bytes(&mut p, c.name.as_bytes());
    p.push(0x0C);
    p.extend_from_slice(&charset.to_le_bytes());
    p.extend_from_slice(&length.to_le_bytes());
    p.push(ty);
    p.extend_from_slice(&flags.to_le_bytes());
    p.push(decimals);
    p.extend_from_slice(&[0, 0]);
    p
}

/// An OK packet with a human-readable info text. Servers send the text length-encoded (as
/// MySQL's `net_store_data` does), and clients read it so, session tracking or not.
pub fn ok_with_info(status: StatusFlags, info: &str) -> Vec<u8> {
    let mut p = crate::protocol::packets::ok(0, 0, status, 0);
    if !info.is_empty() {
        lenenc::put_bytes(&mut p, info.as_bytes());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame_len;
    use mysql_common::io::ParseBuf;
    use mysql_common::packets::Column as MyColumn;

    /// Splits framed bytes into (seq, payload) pairs.
    fn packets(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while bytes.len() >= 4 {
            let h: [u8; 4] = bytes[..4].try_into().unwrap();
            let len = frame_len(&h);
            out.push((h[3], bytes[4..4 + len].to_vec()));
            bytes = &bytes[4 + len..];
        }
        assert!(bytes.is_empty());
        out
    }

    fn sample() -> ResultSet {
        let mut rs = ResultSet::new(vec![
            Column::text("user"),
            Column::count("sessions"),
            Column::double("idle_seconds"),
        ]);
        rs.push(vec!["app".into(), 3u64.into(), 1.5f64.into()]);
        rs.push(vec![Value::Null, 0u64.into()]);
        rs
    }

    #[test]
    fn classic_result_set_has_eof_packets_and_typed_columns() {
        let bytes = sample().encode(false, StatusFlags::SERVER_STATUS_AUTOCOMMIT);
        let p = packets(&bytes);
        // count, 3 columns, EOF, 2 rows, EOF
        assert_eq!(p.len(), 8);
        assert_eq!(
            p.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (1..=8).collect::<Vec<_>>()
        );
        assert_eq!(p[0].1, vec![3]);
        let col: MyColumn = ParseBuf(&p[2].1).parse(()).unwrap();
        assert_eq!(col.name_str(), "sessions");
        assert_eq!(
            col.column_type(),
            mysql_common::constants::ColumnType::MYSQL_TYPE_LONGLONG
        );
        assert!(
            col.flags()
                .contains(mysql_common::constants::ColumnFlags::UNSIGNED_FLAG)
        );
        let col: MyColumn = ParseBuf(&p[3].1).parse(()).unwrap();
        assert_eq!(
            col.column_type(),
            mysql_common::constants::ColumnType::MYSQL_TYPE_DOUBLE
        );
        assert!(
            !col.flags()
                .contains(mysql_common::constants::ColumnFlags::NOT_NULL_FLAG),
            "a NULL appears in it"
        );
        assert_eq!(p[4].1[0], 0xFE);
        assert_eq!(p[5].1, b"\x03app\x013\x051.500".to_vec());
        assert_eq!(p[6].1, b"\xFB\x010\xFB".to_vec());
        assert_eq!(p[7].1[0], 0xFE);
    }

    #[test]
    fn deprecate_eof_ends_with_an_ok_packet() {
        let bytes = sample().encode(true, StatusFlags::SERVER_STATUS_AUTOCOMMIT);
        let p = packets(&bytes);
        assert_eq!(p.len(), 7, "no EOF after the columns");
        let last = &p[6].1;
        assert_eq!(last[0], 0xFE);
        assert!(last.len() >= 7, "an OK packet, not a 5-byte EOF");
    }

    #[test]
    fn ok_carries_its_info() {
        let p = ok_with_info(StatusFlags::SERVER_STATUS_AUTOCOMMIT, "paused");
        assert!(p.ends_with(b"\x06paused"));
        assert_eq!(p[0], 0);
        let ok: mysql_common::packets::OkPacket<'_> = ParseBuf(&p)
            .parse(mysql_common::constants::CapabilityFlags::CLIENT_PROTOCOL_41)
            .map(
                |d: mysql_common::packets::OkPacketDeserializer<
                    '_,
                    mysql_common::packets::CommonOkPacket,
                >| d.into_inner(),
            )
            .unwrap();
        assert_eq!(ok.info_ref(), Some(&b"paused"[..]));
        assert_eq!(ok_with_info(StatusFlags::empty(), "").len(), 7);
    }
}
