//! The serde model of `server.listen` (plain and TLS listeners) and of an upstream's `tls` and
//! `protocol`: plain data, as written. Loading certificate files and judging them (expiry, a key
//! that does not match) is [`crate::tls`]'s job.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::schema::HumanDuration;

/// Where the proxy accepts client traffic: one address (`0.0.0.0:8080`), one listener, or a list
/// of them; each plain or TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct Listeners(pub Vec<ListenerConfig>);

impl Listeners {
    /// One plain listener on `address`.
    pub fn plain(address: SocketAddr) -> Self {
        Self(vec![ListenerConfig {
            address,
            tls: None,
            h2c: false,
            proxy_protocol: false,
        }])
    }

    /// The first listener's address: the one the pid file and the demo are named after.
    pub fn primary(&self) -> SocketAddr {
        self.0
            .first()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 8080)), |l| l.address)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ListenerConfig> {
        self.0.iter()
    }

    /// What takes a restart: the addresses and what each speaks (TLS or not, h2c). Certificates
    /// and handshake limits apply on reload, so they are not part of it.
    pub fn restart_key(&self) -> Vec<(SocketAddr, bool, bool, bool)> {
        self.0
            .iter()
            .map(|l| (l.address, l.tls.is_some(), l.h2c, l.proxy_protocol))
            .collect()
    }
}

impl fmt::Display for Listeners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, listener) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", listener.address)?;
            if listener.tls.is_some() {
                f.write_str(" (tls)")?;
            }
        }
        Ok(())
    }
}

/// One address the proxy listens on.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port` to bind.
    pub address: SocketAddr,
    /// Terminate TLS here (TLS 1.2 and 1.3; ALPN `h2` and `http/1.1`). Absent: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsConfig>,
    /// On a plain listener, also accept HTTP/2 with prior knowledge (h2c). TLS listeners
    /// negotiate HTTP/2 with ALPN instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub h2c: bool,
    /// Connections from `server.trusted_proxies` start with a PROXY protocol v2 header (AWS
    /// NLB, GCP TCP proxy, HAProxy `send-proxy-v2`) naming the real client, read before TLS.
    /// Connections from other peers are taken as direct.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
}

/// A TLS listener's certificates and handshake limits. Certificate files are read at start, on
/// every reload and whenever one of them changes on disk; new files are checked (readable, not
/// expired, key matching) before they are served, else the previous ones keep serving.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Certificates chosen by the name the client asks for (SNI); the first also answers
    /// clients that send no name or an unknown one.
    #[schemars(length(min = 1))]
    pub certificates: Vec<CertificateConfig>,
    /// Longest a client may take to complete its TLS handshake; then the connection is closed.
    #[serde(
        with = "humantime_serde",
        default = "default_handshake_timeout",
        skip_serializing_if = "is_default_handshake_timeout"
    )]
    #[schemars(with = "HumanDuration")]
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once on this listener (they cost CPU); more connections
    /// are closed at once and counted.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The certificate chain, leaf first (PEM), e.g. cert-manager's `tls.crt`.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1), e.g. `tls.key`.
    pub key: PathBuf,
    /// Host names this certificate is chosen for (`*.example.com` allowed). Absent: the DNS
    /// names the certificate itself lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn is_default_handshake_timeout(value: &Duration) -> bool {
    *value == default_handshake_timeout()
}

fn default_max_handshakes() -> usize {
    1024
}

fn parse_address<E: de::Error>(value: &str) -> Result<ListenerConfig, E> {
    let address = value.parse::<SocketAddr>().map_err(|_| {
        E::custom(format!(
            "`{value}` is not an address: write ip:port, like 0.0.0.0:8080"
        ))
    })?;
    Ok(ListenerConfig {
        address,
        tls: None,
        h2c: false,
        proxy_protocol: false,
    })
}

/// One entry of `listen`: an address, or a listener written out.
struct Entry(ListenerConfig);

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = Entry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address like 0.0.0.0:8080, or { address, tls, h2c }")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Entry, E> {
                parse_address(value).map(Entry)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Entry, A::Error> {
                ListenerConfig::deserialize(de::value::MapAccessDeserializer::new(map)).map(Entry)
            }
        }
        deserializer.deserialize_any(EntryVisitor)
    }
}

