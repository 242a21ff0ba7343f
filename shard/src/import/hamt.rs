//! HAMT-sharded UnixFS directories, laid out as kubo and the JS importer lay them out.
//!
//! Entry names are hashed with the first 64 bits of murmur3-x64-128 (big-endian). Each level
//! consumes `log2(fanout)` bits from the most significant end. A slot holding one entry links
//! to it directly under the name `XX` + entry name (`XX` the slot index in upper-case hex,
//! padded to the width of `fanout - 1`); a slot holding several entries links to a child shard
//! under the name `XX` alone. A shard node's data is the UnixFS `HAMTShard` type with the
//! occupied-slot bitfield (big-endian, leading zero bytes dropped), hash type `0x22` and the
//! fanout.

use bytes::Bytes;

use super::dir::{DirEntry, commit_node};
use super::{ImportError, ImportOptions, Imported};
use crate::block::Block;
use crate::pb::{DataType, PbLink, PbNode, UnixFsData};

/// Multicode of murmur3-x64-64, the HAMT hash function.
pub(crate) const MURMUR3_X64_64: u64 = 0x22;

/// The 8-byte HAMT hash of a name.
pub(crate) fn hash_name(name: &[u8]) -> [u8; 8] {
    let h = fastmurmur3::murmur3_x64_128(name, 0);
    // fastmurmur3 returns h1 in the low 64 bits; the HAMT uses h1 in big-endian order.
    (h as u64).to_be_bytes()
}

/// The slot of `hash` at `depth` for a fanout of `1 << bits`, or `None` once the hash is spent.
pub(crate) fn slot(hash: &[u8; 8], depth: usize, bits: u32) -> Option<usize> {
    let start = depth * bits as usize;
    if start + bits as usize > 64 {
        return None;
    }
    let word = u64::from_be_bytes(*hash);
    Some(((word << start) >> (64 - bits)) as usize)
}

/// Width of the hex slot prefix of link names.
pub(crate) fn prefix_width(fanout: usize) -> usize {
    format!("{:X}", fanout - 1).len()
}

/// Encodes the bitfield of occupied slots: big-endian, without leading zero bytes.
pub(crate) fn bitfield_bytes(occupied: &[bool]) -> Bytes {
    let mut out = vec![0u8; occupied.len().div_ceil(8)];
    let n = out.len();
    for (i, _) in occupied.iter().enumerate().filter(|(_, o)| **o) {
        out[n - 1 - i / 8] |= 1 << (i % 8);
    }
    let first = out.iter().position(|&b| b != 0).unwrap_or(out.len());
    Bytes::from(out.split_off(first))
}

pub(super) fn build(
    entries: Vec<DirEntry>,
    opts: &ImportOptions,
    sink: &mut dyn FnMut(Block) -> Result<(), ImportError>,
) -> Result<Imported, ImportError> {
    let hashed = entries
        .into_iter()
        .map(|e| (hash_name(e.name.as_bytes()), e))
        .collect();
    shard(hashed, 0, opts, sink)
}

fn shard(
    entries: Vec<([u8; 8], DirEntry)>,
    depth: usize,
    opts: &ImportOptions,
    sink: &mut dyn FnMut(Block) -> Result<(), ImportError>,
) -> Result<Imported, ImportError> {
    let fanout = opts.hamt_fanout;
    let bits = fanout.trailing_zeros();
    let width = prefix_width(fanout);
    let mut buckets: Vec<Vec<([u8; 8], DirEntry)>> = (0..fanout).map(|_| Vec::new()).collect();
    for (hash, entry) in entries {
        let s = slot(&hash, depth, bits).ok_or(ImportError::Internal(
            "HAMT hash exhausted: too many colliding names",
        ))?;
        buckets[s].push((hash, entry));
    }
    let mut links = Vec::new();
    let mut tsize_children = 0;
    let occupied: Vec<bool> = buckets.iter().map(|b| !b.is_empty()).collect();
    for (index, mut bucket) in buckets.into_iter().enumerate() {
        let prefix = format!("{index:0width$X}");
        match bucket.len() {
            0 => continue,
            1 => {
                if let Some((_, e)) = bucket.pop() {
                    tsize_children += e.root.tsize;
                    links.push(PbLink::new(e.root.cid, prefix + &e.name, e.root.tsize));
                }
            }
            _ => {
                let child = shard(bucket, depth + 1, opts, sink)?;
                tsize_children += child.tsize;
                links.push(PbLink::new(child.cid, prefix, child.tsize));
            }
        }
    }
    let mut data = UnixFsData::new(DataType::HamtShard);
    data.data = Some(bitfield_bytes(&occupied));
    data.hash_type = Some(MURMUR3_X64_64);
    data.fanout = Some(fanout as u64);
    let node = PbNode {
        links,
        data: Some(data.encode()),
    };
    commit_node(node, tsize_children, opts, sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur_vector() {
        // murmur3-x64-128("hello", seed 0) = cbd8a7b341bd9b02 5b1e906a48ae1d19
        assert_eq!(hash_name(b"hello"), 0xcbd8a7b341bd9b02u64.to_be_bytes());
    }

    #[test]
    fn slots_consume_high_bits_first() {
        let h = 0xAB_CD_00_00_00_00_00_00u64.to_be_bytes();
        assert_eq!(slot(&h, 0, 8), Some(0xAB));
        assert_eq!(slot(&h, 1, 8), Some(0xCD));
        assert_eq!(slot(&h, 7, 8), Some(0));
        assert_eq!(slot(&h, 8, 8), None);
        assert_eq!(slot(&h, 0, 4), Some(0xA));
    }

    #[test]
    fn bitfield_layout() {
        let mut occ = vec![false; 256];
        occ[0] = true;
        occ[9] = true;
        assert_eq!(&bitfield_bytes(&occ)[..], &[0x02, 0x01]);
        assert_eq!(prefix_width(256), 2);
        assert_eq!(prefix_width(16), 1);
    }
}
