//! Retention: which snapshots of a group to keep and which to remove, and why.
//!
//! The core, [`compute_prune_plan`], is pure: it takes the snapshots of one group (time, finished,
//! protected), a [`KeepOptions`] policy and a time zone, and returns a [`PrunePlan`] with a
//! [`PruneMark`] and a [`KeepReason`] for every snapshot. It does no I/O.
//!
//! # PBS's rules, exactly
//!
//! 1. Snapshots are taken newest first.
//! 2. An unfinished snapshot (no manifest) is kept as [`PruneMark::KeepPartial`] only when it is the
//!    newest snapshot of the group; every other unfinished snapshot is removed.
//! 3. The options apply in the order last, hourly, daily, weekly, monthly, yearly. Each option walks
//!    the snapshots newest first and keeps the newest snapshot of each period (the exact time for
//!    `last`; the local-time hour, day, ISO week, month or year), until it has kept its count of
//!    periods. Snapshots already marked by an earlier option are skipped; a period that an earlier
//!    option already kept a snapshot in does not count; an older snapshot in a period this option
//!    has already taken is marked for removal.
//! 4. Protected snapshots are always kept ([`PruneMark::Protected`]) and never count.
//! 5. Whatever no option kept is removed.
//!
//! Periods use **local time** in the zone the caller passes (PBS uses the server's zone), so around a
//! daylight-saving change two different UTC hours can be one local hour.
//!
//! # Beyond PBS
//!
//! - `keep-minutely` (applied between `last` and `hourly`) and `keep-within` (e.g. `30d`, `2w`,
//!   `1y2m`: every finished snapshot no older than that before the newest finished one is kept, in
//!   addition to what the other options keep — measured from the newest snapshot, not from "now",
//!   so a group whose backups stopped does not lose its last ones).
//! - Every mark carries a reason ("daily 2024-06-05", "last 2 of 3", "within 30d", …).
//! - **An empty policy keeps everything** ([`KeepReason::NoPolicy`]). PBS's core would mark every
//!   finished snapshot for removal and relies on its callers to refuse; here the core itself refuses.
//!   Counts are at least 1; there is no "keep-last 0".
//!
//! # A known non-monotonicity (PBS's, kept for compatibility)
//!
//! Because an option marks the older snapshots of a period it has taken for removal, and later options
//! skip marked snapshots, adding `keep-weekly` to a policy with `keep-monthly` or `keep-yearly` can
//! remove a snapshot the other option would have kept: an ISO week can straddle a month or year
//! boundary. Options whose periods nest (last, minutely, hourly, daily, monthly, yearly, within)
//! never remove more when added; the tests check both facts.
//!
//! ```
//! use keepsake_datastore::prune::{compute_prune_plan, KeepOptions, PruneMark, PruneSnapshot};
//! use keepsake_hierarchy::BackupTime;
//! use jiff::tz::TimeZone;
//!
//! let day = 86_400;
//! let snapshots: Vec<PruneSnapshot> = (0..5)
//!     .map(|i| PruneSnapshot::finished(BackupTime::from_epoch(1_717_600_000 + i * day).unwrap()))
//!     .collect();
//! let policy: KeepOptions = "keep-last=1,keep-daily=2".parse()?;
//! let plan = compute_prune_plan(&snapshots, &policy, &TimeZone::UTC);
//! let marks: Vec<PruneMark> = plan.entries().iter().map(|e| e.mark).collect();
//! // Newest first: last keeps the newest, daily the two days before it.
//! assert_eq!(marks, [PruneMark::Keep, PruneMark::Keep, PruneMark::Keep, PruneMark::Remove, PruneMark::Remove]);
//! assert_eq!(plan.entries()[1].reason.to_string(), "daily 2024-06-08");
//! # Ok::<(), keepsake_datastore::prune::PolicyError>(())
//! ```

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use jiff::Span;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use keepsake_hierarchy::BackupTime;

/// One snapshot as prune sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PruneSnapshot {
    /// The snapshot time.
    pub time: BackupTime,
    /// The manifest exists.
    pub finished: bool,
    /// The `.protected` marker exists.
    pub protected: bool,
}

impl PruneSnapshot {
    /// A finished, unprotected snapshot.
    pub fn finished(time: BackupTime) -> Self {
        Self {
            time,
            finished: true,
            protected: false,
        }
    }
}

