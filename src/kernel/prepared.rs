//! A shot with every per-shot and per-domain quantity hoisted out of the pixel
//! loop: lab-frame panel frames (after the refined shifts and rotations),
//! per-domain index matrices, the flattened (domain × source) step list in
//! structure-of-arrays form, the N tensor and the derivative plans.
//!
//! Step list: index `i = m·N_src + c` (sources vary fastest), padded with
//! zero-weight steps to a multiple of [`LANES`]. For step i,
//! `h = Ms_i·(k̂ − ŝ0)` with `Ms_i = A_real(m)ᵀ/λ'_c`, because every source
//! shares the beam direction (no divergence), so `q = (k̂ − ŝ0)/λ'_c`.

use super::fhkl::{FhklTable, SlotLut};
use super::model::LatticeShape;
use super::mosaic::generate_umats;
use super::shot::{MosaicSpec, Param, ShotModel};
use crate::conventions::{
    axis_angle, daxis_angle, drot_x, drot_y, drot_z, rot_x, rot_y, rot_z, Mat3, Vec3, R_E_SQR_M2,
};
use crate::error::{Error, Result};

/// Steps processed together in the inner loop (8 doubles = one AVX-512 register).
pub const LANES: usize = 8;

/// [`LANES`] consecutive steps: `Ms` row-major entry k in `ms[k]`, the
/// normalised weight, 1/λ', the uncorrected λ and the channel (as a double).
/// Padding steps have weight 0.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(crate) struct StepBlock {
    pub ms: [[f64; LANES]; 9],
    pub w: [f64; LANES],
    pub s: [f64; LANES],
    pub lam: [f64; LANES],
    pub chan_f: [f64; LANES],
}

impl StepBlock {
    fn padding() -> StepBlock {
        StepBlock {
            ms: [[0.0; LANES]; 9],
            w: [0.0; LANES],
            s: [1.0; LANES],
            lam: [1.0; LANES],
            chan_f: [0.0; LANES],
        }
    }
}

/// Instruction set of the step loops. The results do not depend on it (the
/// loops use no fused multiply-add), only the speed does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdLevel {
    Generic,
    /// x86-64 AVX2 + FMA (4 doubles per register).
    Avx2,
    /// x86-64 AVX-512 F/DQ/VL (8 doubles per register).
    Avx512,
}

