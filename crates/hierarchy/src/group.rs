//! Backup types, backup ids and backup groups (`vm/100`).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::namespace::BackupNamespace;
use crate::safe_id;

/// Longest backup id keepsake accepts, in bytes. PBS sets no limit in its schema, but a group is a
/// folder, and a folder name longer than `NAME_MAX` (255 on Linux) cannot be created.
pub const MAX_BACKUP_ID_LENGTH: usize = 255;

/// The kind of machine a group backs up: `vm`, `ct` or `host`.
///
/// Ordered as PBS sorts them: `ct` < `host` < `vm`. [`BackupType::ALL`] is PBS's iteration order.
///
/// ```
/// use keepsake_hierarchy::BackupType;
/// assert_eq!("vm".parse::<BackupType>()?, BackupType::Vm);
/// assert!(BackupType::Ct < BackupType::Host && BackupType::Host < BackupType::Vm);
/// # Ok::<(), keepsake_hierarchy::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackupType {
    /// A container (`ct`).
    Ct,
    /// A host, i.e. a file-level backup (`host`).
    Host,
    /// A virtual machine (`vm`).
    Vm,
}

impl BackupType {
    /// Every type, in PBS's iteration order (`vm`, `ct`, `host`).
    pub const ALL: [BackupType; 3] = [BackupType::Vm, BackupType::Ct, BackupType::Host];

    /// The folder name: `vm`, `ct` or `host`.
    pub const fn as_str(self) -> &'static str {
        match self {
            BackupType::Vm => "vm",
            BackupType::Ct => "ct",
            BackupType::Host => "host",
        }
    }
}

impl fmt::Display for BackupType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackupType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vm" => Ok(BackupType::Vm),
            "ct" => Ok(BackupType::Ct),
            "host" => Ok(BackupType::Host),
            _ => Err(Error::InvalidBackupType {
                input: s.to_owned(),
            }),
        }
    }
}

crate::serde_via_str!(BackupType);

/// A backup id: the second half of a group (`100` in `vm/100`), a safe id of at most
/// [`MAX_BACKUP_ID_LENGTH`] bytes.
///
/// Ordered as PBS orders groups: ids that are both `u64` numbers compare numerically, a numeric id
/// sorts before a non-numeric one, and the rest compare byte-wise. Unlike PBS, numerically equal ids
/// with different spellings (`0100`, `100`) fall back to the byte-wise order, so that the order agrees
/// with equality.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BackupId(String);

impl BackupId {
    /// Checks and wraps an id.
    pub fn new(id: &str) -> Result<Self> {
        if id.len() > MAX_BACKUP_ID_LENGTH {
            return Err(Error::InvalidBackupId {
                input: id.to_owned(),
                reason: "longer than 255 bytes",
            });
        }
        if let Some(reason) = safe_id::problem(id) {
            return Err(Error::InvalidBackupId {
                input: id.to_owned(),
                reason,
            });
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for BackupId {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.0.parse::<u64>(), other.0.parse::<u64>()) {
            (Ok(a), Ok(b)) => a.cmp(&b).then_with(|| self.0.cmp(&other.0)),
            (Ok(_), Err(_)) => Ordering::Less,
            (Err(_), Ok(_)) => Ordering::Greater,
            (Err(_), Err(_)) => self.0.cmp(&other.0),
        }
    }
}

impl PartialOrd for BackupId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupId({:?})", self.0)
    }
}

impl FromStr for BackupId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl AsRef<str> for BackupId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

crate::serde_via_str!(BackupId);

/// A backup group (backup series): a type and an id, `vm/100`.
///
/// Ordered by type (`ct` < `host` < `vm`), then by id (see [`BackupId`]).
///
/// ```
/// use keepsake_hierarchy::{BackupGroup, BackupNamespace, BackupType};
///
/// let group: BackupGroup = "vm/100".parse()?;
/// assert_eq!(group.ty(), BackupType::Vm);
/// assert_eq!(group.id().as_str(), "100");
/// let ns: BackupNamespace = "prod".parse()?;
/// assert_eq!(group.relative_path(&ns), "ns/prod/vm/100");
/// let mut groups: Vec<BackupGroup> = ["vm/abc", "vm/20", "ct/300", "vm/3"]
///     .iter().map(|g| g.parse()).collect::<Result<_, _>>()?;
/// groups.sort();
/// let sorted: Vec<String> = groups.iter().map(ToString::to_string).collect();
/// assert_eq!(sorted, ["ct/300", "vm/3", "vm/20", "vm/abc"]);
/// # Ok::<(), keepsake_hierarchy::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupGroup {
    ty: BackupType,
    id: BackupId,
}

