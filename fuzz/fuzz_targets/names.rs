//! Any text as every name the hierarchy parses; what parses must display back to a form that
//! parses to the same value, and no relative path may climb out (`..`) or be absolute.
#![no_main]

use keepsake_hierarchy::{
    Authid, BackupDir, BackupGroup, BackupNamespace, BackupTime, SnapshotPath,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ns) = text.parse::<BackupNamespace>() {
        assert_eq!(
            ns.to_string().parse::<BackupNamespace>().ok(),
            Some(ns.clone())
        );
        let path = ns.path();
        assert!(!path.starts_with('/') && !path.split('/').any(|c| c == ".." || c == "."));
    }
    if let Ok(group) = text.parse::<BackupGroup>() {
        assert_eq!(group.to_string().parse::<BackupGroup>().ok(), Some(group));
    }
    if let Ok(dir) = text.parse::<BackupDir>() {
        assert_eq!(dir.to_string().parse::<BackupDir>().ok(), Some(dir));
    }
    if let Ok(time) = text.parse::<BackupTime>() {
        assert_eq!(BackupTime::from_epoch(time.epoch()).ok(), Some(time));
    }
    if let Ok(id) = text.parse::<Authid>() {
        assert_eq!(id.to_string().parse::<Authid>().ok(), Some(id));
    }
    if let Ok(path) = text.parse::<SnapshotPath>() {
        let rel = path.to_string();
        assert!(!rel.starts_with('/') && !rel.split('/').any(|c| c == ".."));
    }
});
