//! Synthesised chunk-index segments and peak-RSS readings, shared by `index-bench` and
//! `tib-bench` (included with `#[path = "index_synth.rs"] mod index_synth;`, so every item here
//! must be used by both).

use std::time::Instant;

use bytes::Bytes;
use stowage_vault::chunk::ChunkId;
use stowage_vault::index::SegmentEncoder;
use stowage_vault::layout;
use stowage_vault::pack::{ChunkLocation, PackId};
use stowage_vault::store::BlobStore;

pub const MIB: f64 = (1u64 << 20) as f64;

/// The sizes of the segments, as tiered compaction leaves them: ¾ of what remains each, the
/// rest once it is job-sized.
pub fn layout_sizes(chunks: u64) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut left = chunks;
    while left > 4096 {
        let take = left * 3 / 4;
        sizes.push(take);
        left -= take;
    }
    if left > 0 {
        sizes.push(left);
    }
    sizes
}

/// The `i`th of `n` ids of segment `segment`, ascending in `i`: the first 8 bytes spread the
/// ids evenly over the key space with a random place inside each slot, the rest are random —
/// uniform like keyed BLAKE3 ids, and sorted without sorting.
pub fn id(segment: usize, i: u64, n: u64) -> ChunkId {
    let hash = blake3::hash(format!("{segment}/{i}").as_bytes());
    let mut bytes = *hash.as_bytes();
    let slot = u64::MAX / n;
    let within = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) % slot;
    bytes[..8].copy_from_slice(&(i * slot + within).to_be_bytes());
    ChunkId::from_bytes(bytes)
}

/// Where the synthesised `i`th chunk of `segment` is said to be (no pack exists).
pub fn location(segment: usize, i: u64) -> ChunkLocation {
    ChunkLocation {
        pack: PackId::for_job(&format!("synthetic-{segment}"), i / 8),
        offset: (i % 8) * (1 << 20),
        length: 1 << 20,
    }
}

/// Write `chunks` synthesised entries as format-2 segments (sizes from [`layout_sizes`]),
/// streamed: the writer holds one filter and one piece at a time.
pub async fn write_segments(store: &BlobStore, chunks: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    for (segment, n) in layout_sizes(chunks).into_iter().enumerate() {
        write_segment(store, &format!("synthetic-{segment:02}-{n}"), segment, n).await?;
    }
    eprintln!(
        "synthesised {chunks} index entries in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Write segment `name` of the `n` synthesised entries of `segment`, streamed.
pub async fn write_segment(
    store: &BlobStore,
    name: &str,
    segment: usize,
    n: u64,
) -> anyhow::Result<()> {
    let key = layout::index_segment(name)?;
    let (encoder, header) = SegmentEncoder::new(n, Vec::new());
    let stream = futures::stream::unfold(
        Some((encoder, Some(header), 0u64)),
        move |state| async move {
            let (mut encoder, header, mut i) = state?;
            let mut out = header.unwrap_or_default();
            while out.len() < 1 << 20 && i < n {
                if let Some(block) = encoder.push(&id(segment, i, n), &location(segment, i)) {
                    out.extend_from_slice(&block);
                }
                i += 1;
            }
            if i == n {
                out.extend_from_slice(&encoder.finish());
                return Some((Ok::<_, std::io::Error>(Bytes::from(out)), None));
            }
            Some((Ok(Bytes::from(out)), Some((encoder, None, i))))
        },
    );
    store.put_stream_create_only(&key, stream).await?;
    Ok(())
}
