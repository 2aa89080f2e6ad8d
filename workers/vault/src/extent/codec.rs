//! The serialized form of an extent map (version 1, see the module doc of [`super`]).

use super::{ExtentError, ExtentMap, ExtentMapBuilder, ExtentTarget};
use crate::chunk::ChunkId;

const MAP_MAGIC: &[u8; 8] = b"STWEMAP1";
const KIND_ZERO: u8 = 0;
const KIND_CHUNK: u8 = 1;

impl ExtentMap {
    /// Encodes the map in the format described in the module doc.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.extents.len() * 53);
        out.extend_from_slice(MAP_MAGIC);
        out.extend_from_slice(&self.volume_size.to_le_bytes());
        put_name(&mut out, &self.version);
        match &self.parent {
            Some(parent) => {
                out.push(1);
                put_name(&mut out, parent);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(self.extents.len() as u64).to_le_bytes());
        for extent in &self.extents {
            out.extend_from_slice(&extent.offset.to_le_bytes());
            out.extend_from_slice(&extent.length.to_le_bytes());
            match extent.target {
                ExtentTarget::Zero => out.push(KIND_ZERO),
                ExtentTarget::Chunk {
                    id,
                    offset_in_chunk,
                } => {
                    out.push(KIND_CHUNK);
                    out.extend_from_slice(id.as_bytes());
                    out.extend_from_slice(&offset_in_chunk.to_le_bytes());
                }
            }
        }
        let checksum = blake3::hash(&out);
        out.extend_from_slice(checksum.as_bytes());
        out
    }

    /// Decodes and validates a map; `source` names it in errors (usually its key).
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<ExtentMap, ExtentError> {
        let corrupt = |reason: String| ExtentError::Corrupt {
            key: source.to_owned(),
            reason,
        };
        if bytes.len() < MAP_MAGIC.len() + 32 || &bytes[..8] != MAP_MAGIC {
            return Err(corrupt(
                "it does not start with the extent-map magic bytes".into(),
            ));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != checksum {
            return Err(corrupt("its checksum does not match its content".into()));
        }
        let mut reader = Reader { bytes: &body[8..] };
        let truncated = |_| corrupt("it ends in the middle of a field".into());
        let volume_size = reader.u64().map_err(truncated)?;
        let version = reader.name().map_err(truncated)?;
        let parent = match reader.u8().map_err(truncated)? {
            0 => None,
            1 => Some(reader.name().map_err(truncated)?),
            other => return Err(corrupt(format!("unknown parent flag {other}"))),
        };
        let count = reader.u64().map_err(truncated)?;
        let mut builder = match &parent {
            None => ExtentMapBuilder::full(&version, volume_size),
            Some(parent) => ExtentMapBuilder::incremental(&version, parent, volume_size),
        }
        .map_err(|e| corrupt(e.to_string()))?;
        for _ in 0..count {
            let offset = reader.u64().map_err(truncated)?;
            let length = reader.u64().map_err(truncated)?;
            let pushed = match reader.u8().map_err(truncated)? {
                KIND_ZERO if parent.is_none() => {
                    return Err(corrupt("a full map holds a zero extent".into()));
                }
                KIND_ZERO => builder.push_zero(offset, length),
                KIND_CHUNK => {
                    let id = ChunkId::from_bytes(reader.array().map_err(truncated)?);
                    let offset_in_chunk = reader.u32().map_err(truncated)?;
                    builder.push_chunk(offset, length, id, offset_in_chunk)
                }
                other => return Err(corrupt(format!("unknown extent kind {other}"))),
            };
            pushed.map_err(|e| corrupt(e.to_string()))?;
        }
        if !reader.bytes.is_empty() {
            return Err(corrupt(format!(
                "{} unexpected bytes after the last extent",
                reader.bytes.len()
            )));
        }
        let map = builder.finish();
        if map.extents.len() as u64 != count {
            return Err(corrupt("adjacent zero extents were stored unmerged".into()));
        }
        Ok(map)
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    let len = u16::try_from(name.len()).expect("validated names are at most 255 bytes");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
}

struct Truncated;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if self.bytes.len() < n {
            return Err(Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn name(&mut self) -> Result<String, Truncated> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        // Invalid UTF-8 is caught by the builder's name validation as an empty/odd name.
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}
