//! PBS key files (`KeyConfig`, what `proxmox-backup-client --keyfile` reads): loading, decrypting,
//! creating and storing them, byte for byte as PBS does (spec §4.5).
//!
//! A key file is one compact JSON object, fields in this order:
//!
//! ```text
//! {"kdf":{"Scrypt":{"n":65536,"r":8,"p":1,"salt":"<base64>"}},"created":"2020-06-26T13:56:05+02:00",
//!  "modified":"2020-06-26T13:56:05+02:00","data":"<base64>","fingerprint":"aa:bb:…","hint":"…"}
//! ```
//!
//! - `kdf` is `null` for a key without password (then `data` is the 32-byte key itself), else
//!   `Scrypt` (PBS's default) or `PBKDF2`, with a random 32-byte salt;
//! - a protected `data` is IV(16) ‖ TAG(16) ‖ CIPHERTEXT(32): AES-256-GCM with the 16-byte IV as the
//!   nonce and empty AAD (the blob cipher, [`crate::blob`]), under the key the KDF derives from the
//!   passphrase;
//! - `fingerprint` (optional) is checked against the decrypted key; `hint` (optional) is shown when
//!   the passphrase is wrong.
//!
//! ```
//! use keepsake_manifest::keyfile::{KdfKind, KeyConfig};
//!
//! let key = [7u8; 32];
//! let config = KeyConfig::encrypt(key, b"correct horse", KdfKind::Pbkdf2)?.with_hint("the horse")?;
//! let text = config.to_json();
//! assert!(text.starts_with(r#"{"kdf":{"PBKDF2":{"iter":65535,"salt":""#));
//!
//! let read = KeyConfig::from_json(text.as_bytes())?;
//! let crypt = read.decrypt(Some(b"correct horse"))?;
//! assert_eq!(Some(crypt.fingerprint()), read.fingerprint());
//!
//! let wrong = read.decrypt(Some(b"wrong horse")).unwrap_err();
//! assert_eq!(wrong.to_string(), "unable to decrypt key (wrong password?) (hint: the horse)");
//! # Ok::<(), keepsake_manifest::Error>(())
//! ```
//!
//! Reading refuses what PBS would accept only to exhaust memory or time: scrypt parameters that
//! need more than [`MAX_SCRYPT_MEMORY`] bytes or more than [`MAX_SCRYPT_WORK`] block mixes, PBKDF2
//! with more than [`MAX_PBKDF2_ITER`] rounds, key files larger than [`MAX_KEY_FILE_LEN`].

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use jiff::Timestamp;
use jiff::tz::Offset;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::crypt::{CryptConfig, Fingerprint, GcmCipher, IV_LEN, KEY_LEN, TAG_LEN};
use crate::error::{Error, Result};

/// The shortest passphrase PBS accepts, in bytes.
pub const MIN_PASSPHRASE_LEN: usize = 5;
/// scrypt's `N` in new key files (PBS's default).
pub const SCRYPT_N: u64 = 65_536;
/// scrypt's `r` in new key files (PBS's default).
pub const SCRYPT_R: u64 = 8;
/// scrypt's `p` in new key files (PBS's default).
pub const SCRYPT_P: u64 = 1;
/// PBKDF2 rounds in new key files (PBS's value).
pub const PBKDF2_ITER: u64 = 65_535;
/// Length of the random salt of new key files.
pub const SALT_LEN: usize = 32;
/// The longest password hint, in characters.
pub const MAX_HINT_LEN: usize = 64;

/// The largest key file read: a real one is below 400 bytes.
pub const MAX_KEY_FILE_LEN: u64 = 64 * 1024;
/// The most memory scrypt may use for a key file (`128 · r · (N + p)` bytes): 1025 MiB, the bound
/// PBS gives OpenSSL. PBS's defaults use 64 MiB.
pub const MAX_SCRYPT_MEMORY: u64 = 1025 * 1024 * 1024;
/// The most scrypt work a key file may ask for (`N · r · p`): 128 times PBS's default, so that a
/// hostile file cannot keep a reader busy for hours.
pub const MAX_SCRYPT_WORK: u64 = 128 * SCRYPT_N * SCRYPT_R * SCRYPT_P;
/// The most PBKDF2 rounds a key file may ask for: about 150 times PBS's value.
pub const MAX_PBKDF2_ITER: u64 = 10_000_000;

/// Which key derivation function protects a new key file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KdfKind {
    /// scrypt with `N` = 65536, `r` = 8, `p` = 1 (PBS's default).
    #[default]
    Scrypt,
    /// PBKDF2-HMAC-SHA256 with 65535 rounds.
    Pbkdf2,
}

