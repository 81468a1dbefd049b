//! `keepsake demo DIR`: a sample datastore with everything an operator meets, then its tree.
//!
//! Everything is written through the datastore API (the backup writer inserts real chunks and
//! writes real blobs, indexes and manifests, as PBS would read them), except the unfinished
//! snapshot, which is what a backup that crashed leaves: a folder with files and no manifest.

use keepsake_datastore::{Access, DataStore, Encryption, Group};
use keepsake_manifest::blob::Compression;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use keepsake_backend::{BackendPath, WriteMode};
use keepsake_hierarchy::{
    Authid, BackupDir, BackupGroup, BackupNamespace, BackupTime, CLIENT_LOG_BLOB_NAME,
};
use keepsake_manifest::blob::DataBlob;
use keepsake_manifest::manifest::{VerifyOutcome, VerifyState};

use super::Ctx;
use super::inspect::{read_tree, tree_lines};
use crate::error::{Decided, UsageError};
use crate::open::StoreSpec;

/// 2024-06-01T02:00:00Z, the first demo backup.
const FIRST: i64 = 1_717_207_200;
const DAY: i64 = 86_400;
/// Chunk size of the demo disk images.
const CHUNK: u64 = 64 * 1024;

/// A snapshot to make: day number, and what it holds.
#[derive(Clone, Copy)]
struct Plan {
    day: i64,
    finished: bool,
    protected: bool,
    notes: Option<&'static str>,
    verified: bool,
}

const fn done(day: i64) -> Plan {
    Plan {
        day,
        finished: true,
        protected: false,
        notes: None,
        verified: false,
    }
}

/// Deterministic bytes (xorshift64*), so that every demo store is the same and chunks
/// deduplicate across days where the data repeats.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn time(day: i64) -> Result<BackupTime> {
    Ok(BackupTime::from_epoch(FIRST + day * DAY)?)
}

/// Writes one finished snapshot with files that fit the group's type.
fn backup(store: &DataStore, group: &Group, owner: &Authid, plan: Plan) -> Result<()> {
    let day = plan.day;
    let mut writer = group.start_backup(owner, time(day)?)?;
    let id = group.name().id().to_string();
    match group.name().ty().as_str() {
        "vm" => {
            writer.add_blob(
                "qemu-server.conf.blob",
                format!("name: {id}\nmemory: 4096\ncores: 2\nscsi0: local:vm-{id}-disk-0\n")
                    .as_bytes(),
                Encryption::None,
            )?;
            // Four chunks: the first three repeat every day (deduplicated), the last changes.
            let mut disk = Vec::new();
            for i in 0..4u64 {
                let seed = if i == 3 { 1000 + day as u64 } else { i };
                disk.extend(bytes(seed, CHUNK as usize));
            }
            writer.add_fixed_archive("drive-scsi0.img.fidx", &disk, CHUNK, Encryption::None)?;
        }
        "ct" => {
            writer.add_blob(
                "pct.conf.blob",
                format!("hostname: ct{id}\nmemory: 1024\n").as_bytes(),
                Encryption::None,
            )?;
            let chunks: Vec<Vec<u8>> = (0..3u64)
                .map(|i| {
                    bytes(
                        2000 + i * 7 + u64::from(i == 2) * day as u64,
                        20_000 + 3_000 * i as usize,
                    )
                })
                .collect();
            writer.add_dynamic_archive(
                "root.pxar.didx",
                chunks.iter().map(Vec::as_slice),
                Encryption::None,
            )?;
            writer.add_dynamic_archive(
                "catalog.pcat1.didx",
                [bytes(3000 + day as u64, 4_096)].iter().map(Vec::as_slice),
                Encryption::None,
            )?;
        }
        _ => {
            let chunks: Vec<Vec<u8>> = (0..2u64)
                .map(|i| bytes(4000 + i + day as u64, 30_000))
                .collect();
            writer.add_dynamic_archive(
                "root.pxar.didx",
                chunks.iter().map(Vec::as_slice),
                Encryption::None,
            )?;
        }
    }
    if let Some(notes) = plan.notes {
        writer.manifest_mut().set_notes(Some(notes));
    }
    let snapshot = writer.finish()?;
    if group.name().ty().as_str() == "vm" {
        // PBS uploads the client log after the manifest, outside it.
        let log = DataBlob::encode(
            format!("backup of vm {id} day {day}: ok\n").as_bytes(),
            None,
            Compression::Zstd,
        )?;
        let file = snapshot.dir().file_path(group.ns(), CLIENT_LOG_BLOB_NAME)?;
        store.backend().write(
            &BackendPath::new(&file)?,
            log.as_bytes(),
            WriteMode::CreateOnly,
        )?;
    }
    if plan.verified {
        snapshot.set_verify_state(&VerifyState {
            upid: format!(
                "UPID:demo:00000d05:00000001:00000000:{:08X}:verify:{}:root@pam:",
                FIRST + day * DAY + 3600,
                store.name()
            ),
            state: VerifyOutcome::Ok,
        })?;
    }
    if plan.protected {
        snapshot.set_protected(true)?;
    }
    Ok(())
}

/// What a crashed backup leaves: the snapshot folder with a config blob and no manifest.
fn unfinished(store: &DataStore, group: &Group, owner: &Authid, day: i64) -> Result<()> {
    drop(group.create_locked(owner)?);
    let dir = BackupDir::new(group.name().clone(), time(day)?);
    let folder = dir.relative_path(group.ns());
    store
        .backend()
        .create_dir_all(&BackendPath::new(&folder)?)?;
    let blob = DataBlob::encode(b"memory: 4096\n", None, Compression::Zstd)?;
    let file = dir.file_path(group.ns(), "qemu-server.conf.blob")?;
    store.backend().write(
        &BackendPath::new(&file)?,
        blob.as_bytes(),
        WriteMode::CreateOnly,
    )?;
    Ok(())
}

