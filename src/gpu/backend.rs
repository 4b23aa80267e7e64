//! One interface to the kernel for the stages: [`Backend`], with a CPU
//! implementation ([`CpuBackend`], the rayon/SIMD loops of [`crate::kernel`])
//! and a CUDA one ([`super::cuda::CudaBackend`]), chosen by one knob,
//! `--device cpu|cuda|auto` ([`DeviceArgs`], [`select`]).
//!
//! * A batch is a list of prepared shots that share one structure-factor
//!   table, with their pixels in a [`PixelBatch`]. A `PixelBatch` is
//!   immutable and has an identity, so the CUDA backend keeps its pixels
//!   resident on the device across evaluations (stage 2) and forgets them
//!   when the batch is dropped.
//! * Outputs are per shot; derivative rows follow each shot's `params`.
//! * `cuda` fails with a clear error when no driver or device is usable;
//!   `auto` takes CUDA when it works and says which it chose and why.
//!   [`Backend::name`] is the short name every output row records.

use super::layout::Packed;
use crate::dist::Comm;
use crate::error::{Error, Result};
use crate::kernel::{KernelOutput, Pixel, PreparedShot};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bragg values.
    Forward,
    /// Values and the derivative rows of each shot's parameters.
    Derivs,
    /// `Σ_p weights[p]·∂value_p/∂s_{a,c}` summed over the batch (stage 2);
    /// shots must be prepared with scales. No values are returned.
    FhklGrad,
}

/// Results of one batch evaluation.
#[derive(Clone, Debug, Default)]
pub struct BatchOutput {
    /// Per shot, per pixel (empty in [`Mode::FhklGrad`]).
    pub values: Vec<Vec<f64>>,
    /// Per shot, per parameter, per pixel ([`Mode::Derivs`] only).
    pub derivs: Vec<Vec<Vec<f64>>>,
    /// The Fhkl-scale gradient `[a + c·n_asu]` ([`Mode::FhklGrad`] only).
    pub fhkl_grad: Vec<f64>,
}

static NEXT_BATCH_ID: AtomicU64 = AtomicU64::new(1);

/// The pixels of a batch of shots (shot after shot), immutable once made.
#[derive(Debug)]
pub struct PixelBatch {
    id: u64,
    /// Alive as long as the batch; device caches hold a `Weak` to it.
    token: Arc<()>,
    pixels: Vec<Pixel>,
    /// `starts[i]..starts[i + 1]` are shot i's pixels.
    starts: Vec<usize>,
}

impl PixelBatch {
    pub fn new(per_shot: Vec<Vec<Pixel>>) -> PixelBatch {
        let mut starts = Vec::with_capacity(per_shot.len() + 1);
        starts.push(0);
        let mut pixels = Vec::with_capacity(per_shot.iter().map(|v| v.len()).sum());
        for v in per_shot {
            pixels.extend(v);
            starts.push(pixels.len());
        }
        PixelBatch { id: NEXT_BATCH_ID.fetch_add(1, Ordering::Relaxed), token: Arc::new(()), pixels, starts }
    }

    /// One shot's pixels.
    pub fn single(pixels: &[Pixel]) -> PixelBatch {
        PixelBatch::new(vec![pixels.to_vec()])
    }

