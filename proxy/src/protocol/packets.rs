//! Packets Sluice writes itself, as a server to clients and as a client to backends, and the
//! few client packets it parses that mysql_common has no getters for.

use super::lenenc::{self, Reader};
use super::{CapabilityFlags, StatusFlags};

/// Protocol version byte of the v10 handshake.
const PROTOCOL_VERSION: u8 = 10;

/// The initial handshake Sluice sends to a client.
pub struct Greeting<'a> {
    pub server_version: &'a str,
    pub connection_id: u32,
    pub scramble: &'a [u8; 20],
    pub capabilities: CapabilityFlags,
    pub collation: u8,
    pub status: StatusFlags,
    pub auth_plugin: &'a str,
}

impl Greeting<'_> {
    /// Encodes the HandshakeV10 payload.
    pub fn encode(&self) -> Vec<u8> {
        let caps = self.capabilities.bits();
        let mut out = Vec::with_capacity(128);
        out.push(PROTOCOL_VERSION);
        out.extend_from_slice(self.server_version.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.connection_id.to_le_bytes());
        out.extend_from_slice(&self.scramble[..8]);
        out.push(0);
        out.extend_from_slice(&(caps as u16).to_le_bytes());
        out.push(self.collation);
        out.extend_from_slice(&self.status.bits().to_le_bytes());
        out.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        // Length of the whole scramble including its trailing NUL.
        out.push(21);
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&self.scramble[8..]);
        out.push(0);
        out.extend_from_slice(self.auth_plugin.as_bytes());
        out.push(0);
        out
    }
}

/// An OK packet for a client without `CLIENT_SESSION_TRACK`.
pub fn ok(affected_rows: u64, last_insert_id: u64, status: StatusFlags, warnings: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(11);
    out.push(0x00);
    lenenc::put_int(&mut out, affected_rows);
    lenenc::put_int(&mut out, last_insert_id);
    out.extend_from_slice(&status.bits().to_le_bytes());
    out.extend_from_slice(&warnings.to_le_bytes());
    out
}

/// An ERR packet (protocol 4.1 form, with SQLSTATE).
pub fn err(code: u16, sql_state: &[u8; 5], message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + message.len());
    out.push(0xFF);
    out.extend_from_slice(&code.to_le_bytes());
    out.push(b'#');
    out.extend_from_slice(sql_state);
    out.extend_from_slice(message.as_bytes());
    out
}

/// An AuthSwitchRequest asking the client to answer for `plugin` with `scramble`.
pub fn auth_switch_request(plugin: &str, scramble: &[u8; 20]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + plugin.len() + 21);
    out.push(0xFE);
    out.extend_from_slice(plugin.as_bytes());
    out.push(0);
    out.extend_from_slice(scramble);
    out.push(0);
    out
}

/// An AuthMoreData packet (caching_sha2_password's fast-auth result, for one).
pub fn auth_more_data(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + data.len());
    out.push(0x01);
    out.extend_from_slice(data);
    out
}

/// The HandshakeResponse41 Sluice sends to a backend.
pub struct HandshakeResponse<'a> {
    pub capabilities: CapabilityFlags,
    pub max_packet_size: u32,
    pub collation: u8,
    pub user: &'a [u8],
    pub auth_response: &'a [u8],
    pub database: Option<&'a [u8]>,
    pub auth_plugin: &'a [u8],
    pub connect_attributes: &'a [(&'a str, &'a str)],
}

/// The SSL request a client sends instead of its login when it wants TLS first: the first 32
/// bytes of a login packet, with `CLIENT_SSL` set.
pub fn ssl_request(capabilities: CapabilityFlags, max_packet_size: u32, collation: u8) -> Vec<u8> {
    let caps = capabilities | CapabilityFlags::CLIENT_SSL;
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&caps.bits().to_le_bytes());
    out.extend_from_slice(&max_packet_size.to_le_bytes());
    out.push(collation);
    out.extend_from_slice(&[0; 23]);
    out
}

impl HandshakeResponse<'_> {
    /// Encodes the payload; capability bits for the optional parts are set from what is given.
    pub fn encode(&self) -> Vec<u8> {
        let mut caps = self.capabilities
            | CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;
        caps.set(
            CapabilityFlags::CLIENT_CONNECT_WITH_DB,
            self.database.is_some(),
        );
        caps.set(
            CapabilityFlags::CLIENT_CONNECT_ATTRS,
            !self.connect_attributes.is_empty(),
        );
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&caps.bits().to_le_bytes());
        out.extend_from_slice(&self.max_packet_size.to_le_bytes());
        out.push(self.collation);
        out.extend_from_slice(&[0; 23]);
        out.extend_from_slice(self.user);
        out.push(0);
        lenenc::put_bytes(&mut out, self.auth_response);
        if let Some(db) = self.database {
            out.extend_from_slice(db);
            out.push(0);
        }
        out.extend_from_slice(self.auth_plugin);
        out.push(0);
        if !self.connect_attributes.is_empty() {
            let mut attrs = Vec::new();
            for (k, v) in self.connect_attributes {
                lenenc::put_bytes(&mut attrs, k.as_bytes());
                lenenc::put_bytes(&mut attrs, v.as_bytes());
            }
            lenenc::put_bytes(&mut out, &attrs);
        }
        out
    }
}

