//! How a file is cut into leaves: kubo's fixed-size, Rabin and buzhash chunkers.
//!
//! The content-defined chunkers cut where a rolling hash of the last few bytes matches a
//! mask, so a boundary lands at the same content whatever came before it: two versions of an
//! image that differ by an inserted package share every chunk away from the change, where
//! fixed-size chunks all shift. Boundaries follow kubo's (boxo's `chunker` package) byte for
//! byte, so the CIDs are kubo's (the crate's tests hold chunk lengths cut by boxo's own code):
//!
//! - **Rabin** (`rabin`, `rabin-AVG`, `rabin-MIN-AVG-MAX`): a Rabin fingerprint over a
//!   16-byte window, modulo the degree-53 polynomial kubo names `IpfsRabinPoly`
//!   ([`Rabin::KUBO_POLYNOMIAL`]). A chunk ends after at least `min` bytes where the
//!   fingerprint's low `log2(avg)` bits are zero, or at `max` bytes. The JS importer
//!   (`ipfs-unixfs-importer` with `rabin-wasm`) runs the same algorithm with another
//!   polynomial ([`Rabin::RABIN_WASM_POLYNOMIAL`]), so its rabin CIDs differ from kubo's;
//!   [`Rabin::with_polynomial`] gives either.
//! - **Buzhash** (`buzhash`): a cyclic polynomial hash over a 32-byte window with kubo's
//!   fixed parameters: chunks of 128 KiB to 512 KiB, cut where the low 17 bits are zero.

use super::options::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, OptionsError};

/// How a file is cut into leaves.
///
/// # Examples
///
/// ```
/// use streamspace_shard::import::Chunker;
/// assert_eq!("size-1024".parse::<Chunker>().unwrap(), Chunker::Size(1024));
/// let rabin: Chunker = "rabin-87381-262144-393216".parse().unwrap();
/// assert_eq!(rabin, "rabin".parse().unwrap(), "kubo's default Rabin bounds");
/// assert_eq!(rabin.to_string(), "rabin-87381-262144-393216");
/// assert!("rabin-12-512-1024".parse::<Chunker>().is_err(), "min below 16");
/// assert_eq!("buzhash".parse::<Chunker>().unwrap().max_chunk(), 512 * 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Chunker {
    /// Fixed-size chunks of this many bytes (kubo's `size-N`).
    Size(usize),
    /// Content-defined chunks on a Rabin fingerprint (kubo's `rabin-MIN-AVG-MAX`).
    Rabin(Rabin),
    /// Content-defined chunks on kubo's buzhash (kubo's `buzhash`).
    Buzhash,
}

impl Default for Chunker {
    fn default() -> Self {
        Self::Size(DEFAULT_CHUNK_SIZE)
    }
}

impl Chunker {
    /// The largest chunk this chunker makes.
    pub fn max_chunk(&self) -> usize {
        match self {
            Self::Size(n) => *n,
            Self::Rabin(r) => r.max,
            Self::Buzhash => BUZ_MAX,
        }
    }

    /// Checks the parameters are in range (a [`Rabin`] is checked when it is made).
    pub(crate) fn validate(&self) -> Result<(), OptionsError> {
        match self {
            Self::Size(n) if *n == 0 || *n > MAX_CHUNK_SIZE => Err(OptionsError::ChunkSize(*n)),
            _ => Ok(()),
        }
    }

    /// The boundary finder of a content-defined chunker; `None` for fixed sizes.
    pub(crate) fn cutter(&self) -> Option<Cutter> {
        match self {
            Self::Size(_) => None,
            Self::Rabin(r) => Some(Cutter::Rabin(Box::new(RabinCutter::new(r)))),
            Self::Buzhash => Some(Cutter::Buzhash),
        }
    }
}

impl std::fmt::Display for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Size(n) => write!(f, "size-{n}"),
            Self::Rabin(r) => write!(f, "rabin-{}-{}-{}", r.min, r.avg, r.max),
            Self::Buzhash => f.write_str("buzhash"),
        }
    }
}

impl std::str::FromStr for Chunker {
    type Err = OptionsError;

