//! Byte-range arithmetic shared by change tracking and sparse copies.

use crate::ByteRange;

/// Granularity of change tracking: writes are recorded widened to whole blocks of this size.
pub const BLOCK_SIZE: u64 = 4096;

/// Widen `r` to whole [`BLOCK_SIZE`] blocks, clipped to `size`.
pub(crate) fn align_out(r: ByteRange, size: u64) -> ByteRange {
    if r.is_empty() {
        return ByteRange::new(r.offset.min(size), 0);
    }
    let start = r.offset / BLOCK_SIZE * BLOCK_SIZE;
    let end = r
        .end()
        .div_ceil(BLOCK_SIZE)
        .saturating_mul(BLOCK_SIZE)
        .min(size);
    let start = start.min(end);
    ByteRange::new(start, end - start)
}

/// Sort `ranges` and merge overlapping or touching ones; empty ranges are dropped.
pub fn merge_ranges(ranges: impl IntoIterator<Item = ByteRange>) -> Vec<ByteRange> {
    let mut v: Vec<ByteRange> = ranges.into_iter().filter(|r| !r.is_empty()).collect();
    merge_in_place(&mut v);
    v
}

/// [`merge_ranges`] in place, reusing the vector.
pub(crate) fn merge_in_place(v: &mut Vec<ByteRange>) {
    v.retain(|r| !r.is_empty());
    v.sort_unstable();
    let mut out = 0;
    for i in 0..v.len() {
        let r = v[i];
        if out > 0 && r.offset <= v[out - 1].end() {
            let prev = &mut v[out - 1];
            let end = prev.end().max(r.end());
            prev.len = end - prev.offset;
        } else {
            v[out] = r;
            out += 1;
        }
    }
    v.truncate(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(offset: u64, len: u64) -> ByteRange {
        ByteRange::new(offset, len)
    }

    #[test]
    fn aligns_out_and_clips() {
        assert_eq!(align_out(r(1, 1), 1 << 20), r(0, 4096));
        assert_eq!(align_out(r(4095, 2), 1 << 20), r(0, 8192));
        assert_eq!(align_out(r(4096, 4096), 1 << 20), r(4096, 4096));
        assert_eq!(align_out(r(8000, 100), 8100), r(4096, 4004));
        assert_eq!(align_out(r(10, 0), 8100), r(10, 0));
    }

    #[test]
    fn merges() {
        assert_eq!(
            merge_ranges([r(10, 5), r(0, 5), r(5, 2), r(12, 10), r(30, 0), r(40, 1)]),
            vec![r(0, 7), r(10, 12), r(40, 1)]
        );
        assert_eq!(merge_ranges([r(0, 100), r(10, 5)]), vec![r(0, 100)]);
        assert!(merge_ranges([]).is_empty());
    }
}
