//! Dump agents: `pg_dump` runs started, watched and cancelled from SQL, the
//! way Greenplum's `gp_backup_launch` starts a dump agent on every segment.
//!
//! A session cannot own a long process itself: the process would die with
//! the session, and nothing else could see or stop it. So each agent is a
//! dynamic background worker (`worker`) that owns one pg_dump child, and
//! the agents' state lives in shared memory (`agent_table`), where
//! `dump_agents()`, `wait_dump_agent()` and `cancel_dump_agent()` of any
//! session find it. `launch` is the session's side: it checks the request
//! before anything starts, starts the worker, and waits for it; a launch
//! that waits is cancelled with the agent, as Greenplum's is.
//!
//! A dump is a backup of mode `dump` in the repository, so `backups()`,
//! `validate_backup()`, `expire_backups()` and `delete_backup()` cover it.
//! The worker creates its entry RUNNING while holding the entry's running
//! lock, writes pg_dump's output under the entry, and records DONE with a
//! CRC-32C per file, or ERROR with pg_dump's last words after removing the
//! partial output. A worker that dies without recording leaves a RUNNING
//! entry whose lock is free, which the next listing marks ERROR.
//!
//! pg_dump connects as the session user of the launching session, over the
//! server's first Unix-socket directory and port, and never prompts for a
//! password: pg_hba.conf must admit that role on a `local` line (trust,
//! peer — which matches the server's OS user, `postgres` on Debian — or a
//! password in that OS user's ~/.pgpass). When it does not, the agent's
//! message says so.

pub mod agent_table;
pub mod launch;
pub mod worker;
