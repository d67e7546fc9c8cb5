//! Password authentication, both as a server (checking clients) and as a client (logging in to
//! backends): scrambles for mysql_native_password and caching_sha2_password, MariaDB's ed25519
//! signatures, the RSA step of caching_sha2's full authentication, and what a database
//! account's stored mysql_native_password hash allows.

use std::collections::HashSet;
use std::sync::Mutex;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA1_MGF1SHA1, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use base64::Engine as _;
use mysql_common::scramble::{create_response_for_ed25519, scramble_native, scramble_sha256};

use crate::config::AuthPluginName;

/// Plugin name of mysql_native_password.
pub const NATIVE: &str = "mysql_native_password";
/// Plugin name of caching_sha2_password.
pub const CACHING_SHA2: &str = "caching_sha2_password";
/// Client plugin name of MariaDB's ed25519.
pub const ED25519: &str = "client_ed25519";
/// Plugin name of the clear-text password plugin.
pub const CLEAR_PASSWORD: &str = "mysql_clear_password";
/// Length of the nonce MariaDB's ed25519 signs (its `NONCE_BYTES`).
pub const ED25519_NONCE_LEN: usize = 32;

/// caching_sha2_password's AuthMoreData byte for "fast authentication succeeded".
pub const FAST_AUTH_OK: u8 = 0x03;
/// caching_sha2_password's AuthMoreData byte for "send the password in full".
pub const PERFORM_FULL_AUTH: u8 = 0x04;
/// caching_sha2_password's request for the server's RSA public key.
pub const REQUEST_PUBLIC_KEY: u8 = 0x02;

/// Why logging in to a backend failed before the server gave its verdict.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the server asks for authentication plugin {0:?}, which Sluice does not speak")]
    UnsupportedPlugin(String),
    #[error("the server's RSA public key is unusable")]
    BadPublicKey,
    #[error("the operating system's random number generator failed")]
    NoRandomness,
    #[error(
        "the server asks for the password in clear (mysql_clear_password) on a connection \
         without TLS; Sluice does not send it"
    )]
    ClearTextWithoutTls,
    #[error(
        "the server asks for an RDS IAM token on a connection whose TLS certificate was not \
         verified; Sluice sends tokens only with backend.tls = verify-ca or verify-identity"
    )]
    TokenWithoutVerifiedTls,
    #[error(
        "the server asks for plugin {0:?}; for a database account Sluice knows only the \
         mysql_native_password hash, which answers nothing else"
    )]
    NeedsPassword(String),
}

/// A fresh 20-byte scramble for a handshake. Bytes are printable ASCII without NUL or `$`, as
/// MySQL's own, because some clients treat the scramble as a C string. Fails only if the
/// operating system has no entropy to give, and then no login should proceed.
pub fn new_scramble() -> Result<[u8; 20], AuthError> {
    printable_nonce::<20>()
}

fn printable_nonce<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut raw = [0u8; N];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| AuthError::NoRandomness)?;
    Ok(raw.map(|b| {
        let c = 0x21 + b % 0x5E;
        if c == b'$' { b'#' } else { c }
    }))
}

/// The nonce a client of `plugin` answers: the connection's scramble, except for ed25519,
/// which signs 32 fresh bytes (printable, so no client trims a trailing NUL off them).
pub fn challenge(plugin: AuthPluginName, scramble: &[u8; 20]) -> Result<Vec<u8>, AuthError> {
    match plugin {
        AuthPluginName::Ed25519 => Ok(printable_nonce::<ED25519_NONCE_LEN>()?.to_vec()),
        AuthPluginName::ClearPassword => Ok(Vec::new()),
        _ => Ok(scramble.to_vec()),
    }
}

/// An AuthSwitchRequest asking for `plugin` with `nonce`. Scrambles go NUL-terminated, as
/// MySQL sends them; ed25519's nonce must arrive as exactly 32 bytes.
pub fn switch_request(plugin: AuthPluginName, nonce: &[u8]) -> Vec<u8> {
    let name = plugin.as_str();
    let mut out = Vec::with_capacity(3 + name.len() + nonce.len());
    out.push(0xFE);
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.extend_from_slice(nonce);
    if matches!(
        plugin,
        AuthPluginName::MysqlNativePassword | AuthPluginName::CachingSha2Password
    ) {
        out.push(0);
    }
    out
}

