#!/usr/bin/env bash
# Sets everything up on a Debian machine (as root) and runs the main job on
# a throwaway cluster: pgbench, then the changed blocks from SQL, verified
# against pg_waldump and the page LSNs on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
python3 pg_test/demo.py
