//! The `blockbackup.*` settings.

use std::ffi::CString;

use blockbackup_core::repository::catalog::Compression;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};

/// Summarize WAL in the background worker; off stops the worker's reading
/// and releases the WAL it held.
pub static SUMMARIZE_WAL: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Minutes after which a summary file is removed; 0 keeps them forever.
pub static SUMMARY_KEEP_TIME_MIN: GucSetting<i32> = GucSetting::<i32>::new(10 * 24 * 60);

/// Megabytes of block map the worker may hold before it writes a summary early.
pub static SUMMARIZER_MAX_MEMORY_MB: GucSetting<i32> = GucSetting::<i32>::new(64);

/// The backup repository directory; only a superuser may set it, since
/// backups are written there with the server's privileges.
pub static REPOSITORY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Where restores of roles without superuser rights must go; unset, they
/// cannot restore at all (only a superuser chooses where the server's OS
/// user writes).
pub static RESTORE_DIRECTORY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

/// The values `blockbackup.compression` takes; the server refuses others
/// when the setting is made, listing these.
#[derive(PostgresGucEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionSetting {
    #[name = c"none"]
    None,
    #[name = c"gzip"]
    Gzip,
    #[name = c"zstd"]
    Zstd,
    #[name = c"lz4"]
    Lz4,
}

impl CompressionSetting {
    pub fn compression(self) -> Compression {
        match self {
            CompressionSetting::None => Compression::None,
            CompressionSetting::Gzip => Compression::Gzip,
            CompressionSetting::Zstd => Compression::Zstd,
            CompressionSetting::Lz4 => Compression::Lz4,
        }
    }
}

/// Default compression of take_backup.
pub static COMPRESSION: GucSetting<CompressionSetting> =
    GucSetting::<CompressionSetting>::new(CompressionSetting::None);

/// Default compression level of take_backup; -1 is the codec's own
/// default (gzip 6, zstd 3).
pub static COMPRESS_LEVEL: GucSetting<i32> = GucSetting::<i32>::new(-1);

/// Default number of copy threads of take_backup and restore_backup.
pub static PARALLEL: GucSetting<i32> = GucSetting::<i32>::new(1);

/// How to reach a repository in S3 (`blockbackup.repository = 's3://...'`);
/// the names follow pgBackRest's `repo1-s3-*` options.
pub static S3_ENDPOINT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static S3_REGION: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"us-east-1"));
pub static S3_VERIFY_TLS: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static S3_CA_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// The credentials: only a superuser can set or see them (SHOW,
/// pg_settings and current_setting refuse everyone else, as they do for
/// any superuser-only setting, unless granted pg_read_all_settings).
pub static S3_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static S3_KEY_SECRET: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static S3_TOKEN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

#[derive(PostgresGucEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UriStyleSetting {
    #[name = c"host"]
    Host,
    #[name = c"path"]
    Path,
}

pub static S3_URI_STYLE: GucSetting<UriStyleSetting> =
    GucSetting::<UriStyleSetting>::new(UriStyleSetting::Host);

pub fn register() {
    GucRegistry::define_bool_guc(
        c"blockbackup.summarize_wal",
        c"Summarizes WAL into changed-block maps in a background worker.",
        c"Off stops summarizing and drops the replication slot that holds WAL for the summarizer; on resumes where the last summary ended, or records a gap if that WAL is gone.",
        &SUMMARIZE_WAL,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"blockbackup.summary_keep_time",
        c"Time after which WAL summaries are removed (0 keeps them forever).",
        c"",
        &SUMMARY_KEEP_TIME_MIN,
        0,
        i32::MAX / 60,
        GucContext::Sighup,
        GucFlags::UNIT_MIN,
    );
    GucRegistry::define_int_guc(
        c"blockbackup.summarizer_max_memory",
        c"Memory the summarizer's block map may use before a summary is written early.",
        c"",
        &SUMMARIZER_MAX_MEMORY_MB,
        1,
        1024 * 1024,
        GucContext::Sighup,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_string_guc(
        c"blockbackup.repository",
        c"Directory where take_backup writes backups (outside the data directory).",
        c"",
        &REPOSITORY,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"blockbackup.restore_directory",
        c"Directory under which restore_backup targets of roles without superuser rights must lie.",
        c"Unset, only superusers can restore from SQL.",
        &RESTORE_DIRECTORY,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"blockbackup.compression",
        c"Compression of stored backup files: none, gzip, zstd or lz4.",
        c"",
        &COMPRESSION,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"blockbackup.compress_level",
        c"Level of the compression of take_backup (-1: the codec's default).",
        c"gzip takes 0 to 9, zstd 1 to 19; none and lz4 have one level.",
        &COMPRESS_LEVEL,
        -1,
        19,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"blockbackup.parallel",
        c"Threads that read, checksum, compress and write backup files.",
        c"",
        &PARALLEL,
        1,
        64,
        GucContext::Userset,
        GucFlags::default(),
    );
    register_s3();
}

fn register_s3() {
    let text = |name: &'static std::ffi::CStr,
                short: &'static std::ffi::CStr,
                setting: &'static GucSetting<Option<CString>>,
                flags: GucFlags| {
        GucRegistry::define_string_guc(name, short, c"", setting, GucContext::Suset, flags);
    };
    text(
        c"blockbackup.s3_endpoint",
        c"URL of the S3 endpoint, e.g. https://s3.eu-west-1.amazonaws.com (unset: AWS's for the region).",
        &S3_ENDPOINT,
        GucFlags::default(),
    );
    text(
        c"blockbackup.s3_region",
        c"S3 region of the bucket.",
        &S3_REGION,
        GucFlags::default(),
    );
    text(
        c"blockbackup.s3_ca_file",
        c"File of the CA certificates that sign the S3 endpoint's certificate (unset: the built-in roots).",
        &S3_CA_FILE,
        GucFlags::default(),
    );
    text(
        c"blockbackup.s3_key",
        c"S3 access key.",
        &S3_KEY,
        GucFlags::SUPERUSER_ONLY,
    );
    text(
        c"blockbackup.s3_key_secret",
        c"S3 secret access key.",
        &S3_KEY_SECRET,
        GucFlags::SUPERUSER_ONLY,
    );
    text(
        c"blockbackup.s3_token",
        c"S3 session token (temporary credentials).",
        &S3_TOKEN,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_enum_guc(
        c"blockbackup.s3_uri_style",
        c"How requests name the bucket: host (bucket.endpoint) or path (endpoint/bucket).",
        c"",
        &S3_URI_STYLE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"blockbackup.s3_verify_tls",
        c"Verify the S3 endpoint's TLS certificate.",
        c"",
        &S3_VERIFY_TLS,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// A string setting as Rust text, None when unset or empty.
pub fn text(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting
        .get()
        .map(|value| value.to_string_lossy().into_owned())
        .filter(|value| !value.is_empty())
}

/// Any server setting's value by name, whoever asks (some are
/// superuser-only to show, but the extension checks them for every role);
/// None when unknown or empty.
pub fn server_setting(name: &str) -> Option<String> {
    let name = CString::new(name).ok()?;
    // SAFETY: a valid name; missing_ok, and the returned string is
    // copied before anything else can change it.
    let value = unsafe { pgrx::pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if value.is_null() {
        return None;
    }
    let value = unsafe { std::ffi::CStr::from_ptr(value) }
        .to_string_lossy()
        .into_owned();
    (!value.is_empty()).then_some(value)
}
