//! The CUDA backend: the kernels of `kernels/` compiled with NVRTC at run time
//! (cached PTX, see [`super::ptx`]) and launched through cudarc 0.19.
//!
//! Per evaluation: one upload of the packed shots ([`super::layout::pack`],
//! through a pinned staging buffer), then for each chunk of pixels one launch
//! of `db_forward`/`db_gradient`/`db_fhkl_gradient` over (pixel, part)
//! threads (+ `db_reduce` when a pixel's steps are split into K > 1 parts),
//! and one download of the chunk's rows into pinned memory. The stream is
//! synchronised after each chunk, so a kernel fault is reported by the call
//! that caused it, with the kernel's name.
//!
//! Residency: the structure-factor grids stay on the device while the table's
//! content is unchanged (keyed by a hash of it); the pixels of a
//! [`PixelBatch`] stay on the device while the batch lives (and fits the
//! budget, a quarter of the device memory); larger batches stream through
//! pinned buffers, chunk by chunk.
//!
//! Ownership (pain point #8): every device buffer and module holds an `Arc`
//! to the stream and context, so the context cannot be released before them;
//! the fields are also declared so that the buffers drop first.

use super::backend::{check_weights, split_output, Backend, BatchOutput, Mode, PixelBatch};
use super::layout::{self, Packed, MODE_FHKL, MODE_FWD, MODE_GRAD};
use super::ptx;
use crate::dist::{device_for, Comm};
use crate::error::{Error, Result};
use crate::kernel::{FhklTable, Pixel, PreparedShot};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PinnedHostSlice,
    PushKernelArg, ValidAsZeroBits,
};
use std::sync::{Arc, Mutex, Weak};

/// Threads per block.
const BLOCK: u32 = 128;
/// Largest scratch for the K parts of a chunk (bytes).
const PARTS_BUDGET: usize = 256 << 20;
/// Most parts per pixel.
const MAX_PARTS: usize = 32;
/// Most pixels per launch.
const MAX_CHUNK: usize = 1 << 22;

fn drv<T>(what: &str, r: std::result::Result<T, cudarc::driver::DriverError>) -> Result<T> {
    r.map_err(|e| Error::msg(format!("CUDA: {what}: {e}")))
}

struct FhklDev {
    key: (u64, usize, usize),
    f2: CudaSlice<u8>,
    asu: CudaSlice<u8>,
}

struct Resident {
    id: u64,
    token: Weak<()>,
    bytes: usize,
    pix: CudaSlice<u8>,
}

/// Device buffers, grown on demand and reused across evaluations.
#[derive(Default)]
struct State {
    fhkl: Option<FhklDev>,
    resident: Vec<Resident>,
    blob: Option<CudaSlice<u8>>,
    pix_chunk: Option<CudaSlice<u8>>,
    weights: Option<CudaSlice<u8>>,
    values: Option<CudaSlice<f64>>,
    derivs: Option<CudaSlice<f64>>,
    parts: Option<CudaSlice<f64>>,
    grad: Option<CudaSlice<f64>>,
    up: Option<PinnedHostSlice<u8>>,
    down: Option<PinnedHostSlice<f64>>,
}

struct Funcs {
    forward: CudaFunction,
    gradient: CudaFunction,
    fhkl: CudaFunction,
    reduce: CudaFunction,
}

/// A CUDA GPU running the kernels.
pub struct CudaBackend {
    // Declaration order = drop order: buffers, then functions (module), then stream, then context.
    state: Mutex<State>,
    funcs: Funcs,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    ordinal: usize,
    device_name: String,
    cc: u32,
    arch: u32,
    sm_count: usize,
    total_mem: usize,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Number of visible CUDA devices; an error naming the cause when there is no
/// usable driver (the CUDA driver library is loaded dynamically).
pub fn device_count() -> Result<usize> {
    // SAFETY: dlopen probe of libcuda.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::msg(
            "no CUDA driver: libcuda.so could not be loaded (no NVIDIA driver on this machine, or it is not on the loader path)",
        ));
    }
    // cudarc panics when a driver symbol is missing (very old driver): turn that into an error.
    let r = std::panic::catch_unwind(CudaContext::device_count)
        .map_err(|_| Error::msg("the CUDA driver library lacks a needed function (driver too old?)"))?;
    let n = drv("cuInit/cuDeviceGetCount", r)?;
    Ok(n.max(0) as usize)
}

