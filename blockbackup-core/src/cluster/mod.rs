//! Backing up a Citus cluster from its coordinator: what needs no server.
//!
//! The coordinator's session runs one `psql` per node (the coordinator
//! itself included, over its own socket), each calling that node's
//! pg_blockbackup, so that the nodes back up at the same time and a node
//! that fails can have the others cancelled (SIGINT makes psql cancel its
//! statement on the node, whose backup then ends in ERROR there). This
//! module starts and watches those processes and reads what they print;
//! the extension decides what they run and records the set
//! (`repository::cluster_sets`).

pub mod node_command;

/// `text` as an SQL string literal, for a server with
/// standard_conforming_strings on (the default since 9.1): quotes doubled,
/// and E'' with backslashes doubled when it holds one.
pub fn sql_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if quoted.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

#[cfg(test)]
mod tests {
    use super::sql_literal;

    #[test]
    fn literals_are_quoted() {
        assert_eq!(sql_literal("plain"), "'plain'");
        assert_eq!(sql_literal("it's"), "'it''s'");
        assert_eq!(sql_literal("a\\b'"), "E'a\\\\b'''");
    }
}
