//! Relation forks: the unit whose changed blocks a summary records, and
//! where each lives in the data directory.

/// PostgreSQL's `DEFAULTTABLESPACE_OID` (`pg_default`, under `base/`).
pub const DEFAULT_TABLESPACE_OID: u32 = 1663;
/// PostgreSQL's `GLOBALTABLESPACE_OID` (`pg_global`, under `global/`).
pub const GLOBAL_TABLESPACE_OID: u32 = 1664;

/// The forks of a relation, numbered as PostgreSQL's `ForkNumber`.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[repr(u8)]
pub enum ForkNumber {
    Main = 0,
    Fsm = 1,
    VisibilityMap = 2,
    Init = 3,
}

impl ForkNumber {
    pub fn from_i32(number: i32) -> Option<Self> {
        match number {
            0 => Some(Self::Main),
            1 => Some(Self::Fsm),
            2 => Some(Self::VisibilityMap),
            3 => Some(Self::Init),
            _ => None,
        }
    }

    /// What PostgreSQL appends to the relation file number in file names.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Main => "",
            Self::Fsm => "_fsm",
            Self::VisibilityMap => "_vm",
            Self::Init => "_init",
        }
    }
}

/// One fork of one relation file, or (with `rel_number` 0) a whole
/// database in one tablespace. The field order is the sort order of
/// summaries and of every listing built from them.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RelFork {
    pub spc_oid: u32,
    pub db_oid: u32,
    pub rel_number: u32,
    pub fork: ForkNumber,
}

impl RelFork {
    /// The key that stands for a database directory as a whole. Relation
    /// file number 0 is PostgreSQL's `InvalidRelFileNumber`, so no real
    /// relation can collide with it.
    pub fn database(spc_oid: u32, db_oid: u32) -> Self {
        RelFork {
            spc_oid,
            db_oid,
            rel_number: 0,
            fork: ForkNumber::Main,
        }
    }

    pub fn is_database_level(&self) -> bool {
        self.rel_number == 0
    }
}

/// Path of the fork's first segment file (or of the database directory,
/// for a database-level key), relative to the data directory.
/// `tablespace_version_dir` is the server's `TABLESPACE_VERSION_DIRECTORY`,
/// e.g. `PG_15_202209061`.
pub fn relation_path(rf: &RelFork, tablespace_version_dir: &str) -> String {
    let directory = match rf.spc_oid {
        GLOBAL_TABLESPACE_OID => "global".to_owned(),
        DEFAULT_TABLESPACE_OID => format!("base/{}", rf.db_oid),
        spc => format!("pg_tblspc/{spc}/{tablespace_version_dir}/{}", rf.db_oid),
    };
    if rf.is_database_level() {
        directory
    } else {
        format!("{directory}/{}{}", rf.rel_number, rf.fork.suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(spc_oid: u32, db_oid: u32, rel_number: u32, fork: ForkNumber) -> RelFork {
        RelFork {
            spc_oid,
            db_oid,
            rel_number,
            fork,
        }
    }

    #[test]
    fn fork_numbers_match_postgresql() {
        for (number, fork, suffix) in [
            (0, ForkNumber::Main, ""),
            (1, ForkNumber::Fsm, "_fsm"),
            (2, ForkNumber::VisibilityMap, "_vm"),
            (3, ForkNumber::Init, "_init"),
        ] {
            assert_eq!(ForkNumber::from_i32(number), Some(fork));
            assert_eq!(fork as u8 as i32, number);
            assert_eq!(fork.suffix(), suffix);
        }
        assert_eq!(ForkNumber::from_i32(-1), None);
        assert_eq!(ForkNumber::from_i32(4), None);
    }

    #[test]
    fn paths_follow_the_tablespace() {
        let verdir = "PG_15_202209061";
        assert_eq!(
            relation_path(&rel(1663, 5, 16384, ForkNumber::Main), verdir),
            "base/5/16384"
        );
        assert_eq!(
            relation_path(&rel(1663, 5, 16384, ForkNumber::VisibilityMap), verdir),
            "base/5/16384_vm"
        );
        assert_eq!(
            relation_path(&rel(1664, 0, 1262, ForkNumber::Fsm), verdir),
            "global/1262_fsm"
        );
        assert_eq!(
            relation_path(&rel(16400, 16401, 16402, ForkNumber::Init), verdir),
            "pg_tblspc/16400/PG_15_202209061/16401/16402_init"
        );
    }

    #[test]
    fn database_keys_name_the_directory() {
        let verdir = "PG_15_202209061";
        assert!(RelFork::database(1663, 5).is_database_level());
        assert_eq!(relation_path(&RelFork::database(1663, 5), verdir), "base/5");
        assert_eq!(
            relation_path(&RelFork::database(16400, 16401), verdir),
            "pg_tblspc/16400/PG_15_202209061/16401"
        );
    }

    #[test]
    fn sorts_by_tablespace_database_relation_fork() {
        let mut keys = vec![
            rel(2, 1, 1, ForkNumber::Main),
            rel(1, 2, 1, ForkNumber::Main),
            rel(1, 1, 2, ForkNumber::Main),
            rel(1, 1, 1, ForkNumber::Init),
            rel(1, 1, 1, ForkNumber::Main),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                rel(1, 1, 1, ForkNumber::Main),
                rel(1, 1, 1, ForkNumber::Init),
                rel(1, 1, 2, ForkNumber::Main),
                rel(1, 2, 1, ForkNumber::Main),
                rel(2, 1, 1, ForkNumber::Main),
            ]
        );
    }
}
