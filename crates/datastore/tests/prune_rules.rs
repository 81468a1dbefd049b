//! Example-based tests of every prune rule, in UTC and in America/New_York (daylight saving time).

use jiff::tz::TimeZone;
use keepsake_datastore::prune::{KeepOptions, PruneMark, PruneSnapshot, compute_prune_plan};
use keepsake_hierarchy::BackupTime;

/// One snapshot: `"2024-06-05T15:06:40Z"` plus optional flags: `p` protected, `u` unfinished.
fn snap(spec: &str) -> PruneSnapshot {
    let (time, flags) = spec.split_once(' ').unwrap_or((spec, ""));
    PruneSnapshot {
        time: time.parse::<BackupTime>().unwrap(),
        finished: !flags.contains('u'),
        protected: flags.contains('p'),
    }
}

/// Runs prune and compares, newest first, `"<time> <mark> (<reason>)"` lines.
fn check(tz: &str, policy: &str, snapshots: &[&str], expected: &[&str]) {
    let tz = TimeZone::get(tz).unwrap();
    let options: KeepOptions = policy.parse().unwrap();
    let input: Vec<PruneSnapshot> = snapshots.iter().map(|s| snap(s)).collect();
    let plan = compute_prune_plan(&input, &options, &tz);
    let got: Vec<String> = plan
        .entries()
        .iter()
        .map(|e| format!("{} {} ({})", e.snapshot.time, e.mark, e.reason))
        .collect();
    assert_eq!(got, expected, "policy {policy} in {tz:?}");
}

#[test]
fn keep_last_counts_only_finished_unprotected() {
    check(
        "UTC",
        "keep-last=2",
        &[
            "2024-06-01T10:00:00Z",
            "2024-06-02T10:00:00Z",
            "2024-06-03T10:00:00Z p",
            "2024-06-04T10:00:00Z",
            "2024-06-05T10:00:00Z u",
        ],
        &[
            "2024-06-05T10:00:00Z keep-partial (newest, unfinished)",
            "2024-06-04T10:00:00Z keep (last 1 of 2)",
            "2024-06-03T10:00:00Z protected (protected)",
            "2024-06-02T10:00:00Z keep (last 2 of 2)",
            "2024-06-01T10:00:00Z remove (not selected by any option)",
        ],
    );
}

#[test]
fn only_the_newest_unfinished_snapshot_is_kept() {
    check(
        "UTC",
        "keep-last=5",
        &[
            "2024-06-01T10:00:00Z u",
            "2024-06-02T10:00:00Z",
            "2024-06-03T10:00:00Z u",
            "2024-06-04T10:00:00Z u",
        ],
        &[
            "2024-06-04T10:00:00Z keep-partial (newest, unfinished)",
            "2024-06-03T10:00:00Z remove (unfinished, not the newest)",
            "2024-06-02T10:00:00Z keep (last 1 of 5)",
            "2024-06-01T10:00:00Z remove (unfinished, not the newest)",
        ],
    );
    // A finished snapshot newer than the unfinished one: no partial is kept.
    check(
        "UTC",
        "keep-last=5",
        &["2024-06-01T10:00:00Z u", "2024-06-02T10:00:00Z"],
        &[
            "2024-06-02T10:00:00Z keep (last 1 of 5)",
            "2024-06-01T10:00:00Z remove (unfinished, not the newest)",
        ],
    );
    // Protected wins over everything, also for unfinished snapshots.
    check(
        "UTC",
        "keep-last=1",
        &[
            "2024-06-01T10:00:00Z",
            "2024-06-02T10:00:00Z u",
            "2024-06-03T10:00:00Z up",
        ],
        &[
            "2024-06-03T10:00:00Z protected (protected)",
            "2024-06-02T10:00:00Z remove (unfinished, not the newest)",
            "2024-06-01T10:00:00Z keep (last 1 of 1)",
        ],
    );
}

