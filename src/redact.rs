//! Secrets kept out of everything strangler stores, shows or sends to a candidate: the query
//! parameters named in `server.redact`, and client credentials on shadow copies.
//!
//! Redaction happens where the data is captured (a shadow exchange's request line is redacted
//! before it is queued for comparison), so no later reader (the diff store, `/diffs`, reports)
//! can leak what it never received. JSON body paths are redacted by the diff engine
//! (`compare.redact_json`) and sensitive response headers in differences by
//! [`crate::diff`].

use http::HeaderName;

use crate::config::RedactConfig;

/// Shown instead of a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Request headers that carry a client's credentials; removed from shadow copies unless the
/// route sets `shadow.forward_credentials`.
pub const CREDENTIAL_HEADERS: [HeaderName; 5] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    http::header::COOKIE,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-auth-token"),
];

/// Compiled `server.redact`.
#[derive(Debug, Clone, Default)]
pub struct Redaction {
    /// Lower-case query parameter names.
    query_params: Vec<String>,
}

impl Redaction {
    pub fn compile(config: &RedactConfig) -> Self {
        Self {
            query_params: config
                .query_params
                .iter()
                .chain(&config.extra_query_params)
                .map(|name| name.to_ascii_lowercase())
                .collect(),
        }
    }

    /// `query` with the values of listed parameters replaced by `[redacted]`; the rest (order,
    /// encoding, parameters without a value) is kept byte for byte.
    pub fn query(&self, query: &str) -> String {
        self.query_and_secrets(query, &mut Secrets::default())
    }

    /// Like [`Self::query`], collecting the redacted values into `secrets`, so they can be
    /// scrubbed from what the backends echo back (a body that repeats its URL).
    pub fn query_and_secrets(&self, query: &str, secrets: &mut Secrets) -> String {
        query
            .split('&')
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                let decoded: String = form_urlencoded::parse(name.as_bytes())
                    .next()
                    .map(|(name, _)| name.into_owned())
                    .unwrap_or_default();
                if !value.is_empty()
                    && self
                        .query_params
                        .iter()
                        .any(|listed| listed.eq_ignore_ascii_case(&decoded))
                {
                    secrets.add(value);
                    if let Some((_, decoded)) = form_urlencoded::parse(pair.as_bytes()).next() {
                        secrets.add(&decoded);
                    }
                    format!("{name}={REDACTED}")
                } else {
                    pair.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Secret values seen in one request (redacted query values, credential header values), to
/// scrub from everything stored about its exchange. Values under 4 characters are not kept:
/// scrubbing `1` from a body would destroy it and protect nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets(Vec<String>);

impl Secrets {
    const SHORTEST: usize = 4;

    pub fn add(&mut self, value: &str) {
        let value = value.trim();
        if value.len() >= Self::SHORTEST && !self.0.iter().any(|known| known == value) {
            self.0.push(value.to_owned());
        }
    }

    /// Collects the credential headers of `request` (`Authorization` as a whole and its token,
    /// each cookie's value).
    pub fn add_credentials(&mut self, request: &pingora_http::RequestHeader) {
        for name in &CREDENTIAL_HEADERS {
            for value in request.headers.get_all(name) {
                let Ok(value) = value.to_str() else { continue };
                if *name == http::header::COOKIE {
                    for cookie in value.split(';') {
                        if let Some((_, cookie_value)) = cookie.split_once('=') {
                            self.add(cookie_value);
                        }
                    }
                    continue;
                }
                self.add(value);
                if let Some((_, token)) = value.split_once(' ') {
                    self.add(token);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every known secret replaced by `[redacted]`.
    pub fn scrub(&self, text: &mut String) {
        // Longest first, so a token inside a longer header value goes with it.
        for secret in &self.0 {
            if text.contains(secret.as_str()) {
                *text = text.replace(secret.as_str(), REDACTED);
            }
        }
    }

    /// Keeps longer secrets first (see [`Self::scrub`]).
    pub fn sorted(mut self) -> Self {
        self.0.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_query_parameters_lose_their_values_and_the_rest_is_kept() {
        let redaction = Redaction::compile(&RedactConfig {
            extra_query_params: vec!["Tenant_Secret".into()],
            ..RedactConfig::default()
        });
        assert_eq!(
            redaction.query("page=2&TOKEN=abc&flag&api%5Fkey=k&tenant_secret=s&q=a%20b"),
            "page=2&TOKEN=[redacted]&flag&api%5Fkey=[redacted]&tenant_secret=[redacted]&q=a%20b"
        );
        assert_eq!(redaction.query("token="), "token=");
        assert_eq!(Redaction::default().query("token=abc"), "token=abc");
    }

    #[test]
    fn secrets_seen_in_the_request_are_scrubbed_from_what_is_stored() {
        let mut secrets = Secrets::default();
        Redaction::compile(&RedactConfig::default())
            .query_and_secrets("access_token=s3cr3t%21&page=2", &mut secrets);
        let mut request = pingora_http::RequestHeader::build("GET", b"/", None).unwrap();
        request
            .insert_header("authorization", "Bearer tok-123456")
            .unwrap();
        request
            .insert_header("cookie", "a=1; session=cookie-value")
            .unwrap();
        secrets.add_credentials(&request);
        let secrets = secrets.sorted();
        let mut body =
            r#"{"next":"/x?access_token=s3cr3t!","auth":"Bearer tok-123456","c":"cookie-value","n":1}"#
                .to_owned();
        secrets.scrub(&mut body);
        assert_eq!(
            body,
            r#"{"next":"/x?access_token=[redacted]","auth":"[redacted]","c":"[redacted]","n":1}"#
        );
    }
}