/// Checks a client's auth response for `plugin` to `nonce` against the password Sluice knows.
/// ed25519 signatures are deterministic, so the expected one is computed and compared, as the
/// scrambles are.
pub fn verify(plugin: AuthPluginName, nonce: &[u8], password: &str, response: &[u8]) -> bool {
    let expected: Option<Vec<u8>> = match plugin {
        AuthPluginName::MysqlNativePassword => {
            scramble_native(nonce, password.as_bytes()).map(|s| s.to_vec())
        }
        AuthPluginName::CachingSha2Password => {
            scramble_sha256(nonce, password.as_bytes()).map(|s| s.to_vec())
        }
        AuthPluginName::Ed25519 => {
            if nonce.len() != ED25519_NONCE_LEN {
                return false;
            }
            Some(create_response_for_ed25519(password.as_bytes(), nonce).to_vec())
        }
        // Not a scramble: checked by whoever knows what the clear text must be.
        AuthPluginName::ClearPassword => return false,
    };
    match expected {
        // An empty password is answered with an empty response.
        None => response.is_empty(),
        Some(expected) => constant_time_eq(&expected, response),
    }
}

/// SHA-1 of `parts`, concatenated.
fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 20];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// SHA1(password): what a mysql_native_password client proves it knows, and all Sluice needs
/// to answer a server's mysql_native_password challenge on the account's behalf.
#[derive(Clone, PartialEq, Eq)]
pub struct NativeProof([u8; 20]);

impl std::fmt::Debug for NativeProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NativeProof(***)")
    }
}

impl NativeProof {
    /// The response to a server's `nonce`: SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw))).
    pub fn response(&self, nonce: &[u8]) -> Vec<u8> {
        let stored = sha1(&[&self.0]);
        let mask = sha1(&[nonce, &stored]);
        self.0.iter().zip(mask).map(|(a, b)| a ^ b).collect()
    }
}

/// Parses the `authentication_string` of a mysql_native_password account: `*` and 40 hex
/// digits of SHA1(SHA1(password)).
pub fn parse_native_hash(text: &str) -> Option<[u8; 20]> {
    let hex = text.strip_prefix('*')?;
    if hex.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Checks a client's mysql_native_password `response` to `nonce` against the account's stored
/// hash, and returns SHA1(password) when it proves it: the response XOR SHA1(nonce + stored)
/// must hash to the stored value.
pub fn verify_native_hash(nonce: &[u8], stored: &[u8; 20], response: &[u8]) -> Option<NativeProof> {
    if response.len() != 20 {
        return None;
    }
    let mask = sha1(&[nonce, stored]);
    let mut candidate = [0u8; 20];
    for ((c, r), m) in candidate.iter_mut().zip(response).zip(mask) {
        *c = r ^ m;
    }
    constant_time_eq(&sha1(&[&candidate]), stored).then_some(NativeProof(candidate))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The auth response Sluice sends to a backend that asked for `plugin` with `nonce`.
pub fn client_response(plugin: &[u8], nonce: &[u8], password: &str) -> Result<Vec<u8>, AuthError> {
    let pw = password.as_bytes();
    match plugin {
        b"mysql_native_password" => Ok(scramble_native(nonce, pw)
            .map(|s| s.to_vec())
            .unwrap_or_default()),
        b"caching_sha2_password" => Ok(scramble_sha256(nonce, pw)
            .map(|s| s.to_vec())
            .unwrap_or_default()),
        b"client_ed25519" => Ok(create_response_for_ed25519(pw, nonce).to_vec()),
        b"mysql_clear_password" => {
            // The caller checks the transport first (see BackendSecret::response).
            let mut v = pw.to_vec();
            v.push(0);
            Ok(v)
        }
        other => Err(AuthError::UnsupportedPlugin(
            String::from_utf8_lossy(other).into_owned(),
        )),
    }
}

/// caching_sha2_password full authentication without TLS: the NUL-terminated password XORed
/// with the nonce, encrypted with RSA-OAEP (SHA-1) under the server's public key (PEM).
pub fn encrypt_password(
    password: &str,
    nonce: &[u8],
    public_key_pem: &[u8],
) -> Result<Vec<u8>, AuthError> {
    if nonce.is_empty() {
        return Err(AuthError::BadPublicKey);
    }
    let der = pem_to_der(public_key_pem).ok_or(AuthError::BadPublicKey)?;
    let key = PublicEncryptingKey::from_der(&der).map_err(|_| AuthError::BadPublicKey)?;
    let key = OaepPublicEncryptingKey::new(key).map_err(|_| AuthError::BadPublicKey)?;
    let mut plain: Vec<u8> = password.bytes().chain(std::iter::once(0)).collect();
    for (i, b) in plain.iter_mut().enumerate() {
        *b ^= nonce[i % nonce.len()];
    }
    let mut out = vec![0u8; key.ciphertext_size()];
    let n = key
        .encrypt(&OAEP_SHA1_MGF1SHA1, &plain, &mut out, None)
        .map_err(|_| AuthError::BadPublicKey)?
        .len();
    out.truncate(n);
    Ok(out)
}

/// The RSA key pair Sluice shows caching_sha2 clients that ask for a public key to send their
/// password under, when they have no TLS (MySQL's `caching_sha2_password_public_key_path`).
pub struct ServerRsaKey {
    private: OaepPrivateDecryptingKey,
    public_pem: Vec<u8>,
}

impl std::fmt::Debug for ServerRsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerRsaKey")
    }
}

