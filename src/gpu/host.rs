//! The GPU kernels' maths run on the host: `kernels/diffbragg_model.cuh`
//! compiled by the C++ compiler (build.rs, `kernels/host_kernel.cpp`) and
//! driven over the same (pixel, part) grid and reduction as the CUDA launch.
//! It exists so tests prove, on machines without a GPU, that the CUDA source
//! computes the same numbers as the Rust CPU kernel. Serial and unoptimised:
//! not a production backend.

use super::backend::{BatchOutput, Mode, PixelBatch};
use super::layout::{self, DbPixel, MODE_FHKL, MODE_FWD, MODE_GRAD};
use crate::error::{Error, Result};
use crate::kernel::PreparedShot;

extern "C" {
    fn db_host_run(
        mode: i32,
        blob: *const u8,
        pixels: *const DbPixel,
        n_pixels: i64,
        f2: *const f64,
        asu: *const u32,
        weights: *const f64,
        k: i32,
        values: *mut f64,
        derivs: *mut f64,
        parts: *mut f64,
        grad: *mut f64,
    ) -> i32;
    fn db_layout_info(out: *mut u64, cap: i32) -> i32;
}

/// Sizes and offsets of the shared structs as the C++ compiler laid them out
/// (compare with [`layout::rust_layout`]).
pub fn host_layout() -> Vec<u64> {
    let mut v = vec![0u64; 64];
    // SAFETY: writes at most `cap` entries into `v`.
    let n = unsafe { db_layout_info(v.as_mut_ptr(), v.len() as i32) };
    v.truncate(n.max(0) as usize);
    v
}

/// Evaluate a batch with the host build of the CUDA maths, each pixel's steps
/// split into `parts` parts (as a launch with that many parts per pixel would).
/// `weights`: FHKL mode, one per pixel of the batch (concatenated).
pub fn evaluate(
    shots: &[&PreparedShot<'_>],
    pixels: &PixelBatch,
    mode: Mode,
    weights: Option<&[f64]>,
    parts: usize,
) -> Result<BatchOutput> {
    let code = match mode {
        Mode::Forward => MODE_FWD,
        Mode::Derivs => MODE_GRAD,
        Mode::FhklGrad => MODE_FHKL,
    };
    let w = super::backend::check_weights(mode, weights, pixels.len())?;
    let lists: Vec<&[crate::kernel::Pixel]> = (0..pixels.n_shots()).map(|i| pixels.shot(i)).collect();
    let (packed, pix) = layout::pack(shots, &lists, code)?;
    let n = pix.len();
    if parts == 0 || parts > i32::MAX as usize {
        return Err(Error::param("parts", "must be ≥ 1"));
    }
    let fhkl = layout::common_fhkl(shots)?;
    let (f2, asu) = (fhkl.f2_slice(), fhkl.asu_slice());
    let row = if code == MODE_GRAD { packed.row } else { 1 };
    let mut values = vec![0.0; n];
    let mut derivs = vec![0.0; n * (row - 1)];
    let mut scratch = vec![0.0; parts * n * row];
    let mut grad = vec![0.0; packed.grad_len.max(1)];
    // SAFETY: every pointer covers the lengths the C++ side reads or writes:
    // the blob and pixels from `pack`, the Fhkl grids of the shots' table, the
    // weights (n), values (n), derivs (n·(row−1)), parts (parts·n·row) and the
    // gradient (n_asu·n_chan, which is what the kernel indexes in FHKL mode).
    let rc = unsafe {
        db_host_run(
            code,
            packed.blob_bytes().as_ptr(),
            pix.as_ptr(),
            n as i64,
            f2.as_ptr(),
            asu.as_ptr(),
            w.map_or(std::ptr::null(), |w| w.as_ptr()),
            parts as i32,
            values.as_mut_ptr(),
            derivs.as_mut_ptr(),
            scratch.as_mut_ptr(),
            grad.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(Error::msg(format!("host kernel rejected its arguments (code {rc})")));
    }
    grad.truncate(packed.grad_len);
    Ok(super::backend::split_output(pixels, &packed, mode, values, &derivs, grad))
}
