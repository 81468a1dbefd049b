//! What the generated store holds: a deterministic plan (groups, snapshots, archives, which
//! chunks change from one snapshot to the next) and the bytes of each chunk, all following
//! from the seed. No I/O here.

use keepsake_hierarchy::{BackupGroup, BackupNamespace, BackupTime};

use crate::options::{ArchiveKinds, DataKind};

/// 2025-01-01T00:00:00Z: the first snapshot's time, so that a seed gives the same names on
/// every run.
const FIRST_SNAPSHOT: i64 = 1_735_689_600;
const DAY: i64 = 86_400;

/// The namespaces `--namespaces` spreads groups over (parents before children).
pub(crate) const NAMESPACES: [&str; 3] = ["prod", "prod/db", "test"];

/// A small fast generator (wyrand): the data needs speed and reproducibility, not
/// cryptographic quality.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for one purpose, from the seed and the numbers that name it.
    pub(crate) fn new(parts: &[u64]) -> Self {
        let mut state = 0x243f_6a88_85a3_08d3u64;
        for &p in parts {
            state = mix(state ^ p);
        }
        Self(state)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) ^ t) as u64
    }

    /// A number in `0..n` (`n > 0`), by the multiply-shift method.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// SplitMix64's finaliser: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Which chunk of the store, and which version of its content: everything its bytes follow
/// from (with the seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkSpec {
    pub(crate) group: u32,
    pub(crate) archive: u32,
    pub(crate) index: u64,
    /// The snapshot that last changed this chunk.
    pub(crate) version: u32,
    pub(crate) len: usize,
}

/// One archive of a snapshot.
#[derive(Debug, Clone)]
pub(crate) struct ArchivePlan {
    pub(crate) name: &'static str,
    pub(crate) kind: ArchiveKind,
    pub(crate) size: u64,
    /// A fixed index's chunk size; the average chunk length of a dynamic one.
    pub(crate) chunk_size: u64,
    pub(crate) chunks: Vec<ChunkSpec>,
}

/// How an archive is indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArchiveKind {
    Fixed,
    Dynamic,
}

/// One snapshot to write.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotPlan {
    pub(crate) ns: BackupNamespace,
    pub(crate) group: BackupGroup,
    pub(crate) time: BackupTime,
    /// A small configuration blob (`<name>`, content), as PBS clients add one.
    pub(crate) blob: Option<(&'static str, String)>,
    pub(crate) archives: Vec<ArchivePlan>,
}

/// The parameters the plan follows from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanParams {
    pub(crate) seed: u64,
    pub(crate) groups: u32,
    pub(crate) snapshots: u32,
    pub(crate) archive_size: u64,
    pub(crate) chunk_size: u64,
    pub(crate) kinds: ArchiveKinds,
    pub(crate) shared_percent: f64,
    pub(crate) namespaces: bool,
}

/// The snapshots to write, group after group, oldest first. Per archive it keeps the version
/// of each chunk (4 bytes a chunk) while it walks a group's snapshots.
#[derive(Debug)]
pub(crate) struct Plan {
    params: PlanParams,
    group: u32,
    snapshot: u32,
    /// Per archive of the current group: each chunk's version.
    versions: Vec<Vec<u32>>,
}

impl Plan {
    pub(crate) fn new(params: PlanParams) -> Self {
        Self {
            params,
            group: 0,
            snapshot: 0,
            versions: Vec::new(),
        }
    }

