//! Encryption keys: the AES-256-GCM cipher of blobs, the id key derived from the encryption key, key
//! fingerprints, chunk digests and the HMAC used by manifest signatures.
//!
//! The formulas are PBS's (spec §4.3):
//! - id key = PBKDF2-HMAC-SHA256(password = the 32-byte key, salt = `_id_key`, 10 rounds, 32 bytes);
//! - fingerprint = SHA-256(SHA-256("Proxmox Backup Encryption Key Fingerprint") ‖ id key);
//! - chunk digest = SHA-256(data) without a key, SHA-256(data ‖ id key) with one;
//! - signature = HMAC-SHA256(id key, canonical JSON).

use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::consts::U16;
use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aes::Aes256;
use aes_gcm::{AeadInOut, AesGcm, KeyInit};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Length of an encryption key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of the AES-GCM IV stored in an encrypted blob (PBS uses 16 bytes, not the usual 12).
pub const IV_LEN: usize = 16;
/// Length of the AES-GCM tag stored in an encrypted blob.
pub const TAG_LEN: usize = 16;

/// SHA-256 of `"Proxmox Backup Encryption Key Fingerprint"`, the prefix hashed with the id key to make
/// a key fingerprint.
pub const FINGERPRINT_INPUT: [u8; 32] = [
    110, 208, 239, 119, 71, 31, 255, 77, 85, 199, 168, 254, 74, 157, 182, 33, 97, 64, 127, 19, 76,
    114, 93, 223, 48, 153, 45, 37, 236, 69, 237, 38,
];

/// The salt of the id key derivation.
const ID_KEY_SALT: &[u8] = b"_id_key";
/// PBKDF2 rounds of the id key derivation; few on purpose, the input is already a random key.
const ID_KEY_ROUNDS: u32 = 10;

type Cipher = AesGcm<Aes256, U16>;
type HmacSha256 = Hmac<Sha256>;

/// What one encryption key gives: the blob cipher, the id key and the fingerprint.
///
/// Built once per key and shared (`Send + Sync`, cheap to clone). `Debug` shows only the
/// fingerprint: key material is never printed.
///
/// ```
/// use keepsake_manifest::crypt::CryptConfig;
///
/// let config = CryptConfig::new([7; 32]);
/// let fp = config.fingerprint();
/// assert_eq!(fp.to_string().len(), 32 * 3 - 1); // "aa:bb:…", 32 bytes
/// assert_eq!(fp.short().len(), 8 * 3 - 1); // the short key id PBS shows
/// assert!(!format!("{config:?}").contains("0707"));
/// ```
#[derive(Clone)]
pub struct CryptConfig {
    cipher: GcmCipher,
    id_key: [u8; 32],
    /// The HMAC state after absorbing the id key; cloning it saves the key setup on every signature.
    id_mac: HmacSha256,
    fingerprint: Fingerprint,
}

impl CryptConfig {
    /// Everything derived from a 32-byte encryption key.
    pub fn new(key: [u8; KEY_LEN]) -> Self {
        let mut id_key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&key, ID_KEY_SALT, ID_KEY_ROUNDS, &mut id_key);
        let fingerprint = Fingerprint(
            Sha256::new()
                .chain_update(FINGERPRINT_INPUT)
                .chain_update(id_key)
                .finalize()
                .into(),
        );
        let id_mac = <HmacSha256 as KeyInit>::new_from_slice(&id_key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        Self {
            cipher: GcmCipher::new(&key),
            id_key,
            id_mac,
            fingerprint,
        }
    }

    /// The key's fingerprint, as stored in a manifest's `unprotected.key-fingerprint`.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The digest of an encrypted chunk: SHA-256(data ‖ id key). See also [`chunk_digest`].
    pub fn compute_digest(&self, data: &[u8]) -> [u8; 32] {
        Sha256::new()
            .chain_update(data)
            .chain_update(self.id_key)
            .finalize()
            .into()
    }

    /// HMAC-SHA256 of `data` keyed with the id key: the manifest signature over canonical JSON.
    pub fn compute_auth_tag(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.id_mac.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Encrypts `plain` into `out` (same length) and returns the tag. Empty AAD, as PBS.
    pub(crate) fn encrypt_into(
        &self,
        iv: &[u8; IV_LEN],
        plain: &[u8],
        out: &mut [u8],
    ) -> [u8; TAG_LEN] {
        self.cipher.encrypt_into(iv, plain, out)
    }

    /// Decrypts `buf` in place, checking `tag`.
    pub(crate) fn decrypt_in_place(
        &self,
        iv: &[u8; IV_LEN],
        tag: &[u8; TAG_LEN],
        buf: &mut [u8],
    ) -> Result<()> {
        self.cipher.decrypt_in_place(iv, tag, buf)
    }
}

/// AES-256-GCM as PBS uses it: a 16-byte IV as the nonce (GHASH-derived counter block, as OpenSSL
/// does), empty AAD, a detached 16-byte tag. The one cipher of blobs and of password-protected key
/// files.
#[derive(Clone)]
pub(crate) struct GcmCipher(Cipher);

impl GcmCipher {
    /// The cipher under a 32-byte key.
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Self {
        Self(Cipher::new(key.into()))
    }

