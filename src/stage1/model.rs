//! The stage-1 model of one shot and its target: the only place stage 1 calls
//! the kernel ([`kernel_eval_on`]), always through a [`Backend`]
//! (`--device cpu|cuda|auto`, carried by the run's context).
//!
//! A shot's pixels are one [`PixelBatch`] made once per [`Problem`], so a GPU
//! backend keeps them resident across the shot's evaluations. Stage 1 launches
//! one shot per evaluation: each shot has its own L-BFGS-B, and the shots of a
//! rank run concurrently (the CUDA backend serialises their launches).
//!
//! `model_i = G·s_r·raw_i + bg_i`, with `raw` the kernel's Bragg value at
//! scale 1 (fwd-model §2.8), `s_r` the ROI's scale (1 unless per-ROI scales are
//! refined) and `bg` the fixed background. Target: the Gaussian NLL with the
//! model-based variance `v = m + σ_r²` ([`crate::refine::likelihood`]).
//!
//! # Fluence and the meaning of G (\[TRAP\] decided)
//! diffBragg's fluence is `total_flux/(N_src·beamsize²)` with channel weights of
//! mean 1, so its G carries a factor that depends on the channel count. We use
//! the same fluence ([`fluence`]) with weights normalised to sum 1, which gives
//! **the same pixel values for the same G** as diffBragg: `init.G`, `maxs.G`
//! and the `spot_scales` column keep their diffBragg meaning, and the kernel's
//! note "our G = cctbx G / N_src" does not apply to stage-1 numbers.

use super::gather::ShotData;
use super::params::{EtaMode, ShotParams, Slot, Values};
use crate::conventions::Mat3;
use crate::error::{Error, Result};
use crate::gpu::{Backend, CpuBackend, Mode, PixelBatch};
use crate::kernel::{CrystalModel, Eta, FhklTable, KernelOutput, MosaicSpec, Param, PreparedShot, ShotModel};
use crate::refine::likelihood::{PixelTarget, ReadNoise};
use crate::refine::restraints;
use crate::ucell::UcellParams;

/// Fluence (photons/mm²… any consistent area unit cancels with r_e² in m²:
/// the kernel takes photons/m²) that reproduces diffBragg's G (module doc).
pub fn fluence(total_flux: f64, n_sources: usize, beamsize_mm: f64) -> f64 {
    let bs_m = beamsize_mm / 1000.0;
    total_flux / (n_sources.max(1) as f64 * bs_m * bs_m)
}

/// The one kernel call of stage 1: Bragg values (and derivatives of `params`)
/// of the pixels of `batch` (one shot) on `backend`.
pub fn kernel_eval_on(
    backend: &dyn Backend,
    model: &ShotModel,
    fhkl: &FhklTable,
    params: &[Param],
    batch: &PixelBatch,
) -> Result<KernelOutput> {
    if batch.n_shots() != 1 {
        return Err(Error::param("pixels", format!("stage 1 evaluates one shot, got {}", batch.n_shots())));
    }
    let shot = PreparedShot::new(model, fhkl, None, params)?;
    let mode = if params.is_empty() { Mode::Forward } else { Mode::Derivs };
    let mut out = backend.evaluate(&[&shot], batch, mode, None)?;
    let values =
        out.values.pop().ok_or_else(|| Error::msg(format!("{} returned no values", backend.name())))?;
    let derivs = if params.is_empty() { vec![] } else { out.derivs.pop().unwrap_or_default() };
    if values.len() != batch.len()
        || derivs.len() != params.len()
        || derivs.iter().any(|d| d.len() != batch.len())
    {
        return Err(Error::msg(format!(
            "{} returned {} values and {} derivative rows for {} pixels and {} parameters",
            backend.name(),
            values.len(),
            derivs.len(),
            batch.len(),
            params.len()
        )));
    }
    Ok(KernelOutput { values, derivs })
}

/// [`kernel_eval_on`] on the CPU kernel for a pixel list (synthetic data).
pub fn kernel_eval(
    model: &ShotModel,
    fhkl: &FhklTable,
    params: &[Param],
    pixels: &[crate::kernel::Pixel],
) -> Result<KernelOutput> {
    kernel_eval_on(&CpuBackend, model, fhkl, params, &PixelBatch::single(pixels))
}

/// One shot ready to evaluate.
pub struct Problem<'a> {
    pub data: &'a ShotData,
    /// The fixed parts of the model (detector, beam, sources, U, O, fluence,
    /// oversample); crystal parameters are overwritten from the values.
    pub base: &'a ShotModel,
    pub fhkl: &'a FhklTable,
    pub params: &'a ShotParams,
    /// Crystal axes (lab, at the start) for the anisotropic mosaic model.
    pub axes0: Mat3,
    /// Where the kernel runs.
    pub backend: &'a dyn Backend,
    /// `data.pixels` as one batch, made once (resident on a GPU).
    pub batch: PixelBatch,
}

/// Result of one evaluation.
#[derive(Clone, Debug)]
pub struct Eval {
    pub f: f64,
    pub sigz: f64,
    /// Bragg values at scale 1.
    pub raw: Vec<f64>,
    /// Full model (photons).
    pub model: Vec<f64>,
    pub values: Values,
    /// Kernel derivative rows (x order of the kernel parameters), value units, scale 1.
    pub derivs: Vec<Vec<f64>>,
}

