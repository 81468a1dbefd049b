//! Reading manifest JSON straight into the typed model, remembering where in the document a
//! failure happened (`files[1].csum`), and keeping keys this version does not know.

use std::collections::HashSet;
use std::fmt;

use keepsake_hierarchy::{BackupId, BackupTime, BackupType};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{BackupManifest, CryptMode, FileInfo, check_archive_name};
use crate::error::{Error, Result};

/// One step of a path into the document.
enum Seg {
    Key(&'static str),
    Name(String),
    Index(usize),
}

/// Where the parser was when it failed; pushed on the way in, popped on the way out.
#[derive(Default)]
struct JsonPath(Vec<Seg>);

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if i == 0 => f.write_str(key)?,
                Seg::Name(key) if i == 0 => f.write_str(key)?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Name(key) => write!(f, ".{key}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

pub(super) fn parse(json: &[u8]) -> Result<BackupManifest> {
    let mut path = JsonPath::default();
    let mut de = serde_json::Deserializer::from_slice(json);
    let res = ManifestSeed { path: &mut path.0 }
        .deserialize(&mut de)
        .and_then(|manifest| de.end().map(|()| manifest));
    res.map_err(|e| Error::json(path.to_string(), e))
}

/// Reads the value of the current key with `key` on the path; `check` may refuse it while the path
/// still points at it.
fn field<'de, A, T, U>(
    map: &mut A,
    path: &mut Vec<Seg>,
    key: &'static str,
    slot: &Option<U>,
    check: impl FnOnce(T) -> Result<U, String>,
) -> Result<U, A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    if slot.is_some() {
        return Err(A::Error::duplicate_field(key));
    }
    path.push(Seg::Key(key));
    let value = check(map.next_value::<T>()?).map_err(A::Error::custom)?;
    path.pop();
    Ok(value)
}

fn unknown<'de, A: MapAccess<'de>>(
    map: &mut A,
    path: &mut Vec<Seg>,
    name: String,
    extra: &mut Map<String, Value>,
) -> Result<(), A::Error> {
    path.push(Seg::Name(name));
    let value = map.next_value::<Value>()?;
    let Some(Seg::Name(name)) = path.pop() else {
        unreachable!("pushed above")
    };
    extra.insert(name, value);
    Ok(())
}

/// A key of the manifest object; known ones without allocating.
enum TopKey {
    Type,
    Id,
    Time,
    Files,
    Unprotected,
    Signature,
    Other(String),
}

