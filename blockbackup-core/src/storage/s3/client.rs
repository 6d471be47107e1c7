//! One S3 request at a time, done right: signed (SigV4, by `rusty-s3`, as
//! a presigned URL with an unsigned payload, signed anew for each try),
//! sent by `ureq` over rustls with bounded timeouts, retried with
//! exponential backoff and jitter on what a retry can cure (no answer, a
//! timeout, 5xx, 429, SlowDown) a bounded number of times, and turned
//! into an [`S3Error`] that names the request and the object and never
//! the URL (a presigned URL is a credential for an hour) nor a secret.

use std::io::{self, Read};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusty_s3::actions::{ListObjectsV2, ObjectIdentifier};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use ureq::http::Response;
use ureq::tls::{PemItem, RootCerts, TlsConfig, TlsProvider};
use ureq::{Agent, Body};
use url::Url;

use super::config::{S3ConfigError, S3Location, S3Settings, UriStyle};
use super::error::{S3Error, S3Failure};
use super::xml;

/// How long a signed request stays valid: long enough for a slow part.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// No progress for this long on a read or a write ends the try.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// An error answer is read up to this size.
const ERROR_BODY_LIMIT: u64 = 64 * 1024;
/// A listing page is read up to this size (1000 keys of 1 KiB).
const LISTING_LIMIT: u64 = 16 << 20;

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
enum Verb {
    Get,
    Head,
    Put,
    Post,
    Delete,
}

/// What one try gave when it did not succeed.
enum Failure {
    Retry(S3Error),
    Fatal(S3Error),
}

#[derive(Debug)]
pub struct Client {
    agent: Agent,
    bucket: Bucket,
    credentials: Credentials,
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

