//! hosts.toml's `[broker]` section: where the broker is and how we talk
//! to it ([`BrokerConfig`]), read with the rest of the inventory, and the
//! `broker/NAME` known hosts key of an agent reached through it.
//!
//! The inventory holds what this reads; `crate::broker` lays `--broker`
//! over it and connects.
//!
//! ```toml
//! [broker]
//! url = "tls://broker.lab:4222"       # or a list: ["tls://b1:4222", "tls://b2:4222"]
//! subject_prefix = "rexec"            # the default
//! ca_file = "broker-ca.pem"           # relative paths are beside hosts.toml
//! creds_file = "ctl.creds"            # or user + password_file, or token_file
//! ```

use std::path::{Path, PathBuf};

use rexec_broker::{BrokerOptions, CertFingerprint, Credentials, DEFAULT_PREFIX};

/// The known hosts entry of agents reached through a broker starts with
/// this: a direct entry is `HOST:PORT` and a host name never contains a
/// `/`, so the two can never name the same line.
pub const KNOWN_HOSTS_PREFIX: &str = "broker/";

/// Where the broker is and how to talk to it, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerConfig {
    /// `nats://` or `tls://` URLs, tried in turn; empty when hosts.toml's
    /// `[broker]` names none (then only `--broker` turns broker mode on).
    pub urls: Vec<String>,
    /// The subject prefix; `None` for the default.
    pub subject_prefix: Option<String>,
    /// The CA that signed the broker's certificate.
    pub ca_file: Option<PathBuf>,
    /// The broker certificate's SHA-256 fingerprint, pinned instead of a CA.
    pub fingerprint: Option<CertFingerprint>,
    /// How we prove who we are to the broker.
    pub credentials: Credentials,
}

impl BrokerConfig {
    /// The subject prefix in use.
    pub fn prefix(&self) -> &str {
        self.subject_prefix.as_deref().unwrap_or(DEFAULT_PREFIX)
    }

    /// The known hosts key of agent `name` on this broker's prefix.
    pub fn known_hosts_key(&self, name: &str) -> String {
        known_hosts_key(self.prefix(), name)
    }
}

/// The known hosts key of agent `name` under subject prefix `prefix`:
/// `broker/NAME` for the default prefix, `broker/PREFIX/NAME` for another
/// (two prefixes on one broker are two fleets, whose names may repeat).
pub fn known_hosts_key(prefix: &str, name: &str) -> String {
    if prefix == DEFAULT_PREFIX {
        format!("{KNOWN_HOSTS_PREFIX}{name}")
    } else {
        format!("{KNOWN_HOSTS_PREFIX}{prefix}/{name}")
    }
}

