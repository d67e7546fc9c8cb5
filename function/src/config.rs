//! Configuration from the environment, parsed once at init into [`Config`].
//!
//! | variable | meaning |
//! |---|---|
//! | `AUTH_MODE` | `secret` (default): log in with the secret's password; `iam`: with an IAM token |
//! | `SECRET_ARN` | the Secrets Manager secret (RDS format: `username`, `password`, `dbname`...) |
//! | `DB_USER` | IAM mode: the database user Sluice maps the function's role to |
//! | `SLUICE_AUDIENCE` | IAM mode: the audience of the Sluice (its `iam.audience`) |
//! | `PROXY_ENDPOINT` | Sluice: `host`, `host:port` or `[ipv6]:port`; port 3306 by default |
//! | `DB_NAME` | the database for the `Customer` table; default: the secret's `dbname` |
//! | `DB_TLS` | `off` (default) or `required`: TLS to the proxy, certificate and name verified |
//! | `DB_TLS_CA_FILE` | PEM bundle to trust instead of the built-in web roots (with `required`) |
//! | `DB_TLS_CA_PEM` | the same bundle given as text (a Lambda package holds no extra files) |
//!
//! IAM mode needs `DB_NAME` and `DB_TLS=required` (the token is a password sent in clear), and
//! no `SECRET_ARN`. Tokens are signed for STS in `AWS_REGION`, at `AWS_ENDPOINT_URL_STS` or
//! `AWS_ENDPOINT_URL` when set (the host Sluice sends them to), else the regional endpoint.
//!
//! Tests build a [`Config`] directly or through [`Config::from_lookup`]; nothing here reads
//! the process environment except [`Config::from_env`].

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;

/// The MySQL port used when `PROXY_ENDPOINT` names none.
pub const DEFAULT_PORT: u16 = 3306;
/// How long the first connection to the proxy may take (TCP, TLS, login).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections each function instance may hold: Lambda runs one invocation at a time per
/// instance, so one connection serves them all. With more, an invocation that follows the
/// previous one closely opens a second connection while the first is still being reset.
pub const DEFAULT_POOL_MAX: usize = 1;

/// Everything the function needs besides the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// ARN (or name) of the database secret; empty in IAM mode.
    pub secret_arn: String,
    /// IAM mode: log in with an IAM token instead of a secret.
    pub iam: Option<IamMode>,
    /// Host name or IP address of the proxy.
    pub proxy_host: String,
    /// TCP port of the proxy.
    pub proxy_port: u16,
    /// Database for the `Customer` table; `None` takes the secret's `dbname`.
    pub db_name: Option<String>,
    /// TLS to the proxy.
    pub tls: DbTls,
    /// `DB_TLS_CA_PEM`: certificates to trust, given as text instead of a file.
    pub tls_ca_pem: Option<String>,
    /// Limit for opening one connection (TCP connect, TLS and login).
    pub connect_timeout: Duration,
    /// Most connections the instance's pool opens.
    pub pool_max: usize,
}

/// IAM mode's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamMode {
    /// The database user (`DB_USER`).
    pub db_user: String,
    /// The Sluice's audience (`SLUICE_AUDIENCE`).
    pub audience: String,
    /// `host[:port]` of STS from `AWS_ENDPOINT_URL_STS`/`AWS_ENDPOINT_URL`; `None`: regional.
    pub sts_host: Option<String>,
    /// `AWS_REGION`; `None`: from the AWS configuration at init.
    pub region: Option<String>,
}

/// Whether and how the function speaks TLS to the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbTls {
    /// Plain TCP (`DB_TLS=off`, the default).
    Off,
    /// TLS is required; the proxy's certificate must chain to `ca_file` (or, without one, to
    /// the built-in web PKI roots) and name the proxy's host.
    Required {
        /// PEM file with the certificates to trust (`DB_TLS_CA_FILE`).
        ca_file: Option<PathBuf>,
    },
}

