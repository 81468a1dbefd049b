//! The man pages and completion scripts shipped in crates/cli/doc are those the binary writes
//! now: a changed option fails this test until `cargo xtask man` is run.

mod common;

use std::path::Path;

#[test]
fn shipped_man_pages_and_completions_are_current() {
    let fresh = tempfile::tempdir().unwrap();
    common::run(
        common::keepsake()
            .arg("--quiet")
            .arg("docs")
            .arg(fresh.path()),
    )
    .ok();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("doc");
    let now = common::tree_contents(fresh.path());
    let committed = common::tree_contents(&shipped);
    let names = |tree: &std::collections::BTreeMap<std::path::PathBuf, Option<Vec<u8>>>| {
        tree.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(
        names(&committed),
        names(&now),
        "crates/cli/doc is out of date: run `cargo xtask man`"
    );
    for (path, content) in &now {
        assert!(
            committed.get(path) == Some(content),
            "crates/cli/doc/{} is out of date: run `cargo xtask man`",
            path.display()
        );
    }
    assert!(now.contains_key(Path::new("man/keepsake.1")));
    assert!(now.contains_key(Path::new("man/keepsake-prune.1")));
    assert!(now.contains_key(Path::new("completions/_keepsake")));
    // The hidden command that writes them has no page of its own.
    assert!(!now.contains_key(Path::new("man/keepsake-docs.1")));
}
