//! Property tests: arbitrary input never panics any parser, and valid values round-trip through text
//! and serde. 10,000 cases each.

use keepsake_hierarchy::{
    ArchiveKind, Authid, BackupDir, BackupGroup, BackupNamespace, BackupTime, BackupType,
    GroupFilter, GroupPath, SnapshotPath, check_file_name,
};
use proptest::prelude::*;

const CASES: u32 = 10_000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings made mostly of the characters that matter to the grammars, plus anything.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_./:@!\\-]{0,40}",
        "(ns/|vm/|ct/|host/|\\.\\./|/|[a-z0-9]{1,3}|2024-06-05T15:06:40Z|include:|exclude:|type:|group:|regex:)*",
        any::<String>(),
        "[\\x00-\\x7f]{0,300}",
    ]
}

fn safe_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9._\\-]{0,20}"
}

fn namespace() -> impl Strategy<Value = BackupNamespace> {
    prop::collection::vec(safe_id(), 0..=7)
        .prop_map(|c| BackupNamespace::from_components(c).unwrap())
}

fn backup_type() -> impl Strategy<Value = BackupType> {
    prop::sample::select(BackupType::ALL.to_vec())
}

fn group() -> impl Strategy<Value = BackupGroup> {
    (
        backup_type(),
        prop_oneof![safe_id(), (0u64..u64::MAX).prop_map(|n| n.to_string())],
    )
        .prop_map(|(t, id)| BackupGroup::new(t, &id).unwrap())
}

fn time() -> impl Strategy<Value = BackupTime> {
    (BackupTime::MIN.epoch()..=BackupTime::MAX.epoch())
        .prop_map(|e| BackupTime::from_epoch(e).unwrap())
}

fn snapshot() -> impl Strategy<Value = BackupDir> {
    (group(), time()).prop_map(|(g, t)| BackupDir::new(g, t))
}

fn round_trip<T>(value: &T)
where
    T: std::fmt::Display
        + std::str::FromStr
        + PartialEq
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    T::Err: std::fmt::Debug,
{
    let text = value.to_string();
    assert_eq!(&text.parse::<T>().unwrap(), value, "text {text:?}");
    let json = serde_json::to_string(value).unwrap();
    assert_eq!(json, serde_json::to_string(&text).unwrap());
    assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), value);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parsers_never_panic(s in nasty_string()) {
        let _ = s.parse::<BackupNamespace>();
        let _ = BackupNamespace::from_path(&s);
        let _ = s.parse::<BackupType>();
        let _ = s.parse::<BackupGroup>();
        let _ = s.parse::<BackupTime>();
        let _ = s.parse::<BackupDir>();
        let _ = s.parse::<GroupPath>();
        let _ = s.parse::<SnapshotPath>();
        let _ = s.parse::<Authid>();
        let _ = s.parse::<GroupFilter>();
        let _ = ArchiveKind::from_file_name(&s);
        let _ = check_file_name(&s);
    }

    #[test]
    fn accepted_paths_stay_inside(s in nasty_string()) {
        // Whatever parses as a path produces only clean relative components.
        let paths: Vec<String> = [
            s.parse::<SnapshotPath>().ok().map(|p| p.to_string()),
            s.parse::<GroupPath>().ok().map(|p| p.to_string()),
            BackupNamespace::from_path(&s).ok().map(|n| n.path()),
            s.parse::<BackupNamespace>().ok().map(|n| n.path()),
        ].into_iter().flatten().collect();
        for p in paths {
            prop_assert!(!p.starts_with('/'));
            prop_assert!(!p.contains('\0'));
            for c in p.split('/').filter(|_| !p.is_empty()) {
                prop_assert!(!c.is_empty() && c != "." && c != "..", "{p:?}");
            }
        }
    }

    #[test]
    fn text_that_parses_prints_back_identically(s in nasty_string()) {
        if let Ok(v) = s.parse::<SnapshotPath>() { prop_assert_eq!(v.to_string(), s.clone()); }
        if let Ok(v) = s.parse::<BackupGroup>() { prop_assert_eq!(v.to_string(), s.clone()); }
        if let Ok(v) = s.parse::<BackupTime>() { prop_assert_eq!(v.to_string(), s.clone()); }
        if let Ok(v) = s.parse::<Authid>() { prop_assert_eq!(v.to_string(), s.clone()); }
        if let Ok(v) = s.parse::<BackupNamespace>() { prop_assert_eq!(v.to_string(), s.clone()); }
    }

    #[test]
    fn valid_values_round_trip(ns in namespace(), snap in snapshot()) {
        round_trip(&ns);
        prop_assert_eq!(BackupNamespace::from_path(&ns.path()).unwrap(), ns.clone());
        round_trip(snap.group());
        round_trip(&snap.time());
        round_trip(&snap);
        let path = SnapshotPath { ns: ns.clone(), snapshot: snap.clone() };
        round_trip(&path);
        prop_assert_eq!(path.to_string(), snap.relative_path(&ns));
        let group = GroupPath { ns, group: snap.group().clone() };
        round_trip(&group);
    }

    #[test]
    fn times_round_trip_through_epoch(t in time()) {
        let text = t.to_string();
        prop_assert_eq!(text.len(), 20);
        prop_assert_eq!(text.parse::<BackupTime>().unwrap().epoch(), t.epoch());
    }

    #[test]
    fn filters_round_trip(g in group(), exclude in any::<bool>(), kind in 0..3u8, re in "[a-z0-9/^$.]{0,10}") {
        let text = match kind {
            0 => format!("type:{}", g.ty()),
            1 => format!("group:{g}"),
            _ => format!("regex:{re}"),
        };
        let text = if exclude { format!("exclude:{text}") } else { text };
        if let Ok(f) = text.parse::<GroupFilter>() {
            round_trip(&f);
            if kind < 2 {
                prop_assert!(f.matches(&g));
            }
        } else {
            prop_assert!(kind == 2, "{text}");
        }
    }

    #[test]
    fn authids_round_trip(user in "[a-z0-9.@\\-]{1,20}", realm in "[a-z][a-z0-9]{1,10}", token in proptest::option::of(safe_id())) {
        let text = match &token { Some(t) => format!("{user}@{realm}!{t}"), None => format!("{user}@{realm}") };
        let a: Authid = text.parse().unwrap();
        round_trip(&a);
        prop_assert_eq!(a.realm(), realm.as_str());
        prop_assert_eq!(a.token(), token.as_deref());
        prop_assert!(a.user_id().may_act_as_owner(&a));
    }
}
