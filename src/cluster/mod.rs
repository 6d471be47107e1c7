//! Backing up a Citus cluster from its coordinator, every node at once and
//! all of them consistent at one restore point (`take_cluster_backup`),
//! and the sets so taken (`cluster_backups`). The pure parts (the node
//! processes, the set records) are in `blockbackup_core::cluster` and
//! `blockbackup_core::repository::cluster_sets`.

pub mod coordinator;
pub mod errors;
mod node_psql;
pub mod take;
pub mod wal_holds;