/// What prune does with a snapshot. Only [`PruneMark::Remove`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PruneMark {
    /// Kept by an option (or by an empty policy).
    Keep,
    /// The newest snapshot is unfinished and newer than every finished one: kept.
    KeepPartial,
    /// Protected: always kept, never counted.
    Protected,
    /// Removed.
    Remove,
}

impl PruneMark {
    /// Whether the snapshot stays.
    pub fn keeps(self) -> bool {
        self != PruneMark::Remove
    }

    /// PBS's display string: `keep`, `keep-partial`, `protected`, `remove`.
    pub fn as_str(self) -> &'static str {
        match self {
            PruneMark::Keep => "keep",
            PruneMark::KeepPartial => "keep-partial",
            PruneMark::Protected => "protected",
            PruneMark::Remove => "remove",
        }
    }
}

impl fmt::Display for PruneMark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A period-based option: its name and how it cuts local time into periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    /// One minute of local time.
    Minutely,
    /// One hour of local time.
    Hourly,
    /// One local calendar day.
    Daily,
    /// One ISO 8601 week (week-based year and week number).
    Weekly,
    /// One local calendar month.
    Monthly,
    /// One local calendar year.
    Yearly,
}

impl Period {
    const ALL: [Period; 6] = [
        Period::Minutely,
        Period::Hourly,
        Period::Daily,
        Period::Weekly,
        Period::Monthly,
        Period::Yearly,
    ];

    /// The option word: `minutely`, `hourly`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Minutely => "minutely",
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        }
    }

    /// A number identifying the period that contains the local time `dt` (equal numbers = same period).
    fn key(self, dt: DateTime) -> i64 {
        let (y, mo, d, h, mi) = (
            i64::from(dt.year()),
            i64::from(dt.month()),
            i64::from(dt.day()),
            i64::from(dt.hour()),
            i64::from(dt.minute()),
        );
        match self {
            Period::Minutely => (((y * 13 + mo) * 32 + d) * 24 + h) * 60 + mi,
            Period::Hourly => ((y * 13 + mo) * 32 + d) * 24 + h,
            Period::Daily => (y * 13 + mo) * 32 + d,
            Period::Weekly => {
                let w = dt.date().iso_week_date();
                i64::from(w.year()) * 54 + i64::from(w.week())
            }
            Period::Monthly => y * 13 + mo,
            Period::Yearly => y,
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `keep-within` duration: years, months, weeks, days and hours, calendar-aware in the local zone.
///
/// Text form as restic takes it: digits and a unit, repeated: `y` years, `m` months, `w` weeks,
/// `d` days, `h` hours (`30d`, `2w`, `1y2m`, `36h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeepWithin {
    years: u16,
    months: u16,
    weeks: u16,
    days: u32,
    hours: u32,
}

impl KeepWithin {
    fn span(self) -> Span {
        Span::new()
            .years(self.years)
            .months(self.months)
            .weeks(self.weeks)
            .days(self.days)
            .hours(self.hours)
    }

    fn is_zero(self) -> bool {
        self == Self::default()
    }
}

impl fmt::Display for KeepWithin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, unit) in [
            (u32::from(self.years), 'y'),
            (u32::from(self.months), 'm'),
            (u32::from(self.weeks), 'w'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for KeepWithin {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let invalid = |reason: &str| PolicyError::InvalidWithin {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let mut within = KeepWithin::default();
        let mut seen = HashSet::new();
        let mut rest = s;
        if rest.is_empty() {
            return Err(invalid("empty duration"));
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(invalid("expected a number before each unit"));
            }
            let n: u32 = rest[..digits]
                .parse()
                .map_err(|_| invalid("number too large"))?;
            let unit = rest[digits..]
                .chars()
                .next()
                .ok_or_else(|| invalid("missing unit after the number (y, m, w, d or h)"))?;
            if !seen.insert(unit) {
                return Err(invalid("a unit appears twice"));
            }
            // Bounds keep the span inside jiff's limits (and far beyond any sane retention).
            let small = |max: u32| {
                if n <= max {
                    Ok(n)
                } else {
                    Err(invalid("number too large"))
                }
            };
            match unit {
                'y' => within.years = small(9_999)? as u16,
                'm' => within.months = small(60_000)? as u16,
                'w' => within.weeks = small(60_000)? as u16,
                'd' => within.days = small(3_000_000)?,
                'h' => within.hours = small(80_000_000)?,
                _ => return Err(invalid("unknown unit (use y, m, w, d or h)")),
            }
            rest = &rest[digits + unit.len_utf8()..];
        }
        if within.is_zero() {
            return Err(invalid("duration must not be zero"));
        }
        Ok(within)
    }
}

/// A retention policy. Every count is at least 1; unset options do nothing.
///
/// Text form (as PBS's prune options, comma separated): `keep-last=3,keep-daily=7,keep-within=30d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeepOptions {
    /// Keep the N newest snapshots.
    pub last: Option<NonZeroU64>,
    /// Keep the newest snapshot of each of the N newest minutes.
    pub minutely: Option<NonZeroU64>,
    /// … hours.
    pub hourly: Option<NonZeroU64>,
    /// … days.
    pub daily: Option<NonZeroU64>,
    /// … ISO weeks.
    pub weekly: Option<NonZeroU64>,
    /// … months.
    pub monthly: Option<NonZeroU64>,
    /// … years.
    pub yearly: Option<NonZeroU64>,
    /// Keep every snapshot within this duration before the newest finished one.
    pub within: Option<KeepWithin>,
}