impl Config {
    /// A configuration with the defaults for everything but the secret and the proxy.
    pub fn new(secret_arn: impl Into<String>, proxy_host: impl Into<String>, port: u16) -> Config {
        Config {
            secret_arn: secret_arn.into(),
            iam: None,
            proxy_host: proxy_host.into(),
            proxy_port: port,
            db_name: None,
            tls: DbTls::Off,
            tls_ca_pem: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_max: DEFAULT_POOL_MAX,
        }
    }

    /// Reads the process environment (see the module documentation).
    pub fn from_env() -> Result<Config, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `lookup`; an empty value counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let iam_mode = match get("AUTH_MODE").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("secret") => false,
            Some("iam") => true,
            Some(other) => {
                return Err(Error::Config(format!(
                    "AUTH_MODE is `{other}`; expected `secret` or `iam`"
                )));
            }
        };
        let secret_arn = match (iam_mode, get("SECRET_ARN")) {
            (false, Some(arn)) => arn,
            (false, None) => return Err(Error::Config("SECRET_ARN is not set".to_owned())),
            (true, None) => String::new(),
            (true, Some(_)) => {
                return Err(Error::Config(
                    "SECRET_ARN is set but AUTH_MODE is iam, which reads no secret; unset one"
                        .to_owned(),
                ));
            }
        };
        let endpoint = get("PROXY_ENDPOINT")
            .ok_or_else(|| Error::Config("PROXY_ENDPOINT is not set".to_owned()))?;
        let (proxy_host, proxy_port) = parse_endpoint(&endpoint)?;
        let ca_file = get("DB_TLS_CA_FILE").map(PathBuf::from);
        let tls_ca_pem = get("DB_TLS_CA_PEM");
        if tls_ca_pem.is_some() && ca_file.is_some() {
            return Err(Error::Config(
                "DB_TLS_CA_FILE and DB_TLS_CA_PEM are both set; use one".to_owned(),
            ));
        }
        let tls = match get("DB_TLS").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("off") => {
                if tls_ca_pem.is_some() {
                    return Err(Error::Config(
                        "DB_TLS_CA_PEM is set but DB_TLS is off; set DB_TLS=required".to_owned(),
                    ));
                }
                if let Some(ca) = ca_file {
                    return Err(Error::Config(format!(
                        "DB_TLS_CA_FILE is set ({}) but DB_TLS is off; set DB_TLS=required",
                        ca.display()
                    )));
                }
                DbTls::Off
            }
            Some("required") => DbTls::Required { ca_file },
            Some(other) => {
                return Err(Error::Config(format!(
                    "DB_TLS is `{other}`; expected `off` or `required`"
                )));
            }
        };
        let db_name = get("DB_NAME");
        let iam = if iam_mode {
            let need = |name: &str| {
                get(name).ok_or_else(|| Error::Config(format!("AUTH_MODE=iam needs {name}")))
            };
            let db_user = need("DB_USER")?;
            let audience = need("SLUICE_AUDIENCE")?;
            if db_name.is_none() {
                return Err(Error::Config(
                    "AUTH_MODE=iam needs DB_NAME (there is no secret to name it)".to_owned(),
                ));
            }
            if tls == DbTls::Off {
                return Err(Error::Config(
                    "AUTH_MODE=iam needs DB_TLS=required: the token is sent as a clear-text \
                     password"
                        .to_owned(),
                ));
            }
            let sts_host = match get("AWS_ENDPOINT_URL_STS").or_else(|| get("AWS_ENDPOINT_URL")) {
                Some(url) => Some(url_authority(&url).ok_or_else(|| {
                    Error::Config(format!(
                        "AWS_ENDPOINT_URL `{url}` is not http(s)://host[:port]"
                    ))
                })?),
                None => None,
            };
            Some(IamMode {
                db_user,
                audience,
                sts_host,
                region: get("AWS_REGION"),
            })
        } else {
            None
        };
        Ok(Config {
            db_name,
            tls,
            tls_ca_pem,
            iam,
            ..Config::new(secret_arn, proxy_host, proxy_port)
        })
    }

    /// The database user, for messages: IAM mode's `DB_USER`, else unknown until the secret
    /// is read.
    pub fn iam_user(&self) -> Option<&str> {
        self.iam.as_ref().map(|m| m.db_user.as_str())
    }

    /// `host:port` of the proxy, for messages and logs (IPv6 addresses in brackets).
    pub fn endpoint(&self) -> String {
        if self.proxy_host.contains(':') {
            format!("[{}]:{}", self.proxy_host, self.proxy_port)
        } else {
            format!("{}:{}", self.proxy_host, self.proxy_port)
        }
    }
}

