//! Any bytes as manifest JSON and as a manifest blob; what parses must write back and parse again
//! to the same JSON text.
#![no_main]

use keepsake_manifest::manifest::BackupManifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = BackupManifest::from_blob_bytes(data);
    if let Ok(manifest) = BackupManifest::from_json(data) {
        let text = manifest.to_json();
        let again = BackupManifest::from_json(text.as_bytes()).expect("keepsake's own JSON parses");
        assert_eq!(again.to_json(), text, "writing is not stable");
    }
});
