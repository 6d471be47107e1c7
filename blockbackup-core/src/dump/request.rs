//! What a dump agent is asked to run, checked before anything starts.
//!
//! `launch_dump_agent` turns a database name, a format, a job count and a
//! list of extra arguments into the argv of one `pg_dump` process. The
//! process is started without a shell, so quoting, `;` or `$(...)` in an
//! argument have no power; but an argument that looks like shell syntax is
//! a mistake by whoever wrote it (they expect a shell to act on it), so it
//! is refused with an error rather than passed on to mean something else.
//!
//! Only the options in [`ALLOWED_OPTIONS`] are accepted: filters (schemas,
//! tables, extensions), what to include, consistency and compression. The
//! options that decide where the dump goes, how it connects or who it
//! connects as (`--file`, `--format`, `--jobs`, `--dbname`, `--host`,
//! `--port`, `--username`, `--role`, `--no-sync`, ...) belong to the agent
//! and are never taken from the user. Every accepted option is rewritten in
//! its long `--name=value` form, so that a value can never be read as an
//! option.
//!
//! The database goes to pg_dump inside a connection string whose values are
//! all quoted, so a database named `host=elsewhere` is a database name and
//! not a redirection to another server.

use std::ffi::OsString;
use std::path::Path;

use thiserror::Error;

/// The largest `jobs` accepted; pg_dump opens one connection per job.
pub const MAX_JOBS: u32 = 64;
/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
const MAX_DATABASE_NAME_BYTES: usize = 63;
/// Enough for any real filter list; the request travels through a fixed
/// shared-memory buffer of this size.
pub const MAX_EXTRA_ARGS_BYTES: usize = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpFormat {
    Custom,
    Directory,
    Plain,
    Tar,
}

impl DumpFormat {
    pub fn parse(text: &str) -> Result<Self, DumpRequestError> {
        match text {
            "custom" => Ok(DumpFormat::Custom),
            "directory" => Ok(DumpFormat::Directory),
            "plain" => Ok(DumpFormat::Plain),
            "tar" => Ok(DumpFormat::Tar),
            other => Err(DumpRequestError::UnknownFormat(other.to_owned())),
        }
    }

    /// The name the SQL interface and pg_dump's `--format` use.
    pub fn as_str(self) -> &'static str {
        match self {
            DumpFormat::Custom => "custom",
            DumpFormat::Directory => "directory",
            DumpFormat::Plain => "plain",
            DumpFormat::Tar => "tar",
        }
    }

    /// The file (or, for the directory format, directory) the dump is
    /// written to inside the backup's `dump/` directory.
    pub fn output_name(self) -> &'static str {
        match self {
            DumpFormat::Custom => "dump.custom",
            DumpFormat::Directory => "dump.d",
            DumpFormat::Plain => "dump.sql",
            DumpFormat::Tar => "dump.tar",
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DumpRequestError {
    #[error("unknown dump format \"{0}\"")]
    UnknownFormat(String),
    #[error("the database name must be 1 to {MAX_DATABASE_NAME_BYTES} bytes, got {0} bytes")]
    BadDatabaseName(usize),
    #[error("jobs must be between 1 and {MAX_JOBS}, got {0}")]
    JobsOutOfRange(i64),
    #[error(
        "jobs = {jobs} needs the directory format; pg_dump dumps in parallel only into a directory"
    )]
    JobsNeedDirectory { jobs: u32 },
    #[error("argument \"{0}\" is not allowed in extra_args")]
    NotAllowed(String),
    #[error("argument \"{0}\" is not an option; extra_args holds pg_dump options only")]
    NotAnOption(String),
    #[error("option \"{0}\" needs a value")]
    MissingValue(String),
    #[error("option \"{0}\" takes no value")]
    UnexpectedValue(String),
    #[error("invalid value \"{value}\" for option \"{option}\": {reason}")]
    BadValue {
        option: String,
        value: String,
        reason: &'static str,
    },
    #[error("argument \"{0}\" contains shell syntax")]
    ShellSyntax(String),
    #[error("extra_args are too long ({0} bytes, at most {MAX_EXTRA_ARGS_BYTES})")]
    TooLong(usize),
}