impl TopKey {
    fn from_str(key: &str) -> Option<Self> {
        Some(match key {
            "backup-type" => TopKey::Type,
            "backup-id" => TopKey::Id,
            "backup-time" => TopKey::Time,
            "files" => TopKey::Files,
            "unprotected" => TopKey::Unprotected,
            "signature" => TopKey::Signature,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for TopKey {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = TopKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a manifest key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TopKey, E> {
                Ok(TopKey::from_str(v).unwrap_or_else(|| TopKey::Other(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<TopKey, E> {
                Ok(TopKey::from_str(&v).unwrap_or(TopKey::Other(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

struct ManifestSeed<'p> {
    path: &'p mut Vec<Seg>,
}

impl<'de> DeserializeSeed<'de> for ManifestSeed<'_> {
    type Value = BackupManifest;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<BackupManifest, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ManifestSeed<'_> {
    type Value = BackupManifest;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a manifest object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BackupManifest, A::Error> {
        let path = self.path;
        let (mut ty, mut id, mut time, mut files, mut unprotected, mut signature) =
            (None, None, None, None, None, None);
        let mut extra = Map::new();
        while let Some(key) = map.next_key::<TopKey>()? {
            match key {
                TopKey::Type => {
                    ty = Some(field(
                        &mut map,
                        path,
                        "backup-type",
                        &ty,
                        Ok::<BackupType, _>,
                    )?)
                }
                TopKey::Id => {
                    id = Some(field(&mut map, path, "backup-id", &id, Ok::<BackupId, _>)?)
                }
                TopKey::Time => {
                    time = Some(field(
                        &mut map,
                        path,
                        "backup-time",
                        &time,
                        |epoch: i64| BackupTime::from_epoch(epoch).map_err(|e| e.to_string()),
                    )?);
                }
                TopKey::Files => {
                    if files.is_some() {
                        return Err(A::Error::duplicate_field("files"));
                    }
                    path.push(Seg::Key("files"));
                    files = Some(map.next_value_seed(FilesSeed { path: &mut *path })?);
                    path.pop();
                }
                TopKey::Unprotected => {
                    unprotected = Some(field(
                        &mut map,
                        path,
                        "unprotected",
                        &unprotected,
                        Ok::<Map<String, Value>, _>,
                    )?);
                }
                TopKey::Signature => {
                    signature = Some(field(
                        &mut map,
                        path,
                        "signature",
                        &signature,
                        Ok::<Option<String>, _>,
                    )?);
                }
                TopKey::Other(name) => unknown(&mut map, path, name, &mut extra)?,
            }
        }
        Ok(BackupManifest {
            backup_type: ty.ok_or_else(|| A::Error::missing_field("backup-type"))?,
            backup_id: id.ok_or_else(|| A::Error::missing_field("backup-id"))?,
            backup_time: time.ok_or_else(|| A::Error::missing_field("backup-time"))?,
            files: files.ok_or_else(|| A::Error::missing_field("files"))?,
            // Manifests older than PBS 0.8 have no `unprotected`.
            unprotected: unprotected.unwrap_or_default(),
            signature: signature.flatten(),
            extra,
        })
    }
}

struct FilesSeed<'p> {
    path: &'p mut Vec<Seg>,
}

impl<'de> DeserializeSeed<'de> for FilesSeed<'_> {
    type Value = Vec<FileInfo>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<FileInfo>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for FilesSeed<'_> {
    type Value = Vec<FileInfo>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of file entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<FileInfo>, A::Error> {
        let path = self.path;
        let mut files = Vec::new();
        loop {
            path.push(Seg::Index(files.len()));
            let Some(file) = seq.next_element_seed(FileSeed { path: &mut *path })? else {
                path.pop();
                break;
            };
            path.pop();
            files.push(file);
        }
        let mut seen = HashSet::with_capacity(files.len());
        for (i, file) in files.iter().enumerate() {
            if !seen.insert(file.filename.as_str()) {
                path.push(Seg::Index(i));
                path.push(Seg::Key("filename"));
                return Err(A::Error::custom(format_args!(
                    "{:?} is listed more than once",
                    file.filename
                )));
            }
        }
        Ok(files)
    }
}

enum FileKey {
    Filename,
    CryptMode,
    Size,
    Csum,
    Other(String),
}

impl FileKey {
    fn from_str(key: &str) -> Option<Self> {
        Some(match key {
            "filename" => FileKey::Filename,
            "crypt-mode" => FileKey::CryptMode,
            "size" => FileKey::Size,
            "csum" => FileKey::Csum,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for FileKey {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = FileKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a file entry key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FileKey, E> {
                Ok(FileKey::from_str(v).unwrap_or_else(|| FileKey::Other(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<FileKey, E> {
                Ok(FileKey::from_str(&v).unwrap_or(FileKey::Other(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// A checksum written as 64 hex digits.
struct Csum([u8; 32]);

impl<'de> Deserialize<'de> for Csum {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CsumVisitor;
        impl Visitor<'_> for CsumVisitor {
            type Value = Csum;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SHA-256 checksum as 64 hex digits")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Csum, E> {
                decode_hex32(v.as_bytes())
                    .map(Csum)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_str(CsumVisitor)
    }
}

/// Value of each ASCII hex digit (either case); 0xff for every other byte.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// 64 hex digits to 32 bytes. A table lookup per digit: the `hex` crate's decoder was the largest
/// single cost of parsing a manifest with many files.
fn decode_hex32(text: &[u8]) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        bad |= hi | lo;
        *byte = (hi << 4) | (lo & 0x0f);
    }
    // Valid digits are below 16; 0xff in any position sets the high bits.
    (bad < 16).then_some(out)
}

struct FileSeed<'p> {
    path: &'p mut Vec<Seg>,
}

impl<'de> DeserializeSeed<'de> for FileSeed<'_> {
    type Value = FileInfo;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<FileInfo, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FileSeed<'_> {
    type Value = FileInfo;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a file entry object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FileInfo, A::Error> {
        let path = self.path;
        let (mut filename, mut crypt_mode, mut size, mut csum) = (None, None, None, None);
        let mut extra = Map::new();
        while let Some(key) = map.next_key::<FileKey>()? {
            match key {
                FileKey::Filename => {
                    filename = Some(field(
                        &mut map,
                        path,
                        "filename",
                        &filename,
                        |name: String| {
                            check_archive_name(&name).map_err(|e| e.to_string())?;
                            Ok(name)
                        },
                    )?);
                }
                FileKey::CryptMode => {
                    crypt_mode = Some(field(
                        &mut map,
                        path,
                        "crypt-mode",
                        &crypt_mode,
                        Ok::<CryptMode, _>,
                    )?);
                }
                FileKey::Size => size = Some(field(&mut map, path, "size", &size, Ok::<u64, _>)?),
                FileKey::Csum => {
                    csum = Some(field(&mut map, path, "csum", &csum, |c: Csum| Ok(c.0))?)
                }
                FileKey::Other(name) => unknown(&mut map, path, name, &mut extra)?,
            }
        }
        Ok(FileInfo {
            filename: filename.ok_or_else(|| A::Error::missing_field("filename"))?,
            crypt_mode: crypt_mode.unwrap_or_default(),
            size: size.ok_or_else(|| A::Error::missing_field("size"))?,
            csum: csum.ok_or_else(|| A::Error::missing_field("csum"))?,
            extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::decode_hex32;

    #[test]
    fn hex32_agrees_with_the_hex_crate() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37 + 5) as u8);
        assert_eq!(decode_hex32(hex::encode(bytes).as_bytes()), Some(bytes));
        assert_eq!(
            decode_hex32(hex::encode_upper(bytes).as_bytes()),
            Some(bytes)
        );
        let good = hex::encode(bytes);
        for bad in ["", "0", &good[..63], &format!("{good}0")] {
            assert_eq!(decode_hex32(bad.as_bytes()), None, "{bad:?}");
        }
        for at in 0..64 {
            for c in [b'g', b'G', b' ', b':', 0xc3, b'/', b'@', b'`'] {
                let mut text = good.clone().into_bytes();
                text[at] = c;
                assert_eq!(decode_hex32(&text), None, "{at} {c}");
            }
        }
    }
}
