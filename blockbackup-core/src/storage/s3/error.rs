//! What can go wrong talking to an S3 store, typed so that the edge can
//! tell the user which (unreachable, refused credentials, no bucket, TLS)
//! and what to do. A failure travels as an `io::Error` through the storage
//! interface, with an [`S3Error`] inside it; [`S3Error::of`] finds it again.

use std::io;

use thiserror::Error;

/// Which kind of failure, for the SQLSTATE and hint at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Failure {
    /// No answer: connection refused or reset, timed out, name unknown.
    Unreachable,
    /// The store refused the key, secret or token.
    Credentials,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The object does not exist (a plain "absent" to the repository).
    NoSuchKey,
    /// The TLS handshake failed (a certificate not trusted, say).
    Tls,
    /// The store answered with an error that is none of the above.
    Refused,
    /// The store's answer could not be understood.
    BadAnswer,
}

#[derive(Debug, Error)]
#[error("{what} {object}: {detail}")]
pub struct S3Error {
    pub failure: S3Failure,
    /// The request, e.g. "PUT".
    pub what: &'static str,
    /// `s3://bucket/key`.
    pub object: String,
    /// What happened, credentials redacted.
    pub detail: String,
}

impl S3Error {
    /// The S3 error inside `error`, if it carries one.
    pub fn of(error: &io::Error) -> Option<&S3Error> {
        error.get_ref()?.downcast_ref::<S3Error>()
    }

    pub fn into_io(self) -> io::Error {
        let kind = match self.failure {
            S3Failure::Unreachable => io::ErrorKind::TimedOut,
            S3Failure::Credentials => io::ErrorKind::PermissionDenied,
            S3Failure::NoSuchKey => io::ErrorKind::NotFound,
            S3Failure::Tls | S3Failure::BadAnswer => io::ErrorKind::InvalidData,
            // Never NotFound: that means "no such file" to the repository,
            // and a missing bucket is not an empty one.
            S3Failure::NoSuchBucket | S3Failure::Refused => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }

    /// What the user should do about it.
    pub fn hint(&self) -> &'static str {
        match self.failure {
            S3Failure::Unreachable => "Check blockbackup.s3_endpoint (or --s3-endpoint) and that the object store is up and reachable from this host.",
            S3Failure::Credentials => "Check the access key and secret (blockbackup.s3_key and blockbackup.s3_key_secret, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and the region.",
            S3Failure::NoSuchBucket => "Create the bucket first, or correct the bucket in the repository location.",
            S3Failure::Tls => "Check blockbackup.s3_ca_file (the CA that signed the store's certificate), or turn blockbackup.s3_verify_tls off for a store you trust.",
            S3Failure::NoSuchKey | S3Failure::Refused | S3Failure::BadAnswer => "Check the object store's log for the request.",
        }
    }
}
