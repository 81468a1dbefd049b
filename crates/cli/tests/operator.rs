//! What an operator meets first (issue 21): help that separates the command's options from the
//! global ones, suggestions for typos, errors that say what to do, namespaces named `/`, prune
//! summaries, selections, JSON errors with kinds and exit codes; through the real binary.

mod common;

use common::{Store, keepsake};

#[test]
fn global_options_have_their_own_heading() {
    let help = common::run(keepsake().args(["prune", "--help"]))
        .ok()
        .to_owned();
    let (own, global) = help
        .split_once("Global options:")
        .unwrap_or_else(|| panic!("no global heading:\n{help}"));
    assert!(own.contains("--keep-last"), "{help}");
    assert!(!own.contains("--s3-bucket"), "{help}");
    assert!(!own.contains("--store"), "{help}");
    let global = global.split("Examples:").next().unwrap_or_default();
    assert!(
        global.contains("--s3-bucket") && global.contains("--store"),
        "{help}"
    );
    assert!(!global.contains("--keep-last"), "{help}");
}

#[test]
fn typos_get_suggestions() {
    let store = Store::demo();
    let line = store.run(&["grups"]).fails(2).to_owned();
    assert!(line.contains("'groups'"), "{line}");
    let line = store.run(&["snapshot"]).fails(2).to_owned();
    assert!(line.contains("'snapshots'"), "{line}");
    let line = store.run(&["prune", "--keep-lst", "2"]).fails(2).to_owned();
    assert!(line.contains("'--keep-last'"), "{line}");
}