impl DumpRequestError {
    /// What the user can do about it, for the error's hint.
    pub fn hint(&self) -> &'static str {
        match self {
            DumpRequestError::UnknownFormat(_) => "Use 'custom', 'directory', 'plain' or 'tar'.",
            DumpRequestError::BadDatabaseName(_) => "Pass the name of a database of this cluster.",
            DumpRequestError::JobsOutOfRange(_) | DumpRequestError::JobsNeedDirectory { .. } => {
                "Use jobs => 1, or format => 'directory' with jobs up to 64."
            }
            DumpRequestError::NotAllowed(_) | DumpRequestError::NotAnOption(_) => {
                "Allowed: schema/table/extension filters (--schema, --exclude-schema, --table, --exclude-table, --exclude-table-data, --extension), content choices (--data-only, --schema-only, --no-owner, --no-privileges, --clean, --if-exists, --create, --no-comments, ...), --serializable-deferrable and --compress; the agent itself sets the file, format, jobs and connection."
            }
            DumpRequestError::MissingValue(_)
            | DumpRequestError::UnexpectedValue(_)
            | DumpRequestError::BadValue { .. } => {
                "Pass each option as '--name=value' (or '--name', 'value' as two elements)."
            }
            DumpRequestError::ShellSyntax(_) => {
                "pg_dump is started without a shell: quotes, ';', '|', '&', '<', '>', '`' and '$(' would reach it literally. Pass each option and value as its own array element, unquoted."
            }
            DumpRequestError::TooLong(_) => {
                "Dump fewer filters per agent, or select schemas instead of many tables."
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueKind {
    /// A flag without a value.
    Flag,
    /// A psql-style name pattern.
    Pattern,
    /// A compression level, 0 to 9.
    Level,
    /// `pre-data`, `data` or `post-data`.
    Section,
    /// An encoding name.
    Encoding,
    /// A positive integer, optionally followed by a time unit.
    Duration,
    /// A positive integer.
    Count,
}

/// The options a user may add: (long name, short letter, value).
const ALLOWED_OPTIONS: &[(&str, Option<char>, ValueKind)] = &[
    ("schema", Some('n'), ValueKind::Pattern),
    ("exclude-schema", Some('N'), ValueKind::Pattern),
    ("table", Some('t'), ValueKind::Pattern),
    ("exclude-table", Some('T'), ValueKind::Pattern),
    ("exclude-table-data", None, ValueKind::Pattern),
    ("extension", Some('e'), ValueKind::Pattern),
    ("serializable-deferrable", None, ValueKind::Flag),
    ("compress", Some('Z'), ValueKind::Level),
    ("data-only", Some('a'), ValueKind::Flag),
    ("schema-only", Some('s'), ValueKind::Flag),
    ("no-owner", Some('O'), ValueKind::Flag),
    ("no-privileges", Some('x'), ValueKind::Flag),
    ("no-acl", None, ValueKind::Flag),
    ("clean", Some('c'), ValueKind::Flag),
    ("if-exists", None, ValueKind::Flag),
    ("create", Some('C'), ValueKind::Flag),
    ("blobs", Some('b'), ValueKind::Flag),
    ("no-blobs", Some('B'), ValueKind::Flag),
    ("no-comments", None, ValueKind::Flag),
    ("no-publications", None, ValueKind::Flag),
    ("no-subscriptions", None, ValueKind::Flag),
    ("no-security-labels", None, ValueKind::Flag),
    ("no-tablespaces", None, ValueKind::Flag),
    ("no-unlogged-table-data", None, ValueKind::Flag),
    ("no-toast-compression", None, ValueKind::Flag),
    ("quote-all-identifiers", None, ValueKind::Flag),
    ("strict-names", None, ValueKind::Flag),
    ("load-via-partition-root", None, ValueKind::Flag),
    ("enable-row-security", None, ValueKind::Flag),
    ("disable-triggers", None, ValueKind::Flag),
    ("disable-dollar-quoting", None, ValueKind::Flag),
    ("use-set-session-authorization", None, ValueKind::Flag),
    ("inserts", None, ValueKind::Flag),
    ("column-inserts", None, ValueKind::Flag),
    ("on-conflict-do-nothing", None, ValueKind::Flag),
    ("rows-per-insert", None, ValueKind::Count),
    ("section", None, ValueKind::Section),
    ("encoding", Some('E'), ValueKind::Encoding),
    ("lock-wait-timeout", None, ValueKind::Duration),
];

/// A request whose every part has been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpRequest {
    pub database: String,
    pub format: DumpFormat,
    pub jobs: u32,
    /// The extra options, each in `--name` or `--name=value` form.
    pub options: Vec<String>,
}

impl DumpRequest {
    pub fn new(
        database: &str,
        format: &str,
        jobs: i64,
        extra_args: &[String],
    ) -> Result<Self, DumpRequestError> {
        if database.is_empty() || database.len() > MAX_DATABASE_NAME_BYTES {
            return Err(DumpRequestError::BadDatabaseName(database.len()));
        }
        let format = DumpFormat::parse(format)?;
        let jobs = u32::try_from(jobs)
            .ok()
            .filter(|jobs| (1..=MAX_JOBS).contains(jobs))
            .ok_or(DumpRequestError::JobsOutOfRange(jobs))?;
        if jobs > 1 && format != DumpFormat::Directory {
            return Err(DumpRequestError::JobsNeedDirectory { jobs });
        }
        let options = normalize_options(extra_args)?;
        let size: usize = options.iter().map(|option| option.len() + 1).sum();
        if size > MAX_EXTRA_ARGS_BYTES {
            return Err(DumpRequestError::TooLong(size));
        }
        Ok(DumpRequest {
            database: database.to_owned(),
            format,
            jobs,
            options,
        })
    }
}

/// Where and as whom the agent connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionTarget {
    /// The server's Unix-socket directory.
    pub socket_directory: String,
    pub port: u16,
    pub role: String,
    pub application_name: String,
}

/// pg_dump's argv (without the program name) for `request`, writing to
/// `output`, or to its standard output without one.
pub fn pg_dump_arguments(
    request: &DumpRequest,
    target: &ConnectionTarget,
    output: Option<&Path>,
) -> Vec<OsString> {
    let mut argv = vec![OsString::from(format!(
        "--format={}",
        request.format.as_str()
    ))];
    if let Some(output) = output {
        let mut file = OsString::from("--file=");
        file.push(output.as_os_str());
        argv.push(file);
    }
    argv.push(OsString::from("--no-password"));
    if request.jobs > 1 {
        argv.push(OsString::from(format!("--jobs={}", request.jobs)));
    }
    argv.extend(request.options.iter().map(OsString::from));
    argv.push(OsString::from(format!(
        "--dbname={}",
        connection_string(&request.database, target)
    )));
    argv
}

/// A libpq connection string with every value quoted.
pub fn connection_string(database: &str, target: &ConnectionTarget) -> String {
    [
        ("dbname", database),
        ("host", target.socket_directory.as_str()),
        ("port", &target.port.to_string()),
        ("user", target.role.as_str()),
        ("application_name", target.application_name.as_str()),
        ("connect_timeout", "10"),
    ]
    .iter()
    .map(|(key, value)| format!("{key}={}", quote_conninfo_value(value)))
    .collect::<Vec<_>>()
    .join(" ")
}

fn quote_conninfo_value(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for ch in value.chars() {
        if ch == '\'' || ch == '\\' {
            quoted.push('\\');
        }
        quoted.push(ch);
    }
    quoted.push('\'');
    quoted
}

fn normalize_options(extra_args: &[String]) -> Result<Vec<String>, DumpRequestError> {
    let mut options = Vec::new();
    let mut args = extra_args.iter();
    while let Some(arg) = args.next() {
        reject_shell_syntax(arg)?;
        let (name, kind, inline_value) = parse_option(arg)?;
        if kind == ValueKind::Flag {
            if inline_value.is_some() {
                return Err(DumpRequestError::UnexpectedValue(arg.clone()));
            }
            options.push(format!("--{name}"));
            continue;
        }
        let value = match inline_value {
            Some(value) => value,
            None => {
                let next = args
                    .next()
                    .filter(|next| !next.starts_with('-'))
                    .ok_or_else(|| DumpRequestError::MissingValue(arg.clone()))?;
                reject_shell_syntax(next)?;
                next.clone()
            }
        };
        check_value(name, kind, &value)?;
        options.push(format!("--{name}={value}"));
    }
    Ok(options)
}

/// Splits `--name[=value]`, `-X[value]` into the allowed option's long
/// name, its kind and the value written inline.
fn parse_option(arg: &str) -> Result<(&'static str, ValueKind, Option<String>), DumpRequestError> {
    if let Some(rest) = arg.strip_prefix("--") {
        let (name, value) = match rest.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (rest, None),
        };
        let &(long, _, kind) = ALLOWED_OPTIONS
            .iter()
            .find(|(long, _, _)| *long == name)
            .ok_or_else(|| DumpRequestError::NotAllowed(arg.to_owned()))?;
        return Ok((long, kind, value));
    }
    let Some(rest) = arg.strip_prefix('-') else {
        return Err(DumpRequestError::NotAnOption(arg.to_owned()));
    };
    let mut chars = rest.chars();
    let letter = chars
        .next()
        .ok_or_else(|| DumpRequestError::NotAnOption(arg.to_owned()))?;
    let &(long, _, kind) = ALLOWED_OPTIONS
        .iter()
        .find(|(_, short, _)| *short == Some(letter))
        .ok_or_else(|| DumpRequestError::NotAllowed(arg.to_owned()))?;
    let attached: String = chars.collect();
    let value = if attached.is_empty() {
        None
    } else if kind == ValueKind::Flag {
        // Bundled flags (-Ox) are legal for pg_dump but ambiguous to read
        // back; ask for them one by one.
        return Err(DumpRequestError::NotAllowed(arg.to_owned()));
    } else {
        Some(attached)
    };
    Ok((long, kind, value))
}