/// Parses hosts.toml's `[broker]` section; relative paths are taken from
/// `base` (the file's directory). An error names the key at fault.
///
/// # Errors
/// An unknown key, a value of the wrong kind, conflicting credentials.
pub fn parse_section(value: toml::Value, base: &Path) -> Result<BrokerConfig, (String, String)> {
    let toml::Value::Table(fields) = value else {
        return Err((
            "broker".to_owned(),
            "expected a table ([broker]) of url, subject_prefix, ca_file, fingerprint, creds_file, user, password_file, token_file".to_owned(),
        ));
    };
    let mut config = BrokerConfig::default();
    let (mut creds, mut user, mut password, mut token) = (None, None, None, None);
    for (field, value) in fields {
        let at = format!("broker.{field}");
        let text = |value: toml::Value| match value {
            toml::Value::String(s) if !s.trim().is_empty() => Ok(s),
            _ => Err((at.clone(), "expected a non-empty string".to_owned())),
        };
        let path = |value: toml::Value| text(value).map(|s| file_path(&s, base));
        match field.as_str() {
            "url" => {
                let lists = match value {
                    toml::Value::String(s) => vec![s],
                    toml::Value::Array(items) => items
                        .into_iter()
                        .map(|item| match item {
                            toml::Value::String(s) => Ok(s),
                            _ => Err((at.clone(), "expected broker URLs (strings)".to_owned())),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => {
                        return Err((
                            at,
                            "expected a broker URL (\"tls://broker:4222\") or a list of them"
                                .to_owned(),
                        ));
                    }
                };
                config.urls = lists
                    .iter()
                    .flat_map(|l| BrokerOptions::split_urls(l))
                    .collect();
                if config.urls.is_empty() {
                    return Err((at, "names no broker URL".to_owned()));
                }
            }
            "subject_prefix" => {
                let prefix = text(value)?;
                rexec_broker::validate_prefix(&prefix).map_err(|e| (at.clone(), e.to_string()))?;
                config.subject_prefix = Some(prefix);
            }
            "ca_file" => config.ca_file = Some(path(value)?),
            "fingerprint" => {
                let fingerprint = text(value)?;
                config.fingerprint = Some(fingerprint.parse().map_err(
                    |e: rexec_broker::ParseCertFingerprintError| (at.clone(), e.to_string()),
                )?);
            }
            "creds_file" => creds = Some(path(value)?),
            "user" => user = Some(text(value)?),
            "password_file" => password = Some(path(value)?),
            "token_file" => token = Some(path(value)?),
            "password" | "token" => {
                return Err((
                    at,
                    format!(
                        "a secret is never written in hosts.toml: put it in a file of mode 0600 and give {field}_file"
                    ),
                ));
            }
            _ => {
                return Err((
                    at,
                    "unknown setting (a broker has url, subject_prefix, ca_file, fingerprint, creds_file, user, password_file, token_file)".to_owned(),
                ));
            }
        }
    }
    if config.ca_file.is_some() && config.fingerprint.is_some() {
        return Err((
            "broker.fingerprint".to_owned(),
            "give either ca_file or fingerprint, not both".to_owned(),
        ));
    }
    config.credentials = match (creds, user, password, token) {
        (None, None, None, None) => Credentials::None,
        (Some(file), None, None, None) => Credentials::CredsFile(file),
        (None, Some(user), Some(password_file), None) => Credentials::UserPassword {
            user,
            password_file,
        },
        (None, None, None, Some(file)) => Credentials::TokenFile(file),
        (None, Some(_), None, None) => {
            return Err((
                "broker.user".to_owned(),
                "a user needs password_file".to_owned(),
            ));
        }
        (None, None, Some(_), None) => {
            return Err((
                "broker.password_file".to_owned(),
                "a password needs a user".to_owned(),
            ));
        }
        _ => {
            return Err((
                "broker".to_owned(),
                "give one kind of broker credentials: creds_file, or user and password_file, or token_file".to_owned(),
            ));
        }
    };
    Ok(config)
}

/// A path from hosts.toml: `~/` is the home directory, a relative path is
/// beside the file.
fn file_path(text: &str, base: &Path) -> PathBuf {
    if let Some(rest) = text.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return Path::new(&home).join(rest);
    }
    base.join(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Target;

    fn parse(text: &str) -> Result<BrokerConfig, String> {
        let table: toml::Table = text.parse().unwrap();
        let value = table.get("broker").cloned().unwrap();
        parse_section(value, Path::new("/etc/lab"))
            .map_err(|(key, reason)| format!("{key}: {reason}"))
    }

    #[test]
    fn a_broker_section_reads_urls_paths_and_credentials() {
        let config = parse(
            "[broker]\nurl = [\"tls://a:4222\", \"tls://b:4222,tls://c:4222\"]\n\
             subject_prefix = \"lab.rexec\"\nca_file = \"ca.pem\"\n\
             user = \"alice\"\npassword_file = \"/secrets/pw\"\n",
        )
        .unwrap();
        assert_eq!(
            config.urls,
            ["tls://a:4222", "tls://b:4222", "tls://c:4222"]
        );
        assert_eq!(config.prefix(), "lab.rexec");
        assert_eq!(
            config.ca_file.as_deref(),
            Some(Path::new("/etc/lab/ca.pem"))
        );
        assert_eq!(
            config.credentials,
            Credentials::UserPassword {
                user: "alice".into(),
                password_file: "/secrets/pw".into()
            }
        );
        let config = parse("[broker]\nurl = \"nats://a:4222\"\ntoken_file = \"t\"\n").unwrap();
        assert_eq!(
            config.credentials,
            Credentials::TokenFile("/etc/lab/t".into())
        );
        assert_eq!(config.prefix(), "rexec");
        let fingerprint = format!("SHA256:{}", "AB:".repeat(31) + "AB");
        let config = parse(&format!("[broker]\nfingerprint = \"{fingerprint}\"\n")).unwrap();
        assert_eq!(
            config.fingerprint.map(|f| f.to_string()),
            Some(format!("sha256:{}", "ab".repeat(32)))
        );
        assert!(config.urls.is_empty());
    }

    #[test]
    fn a_bad_broker_section_is_one_line_naming_the_key() {
        for (text, message) in [
            (
                "url = 5",
                "broker.url: expected a broker URL (\"tls://broker:4222\") or a list of them",
            ),
            ("url = \" , \"", "broker.url: names no broker URL"),
            (
                "password = \"hunter2\"",
                "broker.password: a secret is never written in hosts.toml: put it in a file of mode 0600 and give password_file",
            ),
            (
                "user = \"alice\"",
                "broker.user: a user needs password_file",
            ),
            (
                "creds_file = \"a\"\ntoken_file = \"b\"",
                "broker: give one kind of broker credentials: creds_file, or user and password_file, or token_file",
            ),
            (
                "subject_prefix = \"rexec.>\"",
                "broker.subject_prefix: subject prefix \"rexec.>\" must be words of letters, digits, '-' and '_' joined by '.'",
            ),
            (
                "fingerprint = \"md5:00\"",
                "broker.fingerprint: broker fingerprint \"md5:00\" is not sha256: and 64 hex digits (the SHA-256 of the broker's certificate, as `openssl x509 -noout -fingerprint -sha256` prints it)",
            ),
            (
                "urls = \"tls://a:1\"",
                "broker.urls: unknown setting (a broker has url, subject_prefix, ca_file, fingerprint, creds_file, user, password_file, token_file)",
            ),
        ] {
            assert_eq!(parse(&format!("[broker]\n{text}\n")).unwrap_err(), message);
        }
    }

    #[test]
    fn broker_keys_cannot_meet_direct_ones() {
        assert_eq!(known_hosts_key("rexec", "labpc07"), "broker/labpc07");
        assert_eq!(
            known_hosts_key("lab.rexec", "7722"),
            "broker/lab.rexec/7722"
        );
        // An agent named like a port is still no `host:port`.
        let direct = Target::parse("broker:7722").unwrap().host_port();
        assert_ne!(known_hosts_key("rexec", "7722"), direct);
        assert!(Target::parse("broker/7722").is_err());
    }
}