    /// The namespaces the plan's groups live in (without the root), parents first.
    pub(crate) fn namespaces(&self) -> Vec<BackupNamespace> {
        if !self.params.namespaces {
            return Vec::new();
        }
        NAMESPACES
            .iter()
            .map(|ns| ns.parse::<BackupNamespace>())
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| unreachable!("the fixed namespace names are valid: {e}"))
    }

    fn archive_layout(&self) -> Vec<(&'static str, ArchiveKind)> {
        match self.params.kinds {
            ArchiveKinds::Fixed => vec![("drive-scsi0.img.fidx", ArchiveKind::Fixed)],
            ArchiveKinds::Dynamic => vec![("root.pxar.didx", ArchiveKind::Dynamic)],
            ArchiveKinds::Both => vec![
                ("drive-scsi0.img.fidx", ArchiveKind::Fixed),
                ("root.pxar.didx", ArchiveKind::Dynamic),
            ],
        }
    }

    /// The chunk lengths of an archive: fixed ones cut at the chunk size; dynamic ones between
    /// half and one and a half times it (like a content-defined chunker's spread), the same in
    /// every snapshot of the group so that unchanged chunks keep their bytes.
    fn chunk_lengths(&self, group: u32, archive: u32, kind: ArchiveKind) -> Vec<usize> {
        let p = &self.params;
        let mut lengths = Vec::new();
        let mut left = p.archive_size;
        let mut rng = Rng::new(&[p.seed, 1, u64::from(group), u64::from(archive)]);
        while left > 0 {
            let len = match kind {
                ArchiveKind::Fixed => p.chunk_size,
                ArchiveKind::Dynamic => p.chunk_size / 2 + rng.below(p.chunk_size),
            }
            .min(left);
            lengths.push(usize::try_from(len).unwrap_or(usize::MAX));
            left -= len;
        }
        lengths
    }

    /// How many of `n` chunks stay unchanged from one snapshot to the next.
    pub(crate) fn unchanged_count(n: usize, shared_percent: f64) -> usize {
        ((n as f64) * shared_percent / 100.0).round() as usize
    }

    fn group_name(g: u32) -> BackupGroup {
        let text = match g % 3 {
            0 => format!("vm/{}", 100 + g),
            1 => format!("ct/{}", 100 + g),
            _ => format!("host/host-{g}"),
        };
        text.parse()
            .unwrap_or_else(|e| unreachable!("generated group names are valid: {e}"))
    }
}

impl Iterator for Plan {
    type Item = SnapshotPlan;

    fn next(&mut self) -> Option<SnapshotPlan> {
        let p = self.params;
        if self.snapshot == p.snapshots {
            self.snapshot = 0;
            self.group += 1;
            self.versions.clear();
        }
        if self.group == p.groups {
            return None;
        }
        let (g, s) = (self.group, self.snapshot);
        let layout = self.archive_layout();
        let mut archives = Vec::with_capacity(layout.len());
        for (a, (name, kind)) in layout.into_iter().enumerate() {
            let a32 = a as u32;
            let lengths = self.chunk_lengths(g, a32, kind);
            if self.versions.len() <= a {
                self.versions.push(vec![0; lengths.len()]);
            }
            let versions = &mut self.versions[a];
            if s > 0 {
                // Exactly `changed` chunks get this snapshot's version: a partial
                // Fisher-Yates shuffle picks them.
                let n = versions.len();
                let changed = n - Self::unchanged_count(n, p.shared_percent);
                let mut order: Vec<usize> = (0..n).collect();
                let mut rng = Rng::new(&[p.seed, 2, u64::from(g), a as u64, u64::from(s)]);
                for i in 0..changed {
                    let j = i + rng.below((n - i) as u64) as usize;
                    order.swap(i, j);
                    versions[order[i]] = s;
                }
            }
            let chunks = lengths
                .iter()
                .zip(versions.iter())
                .enumerate()
                .map(|(i, (&len, &version))| ChunkSpec {
                    group: g,
                    archive: a32,
                    index: i as u64,
                    version,
                    len,
                })
                .collect();
            archives.push(ArchivePlan {
                name,
                kind,
                size: p.archive_size,
                chunk_size: p.chunk_size,
                chunks,
            });
        }
        let group = Self::group_name(g);
        let ns = match self.namespaces() {
            spaces if spaces.is_empty() => BackupNamespace::root(),
            spaces => match g as usize % (spaces.len() + 1) {
                0 => BackupNamespace::root(),
                i => spaces[i - 1].clone(),
            },
        };
        let blob = match group.ty().as_str() {
            "vm" => Some((
                "qemu-server.conf.blob",
                format!("name: gen{g}\nmemory: 2048\nscsi0: local:vm-{g}-disk-0\n# snapshot {s}\n"),
            )),
            "ct" => Some((
                "pct.conf.blob",
                format!("hostname: gen{g}\nmemory: 1024\n# snapshot {s}\n"),
            )),
            _ => None,
        };
        let time = BackupTime::from_epoch(FIRST_SNAPSHOT + i64::from(s) * DAY + i64::from(g) * 60)
            .unwrap_or_else(|e| unreachable!("generated times are in range: {e}"));
        self.snapshot += 1;
        Some(SnapshotPlan {
            ns,
            group,
            time,
            blob,
            archives,
        })
    }
}

/// The vocabulary compressible data is made of: 512 lowercase words of 2 to 11 letters.
#[derive(Debug, Clone)]
pub(crate) struct Vocabulary {
    words: Vec<Vec<u8>>,
}

