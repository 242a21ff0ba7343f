//! Checks the shipped hls.js against the checksum committed beside it: the player page runs
//! exactly the hls.js release that was reviewed (1.7.4 from npm).

use sha2::{Digest, Sha256};

fn main() {
    let js = "src/watch/hls.min.js";
    let sum = "src/watch/hls.min.js.sha256";
    println!("cargo:rerun-if-changed={js}");
    println!("cargo:rerun-if-changed={sum}");
    let bytes = std::fs::read(js).unwrap_or_else(|e| panic!("{js}: {e}"));
    let want = std::fs::read_to_string(sum).unwrap_or_else(|e| panic!("{sum}: {e}"));
    let got = hex::encode(Sha256::digest(&bytes));
    assert_eq!(
        got,
        want.trim(),
        "{js} is not the hls.js release its checksum names ({sum})"
    );
}
