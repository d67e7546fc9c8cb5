//! Test certificates made with rcgen (aws-lc-rs): two unrelated CAs and server certificates
//! signed by the first, written as PEM files into a private directory removed on drop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A directory of PEM files:
/// - `ca.pem` (the test CA) and `other-ca.pem` (an unrelated CA);
/// - `server.pem` / `server-key.pem`: for `127.0.0.1` and `localhost`, signed by `ca.pem`;
/// - `wrong-name.pem` / `wrong-name-key.pem`: for `db.invalid` only, signed by `ca.pem`;
/// - `other-server.pem` / `other-server-key.pem`: for `127.0.0.1`, signed by `other-ca.pem`;
/// - `cacert.pem`, `client-cert.pem`, `client-key.pem`: the CA again and a client certificate,
///   under the names sysbench's `--mysql-ssl=on` reads from its working directory;
/// - `other-client-cert.pem` / `other-client-key.pem`: a client certificate signed by
///   `other-ca.pem`.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
}

fn ca(name: &str) -> Result<(CertificateParams, KeyPair, rcgen::Certificate)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((params, key, cert))
}

fn leaf(
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String)> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().copied().unwrap_or("server"),
    );
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl Pki {
    /// Makes the CAs and certificates in a fresh directory.
    pub fn generate() -> Result<Pki> {
        let dir = crate::sandbox::create_private_dir(crate::sandbox::sandbox_root()?, "pki-")?;
        let (ca_params, ca_key, ca_cert) = ca("sluice test CA")?;
        let (other_params, other_key, other_cert) = ca("some other CA")?;
        let issuer = Issuer::new(ca_params, ca_key);
        let other_issuer = Issuer::new(other_params, other_key);
        let server = ExtendedKeyUsagePurpose::ServerAuth;
        let (server_pem, server_key) = leaf(&["127.0.0.1", "localhost"], server.clone(), &issuer)?;
        let (wrong_pem, wrong_key) = leaf(&["db.invalid"], server.clone(), &issuer)?;
        let (other_pem, other_key) = leaf(&["127.0.0.1", "localhost"], server, &other_issuer)?;
        let (client_pem, client_key) = leaf(
            &["sluice-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        )?;
        let (other_client_pem, other_client_key) = leaf(
            &["other-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &other_issuer,
        )?;
        for (name, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("other-ca.pem", other_cert.pem()),
            ("server.pem", server_pem),
            ("server-key.pem", server_key),
            ("wrong-name.pem", wrong_pem),
            ("wrong-name-key.pem", wrong_key),
            ("other-server.pem", other_pem),
            ("other-server-key.pem", other_key),
            ("cacert.pem", ca_cert.pem()),
            ("client-cert.pem", client_pem),
            ("client-key.pem", client_key),
            ("other-client-cert.pem", other_client_pem),
            ("other-client-key.pem", other_client_key),
        ] {
            std::fs::write(dir.join(name), pem).with_context(|| format!("writing {name}"))?;
        }
        Ok(Pki { dir })
    }

    /// The path of one of the files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The directory holding them.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