fn check_value(option: &str, kind: ValueKind, value: &str) -> Result<(), DumpRequestError> {
    let bad = |reason| DumpRequestError::BadValue {
        option: format!("--{option}"),
        value: value.to_owned(),
        reason,
    };
    let is_number = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    match kind {
        ValueKind::Flag => Ok(()),
        ValueKind::Pattern if value.is_empty() => Err(bad("the pattern is empty")),
        ValueKind::Pattern => Ok(()),
        ValueKind::Level if value.len() == 1 && is_number(value) => Ok(()),
        ValueKind::Level => Err(bad("the compression level is a digit from 0 to 9")),
        ValueKind::Section if matches!(value, "pre-data" | "data" | "post-data") => Ok(()),
        ValueKind::Section => Err(bad("the section is pre-data, data or post-data")),
        ValueKind::Encoding
            if !value.is_empty()
                && value.len() <= 32
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            Ok(())
        }
        ValueKind::Encoding => Err(bad("an encoding name is letters, digits, '_' and '-'")),
        ValueKind::Count if is_number(value) && value.len() <= 9 && value != "0" => Ok(()),
        ValueKind::Count => Err(bad("a positive whole number is expected")),
        ValueKind::Duration => {
            let digits = value.bytes().take_while(u8::is_ascii_digit).count();
            let (number, unit) = value.split_at(digits);
            if is_number(number)
                && number.len() <= 9
                && matches!(unit, "" | "ms" | "s" | "min" | "h" | "d")
            {
                Ok(())
            } else {
                Err(bad(
                    "a duration is a whole number with an optional unit (ms, s, min, h, d)",
                ))
            }
        }
    }
}

