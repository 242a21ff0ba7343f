#!/usr/bin/env bash
# Whole-program measurements of `streamspace add`/`cat`, each against its physical reference in
# the same run: the two commands of a pair alternate, five times each, and the ratio is that of
# the medians (the machine is shared and noisy: compare ratios, not absolute times).
#
#   scripts/measure.sh [SIZE_MIB]      default 256
#
# Environment: STREAMSPACE_BIN=path  measure that binary instead of building the CLI;
#              ROUNDS=n             runs per command (default 5); SKIP_RSS=1 skips the 1 GiB part.
#
# Prints, with the goals:
#   add -Q --only-hash --cid-version 1      / openssl dgst -sha256      (<= 0.6)
#   add -Q --cid-version 1 into the store   / dd bs=1M conv=fsync        (<= 1.3)
#   add -Q --encrypt into the store         / dd bs=1M conv=fsync        (<= 1.4)
#   cat (verified) from the store           / openssl dgst -sha256      (<= 0.6)
#   JS importer / add --only-hash (when interop/js is installed)
#   peak RSS (/usr/bin/time -v) of add and cat of a 1 GiB file           (<= 64 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-256}
rounds=${ROUNDS:-5}
if [ -n "${STREAMSPACE_BIN:-}" ]; then
    bin=$STREAMSPACE_BIN
else
    cargo build --release -q -p streamspace-cli
    bin=$PWD/target/release/streamspace
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/measure.XXXXXX")
trap 'rm -rf "$work"' EXIT
export STREAMSPACE_REPO=$work/repo

head -c $((size << 20)) /dev/urandom > "$work/in"
cat "$work/in" > /dev/null   # warm the page cache

# Wall time in seconds of "$@" (output discarded).
wall() {
    local s e
    s=$(date +%s.%N)
    "$@" > /dev/null 2>&1
    e=$(date +%s.%N)
    echo "$e - $s" | bc -l
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# pair NAME GOAL PREP_REF REF... -- PREP_OURS OURS...: alternates the two, prints medians and
# the ratio ours/reference. PREP_* (a shell function name, or :) runs untimed before each.
pair() {
    local name=$1 goal=$2 prep_ref=$3
    shift 3
    local ref=() ours=()
    while [ "$1" != "--" ]; do ref+=("$1"); shift; done
    shift
    local prep_ours=$1
    shift
    ours=("$@")
    local tr=() to=()
    for _ in $(seq "$rounds"); do
        $prep_ref; tr+=("$(wall "${ref[@]}")")
        $prep_ours; to+=("$(wall "${ours[@]}")")
    done
    local mr mo
    mr=$(median "${tr[@]}")
    mo=$(median "${to[@]}")
    printf '%-44s ours %6.3fs  reference %6.3fs  ratio %5.2f  (goal <= %s)\n' \
        "$name" "$mo" "$mr" "$(echo "$mo / $mr" | bc -l)" "$goal"
}

fresh_repo() { rm -rf "$STREAMSPACE_REPO"; sync; }
fresh_dd() { rm -f "$work/dd.out"; sync; }
dd_fsync() { dd if="$work/in" of="$work/dd.out" bs=1M conv=fsync status=none; }

echo "== ${size} MiB random file in the page cache, medians of ${rounds} runs, $(nproc) cores"
pair "add -Q --only-hash --cid-version 1" 0.6 : openssl dgst -sha256 "$work/in" -- \
    : "$bin" add -Q --only-hash --cid-version 1 "$work/in"
pair "add -Q --cid-version 1 (disk store)" 1.3 fresh_dd dd_fsync -- \
    fresh_repo "$bin" add -Q --cid-version 1 "$work/in"
pair "add -Q --encrypt (disk store)" 1.4 fresh_dd dd_fsync -- \
    fresh_repo "$bin" add -Q --encrypt --key-out "$work/key" "$work/in"
fresh_repo
cid=$("$bin" add -Q --cid-version 1 "$work/in")
pair "cat (verified, disk store)" 0.6 : openssl dgst -sha256 "$work/in" -- \
    : "$bin" cat "$cid"
if [ -d interop/js/node_modules ]; then
    pair "JS importer vs add --only-hash (ours=JS)" "-" : \
        "$bin" add -Q --only-hash --cid-version 1 "$work/in" -- \
        : node interop/js/unixfs.mjs add "$work/in" --cid-version 1
fi
rm -f "$work/dd.out"

if [ -z "${SKIP_RSS:-}" ]; then
    echo "== peak resident memory, 1 GiB file (/usr/bin/time -v)"
    fresh_repo
    head -c $((1 << 30)) /dev/urandom > "$work/gib"
    rss() { awk -F: '/Maximum resident set size/ {print int($2 / 1024)}' "$1"; }
    /usr/bin/time -v -o "$work/rss_add" "$bin" add -Q --cid-version 1 "$work/gib" > "$work/cid"
    /usr/bin/time -v -o "$work/rss_cat" "$bin" cat "$(cat "$work/cid")" > /dev/null
    echo "add: $(rss "$work/rss_add") MiB peak RSS (goal <= 64)"
    echo "cat: $(rss "$work/rss_cat") MiB peak RSS (goal <= 64)"
fi