/// `host[:port]` of `http(s)://host[:port][/]`, with `:443`/`:80` dropped as SigV4 signs it.
fn url_authority(url: &str) -> Option<String> {
    let (rest, default) = match url.strip_prefix("https://") {
        Some(r) => (r, ":443"),
        None => (url.strip_prefix("http://")?, ":80"),
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains(['@', '?', '#', ' ']) {
        return None;
    }
    Some(
        authority
            .strip_suffix(default)
            .unwrap_or(authority)
            .to_ascii_lowercase(),
    )
}

/// Splits `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
fn parse_endpoint(endpoint: &str) -> Result<(String, u16), Error> {
    let bad = |why: &str| {
        Error::Config(format!(
            "PROXY_ENDPOINT `{endpoint}` {why}; expected host or host:port"
        ))
    };
    let (host, port) = if let Some(rest) = endpoint.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("has no closing `]`"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("has text after `]`"))?,
                ),
            ),
        }
    } else {
        match endpoint.matches(':').count() {
            0 => (endpoint, None),
            1 => {
                let (host, port) = endpoint.split_once(':').unwrap_or((endpoint, ""));
                (host, Some(port))
            }
            // More than one colon and no brackets: an IPv6 address without a port.
            _ => (endpoint, None),
        }
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if host.contains('/') || host.chars().any(char::is_whitespace) {
        return Err(bad("is not a host name"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(bad("has an invalid port")),
        },
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, Error> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| vars.get(k).cloned())
    }

    fn message(r: Result<Config, Error>) -> String {
        match r {
            Err(e @ Error::Config(_)) => e.to_string(),
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_environment_gets_defaults() {
        let c = parse(&[("SECRET_ARN", "arn:x"), ("PROXY_ENDPOINT", "proxy.local")]).unwrap();
        assert_eq!(c, Config::new("arn:x", "proxy.local", 3306));
        assert_eq!(c.tls, DbTls::Off);
        assert_eq!(c.db_name, None);
        assert_eq!(c.endpoint(), "proxy.local:3306");
    }

    #[test]
    fn endpoints() {
        for (text, host, port) in [
            ("h:3307", "h", 3307),
            ("10.0.0.1", "10.0.0.1", 3306),
            ("[::1]:4000", "::1", 4000),
            ("[fe80::1]", "fe80::1", 3306),
            ("fe80::1", "fe80::1", 3306),
            (
                " nlb.elb.amazonaws.com:3306 ",
                "nlb.elb.amazonaws.com",
                3306,
            ),
        ] {
            let c = parse(&[("SECRET_ARN", "a"), ("PROXY_ENDPOINT", text)]).unwrap();
            assert_eq!(
                (c.proxy_host.as_str(), c.proxy_port),
                (host, port),
                "{text}"
            );
        }
        let c = parse(&[("SECRET_ARN", "a"), ("PROXY_ENDPOINT", "[::1]:4000")]).unwrap();
        assert_eq!(c.endpoint(), "[::1]:4000");
    }

    #[test]
    fn bad_endpoints_are_named() {
        for text in [
            "h:0", "h:x", "h:70000", ":3306", "[::1", "[::1]x", "a b", "h:",
        ] {
            let m = message(parse(&[("SECRET_ARN", "a"), ("PROXY_ENDPOINT", text)]));
            assert!(
                m.contains("PROXY_ENDPOINT") && m.contains(text),
                "{text}: {m}"
            );
        }
    }

    #[test]
    fn missing_variables_are_named() {
        assert!(message(parse(&[("PROXY_ENDPOINT", "h")])).contains("SECRET_ARN"));
        assert!(
            message(parse(&[("SECRET_ARN", "a"), ("PROXY_ENDPOINT", " ")]))
                .contains("PROXY_ENDPOINT")
        );
    }

    #[test]
    fn tls_settings() {
        let base = [("SECRET_ARN", "a"), ("PROXY_ENDPOINT", "h")];
        let with = |extra: &[(&str, &str)]| {
            let mut vars = base.to_vec();
            vars.extend_from_slice(extra);
            parse(&vars)
        };
        assert_eq!(with(&[("DB_TLS", "off")]).unwrap().tls, DbTls::Off);
        assert_eq!(
            with(&[("DB_TLS", "Required")]).unwrap().tls,
            DbTls::Required { ca_file: None }
        );
        assert_eq!(
            with(&[("DB_TLS", "required"), ("DB_TLS_CA_FILE", "/opt/ca.pem")])
                .unwrap()
                .tls,
            DbTls::Required {
                ca_file: Some(PathBuf::from("/opt/ca.pem"))
            }
        );
        let m = message(with(&[("DB_TLS", "yes")]));
        assert!(m.contains("DB_TLS") && m.contains("yes"), "{m}");
        let m = message(with(&[("DB_TLS_CA_FILE", "/opt/ca.pem")]));
        assert!(
            m.contains("DB_TLS_CA_FILE") && m.contains("DB_TLS is off"),
            "{m}"
        );
    }

    #[test]
    fn iam_mode() {
        let base = [
            ("AUTH_MODE", "iam"),
            ("PROXY_ENDPOINT", "h"),
            ("DB_USER", "app"),
            ("SLUICE_AUDIENCE", "sluice-prod"),
            ("DB_NAME", "shop"),
            ("DB_TLS", "required"),
            ("AWS_REGION", "eu-west-1"),
        ];
        let c = parse(&base).unwrap();
        assert_eq!(
            c.iam,
            Some(IamMode {
                db_user: "app".into(),
                audience: "sluice-prod".into(),
                sts_host: None,
                region: Some("eu-west-1".into()),
            })
        );
        assert_eq!(c.secret_arn, "");
        let mut local = base.to_vec();
        local.push(("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"));
        assert_eq!(
            parse(&local).unwrap().iam.unwrap().sts_host.as_deref(),
            Some("127.0.0.1:5000")
        );
        local.push(("AWS_ENDPOINT_URL_STS", "https://STS.vpce.example:443/"));
        assert_eq!(
            parse(&local).unwrap().iam.unwrap().sts_host.as_deref(),
            Some("sts.vpce.example")
        );
        for (drop, words) in [
            ("DB_USER", "DB_USER"),
            ("SLUICE_AUDIENCE", "SLUICE_AUDIENCE"),
            ("DB_NAME", "DB_NAME"),
            ("DB_TLS", "DB_TLS=required"),
        ] {
            let vars: Vec<_> = base.iter().copied().filter(|(k, _)| *k != drop).collect();
            let m = message(parse(&vars));
            assert!(m.contains(words), "{drop}: {m}");
        }
        let mut both = base.to_vec();
        both.push(("SECRET_ARN", "arn"));
        assert!(message(parse(&both)).contains("SECRET_ARN is set"));
        let mut odd = base.to_vec();
        odd[0] = ("AUTH_MODE", "kerberos");
        assert!(message(parse(&odd)).contains("AUTH_MODE"));
        let mut pem = base.to_vec();
        pem.push((
            "DB_TLS_CA_PEM",
            "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----",
        ));
        assert!(parse(&pem).unwrap().tls_ca_pem.is_some());
        pem.push(("DB_TLS_CA_FILE", "/ca.pem"));
        assert!(message(parse(&pem)).contains("both set"));
        let mut bad_url = base.to_vec();
        bad_url.push(("AWS_ENDPOINT_URL", "ftp://x"));
        assert!(message(parse(&bad_url)).contains("AWS_ENDPOINT_URL"));
    }

    #[test]
    fn db_name_is_optional() {
        let c = parse(&[
            ("SECRET_ARN", "a"),
            ("PROXY_ENDPOINT", "h"),
            ("DB_NAME", "shop"),
        ])
        .unwrap();
        assert_eq!(c.db_name.as_deref(), Some("shop"));
    }
}
