//! How the coordinator's session reaches a node with psql: the connection
//! string every node command uses, what psql may take from the server's
//! environment, and how often a waiting session looks at its commands.

use std::ffi::OsString;
use std::time::Duration;

use blockbackup_core::cluster::node_command::{conninfo, NodeTarget};

const APPLICATION_NAME: &str = "pg_blockbackup cluster backup";
pub const CONNECT_TIMEOUT_S: u32 = 10;
/// How long a session waiting on node commands sleeps between looks.
pub const POLL: Duration = Duration::from_millis(20);

/// The connection string of a node command.
pub fn node_conninfo(target: &NodeTarget) -> String {
    conninfo(target, APPLICATION_NAME, CONNECT_TIMEOUT_S)
}

/// What psql may take from the server's environment: where the OS user's
/// password and service files and TLS settings are, nothing that would
/// send it to another server or database.
pub fn psql_environment() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(key, _)| {
            let key = key.to_string_lossy();
            key == "HOME"
                || key == "PGPASSFILE"
                || key.starts_with("PGSSL")
                || key == "PGSYSCONFDIR"
        })
        .chain([(OsString::from("LC_MESSAGES"), OsString::from("C"))])
        .collect()
}