impl CudaBackend {
    /// Open device `ordinal`, compile (or load cached) kernels. Logs nothing.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        let n = device_count()?;
        if ordinal >= n {
            return Err(Error::msg(format!("CUDA device {ordinal} requested but {n} visible")));
        }
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| Error::msg("the CUDA driver library lacks a needed function (driver too old?)"))?;
        let ctx = drv(&format!("opening device {ordinal}"), ctx)?;
        let device_name = drv("device name", ctx.name())?;
        let (maj, min) = drv("compute capability", ctx.compute_capability())?;
        let cc = (maj * 10 + min) as u32;
        let sm_count = drv(
            "multiprocessor count",
            ctx.attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
        )? as usize;
        let total_mem = drv("memory size", ctx.total_mem())?;
        let arch = ptx::choose_arch(cc, &ptx::nvrtc_archs()?)?;
        let (text, _cached) = ptx::cached_ptx(arch)?;
        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(text)).map_err(|e| {
            Error::msg(format!(
                "CUDA: loading the kernels' PTX (compute_{arch}) failed: {e}. If this is \
                 CUDA_ERROR_UNSUPPORTED_PTX_VERSION, the driver is older than NVRTC: use an NVRTC \
                 no newer than the driver"
            ))
        })?;
        let f = |name: &str| drv(&format!("kernel {name}"), module.load_function(name));
        let funcs = Funcs {
            forward: f("db_forward")?,
            gradient: f("db_gradient")?,
            fhkl: f("db_fhkl_gradient")?,
            reduce: f("db_reduce")?,
        };
        let stream = drv("creating a stream", ctx.new_stream())?;
        // One stream and explicit synchronisation: per-buffer event tracking is not needed.
        // SAFETY: no buffer exists yet and all work goes to `stream`.
        unsafe { ctx.disable_event_tracking() };
        Ok(CudaBackend {
            state: Mutex::new(State::default()),
            funcs,
            stream,
            ctx,
            ordinal,
            device_name,
            cc,
            arch,
            sm_count,
            total_mem,
        })
    }

    /// The device of this process: node-local rank modulo the visible device
    /// count. Logs the mapping on stderr.
    pub fn for_rank(comm: &dyn Comm) -> Result<CudaBackend> {
        let n = device_count()?;
        let Some(ordinal) = device_for(comm, n) else {
            return Err(Error::msg("the CUDA driver sees no device (check CUDA_VISIBLE_DEVICES)"));
        };
        let b = CudaBackend::new(ordinal)?;
        eprintln!("device: {} → CUDA device {ordinal} of {n} visible: {}", comm.describe(), b.describe());
        Ok(b)
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Compute capability as e.g. 90, and the PTX architecture compiled for.
    pub fn compute_capability(&self) -> (u32, u32) {
        (self.cc, self.arch)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        st: &mut State,
        packed: &Packed,
        pix: &[layout::DbPixel],
        pixels: &PixelBatch,
        fhkl: &FhklTable,
        mode: Mode,
        weights: Option<&[f64]>,
    ) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
        let n = pix.len();
        let grad_mode = mode == Mode::Derivs;
        let row = if grad_mode { packed.row } else { 1 };
        let nd = row - 1;
        let mut values = vec![0.0; if mode == Mode::FhklGrad { 0 } else { n }];
        let mut derivs = vec![0.0; n * nd];
        let s = &self.stream;

        // Structure factors: resident while the table's content is unchanged.
        let key = (table_hash(fhkl), fhkl.f2_slice().len(), fhkl.asu_slice().len());
        if st.fhkl.as_ref().is_none_or(|f| f.key != key) {
            st.fhkl = None; // free the old grids first
            st.fhkl = Some(FhklDev {
                key,
                f2: drv("uploading |F|²", s.clone_htod(as_bytes(fhkl.f2_slice())))?,
                asu: drv("uploading ASU ids", s.clone_htod(as_bytes(fhkl.asu_slice())))?,
            });
        }

        // Pixels: resident (whole batch) when they fit the budget, else streamed by chunk.
        st.resident.retain(|r| r.token.strong_count() > 0);
        let pix_bytes = as_bytes(pix);
        let budget = self.total_mem / 4;
        let resident = if pix_bytes.len() <= budget {
            if !st.resident.iter().any(|r| r.id == pixels.id()) {
                // Evict the oldest until the new batch fits.
                while st.resident.iter().map(|r| r.bytes).sum::<usize>() + pix_bytes.len() > budget {
                    st.resident.remove(0);
                }
                let buf = drv("uploading pixels", s.clone_htod(pix_bytes))?;
                st.resident.push(Resident {
                    id: pixels.id(),
                    token: pixels.token(),
                    bytes: pix_bytes.len(),
                    pix: buf,
                });
            }
            true
        } else {
            false
        };

        // Chunking and parts per pixel.
        let min_steps = packed.min_steps.max(1);
        let mut chunk = n.clamp(1, MAX_CHUNK);
        let target = self.sm_count.max(1) * 2048;
        let parts_for = |c: usize| target.div_ceil(c.max(1)).clamp(1, MAX_PARTS.min(min_steps));
        while chunk > 1024 && parts_for(chunk) * chunk * row * 8 > PARTS_BUDGET {
            chunk /= 2;
        }
        let k_parts = parts_for(chunk);

        // Buffers.
        let blob = packed.blob_bytes();
        let up_len = blob.len() + if resident { 0 } else { chunk * 16 } + chunk * 8;
        grow_pinned(&self.ctx, &mut st.up, up_len, true)?;
        grow_pinned(&self.ctx, &mut st.down, chunk * row.max(1), false)?;
        grow(s, &mut st.blob, blob.len())?;
        grow(s, &mut st.pix_chunk, if resident { 16 } else { chunk * 16 })?;
        grow(s, &mut st.weights, chunk * 8)?;
        grow(s, &mut st.values, chunk)?;
        grow(s, &mut st.derivs, (chunk * nd).max(1))?;
        grow(s, &mut st.parts, if k_parts > 1 { k_parts * chunk * row } else { 1 })?;
        grow(s, &mut st.grad, packed.grad_len.max(1))?;
        let State {
            fhkl: Some(fd),
            resident: res,
            blob: Some(dblob),
            pix_chunk: Some(dpix),
            weights: Some(dw),
            values: Some(dv),
            derivs: Some(dd),
            parts: Some(dp),
            grad: Some(dg),
            up: Some(up),
            down: Some(down),
        } = st
        else {
            unreachable!("buffers allocated above")
        };
        let up = drv("pinned buffer", up.as_mut_slice())?;
        let down = drv("pinned buffer", down.as_mut_slice())?;
        let (up_blob, up_rest) = up.split_at_mut(blob.len());
        up_blob.copy_from_slice(blob);
        drv("uploading shots", s.memcpy_htod(&*up_blob, &mut dblob.slice_mut(0..blob.len())))?;
        if mode == Mode::FhklGrad {
            drv("zeroing the gradient", s.memset_zeros(dg))?;
        }
        let res_pix = res.iter().find(|r| r.id == pixels.id()).map(|r| &r.pix);

        let func = match mode {
            Mode::Forward => &self.funcs.forward,
            Mode::Derivs => &self.funcs.gradient,
            Mode::FhklGrad => &self.funcs.fhkl,
        };
        let fname = match mode {
            Mode::Forward => "db_forward",
            Mode::Derivs => "db_gradient",
            Mode::FhklGrad => "db_fhkl_gradient",
        };
        let mut c0 = 0;
        while c0 < n {
            let c1 = (c0 + chunk).min(n);
            let m = c1 - c0;
            let (up_pix, up_w) = up_rest.split_at_mut(if resident { 0 } else { chunk * 16 });
            let pix_view = match (resident, res_pix) {
                (true, Some(rp)) => rp.slice(c0 * 16..c1 * 16),
                _ => {
                    up_pix[..m * 16].copy_from_slice(&pix_bytes[c0 * 16..c1 * 16]);
                    drv(
                        "uploading pixels",
                        s.memcpy_htod(&up_pix[..m * 16], &mut dpix.slice_mut(0..m * 16)),
                    )?;
                    dpix.slice(0..m * 16)
                }
            };
            if let Some(w) = weights {
                let wb = as_bytes(&w[c0..c1]);
                up_w[..wb.len()].copy_from_slice(wb);
                drv("uploading weights", s.memcpy_htod(&up_w[..wb.len()], &mut dw.slice_mut(0..wb.len())))?;
            }
            let (n_i, k_i, row_i) = (m as i64, k_parts as i32, row as i64);
            let cfg = launch_cfg(m * k_parts)?;
            let mut b = s.launch_builder(func);
            b.arg(&*dblob)
                .arg(&pix_view)
                .arg(&n_i)
                .arg(&fd.f2)
                .arg(&fd.asu)
                .arg(&*dw)
                .arg(&k_i)
                .arg(&row_i)
                .arg(&mut *dv)
                .arg(&mut *dd)
                .arg(&mut *dp)
                .arg(&mut *dg);
            // SAFETY: the argument list matches the kernel's signature in
            // kernels/diffbragg.cu; every buffer covers what the kernel indexes:
            // pixels m records, weights m, values m, derivs m·(row−1), parts
            // K·m·row (K > 1), grad n_asu·n_chan; the blob is the packed batch.
            drv(&format!("launching {fname}"), unsafe { b.launch(cfg) })?;
            if k_parts > 1 {
                let cfg = launch_cfg(m * row)?;
                let mut b = s.launch_builder(&self.funcs.reduce);
                b.arg(&*dp).arg(&n_i).arg(&row_i).arg(&k_i).arg(&mut *dv).arg(&mut *dd);
                // SAFETY: parts holds K·m·row values, values m, derivs m·(row−1).
                drv("launching db_reduce", unsafe { b.launch(cfg) })?;
            }
            if mode != Mode::FhklGrad {
                let (dv_host, dd_host) = down.split_at_mut(chunk);
                drv("downloading values", s.memcpy_dtoh(&dv.slice(0..m), &mut dv_host[..m]))?;
                if nd > 0 {
                    drv(
                        "downloading derivatives",
                        s.memcpy_dtoh(&dd.slice(0..m * nd), &mut dd_host[..m * nd]),
                    )?;
                }
                drv(&format!("kernel {fname}"), s.synchronize())?;
                values[c0..c1].copy_from_slice(&dv_host[..m]);
                derivs[c0 * nd..c1 * nd].copy_from_slice(&dd_host[..m * nd]);
            } else {
                drv(&format!("kernel {fname}"), s.synchronize())?;
            }
            c0 = c1;
        }
        let grad = if mode == Mode::FhklGrad && packed.grad_len > 0 {
            drv("downloading the Fhkl gradient", s.clone_dtoh(&dg.slice(0..packed.grad_len)))?
        } else {
            vec![]
        };
        drv("synchronising", s.synchronize())?;
        drv("context error state", self.ctx.check_err())?;
        Ok((values, derivs, grad))
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn describe(&self) -> String {
        format!(
            "cuda:{} {} (sm_{}, {} SMs, {:.1} GiB; PTX compute_{})",
            self.ordinal,
            self.device_name,
            self.cc,
            self.sm_count,
            self.total_mem as f64 / (1u64 << 30) as f64,
            self.arch
        )
    }

    fn evaluate(
        &self,
        shots: &[&PreparedShot<'_>],
        pixels: &PixelBatch,
        mode: Mode,
        weights: Option<&[f64]>,
    ) -> Result<BatchOutput> {
        if shots.len() != pixels.n_shots() {
            return Err(Error::param(
                "pixels",
                format!("{} pixel lists for {} shots", pixels.n_shots(), shots.len()),
            ));
        }
        let w = check_weights(mode, weights, pixels.len())?;
        let code = match mode {
            Mode::Forward => MODE_FWD,
            Mode::Derivs => MODE_GRAD,
            Mode::FhklGrad => MODE_FHKL,
        };
        let lists: Vec<&[Pixel]> = (0..pixels.n_shots()).map(|i| pixels.shot(i)).collect();
        let (packed, pix) = layout::pack(shots, &lists, code)?;
        if pix.is_empty() {
            // Nothing to launch, and the driver refuses 0-byte allocations
            // (e.g. laue mode's λ̄ pass of a shot without spots).
            return Ok(split_output(pixels, &packed, mode, vec![], &[], vec![0.0; packed.grad_len]));
        }
        let fhkl = layout::common_fhkl(shots)?;
        let mut st =
            self.state.lock().map_err(|_| Error::msg("CUDA backend poisoned by an earlier panic"))?;
        let (values, derivs, grad) = self.run(&mut st, &packed, &pix, pixels, fhkl, mode, w)?;
        Ok(split_output(pixels, &packed, mode, values, &derivs, grad))
    }
}

fn launch_cfg(threads: usize) -> Result<LaunchConfig> {
    let blocks = threads.div_ceil(BLOCK as usize).max(1);
    if blocks > i32::MAX as usize {
        return Err(Error::msg("too many threads for one launch"));
    }
    Ok(LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 })
}

