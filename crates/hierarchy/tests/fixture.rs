//! Every name PBS 3.2.4 wrote into the fixture datastore is accepted, and builds back the same paths.

use std::path::Path;

use keepsake_hierarchy::{
    ArchiveKind, Authid, BackupDir, BackupGroup, BackupNamespace, BackupType, GroupPath,
    SnapshotPath,
};
use keepsake_testkit::fixture::{self, PbsFixture};

/// Walks a namespace folder the way PBS lists it and returns every snapshot path found.
fn walk(root: &Path, ns: &BackupNamespace, out: &mut Vec<SnapshotPath>) {
    let ns_dir = root.join(ns.path());
    for ty in BackupType::ALL {
        let Ok(groups) = std::fs::read_dir(ns_dir.join(ty.as_str())) else {
            continue;
        };
        for g in groups {
            let g = g.unwrap();
            let group = BackupGroup::new(ty, g.file_name().to_str().unwrap()).unwrap();
            let owner = std::fs::read_to_string(g.path().join("owner")).unwrap();
            Authid::new(owner.lines().next().unwrap().trim_end()).unwrap();
            for s in std::fs::read_dir(g.path()).unwrap() {
                let s = s.unwrap();
                if !s.file_type().unwrap().is_dir() {
                    continue;
                }
                let time = s.file_name().to_str().unwrap().parse().unwrap();
                let snapshot = BackupDir::new(group.clone(), time);
                for f in std::fs::read_dir(s.path()).unwrap() {
                    let name = f.unwrap().file_name().into_string().unwrap();
                    snapshot.file_path(ns, &name).unwrap();
                    if name != ".protected" {
                        ArchiveKind::from_file_name(&name).unwrap();
                    }
                }
                out.push(SnapshotPath {
                    ns: ns.clone(),
                    snapshot,
                });
            }
        }
    }
    if let Ok(children) = std::fs::read_dir(ns_dir.join("ns")) {
        for c in children {
            let child = ns.child(c.unwrap().file_name().to_str().unwrap()).unwrap();
            walk(root, &child, out);
        }
    }
}

#[test]
fn every_fixture_name_parses_and_round_trips() {
    let fx = PbsFixture::unpack().unwrap();
    let mut found = Vec::new();
    walk(&fx.path(), &BackupNamespace::root(), &mut found);
    found.sort();

    let mut expected: Vec<SnapshotPath> = fixture::SNAPSHOTS
        .iter()
        .map(|s| SnapshotPath {
            ns: s.namespace.parse().unwrap(),
            snapshot: format!("{}/{}", s.group, s.time).parse().unwrap(),
        })
        .collect();
    expected.sort();
    assert_eq!(found, expected);

    for p in &found {
        let text = p.to_string();
        assert!(fx.path().join(&text).is_dir(), "{text}");
        assert_eq!(text.parse::<SnapshotPath>().unwrap(), *p);
        let group = GroupPath {
            ns: p.ns.clone(),
            group: p.snapshot.group().clone(),
        };
        assert_eq!(group.to_string().parse::<GroupPath>().unwrap(), group);
    }
    for ns in fixture::NAMESPACES {
        let ns: BackupNamespace = ns.parse().unwrap();
        assert!(fx.path().join(ns.path()).is_dir(), "{ns:?}");
        assert_eq!(BackupNamespace::from_path(&ns.path()).unwrap(), ns);
    }
    for (_, _, owner) in fixture::GROUPS {
        assert_eq!(owner.parse::<Authid>().unwrap().to_string(), *owner);
    }
}
