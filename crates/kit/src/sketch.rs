//! A mergeable latency sketch whose percentiles are within 1% of the exact ones (DDSketch:
//! Masson, Rim and Lee, VLDB 2019), so the sink can keep percentiles per second and per key
//! without keeping the durations.
//!
//! A duration `x` (µs, ≥ 1) goes into bucket `i = ceil(log_γ x)` with `γ = (1 + α) / (1 - α)`:
//! the bucket holds (γ^(i-1), γ^i], and its representative `2γ^i / (γ + 1)` is within α of every
//! value in it. A percentile walks the buckets to the nearest rank and answers that bucket's
//! representative, so it is within α of the exact nearest-rank percentile, however many values
//! went in. Merging two sketches adds their buckets: lossless, so a minute merged from 60
//! seconds is the same sketch as one fed the minute's values directly.
//!
//! α is 0.9% (1% with a margin for floating point at bucket edges). Each bucket also keeps the
//! smallest and largest value it saw: clamping the representative into that range keeps the
//! error bound (the exact answer lies in it too) and makes a bucket that saw one distinct value
//! answer it exactly, as small test sets and steady latencies do. Durations of 0 µs have a
//! count of their own. A day (the longest record) is bucket 1,399, so an index fits in a u16;
//! a bucket costs 16 bytes, and only buckets that saw a value are stored (a sorted vector).

/// The relative error of every percentile.
pub const ALPHA: f64 = 0.009;

static LN_GAMMA: std::sync::LazyLock<f64> =
    std::sync::LazyLock::new(|| ((1.0 + ALPHA) / (1.0 - ALPHA)).ln());

fn ln_gamma() -> f64 {
    *LN_GAMMA
}

/// The bucket a duration of `us` ≥ 1 falls in.
fn index(us: u64) -> u16 {
    ((us as f64).ln() / ln_gamma())
        .ceil()
        .clamp(0.0, f64::from(u16::MAX)) as u16
}

/// The value that stands for bucket `i`: within α of anything in it.
fn representative(i: u16) -> f64 {
    let gamma = ln_gamma().exp();
    2.0 * (f64::from(i) * ln_gamma()).exp() / (gamma + 1.0)
}

/// The largest bucket index a sketch read from the wire may hold: past a day (1,399).
pub const MAX_INDEX: u16 = 1_500;
/// The most zeros a sketch read from the wire may hold, so its count (zeros and at most 1,501
/// buckets of u32 counts) cannot overflow: far more than any reporter folds.
pub const MAX_READ_ZEROS: u64 = 1 << 40;

/// Why bytes are not a sketch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SketchError {
    #[error("the sketch ends early")]
    Truncated,
    #[error("a sketch's buckets are out of order, empty, or hold values outside them")]
    Bucket,
    #[error("a sketch may hold at most {MAX_READ_ZEROS} zeros")]
    TooMany,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bin {
    count: u32,
    /// The smallest and largest value seen, in µs (saturated at u32::MAX: 71 minutes, and then
    /// not used).
    lo: u32,
    hi: u32,
}

/// A duration with its bucket worked out (`None` for 0 µs): the value, saturated to u32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point(Option<(u16, u32)>);

