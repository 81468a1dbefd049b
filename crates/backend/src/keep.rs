//! [`KeepFilter`]: what a tree removal leaves in place.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use crate::path::BackendPath;

/// PBS's protection marker: a snapshot folder holding this file is protected.
pub const PROTECTED_MARKER: &str = ".protected";
/// The files of a group that stay while one of its snapshots is protected.
pub const PROTECTED_GROUP_FILES: [&str; 2] = ["owner", "notes"];

type Predicate = Arc<dyn Fn(&BackendPath) -> bool + Send + Sync>;

/// Decides which files [`Backend::remove_tree`](crate::Backend::remove_tree) keeps.
///
/// A filter is a set of rules; a file is kept if any rule keeps it:
/// - a **marker** rule: every folder that holds a file named `marker` is kept whole, and so are the
///   named files next to that folder (in its parent);
/// - a **predicate**: a function of the file's full path.
///
/// [`KeepFilter::protected_snapshots`] is PBS's delete-by-prefix rule: snapshots holding
/// `.protected` survive, together with their group's `owner` and `notes`. Markers are matched by
/// exact file name (PBS matches the key suffix, so a file `x.protected` would also protect `x*`;
/// keepsake does not copy that).
///
/// ```
/// use keepsake_backend::{BackendPath, KeepFilter};
///
/// let files: Vec<BackendPath> = [
///     "vm/100/owner",
///     "vm/100/notes",
///     "vm/100/2024-01-01T00:00:00Z/index.json.blob",
///     "vm/100/2024-01-01T00:00:00Z/.protected",
///     "vm/100/2024-01-02T00:00:00Z/index.json.blob",
///     "vm/101/owner",
/// ]
/// .iter()
/// .map(|p| p.parse().unwrap())
/// .collect();
/// let plan = KeepFilter::protected_snapshots().plan(&files);
/// let kept: Vec<&str> = files.iter().filter(|f| plan.keeps(f)).map(|f| f.as_str()).collect();
/// assert_eq!(
///     kept,
///     [
///         "vm/100/owner",
///         "vm/100/notes",
///         "vm/100/2024-01-01T00:00:00Z/index.json.blob",
///         "vm/100/2024-01-01T00:00:00Z/.protected",
///     ]
/// );
/// ```
#[derive(Clone, Default)]
pub struct KeepFilter {
    markers: Vec<MarkerRule>,
    predicates: Vec<Predicate>,
}

#[derive(Clone, Debug)]
struct MarkerRule {
    marker: String,
    parent_files: Vec<String>,
}

impl KeepFilter {
    /// Keeps nothing: the whole tree goes.
    pub fn nothing() -> Self {
        Self::default()
    }

    /// PBS's rule: keep every snapshot folder holding `.protected`, and its group's `owner` and
    /// `notes`.
    pub fn protected_snapshots() -> Self {
        Self::nothing().or_marker(PROTECTED_MARKER, &PROTECTED_GROUP_FILES)
    }

    /// Adds a marker rule: folders holding a file named `marker` are kept whole, and so are the
    /// files named `parent_files` in the parent of such a folder.
    pub fn or_marker(mut self, marker: &str, parent_files: &[&str]) -> Self {
        self.markers.push(MarkerRule {
            marker: marker.to_owned(),
            parent_files: parent_files.iter().map(|&f| f.to_owned()).collect(),
        });
        self
    }

    /// Adds a predicate: files for which it returns `true` are kept.
    pub fn or_predicate(
        mut self,
        keep: impl Fn(&BackendPath) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.predicates.push(Arc::new(keep));
        self
    }

    /// Whether this filter keeps nothing whatever the files are.
    pub fn keeps_nothing(&self) -> bool {
        self.markers.is_empty() && self.predicates.is_empty()
    }

