#!/usr/bin/env bash
# Runs every test of pg_blockbackup on a Debian machine, as root:
#   1. the pure crate (unit, property and corruption tests),
#   2. #[pg_test]s inside a PostgreSQL 15 server,
#   3. pg_test/ scenarios on real clusters checked against pg_waldump and
#      the page LSNs on disk.
# It installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== pure crate: cargo test -p blockbackup-core"
cargo test -p blockbackup-core --release

echo "== in-server: cargo pgrx test pg15"
pgrx_data=/var/tmp/pg_blockbackup-pgrx-test
install -d -o postgres -g postgres "$pgrx_data"
cargo pgrx test pg15 --runas postgres --pgdata "$pgrx_data/data"
# pgrx test installed a debug build; the scenarios run the release one.
scripts/setup.sh

echo "== real clusters: pg_test/run.py"
python3 pg_test/run.py "$@"