impl SimdLevel {
    /// The best level this CPU supports.
    pub fn detect() -> SimdLevel {
        static LEVEL: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| {
            [SimdLevel::Avx512, SimdLevel::Avx2]
                .into_iter()
                .find(|l| l.is_supported())
                .unwrap_or(SimdLevel::Generic)
        })
    }

    pub fn is_supported(self) -> bool {
        match self {
            SimdLevel::Generic => true,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// Per-(ASU, channel) structure-factor intensity scales `s[a + c·n_asu]`.
#[derive(Clone, Debug, PartialEq)]
pub struct FhklScales {
    pub n_channels: usize,
    pub values: Vec<f64>,
}

impl FhklScales {
    /// All ones.
    pub fn ones(n_asu: usize, n_channels: usize) -> FhklScales {
        FhklScales { n_channels, values: vec![1.0; n_asu * n_channels] }
    }
}

/// A panel as the pixel loop needs it.
#[derive(Clone, Debug)]
pub(crate) struct PanelPre {
    pub origin: Vec3,
    pub fast: Vec3,
    pub slow: Vec3,
    /// Outward unit normal (away from the sample).
    pub normal: Vec3,
    pub px: [f64; 2],
    pub n: [usize; 2],
    pub area: f64,
    /// Layers, layer thickness (mm), attenuation length (mm); `absorbs` false → one layer, capture 1.
    pub layers: usize,
    pub dz: f64,
    pub att: f64,
    pub absorbs: bool,
    /// For rotation j: ∂P/∂ω_j = d[j][0] + F·d[j][1] + S·d[j][2] + depth·d[j][3]; ∂n̂/∂ω_j = d[j][3].
    pub drot: [[Vec3; 4]; 3],
}

/// How one requested parameter enters the model.
#[derive(Clone, Debug)]
pub(crate) enum PKind {
    /// Through the index matrices: ∂M_m (per domain).
    Crystal(Vec<Mat3>),
    /// N tensor entry: dN and `2·tr(N⁻¹dN)` (0 with no_Nabc_scale).
    Ncells {
        dn: Mat3,
        tr2: f64,
    },
    Scale,
    Lambda0,
    Lambda1,
    DetZ,
    Shift {
        panel: usize,
        axis: usize,
    },
    Rot {
        panel: usize,
        axis: usize,
    },
}

/// A shot ready for the pixel loops. Borrow the structure-factor table.
pub struct PreparedShot<'a> {
    pub(crate) fhkl: &'a FhklTable,
    pub(crate) lut: SlotLut,
    /// `(n_asu + 1)·n_chan` scales, the extra "no ASU" slot of each channel = 1.
    pub(crate) scale_ext: Option<Vec<f64>>,
    pub(crate) n_asu: usize,
    pub(crate) n_chan: usize,
    pub(crate) panels: Vec<PanelPre>,
    pub(crate) inc: Vec3,
    pub(crate) pol_e: Vec3,
    pub(crate) pol_b: Vec3,
    pub(crate) kahn: f64,
    pub(crate) polarize: bool,
    /// r_e²·Φ·G·det(N)²/(N_mos·os²) (det² only for the Gaussian fast path).
    pub(crate) pref: f64,
    /// Same without G (for ∂/∂G).
    pub(crate) pref_no_g: f64,
    pub(crate) os: usize,
    pub(crate) point_pixel: bool,
    /// Ω and P at the first sub-pixel (nanoBragg) instead of per sub-pixel / at the centre.
    pub(crate) first_subpixel: bool,
    pub(crate) shape: LatticeShape,
    /// N row-major, whether it is diagonal, det(N) (1 with no_Nabc_scale) and the diagonal.
    pub(crate) nm: [f64; 9],
    pub(crate) n_diag_only: bool,
    pub(crate) det_n: f64,
    pub(crate) n_diag: [f64; 3],
    pub(crate) n_src: usize,
    pub(crate) n_dom: usize,
    pub(crate) n_pad: usize,
    /// The step list in blocks of [`LANES`] (structure of arrays inside a block).
    pub(crate) blocks: Vec<StepBlock>,
    /// The channel of each step (flat, for the scalar paths).
    pub(crate) chan: Vec<u32>,
    /// `A_real(m)ᵀ` per domain (for the detector derivatives).
    pub(crate) m_dom: Vec<Mat3>,
    pub(crate) params: Vec<Param>,
    pub(crate) kinds: Vec<PKind>,
    pub(crate) simd: SimdLevel,
}

impl std::fmt::Debug for PreparedShot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedShot")
            .field("panels", &self.panels.len())
            .field("sources", &self.n_src)
            .field("domains", &self.n_dom)
            .field("oversample", &self.os)
            .field("shape", &self.shape)
            .field("params", &self.params)
            .field("simd", &self.simd)
            .finish_non_exhaustive()
    }
}

