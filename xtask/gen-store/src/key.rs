//! The key `--key FILE` names: a PBS key file (the JSON key config; a password-protected one
//! takes its password from `KEEPSAKE_KEY_PASSWORD`, as the CLI's `--keyfile` does), or a bare
//! key (32 raw bytes, or 64 hex digits). Everything after this module only sees a
//! [`CryptConfig`].

use std::path::Path;

use anyhow::{Context, Result, bail};
use keepsake_manifest::crypt::CryptConfig;

/// Reads a 32-byte AES-256 key from `path`: the 32 raw bytes, or 64 hex digits (surrounding
/// white space allowed).
pub(crate) fn load_key(path: &Path) -> Result<CryptConfig> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    key_from_bytes(&bytes).with_context(|| format!("key file {}", path.display()))
}

fn key_from_bytes(bytes: &[u8]) -> Result<CryptConfig> {
    if bytes.trim_ascii_start().starts_with(b"{") {
        let config = keepsake_manifest::keyfile::KeyConfig::from_json(bytes)?;
        let password = std::env::var_os("KEEPSAKE_KEY_PASSWORD");
        let password = password
            .as_ref()
            .map(|p| std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()));
        return Ok(config.decrypt(password)?);
    }
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        return Ok(CryptConfig::new(raw));
    }
    let text = bytes.trim_ascii();
    let mut key = [0u8; 32];
    if text.len() == 64 && hex::decode_to_slice(text, &mut key).is_ok() {
        return Ok(CryptConfig::new(key));
    }
    bail!(
        "neither a PBS key file, 32 raw bytes nor 64 hex digits ({} bytes)",
        bytes.len()
    )
}

#[cfg(test)]
mod tests {
    use super::key_from_bytes;
    use keepsake_manifest::crypt::CryptConfig;

    #[test]
    fn raw_and_hex_keys_give_the_same_config() {
        let raw = [0x5au8; 32];
        let expected = CryptConfig::new(raw).fingerprint();
        assert_eq!(key_from_bytes(&raw).unwrap().fingerprint(), expected);
        let hex = format!("{}\n", hex::encode(raw));
        assert_eq!(
            key_from_bytes(hex.as_bytes()).unwrap().fingerprint(),
            expected
        );
        let plain = keepsake_manifest::keyfile::KeyConfig::new_plain(raw).to_json();
        assert_eq!(
            key_from_bytes(plain.as_bytes()).unwrap().fingerprint(),
            expected
        );
        for bad in [&b""[..], &[0u8; 31], &[b'z'; 64], b"{\"kdf\": null}"] {
            assert!(key_from_bytes(bad).is_err());
        }
    }
}