/// The parts of a client's COM_CHANGE_USER that Sluice needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeUser<'a> {
    pub user: &'a [u8],
    pub auth_response: &'a [u8],
    pub database: &'a [u8],
    pub collation: Option<u16>,
    pub auth_plugin: Option<&'a [u8]>,
}

impl<'a> ChangeUser<'a> {
    /// Parses a COM_CHANGE_USER payload (command byte included) from a protocol-4.1 client.
    pub fn parse(payload: &'a [u8], client_caps: CapabilityFlags) -> Option<ChangeUser<'a>> {
        let mut r = Reader::new(payload);
        if r.u8()? != super::command::COM_CHANGE_USER {
            return None;
        }
        let user = r.null_terminated()?;
        let auth_response = if client_caps.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION) {
            let n = r.u8()?;
            r.take(usize::from(n))?
        } else {
            r.null_terminated()?
        };
        // Some clients end the packet right after the schema without its NUL.
        let database = match r.null_terminated() {
            Some(db) => db,
            None => r.take_rest(),
        };
        let collation = if r.is_empty() { None } else { Some(r.u16()?) };
        let auth_plugin =
            if client_caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) && !r.is_empty() {
                Some(match r.null_terminated() {
                    Some(p) => p,
                    None => r.take_rest(),
                })
            } else {
                None
            };
        Some(ChangeUser {
            user,
            auth_response,
            database,
            collation,
            auth_plugin,
        })
    }
}

/// The fields of an ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Err<'a> {
    pub code: u16,
    pub sql_state: [u8; 5],
    pub message: &'a [u8],
}

impl<'a> Err<'a> {
    /// Parses an ERR payload (0xFF header) from a protocol-4.1 peer.
    pub fn parse(payload: &'a [u8]) -> Option<Err<'a>> {
        let mut r = Reader::new(payload);
        if r.u8()? != 0xFF {
            return None;
        }
        let code = r.u16()?;
        let mut sql_state = *b"HY000";
        if r.rest().first() == Some(&b'#') {
            r.u8()?;
            sql_state.copy_from_slice(r.take(5)?);
        }
        Some(Err {
            code,
            sql_state,
            message: r.take_rest(),
        })
    }

    /// The message as text, for logs and errors.
    pub fn message_lossy(&self) -> String {
        String::from_utf8_lossy(self.message).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_common::io::ParseBuf;
    use mysql_common::packets::HandshakePacket;

    #[test]
    fn greeting_parses_with_mysql_common() {
        let scramble = *b"abcdefghijklmnopqrst";
        let caps = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_DEPRECATE_EOF;
        let bytes = Greeting {
            server_version: "8.0.40-sluice",
            connection_id: 77,
            scramble: &scramble,
            capabilities: caps,
            collation: 45,
            status: StatusFlags::SERVER_STATUS_AUTOCOMMIT,
            auth_plugin: "mysql_native_password",
        }
        .encode();
        let parsed: HandshakePacket<'_> = ParseBuf(&bytes).parse(()).unwrap();
        assert_eq!(parsed.connection_id(), 77);
        assert_eq!(parsed.nonce(), scramble.to_vec());
        assert_eq!(parsed.capabilities(), caps);
        assert_eq!(parsed.server_version_str(), "8.0.40-sluice");
        assert_eq!(
            parsed.auth_plugin_name_ref(),
            Some(&b"mysql_native_password"[..])
        );
    }

    #[test]
    fn change_user_parses_and_rejects_garbage() {
        let caps = CapabilityFlags::CLIENT_SECURE_CONNECTION | CapabilityFlags::CLIENT_PLUGIN_AUTH;
        let mut p = vec![0x11];
        p.extend_from_slice(b"bob\0");
        p.push(3);
        p.extend_from_slice(b"xyz");
        p.extend_from_slice(b"db1\0");
        p.extend_from_slice(&45u16.to_le_bytes());
        p.extend_from_slice(b"mysql_native_password\0");
        let cu = ChangeUser::parse(&p, caps).unwrap();
        assert_eq!(cu.user, b"bob");
        assert_eq!(cu.auth_response, b"xyz");
        assert_eq!(cu.database, b"db1");
        assert_eq!(cu.collation, Some(45));
        assert_eq!(cu.auth_plugin, Some(&b"mysql_native_password"[..]));
        for cut in 1..9 {
            assert!(ChangeUser::parse(&p[..cut], caps).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn err_round_trip() {
        let bytes = err(1045, b"28000", "Access denied");
        let e = Err::parse(&bytes).unwrap();
        assert_eq!(
            (e.code, &e.sql_state, e.message),
            (1045, b"28000", &b"Access denied"[..])
        );
        assert!(Err::parse(&[0xFF, 1]).is_none());
    }
}