    /// kubo's `--chunker` syntax: `default`, `size-N`, `rabin`, `rabin-AVG`,
    /// `rabin-[min:]MIN-[avg:]AVG-[max:]MAX`, `buzhash`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &'static str| OptionsError::Chunker {
            chunker: s.to_owned(),
            why,
        };
        let number = |part: &str, label: &str| -> Result<usize, OptionsError> {
            let digits = match part.split_once(':') {
                Some((l, n)) if l == label => n,
                Some(_) => return Err(bad("labels are min:, avg: and max:, in that order")),
                None => part,
            };
            digits
                .parse::<usize>()
                .map_err(|_| bad("sizes are decimal byte counts"))
        };
        let parts: Vec<&str> = s.split('-').collect();
        match parts.as_slice() {
            ["" | "default"] => Ok(Self::default()),
            ["size", n] => {
                let n = n
                    .parse::<usize>()
                    .map_err(|_| bad("size-N takes a decimal byte count"))?;
                let c = Self::Size(n);
                c.validate()?;
                Ok(c)
            }
            ["rabin"] => Ok(Self::Rabin(Rabin::from_average(DEFAULT_CHUNK_SIZE)?)),
            ["rabin", avg] => Ok(Self::Rabin(Rabin::from_average(number(avg, "avg")?)?)),
            ["rabin", min, avg, max] => Ok(Self::Rabin(Rabin::new(
                number(min, "min")?,
                number(avg, "avg")?,
                number(max, "max")?,
            )?)),
            ["buzhash"] => Ok(Self::Buzhash),
            ["size" | "rabin" | "buzhash", ..] => Err(bad("wrong number of parameters")),
            _ => Err(bad(
                "expected size-N, rabin[-AVG | -MIN-AVG-MAX] or buzhash",
            )),
        }
    }
}

/// Bounds of Rabin chunks, and the polynomial of the fingerprint.
///
/// # Examples
///
/// ```
/// use streamspace_shard::import::Rabin;
/// let r = Rabin::from_average(262_144).unwrap();
/// assert_eq!((r.min(), r.avg(), r.max()), (87_381, 262_144, 393_216));
/// assert!(Rabin::new(512, 512, 1024).is_err(), "min must be below avg");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rabin {
    min: usize,
    avg: usize,
    max: usize,
    polynomial: u64,
}

impl Rabin {
    /// The polynomial kubo's Rabin chunker uses (boxo's `IpfsRabinPoly`), of degree 53.
    pub const KUBO_POLYNOMIAL: u64 = 17_437_180_132_763_653;
    /// The polynomial of `rabin-wasm`, the JS importer's Rabin chunker, of degree 53.
    pub const RABIN_WASM_POLYNOMIAL: u64 = 0x3D_A335_8B4D_C173;

    /// Bounds as kubo's `rabin-MIN-AVG-MAX`, with kubo's polynomial.
    ///
    /// # Errors
    ///
    /// [`OptionsError::Chunker`] unless `16 <= min < avg < max <= MAX_CHUNK_SIZE`.
    pub fn new(min: usize, avg: usize, max: usize) -> Result<Self, OptionsError> {
        let chunker = format!("rabin-{min}-{avg}-{max}");
        let bad = |why| Err(OptionsError::Chunker { chunker, why });
        if min < WINDOW {
            return bad("rabin min must be at least 16");
        }
        if min >= avg {
            return bad("rabin min must be smaller than avg");
        }
        if avg >= max {
            return bad("rabin avg must be smaller than max");
        }
        if max > MAX_CHUNK_SIZE {
            return bad("rabin max is above the largest chunk (1 MiB)");
        }
        Ok(Self {
            min,
            avg,
            max,
            polynomial: Self::KUBO_POLYNOMIAL,
        })
    }

    /// kubo's `rabin-AVG`: min `avg / 3`, max `avg * 3 / 2`.
    ///
    /// # Errors
    ///
    /// As [`Rabin::new`].
    pub fn from_average(avg: usize) -> Result<Self, OptionsError> {
        Self::new(avg / 3, avg, avg + avg / 2)
    }

    /// The same bounds over another polynomial: [`Rabin::RABIN_WASM_POLYNOMIAL`] gives the JS
    /// importer's chunks.
    ///
    /// # Errors
    ///
    /// [`OptionsError::Chunker`] for a polynomial whose degree is not 53.
    pub fn with_polynomial(mut self, polynomial: u64) -> Result<Self, OptionsError> {
        if degree(polynomial) != POLYNOMIAL_DEGREE {
            return Err(OptionsError::Chunker {
                chunker: format!("rabin polynomial {polynomial:#x}"),
                why: "the polynomial must have degree 53",
            });
        }
        self.polynomial = polynomial;
        Ok(self)
    }

    /// The smallest chunk, but for the last.
    pub fn min(&self) -> usize {
        self.min
    }

    /// The average chunk size aimed at (a cut is `log2(avg)` zero bits).
    pub fn avg(&self) -> usize {
        self.avg
    }

    /// The largest chunk.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The fingerprint's polynomial.
    pub fn polynomial(&self) -> u64 {
        self.polynomial
    }
}

/// Bytes in the Rabin window.
const WINDOW: usize = 16;
/// Degree of the Rabin polynomials (both kubo's and rabin-wasm's).
const POLYNOMIAL_DEGREE: u32 = 53;
/// kubo's buzhash bounds and mask.
const BUZ_MIN: usize = 128 << 10;
const BUZ_MAX: usize = 512 << 10;
const BUZ_MASK: u32 = (1 << 17) - 1;
/// Bytes in the buzhash window.
const BUZ_WINDOW: usize = 32;

