//! Writing manifests as PBS does: every object's keys sorted by bytes, serde_json's pretty printer
//! (two-space indent, no trailing newline) or its compact one for canonical JSON.
//!
//! PBS gets sorted keys for free because its `serde_json::Map` is a `BTreeMap`. keepsake sorts
//! explicitly instead, so the output stays the same even if another crate in a build turns on
//! serde_json's `preserve_order` feature.

use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use super::{BackupManifest, FileInfo};
use crate::error::{Error, Result};

/// Which form to write.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Form {
    /// Everything, for the stored manifest.
    Full,
    /// Without `unprotected` and `signature`, nulls refused: what the signature covers.
    Signed,
}

pub(super) fn pretty(manifest: &BackupManifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + manifest.files.len() * 192);
    let view = ManifestView {
        manifest,
        form: Form::Full,
    };
    serde_json::to_writer_pretty(&mut out, &view)
        .unwrap_or_else(|_| unreachable!("JSON values and strings always serialise"));
    out
}

pub(super) fn canonical(manifest: &BackupManifest) -> Result<Vec<u8>> {
    for (key, value) in &manifest.extra {
        check_no_null(value, &mut key.clone())?;
    }
    for (i, file) in manifest.files.iter().enumerate() {
        for (key, value) in &file.extra {
            check_no_null(value, &mut format!("files[{i}].{key}"))?;
        }
    }
    let mut out = Vec::with_capacity(256 + manifest.files.len() * 160);
    let view = ManifestView {
        manifest,
        form: Form::Signed,
    };
    serde_json::to_writer(&mut out, &view).map_err(|e| Error::json(".", e))?;
    Ok(out)
}

fn check_no_null(value: &Value, path: &mut String) -> Result<()> {
    match value {
        Value::Null => Err(Error::NullInSignedContent { path: path.clone() }),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                check_no_null(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = path.len();
                path.push('.');
                path.push_str(key);
                check_no_null(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// One member of an object being written, before sorting.
enum Member<'a> {
    Str(&'a str),
    Int(i64),
    Files(&'a [FileInfo]),
    Signature(Option<&'a str>),
    Map(&'a Map<String, Value>),
    Value(&'a Value),
    Csum(&'a [u8; 32]),
    Size(u64),
}

impl Serialize for Member<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Member::Str(text) => s.serialize_str(text),
            Member::Int(n) => s.serialize_i64(*n),
            Member::Size(n) => s.serialize_u64(*n),
            Member::Files(files) => {
                let mut seq = s.serialize_seq(Some(files.len()))?;
                for file in *files {
                    seq.serialize_element(&FileView(file))?;
                }
                seq.end()
            }
            Member::Signature(sig) => match sig {
                Some(text) => s.serialize_str(text),
                None => s.serialize_unit(),
            },
            Member::Map(map) => serialize_sorted_map(map, s),
            Member::Value(value) => Sorted(value).serialize(s),
            Member::Csum(csum) => {
                let mut text = [0u8; 64];
                hex::encode_to_slice(csum, &mut text)
                    .unwrap_or_else(|_| unreachable!("64 hex digits for 32 bytes"));
                s.serialize_str(std::str::from_utf8(&text).map_err(S::Error::custom)?)
            }
        }
    }
}

fn serialize_members<S: Serializer>(
    mut members: Vec<(&str, Member<'_>)>,
    s: S,
) -> Result<S::Ok, S::Error> {
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut map = s.serialize_map(Some(members.len()))?;
    for (key, value) in &members {
        map.serialize_entry(key, value)?;
    }
    map.end()
}

struct ManifestView<'a> {
    manifest: &'a BackupManifest,
    form: Form,
}

impl Serialize for ManifestView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.manifest;
        let mut members = Vec::with_capacity(6 + m.extra.len());
        members.push(("backup-type", Member::Str(m.backup_type.as_str())));
        members.push(("backup-id", Member::Str(m.backup_id.as_str())));
        members.push(("backup-time", Member::Int(m.backup_time.epoch())));
        members.push(("files", Member::Files(&m.files)));
        if self.form == Form::Full {
            members.push(("signature", Member::Signature(m.signature.as_deref())));
            members.push(("unprotected", Member::Map(&m.unprotected)));
        }
        for (key, value) in &m.extra {
            members.push((key.as_str(), Member::Value(value)));
        }
        serialize_members(members, s)
    }
}

struct FileView<'a>(&'a FileInfo);

impl Serialize for FileView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        let mut members = Vec::with_capacity(4 + f.extra.len());
        members.push(("crypt-mode", Member::Str(f.crypt_mode.as_str())));
        members.push(("csum", Member::Csum(&f.csum)));
        members.push(("filename", Member::Str(&f.filename)));
        members.push(("size", Member::Size(f.size)));
        for (key, value) in &f.extra {
            members.push((key.as_str(), Member::Value(value)));
        }
        serialize_members(members, s)
    }
}

/// A JSON value written with every object's keys in byte order.
struct Sorted<'a>(&'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Sorted(item))?;
                }
                seq.end()
            }
            Value::Object(map) => serialize_sorted_map(map, s),
            scalar => scalar.serialize(s),
        }
    }
}

fn serialize_sorted_map<S: Serializer>(map: &Map<String, Value>, s: S) -> Result<S::Ok, S::Error> {
    let mut out = s.serialize_map(Some(map.len()))?;
    // A BTreeMap-backed map (serde_json's default) is already in order; only sort when it is not.
    if map.keys().is_sorted() {
        for (key, value) in map {
            out.serialize_entry(key, &Sorted(value))?;
        }
    } else {
        let mut entries: Vec<_> = map.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (key, value) in entries {
            out.serialize_entry(key, &Sorted(value))?;
        }
    }
    out.end()
}