    fn error(&self, failure: S3Failure, what: &'static str, key: &str, detail: &str) -> S3Error {
        S3Error {
            failure,
            what,
            object: self.object(key),
            detail: self.settings.redact(detail),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good or runs out of
    /// tries; the last failure says how many there were.
    fn retried<T>(&self, mut attempt: impl FnMut() -> Result<T, Failure>) -> io::Result<T> {
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
    fn send(
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

    fn bad_answer(&self, what: &'static str, key: &str, detail: &str) -> Failure {
        Failure::Fatal(self.error(S3Failure::BadAnswer, what, key, detail))
    }

    fn read_body(
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

    pub fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        self.retried(|| {
            let url = self
                .bucket
                .put_object(Some(&self.credentials), key)
                .sign(SIGNED_FOR);
            self.send(Verb::Put, "PUT", key, &url, &[], Some(bytes))
                .map(drop)
        })
    }

    /// The object's bytes as they arrive; NotFound when it is absent.
    pub fn get(&self, key: &str) -> io::Result<Box<dyn Read + Send>> {
        let response = self.retried(|| {
            let url = self
                .bucket
                .get_object(Some(&self.credentials), key)
                .sign(SIGNED_FOR);
            self.send(Verb::Get, "GET", key, &url, &[], None)
        })?;
        Ok(Box::new(response.into_body().into_reader()))
    }

    /// The object's size, None when it is absent.
    pub fn head(&self, key: &str) -> io::Result<Option<u64>> {
        let answer = self.retried(|| {
            let url = self
                .bucket
                .head_object(Some(&self.credentials), key)
                .sign(SIGNED_FOR);
            match self.send(Verb::Head, "HEAD", key, &url, &[], None) {
                Ok(response) => Ok(Some(response)),
                Err(Failure::Fatal(error)) if error.failure == S3Failure::NoSuchKey => Ok(None),
                Err(failure) => Err(failure),
            }
        })?;
        let Some(response) = answer else {
            return Ok(None);
        };
        let size = response
            .headers()
            .get("content-length")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        match size {
            Some(size) => Ok(Some(size)),
            None => Err(self
                .error(
                    S3Failure::BadAnswer,
                    "HEAD",
                    key,
                    "no Content-Length in the answer",
                )
                .into_io()),
        }
    }

    pub fn delete(&self, key: &str) -> io::Result<()> {
        self.retried(|| {
            let url = self
                .bucket
                .delete_object(Some(&self.credentials), key)
                .sign(SIGNED_FOR);
            match self.send(Verb::Delete, "DELETE", key, &url, &[], None) {
                Err(Failure::Fatal(error)) if error.failure == S3Failure::NoSuchKey => Ok(()),
                other => other.map(drop),
            }
        })
    }

    /// Deletes `keys`, a thousand per request.
    pub fn delete_many(&self, keys: &[String]) -> io::Result<()> {
        for batch in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> = batch
                .iter()
                .map(|key| ObjectIdentifier::new(key.clone()))
                .collect();
            let first = batch.first().map_or("", String::as_str);
            self.retried(|| {
                let mut action = self
                    .bucket
                    .delete_objects(Some(&self.credentials), objects.iter());
                action.set_quiet(true);
                let url = action.sign(SIGNED_FOR);
                let (body, md5) = action.body_with_md5();
                let mut response = self.send(
                    Verb::Post,
                    "DeleteObjects",
                    first,
                    &url,
                    &[("content-md5", &md5)],
                    Some(body.as_bytes()),
                )?;
                let answer =
                    self.read_body("DeleteObjects", first, &mut response, LISTING_LIMIT)?;
                // Quiet: only the objects that could not be deleted are named.
                let errors = xml::all_text(&answer, "Error");
                match errors.first() {
                    None => Ok(()),
                    Some(error) => {
                        let key = xml::text(&format!("<x>{error}</x>"), "Key").unwrap_or_default();
                        let detail = format!(
                            "{} of {} objects not deleted, the first with {}",
                            errors.len(),
                            batch.len(),
                            xml::error_code(error).unwrap_or_else(|| "an error".into())
                        );
                        Err(Failure::Fatal(self.error(
                            S3Failure::Refused,
                            "DeleteObjects",
                            &key,
                            &detail,
                        )))
                    }
                }
            })?;
        }
        Ok(())
    }

    /// Every object under `prefix` (and, with `delimiter`, the common
    /// prefixes directly under it), all pages.
    pub fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        max_keys: Option<usize>,
    ) -> io::Result<(Vec<Listed>, Vec<String>)> {
        let (mut objects, mut prefixes) = (Vec::new(), Vec::new());
        let mut token: Option<String> = None;
        loop {
            let page = self.retried(|| {
                let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
                action.with_prefix(prefix);
                if delimiter {
                    action.with_delimiter("/");
                }
                if let Some(max_keys) = max_keys {
                    action.with_max_keys(max_keys);
                }
                if let Some(token) = &token {
                    action.with_continuation_token(token.as_str());
                }
                let url = action.sign(SIGNED_FOR);
                let mut response = self.send(Verb::Get, "LIST", prefix, &url, &[], None)?;
                let text = self.read_body("LIST", prefix, &mut response, LISTING_LIMIT)?;
                ListObjectsV2::parse_response(&text).map_err(|error| {
                    self.bad_answer(
                        "LIST",
                        prefix,
                        &format!("the listing could not be parsed: {error}"),
                    )
                })
            })?;
            for content in page.contents {
                let modified_us = content
                    .last_modified
                    .as_deref()
                    .and_then(|text| text.parse::<jiff::Timestamp>().ok())
                    .map(|time| time.as_microsecond());
                objects.push(Listed {
                    key: content.key,
                    size: content.size.unwrap_or(0),
                    modified_us,
                });
            }
            prefixes.extend(page.common_prefixes.into_iter().map(|p| p.prefix));
            match page.next_continuation_token {
                Some(next) if max_keys.is_none() && Some(&next) != token.as_ref() => {
                    token = Some(next)
                }
                _ => return Ok((objects, prefixes)),
            }
        }
    }

    pub fn create_multipart(&self, key: &str) -> io::Result<String> {
        self.retried(|| {
            let url = self
                .bucket
                .create_multipart_upload(Some(&self.credentials), key)
                .sign(SIGNED_FOR);
            let mut response = self.send(
                Verb::Post,
                "CreateMultipartUpload",
                key,
                &url,
                &[],
                Some(&[]),
            )?;
            let text = self.read_body(
                "CreateMultipartUpload",
                key,
                &mut response,
                ERROR_BODY_LIMIT,
            )?;
            xml::text(&text, "UploadId")
                .filter(|id| !id.is_empty())
                .ok_or_else(|| {
                    self.bad_answer("CreateMultipartUpload", key, "no UploadId in the answer")
                })
        })
    }

    /// Uploads part `number` (from 1); its ETag.
    pub fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        bytes: &[u8],
    ) -> io::Result<String> {
        self.retried(|| {
            let url = self
                .bucket
                .upload_part(Some(&self.credentials), key, number, upload_id)
                .sign(SIGNED_FOR);
            let response = self.send(Verb::Put, "UploadPart", key, &url, &[], Some(bytes))?;
            response
                .headers()
                .get("etag")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| self.bad_answer("UploadPart", key, "no ETag in the answer"))
        })
    }