impl<'a> PreparedShot<'a> {
    /// Validate `model` and hoist everything. `params`: the derivatives that
    /// [`Self::forward_with_derivs`](super::cpu) will return (may be empty).
    /// `scales`: per-(ASU, channel) |F|² scales, needed for the Fhkl gradient.
    pub fn new(
        model: &ShotModel,
        fhkl: &'a FhklTable,
        scales: Option<&FhklScales>,
        params: &[Param],
    ) -> Result<PreparedShot<'a>> {
        model.validate()?;
        let c = &model.crystal;
        let n_asu = fhkl.n_asu();
        let (scale_ext, n_chan) = match scales {
            None => (None, 1),
            Some(sc) => {
                if sc.n_channels == 0 || sc.values.len() != n_asu * sc.n_channels {
                    return Err(Error::param(
                        "fhkl_scales",
                        format!(
                            "{} values for {} ASU ids × {} channels",
                            sc.values.len(),
                            n_asu,
                            sc.n_channels
                        ),
                    ));
                }
                if let Some(i) = sc.values.iter().position(|v| !v.is_finite()) {
                    return Err(Error::param(format!("fhkl_scales[{i}]"), "not finite"));
                }
                let mut ext = Vec::with_capacity((n_asu + 1) * sc.n_channels);
                for ch in 0..sc.n_channels {
                    ext.extend_from_slice(&sc.values[ch * n_asu..(ch + 1) * n_asu]);
                    ext.push(1.0);
                }
                (Some(ext), sc.n_channels)
            }
        };
        if (n_asu + 1).checked_mul(n_chan).is_none_or(|x| x >= 1 << 32) {
            return Err(Error::param(
                "fhkl_scales",
                format!("{n_asu} ASU ids × {n_chan} channels is too many"),
            ));
        }
        // Channel ids matter only with scales; without them every source reads channel 0.
        let chan_of = |s: &super::shot::Source| if scales.is_some() { s.channel } else { 0 };
        if let Some((i, s)) = model.sources.iter().enumerate().find(|(_, s)| chan_of(s) as usize >= n_chan) {
            return Err(Error::param(
                format!("sources[{i}].channel"),
                format!("channel {} but only {n_chan} Fhkl channel(s)", s.channel),
            ));
        }

        // Mosaic domains.
        let (umats, d_umats) = match &c.mosaic {
            MosaicSpec::Single => (vec![Mat3::identity()], vec![]),
            MosaicSpec::Explicit(v) => (v.clone(), vec![]),
            MosaicSpec::Generated { n_domains, eta, axes } => {
                let d = generate_umats(*n_domains, eta, axes)?;
                (d.umats, d.d_umats)
            }
        };
        let n_dom = umats.len();

        // Crystal matrices: A_m = Umos_m·Rx·Ry·Rz·U·B·Oᵀ, M_m = A_mᵀ.
        let [rx, ry, rz] = c.rot_xyz;
        let (mx, my, mz) = (rot_x(rx), rot_y(ry), rot_z(rz));
        let rxyz = mx * my * mz;
        let b_real = c.ucell.b_real();
        let ot = c.o_matrix.transpose();
        let t = c.u * b_real * ot;
        let m_dom: Vec<Mat3> = umats.iter().map(|um| (um * rxyz * t).transpose()).collect();

        // Sources, weights normalised to sum 1.
        let wsum: f64 = model.sources.iter().map(|s| s.weight).sum();
        let n_src = model.sources.len();
        let n_flat = n_src * n_dom;
        let n_pad = n_flat.div_ceil(LANES) * LANES;
        let mut blocks = vec![StepBlock::padding(); n_pad / LANES];
        let mut chan = vec![0u32; n_pad];
        for (m, mm) in m_dom.iter().enumerate() {
            for (ci, src) in model.sources.iter().enumerate() {
                let i = m * n_src + ci;
                let (bl, l) = (&mut blocks[i / LANES], i % LANES);
                let inv = 1.0 / (model.lambda_coef[0] + model.lambda_coef[1] * src.wavelength);
                for r in 0..3 {
                    for k in 0..3 {
                        bl.ms[3 * r + k][l] = mm[(r, k)] * inv;
                    }
                }
                bl.w[l] = src.weight / wsum;
                bl.s[l] = inv;
                bl.lam[l] = src.wavelength;
                bl.chan_f[l] = chan_of(src) as f64;
                chan[i] = chan_of(src);
            }
        }