impl KeepOptions {
    /// Whether any option is set. An empty policy keeps everything.
    pub fn keeps_something(&self) -> bool {
        self.last.is_some()
            || self.within.is_some()
            || Period::ALL.iter().any(|p| self.period(*p).is_some())
    }

    /// The count of a period option.
    pub fn period(&self, period: Period) -> Option<NonZeroU64> {
        match period {
            Period::Minutely => self.minutely,
            Period::Hourly => self.hourly,
            Period::Daily => self.daily,
            Period::Weekly => self.weekly,
            Period::Monthly => self.monthly,
            Period::Yearly => self.yearly,
        }
    }

    /// Sets the count of a period option.
    pub fn set_period(&mut self, period: Period, count: Option<NonZeroU64>) {
        let slot = match period {
            Period::Minutely => &mut self.minutely,
            Period::Hourly => &mut self.hourly,
            Period::Daily => &mut self.daily,
            Period::Weekly => &mut self.weekly,
            Period::Monthly => &mut self.monthly,
            Period::Yearly => &mut self.yearly,
        };
        *slot = count;
    }
}

impl fmt::Display for KeepOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(n) = self.last {
            parts.push(format!("keep-last={n}"));
        }
        for p in Period::ALL {
            if let Some(n) = self.period(p) {
                parts.push(format!("keep-{p}={n}"));
            }
        }
        if let Some(w) = self.within {
            parts.push(format!("keep-within={w}"));
        }
        f.write_str(&parts.join(","))
    }
}

impl FromStr for KeepOptions {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let mut options = KeepOptions::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let invalid = |reason: &str| PolicyError::InvalidOption {
                input: part.to_owned(),
                reason: reason.to_owned(),
            };
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| invalid("expected keep-<option>=<value>"))?;
            let name = key.strip_prefix("keep-").unwrap_or(key);
            if name == "within" {
                if options.within.is_some() {
                    return Err(invalid("given twice"));
                }
                options.within = Some(value.parse()?);
                continue;
            }
            let count: NonZeroU64 = value
                .parse()
                .map_err(|_| invalid("expected a whole number of at least 1"))?;
            let slot = if name == "last" {
                &mut options.last
            } else {
                let period = Period::ALL
                    .into_iter()
                    .find(|p| p.as_str() == name)
                    .ok_or_else(|| invalid("unknown option (last, minutely, hourly, daily, weekly, monthly, yearly, within)"))?;
                match period {
                    Period::Minutely => &mut options.minutely,
                    Period::Hourly => &mut options.hourly,
                    Period::Daily => &mut options.daily,
                    Period::Weekly => &mut options.weekly,
                    Period::Monthly => &mut options.monthly,
                    Period::Yearly => &mut options.yearly,
                }
            };
            if slot.replace(count).is_some() {
                return Err(invalid("given twice"));
            }
        }
        Ok(options)
    }
}

