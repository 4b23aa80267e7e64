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
//! # Determinism (for replicated optimisers, restarts and rank counts)
//! Shots are evaluated in parallel, but each shot runs inside its own
//! one-thread rayon pool, so its kernel sums have a fixed order; per-shot
//! results are then added in shot order. An evaluation is therefore bitwise
//! reproducible for a given rank count; across rank counts only the order of
//! the final MPI sum differs (≈1e-16 relative).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::dist::Comm;
use crate::error::{Error, Result};
use crate::kernel::{FhklScales, FhklTable, PreparedShot};
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

struct ShotResult {
    f: f64,
    sigz: f64,
    g_block: Vec<f64>,
    sparse: Vec<(u32, f64)>,
}

struct ShotCurv {
    summary: ShotSummary,
    sparse: Vec<(u32, f64)>,
}

fn sparse_of(v: Vec<f64>) -> Vec<(u32, f64)> {
    v.into_iter().enumerate().filter(|(_, x)| *x != 0.0).map(|(i, x)| (i as u32, x)).collect()
}

/// A prepared shot, its pixel list, raw values, ∂raw/∂θ rows and parameter values.
type ShotModelParts<'t> =
    (PreparedShot<'t>, Vec<crate::kernel::Pixel>, Vec<f64>, Vec<Vec<f64>>, super::params::ShotValues);

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
        })
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

    /// Run `f` on every local shot, in parallel, each inside its own
    /// one-thread pool; results in shot order.
    fn map_shots<R: Send>(&self, f: impl Fn(&LocalShot) -> Result<R> + Sync) -> Result<Vec<R>> {
        let n = self.shots.len();
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
                        let r = f(&self.shots[i]);
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

    /// Model pieces of one shot at x: (raw, ∂raw/∂θ rows, the prepared shot's
    /// pixel list, values).
    fn shot_model<'t>(
        &'t self,
        shot: &LocalShot,
        x: &[f64],
        scales: &FhklScales,
        derivs: bool,
    ) -> Result<ShotModelParts<'t>> {
        let vals = shot.params.values(self.shot_block(x, shot.index));
        let model = shot.input.model(vals.rot, vals.nabc, &vals.ucell)?;
        let kp = if derivs { shot.params.kernel_params() } else { vec![] };
        let prep = PreparedShot::new(&model, &self.table, Some(scales), &kp)?;
        let pixels = shot.pixels.kernel_pixels();
        let (raw, d) = if kp.is_empty() {
            (prep.forward(&pixels)?, vec![])
        } else {
            let o = prep.forward_with_derivs(&pixels)?;
            (o.values, o.derivs)
        };
        Ok((prep, pixels, raw, d, vals))
    }

    fn eval_shot(&self, shot: &LocalShot, x: &[f64], scales: &FhklScales) -> Result<ShotResult> {
        let (prep, pixels, raw, derivs, vals) = self.shot_model(shot, x, scales, true)?;
        let px = pixel_arrays(&shot.pixels, self.use_freq);
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
                dot(&e.dfdm, &raw)
            } else {
                let v = g * dot(&e.dfdm, &derivs[k]);
                k += 1;
                v
            };
            g_block[j] = s * vals.dvalue_dx[j];
        }
        let w: Vec<f64> = e.dfdm.iter().map(|d| d * g).collect();
        let dense = prep.fhkl_scale_gradient(&pixels, &w)?;
        Ok(ShotResult { f: e.f, sigz: e.sigz, g_block, sparse: sparse_of(dense) })
    }

    /// f and ∇f at x (collective: every rank must call it with the same x).
    pub fn evaluate(&self, x: &[f64], comm: &dyn Comm) -> Result<Evaluation> {
        if x.len() != self.n_x() {
            return Err(Error::msg(format!("x has {} coordinates, the problem {}", x.len(), self.n_x())));
        }
        let scales = self.kernel_scales(x);
        let results = self.map_shots(|s| self.eval_shot(s, x, &scales).map_err(|e| Self::shot_error(s, e)));
        // Every rank must reach the reduction, also when a shot failed here:
        // the failure travels as a flag through it.
        let n_slots = self.layout.n_asu() * self.layout.n_chan;
        let n_shot = self.fhkl_offset();
        let mut buf = vec![0.0; 3 + n_shot + n_slots];
        let local_err = match results {
            Ok(rs) => {
                for (shot, r) in self.shots.iter().zip(rs) {
                    buf[0] += r.f;
                    buf[1] += r.sigz;
                    let o = 3 + shot.index * self.n_per_shot;
                    buf[o..o + self.n_per_shot].copy_from_slice(&r.g_block);
                    for (i, v) in r.sparse {
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

    fn curv_shot(&self, shot: &LocalShot, x: &[f64], scales: &FhklScales) -> Result<ShotCurv> {
        let (prep, pixels, raw, _, vals) = self.shot_model(shot, x, scales, false)?;
        let px = pixel_arrays(&shot.pixels, self.use_freq);
        let g = vals.g;
        let mu: Vec<f64> = raw.iter().zip(&px.bg).map(|(r, b)| g * r + b).collect();
        let mut t = PixelTarget::new(&px.data, ReadNoise::PerPixel(&px.s2))?.with_trusted(&px.trusted)?;
        if let Some(fq) = &px.freq {
            t = t.with_freq(fq)?;
        }
        let e = t.evaluate(&mu)?;
        let w = t.fisher_weights(&mu)?;
        let h_g: f64 = w.iter().zip(&raw).map(|(w, r)| w * r * r).sum();
        let wg: Vec<f64> = w.iter().map(|v| v * g * g).collect();
        let dense = prep.fhkl_scale_curvature(&pixels, &wg, &self.layout.key, self.layout.n_params())?;
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
        let results = self.map_shots(|s| self.curv_shot(s, x, &scales).map_err(|e| Self::shot_error(s, e)));
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

    /// Heap bytes of this rank's pixel data.
    pub fn pixel_bytes(&self) -> usize {
        self.shots.iter().map(|s| s.pixels.heap_bytes()).sum()
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut s = 0.0;
    for i in 0..a.len() {
        s += a[i] * b[i];
    }
    s
}