fn reject_shell_syntax(arg: &str) -> Result<(), DumpRequestError> {
    let operator = arg
        .chars()
        .any(|ch| ch.is_control() || matches!(ch, ';' | '|' | '&' | '`' | '<' | '>' | '\''))
        || arg.contains("$(")
        || arg.contains("${");
    if operator {
        Err(DumpRequestError::ShellSyntax(arg.to_owned()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn request(list: &[&str]) -> Result<DumpRequest, DumpRequestError> {
        DumpRequest::new("appdb", "custom", 1, &args(list))
    }

    #[test]
    fn options_are_normalized_to_long_form() {
        let request = request(&[
            "-n",
            "public",
            "--table=a*",
            "-Tlog",
            "--exclude-table-data",
            "audit.*",
            "-Z",
            "9",
            "--serializable-deferrable",
            "-O",
            "--section=data",
            "--lock-wait-timeout=5s",
        ])
        .unwrap();
        assert_eq!(
            request.options,
            args(&[
                "--schema=public",
                "--table=a*",
                "--exclude-table=log",
                "--exclude-table-data=audit.*",
                "--compress=9",
                "--serializable-deferrable",
                "--no-owner",
                "--section=data",
                "--lock-wait-timeout=5s",
            ])
        );
    }

    #[test]
    fn agent_owned_and_unknown_options_are_refused() {
        for bad in [
            "--file=/tmp/x",
            "-f",
            "--format=plain",
            "-Fc",
            "--jobs=4",
            "-j",
            "--dbname=other",
            "-d",
            "--host=elsewhere",
            "-h",
            "--port=1",
            "--username=x",
            "-U",
            "--role=postgres",
            "--no-sync",
            "--snapshot=x",
            "-W",
            "--frobnicate",
            "-Ox",
        ] {
            assert!(
                matches!(request(&[bad]), Err(DumpRequestError::NotAllowed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            request(&["otherdb"]),
            Err(DumpRequestError::NotAnOption(_))
        ));
    }

    #[test]
    fn shell_syntax_is_refused() {
        for bad in [
            "--schema=public; rm -rf /",
            "--table=$(id)",
            "--table=a|b",
            "--table=x > /etc/passwd",
            "--schema='public'",
            "--table=`id`",
            "--table=a\nb",
            "--schema=${HOME}",
        ] {
            assert!(
                matches!(request(&[bad]), Err(DumpRequestError::ShellSyntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            request(&["-n", "x && y"]),
            Err(DumpRequestError::ShellSyntax(_))
        ));
        // `$` alone is legal in an identifier.
        assert!(request(&["--table=price$usd"]).is_ok());
    }

    #[test]
    fn values_are_checked() {
        assert!(matches!(
            request(&["-n"]),
            Err(DumpRequestError::MissingValue(_))
        ));
        assert!(matches!(
            request(&["-n", "--no-owner"]),
            Err(DumpRequestError::MissingValue(_))
        ));
        assert!(matches!(
            request(&["--no-owner=yes"]),
            Err(DumpRequestError::UnexpectedValue(_))
        ));
        for bad in [
            "--compress=10",
            "--compress=gzip",
            "--section=all",
            "--lock-wait-timeout=soon",
            "--rows-per-insert=0",
            "--schema=",
            "--encoding=UTF 8",
        ] {
            assert!(
                matches!(request(&[bad]), Err(DumpRequestError::BadValue { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn format_jobs_and_database_are_checked() {
        assert_eq!(
            DumpRequest::new("appdb", "zip", 1, &[]),
            Err(DumpRequestError::UnknownFormat("zip".into()))
        );
        assert_eq!(
            DumpRequest::new("appdb", "custom", 4, &[]),
            Err(DumpRequestError::JobsNeedDirectory { jobs: 4 })
        );
        assert_eq!(
            DumpRequest::new("appdb", "directory", 0, &[]),
            Err(DumpRequestError::JobsOutOfRange(0))
        );
        assert_eq!(
            DumpRequest::new("appdb", "directory", 65, &[]),
            Err(DumpRequestError::JobsOutOfRange(65))
        );
        assert!(DumpRequest::new("appdb", "directory", 4, &[]).is_ok());
        assert_eq!(
            DumpRequest::new("", "custom", 1, &[]),
            Err(DumpRequestError::BadDatabaseName(0))
        );
        let long = "x".repeat(64);
        assert_eq!(
            DumpRequest::new(&long, "custom", 1, &[]),
            Err(DumpRequestError::BadDatabaseName(64))
        );
        let many = vec!["--schema=abcdefghijklmnopqrstuvwxyz".to_string(); 100];
        assert!(matches!(
            DumpRequest::new("appdb", "custom", 1, &many),
            Err(DumpRequestError::TooLong(_))
        ));
    }

    #[test]
    fn connection_values_are_quoted() {
        let target = ConnectionTarget {
            socket_directory: "/var/run/postgresql".into(),
            port: 5432,
            role: "o'brien".into(),
            application_name: "pg_blockbackup dump agent 7".into(),
        };
        let text = connection_string("host=evil dbname=x\\", &target);
        assert_eq!(
            text,
            "dbname='host=evil dbname=x\\\\' host='/var/run/postgresql' port='5432' \
             user='o\\'brien' application_name='pg_blockbackup dump agent 7' connect_timeout='10'"
        );
    }

    #[test]
    fn argv_has_agent_options_first_and_the_connection_last() {
        let request = DumpRequest::new("appdb", "directory", 3, &args(&["-n", "s"])).unwrap();
        let target = ConnectionTarget {
            socket_directory: "/sock".into(),
            port: 5433,
            role: "postgres".into(),
            application_name: "a".into(),
        };
        let argv = pg_dump_arguments(&request, &target, Some(Path::new("/repo/b/dump/dump.d")));
        let streamed = pg_dump_arguments(&request, &target, None);
        assert!(!streamed
            .iter()
            .any(|arg| arg.to_string_lossy().starts_with("--file")));
        assert_eq!(streamed.len() + 1, argv.len());
        let argv: Vec<String> = argv.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(argv[0], "--format=directory");
        assert_eq!(argv[1], "--file=/repo/b/dump/dump.d");
        assert_eq!(argv[2], "--no-password");
        assert_eq!(argv[3], "--jobs=3");
        assert_eq!(argv[4], "--schema=s");
        assert!(argv[5].starts_with("--dbname=dbname='appdb' host='/sock' port='5433'"));
    }
}
