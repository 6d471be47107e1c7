//! Cluster backup sets: what one `take_cluster_backup` did on a Citus
//! cluster, kept in the coordinator's repository as `cluster/<set id>.json`.
//!
//! A set ties together, for every node, the backup that node took in its
//! own repository and the one restore point all of them share, so that the
//! whole cluster can be restored to it. Its record is written RUNNING
//! before any node starts, rewritten as the nodes end, and DONE last: a set
//! is restorable only when DONE, and then every node names its backup and
//! the restore point's position in its WAL.
//!
//! One set runs at a time per coordinator: the cluster lock (a lock file
//! beside the repository's others) is held for the whole run, so a RUNNING
//! set found while the lock is free was cut off and is marked ERROR, as
//! RUNNING backups are.

use serde::{Deserialize, Serialize};

use super::catalog::{opt_lsn_text, MAX_RESTORE_POINT_NAME_BYTES};
use super::locks::ClusterLock;
use super::{to_json, Repository, RepositoryError};
use crate::civil_time::utc_fields;
use crate::storage::join;
use crate::Lsn;

const CLUSTER: &str = "cluster";
const RECORD_SUFFIX: &str = ".json";
const FORMAT: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SetStatus {
    Running,
    Done,
    Error,
}

impl SetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SetStatus::Running => "RUNNING",
            SetStatus::Done => "DONE",
            SetStatus::Error => "ERROR",
        }
    }
}

/// What became of one node's part of a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum NodeStatus {
    /// Not started yet.
    Pending,
    Running,
    /// Its backup is DONE and holds the set's restore point.
    Done,
    Error,
    /// Stopped because another node failed.
    Cancelled,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Pending => "PENDING",
            NodeStatus::Running => "RUNNING",
            NodeStatus::Done => "DONE",
            NodeStatus::Error => "ERROR",
            NodeStatus::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// pg_dist_node's nodeid and groupid (0: the coordinator).
    pub node_id: i32,
    pub group_id: i32,
    /// How Citus reaches the node (pg_dist_node's nodename and nodeport).
    pub host: String,
    pub port: u16,
    pub status: NodeStatus,
    /// The backup in the node's own repository, once it has one.
    pub backup_id: Option<String>,
    /// full or incremental, as the node chose for 'auto'.
    pub mode: Option<String>,
    /// The end of the restore point's record in this node's WAL.
    #[serde(with = "opt_lsn_text")]
    pub restore_point_lsn: Option<Lsn>,
    /// Why it failed or was cancelled.
    pub message: Option<String>,
}

impl ClusterNode {
    /// `host:port`, as the set's rows and errors name a node.
    pub fn label(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSet {
    pub format: u32,
    pub set_id: String,
    pub restore_point: String,
    /// The mode asked of every node ('auto', 'full' or 'incremental').
    pub mode: String,
    pub status: SetStatus,
    /// Microseconds since the Unix epoch.
    pub start_time_us: i64,
    pub end_time_us: Option<i64>,
    /// The Citus version the coordinator ran.
    pub citus_version: String,
    /// How long distributed commits were held up by the restore point, in
    /// microseconds (from asking for Citus's locks to releasing them).
    pub commits_blocked_us: Option<i64>,
    pub message: Option<String>,
    /// The coordinator first, then the workers by node id.
    pub nodes: Vec<ClusterNode>,
}

impl ClusterSet {
    pub fn new(
        set_id: String,
        restore_point: String,
        mode: String,
        start_time_us: i64,
        citus_version: String,
        mut nodes: Vec<ClusterNode>,
    ) -> Self {
        nodes.sort_by_key(|node| (node.group_id != 0, node.node_id));
        ClusterSet {
            format: FORMAT,
            set_id,
            restore_point,
            mode,
            status: SetStatus::Running,
            start_time_us,
            end_time_us: None,
            citus_version,
            commits_blocked_us: None,
            message: None,
            nodes,
        }
    }

    /// Ends the set in ERROR with `message`; nodes still pending or running
    /// are cancelled.
    pub fn fail(&mut self, message: String, end_time_us: i64) {
        for node in &mut self.nodes {
            if matches!(node.status, NodeStatus::Pending | NodeStatus::Running) {
                node.status = NodeStatus::Cancelled;
            }
        }
        self.status = SetStatus::Error;
        self.message = Some(message);
        self.end_time_us = Some(end_time_us);
    }

    /// Ends the set DONE; refused unless every node is DONE with its backup
    /// and restore point named (a set that says DONE is restorable).
    pub fn finish(&mut self, end_time_us: i64) -> Result<(), String> {
        if let Some(node) = self.nodes.iter().find(|node| {
            node.status != NodeStatus::Done
                || node.backup_id.is_none()
                || node.restore_point_lsn.is_none()
        }) {
            return Err(format!(
                "node {} is {} without {}",
                node.label(),
                node.status.as_str(),
                if node.backup_id.is_none() {
                    "a backup"
                } else {
                    "the restore point"
                }
            ));
        }
        self.status = SetStatus::Done;
        self.end_time_us = Some(end_time_us);
        Ok(())
    }
}

/// The restore point name a set gets when none is given.
pub fn generated_restore_point_name(start_time_us: i64) -> String {
    let ((year, month, day), (hour, minute, second), _) = utc_fields(start_time_us);
    format!("cluster_{year:04}{month:02}{day:02}_{hour:02}{minute:02}{second:02}")
}

/// Errors unless `name` can be a restore point every node records.
pub fn check_restore_point_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_RESTORE_POINT_NAME_BYTES
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "invalid restore point name {name:?}: 1 to {MAX_RESTORE_POINT_NAME_BYTES} bytes without control characters"
        ));
    }
    Ok(())
}

