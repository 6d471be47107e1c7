//! `--repository` and the `--s3-*` options: where the repository is and,
//! for one in S3, how to reach it. The credentials come from the standard
//! environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN),
//! never from the command line, where every user of the host could read
//! them (`ps`); `--s3-key` alone is accepted, as the key is no secret.
//! AWS_ENDPOINT_URL and AWS_REGION give the endpoint and the region when
//! the options do not.

use blockbackup_core::repository::{Repository, RepositoryLocation};
use blockbackup_core::storage::s3::config::DEFAULT_REGION;
use blockbackup_core::storage::s3::{S3Settings, Secret, UriStyle};

/// The options this module takes, each with a value.
pub const OPTIONS: &[&str] = &[
    "--repository",
    "--s3-endpoint",
    "--s3-region",
    "--s3-uri-style",
    "--s3-verify-tls",
    "--s3-ca-file",
    "--s3-key",
];

/// Options that would put a secret on the command line.
const REFUSED: &[&str] = &["--s3-key-secret", "--s3-token"];

pub fn refuse_secret(flag: &str) -> Result<(), String> {
    if REFUSED.contains(&flag) {
        return Err(format!(
            "{flag} is not taken on the command line, where other users could read it; set AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the environment"
        ));
    }
    Ok(())
}

/// The repository options given, in order, as they were given: what a
/// program this one starts is given again.
#[derive(Default)]
pub struct RepositoryOptions {
    given: Vec<(String, String)>,
}

impl RepositoryOptions {
    pub fn push(&mut self, flag: &str, value: String) {
        self.given.push((flag.to_owned(), value));
    }

    fn value(&self, flag: &str) -> Option<&str> {
        self.given
            .iter()
            .rev()
            .find(|(given, _)| given == flag)
            .map(|(_, value)| value.as_str())
    }

    /// The options as arguments, to pass on.
    pub fn arguments(&self) -> Vec<String> {
        self.given
            .iter()
            .flat_map(|(flag, value)| [flag.clone(), value.clone()])
            .collect()
    }

    pub fn location(&self) -> Result<RepositoryLocation, String> {
        let text = self
            .value("--repository")
            .ok_or("--repository is required")?;
        RepositoryLocation::parse(text).map_err(|e| format!("--repository: {e}"))
    }

    /// How to reach the store, from the options and the environment.
    pub fn s3_settings(&self) -> Result<S3Settings, String> {
        let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let uri_style = match self.value("--s3-uri-style") {
            None => UriStyle::Host,
            Some(text) => UriStyle::parse(text).ok_or("--s3-uri-style takes host or path")?,
        };
        let verify_tls = match self.value("--s3-verify-tls") {
            None | Some("y") => true,
            Some("n") => false,
            Some(_) => return Err("--s3-verify-tls takes y or n".to_owned()),
        };
        Ok(S3Settings {
            endpoint: self
                .value("--s3-endpoint")
                .map(str::to_owned)
                .or_else(|| env("AWS_ENDPOINT_URL_S3"))
                .or_else(|| env("AWS_ENDPOINT_URL"))
                .unwrap_or_default(),
            region: self
                .value("--s3-region")
                .map(str::to_owned)
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| DEFAULT_REGION.to_owned()),
            uri_style,
            verify_tls,
            ca_file: self.value("--s3-ca-file").map(Into::into),
            key: self
                .value("--s3-key")
                .map(str::to_owned)
                .or_else(|| env("AWS_ACCESS_KEY_ID"))
                .unwrap_or_default(),
            secret: Secret::new(env("AWS_SECRET_ACCESS_KEY").unwrap_or_default()),
            token: env("AWS_SESSION_TOKEN").map(Secret::new),
        })
    }

    /// The repository, opened.
    pub fn open(&self) -> Result<(Repository, Option<S3Settings>), String> {
        let location = self.location()?;
        let s3 = match location {
            RepositoryLocation::S3(_) => Some(self.s3_settings()?),
            RepositoryLocation::Local(_) => {
                if let Some((flag, _)) = self
                    .given
                    .iter()
                    .find(|(flag, _)| flag.starts_with("--s3-"))
                {
                    return Err(format!(
                        "{flag} applies to a repository in S3 (--repository s3://...)"
                    ));
                }
                None
            }
        };
        let repository = Repository::open_at(&location, s3.as_ref()).map_err(|e| match &s3 {
            Some(s3) => s3.redact(&e.to_string()),
            None => e.to_string(),
        })?;
        Ok((repository, s3))
    }
}