impl Vocabulary {
    pub(crate) fn new(seed: u64) -> Self {
        let mut rng = Rng::new(&[seed, 3]);
        let words = (0..512)
            .map(|_| {
                let len = 2 + rng.below(10) as usize;
                (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
            })
            .collect();
        Self { words }
    }
}

/// Fills `out` (cleared first) with the chunk's bytes. The first bytes name the chunk (group,
/// archive, index, version, seed), so that two different chunks never have the same content.
pub(crate) fn chunk_bytes(
    seed: u64,
    spec: &ChunkSpec,
    data: DataKind,
    vocabulary: &Vocabulary,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.reserve(spec.len);
    for part in [
        spec.index,
        u64::from(spec.version),
        u64::from(spec.group),
        u64::from(spec.archive),
        seed,
    ] {
        out.extend_from_slice(&part.to_le_bytes());
    }
    let mut rng = Rng::new(&[
        seed,
        4,
        u64::from(spec.group),
        u64::from(spec.archive),
        spec.index,
        u64::from(spec.version),
    ]);
    match data {
        DataKind::Random => {
            while out.len() < spec.len {
                out.extend_from_slice(&rng.next_u64().to_le_bytes());
            }
        }
        DataKind::Compressible => {
            // Text-like: words of a small vocabulary, a line break every eight or so. zstd
            // level 1 shrinks it about 3:1 with matches and entropy coding, as it does logs and
            // configuration.
            while out.len() < spec.len {
                let mut r = rng.next_u64();
                for _ in 0..6 {
                    out.extend_from_slice(&vocabulary.words[(r & 511) as usize]);
                    out.push(if r & 0xe00 == 0 { b'\n' } else { b' ' });
                    r >>= 10;
                }
            }
        }
    }
    out.truncate(spec.len);
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn params() -> PlanParams {
        PlanParams {
            seed: 1,
            groups: 4,
            snapshots: 5,
            archive_size: 1_000_000,
            chunk_size: 64 << 10,
            kinds: ArchiveKinds::Both,
            shared_percent: 75.0,
            namespaces: true,
        }
    }

    #[test]
    fn plan_covers_every_group_and_snapshot_in_order() {
        let snapshots: Vec<SnapshotPlan> = Plan::new(params()).collect();
        assert_eq!(snapshots.len(), 20);
        let groups: HashSet<String> = snapshots.iter().map(|s| s.group.to_string()).collect();
        assert_eq!(groups.len(), 4);
        for pair in snapshots.windows(2) {
            if pair[0].group == pair[1].group {
                assert!(pair[0].time < pair[1].time);
            }
        }
        let spaces: HashSet<String> = snapshots.iter().map(|s| s.ns.to_string()).collect();
        assert_eq!(spaces.len(), 4, "{spaces:?}");
        for s in &snapshots {
            for a in &s.archives {
                let total: u64 = a.chunks.iter().map(|c| c.len as u64).sum();
                assert_eq!(total, 1_000_000);
            }
        }
    }

    #[test]
    fn exactly_the_shared_share_stays_unchanged() {
        let snapshots: Vec<SnapshotPlan> = Plan::new(params()).collect();
        for pair in snapshots.windows(2) {
            if pair[0].group != pair[1].group {
                continue;
            }
            for (old, new) in pair[0].archives.iter().zip(&pair[1].archives) {
                let n = new.chunks.len();
                let kept = old
                    .chunks
                    .iter()
                    .zip(&new.chunks)
                    .filter(|(o, n)| o == n)
                    .count();
                assert_eq!(kept, Plan::unchanged_count(n, 75.0));
            }
        }
    }

    #[test]
    fn chunk_bytes_are_deterministic_and_distinct() {
        let vocabulary = Vocabulary::new(1);
        let spec = ChunkSpec {
            group: 0,
            archive: 0,
            index: 3,
            version: 0,
            len: 10_000,
        };
        for data in [DataKind::Random, DataKind::Compressible] {
            let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
            chunk_bytes(1, &spec, data, &vocabulary, &mut a);
            chunk_bytes(1, &spec, data, &vocabulary, &mut b);
            chunk_bytes(
                1,
                &ChunkSpec { version: 1, ..spec },
                data,
                &vocabulary,
                &mut c,
            );
            assert_eq!(a.len(), 10_000);
            assert_eq!(a, b);
            assert_ne!(a, c);
        }
    }
}
