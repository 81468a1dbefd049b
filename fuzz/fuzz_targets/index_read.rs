//! Any bytes as a `.fidx`, a `.didx` or an index of either kind; what opens must answer every
//! accessor without panicking.
#![no_main]

use keepsake_manifest::index::{ChunkIndex, DynamicIndex, FixedIndex, IndexFile};
use libfuzzer_sys::fuzz_target;

fn walk<I: ChunkIndex>(index: &I) {
    let _ = index.archive_size();
    let _ = index.index_csum();
    for chunk in index.chunks() {
        let _ = chunk.digest;
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = FixedIndex::from_bytes(data.to_vec()) {
        walk(&index);
    }
    if let Ok(index) = DynamicIndex::from_bytes(data.to_vec()) {
        walk(&index);
    }
    if let Ok(index) = IndexFile::from_bytes(data.to_vec()) {
        walk(&index);
    }
});
