//! Tests that need a running server with the library preloaded
//! (`cargo pgrx test`); scenarios across crashes, standbys and oracles are
//! in pg_test/.

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn wait_for_worker() -> i32 {
        for _ in 0..200 {
            let pid =
                Spi::get_one::<i32>("SELECT summarizer_pid FROM blockbackup.summarizer_status()")
                    .expect("status query");
            if let Some(pid) = pid {
                return pid;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the summarizer did not start");
    }

    #[pg_test]
    fn worker_runs_and_holds_its_slot() {
        let pid = wait_for_worker();
        assert!(pid > 0);
        let slot_holder = Spi::get_one::<i32>(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'pg_blockbackup'",
        )
        .expect("slot query");
        assert_eq!(slot_holder, Some(pid));
    }

    #[pg_test]
    fn no_function_is_executable_by_public() {
        let public_grants = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace,
               aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
              WHERE n.nspname = 'blockbackup' AND a.grantee = 0",
        )
        .expect("acl query");
        let functions = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'blockbackup'",
        )
        .expect("count query");
        assert!(functions.unwrap_or(0) >= 5);
        assert_eq!(public_grants, Some(0));
    }

    #[pg_test]
    fn a_new_table_block_shows_up_as_changed() {
        wait_for_worker();
        Spi::run("CREATE TABLE bb_changed(i int); INSERT INTO bb_changed SELECT generate_series(1, 1000)")
            .expect("workload");
        let summarized = Spi::get_one::<String>(
            // The insert position: the test's own transaction is still open.
            "SELECT blockbackup.wait_for_summary(pg_current_wal_insert_lsn(), 30000)::text",
        )
        .expect("wait");
        assert!(summarized.is_some());
        let found = Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM blockbackup.changed_blocks(
                        (SELECT min(start_lsn) FROM blockbackup.summaries()),
                        (SELECT max(end_lsn) FROM blockbackup.summaries())) c
                     WHERE c.relfilenode = pg_relation_filenode('bb_changed')
                       AND c.relforknumber = 0 AND c.relblocknumber = 0)",
        )
        .expect("changed_blocks");
        assert_eq!(found, Some(true));
        let created = Spi::get_one::<i64>(
            "SELECT limit_block FROM blockbackup.changed_relations(
                        (SELECT min(start_lsn) FROM blockbackup.summaries()),
                        (SELECT max(end_lsn) FROM blockbackup.summaries())) c
                     WHERE c.relfilenode = pg_relation_filenode('bb_changed') AND c.relforknumber = 0",
        )
        .expect("changed_relations");
        assert_eq!(
            created,
            Some(0),
            "a table created in the range has limit block 0"
        );
    }

    /// From 17 on a summary ends right before each checkpoint's redo
    /// record, so the redo point is a boundary however far the worker has
    /// read meanwhile. (Before 17 it ends after the checkpoint record.)
    #[pg_test]
    fn a_checkpoint_redo_point_is_a_summary_boundary_on_17_and_later() {
        if !crate::summarizer::BOUNDARY_AT_REDO_POINT {
            return;
        }
        wait_for_worker();
        Spi::run(
            "CREATE TABLE bb_redo(i int); INSERT INTO bb_redo SELECT generate_series(1, 1000)",
        )
        .expect("workload");
        Spi::run("CHECKPOINT").expect("checkpoint");
        Spi::run("INSERT INTO bb_redo SELECT generate_series(1, 1000)").expect("workload");
        let redo = Spi::get_one::<String>("SELECT redo_lsn::text FROM pg_control_checkpoint()")
            .expect("redo")
            .expect("a redo point");
        Spi::get_one::<String>(
            "SELECT blockbackup.wait_for_summary(pg_current_wal_insert_lsn(), 30000)::text",
        )
        .expect("wait");
        let ends_there = Spi::get_one::<bool>(&format!(
            "SELECT EXISTS (SELECT 1 FROM blockbackup.summaries() WHERE end_lsn = '{redo}')
                AND EXISTS (SELECT 1 FROM blockbackup.summaries() WHERE start_lsn = '{redo}')"
        ))
        .expect("summaries");
        assert_eq!(
            ends_there,
            Some(true),
            "no summary boundary at the redo point {redo}"
        );
    }

    #[pg_test(
        error = "changed blocks cannot be computed: start LSN 0/2000 is after end LSN 0/1000"
    )]
    fn a_reversed_range_is_refused() {
        Spi::run("SELECT * FROM blockbackup.changed_blocks('0/2000', '0/1000')")
            .expect("unreachable");
    }

    #[pg_test]
    fn a_range_past_the_summaries_is_refused_with_55000() {
        wait_for_worker();
        let state = Spi::get_one::<String>(
            "DO $$ BEGIN
                 PERFORM * FROM blockbackup.changed_blocks('0/1000', '7FFFFFFF/0');
             EXCEPTION WHEN OTHERS THEN
                 RAISE NOTICE 'state %', SQLSTATE;
                 PERFORM set_config('bb.state', SQLSTATE, true);
             END $$;
             SELECT current_setting('bb.state', true)",
        );
        // Spi::get_one on a multi-statement string returns the last result.
        assert_eq!(state.ok().flatten().as_deref(), Some("55000"));
    }

    /// The SQLSTATE a statement fails with (run in a DO block).
    fn sqlstate_of(statement: &str) -> Option<String> {
        Spi::get_one::<String>(&format!(
            "DO $$ BEGIN
                 {statement};
                 PERFORM set_config('bb.state', 'none', true);
             EXCEPTION WHEN OTHERS THEN
                 PERFORM set_config('bb.state', SQLSTATE, true);
             END $$;
             SELECT current_setting('bb.state', true)"
        ))
        .ok()
        .flatten()
    }

    #[pg_test]
    fn a_null_argument_is_22004_in_every_function() {
        for statement in [
            "PERFORM blockbackup.delete_backup(NULL)",
            "PERFORM * FROM blockbackup.take_backup(NULL)",
            "PERFORM * FROM blockbackup.restore_backup('x', NULL)",
            "PERFORM * FROM blockbackup.backup_start(NULL)",
            "PERFORM * FROM blockbackup.create_restore_point(NULL)",
            "PERFORM * FROM blockbackup.launch_dump_agent(NULL)",
            "PERFORM blockbackup.cancel_dump_agent(NULL)",
            "PERFORM blockbackup.wait_for_summary(NULL)",
            "PERFORM * FROM blockbackup.changed_blocks(NULL, NULL)",
        ] {
            assert_eq!(
                sqlstate_of(statement).as_deref(),
                Some("22004"),
                "{statement}"
            );
        }
    }

    #[pg_test]
    fn settings_are_checked_when_they_are_set() {
        assert_eq!(
            sqlstate_of("SET blockbackup.compression = 'bogus'").as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate_of("SET blockbackup.compression = 'gzip'").as_deref(),
            Some("none")
        );
    }

    #[pg_test(
        error = "dump agent not started: argument \"--host=elsewhere\" is not allowed in extra_args"
    )]
    fn a_dump_agent_refuses_an_option_outside_the_whitelist() {
        Spi::run(
            "SELECT * FROM blockbackup.launch_dump_agent('postgres', extra_args => '{--host=elsewhere}')",
        )
        .expect("unreachable");
    }

    #[pg_test]
    fn a_launch_for_a_missing_database_fails_with_3d000_and_starts_nothing() {
        let state = Spi::get_one::<String>(
            "DO $$ BEGIN
                 PERFORM * FROM blockbackup.launch_dump_agent('nosuchdb');
             EXCEPTION WHEN OTHERS THEN
                 PERFORM set_config('bb.state', SQLSTATE, true);
             END $$;
             SELECT current_setting('bb.state', true)",
        );
        assert_eq!(state.ok().flatten().as_deref(), Some("3D000"));
        let listed = Spi::get_one::<i64>("SELECT count(*) FROM blockbackup.dump_agents()");
        assert_eq!(listed, Ok(Some(0)));
    }
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'pg_blockbackup'",
            "wal_level = replica",
            "max_wal_senders = 4",
            "max_replication_slots = 4",
        ]
    }
}