/// Degree of a polynomial over GF(2) (0 for the zero polynomial, which is never valid).
fn degree(p: u64) -> u32 {
    63u32.saturating_sub(p.leading_zeros())
}

/// `x mod p` over GF(2).
fn modulo(mut x: u64, p: u64) -> u64 {
    let dp = degree(p);
    while x != 0 && degree(x) >= dp {
        x ^= p << (degree(x) - dp);
    }
    x
}

/// Finds the end of the next chunk of a content-defined chunker.
pub(crate) enum Cutter {
    Rabin(Box<RabinCutter>),
    Buzhash,
}

impl Cutter {
    /// Bytes the cutter must see (or the end of the input) to decide the next chunk.
    pub(crate) fn lookahead(&self) -> usize {
        match self {
            Self::Rabin(r) => r.max,
            Self::Buzhash => BUZ_MAX,
        }
    }

    /// The length of the chunk that starts `buf`, which holds [`Cutter::lookahead`] bytes or,
    /// when shorter, the rest of the input. At least 1 for a non-empty `buf`.
    pub(crate) fn cut(&self, buf: &[u8]) -> usize {
        match self {
            Self::Rabin(r) => r.cut(buf),
            Self::Buzhash => buzhash_cut(buf),
        }
    }
}

pub(crate) struct RabinCutter {
    /// `out[b]`: the fingerprint of `b` followed by 15 zero bytes, XORed in to slide `b` out.
    out: [u64; 256],
    /// `reduce[t]`: what XORs away the top byte `t` of a shifted fingerprint, modulo the
    /// polynomial.
    reduce: [u64; 256],
    shift: u32,
    mask: u64,
    min: usize,
    max: usize,
}

impl RabinCutter {
    fn new(r: &Rabin) -> Self {
        let p = r.polynomial;
        let append = |h: u64, b: u8| modulo((h << 8) | u64::from(b), p);
        let mut out = [0u64; 256];
        for (b, slot) in out.iter_mut().enumerate() {
            let mut h = append(0, b as u8);
            for _ in 1..WINDOW {
                h = append(h, 0);
            }
            *slot = h;
        }
        let k = degree(p);
        let mut reduce = [0u64; 256];
        for (b, slot) in reduce.iter_mut().enumerate() {
            let high = (b as u64) << k;
            *slot = modulo(high, p) | high;
        }
        Self {
            out,
            reduce,
            shift: k - 8,
            mask: (1u64 << r.avg.ilog2()) - 1,
            min: r.min,
            max: r.max,
        }
    }

    fn cut(&self, buf: &[u8]) -> usize {
        // Bytes before the last window of the minimum cannot decide a cut: kubo skips them.
        let skip = self.min - WINDOW;
        if buf.len() <= skip {
            return buf.len();
        }
        // A fresh window holds a single 1 byte (kubo's reset), slid out after WINDOW bytes.
        let mut window = [0u8; WINDOW];
        let mut wpos = 0;
        let mut digest = 0u64;
        let mut slide = |digest: &mut u64, b: u8| {
            let gone = std::mem::replace(&mut window[wpos], b);
            *digest ^= self.out[usize::from(gone)];
            wpos = (wpos + 1) % WINDOW;
            let top = (*digest >> self.shift) as usize;
            *digest = ((*digest << 8) | u64::from(b)) ^ self.reduce[top];
        };
        slide(&mut digest, 1);
        for (i, &b) in buf.iter().enumerate().skip(skip) {
            slide(&mut digest, b);
            let len = i + 1;
            if len >= self.min && (digest & self.mask == 0 || len >= self.max) {
                return len;
            }
        }
        buf.len()
    }
}

fn buzhash_cut(buf: &[u8]) -> usize {
    if buf.len() < BUZ_MIN {
        return buf.len();
    }
    let mut state = 0u32;
    for &b in &buf[BUZ_MIN - BUZ_WINDOW..BUZ_MIN] {
        state = state.rotate_left(1) ^ BYTEHASH[usize::from(b)];
    }
    // The window is buf[i..i + 32]: the chunk ends after it once its hash has 17 zero bits.
    let mut i = BUZ_MIN - BUZ_WINDOW;
    while i + BUZ_WINDOW < buf.len() {
        if state & BUZ_MASK == 0 {
            break;
        }
        // A byte 32 rotations old has turned full circle: XOR it out as it went in.
        state = state.rotate_left(1)
            ^ BYTEHASH[usize::from(buf[i])]
            ^ BYTEHASH[usize::from(buf[i + BUZ_WINDOW])];
        i += 1;
    }
    i + BUZ_WINDOW
}