/// The key derivation function of a password-protected key file, with its parameters.
///
/// Values come from the file as they are; [`KeyConfig::decrypt`] checks them (valid, and within
/// [`MAX_SCRYPT_MEMORY`], [`MAX_SCRYPT_WORK`] and [`MAX_PBKDF2_ITER`]) before deriving anything.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kdf {
    /// scrypt (`{"Scrypt":{"n":…,"r":…,"p":…,"salt":…}}`).
    Scrypt {
        /// The CPU/memory cost `N`, a power of two.
        n: u64,
        /// The block size `r`.
        r: u64,
        /// The parallelisation `p`.
        p: u64,
        /// The salt.
        salt: Vec<u8>,
    },
    /// PBKDF2-HMAC-SHA256 (`{"PBKDF2":{"iter":…,"salt":…}}`).
    Pbkdf2 {
        /// The number of rounds.
        iter: u64,
        /// The salt.
        salt: Vec<u8>,
    },
}

impl Kdf {
    /// PBS's parameters for `kind`, with a random salt of [`SALT_LEN`] bytes.
    ///
    /// # Errors
    /// [`Error::Random`] if the operating system's random source fails.
    pub fn new_random(kind: KdfKind) -> Result<Self> {
        let mut salt = vec![0u8; SALT_LEN];
        getrandom::fill(&mut salt).map_err(Error::Random)?;
        Ok(match kind {
            KdfKind::Scrypt => Kdf::Scrypt {
                n: SCRYPT_N,
                r: SCRYPT_R,
                p: SCRYPT_P,
                salt,
            },
            KdfKind::Pbkdf2 => Kdf::Pbkdf2 {
                iter: PBKDF2_ITER,
                salt,
            },
        })
    }

    /// Which function this is.
    pub fn kind(&self) -> KdfKind {
        match self {
            Kdf::Scrypt { .. } => KdfKind::Scrypt,
            Kdf::Pbkdf2 { .. } => KdfKind::Pbkdf2,
        }
    }

    /// The 32-byte key this function derives from `passphrase`, after checking the parameters.
    fn derive(&self, passphrase: &[u8]) -> Result<[u8; KEY_LEN]> {
        let mut out = [0u8; KEY_LEN];
        match self {
            Kdf::Scrypt { n, r, p, salt } => {
                let params = scrypt_params(*n, *r, *p)?;
                scrypt::scrypt(passphrase, salt, &params, &mut out)
                    .unwrap_or_else(|_| unreachable!("32 bytes is a valid scrypt output length"));
            }
            Kdf::Pbkdf2 { iter, salt } => {
                if *iter == 0 {
                    return Err(Error::KdfParams {
                        reason: "PBKDF2 needs at least one round",
                    });
                }
                if *iter > MAX_PBKDF2_ITER {
                    return Err(Error::KdfParams {
                        reason: "more PBKDF2 rounds than keepsake accepts (10,000,000)",
                    });
                }
                let rounds = u32::try_from(*iter)
                    .unwrap_or_else(|_| unreachable!("bounded by MAX_PBKDF2_ITER"));
                pbkdf2::pbkdf2_hmac::<Sha256>(passphrase, salt, rounds, &mut out);
            }
        }
        Ok(out)
    }
}

/// scrypt's parameters, refused when invalid or too costly (see [`MAX_SCRYPT_MEMORY`],
/// [`MAX_SCRYPT_WORK`]).
fn scrypt_params(n: u64, r: u64, p: u64) -> Result<scrypt::Params> {
    let refuse = |reason| Err(Error::KdfParams { reason });
    if n < 2 || !n.is_power_of_two() {
        return refuse("scrypt's N must be a power of two greater than 1");
    }
    if r == 0 || p == 0 {
        return refuse("scrypt's r and p must be at least 1");
    }
    // Checked arithmetic: the parameters come from the file and may be anything.
    let memory = n
        .checked_add(p)
        .and_then(|blocks| blocks.checked_mul(r))
        .and_then(|blocks| blocks.checked_mul(128));
    if memory.is_none_or(|m| m > MAX_SCRYPT_MEMORY) {
        return refuse("scrypt would need more memory than keepsake allows (1025 MiB)");
    }
    let work = n.checked_mul(r).and_then(|nr| nr.checked_mul(p));
    if work.is_none_or(|w| w > MAX_SCRYPT_WORK) {
        return refuse("scrypt would need more work than keepsake allows (128 times PBS's)");
    }
    // Both bounds keep r and p far below u32::MAX and N below 2^63.
    let log_n = u8::try_from(n.trailing_zeros()).unwrap_or_else(|_| unreachable!("below 64"));
    let (r, p) = (
        u32::try_from(r).unwrap_or_else(|_| unreachable!("bounded by memory")),
        u32::try_from(p).unwrap_or_else(|_| unreachable!("bounded by memory")),
    );
    scrypt::Params::new(log_n, r, p).or_else(|_| refuse("scrypt refuses these parameters"))
}

