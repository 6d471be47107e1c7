//! Every node's WAL held while a cluster backup runs, from before its
//! backup starts until the common restore point is attached to it.
//!
//! A node's backup holds the WAL from its start to its stop, and lets it
//! go when it ends. The restore point comes only after the slowest node's
//! backup, and attaching it to a node's backup copies that node's WAL from
//! its backup's stop through the point out of pg_wal. On a node whose
//! backup ended early, the checkpoints in between could remove that WAL:
//! nothing else need keep it (no archive, no wal_keep_size). So before any
//! backup begins, one psql session per node creates a temporary physical
//! replication slot there (`pg_create_physical_replication_slot(name,
//! true, true)`: reserved at once, from the node's last redo point, which
//! is before its backup starts) and keeps its connection open until the
//! point is attached. The node drops the slot when that session ends, for
//! whatever reason: its input closed here, this backend gone (psql reads
//! end of input, and the parent-death signal), the node restarted.
//!
//! With `max_slot_wal_keep_size` a node may invalidate the slot, ending
//! the session; the WAL is then as unprotected as it was without it, and
//! a failed attach says the hold ended early.

use std::path::Path;
use std::time::{Duration, Instant};

use blockbackup_core::cluster::node_command::{psql_session_arguments, NodeCommand, NodeTarget};
use blockbackup_core::cluster::sql_literal;
use pgrx::pg_sys;

use super::node_psql::{node_conninfo, psql_environment, CONNECT_TIMEOUT_S, POLL};

/// How long a node may take to answer once connected.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a session may take to end once its input is closed.
const END_GRACE: Duration = Duration::from_secs(10);

/// The slot's name on every node: from the set's id, in the characters a
/// slot name allows.
pub fn slot_name(set_id: &str) -> String {
    let id: String = set_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("pg_blockbackup_set_{id}")
}

/// One open session per node, in the targets' order.
pub struct WalHolds {
    sessions: Vec<NodeCommand>,
}

impl WalHolds {
    /// Holds the WAL on every node, or tells, for each node that could not
    /// (by its index in `targets`), why; then nothing is held anywhere.
    pub fn take(
        psql: &Path,
        targets: &[NodeTarget],
        slot: &str,
    ) -> Result<WalHolds, Vec<(usize, String)>> {
        let environment = psql_environment();
        let statement = format!(
            "SELECT lsn FROM pg_catalog.pg_create_physical_replication_slot({}, true, true);\n",
            sql_literal(slot)
        );
        let mut sessions = Vec::new();
        let mut failed = Vec::new();
        for (index, target) in targets.iter().enumerate() {
            let arguments = psql_session_arguments(&node_conninfo(target));
            match NodeCommand::spawn_session(psql, &arguments, &environment) {
                Ok(mut session) => {
                    if let Err(error) = session.send(&statement) {
                        failed.push((index, format!("could not write to psql: {error}")));
                    }
                    sessions.push(session);
                }
                Err(error) => failed.push((index, format!("could not start psql: {error}"))),
            }
        }
        if failed.is_empty() {
            failed = wait_for_answers(&mut sessions);
        }
        if failed.is_empty() {
            Ok(WalHolds { sessions })
        } else {
            Err(failed)
        }
    }

    /// Why node `index`'s session ended, if it has (its slot is gone).
    pub fn ended_early(&mut self, index: usize) -> Option<String> {
        let session = self.sessions.get_mut(index)?;
        match session.poll() {
            Ok(Some(output)) => Some(output.failure()),
            Ok(None) => None,
            Err(error) => Some(format!("could not watch psql: {error}")),
        }
    }

    /// Ends every session (each node drops its slot), waiting a while for
    /// them to end by themselves before they are stopped.
    pub fn release(mut self) {
        for session in &mut self.sessions {
            session.close_input();
        }
        let deadline = Instant::now() + END_GRACE;
        while Instant::now() < deadline
            && self
                .sessions
                .iter_mut()
                .any(|session| matches!(session.poll(), Ok(None)))
        {
            std::thread::sleep(POLL);
        }
        // Dropping reaps what ended and stops what did not.
    }
}

/// Waits until every session printed its slot's LSN (where it holds WAL
/// from) or ended; returns the nodes that did not answer so, with why.
fn wait_for_answers(sessions: &mut [NodeCommand]) -> Vec<(usize, String)> {
    let limit = Duration::from_secs(u64::from(CONNECT_TIMEOUT_S)) + ANSWER_TIMEOUT;
    let deadline = Instant::now() + limit;
    let mut pending: Vec<usize> = (0..sessions.len()).collect();
    let mut failed = Vec::new();
    while !pending.is_empty() {
        pending.retain(|&index| {
            let session = &mut sessions[index];
            if session.printed().contains('\n') {
                return false;
            }
            match session.poll() {
                Ok(None) => true,
                Ok(Some(output)) => {
                    failed.push((index, output.failure()));
                    false
                }
                Err(error) => {
                    failed.push((index, format!("could not watch psql: {error}")));
                    false
                }
            }
        });
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for &index in &pending {
                failed.push((index, format!("no answer in {} s", limit.as_secs())));
            }
            break;
        }
        std::thread::sleep(POLL);
        pg_sys::check_for_interrupts!();
    }
    failed.sort_by_key(|(index, _)| *index);
    failed
}
