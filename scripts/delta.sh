#!/usr/bin/env bash
# Delta updates, measured on a real root filesystem: the bytes a device fetches to go from v1
# to v2 of a tarball in which one package was upgraded, for each chunker, against the image
# size. v1 is this machine's Python standard library (/usr/lib/python3.11) with PKG==OLD
# unpacked into dist-packages; v2 is the same tree with PKG==NEW. Both tarballs are written
# deterministically (sorted names, zero times and owners). Each chunker runs the whole
# `streamspace fleet` (vendor, devices, TUF, A/B slots) with these two images.
#
#   scripts/delta.sh
#
# Environment: STREAMSPACE_BIN=path  use that binary instead of building the CLI;
#              PKG, OLD, NEW         the upgraded package (default requests 2.31.0 -> 2.32.3);
#              BASE=dir              the tree the package goes into (default /usr/lib/python3.11);
#              DEVICES=n             devices in each fleet (default 4);
#              CHUNKERS="..."        default "buzhash rabin size-262144".
set -euo pipefail
cd "$(dirname "$0")/.."

PKG=${PKG:-requests}
OLD=${OLD:-2.31.0}
NEW=${NEW:-2.32.3}
BASE=${BASE:-/usr/lib/python3.11}
DEVICES=${DEVICES:-4}
CHUNKERS=${CHUNKERS:-"buzhash rabin size-262144"}
[ -d "$BASE" ] || { echo "no $BASE on this machine: set BASE to a directory tree" >&2; exit 2; }

if [ -z "${STREAMSPACE_BIN:-}" ]; then
    cargo build --release --locked -p streamspace-cli --quiet
    STREAMSPACE_BIN=target/release/streamspace
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for v in "$OLD" "$NEW"; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work/wheels" "$PKG==$v"
done
for v in "$OLD" "$NEW"; do
    root="$work/root-$v"
    mkdir -p "$root/usr/lib/python3/dist-packages"
    cp -a "$BASE" "$root/usr/lib/"
    wheel=$(ls "$work/wheels/${PKG}-${v}-"*.whl)
    (cd "$root/usr/lib/python3/dist-packages" && unzip -q "$wheel")
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -cf "$work/rootfs-$v.tar" -C "$root" .
done
echo "rootfs $PKG $OLD: $(stat -c %s "$work/rootfs-$OLD.tar") bytes; $PKG $NEW: $(stat -c %s "$work/rootfs-$NEW.tar") bytes"

for c in $CHUNKERS; do
    echo "== chunker $c"
    "$STREAMSPACE_BIN" fleet --devices "$DEVICES" --first-rollout 50 --chunker "$c" \
        --image "$work/rootfs-$OLD.tar" --next-image "$work/rootfs-$NEW.tar" 2>/dev/null \
        | grep -E '^\[report\]'
done
