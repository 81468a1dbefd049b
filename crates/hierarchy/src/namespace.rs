//! Backup namespaces: nested folders of groups, `ns/a/ns/b` on disk, `a/b` by name.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::safe_id;

/// Deepest namespace: the root is depth 0, so a namespace has at most 7 components.
pub const MAX_NAMESPACE_DEPTH: usize = 7;

/// Longest joined name (`a/b/…`) of a namespace, in bytes. Because PBS counts a separator even before
/// the first component, a single component may be at most 255 bytes.
pub const MAX_NAMESPACE_LENGTH: usize = 256;

/// Name of the folder that holds the child namespaces of a namespace.
pub const NAMESPACE_DIR_NAME: &str = "ns";

/// A backup namespace: a list of at most [`MAX_NAMESPACE_DEPTH`] safe-id components.
///
/// The root namespace has no components. The *name* form joins the components with `/` (`a/b`, root =
/// `""`); the *path* form, used on disk and in object keys, prefixes each with `ns/` (`ns/a/ns/b`).
/// [`Display`](fmt::Display) and [`FromStr`] use the name form and round-trip; serde uses it too.
///
/// A value is always valid: every component is a safe id, the depth and joined length are within
/// PBS's limits, so a path built from it never leaves the datastore.
///
/// ```
/// use keepsake_hierarchy::BackupNamespace;
///
/// let ns: BackupNamespace = "prod/site-a".parse()?;
/// assert_eq!(ns.depth(), 2);
/// assert_eq!(ns.path(), "ns/prod/ns/site-a");
/// assert_eq!(BackupNamespace::from_path("ns/prod/ns/site-a")?, ns);
/// assert_eq!(ns.parent().unwrap().to_string(), "prod");
/// assert!("../etc".parse::<BackupNamespace>().is_err());
/// # Ok::<(), keepsake_hierarchy::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupNamespace {
    components: Vec<String>,
    /// Length of the joined name, kept to check the length limit in O(1).
    name_len: usize,
}

impl BackupNamespace {
    /// The root namespace (depth 0).
    pub const fn root() -> Self {
        Self {
            components: Vec::new(),
            name_len: 0,
        }
    }

    /// Parses the name form `a/b/c`; `""` is the root.
    pub fn new(name: &str) -> Result<Self> {
        let mut ns = Self::root();
        if name.is_empty() {
            return Ok(ns);
        }
        for component in name.split('/') {
            ns.push(component)?;
        }
        Ok(ns)
    }

    /// Builds a namespace from its components, checking each as [`child`](Self::child) does.
    pub fn from_components<I, S>(components: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut ns = Self::root();
        for c in components {
            ns.push(c.as_ref())?;
        }
        Ok(ns)
    }

    /// Parses the path form `ns/a/ns/b` (a trailing `/` is accepted); `""` is the root.
    pub fn from_path(path: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidNamespacePath {
            path: path.to_owned(),
            reason,
        };
        let mut ns = Self::root();
        let mut rest = path;
        while !rest.is_empty() {
            rest = rest
                .strip_prefix("ns/")
                .ok_or_else(|| invalid("expected 'ns/' before each component"))?;
            let (component, after) = rest.split_once('/').unwrap_or((rest, ""));
            if component.is_empty() {
                return Err(invalid("empty component"));
            }
            ns.push(component)?;
            rest = after;
        }
        Ok(ns)
    }

    /// Appends one component, checking in PBS's order: no slash, depth, length, safe-id grammar.
    fn push(&mut self, component: &str) -> Result<()> {
        if component.contains('/') {
            return Err(Error::InvalidNamespaceComponent {
                component: component.to_owned(),
                reason: "must not contain '/'",
            });
        }
        if self.components.len() >= MAX_NAMESPACE_DEPTH {
            return Err(Error::NamespaceTooDeep {
                namespace: format!("{self}/{component}"),
            });
        }
        if self.name_len + component.len() + 1 > MAX_NAMESPACE_LENGTH {
            return Err(Error::NamespaceTooLong {
                namespace: self.joined_with(component),
            });
        }
        if let Some(reason) = safe_id::problem(component) {
            return Err(Error::InvalidNamespaceComponent {
                component: component.to_owned(),
                reason,
            });
        }
        self.name_len += component.len() + usize::from(!self.components.is_empty());
        self.components.push(component.to_owned());
        Ok(())
    }

    fn joined_with(&self, component: &str) -> String {
        if self.is_root() {
            component.to_owned()
        } else {
            format!("{self}/{component}")
        }
    }

    /// The namespace one level below this one.
    pub fn child(&self, component: &str) -> Result<Self> {
        let mut child = self.clone();
        child.push(component)?;
        Ok(child)
    }