#[test]
fn empty_policy_keeps_everything() {
    check(
        "UTC",
        "",
        &[
            "2024-06-01T10:00:00Z",
            "2024-06-02T10:00:00Z u",
            "2024-06-03T10:00:00Z p",
        ],
        &[
            "2024-06-03T10:00:00Z protected (protected)",
            "2024-06-02T10:00:00Z keep (no keep option set, keeping all)",
            "2024-06-01T10:00:00Z keep (no keep option set, keeping all)",
        ],
    );
}

#[test]
fn minutely_and_hourly() {
    check(
        "UTC",
        "keep-minutely=2",
        &[
            "2024-06-05T10:00:10Z",
            "2024-06-05T10:00:50Z",
            "2024-06-05T10:01:00Z",
            "2024-06-05T09:59:00Z",
        ],
        &[
            "2024-06-05T10:01:00Z keep (minutely 2024-06-05 10:01)",
            "2024-06-05T10:00:50Z keep (minutely 2024-06-05 10:00)",
            "2024-06-05T10:00:10Z remove (minutely 2024-06-05 10:00 already kept by a newer snapshot)",
            "2024-06-05T09:59:00Z remove (not selected by any option)",
        ],
    );
    check(
        "UTC",
        "keep-hourly=2",
        &[
            "2024-06-05T10:05:00Z",
            "2024-06-05T10:40:00Z",
            "2024-06-05T11:10:00Z",
            "2024-06-05T12:00:00Z",
        ],
        &[
            "2024-06-05T12:00:00Z keep (hourly 2024-06-05 12h)",
            "2024-06-05T11:10:00Z keep (hourly 2024-06-05 11h)",
            "2024-06-05T10:40:00Z remove (not selected by any option)",
            "2024-06-05T10:05:00Z remove (not selected by any option)",
        ],
    );
}

#[test]
fn periods_taken_by_an_earlier_option_do_not_count() {
    check(
        "UTC",
        "keep-last=1,keep-daily=1",
        &[
            "2024-06-04T10:00:00Z",
            "2024-06-05T08:00:00Z",
            "2024-06-05T10:00:00Z",
        ],
        &[
            "2024-06-05T10:00:00Z keep (last 1 of 1)",
            "2024-06-05T08:00:00Z remove (not selected by any option)",
            "2024-06-04T10:00:00Z keep (daily 2024-06-04)",
        ],
    );
}

#[test]
fn daily_weekly_monthly_yearly() {
    let snaps = [
        "2023-06-15T12:00:00Z",
        "2023-12-31T12:00:00Z",
        "2024-05-20T12:00:00Z",
        "2024-05-31T12:00:00Z",
        "2024-06-03T12:00:00Z",
        "2024-06-04T12:00:00Z",
        "2024-06-04T18:00:00Z",
    ];
    check(
        "UTC",
        "keep-daily=2",
        &snaps,
        &[
            "2024-06-04T18:00:00Z keep (daily 2024-06-04)",
            "2024-06-04T12:00:00Z remove (daily 2024-06-04 already kept by a newer snapshot)",
            "2024-06-03T12:00:00Z keep (daily 2024-06-03)",
            "2024-05-31T12:00:00Z remove (not selected by any option)",
            "2024-05-20T12:00:00Z remove (not selected by any option)",
            "2023-12-31T12:00:00Z remove (not selected by any option)",
            "2023-06-15T12:00:00Z remove (not selected by any option)",
        ],
    );
    check(
        "UTC",
        "keep-weekly=2,keep-monthly=2,keep-yearly=3",
        &snaps,
        &[
            "2024-06-04T18:00:00Z keep (weekly 2024-W23)",
            "2024-06-04T12:00:00Z remove (weekly 2024-W23 already kept by a newer snapshot)",
            "2024-06-03T12:00:00Z remove (weekly 2024-W23 already kept by a newer snapshot)",
            "2024-05-31T12:00:00Z keep (weekly 2024-W22)",
            "2024-05-20T12:00:00Z remove (not selected by any option)",
            // May and June 2024 are already kept by weekly, so monthly's two go further back,
            // and yearly finds 2024 and 2023 already kept.
            "2023-12-31T12:00:00Z keep (monthly 2023-12)",
            "2023-06-15T12:00:00Z keep (monthly 2023-06)",
        ],
    );
    check(
        "UTC",
        "keep-yearly=1",
        &snaps,
        &[
            "2024-06-04T18:00:00Z keep (yearly 2024)",
            "2024-06-04T12:00:00Z remove (yearly 2024 already kept by a newer snapshot)",
            "2024-06-03T12:00:00Z remove (yearly 2024 already kept by a newer snapshot)",
            "2024-05-31T12:00:00Z remove (yearly 2024 already kept by a newer snapshot)",
            "2024-05-20T12:00:00Z remove (yearly 2024 already kept by a newer snapshot)",
            "2023-12-31T12:00:00Z remove (not selected by any option)",
            "2023-06-15T12:00:00Z remove (not selected by any option)",
        ],
    );
}