/// A policy that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A `keep-…=…` item is malformed.
    #[error("invalid prune option {input:?}: {reason}")]
    InvalidOption {
        /// The refused item.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `keep-within` duration is malformed.
    #[error("invalid keep-within duration {input:?}: {reason}")]
    InvalidWithin {
        /// The refused duration.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why a snapshot got its mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeepReason {
    /// The policy sets no option, so everything is kept.
    NoPolicy,
    /// Protected snapshots are always kept.
    Protected,
    /// The newest snapshot is unfinished and newer than every finished one.
    Partial,
    /// An unfinished snapshot that is not the newest one.
    Unfinished,
    /// Kept as the `nth` of `keep-last=of`.
    Last {
        /// 1-based position among the kept ones.
        nth: u64,
        /// The option's count.
        of: u64,
    },
    /// Kept as the newest snapshot of a period.
    Period {
        /// Which option.
        period: Period,
        /// The local time of the snapshot, to name the period.
        local: DateTime,
    },
    /// An older snapshot of a period already kept by this option.
    PeriodTaken {
        /// Which option took the period.
        period: Period,
        /// The local time of the snapshot.
        local: DateTime,
    },
    /// Kept by `keep-within`.
    Within(KeepWithin),
    /// No option keeps it.
    NotSelected,
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::NoPolicy => f.write_str("no keep option set, keeping all"),
            KeepReason::Protected => f.write_str("protected"),
            KeepReason::Partial => f.write_str("newest, unfinished"),
            KeepReason::Unfinished => f.write_str("unfinished, not the newest"),
            KeepReason::Last { nth, of } => write!(f, "last {nth} of {of}"),
            KeepReason::Period { period, local } => {
                write!(f, "{period} ")?;
                write_period(f, *period, *local)
            }
            KeepReason::PeriodTaken { period, local } => {
                write!(f, "{period} ")?;
                write_period(f, *period, *local)?;
                f.write_str(" already kept by a newer snapshot")
            }
            KeepReason::Within(w) => write!(f, "within {w}"),
            KeepReason::NotSelected => f.write_str("not selected by any option"),
        }
    }
}

fn write_period(f: &mut fmt::Formatter<'_>, period: Period, dt: DateTime) -> fmt::Result {
    let (y, mo, d, h, mi) = (dt.year(), dt.month(), dt.day(), dt.hour(), dt.minute());
    match period {
        Period::Minutely => write!(f, "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}"),
        Period::Hourly => write!(f, "{y:04}-{mo:02}-{d:02} {h:02}h"),
        Period::Daily => write!(f, "{y:04}-{mo:02}-{d:02}"),
        Period::Weekly => {
            let w = dt.date().iso_week_date();
            write!(f, "{:04}-W{:02}", w.year(), w.week())
        }
        Period::Monthly => write!(f, "{y:04}-{mo:02}"),
        Period::Yearly => write!(f, "{y:04}"),
    }
}

/// The decision for one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneEntry {
    /// Index of the snapshot in the input slice.
    pub index: usize,
    /// The snapshot.
    pub snapshot: PruneSnapshot,
    /// What happens to it.
    pub mark: PruneMark,
    /// Why.
    pub reason: KeepReason,
}

/// The decisions for one group, newest snapshot first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrunePlan {
    entries: Vec<PruneEntry>,
}

impl PrunePlan {
    /// Every snapshot, newest first.
    pub fn entries(&self) -> &[PruneEntry] {
        &self.entries
    }

    /// The snapshots to remove, **oldest first** (the order to delete them in).
    pub fn removals(&self) -> impl Iterator<Item = &PruneEntry> {
        self.entries
            .iter()
            .rev()
            .filter(|e| e.mark == PruneMark::Remove)
    }

    /// How many snapshots stay.
    pub fn kept_count(&self) -> usize {
        self.entries.iter().filter(|e| e.mark.keeps()).count()
    }
}