    pub fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> io::Result<()> {
        self.retried(|| {
            let action = self.bucket.complete_multipart_upload(
                Some(&self.credentials),
                key,
                upload_id,
                etags.iter().map(String::as_str),
            );
            let url = action.sign(SIGNED_FOR);
            let body = action.body();
            let mut response = self.send(
                Verb::Post,
                "CompleteMultipartUpload",
                key,
                &url,
                &[],
                Some(body.as_bytes()),
            )?;
            let text = self.read_body(
                "CompleteMultipartUpload",
                key,
                &mut response,
                ERROR_BODY_LIMIT,
            )?;
            // A 200 answer can still carry an error, found late.
            match xml::error_code(&text) {
                None if text.contains("<Error>") => {
                    Err(self.bad_answer("CompleteMultipartUpload", key, "an error without a code"))
                }
                None => Ok(()),
                Some(code) => {
                    let error = self.error(
                        S3Failure::Refused,
                        "CompleteMultipartUpload",
                        key,
                        &format!("the store answered {code}"),
                    );
                    if matches!(code.as_str(), "InternalError" | "SlowDown") {
                        Err(Failure::Retry(error))
                    } else {
                        Err(Failure::Fatal(error))
                    }
                }
            }
        })
    }

    /// The multipart uploads under way under `prefix`, (key, upload id),
    /// at most a thousand. rusty-s3 has no action for ListMultipartUploads:
    /// it is the bucket-level GET of ListObjectsV2 with another query.
    pub fn list_uploads(&self, prefix: &str) -> io::Result<(Vec<(String, String)>, bool)> {
        self.retried(|| {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            let query = action.query_mut();
            query.remove("list-type");
            query.remove("encoding-type");
            query.insert("uploads", "");
            query.insert("prefix", prefix);
            let url = action.sign(SIGNED_FOR);
            let mut response =
                match self.send(Verb::Get, "ListMultipartUploads", prefix, &url, &[], None) {
                    Ok(response) => response,
                    // What rclone answers when there is none.
                    Err(Failure::Fatal(error)) if error.failure == S3Failure::NoSuchKey => {
                        return Ok((Vec::new(), false))
                    }
                    Err(failure) => return Err(failure),
                };
            let text =
                self.read_body("ListMultipartUploads", prefix, &mut response, LISTING_LIMIT)?;
            let uploads = xml::all_text(&text, "Upload")
                .into_iter()
                .filter_map(|upload| {
                    let upload = format!("<Upload>{upload}</Upload>");
                    Some((xml::text(&upload, "Key")?, xml::text(&upload, "UploadId")?))
                })
                .collect();
            let truncated = xml::text(&text, "IsTruncated").as_deref() == Some("true");
            Ok((uploads, truncated))
        })
    }

    pub fn abort_multipart(&self, key: &str, upload_id: &str) -> io::Result<()> {
        self.retried(|| {
            let url = self
                .bucket
                .abort_multipart_upload(Some(&self.credentials), key, upload_id)
                .sign(SIGNED_FOR);
            match self.send(Verb::Delete, "AbortMultipartUpload", key, &url, &[], None) {
                // Already gone: what aborting wants.
                Err(Failure::Fatal(error)) if error.failure == S3Failure::NoSuchKey => Ok(()),
                other => other.map(drop),
            }
        })
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
