//! Any bytes through the DataBlob decoder, without and with a key: an error or a value, never a
//! panic, a hang or an unbounded allocation.
#![no_main]

use keepsake_manifest::blob::{BlobCodec, decode};
use keepsake_manifest::crypt::CryptConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = CryptConfig::new([7; 32]);
    let _ = decode(data, None);
    let _ = decode(data, Some(&key));
    let mut codec = BlobCodec::new();
    let mut out = Vec::new();
    if codec.decode_into(data, Some(&key), &mut out).is_err() {
        assert!(out.is_empty(), "a failed decode left output behind");
    }
});