impl<'a> Problem<'a> {
    pub fn new(
        data: &'a ShotData,
        base: &'a ShotModel,
        fhkl: &'a FhklTable,
        params: &'a ShotParams,
        axes0: Mat3,
        backend: &'a dyn Backend,
    ) -> Problem<'a> {
        Problem { data, base, fhkl, params, axes0, backend, batch: PixelBatch::single(&data.pixels) }
    }

    /// The kernel model at `v` (scale 1).
    pub fn shot_model(&self, v: &Values) -> Result<ShotModel> {
        let mut m = self.base.clone();
        let ucell = UcellParams::new(self.params.system, v.ucell.clone())?;
        let c = &mut m.crystal;
        c.ucell = ucell;
        c.rot_xyz = v.rot;
        c.ncells = v.ncells;
        c.mosaic = match self.params.eta {
            EtaMode::None => MosaicSpec::Single,
            EtaMode::Iso => MosaicSpec::Generated {
                n_domains: self.params.n_domains,
                eta: Eta::Iso(v.eta[0]),
                axes: self.axes0,
            },
            EtaMode::Aniso => MosaicSpec::Generated {
                n_domains: self.params.n_domains,
                eta: Eta::Aniso(v.eta),
                axes: self.axes0,
            },
        };
        m.scale = 1.0;
        m.shifts.detz_shift = v.detz_shift;
        m.lambda_coef = v.lambda;
        Ok(m)
    }

    /// Per-pixel `G·s_r` at `v`.
    fn pixel_scale(&self, v: &Values) -> Vec<f64> {
        self.data.roi_of.iter().map(|&r| v.g * v.roi_scale[r as usize]).collect()
    }

    /// Evaluate at `x`; with `grad`, also the x-gradient. `trusted` overrides the
    /// data's trust flags (the outlier filters change it).
    pub fn evaluate(&self, x: &[f64], grad: Option<&mut [f64]>, trusted: &[bool]) -> Result<Eval> {
        let v = self.params.values(x);
        let m = self.shot_model(&v)?;
        let kp = if grad.is_some() { self.params.kernel_params() } else { vec![] };
        let out = kernel_eval_on(self.backend, &m, self.fhkl, &kp, &self.batch)?;
        let scale = self.pixel_scale(&v);
        let model: Vec<f64> =
            (0..out.values.len()).map(|i| scale[i] * out.values[i] + self.data.background[i]).collect();
        let mut target = PixelTarget::new(&self.data.data, ReadNoise::Uniform(self.data.sigma_r2))?
            .with_trusted(trusted)?;
        if let Some(f) = &self.data.freq {
            target = target.with_freq(f)?;
        }
        let ev = target.evaluate(&model)?;
        let mut f = ev.f;
        if let Some(g) = grad {
            let dvdx = self.params.set.dvalue_dx(x);
            let n_roi = self.params.n_rois;
            // Σ_i raw_i·dfdm_i per ROI, for G and the ROI scales.
            let mut roi_sum = vec![0.0; n_roi];
            for i in 0..out.values.len() {
                roi_sum[self.data.roi_of[i] as usize] += out.values[i] * ev.dfdm[i];
            }
            let mut k = 0usize;
            for (j, slot) in self.params.slots.iter().enumerate() {
                g[j] = match *slot {
                    Slot::Kernel(_) => {
                        let row = &out.derivs[k];
                        k += 1;
                        let mut s = 0.0;
                        for i in 0..row.len() {
                            s += scale[i] * row[i] * ev.dfdm[i];
                        }
                        s * dvdx[j]
                    }
                    Slot::G => (0..n_roi).map(|r| v.roi_scale[r] * roi_sum[r]).sum::<f64>() * dvdx[j],
                    Slot::RoiScale(r) => v.g * roi_sum[r] * dvdx[j],
                };
            }
            f += restraints::apply(&self.params.set, x, g);
            if let Some(nv) = &self.params.nvol {
                f += nv.apply(&self.params.set, x, g)?;
            }
        } else {
            let mut dummy = vec![0.0; x.len()];
            f += restraints::apply(&self.params.set, x, &mut dummy);
            if let Some(nv) = &self.params.nvol {
                f += nv.apply(&self.params.set, x, &mut dummy)?;
            }
        }
        if !f.is_finite() {
            return Err(Error::msg(format!("target is not finite ({f})")));
        }
        Ok(Eval { f, sigz: ev.sigz, raw: out.values, model, values: v, derivs: out.derivs })
    }
}

/// A crystal model for the kernel from a U matrix and the starting values.
pub fn base_crystal(
    u: Mat3,
    ucell: UcellParams,
    o_matrix: Mat3,
    ncells: [f64; 6],
    no_nabc_scale: bool,
) -> CrystalModel {
    let mut c = CrystalModel::new(u, ucell, [ncells[0], ncells[1], ncells[2]]);
    c.ncells = ncells;
    c.o_matrix = o_matrix;
    c.no_nabc_scale = no_nabc_scale;
    c
}
