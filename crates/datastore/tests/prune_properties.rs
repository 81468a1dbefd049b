//! Property tests of prune (10,000 cases each), in UTC and America/New_York.

use std::collections::BTreeSet;
use std::num::NonZeroU64;

use jiff::tz::TimeZone;
use keepsake_datastore::prune::{
    KeepOptions, KeepWithin, Period, PruneMark, PruneSnapshot, compute_prune_plan,
};
use keepsake_hierarchy::BackupTime;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Up to 40 snapshots with unique times; gaps from seconds to months so every period matters.
fn snapshots() -> impl Strategy<Value = Vec<PruneSnapshot>> {
    let gap = prop_oneof![
        1i64..120,
        60i64..7_200,
        3_600i64..200_000,
        86_400i64..4_000_000
    ];
    prop::collection::vec(
        (gap, prop::bool::weighted(0.9), prop::bool::weighted(0.1)),
        0..40,
    )
    .prop_map(|items| {
        let mut t = 1_600_000_000i64;
        items
            .into_iter()
            .map(|(gap, finished, protected)| {
                t += gap;
                PruneSnapshot {
                    time: BackupTime::from_epoch(t).unwrap(),
                    finished,
                    protected,
                }
            })
            .collect()
    })
}

fn count() -> impl Strategy<Value = Option<NonZeroU64>> {
    proptest::option::weighted(0.4, (1u64..6).prop_map(|n| NonZeroU64::new(n).unwrap()))
}

fn within() -> impl Strategy<Value = Option<KeepWithin>> {
    proptest::option::weighted(
        0.2,
        prop::sample::select(vec!["1h", "2d", "1w", "1m", "1y", "3d12h"])
            .prop_map(|s| s.parse().unwrap()),
    )
}

fn options() -> impl Strategy<Value = KeepOptions> {
    (
        count(),
        count(),
        count(),
        count(),
        count(),
        count(),
        count(),
        within(),
    )
        .prop_map(
            |(last, minutely, hourly, daily, weekly, monthly, yearly, within)| KeepOptions {
                last,
                minutely,
                hourly,
                daily,
                weekly,
                monthly,
                yearly,
                within,
            },
        )
}

fn zone() -> impl Strategy<Value = TimeZone> {
    prop::sample::select(vec!["UTC", "America/New_York"]).prop_map(|z| TimeZone::get(z).unwrap())
}

fn removed(snaps: &[PruneSnapshot], options: &KeepOptions, tz: &TimeZone) -> BTreeSet<BackupTime> {
    compute_prune_plan(snaps, options, tz)
        .removals()
        .map(|e| e.snapshot.time)
        .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn protected_snapshots_are_never_removed(snaps in snapshots(), options in options(), tz in zone()) {
        let plan = compute_prune_plan(&snaps, &options, &tz);
        prop_assert_eq!(plan.entries().len(), snaps.len());
        for e in plan.entries() {
            prop_assert_eq!(e.snapshot, snaps[e.index]);
            if e.snapshot.protected {
                prop_assert_eq!(e.mark, PruneMark::Protected);
            }
        }
    }

    #[test]
    fn keep_last_alone_keeps_exactly_the_newest(snaps in snapshots(), n in 1u64..10, tz in zone()) {
        let options = KeepOptions { last: NonZeroU64::new(n), ..KeepOptions::default() };
        let plan = compute_prune_plan(&snaps, &options, &tz);
        let mut candidates: Vec<BackupTime> = snaps.iter().filter(|s| s.finished && !s.protected).map(|s| s.time).collect();
        candidates.sort_by(|a, b| b.cmp(a));
        let expected: BTreeSet<BackupTime> = candidates.into_iter().take(n as usize).collect();
        let kept: BTreeSet<BackupTime> = plan.entries().iter().filter(|e| e.mark == PruneMark::Keep).map(|e| e.snapshot.time).collect();
        prop_assert_eq!(kept, expected);
    }

    #[test]
    fn pruning_twice_removes_nothing_more(snaps in snapshots(), options in options(), tz in zone()) {
        let gone = removed(&snaps, &options, &tz);
        let rest: Vec<PruneSnapshot> = snaps.iter().copied().filter(|s| !gone.contains(&s.time)).collect();
        prop_assert_eq!(removed(&rest, &options, &tz), BTreeSet::new());
    }

    #[test]
    fn newest_finished_is_always_kept(snaps in snapshots(), options in options(), tz in zone()) {
        prop_assume!(options.keeps_something());
        let plan = compute_prune_plan(&snaps, &options, &tz);
        if let Some(newest) = plan.entries().iter().find(|e| e.snapshot.finished) {
            prop_assert!(newest.mark.keeps(), "{:?}", newest);
        }
    }

    #[test]
    fn empty_policy_removes_nothing(snaps in snapshots(), tz in zone()) {
        prop_assert_eq!(removed(&snaps, &KeepOptions::default(), &tz), BTreeSet::new());
    }

    #[test]
    fn adding_a_nested_keep_option_never_removes_more(
        snaps in snapshots(),
        options in options(),
        which in 0usize..8,
        n in 1u64..6,
        tz in zone(),
    ) {
        // An ISO week straddles months and years, so weekly together with monthly or yearly is left
        // out: there PBS's rules are not monotonic (see the module docs and the example test).
        let mut options = options;
        if which == 4 {
            options.monthly = None;
            options.yearly = None;
        } else if options.monthly.is_some() || options.yearly.is_some() || which == 5 || which == 6 {
            options.weekly = None;
        }
        // An empty policy keeps everything; adding to it is covered by `empty_policy_removes_nothing`.
        if !options.keeps_something() {
            options.yearly = NonZeroU64::new(1);
            if which == 4 {
                options.yearly = None;
                options.daily = NonZeroU64::new(1);
            }
        }
        let mut more = options;
        let n = NonZeroU64::new(n);
        match which {
            0 => more.last = more.last.or(n),
            1..=6 => {
                let period = [Period::Minutely, Period::Hourly, Period::Daily, Period::Weekly, Period::Monthly, Period::Yearly][which - 1];
                more.set_period(period, more.period(period).or(n));
            }
            _ => more.within = more.within.or(Some("2d".parse().unwrap())),
        }
        prop_assert!(!(more.weekly.is_some() && (more.monthly.is_some() || more.yearly.is_some())));
        let before = removed(&snaps, &options, &tz);
        let after = removed(&snaps, &more, &tz);
        prop_assert!(after.is_subset(&before), "{} -> {}: removed {:?} then {:?}", options, more, before, after);
    }

    #[test]
    fn policy_text_round_trips(options in options()) {
        prop_assert_eq!(options.to_string().parse::<KeepOptions>().unwrap(), options);
    }
}
