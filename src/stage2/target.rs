//! The global stage-2 target, its gradient, and the curvature behind the σ.
//!
//! # Target
//! `f(x) = Σ_shots Σ_trusted w·½[ln 2πv + (d − μ)²/v] + R(s)` with
//! `μ = G_i·raw(s, θ_i) + b`, `v = μ + σ_r²` (background included), `w = 1/freq`
//! with `roi.allow_overlapping_spots`, else 1. This is the stage-1 pixel
//! likelihood ([`crate::refine::likelihood`]) summed over shots, plus the
//! structure-factor restraints R ([`super::restraints`]).
//!
//! # Gradient
//! Per shot, `∂f/∂μ` per pixel; then `∂f/∂G = Σ ∂f/∂μ·raw`, `∂f/∂θ = Σ ∂f/∂μ·G·∂raw/∂θ`
//! for the other refined shot parameters, and the kernel's Fhkl pass with
//! weights `G_i·∂f/∂μ` for `∂f/∂s`. \[BUG?\] T3.1 fixed: every shot uses **its
//! own** G (the reference passes the G of global shot 0 mapped through each
//! shot's parameterisation).
//!
//! # Curvature and σ (T3.4 decided)
//! `H_k = Σ_pixels W·(∂μ/∂θ_k)²` with the Fisher weight `W = (1/v + 1/(2v²))/freq`
//! (the expected ∂²f/∂μ², v including the background) and `∂μ/∂θ_k` the
//! **whole** pixel derivative (summed over sub-steps, spectrum channels and,
//! for a tied centric scale, over energy channels) before squaring: the
//! diagonal of the Gauss–Newton/Fisher matrix of the summed pixel likelihood.
//! `σ_s = 1/√H`, ignoring the coupling to G and the restraints (σ reflects
//! the data alone). The reference sums squares of per-sub-step derivatives
//! and drops the background from v, which overestimates σ.
//!
//! # Kernel backend and launches
//! Every kernel evaluation goes through the problem's [`Backend`]
//! (`--device`, [`Problem::set_backend`]). The local shots are cut into
//! launches of `shots_per_launch` consecutive shots; one evaluation makes two
//! backend calls per launch: values + ∂raw/∂θ of all its shots, then the
//! Fhkl-scale gradient with the launch's concatenated weights (summed over
//! its shots by the backend). The curvature pass makes one forward call per
//! launch; its Fhkl curvature runs on the CPU kernel (the backend interface
//! has no curvature mode; it is computed once per checkpoint, not per
//! evaluation).
//! * CPU (one shot per launch): the pixel list is rebuilt per evaluation from
//!   the compact pixel records (keeping memory at the data's ≈ 9–12 B/pixel).
//! * Other backends (GPU): each launch's pixels are one [`PixelBatch`] made
//!   once, so the device keeps them resident across evaluations; their host
//!   copy is counted in [`Problem::pixel_bytes`].
//!
//! # Determinism (for replicated optimisers, restarts and rank counts)
//! Launches are evaluated in parallel, but each runs inside its own
//! one-thread rayon pool, so the CPU kernel's sums have a fixed order;
//! results are then added in shot order. An evaluation on the CPU is
//! therefore bitwise reproducible for a given rank count; across rank counts
//! only the order of the final MPI sum differs (≈1e-16 relative). A GPU's
//! Fhkl gradient is summed with atomics, so its last bits may vary between
//! runs; every rank still receives the same allreduced sums.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::dist::Comm;
use crate::error::{Error, Result};
use crate::gpu::{Backend, CpuBackend, Mode, PixelBatch};
use crate::kernel::{FhklScales, FhklTable, KernelOutput, PreparedShot};
use crate::refine::likelihood::{PixelTarget, ReadNoise};

use super::data::ShotPixels;
use super::params::{scale_of, FhklLayout, ShotParamKind, ShotParams};
use super::restraints::RestraintPlan;
use super::shots::ShotInput;

