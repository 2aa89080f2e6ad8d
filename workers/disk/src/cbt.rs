//! The change-block-tracking log of one local disk (`disks/<name>.cbt`).
//!
//! Format: a header — the magic `STWCBT1\n`, a little-endian `u32` length and that many bytes of
//! the *base* snapshot name (the snapshot the recorded changes are relative to; length 0 for
//! "since the disk was created") — then 24-byte records: `offset`, `len` and a check word, each
//! a little-endian `u64`.
//!
//! The header is only ever written whole, to a temporary file that is renamed into place, so
//! it is never torn. Records are appended (`O_APPEND`) and fsynced *before* the data they
//! describe is written, so a crash can leave at most a torn record whose data was never
//! written. The reader skips bytes that do not form a valid record (the check word makes a
//! false match negligible), so a torn record followed by later appends is harmless.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::ByteRange;
use crate::ranges::merge_in_place;

const MAGIC: &[u8; 8] = b"STWCBT1\n";
/// Size of one record in bytes.
pub(crate) const RECORD_LEN: usize = 24;
/// When this many unmerged ranges pile up while reading, merge them to bound memory.
const MERGE_EVERY: usize = 1 << 16;

/// What a log holds.
#[derive(Debug)]
pub(crate) struct Log {
    /// The snapshot the recorded changes are relative to.
    pub base: Option<String>,
    /// The recorded ranges (from the requested position on), sorted and merged.
    pub ranges: Vec<ByteRange>,
    /// Bytes of the file that were read: a later reader passing this as `from` sees only the
    /// records appended since.
    pub len: u64,
}

/// The header of a log whose changes are relative to `base`.
pub(crate) fn header(base: Option<&str>) -> Vec<u8> {
    let name = base.unwrap_or("").as_bytes();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + name.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(name);
    out
}

/// One record for `r`.
pub(crate) fn record(r: ByteRange) -> [u8; RECORD_LEN] {
    let mut out = [0; RECORD_LEN];
    out[..8].copy_from_slice(&r.offset.to_le_bytes());
    out[8..16].copy_from_slice(&r.len.to_le_bytes());
    out[16..].copy_from_slice(&check(r.offset, r.len).to_le_bytes());
    out
}

fn check(offset: u64, len: u64) -> u64 {
    splitmix(offset ^ splitmix(len ^ 0x5354_5743_4254_3100))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn parse_record(b: &[u8]) -> Option<ByteRange> {
    let word = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let (offset, len, chk) = (word(0), word(1), word(2));
    (len > 0 && offset.checked_add(len).is_some() && chk == check(offset, len))
        .then_some(ByteRange::new(offset, len))
}

fn invalid(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("change log {} is corrupt: {what}", path.display()),
    )
}

/// Read the header of the log open in `file`: the base snapshot and the header's length.
fn read_header(file: &mut File, path: &Path) -> io::Result<(Option<String>, u64)> {
    let mut head = [0u8; 12];
    file.read_exact(&mut head)
        .map_err(|_| invalid(path, "short header"))?;
    if &head[..8] != MAGIC {
        return Err(invalid(path, "bad magic"));
    }
    let name_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if name_len > 4096 {
        return Err(invalid(path, "base name too long"));
    }
    let mut name = vec![0; name_len];
    file.read_exact(&mut name)
        .map_err(|_| invalid(path, "short header"))?;
    let base = match name_len {
        0 => None,
        _ => Some(String::from_utf8(name).map_err(|_| invalid(path, "base name is not UTF-8"))?),
    };
    Ok((base, (12 + name_len) as u64))
}

/// The base snapshot of the log at `path`, reading only its header.
pub(crate) fn read_base(path: &Path) -> io::Result<Option<String>> {
    let mut file = File::open(path)?;
    read_header(&mut file, path).map(|(base, _)| base)
}

/// Read the log at `path`: its header, and the records from byte `from` on (from the first
/// record when `from` falls inside the header). Reads in bounded pieces.
pub(crate) fn read(path: &Path, from: u64) -> io::Result<Log> {
    let mut file = File::open(path)?;
    let (base, mut pos) = read_header(&mut file, path)?;
    if from > pos {
        file.seek(SeekFrom::Start(from))?;
        pos = from;
    }

    let mut ranges = Vec::new();
    let mut buf = Vec::with_capacity(1 << 16);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        pos += n as u64;
        buf.extend_from_slice(&chunk[..n]);
        let mut i = 0;
        while buf.len() - i >= RECORD_LEN {
            match parse_record(&buf[i..i + RECORD_LEN]) {
                Some(r) => {
                    ranges.push(r);
                    i += RECORD_LEN;
                }
                // A torn record: resynchronise one byte further on.
                None => i += 1,
            }
        }
        buf.drain(..i);
        if ranges.len() >= MERGE_EVERY {
            merge_in_place(&mut ranges);
        }
    }
    merge_in_place(&mut ranges);
    Ok(Log {
        base,
        ranges,
        len: pos,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn round_trip_with_torn_records() {
        let dir = std::env::temp_dir().join(format!("stowage-cbt-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.cbt");
        let mut f = File::create(&path).unwrap();
        f.write_all(&header(Some("snap-1"))).unwrap();
        f.write_all(&record(ByteRange::new(0, 4096))).unwrap();
        // A torn record, then more appends after a "restart".
        f.write_all(&record(ByteRange::new(1 << 20, 4096))[..10])
            .unwrap();
        f.write_all(&record(ByteRange::new(8192, 4096))).unwrap();
        f.write_all(&record(ByteRange::new(4096, 4096))).unwrap();
        f.write_all(&[0xff; 7]).unwrap();
        drop(f);

        let log = read(&path, 0).unwrap();
        assert_eq!(log.base.as_deref(), Some("snap-1"));
        assert_eq!(log.ranges, vec![ByteRange::new(0, 12288)]);
        assert_eq!(log.len, std::fs::metadata(&path).unwrap().len());

        let first_record_end = (header(Some("snap-1")).len() + RECORD_LEN) as u64;
        let later = read(&path, first_record_end).unwrap();
        assert_eq!(later.ranges, vec![ByteRange::new(4096, 8192)]);

        std::fs::write(&path, b"garbage!").unwrap();
        assert_eq!(
            read(&path, 0).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