impl BackupGroup {
    /// A group from a type and an unchecked id.
    pub fn new(ty: BackupType, id: &str) -> Result<Self> {
        Ok(Self {
            ty,
            id: BackupId::new(id)?,
        })
    }

    /// A group from already checked parts.
    pub fn from_parts(ty: BackupType, id: BackupId) -> Self {
        Self { ty, id }
    }

    /// The backup type.
    pub fn ty(&self) -> BackupType {
        self.ty
    }

    /// The backup id.
    pub fn id(&self) -> &BackupId {
        &self.id
    }

    /// Path of the group folder relative to the datastore root: `[<ns path>/]<type>/<id>`.
    pub fn relative_path(&self, ns: &BackupNamespace) -> String {
        let mut out = String::with_capacity(self.path_len(ns));
        self.push_path(ns, &mut out);
        out
    }

    /// Path of a file directly in the group folder (`owner`, `notes`), relative to the datastore root.
    pub fn file_path(&self, ns: &BackupNamespace, file_name: &str) -> Result<String> {
        crate::archive::check_file_name(file_name)?;
        let mut out = String::with_capacity(self.path_len(ns) + 1 + file_name.len());
        self.push_path(ns, &mut out);
        out.push('/');
        out.push_str(file_name);
        Ok(out)
    }

    /// Appends [`BackupGroup::relative_path`] to `out`.
    pub(crate) fn push_path(&self, ns: &BackupNamespace, out: &mut String) {
        ns.push_path_prefix(out);
        out.push_str(self.ty.as_str());
        out.push('/');
        out.push_str(self.id.as_str());
    }

    /// How many bytes [`BackupGroup::push_path`] appends.
    pub(crate) fn path_len(&self, ns: &BackupNamespace) -> usize {
        ns.path_prefix_len() + self.ty.as_str().len() + 1 + self.id.as_str().len()
    }
}

impl fmt::Display for BackupGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ty, self.id)
    }
}

impl fmt::Debug for BackupGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupGroup({:?})", self.to_string())
    }
}

impl FromStr for BackupGroup {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidGroup {
            input: s.to_owned(),
            reason,
        };
        let (ty, id) = s
            .split_once('/')
            .ok_or_else(|| invalid("expected <type>/<id>"))?;
        let ty = ty
            .parse()
            .map_err(|_| invalid("type must be vm, ct or host"))?;
        let id = BackupId::new(id).map_err(|e| match e {
            Error::InvalidBackupId { reason, .. } => invalid(reason),
            _ => invalid("invalid id"),
        })?;
        Ok(Self { ty, id })
    }
}

crate::serde_via_str!(BackupGroup);

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> BackupGroup {
        s.parse().unwrap()
    }

    #[test]
    fn ordering_is_pbs_like_and_agrees_with_eq() {
        let mut v = [
            g("vm/b"),
            g("vm/100"),
            g("vm/20"),
            g("host/x"),
            g("ct/1"),
            g("vm/0100"),
            g("vm/a"),
            g("vm/18446744073709551616"),
        ];
        v.sort();
        let s: Vec<String> = v.iter().map(ToString::to_string).collect();
        // 2^64 does not parse as u64, so it sorts as text after the numbers.
        assert_eq!(
            s,
            [
                "ct/1",
                "host/x",
                "vm/20",
                "vm/0100",
                "vm/100",
                "vm/18446744073709551616",
                "vm/a",
                "vm/b"
            ]
        );
        assert_ne!(g("vm/0100").cmp(&g("vm/100")), Ordering::Equal);
    }

    #[test]
    fn parse_errors_are_typed() {
        for bad in [
            "", "vm", "vm/", "xx/1", "vm/1/2", "vm/..", "vm/.a", "/vm/1", "VM/1", "vm/a b",
        ] {
            assert!(
                matches!(bad.parse::<BackupGroup>(), Err(Error::InvalidGroup { .. })),
                "{bad:?}"
            );
        }
        assert!(BackupGroup::new(BackupType::Vm, &"x".repeat(255)).is_ok());
        assert!(matches!(
            BackupGroup::new(BackupType::Vm, &"x".repeat(256)),
            Err(Error::InvalidBackupId { .. })
        ));
        assert!(matches!(
            "lxc".parse::<BackupType>(),
            Err(Error::InvalidBackupType { .. })
        ));
    }

    #[test]
    fn paths() {
        let ns = BackupNamespace::new("a/b").unwrap();
        assert_eq!(g("ct/200").relative_path(&ns), "ns/a/ns/b/ct/200");
        assert_eq!(
            g("ct/200").relative_path(&BackupNamespace::root()),
            "ct/200"
        );
        assert_eq!(
            g("ct/200").file_path(&ns, "owner").unwrap(),
            "ns/a/ns/b/ct/200/owner"
        );
        assert!(g("ct/200").file_path(&ns, "../x").is_err());
    }
}