        // N tensor.
        let n = c.n_matrix();
        let det = n.determinant();
        let det_n = if c.no_nabc_scale { 1.0 } else { det };
        let n_inv = n.try_inverse().ok_or_else(|| Error::param("ncells", "N is singular"))?;
        let nm = [
            n[(0, 0)],
            n[(0, 1)],
            n[(0, 2)],
            n[(1, 0)],
            n[(1, 1)],
            n[(1, 2)],
            n[(2, 0)],
            n[(2, 1)],
            n[(2, 2)],
        ];
        let n_diag_only = c.ncells[3] == 0.0 && c.ncells[4] == 0.0 && c.ncells[5] == 0.0;

        // Panels (with shifts and rotations) and the beam.
        let sh = &model.shifts;
        let inc = model.beam.unit_s0();
        let mut panels = Vec::with_capacity(model.detector.panels.len());
        for (pi, p) in model.detector.panels.iter().enumerate() {
            let n0 = p.outward_normal();
            let centre = sh.panel_rot_centre.get(pi).copied().unwrap_or_else(|| {
                p.pixel_to_lab(p.image_size[0] as f64 / 2.0, p.image_size[1] as f64 / 2.0)
            });
            let w3 = sh.panel_rot.get(pi).copied().unwrap_or([0.0; 3]);
            let axes = [n0, p.fast, p.slow];
            let r: [Mat3; 3] = std::array::from_fn(|j| axis_angle(&axes[j], w3[j]));
            let dr: [Mat3; 3] = std::array::from_fn(|j| daxis_angle(&axes[j], w3[j]));
            let rp = r[0] * r[1] * r[2];
            let drp = [dr[0] * r[1] * r[2], r[0] * dr[1] * r[2], r[0] * r[1] * dr[2]];
            let shift =
                sh.panel_shift.get(pi).copied().unwrap_or_else(Vec3::zeros) + Vec3::z() * sh.detz_shift;
            let o0 = p.origin - centre;
            let absorbs = p.thickness > 0.0 && p.mu > 0.0;
            let layers = if absorbs { model.thickness_layers } else { 1 };
            panels.push(PanelPre {
                origin: centre + rp * o0 + shift,
                fast: rp * p.fast,
                slow: rp * p.slow,
                normal: rp * n0,
                px: p.pixel_size,
                n: p.image_size,
                area: p.pixel_size[0] * p.pixel_size[1],
                layers,
                dz: if absorbs { p.thickness / layers as f64 } else { 0.0 },
                att: if absorbs { 1.0 / p.mu } else { 0.0 },
                absorbs,
                drot: std::array::from_fn(|j| [drp[j] * o0, drp[j] * p.fast, drp[j] * p.slow, drp[j] * n0]),
            });
        }
        let (pol_e, pol_b) = if model.polarization {
            let e = model.beam.polarization_axis();
            // Make E exactly ⟂ to the beam, then B = inc × E.
            let e = (e - inc * inc.dot(&e)).normalize();
            (e, inc.cross(&e))
        } else {
            (Vec3::x(), Vec3::y())
        };

        let os = model.oversample;
        let gauss = c.shape == LatticeShape::Gauss;
        let pref_no_g = R_E_SQR_M2 * model.fluence * if gauss { det_n * det_n } else { 1.0 }
            / (n_dom as f64 * (os * os) as f64);

