//! Writing the store: the plan's snapshots through keepsake-datastore's backup writer, chunk
//! data made on worker threads and handed to the writer in order.

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use keepsake_datastore::{BackupWriter, DataStore, Encryption};
use keepsake_hierarchy::Authid;
use keepsake_manifest::crypt::CryptConfig;
use keepsake_manifest::manifest::ChunkUploadStats;

use crate::data::{
    ArchiveKind, ArchivePlan, ChunkSpec, Plan, PlanParams, SnapshotPlan, Vocabulary, chunk_bytes,
};
use crate::options::{DataKind, Options};

/// What a run wrote.
#[derive(Debug, Clone, Default)]
pub(crate) struct Summary {
    pub(crate) store: String,
    pub(crate) snapshots: u64,
    /// Chunk references of every index (a chunk used twice counts twice).
    pub(crate) chunks: u64,
    /// Chunks written to the chunk store (the rest were already there).
    pub(crate) distinct_chunks: u64,
    /// Bytes of every archive (what a restore would read).
    pub(crate) logical_bytes: u64,
    /// Bytes of the chunk files written (compressed, encrypted).
    pub(crate) stored_bytes: u64,
    pub(crate) elapsed: Duration,
}

impl Summary {
    fn add(&mut self, stats: &ChunkUploadStats) {
        self.chunks += stats.count;
        self.distinct_chunks += stats.count - stats.duplicates;
        self.logical_bytes += stats.size;
        self.stored_bytes += stats.compressed_size;
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "store": self.store,
            "snapshots": self.snapshots,
            "chunks": self.chunks,
            "distinct-chunks": self.distinct_chunks,
            "logical-bytes": self.logical_bytes,
            "stored-bytes": self.stored_bytes,
            "seconds": self.elapsed.as_secs_f64(),
        })
    }

    pub(crate) fn to_text(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        format!(
            "datastore {}: {} snapshots, {} chunks ({} distinct), {:.1} MiB logical, \
             {:.1} MiB stored, {:.1} s ({:.0} MiB/s)",
            self.store,
            self.snapshots,
            self.chunks,
            self.distinct_chunks,
            mib(self.logical_bytes),
            mib(self.stored_bytes),
            secs,
            mib(self.logical_bytes) / secs.max(1e-9),
        )
    }
}

/// Writes the store the options describe, encrypting with `key` when given: the hook the
/// PBS key-file loader feeds (see `key.rs`).
pub(crate) fn generate(options: &Options, key: Option<CryptConfig>) -> Result<Summary> {
    let start = Instant::now();
    let name = match &options.name {
        Some(name) => name.clone(),
        None => options
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "{} has no folder name to use as the datastore name: give --name",
                    options.dir.display()
                )
            })?,
    };
    let lock_root = options.lock_root.clone().unwrap_or_else(default_lock_root);
    let mut builder = DataStore::builder(name.clone(), &options.dir)
        .lock_root(lock_root)
        .sync_level(options.sync_level)
        .chunk_prefix_dirs(options.chunk_prefix_dirs);
    let encryption = match &key {
        Some(key) => {
            builder = builder.key(key.clone());
            Encryption::StoreKey
        }
        None => Encryption::None,
    };
    let store = builder.create().with_context(|| {
        format!(
            "cannot create datastore {name} at {}",
            options.dir.display()
        )
    })?;
    let plan = Plan::new(PlanParams {
        seed: options.seed,
        groups: options.groups,
        snapshots: options.snapshots,
        archive_size: options.archive_size,
        chunk_size: options.chunk_size,
        kinds: options.kinds,
        shared_percent: options.shared_percent,
        namespaces: options.namespaces,
    });
    for ns in plan.namespaces() {
        store
            .create_namespace(&ns)
            .with_context(|| format!("cannot create namespace {ns}"))?;
    }
    let threads = options.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    });
    let maker = ChunkMaker {
        seed: options.seed,
        data: options.data,
        vocabulary: Vocabulary::new(options.seed),
    };
    let owner: Authid = "root@pam".parse()?;
    let total = u64::from(options.groups) * u64::from(options.snapshots);
    let progress = std::io::stderr().is_terminal();
    let mut summary = Summary {
        store: name,
        ..Summary::default()
    };
    for snapshot in plan {
        let stats = write_snapshot(
            &store,
            &owner,
            &snapshot,
            &maker,
            threads,
            encryption,
            key.as_ref(),
        )
        .with_context(|| {
            format!(
                "cannot write snapshot {}{}/{}",
                ns_prefix(&snapshot),
                snapshot.group,
                snapshot.time
            )
        })?;
        summary.add(&stats);
        summary.snapshots += 1;
        if progress {
            eprint!(
                "\rgen-store: {}/{total} snapshots, {:.0} MiB",
                summary.snapshots,
                summary.logical_bytes as f64 / f64::from(1 << 20)
            );
        }
    }
    if progress {
        eprintln!();
    }
    summary.elapsed = start.elapsed();
    Ok(summary)
}