    /// The namespace one level up, or `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        let mut parent = self.clone();
        let last = parent.components.pop()?;
        parent.name_len -= last.len() + usize::from(!parent.components.is_empty());
        Some(parent)
    }

    /// This namespace, then its parent, and so on up to and including the root (like
    /// [`std::path::Path::ancestors`]).
    pub fn ancestors(&self) -> impl Iterator<Item = BackupNamespace> + '_ {
        (0..=self.depth())
            .rev()
            .map(move |depth| self.truncated(depth))
    }

    /// The ancestor at `depth` (the namespace itself when `depth >= self.depth()`).
    pub fn truncated(&self, depth: usize) -> Self {
        let components: Vec<String> = self.components.iter().take(depth).cloned().collect();
        let name_len =
            components.iter().map(String::len).sum::<usize>() + components.len().saturating_sub(1);
        Self {
            components,
            name_len,
        }
    }

    /// Whether `self` is `other` or one of its ancestors.
    pub fn contains(&self, other: &BackupNamespace) -> bool {
        other.components.starts_with(&self.components)
    }

    /// Number of components; the root is 0.
    pub fn depth(&self) -> usize {
        self.components.len()
    }

    /// Whether this is the root namespace.
    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The components, outermost first.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// The name form `a/b` (`""` for the root); same as `to_string()`.
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// The relative path form `ns/a/ns/b` (`""` for the root), without a trailing `/`.
    pub fn path(&self) -> String {
        let mut path = String::with_capacity(self.path_prefix_len());
        self.push_path_prefix(&mut path);
        // The prefix ends with the `/` before what lies in the namespace (none for the root).
        path.pop();
        path
    }

    /// Appends the relative path form and, unless this is the root, a `/`: the start of the path
    /// of anything in the namespace, built into one string.
    pub(crate) fn push_path_prefix(&self, out: &mut String) {
        for c in &self.components {
            out.push_str(NAMESPACE_DIR_NAME);
            out.push('/');
            out.push_str(c);
            out.push('/');
        }
    }

    /// Room for what [`BackupNamespace::push_path_prefix`] appends (a few bytes more when nested).
    pub(crate) fn path_prefix_len(&self) -> usize {
        self.name_len + (NAMESPACE_DIR_NAME.len() + 2) * self.depth()
    }
}

impl fmt::Display for BackupNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.components.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            f.write_str(c)?;
        }
        Ok(())
    }
}

impl fmt::Debug for BackupNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupNamespace({:?})", self.to_string())
    }
}

impl FromStr for BackupNamespace {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

crate::serde_via_str!(BackupNamespace);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_simple_forms() {
        let root = BackupNamespace::root();
        assert!(root.is_root());
        assert_eq!(root.path(), "");
        assert_eq!(root.to_string(), "");
        assert_eq!(BackupNamespace::new("").unwrap(), root);
        assert_eq!(BackupNamespace::from_path("").unwrap(), root);
        assert_eq!(root.parent(), None);
        assert_eq!(root.ancestors().collect::<Vec<_>>(), vec![root.clone()]);

        let ns = BackupNamespace::new("a/b/c").unwrap();
        assert_eq!(ns.path(), "ns/a/ns/b/ns/c");
        assert_eq!(BackupNamespace::from_path("ns/a/ns/b/ns/c/").unwrap(), ns);
        let names: Vec<String> = ns.ancestors().map(|a| a.to_string()).collect();
        assert_eq!(names, ["a/b/c", "a/b", "a", ""]);
        assert!(BackupNamespace::new("a").unwrap().contains(&ns));
        assert!(root.contains(&ns));
        assert!(!ns.contains(&BackupNamespace::new("a").unwrap()));
        assert_eq!(ns.child("d").unwrap().to_string(), "a/b/c/d");
    }

    #[test]
    fn limits() {
        let seven = "a/b/c/d/e/f/g";
        let ns = BackupNamespace::new(seven).unwrap();
        assert_eq!(ns.depth(), 7);
        assert!(matches!(ns.child("h"), Err(Error::NamespaceTooDeep { .. })));
        assert!(matches!(
            BackupNamespace::new(&format!("{seven}/h")),
            Err(Error::NamespaceTooDeep { .. })
        ));
        let c255 = "x".repeat(255);
        assert!(BackupNamespace::new(&c255).is_ok());
        assert!(matches!(
            BackupNamespace::new(&"x".repeat(256)),
            Err(Error::NamespaceTooLong { .. })
        ));
        // joined name of exactly 256 bytes is fine: 127 + 1 + 128.
        let ok = format!("{}/{}", "x".repeat(127), "y".repeat(128));
        assert_eq!(BackupNamespace::new(&ok).unwrap().name_len, 256);
        let too_long = format!("{}/{}", "x".repeat(127), "y".repeat(129));
        assert!(matches!(
            BackupNamespace::new(&too_long),
            Err(Error::NamespaceTooLong { .. })
        ));
    }

    #[test]
    fn parent_keeps_length_bookkeeping() {
        let ns = BackupNamespace::new("aa/bbb/c").unwrap();
        let p = ns.parent().unwrap();
        assert_eq!(p, BackupNamespace::new("aa/bbb").unwrap());
        assert_eq!(p.name_len, 6);
        assert_eq!(ns.truncated(1).name_len, 2);
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "..", ".", "a/..", "a//b", "/a", "a/", "a\0b", "a b", "-x", "ä",
        ] {
            let err = BackupNamespace::new(bad);
            assert!(err.is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            BackupNamespace::new("a/../b"),
            Err(Error::InvalidNamespaceComponent { .. })
        ));
        for bad in [
            "a",
            "ns",
            "ns/",
            "ns//",
            "ns/a/b",
            "ns/../x",
            "x/ns/a",
            "ns/a//ns/b",
        ] {
            assert!(BackupNamespace::from_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            BackupNamespace::from_components(["a/b"]),
            Err(Error::InvalidNamespaceComponent { .. })
        ));
    }
}
