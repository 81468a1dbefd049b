//! Group filters as PBS's sync, prune and verify jobs take them: `[include:|exclude:]type:vm`,
//! `group:vm/100`, `regex:^vm/1`.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use regex::Regex;

use crate::error::{Error, Result};
use crate::group::{BackupGroup, BackupType};

/// Longest regex source accepted, to bound the cost of compiling untrusted filters.
const MAX_REGEX_LENGTH: usize = 1024;

/// What a [`GroupFilter`] matches.
#[derive(Debug, Clone)]
pub enum FilterKind {
    /// Every group of this type.
    Type(BackupType),
    /// Exactly this group.
    Group(BackupGroup),
    /// Groups whose `<type>/<id>` contains a match of the regex (unanchored, as in PBS).
    Regex(Regex),
}

impl PartialEq for FilterKind {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (FilterKind::Type(a), FilterKind::Type(b)) => a == b,
            (FilterKind::Group(a), FilterKind::Group(b)) => a == b,
            (FilterKind::Regex(a), FilterKind::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for FilterKind {}

impl Hash for FilterKind {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            FilterKind::Type(t) => t.hash(state),
            FilterKind::Group(g) => g.hash(state),
            FilterKind::Regex(r) => r.as_str().hash(state),
        }
    }
}

/// One include or exclude filter over backup groups.
///
/// Text form: an optional `include:` or `exclude:` prefix (none means include), then `type:<vm|ct|host>`,
/// `group:<type>/<id>` or `regex:<regex>`. [`Display`](fmt::Display) never writes `include:`, so
/// `include:type:vm` prints as `type:vm`; parsing the printed form gives an equal filter.
///
/// A list of filters is applied with [`apply_filters`]: a group passes when it matches any include
/// filter (or there is none) and no exclude filter.
///
/// ```
/// use keepsake_hierarchy::{apply_filters, BackupGroup, GroupFilter};
///
/// let filters: Vec<GroupFilter> = ["type:vm", "exclude:regex:^vm/1\\d\\d$"]
///     .iter().map(|f| f.parse()).collect::<Result<_, _>>()?;
/// let vm100: BackupGroup = "vm/100".parse()?;
/// let vm2000: BackupGroup = "vm/2000".parse()?;
/// let ct1: BackupGroup = "ct/1".parse()?;
/// assert!(!apply_filters(&vm100, &filters));
/// assert!(apply_filters(&vm2000, &filters));
/// assert!(!apply_filters(&ct1, &filters));
/// # Ok::<(), keepsake_hierarchy::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupFilter {
    /// What the filter matches.
    pub kind: FilterKind,
    /// Whether a match excludes the group (instead of including it).
    pub exclude: bool,
}

impl GroupFilter {
    /// An include filter.
    pub fn include(kind: FilterKind) -> Self {
        Self {
            kind,
            exclude: false,
        }
    }

    /// An exclude filter.
    pub fn exclude(kind: FilterKind) -> Self {
        Self {
            kind,
            exclude: true,
        }
    }

    /// Whether the filter's pattern matches `group` (regardless of include/exclude).
    pub fn matches(&self, group: &BackupGroup) -> bool {
        match &self.kind {
            FilterKind::Type(ty) => group.ty() == *ty,
            FilterKind::Group(g) => group == g,
            FilterKind::Regex(re) => re.is_match(&group.to_string()),
        }
    }
}

/// PBS's filter semantics: included = no include filter, or any include filter matches; the group
/// passes if it is included and no exclude filter matches. The order of the filters does not matter.
pub fn apply_filters(group: &BackupGroup, filters: &[GroupFilter]) -> bool {
    let mut has_include = false;
    let mut included = false;
    for f in filters {
        if f.exclude {
            if f.matches(group) {
                return false;
            }
        } else {
            has_include = true;
            included = included || f.matches(group);
        }
    }
    included || !has_include
}