/// Computes PBS's prune marks (plus the extensions described in the [module docs](self)) for the
/// snapshots of one group. Pure: no I/O. The input may be in any order; snapshot times should be
/// unique (they are within a group).
pub fn compute_prune_plan(
    snapshots: &[PruneSnapshot],
    options: &KeepOptions,
    tz: &TimeZone,
) -> PrunePlan {
    let mut order: Vec<usize> = (0..snapshots.len()).collect();
    order.sort_by(|&a, &b| snapshots[b].time.cmp(&snapshots[a].time));

    let mut marks: Vec<Option<(PruneMark, KeepReason)>> = vec![None; snapshots.len()];

    if !options.keeps_something() {
        let entries = order
            .into_iter()
            .map(|i| PruneEntry {
                index: i,
                snapshot: snapshots[i],
                mark: if snapshots[i].protected {
                    PruneMark::Protected
                } else {
                    PruneMark::Keep
                },
                reason: if snapshots[i].protected {
                    KeepReason::Protected
                } else {
                    KeepReason::NoPolicy
                },
            })
            .collect();
        return PrunePlan { entries };
    }

    // Unfinished snapshots: only the newest overall survives, and only if no finished one is newer.
    let mut keep_unfinished = true;
    for &i in &order {
        if !snapshots[i].finished {
            marks[i] = Some(if keep_unfinished {
                (PruneMark::KeepPartial, KeepReason::Partial)
            } else {
                (PruneMark::Remove, KeepReason::Unfinished)
            });
        }
        keep_unfinished = false;
    }

    // Local times, computed once (the expensive part with a real zone).
    let local: Vec<DateTime> = snapshots.iter().map(|s| local_time(s.time, tz)).collect();

    if let Some(n) = options.last {
        // The selector of keep-last is the exact time: every snapshot is its own period.
        mark_selections(
            &order,
            snapshots,
            &mut marks,
            n.get(),
            |i| snapshots[i].time.epoch(),
            |_, nth| KeepReason::Last { nth, of: n.get() },
            |_| KeepReason::NotSelected,
        );
    }
    for period in Period::ALL {
        if let Some(n) = options.period(period) {
            mark_selections(
                &order,
                snapshots,
                &mut marks,
                n.get(),
                |i| period.key(local[i]),
                |i, _| KeepReason::Period {
                    period,
                    local: local[i],
                },
                |i| KeepReason::PeriodTaken {
                    period,
                    local: local[i],
                },
            );
        }
    }
    if let Some(within) = options.within {
        mark_within(&order, snapshots, &mut marks, within, tz);
    }

    let entries = order
        .into_iter()
        .map(|i| {
            let (mark, reason) = if snapshots[i].protected {
                (PruneMark::Protected, KeepReason::Protected)
            } else {
                marks[i].unwrap_or((PruneMark::Remove, KeepReason::NotSelected))
            };
            PruneEntry {
                index: i,
                snapshot: snapshots[i],
                mark,
                reason,
            }
        })
        .collect();
    PrunePlan { entries }
}

fn local_time(time: BackupTime, tz: &TimeZone) -> DateTime {
    match time.timestamp() {
        Some(ts) => tz.to_datetime(ts),
        // Only the last hours of the year 9999 lack a jiff timestamp; UTC is close enough there.
        None => time.to_utc_datetime(),
    }
}

/// One option's pass, as PBS does it (see the module docs).
fn mark_selections(
    order: &[usize],
    snapshots: &[PruneSnapshot],
    marks: &mut [Option<(PruneMark, KeepReason)>],
    keep: u64,
    selector: impl Fn(usize) -> i64,
    kept_reason: impl Fn(usize, u64) -> KeepReason,
    taken_reason: impl Fn(usize) -> KeepReason,
) {
    let already: HashSet<i64> = order
        .iter()
        .filter(|&&i| matches!(marks[i], Some((PruneMark::Keep, _))))
        .map(|&i| selector(i))
        .collect();
    let mut taken: HashSet<i64> = HashSet::new();
    for &i in order {
        if marks[i].is_some() {
            continue;
        }
        if snapshots[i].protected {
            marks[i] = Some((PruneMark::Protected, KeepReason::Protected));
            continue;
        }
        let sel = selector(i);
        if already.contains(&sel) {
            continue;
        }
        if taken.contains(&sel) {
            marks[i] = Some((PruneMark::Remove, taken_reason(i)));
        } else {
            if taken.len() as u64 >= keep {
                break;
            }
            taken.insert(sel);
            marks[i] = Some((PruneMark::Keep, kept_reason(i, taken.len() as u64)));
        }
    }
}

/// Keeps every finished snapshot not older than `within` before the newest finished one; it only
/// turns removals into keeps.
fn mark_within(
    order: &[usize],
    snapshots: &[PruneSnapshot],
    marks: &mut [Option<(PruneMark, KeepReason)>],
    within: KeepWithin,
    tz: &TimeZone,
) {
    let Some(&newest) = order.iter().find(|&&i| snapshots[i].finished) else {
        return;
    };
    let cutoff = snapshots[newest]
        .time
        .timestamp()
        .and_then(|ts| {
            ts.to_zoned_datetime(tz.clone())
                .checked_sub(within.span())
                .ok()
        })
        .map(|z| z.timestamp().as_second())
        .unwrap_or(i64::MIN);
    for &i in order {
        let s = snapshots[i];
        if s.time.epoch() < cutoff {
            break;
        }
        if s.finished && !s.protected && !matches!(marks[i], Some((PruneMark::Keep, _))) {
            marks[i] = Some((PruneMark::Keep, KeepReason::Within(within)));
        }
    }
}