/// kubo's buzhash byte table (boxo `chunker/buzhash.go`, generated by its `chunker/gen` from
/// Go's `math/rand` seeded with 0). Boundaries, and so the CID of anything chunked with
/// buzhash, depend on every entry. Each of the 32 bit positions is set in exactly 128 entries:
/// the generator starts from 128 all-ones entries and only swaps bits between entries.
#[rustfmt::skip]
static BYTEHASH: [u32; 256] = include!("buzhash_table.in");

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_buzhash_table_is_balanced_in_every_bit() {
        for bit in 0..32 {
            let ones = BYTEHASH.iter().filter(|h| *h >> bit & 1 == 1).count();
            assert_eq!(ones, 128, "bit {bit}");
        }
        let distinct: std::collections::HashSet<_> = BYTEHASH.iter().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn kubo_strings_parse_as_kubo_reads_them() {
        let p = |s: &str| s.parse::<Chunker>();
        assert_eq!(p("default"), Ok(Chunker::Size(DEFAULT_CHUNK_SIZE)));
        assert_eq!(p(""), Ok(Chunker::Size(DEFAULT_CHUNK_SIZE)));
        assert_eq!(
            p("rabin-min:100-avg:200-max:300"),
            Ok(Chunker::Rabin(Rabin::new(100, 200, 300).unwrap()))
        );
        assert_eq!(
            p("rabin-100-200-300").unwrap().to_string(),
            "rabin-100-200-300"
        );
        assert_eq!(p("rabin-1024").unwrap().to_string(), "rabin-341-1024-1536");
        for bad in [
            "size-0",
            "size-x",
            "size-1048577",
            "size",
            "rabin-12-512-1024",
            "rabin-512-512-1024",
            "rabin-512-1024-1024",
            "rabin-16-32-2000000",
            "rabin-avg:16-avg:32-max:64",
            "rabin-1-2",
            "rabin-30",
            "buzhash-1",
            "fastcdc",
        ] {
            assert!(
                matches!(
                    p(bad),
                    Err(OptionsError::Chunker { .. } | OptionsError::ChunkSize(_))
                ),
                "{bad}: {:?}",
                p(bad)
            );
        }
        assert!(
            Rabin::new(16, 32, 64)
                .unwrap()
                .with_polynomial(0xff)
                .is_err()
        );
    }

    /// Every chunk respects the bounds, and the chunks cover the input.
    fn chunks(c: &Cutter, data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let end = (at + c.lookahead()).min(data.len());
            let n = c.cut(&data[at..end]);
            assert!(n >= 1 && n <= end - at);
            out.push(n);
            at += n;
        }
        out
    }

    #[test]
    fn an_insertion_moves_only_the_chunks_around_it() {
        let mut data = vec![0u8; 3 << 20];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for b in &mut data {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut edited = data.clone();
        edited.splice(
            1_500_000..1_500_000,
            b"a package that was not there".iter().copied(),
        );
        for chunker in [Chunker::Buzhash, "rabin".parse().unwrap()] {
            let cutter = chunker.cutter().unwrap();
            let set = |d: &[u8]| {
                let mut at = 0;
                chunks(&cutter, d)
                    .into_iter()
                    .map(|n| {
                        at += n;
                        d[at - n..at].to_vec()
                    })
                    .collect::<std::collections::HashSet<_>>()
            };
            let (a, b) = (set(&data), set(&edited));
            let new: usize = b.difference(&a).map(Vec::len).sum();
            assert!(new <= 2 * chunker.max_chunk(), "{chunker}: {new} new bytes");
        }
    }

    proptest! {
        #[test]
        fn content_defined_chunks_keep_their_bounds(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            min in 16usize..64,
            extra in 1usize..64,
        ) {
            let avg = min + extra;
            let r = Rabin::new(min, avg, avg + extra).unwrap();
            for p in [Rabin::KUBO_POLYNOMIAL, Rabin::RABIN_WASM_POLYNOMIAL] {
                let c = Chunker::Rabin(r.with_polynomial(p).unwrap()).cutter().unwrap();
                let sizes = chunks(&c, &data);
                prop_assert_eq!(sizes.iter().sum::<usize>(), data.len());
                if let Some((_, head)) = sizes.split_last() {
                    prop_assert!(head.iter().all(|&n| n >= r.min() && n <= r.max()));
                }
            }
        }

        #[test]
        fn chunker_strings_round_trip(min in 16usize..4096, a in 1usize..4096, b in 1usize..4096) {
            let c = Chunker::Rabin(Rabin::new(min, min + a, min + a + b).unwrap());
            prop_assert_eq!(c.to_string().parse::<Chunker>().unwrap(), c);
            let s = Chunker::Size(min);
            prop_assert_eq!(s.to_string().parse::<Chunker>().unwrap(), s);
        }
    }
}