fn grow<T: DeviceRepr + ValidAsZeroBits>(
    s: &Arc<CudaStream>,
    slot: &mut Option<CudaSlice<T>>,
    len: usize,
) -> Result<()> {
    let len = len.max(1);
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = None; // free before allocating the larger one
        *slot = Some(drv(&format!("allocating {len} elements"), s.alloc_zeros::<T>(len))?);
    }
    Ok(())
}

fn grow_pinned<T: DeviceRepr + ValidAsZeroBits>(
    ctx: &Arc<CudaContext>,
    slot: &mut Option<PinnedHostSlice<T>>,
    len: usize,
    write_combined: bool,
) -> Result<()> {
    let len = len.max(1);
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = None;
        // Write-combined memory is fast to fill and to upload from, slow to read: uploads only.
        let flags = if write_combined { cudarc::driver::sys::CU_MEMHOSTALLOC_WRITECOMBINED } else { 0 };
        // SAFETY: pinned host memory, uninitialised; every byte read is written first.
        let p = unsafe { ctx.alloc_pinned_with_flags::<T>(len, flags) };
        *slot = Some(drv("allocating pinned host memory", p)?);
    }
    Ok(())
}

/// A plain-data slice as bytes.
fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: T is f64, u32 or a #[repr(C)] record of them without implicit padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// A fast 64-bit hash of the table's |F|² and ASU ids (change detection for the device copy).
fn table_hash(t: &FhklTable) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    let mix = |h: u64, x: u64| (h ^ x).wrapping_mul(0x100_0000_01B3).rotate_left(29);
    for &x in t.f2_slice() {
        h = mix(h, x.to_bits());
    }
    for c in t.asu_slice().chunks(2) {
        h = mix(h, c[0] as u64 | (c.get(1).copied().unwrap_or(0) as u64) << 32);
    }
    h
}
