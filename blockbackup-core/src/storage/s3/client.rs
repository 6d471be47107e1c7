//! One S3 request at a time, done right (the requests themselves are in
//! `operations`): signed (SigV4, by `rusty-s3`, as
//! a presigned URL with an unsigned payload, signed anew for each try),
//! sent by `ureq` over rustls with bounded timeouts, retried with
//! exponential backoff and jitter on what a retry can cure (no answer, a
//! timeout, 5xx, 429, SlowDown) a bounded number of times, and turned
//! into an [`S3Error`] that names the request and the object and never
//! the URL (a presigned URL is a credential for an hour) nor a secret.

use std::io;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusty_s3::{Bucket, Credentials, UrlStyle};
use ureq::http::Response;
use ureq::tls::{PemItem, RootCerts, TlsConfig, TlsProvider};
use ureq::{Agent, Body};
use url::Url;

use super::config::{S3ConfigError, S3Location, S3Settings, UriStyle};
use super::error::{S3Error, S3Failure};
use super::xml;

/// How long a signed request stays valid: long enough for a slow part.
pub(super) const SIGNED_FOR: Duration = Duration::from_secs(3600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// No progress for this long on a read or a write ends the try.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// An error answer is read up to this size.
pub(super) const ERROR_BODY_LIMIT: u64 = 64 * 1024;
/// A listing page is read up to this size (1000 keys of 1 KiB).
pub(super) const LISTING_LIMIT: u64 = 16 << 20;

/// How often and how patiently a request is retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Six tries over about eight seconds: what rides out a store that
    /// restarts, and gives up well before a user wonders whether it hangs.
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
        }
    }
}

impl RetryPolicy {
    /// The pause before try `n` (from 1): doubling, capped, with jitter
    /// in its upper half so that parallel uploads do not retry in step.
    pub fn delay(&self, n: u32) -> Duration {
        let doubled = self
            .first_delay
            .saturating_mul(1u32 << n.saturating_sub(1).min(16));
        let base = doubled.min(self.max_delay);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = base.mul_f64(f64::from(nanos % 1000) / 2000.0);
        base / 2 + jitter
    }
}

/// An object of a listing.
#[derive(Clone, Debug)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub modified_us: Option<i64>,
}

#[derive(Clone, Copy)]
pub(super) enum Verb {
    Get,
    Head,
    Put,
    Post,
    Delete,
}

/// What one try gave when it did not succeed.
pub(super) enum Failure {
    Retry(S3Error),
    Fatal(S3Error),
}

#[derive(Debug)]
pub struct Client {
    agent: Agent,
    pub(super) bucket: Bucket,
    pub(super) credentials: Credentials,
    settings: S3Settings,
    retry: RetryPolicy,
}