impl Point {
    pub fn of(us: i64) -> Self {
        if us <= 0 {
            return Self(None);
        }
        let us = us as u64;
        Self(Some((index(us), us.min(u64::from(u32::MAX)) as u32)))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sketch {
    zeros: u64,
    /// Non-empty buckets, by index.
    bins: Vec<(u16, Bin)>,
}

impl Sketch {
    /// Adds one duration in µs (negative counts as 0).
    pub fn add(&mut self, us: i64) {
        self.add_point(Point::of(us));
    }

    /// Adds a duration whose bucket is already known: one logarithm for several sketches.
    pub fn add_point(&mut self, point: Point) {
        let Some((i, value)) = point.0 else {
            self.zeros += 1;
            return;
        };
        match self.bins.binary_search_by_key(&i, |(at, _)| *at) {
            Ok(at) => {
                let bin = &mut self.bins[at].1;
                bin.count = bin.count.saturating_add(1);
                bin.lo = bin.lo.min(value);
                bin.hi = bin.hi.max(value);
            }
            Err(at) => self.bins.insert(
                at,
                (
                    i,
                    Bin {
                        count: 1,
                        lo: value,
                        hi: value,
                    },
                ),
            ),
        }
    }

    /// Adds every value `other` holds: afterwards `self` is the sketch of both sets.
    pub fn merge(&mut self, other: &Sketch) {
        self.zeros += other.zeros;
        if other.bins.is_empty() {
            return;
        }
        let (a, b) = (&self.bins, &other.bins);
        let mut merged = Vec::with_capacity(a.len().max(b.len()));
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            let ((x_at, x), (y_at, y)) = (a[i], b[j]);
            if x_at == y_at {
                let bin = Bin {
                    count: x.count.saturating_add(y.count),
                    lo: x.lo.min(y.lo),
                    hi: x.hi.max(y.hi),
                };
                merged.push((x_at, bin));
                i += 1;
                j += 1;
            } else if x_at < y_at {
                merged.push(a[i]);
                i += 1;
            } else {
                merged.push(b[j]);
                j += 1;
            }
        }
        merged.extend_from_slice(&a[i..]);
        merged.extend_from_slice(&b[j..]);
        self.bins = merged;
    }

    /// How many values went in.
    pub fn count(&self) -> u64 {
        self.zeros
            + self
                .bins
                .iter()
                .map(|(_, bin)| u64::from(bin.count))
                .sum::<u64>()
    }

    /// The nearest-rank percentile `p` (0-100) in µs, within α of the exact one; 0 when empty.
    pub fn percentile(&self, p: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = ((p / 100.0) * total as f64).ceil().clamp(1.0, total as f64) as u64;
        if rank <= self.zeros {
            return 0.0;
        }
        let mut seen = self.zeros;
        for (i, bin) in &self.bins {
            seen += u64::from(bin.count);
            if seen >= rank {
                let estimate = representative(*i);
                // A saturated range says nothing: the representative alone is within α.
                return if bin.hi == u32::MAX {
                    estimate
                } else {
                    estimate.clamp(f64::from(bin.lo), f64::from(bin.hi))
                };
            }
        }
        // Unreachable with exact counts; saturated ones end here.
        self.bins.last().map_or(0.0, |(_, bin)| f64::from(bin.hi))
    }

    /// Appends the sketch in the wire form of a reporter's summary ([`crate::fold`]): the zeros
    /// (u64), the number of buckets (u16), then per bucket its index (u16), count, smallest and
    /// largest value (u32 each); little-endian.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.zeros.to_le_bytes());
        out.extend_from_slice(&(self.bins.len() as u16).to_le_bytes());
        for (i, bin) in &self.bins {
            out.extend_from_slice(&i.to_le_bytes());
            out.extend_from_slice(&bin.count.to_le_bytes());
            out.extend_from_slice(&bin.lo.to_le_bytes());
            out.extend_from_slice(&bin.hi.to_le_bytes());
        }
    }