impl ServerRsaKey {
    /// A fresh 2048-bit key, made at start and never written anywhere.
    pub fn generate() -> Result<ServerRsaKey, AuthError> {
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048)
            .map_err(|_| AuthError::NoRandomness)?;
        let der = private
            .public_key()
            .as_der()
            .map_err(|_| AuthError::BadPublicKey)?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        let private =
            OaepPrivateDecryptingKey::new(private).map_err(|_| AuthError::BadPublicKey)?;
        Ok(ServerRsaKey {
            private,
            public_pem: pem.into_bytes(),
        })
    }

    /// The public key in PEM, as clients expect it.
    pub fn public_pem(&self) -> &[u8] {
        &self.public_pem
    }

    /// The password a client encrypted with [`encrypt_password`]'s scheme, if it decrypts.
    pub fn decrypt_password(&self, cipher: &[u8], scramble: &[u8]) -> Option<Vec<u8>> {
        if scramble.is_empty() {
            return None;
        }
        let mut out = vec![0u8; self.private.min_output_size()];
        let plain = self
            .private
            .decrypt(&OAEP_SHA1_MGF1SHA1, cipher, &mut out, None)
            .ok()?;
        let mut clear: Vec<u8> = plain
            .iter()
            .zip(scramble.iter().cycle())
            .map(|(b, s)| b ^ s)
            .collect();
        (clear.pop() == Some(0)).then_some(clear)
    }
}

/// The users whose current password passed a caching_sha2 full authentication since start,
/// like MySQL's server-side cache: until then, a login must send the password in full.
#[derive(Debug, Default)]
pub struct Sha2Cache {
    // (user, SHA-256 of the password): a rotated password is a different entry.
    entries: Mutex<HashSet<(String, [u8; 32])>>,
}

/// Entries kept before the cache starts over.
const SHA2_CACHE_MAX: usize = 100_000;

impl Sha2Cache {
    fn entry(user: &str, password: &str) -> (String, [u8; 32]) {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, password.as_bytes());
        let mut h = [0u8; 32];
        h.copy_from_slice(d.as_ref());
        (user.to_string(), h)
    }

    /// True if `user` with `password` passed a full authentication.
    pub fn contains(&self, user: &str, password: &str) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&Self::entry(user, password))
    }

    /// Records a full authentication.
    pub fn insert(&self, user: &str, password: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= SHA2_CACHE_MAX {
            entries.clear();
        }
        entries.insert(Self::entry(user, password));
    }
}

