//! Prune plan computation for 10k, 100k and 1M snapshots, next to a bare sort of the same times
//! (the n log n floor any newest-first algorithm pays) measured in the same run.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use jiff::tz::TimeZone;
use keepsake_datastore::prune::{KeepOptions, PruneSnapshot, compute_prune_plan};
use keepsake_hierarchy::BackupTime;

/// One snapshot every 7 minutes, going back from mid 2024, some protected, the newest unfinished.
fn snapshots(n: usize) -> Vec<PruneSnapshot> {
    let newest = 1_717_600_000i64;
    (0..n)
        .map(|i| PruneSnapshot {
            time: BackupTime::from_epoch(newest - 420 * i as i64).unwrap(),
            finished: i != 0,
            protected: i % 997 == 0,
        })
        .rev()
        .collect()
}

fn bench(c: &mut Criterion) {
    let tz = TimeZone::get("America/New_York").unwrap();
    let policy: KeepOptions =
        "keep-last=3,keep-hourly=24,keep-daily=7,keep-weekly=4,keep-monthly=12,keep-yearly=5"
            .parse()
            .unwrap();
    let mut group = c.benchmark_group("prune");
    group.sample_size(10);
    for n in [10_000usize, 100_000, 1_000_000] {
        let input = snapshots(n);
        group.bench_with_input(BenchmarkId::new("plan", n), &input, |b, input| {
            b.iter(|| compute_prune_plan(black_box(input), &policy, &tz))
        });
        group.bench_with_input(BenchmarkId::new("baseline_sort", n), &input, |b, input| {
            b.iter(|| {
                let mut order: Vec<usize> = (0..input.len()).collect();
                order.sort_by(|&a, &b| input[b].time.cmp(&input[a].time));
                black_box(order)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
