//! Where the diff store lives (`server.diff_store`, `strangler report --db`): a SQLite file or a
//! Postgres database shared by replicas, and which replica writes.
//!
//! Owns parsing a location, showing it without its password (every log line, error and
//! `/routes` document goes through [`StoreLocation`]'s `Display`/`Serialize`, which redact), and
//! naming the replica. It does not connect: see [`super::postgres`] and [`super::DiffStore`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::tls::TlsSettings;

/// Shown instead of a password.
const HIDDEN: &str = "****";

/// A diff store: a SQLite file (any path) or a Postgres database (`postgres://…` or
/// `postgresql://…`).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(PostgresUrl),
}

/// A Postgres connection URL, checked when parsed. Its password (if it has one) is never
/// shown: `Display` and `Debug` print [`PostgresUrl::redacted`].
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    /// As written (what is shown, redacted).
    url: String,
    /// What the client library parses: `url` without the TLS parameters it does not know.
    client_url: String,
    /// `sslmode` and `sslrootcert`, applied by [`super::tls::connector`].
    tls: TlsSettings,
    /// A password from outside the URL (a file or the environment), given by
    /// [`PostgresUrl::with_password`]; never shown.
    password: Option<String>,
}

impl PostgresUrl {
    /// The URL with its password (in the user part or a `password=` parameter) replaced.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }

    /// The URL's `sslmode` and `sslrootcert`.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// Whether the URL carries a password itself (or was given one).
    pub fn has_password(&self) -> bool {
        self.password.is_some() || redact_url(&self.url) != self.url
    }

    /// This URL with `password` to use when the URL has none: for code that reads a store
    /// through functions that take no password file (the report, from the viewer).
    pub fn with_password(mut self, password: Option<String>) -> Self {
        if redact_url(&self.url) == self.url {
            self.password = password;
        }
        self
    }

    /// The client configuration; `password` (from a file or the environment) is used when the
    /// URL has none.
    pub fn config(&self, password: Option<&str>) -> postgres::Config {
        let mut config: postgres::Config = self.client_url.parse().expect("checked when parsed");
        if config.get_password().is_none()
            && let Some(password) = password.or(self.password.as_deref())
        {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            // A database that does not answer must not hold the store writer for long: while
            // it waits, exchanges are dropped (and counted), not queued.
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("strangler");
        }
        config
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresUrl({})", self.redacted())
    }
}

/// `url` with the password of its user part and of a `password=` query parameter hidden.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user, hosts)) => match user.split_once(':') {
            Some((name, _password)) => format!("{name}:{HIDDEN}@{hosts}"),
            None => format!("{user}@{hosts}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                        format!("{name}={HIDDEN}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

impl StoreLocation {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }
}

impl FromStr for StoreLocation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let lower = text.get(..13).unwrap_or(text).to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            let (client_url, tls) = super::tls::split(text).map_err(|error| {
                format!(
                    "`{}` is not a valid Postgres URL: {error}",
                    redact_url(text)
                )
            })?;
            return match client_url.parse::<postgres::Config>() {
                Ok(config) if config.get_hosts().is_empty() => Err(format!(
                    "`{}` names no host: write postgres://USER@HOST:PORT/DATABASE",
                    redact_url(text)
                )),
                Ok(_) => Ok(Self::Postgres(PostgresUrl {
                    url: text.to_owned(),
                    client_url,
                    tls,
                    password: None,
                })),
                // The parser's message never repeats the URL, so it cannot leak the password.
                Err(error) => Err(format!(
                    "`{}` is not a valid Postgres URL: {error}",
                    redact_url(text)
                )),
            };
        }
        if text.trim().is_empty() {
            return Err("an empty diff store: write a file path or a postgres:// URL".into());
        }
        Ok(Self::Sqlite(PathBuf::from(text)))
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
            Self::Postgres(url) => write!(f, "{url:?}"),
        }
    }
}

