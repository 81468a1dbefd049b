//! Any bytes as a PBS key file: what parses must write back and parse again to the same value and
//! text; a key without password must open or fail with an error, never a panic. (Protected keys are
//! not decrypted here: a valid KDF may take seconds, which libFuzzer would report as a hang.)
#![no_main]

use keepsake_manifest::keyfile::KeyConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = KeyConfig::from_json(data) {
        let text = config.to_json();
        let again = KeyConfig::from_json(text.as_bytes()).expect("keepsake's own JSON parses");
        assert_eq!(again, config, "a written key file reads back differently");
        assert_eq!(again.to_json(), text, "writing is not stable");
        if !config.needs_passphrase() {
            let _ = config.decrypt(None);
        }
    }
});