    /// Encrypts `plain` into `out` (same length) and returns the tag.
    pub(crate) fn encrypt_into(
        &self,
        iv: &[u8; IV_LEN],
        plain: &[u8],
        out: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let buf = InOutBuf::new(plain, out)
            .unwrap_or_else(|_| unreachable!("callers pass buffers of equal length"));
        self.0
            .encrypt_inout_detached(iv.into(), &[], buf)
            .unwrap_or_else(|_| {
                unreachable!("blob payloads are far below the AES-GCM message limit")
            })
            .into()
    }

    /// Decrypts `buf` in place, checking `tag`; [`Error::DecryptionFailed`] if it does not match.
    pub(crate) fn decrypt_in_place(
        &self,
        iv: &[u8; IV_LEN],
        tag: &[u8; TAG_LEN],
        buf: &mut [u8],
    ) -> Result<()> {
        self.0
            .decrypt_inout_detached(iv.into(), &[], buf.into(), tag.into())
            .map_err(|_| Error::DecryptionFailed)
    }
}

impl fmt::Debug for CryptConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptConfig")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The digest that names a chunk: SHA-256(data) without a key, SHA-256(data ‖ id key) with one.
///
/// ```
/// use keepsake_manifest::crypt::{chunk_digest, CryptConfig};
/// use sha2::{Digest, Sha256};
///
/// let plain: [u8; 32] = Sha256::digest(b"chunk").into();
/// assert_eq!(chunk_digest(b"chunk", None), plain);
/// assert_ne!(chunk_digest(b"chunk", Some(&CryptConfig::new([1; 32]))), plain);
/// ```
pub fn chunk_digest(data: &[u8], crypt: Option<&CryptConfig>) -> [u8; 32] {
    match crypt {
        Some(config) => config.compute_digest(data),
        None => Sha256::digest(data).into(),
    }
}

/// A key fingerprint: 32 bytes that name an encryption key without revealing it.
///
/// Text forms: [`Display`](fmt::Display) and serde write the full form PBS stores in manifests,
/// 32 lowercase hex pairs joined by `:`; [`Fingerprint::short`] gives the first 8 pairs, the key id
/// PBS shows to users. [`FromStr`] drops every `:` and then wants 64 hex digits, as PBS does.
///
/// ```
/// use keepsake_manifest::crypt::Fingerprint;
///
/// let fp: Fingerprint = "aa:bb:cc:dd:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb".parse()?;
/// assert_eq!(fp.short(), "aa:bb:cc:dd:00:11:22:33");
/// assert_eq!(fp.to_string().parse::<Fingerprint>()?, fp);
/// # Ok::<(), keepsake_manifest::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// A fingerprint from its bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The short key id: the first 8 bytes as `aa:bb:…`.
    pub fn short(&self) -> String {
        colon_hex(&self.0[..8])
    }
}

fn colon_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&hex::encode([*b]));
    }
    out
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&colon_hex(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::InvalidFingerprint {
            input: s.to_owned(),
        };
        let digits: String = s.chars().filter(|c| *c != ':').collect();
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&digits, &mut bytes).map_err(|_| invalid())?;
        Ok(Self(bytes))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values computed with Python's hashlib and hmac (OpenSSL) from the formulas of spec §4.3,
    /// independently of this crate, for the key 00 01 02 … 1f.
    #[test]
    fn derivations_match_an_independent_implementation() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let config = CryptConfig::new(key);
        assert_eq!(
            hex::encode(config.id_key),
            "7c2c013efd07f3b25717a485263343cd4d292a4b65c200bb3b18ea227abe225c"
        );
        assert_eq!(
            config.fingerprint().to_string(),
            "0e:ab:d4:46:0b:6e:b9:ca:34:50:23:de:e2:b7:78:c7:90:e5:4a:16:83:b9:65:9c:0a:57:ae:19:90:90:15:9b"
        );
        assert_eq!(config.fingerprint().short(), "0e:ab:d4:46:0b:6e:b9:ca");
        assert_eq!(
            hex::encode(config.compute_auth_tag(br#"{"a":1}"#)),
            "13c31eec080167f93fc0adeab604bba64e67ba730799aca0a601e4248db8c877"
        );
        assert_eq!(
            hex::encode(chunk_digest(b"chunk data", Some(&config))),
            "0c5b7581fea88425fe0ee0f32352289631a809abe935529729bed2fa3166a245"
        );
    }

    #[test]
    fn fingerprint_text_forms() {
        let fp = Fingerprint::from_bytes(std::array::from_fn(|i| i as u8 * 8));
        let full = fp.to_string();
        assert_eq!(&full[..8], "00:08:10");
        assert_eq!(full.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(full.replace(':', "").parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(full.to_uppercase().parse::<Fingerprint>().unwrap(), fp);
        let json = serde_json::to_string(&fp).unwrap();
        assert_eq!(json, format!("\"{full}\""));
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).unwrap(), fp);
        for bad in [
            "",
            "00:11",
            &full[..full.len() - 1],
            &format!("{full}:00"),
            &full.replace('0', "g"),
        ] {
            assert!(
                matches!(
                    bad.parse::<Fingerprint>(),
                    Err(Error::InvalidFingerprint { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_hides_key_material() {
        let config = CryptConfig::new([0xab; 32]);
        let text = format!("{config:?}");
        assert!(text.contains("fingerprint"));
        assert!(!text.contains("ab, ab") && !text.contains("abab") && !text.contains("171"));
    }

    #[test]
    fn fingerprint_input_is_the_hash_of_its_label() {
        let computed: [u8; 32] =
            Sha256::digest(b"Proxmox Backup Encryption Key Fingerprint").into();
        assert_eq!(computed, FINGERPRINT_INPUT);
    }
}