    pub fn n_shots(&self) -> usize {
        self.starts.len() - 1
    }
    /// Pixels of shot `i`.
    pub fn shot(&self, i: usize) -> &[Pixel] {
        &self.pixels[self.starts[i]..self.starts[i + 1]]
    }
    /// Every pixel, shot after shot.
    pub fn all(&self) -> &[Pixel] {
        &self.pixels
    }
    pub fn len(&self) -> usize {
        self.pixels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
    pub(crate) fn token(&self) -> std::sync::Weak<()> {
        Arc::downgrade(&self.token)
    }
    pub(crate) fn starts(&self) -> &[usize] {
        &self.starts
    }
}

/// A kernel implementation. Object safe; `Send + Sync` (the CUDA backend
/// serialises its calls internally).
pub trait Backend: Send + Sync {
    /// Short name recorded in every output row: `cpu` or `cuda`.
    fn name(&self) -> &'static str;
    /// One line for logs, e.g. `cuda:0 NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)`.
    fn describe(&self) -> String;
    /// Evaluate a batch of shots (one per pixel list of `pixels`).
    /// `weights` (FhklGrad): one per pixel of the batch, concatenated.
    fn evaluate(
        &self,
        shots: &[&PreparedShot<'_>],
        pixels: &PixelBatch,
        mode: Mode,
        weights: Option<&[f64]>,
    ) -> Result<BatchOutput>;

    /// Bragg values of one shot.
    fn forward(&self, shot: &PreparedShot<'_>, pixels: &[Pixel]) -> Result<Vec<f64>> {
        let mut out = self.evaluate(&[shot], &PixelBatch::single(pixels), Mode::Forward, None)?;
        Ok(out.values.pop().unwrap_or_default())
    }
    /// Values and derivative rows of one shot.
    fn forward_with_derivs(&self, shot: &PreparedShot<'_>, pixels: &[Pixel]) -> Result<KernelOutput> {
        let mut out = self.evaluate(&[shot], &PixelBatch::single(pixels), Mode::Derivs, None)?;
        Ok(KernelOutput {
            values: out.values.pop().unwrap_or_default(),
            derivs: out.derivs.pop().unwrap_or_default(),
        })
    }
    /// The Fhkl-scale gradient of one shot.
    fn fhkl_scale_gradient(
        &self,
        shot: &PreparedShot<'_>,
        pixels: &[Pixel],
        weights: &[f64],
    ) -> Result<Vec<f64>> {
        Ok(self.evaluate(&[shot], &PixelBatch::single(pixels), Mode::FhklGrad, Some(weights))?.fhkl_grad)
    }
}

/// The CPU kernel ([`PreparedShot::forward`] and friends), shot after shot.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn describe(&self) -> String {
        format!("cpu ({} threads, {:?})", rayon::current_num_threads(), crate::kernel::SimdLevel::detect())
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
        let mut out = BatchOutput::default();
        for (i, shot) in shots.iter().enumerate() {
            let px = pixels.shot(i);
            match mode {
                Mode::Forward => out.values.push(shot.forward(px)?),
                Mode::Derivs => {
                    let k = shot.forward_with_derivs(px)?;
                    out.values.push(k.values);
                    out.derivs.push(k.derivs);
                }
                Mode::FhklGrad => {
                    let s = pixels.starts();
                    let g = shot.fhkl_scale_gradient(px, &w.expect("checked")[s[i]..s[i + 1]])?;
                    if out.fhkl_grad.is_empty() {
                        out.fhkl_grad = g;
                    } else if out.fhkl_grad.len() != g.len() {
                        return Err(Error::param(
                            format!("shots[{i}]"),
                            "every shot of an Fhkl-gradient batch needs the same number of channels",
                        ));
                    } else {
                        out.fhkl_grad.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Check the weights of an evaluation: required (one per pixel, finite) in
/// FhklGrad mode, ignored otherwise.
pub(crate) fn check_weights(mode: Mode, weights: Option<&[f64]>, n: usize) -> Result<Option<&[f64]>> {
    if mode != Mode::FhklGrad {
        return Ok(None);
    }
    let w = weights
        .ok_or_else(|| Error::param("weights", "the Fhkl-scale gradient needs one weight per pixel"))?;
    if w.len() != n {
        return Err(Error::param("weights", format!("{} weights for {n} pixels", w.len())));
    }
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(Error::param(format!("weights[{i}]"), "not finite"));
    }
    Ok(Some(w))
}

/// Cut flat kernel outputs (values per pixel; derivatives pixel-major with
/// `packed.row − 1` slots) into per-shot vectors.
pub(crate) fn split_output(
    pixels: &PixelBatch,
    packed: &Packed,
    mode: Mode,
    values: Vec<f64>,
    derivs: &[f64],
    fhkl_grad: Vec<f64>,
) -> BatchOutput {
    let s = pixels.starts();
    let mut out = BatchOutput { fhkl_grad, ..Default::default() };
    if mode == Mode::FhklGrad {
        return out;
    }
    let stride = packed.row - 1;
    for i in 0..pixels.n_shots() {
        out.values.push(values[s[i]..s[i + 1]].to_vec());
        if mode == Mode::Derivs {
            let np = packed.n_params[i];
            let rows = (0..np).map(|j| (s[i]..s[i + 1]).map(|p| derivs[p * stride + j]).collect()).collect();
            out.derivs.push(rows);
        }
    }
    out
}

/// `--device cpu|cuda|auto`.
///
/// \[decided\] The default is `auto`, for every command: a GPU node uses its
/// GPU without an extra flag, and the fallback is never silent: the choice
/// and its reason are logged at start-up (with the rank → device mapping) and
/// every output records the backend that ran (`backend` columns, the
/// simulated HDF5's `diffbragg_backend` attribute). `cuda` is the way to
/// insist on a GPU (an error without one).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU kernel.
    Cpu,
    /// A CUDA GPU; fails if none is usable.
    Cuda,
    /// CUDA when usable, else the CPU (the choice is logged).
    #[default]
    Auto,
}

impl DeviceChoice {
    /// The command-line spelling (`cpu`, `cuda`, `auto`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
            DeviceChoice::Auto => "auto",
        }
    }
}

/// The shared command-line argument (`#[command(flatten)]` it into a subcommand).
#[derive(clap::Args, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceArgs {
    /// Kernel backend: `cpu`, `cuda` (error when no GPU is usable) or `auto`
    /// (CUDA when usable). With several ranks per node, rank r uses GPU
    /// (node-local r) mod (visible devices).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

/// [`select`], for work that only the CPU kernel can do when `cpu_only` gives
/// the reason (e.g. the nanoBragg sub-pixel convention): then `cpu` and `auto`
/// take the CPU (`auto` says why, without probing CUDA) and `cuda` is an error
/// naming the reason, raised before any work.
pub fn select_for(choice: DeviceChoice, comm: &dyn Comm, cpu_only: Option<&str>) -> Result<Box<dyn Backend>> {
    let Some(why) = cpu_only else {
        return select(choice, comm);
    };
    match choice {
        DeviceChoice::Cpu => select(choice, comm),
        DeviceChoice::Cuda => Err(Error::param(
            "--device cuda",
            format!("{why} runs on the CPU kernel only: use --device cpu (or auto)"),
        )),
        DeviceChoice::Auto => {
            let b = CpuBackend;
            eprintln!(
                "device: {} → --device auto: {why} runs on the CPU kernel only; using {}",
                comm.describe(),
                b.describe()
            );
            Ok(Box::new(b))
        }
    }
}

/// The backend for this process. Logs the choice on stderr (rank, device).
pub fn select(choice: DeviceChoice, comm: &dyn Comm) -> Result<Box<dyn Backend>> {
    match choice {
        DeviceChoice::Cpu => {
            let b = CpuBackend;
            eprintln!("device: {} → {}", comm.describe(), b.describe());
            Ok(Box::new(b))
        }
        DeviceChoice::Cuda => {
            let b = super::cuda::CudaBackend::for_rank(comm)
                .map_err(|e| Error::param("--device cuda", e.to_string()))?;
            Ok(Box::new(b))
        }
        DeviceChoice::Auto => match super::cuda::CudaBackend::for_rank(comm) {
            Ok(b) => {
                eprintln!("device: --device auto chose CUDA");
                Ok(Box::new(b))
            }
            Err(e) => {
                let b = CpuBackend;
                eprintln!(
                    "device: {} → --device auto: CUDA not usable ({e}); using {}",
                    comm.describe(),
                    b.describe()
                );
                Ok(Box::new(b))
            }
        },
    }
}
