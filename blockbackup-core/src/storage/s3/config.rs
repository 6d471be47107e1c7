//! Where an S3 repository is and how to reach it: the `s3://bucket/prefix`
//! location, the endpoint, region, URL style, TLS and credentials. The
//! names follow pgBackRest's `repo1-s3-*` options.
//!
//! The secret and the session token never leave this module in any text:
//! [`Secret`] has no `Display` and its `Debug` prints `<redacted>`, and
//! [`S3Settings::redact`] blanks all three credentials out of a message
//! before it is shown (a store's error text could quote them back).

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// A credential that must not be shown: no `Display`, a `Debug` that
/// hides it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How a bucket is named in a request's URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UriStyle {
    /// `https://<bucket>.<endpoint host>/<key>`, what AWS prefers.
    Host,
    /// `https://<endpoint host>/<bucket>/<key>`, what most self-hosted
    /// stores need.
    Path,
}

impl UriStyle {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "host" => Some(UriStyle::Host),
            "path" => Some(UriStyle::Path),
            _ => None,
        }
    }
}

/// A repository location `s3://<bucket>[/<prefix>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// `a/b`, without leading or trailing `/`; empty for the bucket's top.
    pub prefix: String,
}

pub const S3_SCHEME: &str = "s3://";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum S3ConfigError {
    #[error("\"{0}\" is not an S3 location: write s3://<bucket>/<prefix>")]
    NotS3(String),
    #[error("invalid bucket name in \"{0}\": a bucket name is 3 to 63 characters from a-z, 0-9, '.' and '-'")]
    BadBucket(String),
    #[error("invalid prefix in \"{0}\": each part of the prefix must be non-empty, not \".\" or \"..\", and without control characters")]
    BadPrefix(String),
    #[error("invalid S3 endpoint \"{0}\": write http(s)://host[:port]")]
    BadEndpoint(String),
    #[error("invalid S3 URI style \"{0}\": use host or path")]
    BadUriStyle(String),
    #[error("no S3 credentials: {0}")]
    NoCredentials(&'static str),
    #[error("could not read the S3 CA file \"{}\": {detail}", path.display())]
    BadCaFile { path: PathBuf, detail: String },
}

impl S3Location {
    /// Whether `text` names an S3 location at all (then [`S3Location::parse`]
    /// says whether it names a valid one).
    pub fn is_s3(text: &str) -> bool {
        text.starts_with(S3_SCHEME)
    }

    pub fn parse(text: &str) -> Result<Self, S3ConfigError> {
        let rest = text
            .strip_prefix(S3_SCHEME)
            .ok_or_else(|| S3ConfigError::NotS3(text.to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && !bucket.starts_with(['.', '-'])
            && !bucket.ends_with(['.', '-']);
        if !bucket_ok {
            return Err(S3ConfigError::BadBucket(text.to_owned()));
        }
        let prefix = prefix.trim_end_matches('/');
        let prefix_ok = prefix.is_empty()
            || prefix.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && !part.chars().any(char::is_control)
            });
        if !prefix_ok {
            return Err(S3ConfigError::BadPrefix(text.to_owned()));
        }
        Ok(S3Location {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "{S3_SCHEME}{}", self.bucket)
        } else {
            write!(f, "{S3_SCHEME}{}/{}", self.bucket, self.prefix)
        }
    }
}

/// How to reach the store: everything but the location.
#[derive(Clone, Debug)]
pub struct S3Settings {
    /// `http(s)://host[:port]`; empty means AWS's endpoint for the region.
    pub endpoint: String,
    pub region: String,
    pub uri_style: UriStyle,
    pub verify_tls: bool,
    /// The certificates to trust instead of the built-in (Mozilla) roots.
    pub ca_file: Option<PathBuf>,
    pub key: String,
    pub secret: Secret,
    pub token: Option<Secret>,
}

pub const DEFAULT_REGION: &str = "us-east-1";

impl S3Settings {
    /// The endpoint URL, AWS's for the region when none is set.
    pub fn endpoint_url(&self) -> Result<url::Url, S3ConfigError> {
        let text = if self.endpoint.is_empty() {
            format!("https://s3.{}.amazonaws.com", self.region)
        } else {
            self.endpoint.clone()
        };
        let url = url::Url::parse(&text).map_err(|_| S3ConfigError::BadEndpoint(text.clone()))?;
        let plain = matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some()
            && url.query().is_none()
            && url.username().is_empty()
            && url.password().is_none();
        if !plain {
            return Err(S3ConfigError::BadEndpoint(text));
        }
        Ok(url)
    }

    /// Checks what can be checked without asking the store.
    pub fn check(&self) -> Result<(), S3ConfigError> {
        self.endpoint_url()?;
        if self.key.is_empty() {
            return Err(S3ConfigError::NoCredentials("the access key is not set"));
        }
        if self.secret.expose().is_empty() {
            return Err(S3ConfigError::NoCredentials(
                "the secret access key is not set",
            ));
        }
        Ok(())
    }

    /// The offline command's options that say how to reach the store: all
    /// of these settings but the credentials.
    pub fn command_options(&self) -> Vec<(&'static str, String)> {
        let mut options = Vec::new();
        if !self.endpoint.is_empty() {
            options.push(("--s3-endpoint", self.endpoint.clone()));
        }
        options.push(("--s3-region", self.region.clone()));
        let style = match self.uri_style {
            UriStyle::Host => "host",
            UriStyle::Path => "path",
        };
        options.push(("--s3-uri-style", style.to_owned()));
        if !self.verify_tls {
            options.push(("--s3-verify-tls", "n".to_owned()));
        }
        if let Some(ca_file) = &self.ca_file {
            options.push(("--s3-ca-file", ca_file.to_string_lossy().into_owned()));
        }
        options
    }

    /// `text` with the key, the secret and the token blanked out.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        let mut hidden = vec![self.secret.expose()];
        if let Some(token) = &self.token {
            hidden.push(token.expose());
        }
        hidden.push(&self.key);
        for value in hidden {
            // Too short a value would blank ordinary words out.
            if value.len() >= 3 {
                text = text.replace(value, "<redacted>");
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> S3Settings {
        S3Settings {
            endpoint: "http://127.0.0.1:8333".into(),
            region: DEFAULT_REGION.into(),
            uri_style: UriStyle::Path,
            verify_tls: true,
            ca_file: None,
            key: "AKIAEXAMPLE".into(),
            secret: Secret::new("very/secret+key"),
            token: Some(Secret::new("session-token-xyz")),
        }
    }

    #[test]
    fn locations_parse_and_print_back() {
        for (text, bucket, prefix) in [
            ("s3://bucket", "bucket", ""),
            ("s3://bucket/", "bucket", ""),
            ("s3://my.bucket-1/a/b", "my.bucket-1", "a/b"),
            ("s3://bkt/a/b/", "bkt", "a/b"),
        ] {
            let location = S3Location::parse(text).unwrap();
            assert_eq!(
                (location.bucket.as_str(), location.prefix.as_str()),
                (bucket, prefix)
            );
            assert_eq!(S3Location::parse(&location.to_string()).unwrap(), location);
        }
    }

    #[test]
    fn bad_locations_are_refused() {
        for text in [
            "s3://",
            "s3://ab",
            "s3://Bucket/x",
            "s3://-bucket",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "s3://bucket/a/./b",
            "s3://bu_cket",
            "s3://bucket/a\nb",
        ] {
            assert!(S3Location::parse(text).is_err(), "{text}");
        }
        assert_eq!(
            S3Location::parse("/var/lib/x"),
            Err(S3ConfigError::NotS3("/var/lib/x".into()))
        );
        assert!(!S3Location::is_s3("/var/lib/x"));
    }

    #[test]
    fn endpoints_default_to_aws_and_must_be_plain() {
        let mut s = settings();
        assert_eq!(s.endpoint_url().unwrap().as_str(), "http://127.0.0.1:8333/");
        s.endpoint.clear();
        s.region = "eu-west-1".into();
        assert_eq!(
            s.endpoint_url().unwrap().as_str(),
            "https://s3.eu-west-1.amazonaws.com/"
        );
        for bad in [
            "ftp://host",
            "127.0.0.1:8333",
            "http://user:pw@host",
            "http://host/?a=b",
        ] {
            s.endpoint = bad.into();
            assert!(s.endpoint_url().is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_never_print() {
        let s = settings();
        let shown = format!("{s:?}");
        assert!(!shown.contains("very/secret+key") && !shown.contains("session-token-xyz"));
        let message = "denied for AKIAEXAMPLE with very/secret+key and session-token-xyz";
        assert_eq!(
            s.redact(message),
            "denied for <redacted> with <redacted> and <redacted>"
        );
        let mut missing = settings();
        missing.secret = Secret::default();
        assert!(matches!(
            missing.check(),
            Err(S3ConfigError::NoCredentials(_))
        ));
    }
}
