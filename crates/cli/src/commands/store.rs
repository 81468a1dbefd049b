//! `keepsake init` and `keepsake refresh`: making a datastore and rebuilding an S3 cache.

use std::process::ExitCode;

use anyhow::{Context, Result};
use keepsake_backend::{Backend, BackendPath, WriteMode};
use keepsake_datastore::{Access, CHUNK_DIR_NAME, LOCK_FILE_NAME};
use serde::Serialize;

use super::Ctx;
use crate::open::StoreSpec;

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Created {
    pub(crate) store: String,
    pub(crate) path: String,
    pub(crate) s3_bucket: Option<String>,
}

impl Created {
    pub(crate) fn of(spec: &StoreSpec) -> Self {
        Self {
            store: spec.name.clone(),
            path: spec.path.display().to_string(),
            s3_bucket: spec.s3.as_ref().map(|s| s.bucket.clone()),
        }
    }
}

/// `keepsake init`.
pub(crate) fn init(ctx: &Ctx<'_>, chunk_prefix_dirs: bool) -> Result<ExitCode> {
    let spec = StoreSpec::from_args(&ctx.cli.global, None, Access::ReadWrite)?;
    let spinner = ctx.out.spinner(if chunk_prefix_dirs {
        "creating the datastore and its 65,536 chunk folders"
    } else {
        "creating the datastore"
    });
    let session = spec.create(chunk_prefix_dirs);
    spinner.finish_and_clear();
    let session = session?;
    tracing::info!(store = %spec.describe(), "created datastore");
    let report = Created::of(&session.spec);
    ctx.out.emit(&report, || {
        ctx.out
            .done(format!("created datastore {}", session.spec.describe()))?;
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Refreshed {
    store: String,
    listed: u64,
    downloaded: u64,
    skipped_markers: u64,
    skipped_invalid: u64,
}

/// `keepsake refresh`: downloads the datastore's metadata from the bucket into the cache
/// (PBS's s3-refresh), then marks the cache folder as a datastore (`.chunks`, `.lock`) so that it
/// opens.
pub(crate) fn refresh(ctx: &Ctx<'_>) -> Result<ExitCode> {
    let spec = StoreSpec::from_args(&ctx.cli.global, None, Access::ReadWrite)?;
    let cached = spec.cached_for_refresh()?;
    let spinner = ctx.out.spinner("downloading metadata from the bucket");
    let report = cached.refresh();
    spinner.finish_and_clear();
    let report = report.with_context(|| format!("cannot refresh datastore {}", spec.describe()))?;
    let cache = cached.cache();
    cache
        .create_dir_all(&BackendPath::new(CHUNK_DIR_NAME)?)
        .context("cannot make the cache's chunk folder")?;
    match cache.write(
        &BackendPath::new(LOCK_FILE_NAME)?,
        b"",
        WriteMode::CreateOnly,
    ) {
        Ok(_) | Err(keepsake_backend::Error::AlreadyExists { .. }) => {}
        Err(e) => return Err(e).context("cannot write the cache's lock file"),
    }
    tracing::info!(?report, "refreshed");
    let out = Refreshed {
        store: spec.name.clone(),
        listed: report.listed,
        downloaded: report.downloaded,
        skipped_markers: report.skipped_markers,
        skipped_invalid: report.skipped_invalid,
    };
    ctx.out.emit(&out, || {
        ctx.out.done(format!(
            "refreshed the cache of {}: {} objects listed, {} downloaded",
            spec.describe(),
            out.listed,
            out.downloaded
        ))?;
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