#[test]
fn weekly_uses_the_iso_week_year() {
    // 2020-12-31 and 2021-01-01 are in ISO week 2020-W53; 2021-01-04 starts 2021-W01.
    // 2024-12-30 (a Monday) is already ISO week 2025-W01.
    check(
        "UTC",
        "keep-weekly=3",
        &[
            "2020-12-31T12:00:00Z",
            "2021-01-01T12:00:00Z",
            "2021-01-04T12:00:00Z",
            "2024-12-30T12:00:00Z",
            "2025-01-02T12:00:00Z",
        ],
        &[
            "2025-01-02T12:00:00Z keep (weekly 2025-W01)",
            "2024-12-30T12:00:00Z remove (weekly 2025-W01 already kept by a newer snapshot)",
            "2021-01-04T12:00:00Z keep (weekly 2021-W01)",
            "2021-01-01T12:00:00Z keep (weekly 2020-W53)",
            "2020-12-31T12:00:00Z remove (weekly 2020-W53 already kept by a newer snapshot)",
        ],
    );
}

#[test]
fn local_days_differ_from_utc_days() {
    // 02:00 UTC on June 6 is 22:00 on June 5 in New York (EDT, UTC-4).
    let snaps = ["2024-06-05T12:00:00Z", "2024-06-06T02:00:00Z"];
    check(
        "UTC",
        "keep-daily=5",
        &snaps,
        &[
            "2024-06-06T02:00:00Z keep (daily 2024-06-06)",
            "2024-06-05T12:00:00Z keep (daily 2024-06-05)",
        ],
    );
    check(
        "America/New_York",
        "keep-daily=5",
        &snaps,
        &[
            "2024-06-06T02:00:00Z keep (daily 2024-06-05)",
            "2024-06-05T12:00:00Z remove (daily 2024-06-05 already kept by a newer snapshot)",
        ],
    );
}

#[test]
fn daylight_saving_changes_in_new_york() {
    // Fall back on 2024-11-03: 05:30Z is 01:30 EDT, 06:30Z is 01:30 EST: one local hour, twice.
    let fall = [
        "2024-11-03T04:30:00Z",
        "2024-11-03T05:30:00Z",
        "2024-11-03T06:30:00Z",
    ];
    check(
        "America/New_York",
        "keep-hourly=2",
        &fall,
        &[
            "2024-11-03T06:30:00Z keep (hourly 2024-11-03 01h)",
            "2024-11-03T05:30:00Z remove (hourly 2024-11-03 01h already kept by a newer snapshot)",
            "2024-11-03T04:30:00Z keep (hourly 2024-11-03 00h)",
        ],
    );
    check(
        "UTC",
        "keep-hourly=2",
        &fall,
        &[
            "2024-11-03T06:30:00Z keep (hourly 2024-11-03 06h)",
            "2024-11-03T05:30:00Z keep (hourly 2024-11-03 05h)",
            "2024-11-03T04:30:00Z remove (not selected by any option)",
        ],
    );
    // Spring forward on 2024-03-10: 06:59Z is 01:59 EST, 07:00Z is 03:00 EDT; 02h never happens.
    check(
        "America/New_York",
        "keep-hourly=3",
        &[
            "2024-03-10T06:30:00Z",
            "2024-03-10T06:59:00Z",
            "2024-03-10T07:00:00Z",
            "2024-03-10T07:30:00Z",
        ],
        &[
            "2024-03-10T07:30:00Z keep (hourly 2024-03-10 03h)",
            "2024-03-10T07:00:00Z remove (hourly 2024-03-10 03h already kept by a newer snapshot)",
            "2024-03-10T06:59:00Z keep (hourly 2024-03-10 01h)",
            "2024-03-10T06:30:00Z remove (hourly 2024-03-10 01h already kept by a newer snapshot)",
        ],
    );
    // The 23-hour day is still one day.
    check(
        "America/New_York",
        "keep-daily=1",
        &["2024-03-10T05:00:00Z", "2024-03-11T03:59:00Z"],
        &[
            "2024-03-11T03:59:00Z keep (daily 2024-03-10)",
            "2024-03-10T05:00:00Z remove (daily 2024-03-10 already kept by a newer snapshot)",
        ],
    );
}