impl<'de> Deserialize<'de> for Listeners {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListenVisitor;
        impl<'de> Visitor<'de> for ListenVisitor {
            type Value = Listeners;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an address like 0.0.0.0:8080, a listener { address, tls }, or a list of them",
                )
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Listeners, E> {
                parse_address(value).map(|listener| Listeners(vec![listener]))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Listeners, A::Error> {
                ListenerConfig::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|listener| Listeners(vec![listener]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Listeners, A::Error> {
                let mut listeners = Vec::new();
                while let Some(Entry(listener)) = seq.next_element()? {
                    listeners.push(listener);
                }
                if listeners.is_empty() {
                    return Err(de::Error::custom("lists no listener"));
                }
                Ok(Listeners(listeners))
            }
        }
        deserializer.deserialize_any(ListenVisitor)
    }
}

impl Serialize for Listeners {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The old single-address form stays what `GET /routes` shows for a plain listener.
        if let [only] = self.0.as_slice()
            && only.tls.is_none()
            && !only.h2c
            && !only.proxy_protocol
        {
            return only.address.serialize(serializer);
        }
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for listener in &self.0 {
            if listener.tls.is_none() && !listener.h2c && !listener.proxy_protocol {
                seq.serialize_element(&listener.address)?;
            } else {
                seq.serialize_element(listener)?;
            }
        }
        seq.end()
    }
}

impl JsonSchema for Listeners {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Listeners".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let listener = generator.subschema_for::<ListenerConfig>();
        schemars::json_schema!({
            "anyOf": [
                { "type": "string" },
                listener,
                {
                    "type": "array",
                    "minItems": 1,
                    "items": { "anyOf": [ { "type": "string" }, listener ] }
                }
            ]
        })
    }
}

/// How strangler talks to an upstream's backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (over TLS when `tls` is set).
    #[default]
    H1,
    /// HTTP/2; needs `tls` (negotiated with ALPN).
    H2,
    /// HTTP/2 over plain TCP with prior knowledge; no `tls`.
    H2c,
}

impl UpstreamProtocol {
    pub fn is_default(&self) -> bool {
        *self == Self::H1
    }
}

/// TLS to an upstream's backends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// The name sent as SNI and checked against the backend's certificate. Absent: the host
    /// of the first backend (`orders.internal` of `orders.internal:443`), or its IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Check the backend's certificate (chain and name). Turning it off is for tests only.
    #[serde(default = "default_verify")]
    pub verify: bool,
    /// CA certificates (PEM) to trust instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM) to present, for backends that require mTLS; with
    /// `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

fn default_verify() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Listeners, String> {
        serde_yaml::from_str::<Listeners>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn the_old_single_address_form_is_one_plain_listener() {
        let listeners = parse("127.0.0.1:8080").unwrap();
        assert_eq!(
            listeners,
            Listeners::plain("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            serde_yaml::to_string(&listeners).unwrap().trim(),
            "127.0.0.1:8080"
        );
    }

    #[test]
    fn a_list_mixes_plain_addresses_and_tls_listeners() {
        let listeners = parse(
            "- 0.0.0.0:8080\n- address: 0.0.0.0:8443\n  tls:\n    certificates: [{cert: a.crt, key: a.key}]\n",
        )
        .unwrap();
        assert_eq!(listeners.0.len(), 2);
        let tls = listeners.0[1].tls.as_ref().unwrap();
        assert_eq!(tls.certificates[0].cert, PathBuf::from("a.crt"));
        assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
        let again = parse(&serde_yaml::to_string(&listeners).unwrap()).unwrap();
        assert_eq!(again, listeners);
    }

    #[test]
    fn a_bad_address_is_named_in_the_error() {
        let error = parse("- localhost").unwrap_err();
        assert!(error.contains("`localhost` is not an address"), "{error}");
        let error = parse("[]").unwrap_err();
        assert!(error.contains("no listener"), "{error}");
    }
}
