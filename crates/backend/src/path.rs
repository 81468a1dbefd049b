//! [`BackendPath`]: the validated relative path every backend is addressed by.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The longest path accepted, in bytes: S3's key limit, so that every path also fits an object key
/// (the object backend checks the full key, prefix included, again).
pub const MAX_PATH_LEN: usize = 1024;

/// The longest component accepted, in bytes: the `NAME_MAX` of Linux filesystems.
pub const MAX_COMPONENT_LEN: usize = 255;

/// A relative path inside a datastore: `/`-separated components, or the root (no component).
///
/// Every value is valid by construction:
/// - components are non-empty UTF-8, at most [`MAX_COMPONENT_LEN`] bytes, never `.` or `..`,
///   and contain no `/`, no NUL and no control character;
/// - there is no leading or trailing `/` and no empty component;
/// - the whole path is at most [`MAX_PATH_LEN`] bytes.
///
/// So no `BackendPath` can leave the datastore by itself (the local backend also refuses symbolic
/// links on the way). Paths order component by component, so a folder sorts right before
/// everything inside it, and everything inside it sorts together.
///
/// ```
/// use keepsake_backend::BackendPath;
///
/// let group: BackendPath = "ns/a/vm/100".parse()?;
/// let owner = group.join("owner")?;
/// assert_eq!(owner.as_str(), "ns/a/vm/100/owner");
/// assert_eq!(owner.parent(), Some(group.clone()));
/// assert_eq!(owner.file_name(), Some("owner"));
/// assert!(owner.starts_with(&group));
/// assert!("vm/../etc".parse::<BackendPath>().is_err());
/// assert!("/vm/100".parse::<BackendPath>().is_err());
/// # Ok::<(), keepsake_backend::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct BackendPath {
    // Invariant: valid per the type docs; "" is the root.
    raw: String,
}

impl BackendPath {
    /// The root of the datastore (the empty path).
    pub fn root() -> Self {
        Self::default()
    }

    /// Parses and validates `path`; the empty string is the root.
    ///
    /// # Errors
    /// [`Error::RefusedPath`] naming the first rule the path breaks.
    pub fn new(path: &str) -> Result<Self> {
        check_path(path)?;
        Ok(Self {
            raw: path.to_owned(),
        })
    }

    /// Whether this is the root (no component).
    pub fn is_root(&self) -> bool {
        self.raw.is_empty()
    }

    /// The path as a `/`-separated string (empty for the root).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The components, first to last (none for the root).
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &str> + Clone {
        // `split` on "" would yield one empty component; the root has none.
        self.raw.split('/').filter(|c| !c.is_empty())
    }

    /// How many components the path has (0 for the root).
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// This path with one more component.
    ///
    /// # Errors
    /// [`Error::RefusedPath`] if `name` is not a single valid component or the result is too long.
    pub fn join(&self, name: &str) -> Result<Self> {
        check_component(name).map_err(|reason| Error::refused(name, reason))?;
        let raw = if self.is_root() {
            name.to_owned()
        } else {
            format!("{}/{}", self.raw, name)
        };
        if raw.len() > MAX_PATH_LEN {
            return Err(Error::refused(raw, "longer than 1024 bytes"));
        }
        Ok(Self { raw })
    }

    /// This path followed by every component of `rest`.
    ///
    /// # Errors
    /// [`Error::RefusedPath`] if the result is too long.
    pub fn join_path(&self, rest: &BackendPath) -> Result<Self> {
        if rest.is_root() {
            return Ok(self.clone());
        }
        if self.is_root() {
            return Ok(rest.clone());
        }
        let raw = format!("{}/{}", self.raw, rest.raw);
        if raw.len() > MAX_PATH_LEN {
            return Err(Error::refused(raw, "longer than 1024 bytes"));
        }
        Ok(Self { raw })
    }

    /// The folder this path is in; `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        if self.is_root() {
            return None;
        }
        Some(match self.raw.rfind('/') {
            Some(at) => Self {
                raw: self.raw[..at].to_owned(),
            },
            None => Self::root(),
        })
    }

    /// The last component; `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        self.components().next_back()
    }

    /// Whether `prefix` is this path or one of its ancestors (component-wise: `vm/100` is not a
    /// prefix of `vm/1000`). The root is a prefix of every path.
    pub fn starts_with(&self, prefix: &BackendPath) -> bool {
        prefix.is_root()
            || self.raw == prefix.raw
            || (self.raw.starts_with(&prefix.raw)
                && self.raw.as_bytes().get(prefix.raw.len()) == Some(&b'/'))
    }

    /// The rest of this path below `prefix`, if `prefix` is this path or one of its ancestors.
    pub fn strip_prefix(&self, prefix: &BackendPath) -> Option<Self> {
        if !self.starts_with(prefix) {
            return None;
        }
        let rest = if prefix.is_root() {
            &self.raw[..]
        } else if self.raw.len() == prefix.raw.len() {
            ""
        } else {
            &self.raw[prefix.raw.len() + 1..]
        };
        Some(Self {
            raw: rest.to_owned(),
        })
    }
}

/// Checks one path component; the reason is a static text for [`Error::RefusedPath`].
pub(crate) fn check_component(component: &str) -> std::result::Result<(), &'static str> {
    if component.is_empty() {
        return Err("empty component (leading, trailing or double `/`)");
    }
    if component == "." || component == ".." {
        return Err("`.` and `..` are not allowed");
    }
    if component.len() > MAX_COMPONENT_LEN {
        return Err("component longer than 255 bytes");
    }
    if component.contains('/') {
        return Err("a component cannot contain `/`");
    }
    // Control characters are C0 and DEL (single bytes) and C1 (U+0080..=U+009F, which UTF-8
    // writes as 0xC2 0x80..=0x9F): a byte scan, with `char` decoding only for non-ASCII names.
    let controls = if component.is_ascii() {
        component.bytes().any(|b| b.is_ascii_control())
    } else {
        component.chars().any(char::is_control)
    };
    if controls {
        return Err("NUL and control characters are not allowed");
    }
    Ok(())
}