fn ns_prefix(snapshot: &SnapshotPlan) -> String {
    if snapshot.ns.is_root() {
        String::new()
    } else {
        format!("{}/", snapshot.ns.path())
    }
}

/// Without `--lock-root`: the CLI's default when no PBS runs on the host, so that the two
/// exclude each other.
fn default_lock_root() -> PathBuf {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("keepsake-locks-{uid}"))
}

fn write_snapshot(
    store: &DataStore,
    owner: &Authid,
    plan: &SnapshotPlan,
    maker: &ChunkMaker,
    threads: usize,
    encryption: Encryption,
    key: Option<&CryptConfig>,
) -> Result<ChunkUploadStats> {
    let mut writer = store
        .group(&plan.ns, &plan.group)
        .start_backup(owner, plan.time)?;
    if let Some((name, content)) = &plan.blob {
        writer.add_blob(name, content.as_bytes(), encryption)?;
    }
    for archive in &plan.archives {
        write_archive(&mut writer, archive, maker, threads, encryption)
            .with_context(|| format!("archive {}", archive.name))?;
    }
    // The writer signs the manifest with the store's key (the same `key`), as the PBS client
    // does for an encrypted backup.
    debug_assert_eq!(
        key.map(CryptConfig::fingerprint),
        store.crypt_config().map(CryptConfig::fingerprint)
    );
    let stats = writer.chunk_upload_stats();
    writer.finish()?;
    Ok(stats)
}

fn write_archive(
    writer: &mut BackupWriter,
    archive: &ArchivePlan,
    maker: &ChunkMaker,
    threads: usize,
    encryption: Encryption,
) -> Result<()> {
    match archive.kind {
        ArchiveKind::Fixed => {
            let mut index = writer.start_fixed_archive(
                archive.name,
                archive.size,
                archive.chunk_size,
                encryption,
            )?;
            in_order(&archive.chunks, threads, maker, |chunk| {
                Ok(index.push(chunk)?)
            })?;
            index.finish()?;
        }
        ArchiveKind::Dynamic => {
            let mut index = writer.start_dynamic_archive(archive.name, encryption)?;
            in_order(&archive.chunks, threads, maker, |chunk| {
                Ok(index.push(chunk)?)
            })?;
            index.finish()?;
        }
    }
    Ok(())
}

/// Makes a chunk's bytes from its spec.
struct ChunkMaker {
    seed: u64,
    data: DataKind,
    vocabulary: Vocabulary,
}

impl ChunkMaker {
    fn make(&self, spec: &ChunkSpec, out: &mut Vec<u8>) {
        chunk_bytes(self.seed, spec, self.data, &self.vocabulary, out);
    }
}

/// Makes the chunks of `specs` on `threads` workers and gives them to `consume` in order.
/// Worker `w` makes chunks `w`, `w + threads`, ...; each hands them over through a channel of
/// one, and buffers go back to their worker for reuse, so at most about three chunks per worker
/// are in memory whatever the archive's size.
fn in_order(
    specs: &[ChunkSpec],
    threads: usize,
    maker: &ChunkMaker,
    mut consume: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    if threads <= 1 || specs.len() <= 1 {
        let mut buf = Vec::new();
        for spec in specs {
            maker.make(spec, &mut buf);
            consume(&buf)?;
        }
        return Ok(());
    }
    std::thread::scope(|scope| {
        let mut made = Vec::with_capacity(threads);
        let mut returned = Vec::with_capacity(threads);
        for w in 0..threads {
            let (chunk_tx, chunk_rx) = mpsc::sync_channel::<Vec<u8>>(1);
            let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
            made.push(chunk_rx);
            returned.push(back_tx);
            scope.spawn(move || {
                for spec in specs.iter().skip(w).step_by(threads) {
                    let mut buf = back_rx.try_recv().unwrap_or_default();
                    maker.make(spec, &mut buf);
                    // The consumer stopped (an error): nothing more to make.
                    if chunk_tx.send(buf).is_err() {
                        return;
                    }
                }
            });
        }
        for i in 0..specs.len() {
            let w = i % threads;
            let buf = made[w]
                .recv()
                .map_err(|_| anyhow!("chunk worker {w} stopped"))?;
            consume(&buf)?;
            // A worker that finished has dropped its receiver; the buffer is freed here then.
            let _ = returned[w].send(buf);
        }
        // Dropping the receivers (also on an early return above) ends the workers' sends.
        Ok(())
    })
}
