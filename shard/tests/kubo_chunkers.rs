//! kubo's content-defined chunkers, checked against kubo's own code: `tests/data/kubo_chunks.txt`
//! holds the chunk lengths that boxo's `chunker` package (buzhash, and Rabin over
//! whyrusleeping/chunker) cut from the inputs each line names. The importer must cut the same
//! leaves; the rest of the CID (leaves, tree, dag-pb) is checked against the JS importer in
//! `interop_js.rs`.

use streamspace_shard::block::RAW;
use streamspace_shard::import::{Chunker, ImportOptions, import_file};

/// The inputs of the fixture, as its header describes them.
fn input(kind: &str, seed: u64, len: usize) -> Vec<u8> {
    match kind {
        "xorshift" => {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect()
        }
        "zeros" => vec![0; len],
        "text" => {
            let mut s = String::new();
            let mut i = 0u64;
            while s.len() < len {
                s.push_str(&format!(
                    "line {} of seed {seed}: the quick brown fox\n",
                    i.wrapping_mul(seed) % 1000
                ));
                i += 1;
            }
            s.truncate(len);
            s.into_bytes()
        }
        other => panic!("unknown input kind {other}"),
    }
}

#[test]
fn leaves_are_cut_where_kubo_cuts_them() {
    let fixture = include_str!("data/kubo_chunks.txt");
    let mut checked = 0;
    for line in fixture
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let fields: Vec<&str> = line.splitn(5, ' ').collect();
        let [kind, seed, len, chunker, lengths] = fields[..] else {
            panic!("malformed fixture line {line:?}");
        };
        let data = input(kind, seed.parse().unwrap(), len.parse().unwrap());
        let want: Vec<usize> = lengths
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        let mut opts = ImportOptions::default().with_cid_version(1).unwrap();
        opts.chunker = chunker.parse::<Chunker>().unwrap();
        let mut got = Vec::new();
        import_file(&data[..], &opts, |b| {
            if b.cid().codec() == RAW && !b.data().is_empty() {
                got.push(b.data().len());
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(
            got.len(),
            want.len(),
            "{kind} {seed} {len} {chunker}: {} chunks, kubo {}",
            got.len(),
            want.len()
        );
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{kind} {seed} {len} {chunker}: chunk {i} is {} bytes, kubo's {}",
                got[i], want[i]
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 19, "every fixture line checked");
}