impl FromStr for BackendPath {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<&str> for BackendPath {
    type Error = Error;

    fn try_from(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// As [`BackendPath::new`], keeping the string instead of copying it.
impl TryFrom<String> for BackendPath {
    type Error = Error;

    fn try_from(raw: String) -> Result<Self> {
        check_path(&raw)?;
        Ok(Self { raw })
    }
}

/// The rules of [`BackendPath::new`].
fn check_path(path: &str) -> Result<()> {
    if path.len() > MAX_PATH_LEN {
        return Err(Error::refused(path, "longer than 1024 bytes"));
    }
    if !path.is_empty() {
        for component in path.split('/') {
            check_component(component).map_err(|reason| Error::refused(path, reason))?;
        }
    }
    Ok(())
}

impl fmt::Display for BackendPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for BackendPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.raw, f)
    }
}

impl AsRef<str> for BackendPath {
    fn as_ref(&self) -> &str {
        &self.raw
    }
}

impl Ord for BackendPath {
    fn cmp(&self, other: &Self) -> Ordering {
        // Component-wise, so `a/b/c` sorts before `a/b.txt` (`b` < `b.txt`) and a folder's contents
        // stay together; plain byte order would put `a/b.txt` between `a/b` and `a/b/c`.
        self.components().cmp(other.components())
    }
}

impl PartialOrd for BackendPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Whether `name` is a temporary file of an atomic write that has not been renamed into place:
/// keepsake's own `.<name>.tmp_<hex>` (see [`LocalBackend`](crate::LocalBackend)) or PBS's
/// `<name>.tmp_XXXXXX` (its atomic replace, a `mkstemp` suffix). The one rule every caller uses
/// (fsck, recovery, copies): such files are never copied, and are removed only by whoever
/// knows their writer is gone.
///
/// ```
/// use keepsake_backend::is_temporary_name;
///
/// assert!(is_temporary_name(".owner.tmp_1f2e3d"));
/// assert!(is_temporary_name("index.json.blob.tmp_Ab12Cd"));
/// assert!(!is_temporary_name("index.json.blob"));
/// assert!(!is_temporary_name("a.tmp_"));
/// assert!(!is_temporary_name("drive.tmp_x.img.fidx"));
/// ```
pub fn is_temporary_name(name: &str) -> bool {
    match name.rfind(".tmp_") {
        Some(at) if at > 0 => {
            let suffix = &name[at + ".tmp_".len()..];
            !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_alphanumeric())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, ok: bool) {
        assert_eq!(BackendPath::new(input).is_ok(), ok, "{input:?}");
        assert_eq!(
            BackendPath::try_from(input.to_owned()).is_ok(),
            ok,
            "{input:?}"
        );
    }

    #[test]
    fn validation() {
        for good in [
            "",
            "vm",
            "vm/100/2024-06-05T15:06:40Z/index.json.blob",
            ".cnt",
            ".protected",
            "a b/ünïcödé",
            "...",
        ] {
            check(good, true);
        }
        for bad in [
            "/", "/vm", "vm/", "vm//100", ".", "..", "vm/./x", "vm/../x", "a\0b", "a\nb", "a\tb",
            "a\u{7f}b", "a\u{85}b",
        ] {
            check(bad, false);
        }
        check(&"x".repeat(255), true);
        check(&"x".repeat(256), false);
        let long = vec!["x".repeat(200); 5].join("/");
        check(&long, true);
        check(&format!("{long}/y"), true);
        let too_long = vec!["x".repeat(200); 6].join("/");
        check(&too_long, false);
    }

    #[test]
    fn navigation() {
        let root = BackendPath::root();
        assert!(root.is_root());
        assert_eq!(root.parent(), None);
        assert_eq!(root.file_name(), None);
        assert_eq!(root.depth(), 0);
        let vm = root.join("vm").unwrap();
        assert_eq!(vm.parent(), Some(root.clone()));
        let group = vm.join("100").unwrap();
        assert_eq!(group.as_str(), "vm/100");
        assert_eq!(group.depth(), 2);
        assert!(group.join("a/b").is_err());
        assert!(group.join("..").is_err());
        assert!(group.starts_with(&vm));
        assert!(group.starts_with(&group));
        assert!(group.starts_with(&root));
        let other: BackendPath = "vm/1000".parse().unwrap();
        assert!(!other.starts_with(&group));
        assert_eq!(other.strip_prefix(&group), None);
        assert_eq!(group.strip_prefix(&vm).unwrap().as_str(), "100");
        assert_eq!(group.strip_prefix(&group).unwrap(), root);
        assert_eq!(
            vm.join_path(&"100/x".parse().unwrap()).unwrap().as_str(),
            "vm/100/x"
        );
        assert_eq!(root.join_path(&group).unwrap(), group);
    }

    #[test]
    fn order_keeps_folders_together() {
        let mut paths: Vec<BackendPath> = ["a/b.txt", "a/b/c", "a/b", "a", "a-b", "a/b/c/d"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        paths.sort();
        let got: Vec<&str> = paths.iter().map(BackendPath::as_str).collect();
        assert_eq!(got, ["a", "a/b", "a/b/c", "a/b/c/d", "a/b.txt", "a-b"]);
    }
}