    /// Reads a sketch [`Sketch::write`] wrote at the front of `bytes`; returns it and what
    /// follows. The sketch is checked to be one [`Sketch::add`] could have built (buckets in
    /// order, none empty, each value in its bucket), so a merge of it keeps every promise.
    pub fn read(bytes: &[u8]) -> Result<(Sketch, &[u8]), SketchError> {
        let mut rest = bytes;
        let mut take = |n: usize| -> Result<&[u8], SketchError> {
            if rest.len() < n {
                return Err(SketchError::Truncated);
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let u32_at =
            |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let head = take(10)?;
        let zeros = u64::from_le_bytes(head[..8].try_into().map_err(|_| SketchError::Truncated)?);
        if zeros > MAX_READ_ZEROS {
            return Err(SketchError::TooMany);
        }
        let len = usize::from(u16_at(head, 8));
        if len > usize::from(MAX_INDEX) + 1 {
            return Err(SketchError::Bucket);
        }
        let mut bins = Vec::with_capacity(len);
        let body = take(len * 14)?;
        for piece in body.chunks_exact(14) {
            let i = u16_at(piece, 0);
            let bin = Bin {
                count: u32_at(piece, 2),
                lo: u32_at(piece, 6),
                hi: u32_at(piece, 10),
            };
            let in_bucket = |v: u32| v == u32::MAX || index(u64::from(v)) == i;
            let ordered = bins.last().is_none_or(|(before, _)| *before < i);
            if !ordered
                || i > MAX_INDEX
                || bin.count == 0
                || bin.lo == 0
                || bin.lo > bin.hi
                || !in_bucket(bin.lo)
                || !in_bucket(bin.hi)
            {
                return Err(SketchError::Bucket);
            }
            bins.push((i, bin));
        }
        Ok((Sketch { zeros, bins }, rest))
    }

    /// Bytes this sketch holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.bins.capacity() * std::mem::size_of::<(u16, Bin)>()
    }
}

/// Many sketches merged into one: a bucket per index in a plain vector, so a query that merges
/// hundreds of buckets adds counts in place instead of building a new sorted vector each time.
#[derive(Debug, Default)]
pub struct Merger {
    zeros: u64,
    bins: Vec<Option<Bin>>,
}

impl Merger {
    pub fn add(&mut self, sketch: &Sketch) {
        self.zeros += sketch.zeros;
        if let Some((last, _)) = sketch.bins.last() {
            if self.bins.len() <= usize::from(*last) {
                self.bins.resize(usize::from(*last) + 1, None);
            }
        }
        for (i, bin) in &sketch.bins {
            let slot = &mut self.bins[usize::from(*i)];
            *slot = Some(match slot {
                None => *bin,
                Some(mine) => Bin {
                    count: mine.count.saturating_add(bin.count),
                    lo: mine.lo.min(bin.lo),
                    hi: mine.hi.max(bin.hi),
                },
            });
        }
    }

