//! Our page checksum against PostgreSQL's: every page of a real cluster
//! initialized with data checksums verifies, and a byte flipped on disk is
//! found at the same file and block as `pg_checksums --check` finds it.

mod manifest_pg_cluster;

use std::fs;
use std::path::Path;

use blockbackup_core::backup::page_checksum::{check_page, relation_segment, PageCheck};
use blockbackup_core::Lsn;
use manifest_pg_cluster::{pg_command, unavailable, Cluster};

const BLOCK: usize = 8192;
const SEGMENT_BLOCKS: u32 = 131_072;

/// (path, block) of every page of the relation files under `data` that
/// fails, and how many were checked.
fn failing_pages(data: &Path) -> (Vec<(String, u32)>, usize) {
    let mut failing = Vec::new();
    let mut checked = 0;
    let mut stack = vec![data.join("base"), data.join("global")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(data)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let Some(segment) = relation_segment(&relative) else {
                continue;
            };
            let content = fs::read(&path).unwrap();
            for (i, page) in content.chunks_exact(BLOCK).enumerate() {
                let block = segment * SEGMENT_BLOCKS + i as u32;
                match check_page(page, block, Lsn(u64::MAX)) {
                    PageCheck::Valid => checked += 1,
                    PageCheck::Skipped => {}
                    PageCheck::Mismatch { .. } => failing.push((relative.clone(), block)),
                }
            }
        }
    }
    failing.sort();
    (failing, checked)
}

#[test]
fn pages_of_a_real_cluster_verify_and_damage_is_found_where_pg_checksums_finds_it() {
    if let Some(reason) = unavailable() {
        println!("skipped: {reason}");
        return;
    }
    let mut cluster = Cluster::start_with(&["--data-checksums"]);
    cluster.psql(
        "CREATE TABLE t AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    );
    cluster.psql("CREATE INDEX ON t (g)");
    let file = cluster.psql("SELECT pg_relation_filepath('t')");
    cluster.stop();

    let (failing, checked) = failing_pages(&cluster.data);
    assert!(
        failing.is_empty(),
        "pages of a clean cluster fail: {failing:?}"
    );
    assert!(checked > 500, "only {checked} pages checked");

    let path = cluster.data.join(&file);
    let mut content = fs::read(&path).unwrap();
    content[3 * BLOCK + 4321] ^= 0x5A;
    fs::write(&path, &content).unwrap();
    let (failing, _) = failing_pages(&cluster.data);
    assert_eq!(failing, vec![(file.clone(), 3)]);

    let output = pg_command("pg_checksums")
        .arg("--check")
        .arg("-D")
        .arg(&cluster.data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!(
            "\"{}\", block 3",
            cluster.data.join(&file).display()
        )),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("checksum verification failed").count(),
        1,
        "{stderr}"
    );
}