impl From<&str> for StoreLocation {
    /// For defaults and tests; panics on an invalid Postgres URL.
    fn from(text: &str) -> Self {
        text.parse().expect("a valid diff store")
    }
}

impl Serialize for StoreLocation {
    /// Redacted: the live config (`GET /routes`) shows where diffs go, never the password.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StoreLocation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The name this process writes its rows under: `server.replica`, else `STRANGLER_REPLICA`,
/// else the host name (a pod's name in Kubernetes), else `unknown`.
pub fn replica_name(configured: Option<&str>) -> String {
    configured
        .map(str::to_owned)
        .or_else(|| std::env::var("STRANGLER_REPLICA").ok())
        .filter(|name| !name.trim().is_empty())
        .or_else(|| {
            gethostname::gethostname()
                .into_string()
                .ok()
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_password_is_never_shown() {
        let location: StoreLocation = "postgres://strangler:s3cret@db.internal:5432/diffs"
            .parse()
            .unwrap();
        let shown = location.to_string();
        assert_eq!(shown, "postgres://strangler:****@db.internal:5432/diffs");
        assert!(!format!("{location:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&location).unwrap().contains("s3cret"));
        let StoreLocation::Postgres(url) = &location else {
            panic!("{location:?}")
        };
        assert!(url.has_password());
        assert_eq!(url.config(None).get_password(), Some(&b"s3cret"[..]));

        let query = "postgresql://app@db/diffs?sslmode=disable&password=hunter2";
        let location: StoreLocation = query.parse().unwrap();
        assert_eq!(
            location.to_string(),
            "postgresql://app@db/diffs?sslmode=disable&password=****"
        );
        let error = "postgres://u:hunter2@db/x?connect_timeout=soon"
            .parse::<StoreLocation>()
            .unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains("connect_timeout"), "{error}");
    }

    #[test]
    fn a_password_from_outside_the_url_is_used_only_when_the_url_has_none() {
        let StoreLocation::Postgres(url) = "postgres://app@db/diffs".parse().unwrap() else {
            panic!()
        };
        assert!(!url.has_password());
        assert_eq!(url.config(Some("file")).get_password(), Some(&b"file"[..]));
        let given = url.clone().with_password(Some("given".into()));
        assert!(given.has_password());
        assert_eq!(given.config(None).get_password(), Some(&b"given"[..]));
        assert!(!format!("{given:?}").contains("given"));
        assert_eq!(
            url.config(None).get_connect_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_for_the_connector() {
        let text = "postgres://app:pw@db/diffs?sslmode=verify-full&sslrootcert=/etc/ca.pem";
        let StoreLocation::Postgres(url) = text.parse().unwrap() else {
            panic!()
        };
        assert_eq!(url.tls().mode, super::super::tls::SslMode::VerifyFull);
        assert_eq!(
            url.to_string(),
            "postgres://app:****@db/diffs?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            "shown as written"
        );
        assert_eq!(
            url.config(None).get_ssl_mode(),
            postgres::config::SslMode::Require
        );
        let error = "postgres://app:pw@db/diffs?sslmode=yes"
            .parse::<StoreLocation>()
            .unwrap_err();
        assert!(
            error.contains("sslmode `yes`") && !error.contains("pw@"),
            "{error}"
        );
    }

    #[test]
    fn anything_else_is_a_sqlite_file() {
        assert_eq!(
            "strangler-diffs.db".parse::<StoreLocation>().unwrap(),
            StoreLocation::Sqlite("strangler-diffs.db".into())
        );
        assert_eq!(
            "/var/lib/postgres/x.db".parse::<StoreLocation>().unwrap(),
            StoreLocation::Sqlite("/var/lib/postgres/x.db".into())
        );
        assert!("".parse::<StoreLocation>().is_err());
    }

    #[test]
    fn the_replica_is_configured_or_the_host_name() {
        assert_eq!(replica_name(Some("pod-1")), "pod-1");
        assert!(!replica_name(None).is_empty());
    }
}