    /// The merged sketch: the same as merging them one by one with [`Sketch::merge`].
    pub fn finish(self) -> Sketch {
        Sketch {
            zeros: self.zeros,
            bins: self
                .bins
                .into_iter()
                .enumerate()
                .filter_map(|(i, bin)| Some((i as u16, bin?)))
                .collect(),
        }
    }
}

/// The exact nearest-rank percentile of sorted values (`p` in 0-100); 0 for no values: what a
/// sketch's answer is within α of.
pub fn nearest_rank(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A small deterministic generator (xorshift64*) of latency-like durations, for tests and
/// benchmarks of the sketch and what is built on it: a failure reproduces from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next number. (Not `Iterator::next`: the sequence never ends, and the tests that use
    /// it call it bare, as they did when it was private to them.)
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A latency-like duration: log-uniform from 0 µs to about a minute, some exact zeros.
    pub fn duration(&mut self) -> i64 {
        if self.next().is_multiple_of(50) {
            return 0;
        }
        let exponent = (self.next() % 10_000) as f64 / 10_000.0 * 17.9;
        exponent.exp().round() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(estimate: f64, exact: i64) -> bool {
        (estimate - exact as f64).abs() <= 0.01 * exact as f64
    }

    #[test]
    fn percentiles_are_within_one_percent_of_nearest_rank() {
        let mut rng = Rng(0x5eed);
        for round in 0..200 {
            let n = 1 + (rng.next() % 3000) as usize;
            let mut values: Vec<i64> = (0..n).map(|_| rng.duration()).collect();
            let mut sketch = Sketch::default();
            for v in &values {
                sketch.add(*v);
            }
            values.sort_unstable();
            assert_eq!(sketch.count(), n as u64);
            for p in [0.0, 1.0, 50.0, 90.0, 95.0, 99.0, 99.9, 100.0] {
                let exact = nearest_rank(&values, p);
                let estimate = sketch.percentile(p);
                assert!(
                    within(estimate, exact),
                    "round {round}, n {n}, p{p}: {estimate} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn one_distinct_value_per_bucket_is_exact() {
        let mut sketch = Sketch::default();
        for i in 1..=50 {
            sketch.add(i * 1000);
        }
        assert_eq!(sketch.percentile(50.0), 25_000.0);
        assert_eq!(sketch.percentile(99.0), 50_000.0);
        assert_eq!(Sketch::default().percentile(50.0), 0.0);
    }

    #[test]
    fn merging_is_lossless_and_order_free() {
        let mut rng = Rng(42);
        let values: Vec<i64> = (0..5000).map(|_| rng.duration()).collect();
        let mut whole = Sketch::default();
        values.iter().for_each(|v| whole.add(*v));
        let mut parts = Sketch::default();
        for chunk in values.chunks(77).rev() {
            let mut part = Sketch::default();
            chunk.iter().for_each(|v| part.add(*v));
            parts.merge(&part);
        }
        assert_eq!(parts, whole);
    }

    #[test]
    fn a_merger_merges_as_merge_does() {
        let mut rng = Rng(9);
        let mut merger = Merger::default();
        let mut merged = Sketch::default();
        for _ in 0..50 {
            let mut part = Sketch::default();
            for _ in 0..rng.next() % 300 {
                part.add(rng.duration());
            }
            merger.add(&part);
            merged.merge(&part);
        }
        assert_eq!(merger.finish(), merged);
        assert_eq!(Merger::default().finish(), Sketch::default());
    }

    #[test]
    fn a_sketch_reads_back_as_written_and_bad_ones_are_refused() {
        let mut rng = Rng(77);
        let mut sketch = Sketch::default();
        for _ in 0..2000 {
            sketch.add(rng.duration());
        }
        sketch.add(86_400_000_000);
        let mut out = Vec::new();
        sketch.write(&mut out);
        out.extend_from_slice(b"next");
        let (back, rest) = Sketch::read(&out).unwrap();
        assert_eq!(back, sketch);
        assert_eq!(rest, b"next");
        assert_eq!(
            Sketch::read(&out[..out.len() - 5]),
            Err(SketchError::Truncated)
        );
        // One bucket: index 0 holds 1 µs; 5 µs is not in it, nor is an empty count allowed.
        let bucket = |i: u16, count: u32, lo: u32, hi: u32| {
            let mut out = 0u64.to_le_bytes().to_vec();
            out.extend_from_slice(&1u16.to_le_bytes());
            for part in [
                &i.to_le_bytes()[..],
                &count.to_le_bytes(),
                &lo.to_le_bytes(),
                &hi.to_le_bytes(),
            ] {
                out.extend_from_slice(part);
            }
            out
        };
        assert!(Sketch::read(&bucket(0, 1, 1, 1)).is_ok());
        for bad in [
            bucket(0, 1, 1, 5),
            bucket(0, 0, 1, 1),
            bucket(0, 1, 0, 1),
            bucket(MAX_INDEX + 1, 1, u32::MAX, u32::MAX),
        ] {
            assert_eq!(Sketch::read(&bad), Err(SketchError::Bucket));
        }
    }

    #[test]
    fn the_longest_duration_has_an_index() {
        assert_eq!(index(1), 0);
        assert!(index(86_400_000_000) < 1500);
        let mut sketch = Sketch::default();
        sketch.add(86_400_000_000);
        assert!(within(sketch.percentile(50.0), 86_400_000_000));
    }
}