        // Derivative plans.
        if !params.is_empty() && !gauss {
            return Err(Error::param(
                "lattice_shape",
                format!("derivatives are implemented for the Gaussian shape only, not {:?}", c.shape),
            ));
        }
        let n_panels = panels.len();
        let mut kinds = Vec::with_capacity(params.len());
        for p in params {
            let per_dom =
                |f: &dyn Fn(usize) -> Mat3| -> Vec<Mat3> { (0..n_dom).map(|m| f(m).transpose()).collect() };
            let k = match *p {
                Param::RotX => PKind::Crystal(per_dom(&|m| umats[m] * drot_x(rx) * my * mz * t)),
                Param::RotY => PKind::Crystal(per_dom(&|m| umats[m] * mx * drot_y(ry) * mz * t)),
                Param::RotZ => PKind::Crystal(per_dom(&|m| umats[m] * mx * my * drot_z(rz) * t)),
                Param::Ucell(i) => {
                    let db = c.ucell.d_b_real();
                    let Some(dbi) = db.get(i) else {
                        return Err(Error::param(
                            p.name(),
                            format!("{:?} has {} cell parameters", c.ucell.system, db.len()),
                        ));
                    };
                    let x = c.u * dbi * ot;
                    PKind::Crystal(per_dom(&|m| umats[m] * rxyz * x))
                }
                Param::Eta(j) => {
                    let Some(du) = d_umats.get(j) else {
                        return Err(Error::param(
                            p.name(),
                            "η derivatives need generated mosaic domains with that many η parameters",
                        ));
                    };
                    PKind::Crystal(per_dom(&|m| du[m] * rxyz * t))
                }
                Param::Ncells(np) => {
                    let dn = np.dn();
                    let tr2 = if c.no_nabc_scale { 0.0 } else { 2.0 * (n_inv * dn).trace() };
                    PKind::Ncells { dn, tr2 }
                }
                Param::Scale => PKind::Scale,
                Param::LambdaOffset => PKind::Lambda0,
                Param::LambdaScale => PKind::Lambda1,
                Param::DetzShift => PKind::DetZ,
                Param::PanelShift { panel, axis } | Param::PanelRot { panel, axis } => {
                    if panel >= n_panels || axis > 2 {
                        return Err(Error::param(
                            p.name(),
                            format!("panel {panel}/axis {axis} out of range"),
                        ));
                    }
                    if matches!(p, Param::PanelShift { .. }) {
                        PKind::Shift { panel, axis }
                    } else {
                        PKind::Rot { panel, axis }
                    }
                }
            };
            kinds.push(k);
        }

        Ok(PreparedShot {
            fhkl,
            lut: fhkl.slot_lut(),
            scale_ext,
            n_asu,
            n_chan,
            panels,
            inc,
            pol_e,
            pol_b,
            kahn: model.beam.kahn_factor(),
            polarize: model.polarization,
            pref: pref_no_g * model.scale,
            pref_no_g,
            os,
            point_pixel: model.point_pixel,
            first_subpixel: model.subpixel_factors == super::shot::SubpixelFactors::FirstSubpixel,
            shape: c.shape,
            nm,
            n_diag_only,
            det_n,
            n_diag: [nm[0], nm[4], nm[8]],
            n_src,
            n_dom,
            n_pad,
            blocks,
            chan,
            m_dom,
            params: params.to_vec(),
            kinds,
            simd: SimdLevel::detect(),
        })
    }

    /// Choose the instruction set of the step loops (default: the best available).
    pub fn set_simd(&mut self, level: SimdLevel) -> Result<()> {
        if !level.is_supported() {
            return Err(Error::param("simd", format!("{level:?} is not supported by this CPU")));
        }
        self.simd = level;
        Ok(())
    }

    pub fn simd(&self) -> SimdLevel {
        self.simd
    }

    /// The requested derivative parameters, in output-row order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Steps per pixel (sub-pixels × layers × sources × domains) on panel `p`.
    pub fn steps_per_pixel(&self, panel: usize) -> usize {
        self.os * self.os * self.panels[panel].layers * self.n_src * self.n_dom
    }

    pub fn n_domains(&self) -> usize {
        self.n_dom
    }

    pub fn n_sources(&self) -> usize {
        self.n_src
    }

    /// Number of Fhkl channels (1 without scales).
    pub fn n_channels(&self) -> usize {
        self.n_chan
    }

    pub fn n_panels(&self) -> usize {
        self.panels.len()
    }

    pub(crate) fn panel_dims(&self, p: usize) -> [usize; 2] {
        self.panels[p].n
    }
}
