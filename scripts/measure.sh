#!/usr/bin/env bash
# Whole-program measurements of `streamspace add`/`cat`, each against its reference in the same
# run (the machine is shared and noisy: compare ratios, not absolute times).
#
#   scripts/measure.sh [SIZE_MIB]      default 256
#
# Prints: add -Q --only-hash --cid-version 1 vs sha256sum vs the JS importer; encrypted add vs
# `openssl speed` sha256 + chacha20-poly1305 combined; peak RSS of add and cat of a 1 GiB file.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-256}
cargo build --release -q -p streamspace-cli
bin=$PWD/target/release/streamspace
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export STREAMSPACE_REPO=$work/repo

head -c $((size << 20)) /dev/urandom > "$work/in"
cat "$work/in" > /dev/null   # warm the page cache

best() { # best wall time in seconds of 3 runs of "$@"
    local b=999999
    for _ in 1 2 3; do
        local s e t
        s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N)
        t=$(echo "$e - $s" | bc -l)
        if (( $(echo "$t < $b" | bc -l) )); then b=$t; fi
    done
    echo "$b"
}
mibs() { echo "scale=1; $size / $1" | bc -l; }

t_sha=$(best sha256sum "$work/in")
t_add=$(best "$bin" add -Q --only-hash --cid-version 1 "$work/in")
echo "== add -Q --only-hash --cid-version 1, ${size} MiB file"
echo "sha256sum:          ${t_sha}s  ($(mibs "$t_sha") MiB/s)"
echo "streamspace add:    ${t_add}s  ($(mibs "$t_add") MiB/s)"
echo "ratio sha256sum/add: $(echo "scale=2; $t_sha / $t_add" | bc -l)  (>= 1 means add is at least as fast)"
if [ -d interop/js/node_modules ]; then
    t_js=$(best node interop/js/unixfs.mjs add "$work/in" --cid-version 1)
    echo "JS importer:        ${t_js}s  ($(mibs "$t_js") MiB/s)"
    echo "ratio js/add:        $(echo "scale=2; $t_js / $t_add" | bc -l)  (target >= 3)"
fi

echo "== encrypted add (--encrypt --only-hash), ${size} MiB file"
t_enc=$(best "$bin" add -Q --only-hash --encrypt --key-out "$work/k" "$work/in")
# openssl speed reports k bytes/s per block size; take the 16384-byte column (last).
sha_kbs=$(openssl speed -seconds 2 -evp sha256 2>/dev/null | awk '/^sha256/ {print $NF}' | tr -d k)
cc_kbs=$(openssl speed -seconds 2 -evp chacha20-poly1305 2>/dev/null | awk '/^(ChaCha20-Poly1305|chacha20-poly1305)/ {print $NF}' | tr -d k)
# openssl's "k" is 1000 bytes; everything below is in MB/s (10^6 bytes per second).
python3 - "$sha_kbs" "$cc_kbs" "$size" "$t_enc" "$t_sha" <<'PY'
import sys
sha, cc, size, t, t_sum = (float(x) for x in sys.argv[1:])
sha, cc = sha / 1000, cc / 1000
mb = size * 1.048576
sum_speed = mb / t_sum
enc = mb / t
print(f"sha256sum:                 {sum_speed:.1f} MB/s")
print(f"openssl sha256:            {sha:.1f} MB/s")
print(f"openssl chacha20-poly1305: {cc:.1f} MB/s")
print(f"streamspace encrypted add: {enc:.1f} MB/s")
both = 1 / (1 / sum_speed + 1 / cc)
print(f"sha256sum + openssl chacha20-poly1305 in sequence: {both:.1f} MB/s; ratio {enc / both:.2f} (target >= 0.70)")
both = 1 / (1 / sha + 1 / cc)
print(f"openssl sha256 + openssl chacha20-poly1305 in sequence: {both:.1f} MB/s; ratio {enc / both:.2f} (stricter)")
PY

echo "== peak resident memory, 1 GiB file"
head -c $((1 << 30)) /dev/urandom > "$work/gib"
/usr/bin/time -f "%M" -o "$work/rss_add" "$bin" add -Q "$work/gib" > "$work/cid"
/usr/bin/time -f "%M" -o "$work/rss_cat" "$bin" cat "$(cat "$work/cid")" > /dev/null
echo "add: $(( $(cat "$work/rss_add") / 1024 )) MiB peak RSS (target < 64)"
echo "cat: $(( $(cat "$work/rss_cat") / 1024 )) MiB peak RSS (target < 64)"