/// `keepsake demo DIR`.
pub(crate) fn demo(ctx: &Ctx<'_>, dir: &Path) -> Result<ExitCode> {
    if let Some(store) = &ctx.cli.global.store {
        if store != dir {
            return Err(UsageError(format!(
                "demo makes its datastore at DIR ({}); drop --store {}",
                dir.display(),
                store.display()
            ))
            .into());
        }
    }
    let spec = StoreSpec::from_args(&ctx.cli.global, Some(dir), Access::ReadWrite)?;
    if spec.path.is_dir() && std::fs::read_dir(&spec.path)?.next().is_some() {
        return Err(Decided::refused(format!(
            "{} is not empty: demo makes a new datastore in a missing or empty folder",
            spec.path.display()
        )));
    }
    // The sample holds no chunk-heavy data: chunk inserts make the prefix folders they need.
    let session = spec.create(false)?;
    let store = &session.store;

    let root_pam: Authid = "root@pam".parse()?;
    let backup_user: Authid = "backup@pbs".parse()?;
    let token: Authid = "backup@pbs!nightly".parse()?;
    let root = BackupNamespace::root();
    let prod: BackupNamespace = "prod".parse()?;
    let site_a: BackupNamespace = "prod/site-a".parse()?;
    let dev: BackupNamespace = "dev".parse()?;
    for ns in [&dev, &prod, &site_a] {
        store.create_namespace(ns)?;
    }

    let vm100 = Plan {
        protected: true,
        notes: Some("first full backup\nkeep until the audit"),
        ..done(0)
    };
    let vm100_verified = Plan {
        verified: true,
        ..done(1)
    };
    let vm100_notes = Plan {
        notes: Some("before the kernel upgrade"),
        ..done(3)
    };
    let groups: Vec<(&BackupNamespace, &str, &Authid, Vec<Plan>)> = vec![
        (
            &root,
            "vm/100",
            &root_pam,
            vec![
                vm100,
                vm100_verified,
                done(2),
                vm100_notes,
                done(4),
                done(5),
                Plan {
                    finished: false,
                    ..done(6)
                },
            ],
        ),
        (
            &root,
            "ct/200",
            &token,
            vec![done(2), done(3), done(4), done(5)],
        ),
        (&root, "host/web", &root_pam, vec![done(4), done(5)]),
        (
            &prod,
            "vm/101",
            &backup_user,
            vec![
                done(3),
                Plan {
                    protected: true,
                    ..done(5)
                },
            ],
        ),
        (&site_a, "ct/300", &token, vec![done(5)]),
        (
            &site_a,
            "host/gateway",
            &backup_user,
            vec![Plan {
                finished: false,
                ..done(6)
            }],
        ),
    ];
    let total: usize = groups.iter().map(|g| g.3.len()).sum();
    let bar = ctx.out.bar(total as u64, "writing demo backups");
    for (ns, name, owner, plans) in &groups {
        let group = store.group(ns, &name.parse::<BackupGroup>()?);
        for plan in plans {
            bar.set_message(group.relative_path());
            if plan.finished {
                backup(store, &group, owner, *plan)
            } else {
                unfinished(store, &group, owner, plan.day)
            }
            .with_context(|| format!("demo backup of `{}`", group.relative_path()))?;
            bar.inc(1);
        }
    }
    store
        .group(&root, &"vm/100".parse()?)
        .set_notes("database server\nmaintenance window: Sundays 02:00")?;
    bar.finish_and_clear();

    let tree = read_tree(store, &root)?;
    ctx.out.emit(&tree, || {
        let title = format!("demo datastore {}", session.spec.describe());
        for line in tree_lines(&title, &tree) {
            ctx.out.line(line)?;
        }
        ctx.out.line("")?;
        ctx.out.line("Try:")?;
        // The hints must reach the same datastore: an S3 demo's keep its S3 options.
        let mut store_arg = format!("--store {}", session.spec.path.display());
        let global = &ctx.cli.global;
        if let Some(bucket) = &global.s3_bucket {
            if let Some(endpoint) = &global.s3_endpoint {
                store_arg.push_str(&format!(" --s3-endpoint {endpoint}"));
            }
            store_arg.push_str(&format!(" --s3-bucket {bucket}"));
            if let Some(region) = &global.s3_region {
                store_arg.push_str(&format!(" --s3-region {region}"));
            }
            if global.multi_host {
                store_arg.push_str(" --multi-host");
            }
        }
        if let Some(name) = &global.name {
            store_arg.push_str(&format!(" --name {name}"));
        }
        if let Some(lock_root) = &global.lock_root {
            store_arg.push_str(&format!(" --lock-root {}", lock_root.display()));
        }
        for example in [
            "groups --recursive",
            "snapshots vm/100",
            "show vm/100/2024-06-01T02:00:00Z",
            "prune vm/100 --keep-last 2 --dry-run",
            "locks vm/100",
        ] {
            ctx.out.line(format!("  keepsake {store_arg} {example}"))?;
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_bytes_are_deterministic_and_varied() {
        assert_eq!(bytes(7, 100), bytes(7, 100));
        assert_ne!(bytes(7, 100), bytes(8, 100));
        assert_eq!(bytes(1, 13).len(), 13);
        let b = bytes(3, 4096);
        assert!(b.iter().filter(|&&x| x == 0).count() < 100);
    }

    #[test]
    fn first_backup_is_june_first() {
        assert_eq!(time(0).unwrap().to_string(), "2024-06-01T02:00:00Z");
    }
}
