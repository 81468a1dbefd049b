//! Any text as a group filter; what parses must display back to the same filter, and matching it
//! against groups must not panic.
#![no_main]

use keepsake_hierarchy::{BackupGroup, GroupFilter, apply_filters};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(filter) = text.parse::<GroupFilter>() {
        let shown = filter.to_string();
        assert_eq!(
            shown.parse::<GroupFilter>().ok().map(|f| f.to_string()),
            Some(shown)
        );
        let groups: [BackupGroup; 3] = [
            "vm/100".parse().unwrap(),
            "ct/abc-1".parse().unwrap(),
            "host/x.y_z".parse().unwrap(),
        ];
        for group in &groups {
            let _ = filter.matches(group);
            let _ = apply_filters(group, std::slice::from_ref(&filter));
        }
    }
});