#[test]
fn keep_within_is_measured_from_the_newest_snapshot() {
    check(
        "UTC",
        "keep-within=30d",
        &[
            "2020-01-01T00:00:00Z",
            "2024-05-06T12:00:00Z",
            "2024-05-06T12:00:01Z",
            "2024-06-05T12:00:00Z",
        ],
        &[
            "2024-06-05T12:00:00Z keep (within 30d)",
            "2024-05-06T12:00:01Z keep (within 30d)",
            "2024-05-06T12:00:00Z keep (within 30d)",
            "2020-01-01T00:00:00Z remove (not selected by any option)",
        ],
    );
    // Calendar months: one month before March 31 is February 29 in 2024.
    check(
        "UTC",
        "keep-within=1m,keep-last=1",
        &[
            "2024-02-28T23:59:59Z",
            "2024-02-29T00:00:00Z",
            "2024-03-31T00:00:00Z",
        ],
        &[
            "2024-03-31T00:00:00Z keep (last 1 of 1)",
            "2024-02-29T00:00:00Z keep (within 1m)",
            "2024-02-28T23:59:59Z remove (not selected by any option)",
        ],
    );
}

#[test]
fn adding_weekly_to_monthly_can_remove_more_as_in_pbs() {
    // 2024-04-01 (Mon) and 2024-03-31 (Sun) are in different ISO weeks; use Tue Apr 2 and Mon Apr 1
    // vs Sun Mar 31: the ISO week 2024-W14 runs Mon Apr 1 .. Sun Apr 7, so pick a week that straddles
    // a month: 2024-W22 runs Mon May 27 .. Sun Jun 2.
    let snaps = ["2024-05-30T12:00:00Z", "2024-06-01T12:00:00Z"];
    check(
        "UTC",
        "keep-monthly=2",
        &snaps,
        &[
            "2024-06-01T12:00:00Z keep (monthly 2024-06)",
            "2024-05-30T12:00:00Z keep (monthly 2024-05)",
        ],
    );
    check(
        "UTC",
        "keep-weekly=1,keep-monthly=2",
        &snaps,
        &[
            "2024-06-01T12:00:00Z keep (weekly 2024-W22)",
            "2024-05-30T12:00:00Z remove (weekly 2024-W22 already kept by a newer snapshot)",
        ],
    );
}

#[test]
fn policy_text_forms() {
    let p: KeepOptions = "keep-last=3, keep-daily=7,keep-within=1y2m"
        .parse()
        .unwrap();
    assert_eq!(p.to_string(), "keep-last=3,keep-daily=7,keep-within=1y2m");
    assert_eq!(p.to_string().parse::<KeepOptions>().unwrap(), p);
    for bad in [
        "keep-last=0",
        "keep-last=-1",
        "keep-last",
        "keep-fortnightly=2",
        "keep-last=1,keep-last=2",
        "keep-within=",
        "keep-within=0d",
        "keep-within=5",
        "keep-within=d",
        "keep-within=1x",
        "keep-within=1d1d",
        "keep-within=99999999999d",
    ] {
        assert!(bad.parse::<KeepOptions>().is_err(), "{bad:?}");
    }
    assert!(!"".parse::<KeepOptions>().unwrap().keeps_something());
    assert_eq!(PruneMark::KeepPartial.to_string(), "keep-partial");
}