impl Client {
    pub fn new(
        location: &S3Location,
        settings: &S3Settings,
        retry: RetryPolicy,
        connections: usize,
    ) -> Result<Self, S3ConfigError> {
        settings.check()?;
        let endpoint = settings.endpoint_url()?;
        let style = match settings.uri_style {
            UriStyle::Host => UrlStyle::VirtualHost,
            UriStyle::Path => UrlStyle::Path,
        };
        let bucket = Bucket::new(
            endpoint,
            style,
            location.bucket.clone(),
            settings.region.clone(),
        )
        .map_err(|_| S3ConfigError::BadEndpoint(settings.endpoint.clone()))?;
        let credentials = match &settings.token {
            Some(token) => Credentials::new_with_token(
                settings.key.clone(),
                settings.secret.expose(),
                token.expose(),
            ),
            None => Credentials::new(settings.key.clone(), settings.secret.expose()),
        };
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(IDLE_TIMEOUT))
            .timeout_per_write(Some(IDLE_TIMEOUT))
            .timeout_recv_response(Some(IDLE_TIMEOUT))
            .max_idle_connections_per_host(connections.max(4))
            .max_idle_connections(connections.max(4))
            .max_redirects(0)
            .tls_config(tls_config(settings)?)
            .build();
        Ok(Client {
            agent: config.new_agent(),
            bucket,
            credentials,
            settings: settings.clone(),
            retry,
        })
    }

    /// `s3://bucket/key`, for messages.
    pub fn object(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket.name())
    }

    pub(super) fn error(
        &self,
        failure: S3Failure,
        what: &'static str,
        key: &str,
        detail: &str,
    ) -> S3Error {
        S3Error {
            failure,
            what,
            object: self.object(key),
            detail: self.settings.redact(detail),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good or runs out of
    /// tries; the last failure says how many there were.
    pub(super) fn retried<T>(
        &self,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> io::Result<T> {
        let mut n = 1;
        loop {
            match attempt() {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(error)) => return Err(error.into_io()),
                Err(Failure::Retry(mut error)) if n >= self.retry.attempts => {
                    error.detail = format!("{} (gave up after {n} tries)", error.detail);
                    return Err(error.into_io());
                }
                Err(Failure::Retry(_)) => {
                    thread::sleep(self.retry.delay(n));
                    n += 1;
                }
            }
        }
    }

    /// Sends one signed request; a 2xx answer is the result.
    pub(super) fn send(
        &self,
        verb: Verb,
        what: &'static str,
        key: &str,
        url: &Url,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response<Body>, Failure> {
        let url = url.as_str();
        // A body goes as a slice, with its Content-Length, never chunked
        // (which some stores refuse).
        let body = body.unwrap_or(&[]);
        let result = match verb {
            Verb::Get => with_headers(self.agent.get(url), headers).call(),
            Verb::Head => with_headers(self.agent.head(url), headers).call(),
            Verb::Delete => with_headers(self.agent.delete(url), headers).call(),
            Verb::Put => with_headers(self.agent.put(url), headers).send(body),
            Verb::Post => with_headers(self.agent.post(url), headers).send(body),
        };
        match result {
            Ok(response) if response.status().is_success() => Ok(response),
            Ok(response) => Err(self.status_failure(what, key, response)),
            Err(error) => Err(self.transport_failure(what, key, &error)),
        }
    }

    fn status_failure(
        &self,
        what: &'static str,
        key: &str,
        mut response: Response<Body>,
    ) -> Failure {
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(ERROR_BODY_LIMIT)
            .read_to_string()
            .unwrap_or_default();
        let code = xml::error_code(&body).unwrap_or_default();
        let message = xml::text(&body, "Message").unwrap_or_default();
        let detail = match (code.is_empty(), message.is_empty()) {
            (true, _) => format!("the store answered HTTP {status}"),
            (false, true) => format!("the store answered HTTP {status} {code}"),
            (false, false) => format!("the store answered HTTP {status} {code}: {message}"),
        };
        let retry = status >= 500
            || status == 429
            || status == 408
            || matches!(
                code.as_str(),
                "SlowDown" | "RequestTimeout" | "InternalError"
            );
        if retry {
            return Failure::Retry(self.error(S3Failure::Refused, what, key, &detail));
        }
        let failure = match (status, code.as_str()) {
            (404, "NoSuchBucket") => S3Failure::NoSuchBucket,
            (404, _) => S3Failure::NoSuchKey,
            (403, _)
            | (
                400,
                "InvalidAccessKeyId"
                | "ExpiredToken"
                | "InvalidToken"
                | "AuthorizationHeaderMalformed",
            ) => S3Failure::Credentials,
            _ => S3Failure::Refused,
        };
        Failure::Fatal(self.error(failure, what, key, &detail))
    }

    fn transport_failure(&self, what: &'static str, key: &str, error: &ureq::Error) -> Failure {
        use io::ErrorKind as K;
        let retry =
            |detail: &str| Failure::Retry(self.error(S3Failure::Unreachable, what, key, detail));
        let host = self.bucket.base_url().host_str().unwrap_or("the endpoint");
        match error {
            ureq::Error::Timeout(which) => {
                retry(&format!("no answer from {host} in time ({which})"))
            }
            ureq::Error::ConnectionFailed => retry(&format!("could not connect to {host}")),
            ureq::Error::HostNotFound => retry(&format!("host {host} not found")),
            ureq::Error::BodyStalled => retry(&format!("{host} stopped sending")),
            ureq::Error::Protocol(_) => retry(&format!("{host} broke the HTTP protocol")),
            ureq::Error::Io(io) => match io.kind() {
                K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::BrokenPipe
                | K::TimedOut
                | K::UnexpectedEof
                | K::Interrupted
                | K::NotConnected
                | K::WouldBlock => retry(&format!("{host}: {io}")),
                // rustls reports a certificate it does not trust this way.
                K::InvalidData => Failure::Fatal(self.error(
                    S3Failure::Tls,
                    what,
                    key,
                    &format!("TLS with {host}: {io}"),
                )),
                _ => Failure::Fatal(self.error(
                    S3Failure::Unreachable,
                    what,
                    key,
                    &format!("{host}: {io}"),
                )),
            },
            // Never the error's own text: some variants carry the URL.
            _ => Failure::Fatal(self.error(
                S3Failure::Refused,
                what,
                key,
                "the HTTP client refused the request",
            )),
        }
    }

    pub(super) fn bad_answer(&self, what: &'static str, key: &str, detail: &str) -> Failure {
        Failure::Fatal(self.error(S3Failure::BadAnswer, what, key, detail))
    }

    pub(super) fn read_body(
        &self,
        what: &'static str,
        key: &str,
        response: &mut Response<Body>,
        limit: u64,
    ) -> Result<String, Failure> {
        response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_string()
            .map_err(|error| self.transport_failure(what, key, &error))
    }
}

fn with_headers<B>(
    mut request: ureq::RequestBuilder<B>,
    headers: &[(&str, &str)],
) -> ureq::RequestBuilder<B> {
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

fn tls_config(settings: &S3Settings) -> Result<TlsConfig, S3ConfigError> {
    let mut builder = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .disable_verification(!settings.verify_tls);
    if let Some(path) = &settings.ca_file {
        let bad = |detail: String| S3ConfigError::BadCaFile {
            path: path.clone(),
            detail,
        };
        let pem = std::fs::read(path).map_err(|error| bad(error.to_string()))?;
        let mut certificates = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(PemItem::Certificate(certificate)) => certificates.push(certificate),
                Ok(_) => {}
                Err(_) => return Err(bad("it is not valid PEM".into())),
            }
        }
        if certificates.is_empty() {
            return Err(bad("it holds no certificate".into()));
        }
        builder = builder.root_certs(RootCerts::new_with_certs(&certificates));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let policy = RetryPolicy {
            attempts: 6,
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
        };
        for (n, base_ms) in [(1, 200), (2, 400), (3, 800), (4, 1000), (9, 1000)] {
            let delay = policy.delay(n).as_millis() as u64;
            assert!(
                delay >= base_ms / 2 && delay <= base_ms,
                "try {n}: {delay} ms"
            );
        }
        let total: Duration = (1..RetryPolicy::default().attempts)
            .map(|n| RetryPolicy::default().delay(n))
            .sum();
        assert!(total <= Duration::from_secs(12), "{total:?}");
    }
}