impl fmt::Display for GroupFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exclude {
            f.write_str("exclude:")?;
        }
        match &self.kind {
            FilterKind::Type(t) => write!(f, "type:{t}"),
            FilterKind::Group(g) => write!(f, "group:{g}"),
            FilterKind::Regex(r) => write!(f, "regex:{}", r.as_str()),
        }
    }
}

impl FromStr for GroupFilter {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidGroupFilter {
            input: s.to_owned(),
            reason,
        };
        let (exclude, rest) = if let Some(rest) = s.strip_prefix("exclude:") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("include:") {
            (false, rest)
        } else {
            (false, s)
        };
        let (prefix, value) = rest.split_once(':').ok_or_else(|| {
            invalid("expected type:<vm|ct|host>, group:<type>/<id> or regex:<regex>".to_owned())
        })?;
        let kind = match prefix {
            "type" => FilterKind::Type(value.parse().map_err(|e: Error| invalid(e.to_string()))?),
            "group" => FilterKind::Group(value.parse().map_err(|e: Error| invalid(e.to_string()))?),
            "regex" => {
                if value.len() > MAX_REGEX_LENGTH {
                    return Err(invalid(format!(
                        "regex longer than {MAX_REGEX_LENGTH} bytes"
                    )));
                }
                FilterKind::Regex(Regex::new(value).map_err(|e| invalid(e.to_string()))?)
            }
            other => {
                return Err(invalid(format!(
                    "unknown filter kind {other:?}: expected type, group or regex"
                )));
            }
        };
        Ok(Self { kind, exclude })
    }
}

crate::serde_via_str!(GroupFilter);

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(list: &[&str]) -> Vec<GroupFilter> {
        list.iter().map(|f| f.parse().unwrap()).collect()
    }

    fn check(list: &[&str], group: &str, expected: bool) {
        let g: BackupGroup = group.parse().unwrap();
        assert_eq!(
            apply_filters(&g, &filters(list)),
            expected,
            "{list:?} on {group}"
        );
        // Order does not matter.
        let mut rev = filters(list);
        rev.reverse();
        assert_eq!(
            apply_filters(&g, &rev),
            expected,
            "{list:?} reversed on {group}"
        );
    }

    #[test]
    fn semantics() {
        check(&[], "vm/1", true);
        check(&["type:vm"], "vm/1", true);
        check(&["type:vm"], "ct/1", false);
        check(&["exclude:type:vm"], "ct/1", true);
        check(&["exclude:type:vm"], "vm/1", false);
        check(&["type:ct", "group:vm/100"], "vm/100", true);
        check(&["type:ct", "group:vm/100"], "vm/1000", false);
        check(&["regex:10"], "vm/2100", true);
        check(&["regex:^vm/10$"], "vm/100", false);
        check(&["type:vm", "exclude:group:vm/100"], "vm/100", false);
        check(&["include:type:vm", "exclude:regex:^ct"], "vm/5", true);
    }

    #[test]
    fn text_forms() {
        for (input, printed) in [
            ("type:vm", "type:vm"),
            ("include:type:ct", "type:ct"),
            ("exclude:group:host/a.b", "exclude:group:host/a.b"),
            ("regex:^vm/(1|2):x$", "regex:^vm/(1|2):x$"),
            ("exclude:regex:", "exclude:regex:"),
        ] {
            let f: GroupFilter = input.parse().unwrap();
            assert_eq!(f.to_string(), printed);
            assert_eq!(printed.parse::<GroupFilter>().unwrap(), f);
        }
        for bad in [
            "",
            "vm",
            "typ:vm",
            "type:lxc",
            "group:vm",
            "group:vm/..",
            "regex:(",
            "include:exclude:type:vm",
            "exclude:",
        ] {
            assert!(
                matches!(
                    bad.parse::<GroupFilter>(),
                    Err(Error::InvalidGroupFilter { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(
            format!("regex:{}", "a".repeat(2000))
                .parse::<GroupFilter>()
                .is_err()
        );
    }
}