/// One of this rank's shots.
pub struct LocalShot {
    pub input: ShotInput,
    pub pixels: ShotPixels,
    pub params: ShotParams,
    /// Position in the global shot order (its block of x).
    pub index: usize,
}

/// Everything the target needs on one rank.
pub struct Problem {
    pub shots: Vec<LocalShot>,
    pub n_shots_total: usize,
    /// Refined coordinates per shot (the same for every shot).
    pub n_per_shot: usize,
    pub layout: FhklLayout,
    pub table: FhklTable,
    /// σ_F of `s = exp(σ_F(x − 1))`.
    pub sigma_fhkl: f64,
    pub restraints: RestraintPlan,
    /// Divide each pixel's term by its overlap multiplicity.
    pub use_freq: bool,
    pools: Vec<rayon::ThreadPool>,
    backend: Arc<dyn Backend>,
    launches: Vec<Launch>,
}

/// Consecutive local shots evaluated by one backend call.
struct Launch {
    shots: Range<usize>,
    /// Their pixels, made once (resident on a GPU); `None`: rebuilt per call.
    batch: Option<PixelBatch>,
}

/// f, its gradient and diagnostics at one x (identical on every rank).
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub f: f64,
    pub g: Vec<f64>,
    /// The restraint part of f.
    pub f_restraint: f64,
    /// Mean over shots of each shot's std of Z = (d − μ)/√v.
    pub sigz: f64,
}

/// Per-shot results of the curvature pass.
#[derive(Clone, Debug, PartialEq)]
pub struct ShotSummary {
    pub index: usize,
    pub f: f64,
    pub sigz: f64,
    /// σ of G from its Fisher curvature (G alone).
    pub sigma_g: f64,
}

/// The curvature pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Curvature {
    /// `H` per Fhkl parameter, in s units (allreduced).
    pub h: Vec<f64>,
    /// This rank's shots.
    pub shots: Vec<ShotSummary>,
}

/// One shot's part of an evaluation.
struct ShotResult {
    f: f64,
    sigz: f64,
    g_block: Vec<f64>,
}

/// One launch's part of an evaluation: its shots and their summed Fhkl gradient.
struct LaunchResult {
    shots: Vec<ShotResult>,
    sparse: Vec<(u32, f64)>,
}

struct ShotCurv {
    summary: ShotSummary,
    sparse: Vec<(u32, f64)>,
}

fn sparse_of(v: Vec<f64>) -> Vec<(u32, f64)> {
    v.into_iter().enumerate().filter(|(_, x)| *x != 0.0).map(|(i, x)| (i as u32, x)).collect()
}

/// The prepared shots of a launch, their pixels, kernel outputs and parameter values.
struct LaunchModel<'t> {
    preps: Vec<PreparedShot<'t>>,
    /// Transient pixels (CPU); `None` when the launch keeps its own batch.
    batch: Option<PixelBatch>,
    outputs: Vec<KernelOutput>,
    vals: Vec<super::params::ShotValues>,
}

/// The per-shot work arrays of one evaluation.
struct Pixels {
    data: Vec<f64>,
    bg: Vec<f64>,
    s2: Vec<f64>,
    trusted: Vec<bool>,
    freq: Option<Vec<f64>>,
}

fn pixel_arrays(p: &ShotPixels, use_freq: bool) -> Pixels {
    Pixels {
        data: p.data.iter().map(|&v| v as f64).collect(),
        bg: p.background.iter().map(|&v| v as f64).collect(),
        s2: p.sigma_r2(),
        trusted: p.trusted_flags(),
        freq: if use_freq { p.freq.as_ref().map(|f| f.iter().map(|&v| v as f64).collect()) } else { None },
    }
}

