//! zstd for blob payloads: level-1 compression kept only when it saves space, and decompression that
//! never produces more than a caller's limit, whatever the frame headers claim.

use std::io::Cursor;

use zstd::zstd_safe::{
    self, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective,
};

use crate::error::{Error, Result};

/// zstd level PBS writes blobs with.
const LEVEL: i32 = 1;

/// The largest window a frame may ask for. zstd's own default for streaming is the same (2^27 =
/// 128 MiB); it is set explicitly because it bounds the memory a hostile frame can make us allocate.
const WINDOW_LOG_MAX: u32 = 27;

/// How far one byte of zstd input can expand at most: every block has a 3-byte header and
/// regenerates at most 128 KiB. A size claim beyond this is a lie and is not used to size a buffer.
const MAX_EXPANSION: u64 = 128 * 1024 / 3 + 1;

/// First output buffer of a stream decode (the frame does not say how large the output is).
const MIN_STREAM_CAPACITY: usize = 16 * 1024;

/// zstd contexts, created on first use and kept for the next call.
#[derive(Default)]
pub(crate) struct Zstd {
    cctx: Option<CCtx<'static>>,
    dctx: Option<DCtx<'static>>,
}

impl Zstd {
    /// Appends the level-1 zstd frame of `data` to `out` if it is shorter than `data`; returns whether
    /// it did. On `false`, `out` is as it was.
    pub(crate) fn compress_if_smaller(&mut self, data: &[u8], out: &mut Vec<u8>) -> bool {
        let start = out.len();
        // Room for the worst case: with less, zstd may give up on input whose frame would still have
        // been smaller than the data, and PBS (which compresses into a growing buffer) keeps those.
        out.reserve_exact(zstd_safe::compress_bound(data.len()));
        let Some(cctx) = self.cctx() else {
            return false;
        };
        let written = {
            let mut cursor = Cursor::new(&mut *out);
            cursor.set_position(start as u64);
            cctx.compress2(&mut cursor, data)
        };
        match written {
            Ok(n) if n < data.len() => true,
            // Not smaller, or a zstd failure: the uncompressed form is always valid, so fall back.
            _ => {
                out.truncate(start);
                if let Some(cctx) = self.cctx.as_mut() {
                    let _ = cctx.reset(ResetDirective::SessionOnly);
                }
                false
            }
        }
    }

    fn cctx(&mut self) -> Option<&mut CCtx<'static>> {
        if self.cctx.is_none() {
            let mut cctx = CCtx::try_create()?;
            cctx.set_parameter(CParameter::CompressionLevel(LEVEL))
                .ok()?;
            self.cctx = Some(cctx);
        }
        self.cctx.as_mut()
    }

    fn dctx(&mut self) -> Result<&mut DCtx<'static>> {
        if self.dctx.is_none() {
            let mut dctx = DCtx::try_create().ok_or_else(|| Error::Decompression {
                reason: "zstd could not allocate a decompression context".to_owned(),
            })?;
            dctx.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
                .map_err(zstd_error)?;
            self.dctx = Some(dctx);
        }
        Ok(self
            .dctx
            .as_mut()
            .unwrap_or_else(|| unreachable!("set above")))
    }

    /// Decodes the zstd frames in `src` into `out` (cleared first), failing with
    /// [`Error::TooLarge`] as soon as the output would pass `limit` bytes.
    ///
    /// When zstd can bound the output from the frame headers (the content size, or for frames
    /// without one, PBS's plain compressed blobs, the block count times the block size) and the bound
    /// is within `limit` and plausible for the input length, the frames are decoded in one call into a
    /// buffer of that size. Anything else is stream-decoded into a buffer that grows up to
    /// `limit + 1` bytes, so the memory a frame can make us use never depends on what it claims.
    pub(crate) fn decompress(&mut self, src: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<()> {
        out.clear();
        let limit64 = limit as u64;
        if let Ok(Some(size)) = zstd_safe::get_frame_content_size(src) {
            if size > limit64 {
                return Err(Error::TooLarge {
                    len: size,
                    limit: limit64,
                });
            }
        }
        let plausible = (src.len() as u64).saturating_mul(MAX_EXPANSION);
        // An empty input is zero frames to zstd's one-shot decoder; PBS's stream reader (and ours)
        // wants at least one, so it goes the stream way and fails as truncated.
        if let (false, Ok(bound)) = (src.is_empty(), zstd_safe::decompress_bound(src)) {
            if bound <= limit64 && bound <= plausible {
                out.reserve_exact(bound as usize);
                let dctx = self.dctx()?;
                if dctx.decompress(out, src).is_ok() {
                    return Ok(());
                }
                // A frame that lied about its size: let the stream decoder name the problem.
                out.clear();
            }
        }
        self.decompress_stream(src, limit, out)
    }

    fn decompress_stream(&mut self, src: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<()> {
        let dctx = self.dctx()?;
        dctx.reset(ResetDirective::SessionOnly)
            .map_err(zstd_error)?;
        let hard_cap = limit.saturating_add(1);
        let first = src
            .len()
            .saturating_mul(4)
            .max(MIN_STREAM_CAPACITY)
            .min(hard_cap);
        if out.capacity() < first {
            out.reserve(first);
        }
        let mut input = InBuffer::around(src);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= hard_cap {
                    let _ = dctx.reset(ResetDirective::SessionOnly);
                    return Err(Error::TooLarge {
                        len: out.len() as u64,
                        limit: limit as u64,
                    });
                }
                let grow = out.capacity().min(hard_cap - out.capacity());
                out.reserve_exact(grow);
            }
            let pos = out.len();
            let hint = {
                let mut window = Cursor::new(&mut *out);
                window.set_position(pos as u64);
                let mut output = OutBuffer::around(&mut window);
                dctx.decompress_stream(&mut output, &mut input)
            };
            let hint = match hint {
                Ok(hint) => hint,
                Err(code) => {
                    let _ = dctx.reset(ResetDirective::SessionOnly);
                    return Err(zstd_error(code));
                }
            };
            if out.len() > limit {
                let _ = dctx.reset(ResetDirective::SessionOnly);
                return Err(Error::TooLarge {
                    len: out.len() as u64,
                    limit: limit as u64,
                });
            }
            let input_done = input.pos() == src.len();
            let output_full = out.len() == out.capacity();
            if input_done && hint == 0 {
                return Ok(());
            }
            if input_done && !output_full && out.len() == pos {
                let _ = dctx.reset(ResetDirective::SessionOnly);
                return Err(Error::Decompression {
                    reason: "the zstd frame is truncated".to_owned(),
                });
            }
        }
    }
}

fn zstd_error(code: zstd_safe::ErrorCode) -> Error {
    Error::Decompression {
        reason: zstd_safe::get_error_name(code).to_owned(),
    }
}