    /// Decides for a whole set of files at once (markers need to see every file first).
    pub fn plan<'a>(&self, files: impl IntoIterator<Item = &'a BackendPath>) -> KeepPlan {
        let mut kept_folders = HashSet::new();
        let mut kept_files = HashSet::new();
        if !self.markers.is_empty() {
            for file in files {
                let Some(name) = file.file_name() else {
                    continue;
                };
                for rule in self.markers.iter().filter(|r| r.marker == name) {
                    let Some(folder) = file.parent() else {
                        continue;
                    };
                    if let Some(parent) = folder.parent() {
                        for extra in &rule.parent_files {
                            if let Ok(path) = parent.join(extra) {
                                kept_files.insert(path);
                            }
                        }
                    }
                    kept_folders.insert(folder);
                }
            }
        }
        KeepPlan {
            kept_folders,
            kept_files,
            predicates: self.predicates.clone(),
        }
    }
}

impl fmt::Debug for KeepFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeepFilter")
            .field("markers", &self.markers)
            .field("predicates", &self.predicates.len())
            .finish()
    }
}

/// A [`KeepFilter`] applied to a known set of files: answers "is this file kept?".
#[derive(Clone)]
pub struct KeepPlan {
    kept_folders: HashSet<BackendPath>,
    kept_files: HashSet<BackendPath>,
    predicates: Vec<Predicate>,
}

impl KeepPlan {
    /// Whether `file` stays.
    pub fn keeps(&self, file: &BackendPath) -> bool {
        if self.kept_files.contains(file) || self.predicates.iter().any(|p| p(file)) {
            return true;
        }
        if self.kept_folders.is_empty() {
            return false;
        }
        let mut folder = file.parent();
        while let Some(f) = folder {
            if self.kept_folders.contains(&f) {
                return true;
            }
            folder = f.parent();
        }
        false
    }
}

impl fmt::Debug for KeepPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeepPlan")
            .field("kept_folders", &self.kept_folders)
            .field("kept_files", &self.kept_files)
            .field("predicates", &self.predicates.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(list: &[&str]) -> Vec<BackendPath> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    fn kept(filter: &KeepFilter, files: &[&str]) -> Vec<String> {
        let files = paths(files);
        let plan = filter.plan(&files);
        files
            .iter()
            .filter(|f| plan.keeps(f))
            .map(|f| f.to_string())
            .collect()
    }

    #[test]
    fn nothing_keeps_nothing() {
        assert!(KeepFilter::nothing().keeps_nothing());
        assert!(kept(&KeepFilter::nothing(), &["a/.protected", "a/b"]).is_empty());
    }

    #[test]
    fn protection_keeps_snapshot_and_group_files_only() {
        let files = [
            "ns/a/vm/100/owner",
            "ns/a/vm/100/notes",
            "ns/a/vm/100/other",
            "ns/a/vm/100/T1/.protected",
            "ns/a/vm/100/T1/sub/deep.blob",
            "ns/a/vm/100/T2/index.json.blob",
            "ns/a/vm/1000/owner",
            "ns/a/vm/101/T1/x.protected",
        ];
        assert_eq!(
            kept(&KeepFilter::protected_snapshots(), &files),
            [
                "ns/a/vm/100/owner",
                "ns/a/vm/100/notes",
                "ns/a/vm/100/T1/.protected",
                "ns/a/vm/100/T1/sub/deep.blob"
            ]
        );
    }

    #[test]
    fn marker_at_top_level_keeps_its_folder() {
        assert_eq!(
            kept(&KeepFilter::protected_snapshots(), &[".protected", "x"]),
            [".protected", "x"]
        );
    }

    #[test]
    fn predicates_combine_with_markers() {
        let filter =
            KeepFilter::protected_snapshots().or_predicate(|p| p.as_str().ends_with(".log"));
        assert!(!filter.keeps_nothing());
        assert_eq!(
            kept(&filter, &["a/x.log", "a/y", "b/.protected"]),
            ["a/x.log", "b/.protected"]
        );
    }
}