impl Problem {
    /// `threads`: shots evaluated at once on this rank.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shots: Vec<LocalShot>,
        n_shots_total: usize,
        n_per_shot: usize,
        layout: FhklLayout,
        table: FhklTable,
        sigma_fhkl: f64,
        restraints: RestraintPlan,
        use_freq: bool,
        threads: usize,
    ) -> Result<Problem> {
        if !(sigma_fhkl.is_finite() && sigma_fhkl > 0.0) {
            return Err(Error::param("sigmas.Fhkl", format!("must be > 0, got {sigma_fhkl}")));
        }
        if let Some(s) = shots.iter().find(|s| s.params.n_free() != n_per_shot) {
            return Err(Error::msg(format!(
                "shot {} has {} refined parameters, the others {n_per_shot}",
                s.input.shot_id,
                s.params.n_free()
            )));
        }
        let threads = threads.clamp(1, shots.len().max(1));
        let pools = (0..threads)
            .map(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::msg(format!("cannot start worker threads: {e}")))?;
        let launches = (0..shots.len()).map(|i| Launch { shots: i..i + 1, batch: None }).collect();
        Ok(Problem {
            shots,
            n_shots_total,
            n_per_shot,
            layout,
            table,
            sigma_fhkl,
            restraints,
            use_freq,
            pools,
            backend: Arc::new(CpuBackend),
            launches,
        })
    }

    /// Run every kernel evaluation on `backend`, `shots_per_launch` shots per
    /// call. With more than one shot per launch, or a backend other than the
    /// CPU, each launch's pixels become one batch made here (resident on a GPU).
    pub fn set_backend(&mut self, backend: Arc<dyn Backend>, shots_per_launch: usize) {
        let per = shots_per_launch.max(1);
        let keep = per > 1 || backend.name() != "cpu";
        let n = self.shots.len();
        self.launches = (0..n)
            .step_by(per)
            .map(|a| {
                let r = a..(a + per).min(n);
                let batch = keep.then(|| {
                    PixelBatch::new(self.shots[r.clone()].iter().map(|s| s.pixels.kernel_pixels()).collect())
                });
                Launch { shots: r, batch }
            })
            .collect();
        self.backend = backend;
    }

    /// The backend every kernel evaluation runs on.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Number of backend launches per evaluation pass (local).
    pub fn n_launches(&self) -> usize {
        self.launches.len()
    }

    /// Length of x.
    pub fn n_x(&self) -> usize {
        self.n_shots_total * self.n_per_shot + self.layout.n_params()
    }

    /// Start of the Fhkl coordinates in x.
    pub fn fhkl_offset(&self) -> usize {
        self.n_shots_total * self.n_per_shot
    }

    pub fn shot_block<'a>(&self, x: &'a [f64], index: usize) -> &'a [f64] {
        &x[index * self.n_per_shot..(index + 1) * self.n_per_shot]
    }

    /// The refined s per parameter.
    pub fn scales(&self, x: &[f64]) -> Vec<f64> {
        x[self.fhkl_offset()..].iter().map(|&v| scale_of(v, self.sigma_fhkl)).collect()
    }

    fn kernel_scales(&self, x: &[f64]) -> FhklScales {
        FhklScales {
            n_channels: self.layout.n_chan,
            values: self.layout.kernel_scales(&x[self.fhkl_offset()..], self.sigma_fhkl),
        }
    }

    /// Run `f` on every launch, in parallel, each inside its own one-thread
    /// pool; results in launch (= shot) order.
    fn map_launches<R: Send>(&self, f: impl Fn(&Launch) -> Result<R> + Sync) -> Result<Vec<R>> {
        let n = self.launches.len();
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<Result<R>>>> = (0..n).map(|_| Mutex::new(None)).collect();
        std::thread::scope(|sc| {
            for pool in &self.pools {
                let (next, slots, f) = (&next, &slots, &f);
                sc.spawn(move || {
                    pool.install(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let r = f(&self.launches[i]);
                        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                    })
                });
            }
        });
        slots
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every shot was evaluated"))
            .collect()
    }

    fn shot_error(shot: &LocalShot, e: Error) -> Error {
        Error::msg(format!(
            "shot {} ({} #{}): {e}",
            shot.input.shot_id, shot.input.row.exp_name, shot.input.row.exp_idx
        ))
    }

    /// The kernel on a launch's shots at x: values, and ∂raw/∂θ rows with `derivs`.
    fn launch_model<'t>(
        &'t self,
        l: &Launch,
        x: &[f64],
        scales: &FhklScales,
        derivs: bool,
    ) -> Result<LaunchModel<'t>> {
        let shots = &self.shots[l.shots.clone()];
        let mut preps = Vec::with_capacity(shots.len());
        let mut vals = Vec::with_capacity(shots.len());
        let mut any_params = false;
        for shot in shots {
            let v = shot.params.values(self.shot_block(x, shot.index));
            let model = shot.input.model(v.rot, v.nabc, &v.ucell).map_err(|e| Self::shot_error(shot, e))?;
            let kp = if derivs { shot.params.kernel_params() } else { vec![] };
            any_params |= !kp.is_empty();
            preps.push(
                PreparedShot::new(&model, &self.table, Some(scales), &kp)
                    .map_err(|e| Self::shot_error(shot, e))?,
            );
            vals.push(v);
        }
        let transient = match &l.batch {
            Some(_) => None,
            None => Some(PixelBatch::new(shots.iter().map(|s| s.pixels.kernel_pixels()).collect())),
        };
        let batch = l.batch.as_ref().or(transient.as_ref()).expect("one of the two");
        let refs: Vec<&PreparedShot> = preps.iter().collect();
        let mode = if any_params { Mode::Derivs } else { Mode::Forward };
        let out = self.backend.evaluate(&refs, batch, mode, None).map_err(|e| self.launch_error(l, e))?;
        if out.values.len() != shots.len() {
            return Err(self.launch_error(
                l,
                Error::msg(format!("{} returned {} value lists", self.backend.name(), out.values.len())),
            ));
        }
        let mut derivs_it = out.derivs.into_iter();
        let outputs = out
            .values
            .into_iter()
            .map(|values| KernelOutput {
                values,
                derivs: if any_params { derivs_it.next().unwrap_or_default() } else { vec![] },
            })
            .collect();
        Ok(LaunchModel { preps, batch: transient, outputs, vals })
    }

    fn launch_error(&self, l: &Launch, e: Error) -> Error {
        match &self.shots[l.shots.clone()] {
            [one] => Self::shot_error(one, e),
            many => Error::msg(format!(
                "shots {}..{} (one {} launch): {e}",
                many[0].input.shot_id,
                many[many.len() - 1].input.shot_id,
                self.backend.name()
            )),
        }
    }

    fn eval_launch(&self, l: &Launch, x: &[f64], scales: &FhklScales) -> Result<LaunchResult> {
        let lm = self.launch_model(l, x, scales, true)?;
        let batch = l.batch.as_ref().or(lm.batch.as_ref()).expect("one of the two");
        let shots = &self.shots[l.shots.clone()];
        let mut out = Vec::with_capacity(shots.len());
        let mut weights = Vec::with_capacity(batch.len());
        for (i, shot) in shots.iter().enumerate() {
            let r = self
                .shot_target(shot, &lm.outputs[i], &lm.vals[i], &mut weights)
                .map_err(|e| Self::shot_error(shot, e))?;
            out.push(r);
        }
        let refs: Vec<&PreparedShot> = lm.preps.iter().collect();
        let dense = self
            .backend
            .evaluate(&refs, batch, Mode::FhklGrad, Some(&weights))
            .map_err(|e| self.launch_error(l, e))?
            .fhkl_grad;
        Ok(LaunchResult { shots: out, sparse: sparse_of(dense) })
    }

    /// One shot's f, sigZ and block gradient from its kernel output; appends
    /// its Fhkl weights `G·∂f/∂μ` to `weights`.
    fn shot_target(
        &self,
        shot: &LocalShot,
        k_out: &KernelOutput,
        vals: &super::params::ShotValues,
        weights: &mut Vec<f64>,
    ) -> Result<ShotResult> {
        let (raw, derivs) = (&k_out.values, &k_out.derivs);
        let px = pixel_arrays(&shot.pixels, self.use_freq);
        if raw.len() != px.data.len() {
            return Err(Error::msg(format!("{} values for {} pixels", raw.len(), px.data.len())));
        }
        let g = vals.g;
        let mu: Vec<f64> = raw.iter().zip(&px.bg).map(|(r, b)| g * r + b).collect();
        let mut t = PixelTarget::new(&px.data, ReadNoise::PerPixel(&px.s2))?.with_trusted(&px.trusted)?;
        if let Some(fq) = &px.freq {
            t = t.with_freq(fq)?;
        }
        let e = t.evaluate(&mu)?;
        let mut g_block = vec![0.0; self.n_per_shot];
        let mut k = 0;
        for (j, kind) in shot.params.kinds.iter().enumerate() {
            let s = if *kind == ShotParamKind::G {
                dot(&e.dfdm, raw)
            } else {
                let row = derivs.get(k).ok_or_else(|| Error::msg("missing derivative row"))?;
                let v = g * dot(&e.dfdm, row);
                k += 1;
                v
            };
            g_block[j] = s * vals.dvalue_dx[j];
        }
        weights.extend(e.dfdm.iter().map(|d| d * g));
        Ok(ShotResult { f: e.f, sigz: e.sigz, g_block })
    }

    /// f and ∇f at x (collective: every rank must call it with the same x).
    pub fn evaluate(&self, x: &[f64], comm: &dyn Comm) -> Result<Evaluation> {
        if x.len() != self.n_x() {
            return Err(Error::msg(format!("x has {} coordinates, the problem {}", x.len(), self.n_x())));
        }
        let scales = self.kernel_scales(x);
        let results = self.map_launches(|l| self.eval_launch(l, x, &scales));
        // Every rank must reach the reduction, also when a shot failed here:
        // the failure travels as a flag through it.
        let n_slots = self.layout.n_asu() * self.layout.n_chan;
        let n_shot = self.fhkl_offset();
        let mut buf = vec![0.0; 3 + n_shot + n_slots];
        let local_err = match results {
            Ok(rs) => {
                for (l, lr) in self.launches.iter().zip(rs) {
                    for (shot, r) in self.shots[l.shots.clone()].iter().zip(lr.shots) {
                        buf[0] += r.f;
                        buf[1] += r.sigz;
                        let o = 3 + shot.index * self.n_per_shot;
                        buf[o..o + self.n_per_shot].copy_from_slice(&r.g_block);
                    }
                    for (i, v) in lr.sparse {
                        buf[3 + n_shot + i as usize] += v;
                    }
                }
                None
            }
            Err(e) => {
                buf[2] = 1.0;
                Some(e)
            }
        };
        comm.allreduce_sum(&mut buf);
        if let Some(e) = local_err {
            return Err(e);
        }
        if buf[2] != 0.0 {
            return Err(Error::msg("the evaluation failed on another rank (see its message)"));
        }
        let mut g = vec![0.0; self.n_x()];
        g[..n_shot].copy_from_slice(&buf[3..3 + n_shot]);
        let mut g_slots = buf[3 + n_shot..].to_vec();
        let s_slots = &scales.values;
        let f_restraint = if self.restraints.is_empty() {
            0.0
        } else {
            self.restraints.apply(&self.layout, s_slots, &mut g_slots)
        };
        let gp = self.layout.fold(&g_slots);
        for (p, v) in gp.iter().enumerate() {
            let xp = x[n_shot + p];
            g[n_shot + p] = v * self.sigma_fhkl * scale_of(xp, self.sigma_fhkl);
        }
        Ok(Evaluation {
            f: buf[0] + f_restraint,
            g,
            f_restraint,
            sigz: buf[1] / self.n_shots_total.max(1) as f64,
        })
    }

    /// The curvature pass of one launch: the values on the backend, the Fhkl
    /// curvature of each shot on the CPU kernel (see the module doc).
    fn curv_launch(&self, l: &Launch, x: &[f64], scales: &FhklScales) -> Result<Vec<ShotCurv>> {
        let lm = self.launch_model(l, x, scales, false)?;
        let batch = l.batch.as_ref().or(lm.batch.as_ref()).expect("one of the two");
        let shots = &self.shots[l.shots.clone()];
        let mut out = Vec::with_capacity(shots.len());
        for (i, shot) in shots.iter().enumerate() {
            let c = self
                .curv_shot(shot, &lm.preps[i], batch.shot(i), &lm.outputs[i].values, lm.vals[i].g)
                .map_err(|e| Self::shot_error(shot, e))?;
            out.push(c);
        }
        Ok(out)
    }

    fn curv_shot(
        &self,
        shot: &LocalShot,
        prep: &PreparedShot,
        pixels: &[crate::kernel::Pixel],
        raw: &[f64],
        g: f64,
    ) -> Result<ShotCurv> {
        let px = pixel_arrays(&shot.pixels, self.use_freq);
        if raw.len() != px.data.len() {
            return Err(Error::msg(format!("{} values for {} pixels", raw.len(), px.data.len())));
        }
        let mu: Vec<f64> = raw.iter().zip(&px.bg).map(|(r, b)| g * r + b).collect();
        let mut t = PixelTarget::new(&px.data, ReadNoise::PerPixel(&px.s2))?.with_trusted(&px.trusted)?;
        if let Some(fq) = &px.freq {
            t = t.with_freq(fq)?;
        }
        let e = t.evaluate(&mu)?;
        let w = t.fisher_weights(&mu)?;
        let h_g: f64 = w.iter().zip(raw).map(|(w, r)| w * r * r).sum();
        let wg: Vec<f64> = w.iter().map(|v| v * g * g).collect();
        let dense = prep.fhkl_scale_curvature(pixels, &wg, &self.layout.key, self.layout.n_params())?;
        Ok(ShotCurv {
            summary: ShotSummary {
                index: shot.index,
                f: e.f,
                sigz: e.sigz,
                sigma_g: if h_g > 0.0 { 1.0 / h_g.sqrt() } else { f64::INFINITY },
            },
            sparse: sparse_of(dense),
        })
    }

    /// The curvature pass at x (collective).
    pub fn curvature(&self, x: &[f64], comm: &dyn Comm) -> Result<Curvature> {
        let scales = self.kernel_scales(x);
        let results = self
            .map_launches(|l| self.curv_launch(l, x, &scales))
            .map(|v| v.into_iter().flatten().collect::<Vec<_>>());
        let mut buf = vec![0.0; 1 + self.layout.n_params()];
        let (shots, local_err) = match results {
            Ok(rs) => {
                let mut out = Vec::with_capacity(rs.len());
                for r in rs {
                    for (i, v) in r.sparse {
                        buf[1 + i as usize] += v;
                    }
                    out.push(r.summary);
                }
                (out, None)
            }
            Err(e) => {
                buf[0] = 1.0;
                (vec![], Some(e))
            }
        };
        comm.allreduce_sum(&mut buf);
        if let Some(e) = local_err {
            return Err(e);
        }
        if buf[0] != 0.0 {
            return Err(Error::msg("the curvature pass failed on another rank (see its message)"));
        }
        Ok(Curvature { h: buf[1..].to_vec(), shots })
    }

    /// Total pixels and trusted pixels on this rank.
    pub fn pixel_counts(&self) -> (usize, usize) {
        self.shots.iter().fold((0, 0), |(a, b), s| (a + s.pixels.n_pixels(), b + s.pixels.n_trusted()))
    }

    /// Heap bytes of this rank's pixel data (with the launches' kept pixel lists).
    pub fn pixel_bytes(&self) -> usize {
        let kept: usize = self
            .launches
            .iter()
            .filter_map(|l| l.batch.as_ref())
            .map(|b| b.len() * std::mem::size_of::<crate::kernel::Pixel>())
            .sum();
        self.shots.iter().map(|s| s.pixels.heap_bytes()).sum::<usize>() + kept
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut s = 0.0;
    for i in 0..a.len() {
        s += a[i] * b[i];
    }
    s
}