/// Decodes the body of a PEM `PUBLIC KEY` block.
fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.trim().chars())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrambles_are_printable_and_fresh() {
        let a = new_scramble().unwrap();
        let b = new_scramble().unwrap();
        assert_ne!(a, b);
        assert!(a.iter().all(|&c| (0x21..0x7F).contains(&c) && c != b'$'));
    }

    #[test]
    fn verifies_both_plugins() {
        let s = new_scramble().unwrap();
        for plugin in [
            AuthPluginName::MysqlNativePassword,
            AuthPluginName::CachingSha2Password,
        ] {
            let name = plugin.as_str().as_bytes();
            let good = client_response(name, &s, "pw").unwrap();
            assert!(verify(plugin, &s, "pw", &good));
            assert!(!verify(plugin, &s, "other", &good));
            assert!(!verify(plugin, &s, "pw", &good[1..]));
            assert!(!verify(plugin, &s, "pw", b""));
            assert!(verify(plugin, &s, "", b""));
            assert!(!verify(plugin, &s, "", &good));
        }
    }

    #[test]
    fn ed25519_matches_mariadb() {
        // A public key as MariaDB stores it: SELECT ed25519_password('secret') in MariaDB
        // 10.11 gives this base64 (43 characters, the '=' dropped).
        let pk = "ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY";
        let padded = format!("{pk}=");
        let pk = base64::engine::general_purpose::STANDARD
            .decode(padded)
            .unwrap();
        let nonce = [7u8; ED25519_NONCE_LEN];
        let sig = client_response(b"client_ed25519", &nonce, "secret").unwrap();
        assert_eq!(sig.len(), 64);
        // The signature verifies under MariaDB's key (standard Ed25519 verification).
        let key = aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, &pk);
        key.verify(&nonce, &sig).unwrap();
        assert!(key.verify(&[8u8; ED25519_NONCE_LEN], &sig).is_err());
        assert!(verify(AuthPluginName::Ed25519, &nonce, "secret", &sig));
        assert!(!verify(AuthPluginName::Ed25519, &nonce, "Secret", &sig));
        assert!(!verify(
            AuthPluginName::Ed25519,
            &nonce[..20],
            "secret",
            &sig
        ));
        assert!(!verify(
            AuthPluginName::Ed25519,
            &nonce,
            "secret",
            &sig[..63]
        ));
    }

    #[test]
    fn challenges_and_switch_requests() {
        let s = new_scramble().unwrap();
        let c = challenge(AuthPluginName::Ed25519, &s).unwrap();
        assert_eq!(c.len(), 32);
        assert!(c.iter().all(|&b| b != 0));
        assert_ne!(c, challenge(AuthPluginName::Ed25519, &s).unwrap());
        assert_eq!(
            challenge(AuthPluginName::MysqlNativePassword, &s).unwrap(),
            s
        );
        let p = switch_request(AuthPluginName::Ed25519, &c);
        assert_eq!(p.len(), 1 + "client_ed25519".len() + 1 + 32);
        let p = switch_request(AuthPluginName::MysqlNativePassword, &s);
        assert_eq!(p.last(), Some(&0));
        assert_eq!(
            switch_request(AuthPluginName::ClearPassword, &[]),
            b"\xFEmysql_clear_password\0"
        );
    }

    #[test]
    fn native_hash_proves_and_answers() {
        // PASSWORD('pw') in MySQL and MariaDB.
        let stored = parse_native_hash("*D821809F681A40A6E379B50D0463EFAE20BDD122").unwrap();
        let s = new_scramble().unwrap();
        let response = client_response(b"mysql_native_password", &s, "pw").unwrap();
        let proof = verify_native_hash(&s, &stored, &response).unwrap();
        // What the proof answers to another nonce is what the password answers.
        let other = new_scramble().unwrap();
        assert_eq!(
            proof.response(&other),
            client_response(b"mysql_native_password", &other, "pw").unwrap()
        );
        let wrong = client_response(b"mysql_native_password", &s, "pW").unwrap();
        assert!(verify_native_hash(&s, &stored, &wrong).is_none());
        assert!(verify_native_hash(&s, &stored, &response[..19]).is_none());
        assert!(verify_native_hash(&other, &stored, &response).is_none());
        for bad in [
            "",
            "*",
            "D821809F681A40A6E379B50D0463EFAE20BDD122",
            "*zz21809F681A40A6E379B50D0463EFAE20BDD122",
            "*D821809F681A40A6E379B50D0463EFAE20BDD1",
        ] {
            assert!(parse_native_hash(bad).is_none(), "{bad}");
        }
        assert!(!format!("{proof:?}").contains("D8"));
    }

    #[test]
    fn server_key_decrypts_what_clients_encrypt() {
        let key = ServerRsaKey::generate().unwrap();
        let nonce = b"01234567890123456789";
        let cipher = encrypt_password("s3cret", nonce, key.public_pem()).unwrap();
        assert_eq!(key.decrypt_password(&cipher, nonce).unwrap(), b"s3cret");
        assert!(
            key.decrypt_password(&cipher, b"another nonce 123456")
                .is_none()
        );
        assert!(key.decrypt_password(b"garbage", nonce).is_none());
        assert!(key.decrypt_password(&cipher, b"").is_none());
    }

    #[test]
    fn sha2_cache_tracks_user_and_password() {
        let c = Sha2Cache::default();
        assert!(!c.contains("app", "pw"));
        c.insert("app", "pw");
        assert!(c.contains("app", "pw"));
        assert!(!c.contains("app", "new"));
        assert!(!c.contains("other", "pw"));
    }

    #[test]
    fn rsa_encryption_rejects_garbage_keys() {
        assert!(encrypt_password("pw", b"nonce", b"not a key").is_err());
        assert!(encrypt_password("pw", b"", b"").is_err());
    }

    #[test]
    fn rsa_encryption_decrypts_to_the_xored_password() {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey};
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let public_der = private.public_key().as_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(public_der.as_ref());
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
        let nonce = b"01234567890123456789";
        let cipher = encrypt_password("secret", nonce, pem.as_bytes()).unwrap();
        let private = OaepPrivateDecryptingKey::new(private).unwrap();
        let mut out = vec![0u8; private.min_output_size()];
        let plain = private
            .decrypt(&OAEP_SHA1_MGF1SHA1, &cipher, &mut out, None)
            .unwrap();
        let clear: Vec<u8> = plain
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ nonce[i % nonce.len()])
            .collect();
        assert_eq!(clear, b"secret\0");
    }
}