fn valid_set_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Repository {
    fn cluster_set_path(&self, id: &str) -> String {
        join(CLUSTER, &format!("{id}{RECORD_SUFFIX}"))
    }

    /// A new set id from its start time (`20261202-011500C`, with `-2` and
    /// so on when that one is taken).
    pub fn new_cluster_set_id(&self, start_time_us: i64) -> Result<String, RepositoryError> {
        let ((year, month, day), (hour, minute, second), _) = utc_fields(start_time_us);
        let base = format!("{year:04}{month:02}{day:02}-{hour:02}{minute:02}{second:02}C");
        let taken = self.cluster_set_ids()?;
        if !taken.contains(&base) {
            return Ok(base);
        }
        let mut suffix = 2u64;
        loop {
            let candidate = format!("{base}-{suffix}");
            if !taken.contains(&candidate) {
                return Ok(candidate);
            }
            suffix += 1;
        }
    }

    fn cluster_set_ids(&self) -> Result<Vec<String>, RepositoryError> {
        let entries = self
            .storage
            .list(CLUSTER)
            .map_err(self.store_error(CLUSTER))?;
        Ok(entries
            .into_iter()
            .filter_map(|entry| entry.name.strip_suffix(RECORD_SUFFIX).map(str::to_owned))
            .filter(|id| valid_set_id(id))
            .collect())
    }

    /// Writes the set's record durably, replacing the old one at once.
    pub fn write_cluster_set(&self, set: &ClusterSet) -> Result<(), RepositoryError> {
        if !valid_set_id(&set.set_id) {
            return Err(RepositoryError::InvalidBackupId {
                id: set.set_id.clone(),
            });
        }
        let path = self.cluster_set_path(&set.set_id);
        self.storage
            .put(&path, &to_json(set))
            .map_err(self.store_error(&path))
    }

    pub fn read_cluster_set(&self, id: &str) -> Result<ClusterSet, RepositoryError> {
        if !valid_set_id(id) {
            return Err(RepositoryError::InvalidBackupId { id: id.to_owned() });
        }
        let path = self.cluster_set_path(id);
        let set: ClusterSet = self.read_json(&path, id)?;
        if set.set_id != id {
            return Err(RepositoryError::RecordMismatch {
                path: self.path_of(&path),
                found: set.set_id,
            });
        }
        Ok(set)
    }

    /// Every set, oldest first. A record that cannot be read is an error
    /// naming it: it may be the only trace of a cluster's restore point.
    pub fn cluster_sets(&self) -> Result<Vec<ClusterSet>, RepositoryError> {
        let mut sets = self
            .cluster_set_ids()?
            .iter()
            .map(|id| self.read_cluster_set(id))
            .collect::<Result<Vec<_>, _>>()?;
        sets.sort_by(|a, b| (a.start_time_us, &a.set_id).cmp(&(b.start_time_us, &b.set_id)));
        Ok(sets)
    }

    /// Marks RUNNING sets ERROR: with the cluster lock held, no set can be
    /// running.
    pub fn mark_interrupted_cluster_sets(
        &self,
        _lock: &ClusterLock,
        now_us: i64,
    ) -> Result<usize, RepositoryError> {
        let mut marked = 0;
        for mut set in self.cluster_sets()? {
            if set.status == SetStatus::Running {
                set.fail(
                    "the cluster backup was cut off (the coordinator's session ended or the server stopped)"
                        .to_owned(),
                    now_us,
                );
                self.write_cluster_set(&set)?;
                marked += 1;
            }
        }
        Ok(marked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(node_id: i32, group_id: i32) -> ClusterNode {
        ClusterNode {
            node_id,
            group_id,
            host: format!("/tmp/node{node_id}"),
            port: 5432 + node_id as u16,
            status: NodeStatus::Pending,
            backup_id: None,
            mode: None,
            restore_point_lsn: None,
            message: None,
        }
    }

    fn repository() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(dir.path(), 42).unwrap();
        (dir, repo)
    }

    #[test]
    fn coordinator_first_then_workers_by_id() {
        let set = ClusterSet::new(
            "s".into(),
            "rp".into(),
            "auto".into(),
            0,
            "13.2".into(),
            vec![node(3, 2), node(1, 0), node(2, 1)],
        );
        let ids: Vec<i32> = set.nodes.iter().map(|n| n.node_id).collect();
        assert_eq!(ids, [1, 2, 3]);
    }

    #[test]
    fn done_only_when_every_node_has_its_backup_and_restore_point() {
        let mut set = ClusterSet::new(
            "s".into(),
            "rp".into(),
            "auto".into(),
            0,
            "14.0".into(),
            vec![node(1, 0), node(2, 1)],
        );
        for n in &mut set.nodes {
            n.status = NodeStatus::Done;
            n.backup_id = Some("b".into());
        }
        set.nodes[0].restore_point_lsn = Some(Lsn(0x1000));
        let refused = set.clone().finish(1).unwrap_err();
        assert!(refused.contains("/tmp/node2:5434"), "{refused}");
        assert!(refused.contains("restore point"), "{refused}");
        set.nodes[1].restore_point_lsn = Some(Lsn(0x2000));
        set.finish(1).unwrap();
        assert_eq!(set.status, SetStatus::Done);
    }

    #[test]
    fn failing_cancels_what_had_not_ended() {
        let mut set = ClusterSet::new(
            "s".into(),
            "rp".into(),
            "auto".into(),
            0,
            "14.0".into(),
            vec![node(1, 0), node(2, 1), node(3, 2)],
        );
        set.nodes[0].status = NodeStatus::Running;
        set.nodes[1].status = NodeStatus::Error;
        set.fail("node2 failed".into(), 5);
        let states: Vec<_> = set.nodes.iter().map(|n| n.status).collect();
        assert_eq!(
            states,
            [
                NodeStatus::Cancelled,
                NodeStatus::Error,
                NodeStatus::Cancelled
            ]
        );
        assert_eq!(set.status, SetStatus::Error);
        assert_eq!(set.end_time_us, Some(5));
    }

    #[test]
    fn sets_round_trip_and_list_oldest_first() {
        let (_dir, repo) = repository();
        assert!(repo.cluster_sets().unwrap().is_empty());
        let t = 1_764_633_600_000_000; // 2025-12-02 00:00:00 UTC
        let first = repo.new_cluster_set_id(t).unwrap();
        assert_eq!(first, "20251202-000000C");
        let mut a = ClusterSet::new(
            first.clone(),
            "a".into(),
            "auto".into(),
            t,
            "13.2".into(),
            vec![node(1, 0)],
        );
        a.nodes[0].restore_point_lsn = Some(Lsn(0x0100_0028));
        repo.write_cluster_set(&a).unwrap();
        let second = repo.new_cluster_set_id(t).unwrap();
        assert_eq!(second, "20251202-000000C-2");
        let b = ClusterSet::new(
            second,
            "b".into(),
            "full".into(),
            t - 1,
            "13.2".into(),
            vec![node(1, 0)],
        );
        repo.write_cluster_set(&b).unwrap();
        let sets = repo.cluster_sets().unwrap();
        assert_eq!(sets, vec![b, a.clone()]);
        assert_eq!(repo.read_cluster_set(&first).unwrap(), a);
    }

    #[test]
    fn a_cut_off_set_is_marked_error_and_a_damaged_one_named() {
        let (dir, repo) = repository();
        let set = ClusterSet::new(
            "x1".into(),
            "rp".into(),
            "auto".into(),
            1,
            "13.2".into(),
            vec![node(1, 0)],
        );
        repo.write_cluster_set(&set).unwrap();
        let lock = repo.cluster_lock().unwrap();
        assert!(matches!(
            repo.cluster_lock(),
            Err(RepositoryError::Busy { .. })
        ));
        assert_eq!(repo.mark_interrupted_cluster_sets(&lock, 9).unwrap(), 1);
        let marked = repo.read_cluster_set("x1").unwrap();
        assert_eq!(marked.status, SetStatus::Error);
        assert_eq!(marked.nodes[0].status, NodeStatus::Cancelled);
        assert_eq!(repo.mark_interrupted_cluster_sets(&lock, 10).unwrap(), 0);

        std::fs::write(dir.path().join("cluster/x2.json"), b"{ torn").unwrap();
        let error = repo.cluster_sets().unwrap_err().to_string();
        assert!(error.contains("x2.json"), "{error}");
        // Names that are no set id are not read at all.
        std::fs::write(dir.path().join("cluster/../cluster/.tmp-x.json"), b"junk").unwrap();
        assert!(repo.read_cluster_set("../x1").is_err());
    }

    #[test]
    fn generated_names_are_valid_restore_points() {
        let name = generated_restore_point_name(1_764_633_600_000_000);
        assert_eq!(name, "cluster_20251202_000000");
        check_restore_point_name(&name).unwrap();
        assert!(check_restore_point_name("").is_err());
        assert!(check_restore_point_name(&"x".repeat(64)).is_err());
        assert!(check_restore_point_name("a\nb").is_err());
    }
}