/// A time in a key file: the instant and the offset it was written with, so that a file read and
/// written again keeps its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    at: Timestamp,
    offset: Offset,
}

impl Stamp {
    /// Now, in the system's time zone, to the second (PBS writes local time).
    fn now() -> Self {
        Self::from_zoned(&jiff::ZonedDateTime::now())
    }

    /// `zoned`'s instant to the second, with its offset to the minute.
    fn from_zoned(zoned: &jiff::ZonedDateTime) -> Self {
        let at = Timestamp::from_second(zoned.timestamp().as_second())
            .unwrap_or_else(|_| unreachable!("a whole second of a valid timestamp is valid"));
        let offset = Offset::from_seconds(zoned.offset().seconds() / 60 * 60)
            .unwrap_or_else(|_| unreachable!("a shorter offset than a valid one is valid"));
        Self { at, offset }
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS` followed by `Z` or `±HH:MM`, nothing else.
    fn parse(field: &'static str, text: &str) -> Result<Self> {
        let invalid = || Error::KeyFileTime {
            field,
            value: text.to_owned(),
        };
        let bytes = text.as_bytes();
        let shape_ok = bytes.len() >= 20
            && bytes[..19].iter().enumerate().all(|(i, b)| match i {
                4 | 7 => *b == b'-',
                10 => *b == b'T',
                13 | 16 => *b == b':',
                _ => b.is_ascii_digit(),
            });
        if !shape_ok {
            return Err(invalid());
        }
        let civil: jiff::civil::DateTime = text[..19].parse().map_err(|_| invalid())?;
        let offset = match &text[19..] {
            "Z" => Offset::UTC,
            zone => parse_offset(zone).ok_or_else(invalid)?,
        };
        let at = offset.to_timestamp(civil).map_err(|_| invalid())?;
        Ok(Self { at, offset })
    }
}

/// `±HH:MM` as an offset.
fn parse_offset(zone: &str) -> Option<Offset> {
    let bytes = zone.as_bytes();
    if bytes.len() != 6 || bytes[3] != b':' {
        return None;
    }
    let sign = match bytes[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let number = |digits: &[u8]| -> Option<i32> {
        digits.iter().try_fold(0i32, |acc, b| {
            b.is_ascii_digit().then(|| acc * 10 + i32::from(b - b'0'))
        })
    };
    let (hours, minutes) = (number(&bytes[1..3])?, number(&bytes[4..6])?);
    if minutes >= 60 {
        return None;
    }
    Offset::from_seconds(sign * (hours * 3600 + minutes * 60)).ok()
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.at.display_with_offset(self.offset), f)
    }
}

/// A PBS key file: an encryption key, in the clear or protected by a passphrase.
///
/// Read with [`KeyConfig::load`] or [`KeyConfig::from_json`], opened with
/// [`KeyConfig::decrypt`]; made with [`KeyConfig::new_plain`] or [`KeyConfig::encrypt`], written
/// with [`KeyConfig::store`] or [`KeyConfig::to_json`]. Serde goes through the same JSON form (a
/// deserialisation error then carries this crate's error text). Unknown fields are ignored on
/// reading and dropped on writing, as PBS does. `Debug` never shows `data`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyConfig {
    kdf: Option<Kdf>,
    created: Stamp,
    modified: Stamp,
    data: Vec<u8>,
    fingerprint: Option<Fingerprint>,
    hint: Option<String>,
}

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("kdf", &self.kdf.as_ref().map(Kdf::kind))
            .field("created", &self.created.to_string())
            .field("modified", &self.modified.to_string())
            .field("fingerprint", &self.fingerprint)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

impl KeyConfig {
    /// A key file holding `key` without password (`"kdf":null`), created now.
    ///
    /// Anyone who can read the file has the key: store it where only its owner can read it
    /// ([`KeyConfig::store`] makes it 0600).
    pub fn new_plain(key: [u8; KEY_LEN]) -> Self {
        let now = Stamp::now();
        Self {
            kdf: None,
            created: now,
            modified: now,
            data: key.to_vec(),
            fingerprint: Some(CryptConfig::new(key).fingerprint()),
            hint: None,
        }
    }

    /// A key file holding `key` protected by `passphrase`, created now: a fresh salt and IV, PBS's
    /// parameters for `kdf` (scrypt `N` = 65536, `r` = 8, `p` = 1; PBKDF2 65535 rounds).
    ///
    /// # Errors
    /// [`Error::PassphraseTooShort`] below [`MIN_PASSPHRASE_LEN`] bytes; [`Error::Random`] if the
    /// random source fails.
    pub fn encrypt(key: [u8; KEY_LEN], passphrase: &[u8], kdf: KdfKind) -> Result<Self> {
        check_passphrase(passphrase)?;
        let mut iv = [0u8; IV_LEN];
        getrandom::fill(&mut iv).map_err(Error::Random)?;
        Self::encrypt_with(key, passphrase, Kdf::new_random(kdf)?, iv, Stamp::now())
    }

    /// [`KeyConfig::encrypt`] with every random or time-dependent input given.
    fn encrypt_with(
        key: [u8; KEY_LEN],
        passphrase: &[u8],
        kdf: Kdf,
        iv: [u8; IV_LEN],
        now: Stamp,
    ) -> Result<Self> {
        check_passphrase(passphrase)?;
        let cipher = GcmCipher::new(&kdf.derive(passphrase)?);
        let mut data = vec![0u8; IV_LEN + TAG_LEN + KEY_LEN];
        let (head, ciphertext) = data.split_at_mut(IV_LEN + TAG_LEN);
        let tag = cipher.encrypt_into(&iv, &key, ciphertext);
        head[..IV_LEN].copy_from_slice(&iv);
        head[IV_LEN..].copy_from_slice(&tag);
        Ok(Self {
            kdf: Some(kdf),
            created: now,
            modified: now,
            data,
            fingerprint: Some(CryptConfig::new(key).fingerprint()),
            hint: None,
        })
    }

    /// The same key file with a password hint, shown when a passphrase is wrong.
    ///
    /// # Errors
    /// [`Error::InvalidHint`] unless it is 1 to [`MAX_HINT_LEN`] characters on one line.
    pub fn with_hint(mut self, hint: &str) -> Result<Self> {
        let refuse = |reason| Err(Error::InvalidHint { reason });
        if hint.is_empty() {
            return refuse("it is empty");
        }
        if hint.chars().count() > MAX_HINT_LEN {
            return refuse("it is longer than 64 characters");
        }
        if hint.chars().any(char::is_control) {
            return refuse("it holds a line break or another control character");
        }
        self.hint = Some(hint.to_owned());
        Ok(self)
    }

    /// The same key file, created and modified at `at` (to the second, with `at`'s offset), for
    /// callers that keep the clock themselves.
    pub fn with_time(mut self, at: &jiff::ZonedDateTime) -> Self {
        let stamp = Stamp::from_zoned(at);
        self.created = stamp;
        self.modified = stamp;
        self
    }

    /// The key derivation function, `None` for a key without password.
    pub fn kdf(&self) -> Option<&Kdf> {
        self.kdf.as_ref()
    }

    /// Whether [`KeyConfig::decrypt`] needs a passphrase.
    pub fn needs_passphrase(&self) -> bool {
        self.kdf.is_some()
    }

    /// When the key was created.
    pub fn created(&self) -> Timestamp {
        self.created.at
    }

    /// When the key file was last changed.
    pub fn modified(&self) -> Timestamp {
        self.modified.at
    }

    /// The fingerprint the file names, if it names one.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// The password hint, if there is one.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The key, decrypted with `passphrase` when the file is protected (a key without password
    /// ignores it), as a [`CryptConfig`]; the fingerprint the file names is checked.
    ///
    /// # Errors
    /// - [`Error::PassphraseRequired`] for a protected key without passphrase;
    ///   [`Error::PassphraseTooShort`] below [`MIN_PASSPHRASE_LEN`] bytes;
    /// - [`Error::KdfParams`] for invalid or too costly parameters (checked before deriving);
    /// - [`Error::KeyDataTooShort`] if `data` cannot hold an IV, a tag and a key;
    /// - [`Error::WrongPassphrase`] (with the hint) if AES-GCM refuses the derived key;
    /// - [`Error::KeyLength`] if the key is not 32 bytes;
    /// - [`Error::KeyFingerprintMismatch`] if the file names another fingerprint.
    pub fn decrypt(&self, passphrase: Option<&[u8]>) -> Result<CryptConfig> {
        let key = match &self.kdf {
            None => self.data.clone(),
            Some(kdf) => {
                let Some(passphrase) = passphrase else {
                    return Err(Error::PassphraseRequired {
                        hint: self.hint.clone(),
                    });
                };
                check_passphrase(passphrase)?;
                let min = IV_LEN + TAG_LEN + 1;
                if self.data.len() < min {
                    return Err(Error::KeyDataTooShort {
                        len: self.data.len(),
                        min,
                    });
                }
                let derived = kdf.derive(passphrase)?;
                let (iv, rest) = self.data.split_at(IV_LEN);
                let (tag, ciphertext) = rest.split_at(TAG_LEN);
                let mut key = ciphertext.to_vec();
                GcmCipher::new(&derived)
                    .decrypt_in_place(
                        iv.try_into()
                            .unwrap_or_else(|_| unreachable!("split at IV_LEN")),
                        tag.try_into()
                            .unwrap_or_else(|_| unreachable!("split at TAG_LEN")),
                        &mut key,
                    )
                    .map_err(|_| Error::WrongPassphrase {
                        hint: self.hint.clone(),
                    })?;
                key
            }
        };
        let key: [u8; KEY_LEN] = key
            .as_slice()
            .try_into()
            .map_err(|_| Error::KeyLength { len: key.len() })?;
        let crypt = CryptConfig::new(key);
        match self.fingerprint {
            Some(stored) if stored != crypt.fingerprint() => Err(Error::KeyFingerprintMismatch {
                stored,
                computed: crypt.fingerprint(),
            }),
            _ => Ok(crypt),
        }
    }

    /// Parses a key file's text.
    ///
    /// # Errors
    /// [`Error::KeyFileJson`] (not JSON, a required field missing or of the wrong type, an unknown
    /// KDF), [`Error::KeyFileBase64`], [`Error::KeyFileTime`], [`Error::InvalidFingerprint`].
    pub fn from_json(text: &[u8]) -> Result<Self> {
        let wire: WireIn = serde_json::from_slice(text).map_err(|e| Error::KeyFileJson {
            reason: e.to_string(),
        })?;
        Self::try_from(wire)
    }

    /// The key file's text: compact JSON in PBS's field order, no trailing newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.to_wire())
            .unwrap_or_else(|_| unreachable!("strings and numbers always serialise"))
    }

    /// Reads and parses the key file at `path` (at most [`MAX_KEY_FILE_LEN`] bytes).
    ///
    /// # Errors
    /// [`Error::KeyFileIo`] if it cannot be read, [`Error::KeyFileJson`] if it is too large, and
    /// the errors of [`KeyConfig::from_json`].
    pub fn load(path: &Path) -> Result<Self> {
        let io = |source| Error::KeyFileIo {
            path: path.to_path_buf(),
            source,
        };
        let mut text = Vec::new();
        File::open(path)
            .and_then(|file| file.take(MAX_KEY_FILE_LEN + 1).read_to_end(&mut text))
            .map_err(io)?;
        if text.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(Error::KeyFileJson {
                reason: format!("larger than {MAX_KEY_FILE_LEN} bytes"),
            });
        }
        Self::from_json(&text)
    }

    /// Writes the key file to `path`, which must not exist: mode 0600, atomically (a temporary
    /// file in the same folder, synced, then linked to `path`, and the folder synced), so that a
    /// reader sees no file or the whole file, and an existing key is never overwritten.
    ///
    /// # Errors
    /// [`Error::KeyFileIo`], with `AlreadyExists` if `path` exists.
    pub fn store(&self, path: &Path) -> Result<()> {
        let temp = self.write_temp(path)?;
        let linked = std::fs::hard_link(&temp, path);
        let _ = std::fs::remove_file(&temp);
        linked.map_err(|source| Error::KeyFileIo {
            path: path.to_path_buf(),
            source,
        })?;
        sync_parent(path)
    }

    /// [`KeyConfig::store`], replacing `path` if it exists (atomically, by a rename).
    ///
    /// # Errors
    /// [`Error::KeyFileIo`].
    pub fn store_replacing(&self, path: &Path) -> Result<()> {
        let temp = self.write_temp(path)?;
        if let Err(source) = std::fs::rename(&temp, path) {
            let _ = std::fs::remove_file(&temp);
            return Err(Error::KeyFileIo {
                path: path.to_path_buf(),
                source,
            });
        }
        sync_parent(path)
    }

    /// Writes the text to a new 0600 file beside `path` and syncs it; returns its path.
    fn write_temp(&self, path: &Path) -> Result<PathBuf> {
        let io = |source| Error::KeyFileIo {
            path: path.to_path_buf(),
            source,
        };
        let name = path.file_name().ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a key file path must end in a file name",
            ))
        })?;
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(Error::Random)?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp-{}", hex::encode(random)));
        let temp = path.with_file_name(temp_name);
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(self.to_json().as_bytes())?;
                file.sync_all()
            });
        if let Err(source) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(io(source));
        }
        Ok(temp)
    }

    fn to_wire(&self) -> WireOut<'_> {
        WireOut {
            kdf: self.kdf.as_ref().map(|kdf| match kdf {
                Kdf::Scrypt { n, r, p, salt } => WireKdf::Scrypt {
                    n: *n,
                    r: *r,
                    p: *p,
                    salt: STANDARD.encode(salt),
                },
                Kdf::Pbkdf2 { iter, salt } => WireKdf::Pbkdf2 {
                    iter: *iter,
                    salt: STANDARD.encode(salt),
                },
            }),
            created: self.created.to_string(),
            modified: self.modified.to_string(),
            data: STANDARD.encode(&self.data),
            fingerprint: self.fingerprint,
            hint: self.hint.as_deref(),
        }
    }
}

/// Generates a random 32-byte encryption key (for a new key file).
///
/// # Errors
/// [`Error::Random`] if the operating system's random source fails.
pub fn generate_key() -> Result<[u8; KEY_LEN]> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(Error::Random)?;
    Ok(key)
}

fn check_passphrase(passphrase: &[u8]) -> Result<()> {
    if passphrase.len() < MIN_PASSPHRASE_LEN {
        return Err(Error::PassphraseTooShort {
            len: passphrase.len(),
            min: MIN_PASSPHRASE_LEN,
        });
    }
    Ok(())
}

/// Syncs the folder holding `path`, so that the new name survives a crash.
fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| Error::KeyFileIo {
            path: path.to_path_buf(),
            source,
        })
}

fn decode_base64(field: &'static str, text: &str) -> Result<Vec<u8>> {
    STANDARD_PAD_INDIFFERENT
        .decode(text)
        .map_err(|_| Error::KeyFileBase64 { field })
}

/// The JSON form written: PBS's field order, absent fingerprint and hint left out.
#[derive(Serialize)]
struct WireOut<'a> {
    kdf: Option<WireKdf>,
    created: String,
    modified: String,
    data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<Fingerprint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'a str>,
}

/// The JSON form read: unknown fields ignored, `kdf`, `fingerprint` and `hint` may be missing.
#[derive(Deserialize)]
struct WireIn {
    #[serde(default)]
    kdf: Option<WireKdf>,
    created: String,
    modified: String,
    data: String,
    #[serde(default)]
    fingerprint: Option<String>,
    #[serde(default)]
    hint: Option<String>,
}

#[derive(Serialize, Deserialize)]
enum WireKdf {
    Scrypt {
        n: u64,
        r: u64,
        p: u64,
        salt: String,
    },
    #[serde(rename = "PBKDF2")]
    Pbkdf2 { iter: u64, salt: String },
}

impl TryFrom<WireIn> for KeyConfig {
    type Error = Error;

    fn try_from(wire: WireIn) -> Result<Self> {
        let kdf = match wire.kdf {
            None => None,
            Some(WireKdf::Scrypt { n, r, p, salt }) => Some(Kdf::Scrypt {
                n,
                r,
                p,
                salt: decode_base64("kdf.salt", &salt)?,
            }),
            Some(WireKdf::Pbkdf2 { iter, salt }) => Some(Kdf::Pbkdf2 {
                iter,
                salt: decode_base64("kdf.salt", &salt)?,
            }),
        };
        Ok(Self {
            kdf,
            created: Stamp::parse("created", &wire.created)?,
            modified: Stamp::parse("modified", &wire.modified)?,
            data: decode_base64("data", &wire.data)?,
            fingerprint: wire.fingerprint.map(|fp| fp.parse()).transpose()?,
            hint: wire.hint,
        })
    }
}

impl Serialize for KeyConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_wire().serialize(s)
    }
}

impl<'de> Deserialize<'de> for KeyConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Self::try_from(WireIn::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(text: &str) -> Stamp {
        Stamp::parse("created", text).unwrap()
    }

    #[test]
    fn times_read_and_written_as_pbs() {
        for (text, written, epoch) in [
            (
                "2020-06-26T13:56:05+00:00",
                "2020-06-26T13:56:05+00:00",
                1_593_179_765,
            ),
            (
                "2020-06-26T13:56:05Z",
                "2020-06-26T13:56:05+00:00",
                1_593_179_765,
            ),
            (
                "2020-06-26T15:56:05+02:00",
                "2020-06-26T15:56:05+02:00",
                1_593_179_765,
            ),
            (
                "2020-06-26T08:26:05-05:30",
                "2020-06-26T08:26:05-05:30",
                1_593_179_765,
            ),
        ] {
            let s = stamp(text);
            assert_eq!(s.to_string(), written, "{text}");
            assert_eq!(s.at.as_second(), epoch, "{text}");
        }
        for bad in [
            "",
            "2020-06-26T13:56:05",
            "2020-06-26T13:56:05.5Z",
            "2020-06-26 13:56:05Z",
            "2020-06-26T13:56:05z",
            "2020-06-26T13:56:05+0000",
            "2020-06-26T13:56:05+00:60",
            "2020-06-26T13:56:05+99:00",
            "2020-13-26T13:56:05Z",
            "2020-06-26T13:56Z",
            "+2020-06-26T13:56:05Z",
            "2020-06-26T13:56:05+00:00 ",
            "２020-06-26T13:56:05Z",
        ] {
            assert!(
                matches!(
                    Stamp::parse("created", bad),
                    Err(Error::KeyFileTime {
                        field: "created",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn new_times_are_whole_seconds_with_an_offset() {
        let zoned: jiff::ZonedDateTime =
            "2024-06-05T15:06:40.123456+02:00[+02:00]".parse().unwrap();
        let config = KeyConfig::new_plain([1; 32]).with_time(&zoned);
        let text = config.to_json();
        assert!(
            text.contains(
                r#""created":"2024-06-05T15:06:40+02:00","modified":"2024-06-05T15:06:40+02:00""#
            ),
            "{text}"
        );
        // Now, in whatever zone this machine is: an offset, never `Z`.
        let now = KeyConfig::new_plain([1; 32]).to_json();
        let created = &now[now.find("\"created\":\"").unwrap() + 11..][..25];
        assert!(matches!(created.as_bytes()[19], b'+' | b'-'), "{created}");
    }

    #[test]
    fn scrypt_parameters_are_bounded() {
        assert!(scrypt_params(SCRYPT_N, SCRYPT_R, SCRYPT_P).is_ok());
        assert!(scrypt_params(1 << 20, 8, 1).is_ok());
        for (n, r, p) in [
            (0, 8, 1),
            (1, 8, 1),
            (65_535, 8, 1),
            (65_536, 0, 1),
            (65_536, 8, 0),
            (1 << 21, 8, 1),
            (1 << 20, 8, 16),
            (2, 1, u64::MAX),
            (u64::MAX, u64::MAX, u64::MAX),
            (1 << 63, 1, 1),
            (2, 1 << 32, 1 << 32),
        ] {
            assert!(
                matches!(scrypt_params(n, r, p), Err(Error::KdfParams { .. })),
                "{n} {r} {p}"
            );
        }
    }

    #[test]
    fn pbkdf2_rounds_are_bounded() {
        for iter in [0, MAX_PBKDF2_ITER + 1, u64::MAX] {
            let kdf = Kdf::Pbkdf2 { iter, salt: vec![] };
            assert!(
                matches!(kdf.derive(b"secret"), Err(Error::KdfParams { .. })),
                "{iter}"
            );
        }
    }

    /// Key files whose every byte was computed independently of this crate, with Python's hashlib
    /// (scrypt, PBKDF2: OpenSSL) and pyca/cryptography (AES-GCM with the 16-byte IV as nonce), from
    /// spec §4.5: key 00 01 … 1f, passphrase "correct horse battery staple", salt 80 81 … 9f,
    /// IV a0 a1 … af, PBS's parameters.
    const SCRYPT_FILE: &str = r#"{"kdf":{"Scrypt":{"n":65536,"r":8,"p":1,"salt":"gIGCg4SFhoeIiYqLjI2Oj5CRkpOUlZaXmJmam5ydnp8="}},"created":"2020-06-26T13:56:05+02:00","modified":"2020-06-26T13:56:05+02:00","data":"oKGio6SlpqeoqaqrrK2urwufxtptdTLf/AE/8fcSDnzTCsykqLfrcG7L93zcfjDad/zaX8lDmao82XKzj5Whqg==","fingerprint":"0e:ab:d4:46:0b:6e:b9:ca:34:50:23:de:e2:b7:78:c7:90:e5:4a:16:83:b9:65:9c:0a:57:ae:19:90:90:15:9b","hint":"staple"}"#;
    const PBKDF2_FILE: &str = r#"{"kdf":{"PBKDF2":{"iter":65535,"salt":"gIGCg4SFhoeIiYqLjI2Oj5CRkpOUlZaXmJmam5ydnp8="}},"created":"2020-06-26T13:56:05+02:00","modified":"2020-06-26T13:56:05+02:00","data":"oKGio6SlpqeoqaqrrK2ury4uGQekB1+smZ43eklK06cMHRaREMHtmMPlPJodrA7oPr2rMoWI3lg3dPhiC23B5A==","fingerprint":"0e:ab:d4:46:0b:6e:b9:ca:34:50:23:de:e2:b7:78:c7:90:e5:4a:16:83:b9:65:9c:0a:57:ae:19:90:90:15:9b","hint":"staple"}"#;
    const PLAIN_FILE: &str = r#"{"kdf":null,"created":"2020-06-26T13:56:05+02:00","modified":"2020-06-26T13:56:05+02:00","data":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","fingerprint":"0e:ab:d4:46:0b:6e:b9:ca:34:50:23:de:e2:b7:78:c7:90:e5:4a:16:83:b9:65:9c:0a:57:ae:19:90:90:15:9b"}"#;
    const PASSPHRASE: &[u8] = b"correct horse battery staple";
    const FINGERPRINT: &str = "0e:ab:d4:46:0b:6e:b9:ca:34:50:23:de:e2:b7:78:c7:90:e5:4a:16:83:b9:65:9c:0a:57:ae:19:90:90:15:9b";

    fn test_key() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    fn test_salt() -> Vec<u8> {
        (0x80..0xa0).collect()
    }

    fn test_iv() -> [u8; IV_LEN] {
        std::array::from_fn(|i| 0xa0 + i as u8)
    }

    /// Writing with the documented parameters gives the independently computed bytes.
    #[test]
    fn written_bytes_match_an_independent_implementation() {
        let now = stamp("2020-06-26T13:56:05+02:00");
        for (kdf, expected) in [
            (
                Kdf::Scrypt {
                    n: SCRYPT_N,
                    r: SCRYPT_R,
                    p: SCRYPT_P,
                    salt: test_salt(),
                },
                SCRYPT_FILE,
            ),
            (
                Kdf::Pbkdf2 {
                    iter: PBKDF2_ITER,
                    salt: test_salt(),
                },
                PBKDF2_FILE,
            ),
        ] {
            let config = KeyConfig::encrypt_with(test_key(), PASSPHRASE, kdf, test_iv(), now)
                .unwrap()
                .with_hint("staple")
                .unwrap();
            assert_eq!(config.to_json(), expected);
            assert_eq!(KeyConfig::from_json(expected.as_bytes()).unwrap(), config);
        }
        let mut plain = KeyConfig::new_plain(test_key());
        plain.created = now;
        plain.modified = now;
        assert_eq!(plain.to_json(), PLAIN_FILE);
    }

    /// Reading the independently made files gives the key back (its fingerprint is the one the
    /// crypt module's own independent vector pins).
    #[test]
    fn independent_files_decrypt() {
        for (text, passphrase) in [
            (SCRYPT_FILE, Some(PASSPHRASE)),
            (PBKDF2_FILE, Some(PASSPHRASE)),
            (PLAIN_FILE, None),
        ] {
            let config = KeyConfig::from_json(text.as_bytes()).unwrap();
            let crypt = config.decrypt(passphrase).unwrap();
            assert_eq!(crypt.fingerprint().to_string(), FINGERPRINT);
            assert_eq!(
                crypt.fingerprint(),
                CryptConfig::new(test_key()).fingerprint()
            );
            assert_eq!(config.created().as_second(), 1_593_172_565);
        }
        let pbkdf2 = KeyConfig::from_json(PBKDF2_FILE.as_bytes()).unwrap();
        assert!(matches!(
            pbkdf2.decrypt(Some(b"correct horse battery stapler")),
            Err(Error::WrongPassphrase { hint: Some(h) }) if h == "staple"
        ));
    }

    #[test]
    fn debug_hides_the_key() {
        let config = KeyConfig::new_plain([0xab; 32]);
        let text = format!("{config:?}");
        assert!(!text.contains("q6ur") && !text.contains("171") && !text.contains("abab"));
        assert!(text.contains("fingerprint"));
    }
}
