//! The CPU loops: pixels in parallel (rayon), then sub-pixels and sensor
//! layers, then the flattened (domain × source) steps in blocks of
//! [`LANES`] that the compiler vectorises (no branches, no library calls in
//! the block; the |F|² gather and the accumulation follow per lane).
//!
//! Derivatives are reduced at the sub-pixel level instead of per step: per
//! domain m the loop accumulates `H_m = Σ_c (−2C·J·s_c)·N·V`, and since
//! `h = M_m·u·s_c` with `u = k̂ − ŝ0`, any parameter θ that moves the index
//! matrix contributes `Σ_m H_m·(∂M_m/∂θ·u)`, and any parameter that moves the
//! pixel contributes `(Σ_m M_mᵀH_m)·∂k̂/∂θ`. So the per-step cost of the
//! gradient does not grow with the number of rotation, cell, η or detector
//! parameters.

use super::fhkl::FhklTable;
use super::model::{
    capture_fraction, direction_derivative, exp_neg_with, lattice_intensity, madd, polarization,
    polarization_grad, round_miller_f, round_miller_with, solid_angle, solid_angle_derivative,
    solid_angle_point, solid_angle_point_derivative, LatticeShape, GAUSS_C, GAUSS_CUTOFF,
};
use super::pixels::{validate_pixels, Pixel};
use super::prepared::{PKind, PanelPre, PreparedShot, SimdLevel, LANES};
use crate::conventions::Vec3;
use crate::error::{Error, Result};
use rayon::prelude::*;

const FWD: u8 = 0;
const GRAD: u8 = 1;
const FHKL: u8 = 2;
/// Per-pixel ∂value/∂s collected in `SubAcc::pix` (for the Fhkl curvature).
const CURV: u8 = 3;

/// Pixels per parallel task.
const CHUNK: usize = 32;

/// Bragg values and their derivatives.
#[derive(Clone, Debug, Default)]
pub struct KernelOutput {
    /// Per-pixel Bragg value, photons (G included; no roi_scale or background).
    pub values: Vec<f64>,
    /// `derivs[k][p] = ∂values[p]/∂params[k]` (units per the [`super::Param`] docs).
    pub derivs: Vec<Vec<f64>>,
}

/// Per sub-pixel accumulators.
struct SubAcc {
    i: f64,
    /// H_m per domain.
    h: Vec<[f64; 3]>,
    l0: f64,
    l1: f64,
    /// Σ J·sym(V⊗Δh): (00, 11, 22, 01+10, 12+21, 02+20).
    na: [f64; 6],
    /// Per-step −2C·J·s·(N·V) (x, y, z), reduced into `h`.
    cw: [Vec<f64>; 3],
    /// CURV mode: this pixel's ∂value/∂s per scale index `a + c·n_asu` (few entries).
    pix: Vec<(u32, f64)>,
}

impl SubAcc {
    fn new(n_dom: usize, n_pad: usize) -> SubAcc {
        SubAcc {
            i: 0.0,
            h: vec![[0.0; 3]; n_dom],
            l0: 0.0,
            l1: 0.0,
            na: [0.0; 6],
            cw: std::array::from_fn(|_| vec![0.0; n_pad]),
            pix: Vec::new(),
        }
    }
    fn reset<const MODE: u8>(&mut self) {
        self.i = 0.0;
    }
}

struct Scratch {
    acc: SubAcc,
    /// Per-parameter sums over sub-pixels of ∂(Ω·cap·I_sub)/∂θ.
    ds: Vec<f64>,
    /// Final per-pixel derivatives.
    d: Vec<f64>,
}

impl<'a> PreparedShot<'a> {
    /// Bragg values of `pixels` (photons).
    pub fn forward(&self, pixels: &[Pixel]) -> Result<Vec<f64>> {
        self.check_pixels(pixels)?;
        let mut out = vec![0.0; pixels.len()];
        self.dispatch::<FWD>(pixels, &mut out, &mut [], &[], &mut []);
        Ok(out)
    }

    /// Bragg values and the dense derivative rows of every requested parameter.
    pub fn forward_with_derivs(&self, pixels: &[Pixel]) -> Result<KernelOutput> {
        let np = self.params.len();
        if np == 0 {
            return Ok(KernelOutput { values: self.forward(pixels)?, derivs: vec![] });
        }
        self.check_pixels(pixels)?;
        let mut values = vec![0.0; pixels.len()];
        // Pixel-major while computing (each task owns its pixels' rows), then transposed.
        let mut pm = vec![0.0; pixels.len() * np];
        self.dispatch::<GRAD>(pixels, &mut values, &mut pm, &[], &mut []);
        let mut derivs = vec![vec![0.0; pixels.len()]; np];
        for (p, row) in pm.chunks_exact(np).enumerate() {
            for (k, &d) in row.iter().enumerate() {
                derivs[k][p] = d;
            }
        }
        Ok(KernelOutput { values, derivs })
    }

    /// `Σ_p weights[p]·∂values[p]/∂s_{a,c}` as a dense array `[a + c·n_asu]`
    /// (length n_asu·n_channels): the stage-2 gradient of the per-(ASU,
    /// channel) |F|² scales, given `weights[p] = ∂f/∂model_p·roi_scale_p`.
    /// Needs the shot to be prepared with scales.
    pub fn fhkl_scale_gradient(&self, pixels: &[Pixel], weights: &[f64]) -> Result<Vec<f64>> {
        self.check_pixels(pixels)?;
        if self.scale_ext.is_none() {
            return Err(Error::param(
                "fhkl_scales",
                "the Fhkl-scale gradient needs a shot prepared with scales",
            ));
        }
        if weights.len() != pixels.len() {
            return Err(Error::param(
                "weights",
                format!("{} weights for {} pixels", weights.len(), pixels.len()),
            ));
        }
        if let Some(i) = weights.iter().position(|w| !w.is_finite()) {
            return Err(Error::param(format!("weights[{i}]"), "not finite"));
        }
        let mut grad = vec![0.0; self.n_asu * self.n_chan];
        let mut vals = vec![0.0; pixels.len()];
        self.dispatch::<FHKL>(pixels, &mut vals, &mut [], weights, &mut grad);
        Ok(grad)
    }

    /// `Σ_p weights[p]·(∂values[p]/∂θ_k)²` for every output slot k, where θ_k
    /// is the sum of the scales mapped to it: `key[a + c·n_asu] = k` (or
    /// `u32::MAX` to leave that scale out) ties several (ASU, channel) scales
    /// to one parameter, whose per-pixel derivative is the sum of theirs.
    /// The derivative of each pixel is summed over all its sub-steps before it
    /// is squared: with Fisher weights this is the diagonal of the
    /// Gauss–Newton curvature of a pixel target (stage-2 σ of the scales).
    /// Needs the shot to be prepared with scales.
    pub fn fhkl_scale_curvature(
        &self,
        pixels: &[Pixel],
        weights: &[f64],
        key: &[u32],
        n_out: usize,
    ) -> Result<Vec<f64>> {
        self.check_pixels(pixels)?;
        if self.scale_ext.is_none() {
            return Err(Error::param(
                "fhkl_scales",
                "the Fhkl-scale curvature needs a shot prepared with scales",
            ));
        }
        if weights.len() != pixels.len() {
            return Err(Error::param(
                "weights",
                format!("{} weights for {} pixels", weights.len(), pixels.len()),
            ));
        }
        if let Some(i) = weights.iter().position(|w| !w.is_finite()) {
            return Err(Error::param(format!("weights[{i}]"), "not finite"));
        }
        if key.len() != self.n_asu * self.n_chan {
            return Err(Error::param(
                "key",
                format!("{} entries for {} ASU ids × {} channels", key.len(), self.n_asu, self.n_chan),
            ));
        }
        if let Some(i) = key.iter().position(|&k| k != u32::MAX && k as usize >= n_out) {
            return Err(Error::param(format!("key[{i}]"), format!("slot {} ≥ {n_out}", key[i])));
        }
        let new_scratch = || Scratch { acc: SubAcc::new(self.n_dom, self.n_pad), ds: vec![], d: vec![] };
        let per_pixel = |sc: &mut Scratch, px: &Pixel| {
            if self.n_diag_only {
                self.pixel::<CURV, true, true>(px, sc, 1.0, &mut [])
            } else {
                self.pixel::<CURV, true, false>(px, sc, 1.0, &mut [])
            }
        };
        let total = pixels
            .par_chunks(CHUNK * 8)
            .zip(weights.par_chunks(CHUNK * 8))
            .fold(
                || vec![0.0; n_out],
                |mut acc, (pxs, ws)| {
                    let mut sc = new_scratch();
                    let mut tied: Vec<(u32, f64)> = Vec::new();
                    for (px, &w) in pxs.iter().zip(ws) {
                        per_pixel(&mut sc, px);
                        tied.clear();
                        for &(k, d) in &sc.acc.pix {
                            let slot = key[k as usize];
                            if slot != u32::MAX {
                                pix_add(&mut tied, slot, d);
                            }
                        }
                        for &(slot, d) in &tied {
                            acc[slot as usize] += w * d * d;
                        }
                    }
                    acc
                },
            )
            .reduce(
                || vec![0.0; n_out],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        Ok(total)
    }

    fn check_pixels(&self, pixels: &[Pixel]) -> Result<()> {
        let dims: Vec<[usize; 2]> = (0..self.n_panels()).map(|p| self.panel_dims(p)).collect();
        validate_pixels(pixels, &dims)
    }

    fn dispatch<const MODE: u8>(
        &self,
        pixels: &[Pixel],
        values: &mut [f64],
        pm: &mut [f64],
        weights: &[f64],
        grad: &mut [f64],
    ) {
        match (self.scale_ext.is_some(), self.n_diag_only) {
            (false, true) => self.run::<MODE, false, true>(pixels, values, pm, weights, grad),
            (false, false) => self.run::<MODE, false, false>(pixels, values, pm, weights, grad),
            (true, true) => self.run::<MODE, true, true>(pixels, values, pm, weights, grad),
            (true, false) => self.run::<MODE, true, false>(pixels, values, pm, weights, grad),
        }
    }

    fn run<const MODE: u8, const SCALED: bool, const DIAG: bool>(
        &self,
        pixels: &[Pixel],
        values: &mut [f64],
        pm: &mut [f64],
        weights: &[f64],
        grad: &mut [f64],
    ) {
        let np = self.params.len();
        let new_scratch =
            || Scratch { acc: SubAcc::new(self.n_dom, self.n_pad), ds: vec![0.0; np], d: vec![0.0; np] };
        match MODE {
            FWD => values.par_chunks_mut(CHUNK).zip(pixels.par_chunks(CHUNK)).for_each(|(vals, pxs)| {
                let mut sc = new_scratch();
                for (v, px) in vals.iter_mut().zip(pxs) {
                    *v = self.pixel::<FWD, SCALED, DIAG>(px, &mut sc, 0.0, &mut []);
                }
            }),
            GRAD => {
                debug_assert!(np > 0 && pm.len() == np * pixels.len());
                values
                    .par_chunks_mut(CHUNK)
                    .zip(pm.par_chunks_mut(CHUNK * np))
                    .zip(pixels.par_chunks(CHUNK))
                    .for_each(|((vals, ds), pxs)| {
                        let mut sc = new_scratch();
                        for (k, (v, px)) in vals.iter_mut().zip(pxs).enumerate() {
                            *v = self.pixel::<GRAD, SCALED, DIAG>(px, &mut sc, 0.0, &mut []);
                            ds[k * np..(k + 1) * np].copy_from_slice(&sc.d);
                        }
                    })
            }
            _ => {
                let n = grad.len();
                let total = values
                    .par_chunks_mut(CHUNK * 8)
                    .zip(pixels.par_chunks(CHUNK * 8))
                    .zip(weights.par_chunks(CHUNK * 8))
                    .fold(
                        || vec![0.0; n],
                        |mut acc, ((vals, pxs), ws)| {
                            let mut sc = new_scratch();
                            for ((v, px), &w) in vals.iter_mut().zip(pxs).zip(ws) {
                                *v = self.pixel::<FHKL, SCALED, DIAG>(px, &mut sc, w, &mut acc);
                            }
                            acc
                        },
                    )
                    .reduce(
                        || vec![0.0; n],
                        |mut a, b| {
                            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                            a
                        },
                    );
                grad.copy_from_slice(&total);
            }
        }
    }

    /// One pixel: returns its value; in GRAD mode fills `sc.d`; in FHKL mode
    /// adds `wp·∂value/∂s` into `fout`. Dispatches to the instruction set
    /// chosen for this shot (the maths is identical: no fused multiply-adds).
    #[inline(always)]
    fn pixel<const MODE: u8, const SCALED: bool, const DIAG: bool>(
        &self,
        px: &Pixel,
        sc: &mut Scratch,
        wp: f64,
        fout: &mut [f64],
    ) -> f64 {
        match self.simd {
            // SAFETY: `SimdLevel::detect`/`set_simd` only select a level the CPU supports.
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => unsafe { self.pixel_avx512::<MODE, SCALED, DIAG>(px, sc, wp, fout) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => unsafe { self.pixel_avx2::<MODE, SCALED, DIAG>(px, sc, wp, fout) },
            _ => self.pixel_generic::<MODE, SCALED, DIAG>(px, sc, wp, fout),
        }
    }

    #[inline(never)]
    fn pixel_generic<const MODE: u8, const SCALED: bool, const DIAG: bool>(
        &self,
        px: &Pixel,
        sc: &mut Scratch,
        wp: f64,
        fout: &mut [f64],
    ) -> f64 {
        self.pixel_body::<MODE, SCALED, DIAG, false>(px, sc, wp, fout)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    unsafe fn pixel_avx2<const MODE: u8, const SCALED: bool, const DIAG: bool>(
        &self,
        px: &Pixel,
        sc: &mut Scratch,
        wp: f64,
        fout: &mut [f64],
    ) -> f64 {
        self.pixel_body::<MODE, SCALED, DIAG, true>(px, sc, wp, fout)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
    #[inline(never)]
    unsafe fn pixel_avx512<const MODE: u8, const SCALED: bool, const DIAG: bool>(
        &self,
        px: &Pixel,
        sc: &mut Scratch,
        wp: f64,
        fout: &mut [f64],
    ) -> f64 {
        self.pixel_body::<MODE, SCALED, DIAG, true>(px, sc, wp, fout)
    }

    #[inline(always)]
    fn pixel_body<const MODE: u8, const SCALED: bool, const DIAG: bool, const FAST: bool>(
        &self,
        px: &Pixel,
        sc: &mut Scratch,
        wp: f64,
        fout: &mut [f64],
    ) -> f64 {
        let pan = &self.panels[px.panel as usize];
        let (f, s) = (px.fast as f64, px.slow as f64);
        let os = self.os;
        let inv_os = 1.0 / os as f64;
        // Polarization once per pixel on the front face: at the pixel centre
        // (diffBragg), or at the first sub-pixel's centre (nanoBragg), where
        // that convention also fixes Ω for the whole pixel.
        let c = if self.first_subpixel { 0.5 * inv_os } else { 0.5 };
        let (fc, scn) = ((f + c) * pan.px[0], (s + c) * pan.px[1]);
        let pc = pan.origin + pan.fast * fc + pan.slow * scn;
        let rc = pc.norm();
        let kc = pc / rc;
        let pol = if self.polarize {
            polarization(&arr(&kc), &arr(&self.inc), &arr(&self.pol_e), &arr(&self.pol_b), self.kahn)
        } else {
            1.0
        };
        let fixed = self.first_subpixel.then(|| FixedOmega {
            omega: if self.point_pixel {
                solid_angle_point(rc)
            } else {
                solid_angle(pan.area, pan.normal.dot(&pc), rc)
            },
            p: pc,
            r: rc,
            k: kc,
            fd: fc,
            sd: scn,
        });
        let np = self.params.len();
        if MODE == GRAD {
            sc.ds.iter_mut().for_each(|x| *x = 0.0);
        }
        if MODE == CURV {
            sc.acc.pix.clear();
        }
        let fw_pix = wp * self.pref * pol;
        let mut ssum = 0.0;
        for sy in 0..os {
            for sx in 0..os {
                let fd = (f + (sx as f64 + 0.5) * inv_os) * pan.px[0];
                let sd = (s + (sy as f64 + 0.5) * inv_os) * pan.px[1];
                let front = pan.origin + pan.fast * fd + pan.slow * sd;
                for t in 0..pan.layers {
                    let depth = t as f64 * pan.dz;
                    let p = front + pan.normal * depth;
                    let r = p.norm();
                    let k = p / r;
                    let omega = match &fixed {
                        Some(fx) => fx.omega,
                        None if self.point_pixel => solid_angle_point(r),
                        None => solid_angle(pan.area, pan.normal.dot(&p), r),
                    };
                    let (cap, dcap) = if pan.absorbs {
                        capture_fraction(depth, pan.dz, pan.att, k.dot(&pan.normal))
                    } else {
                        (1.0, 0.0)
                    };
                    let oc = omega * cap;
                    let u = [k.x - self.inc.x, k.y - self.inc.y, k.z - self.inc.z];
                    sc.acc.reset::<MODE>();
                    if self.shape == LatticeShape::Gauss {
                        self.steps_gauss::<MODE, SCALED, DIAG, FAST>(u, &mut sc.acc, fout, fw_pix * oc);
                    } else {
                        self.steps_other::<MODE, SCALED>(u, &mut sc.acc, fout, fw_pix * oc);
                    }
                    ssum += oc * sc.acc.i;
                    if MODE == GRAD && np > 0 {
                        let geo = SubGeom { p, r, k, omega, cap, dcap, depth, fd, sd, u };
                        self.sub_derivs(pan, px.panel as usize, &geo, fixed.as_ref(), &sc.acc, &mut sc.ds);
                    }
                }
            }
        }
        let value = self.pref * pol * ssum;
        if MODE == GRAD && np > 0 {
            let pg = if self.polarize {
                polarization_grad(&arr(&kc), &arr(&self.inc), &arr(&self.pol_e), &arr(&self.pol_b), self.kahn)
            } else {
                [0.0; 3]
            };
            let pg = Vec3::new(pg[0], pg[1], pg[2]);
            for (j, kind) in self.kinds.iter().enumerate() {
                sc.d[j] = match kind {
                    PKind::Scale => self.pref_no_g * pol * ssum,
                    _ => {
                        let mut d = self.pref * pol * sc.ds[j];
                        // The polarization moves with its evaluation point.
                        if let Some(dp) = det_dp(kind, pan, px.panel as usize, fc, scn, 0.0) {
                            let dk = Vec3::from(direction_derivative(&arr(&kc), rc, &arr(&dp)));
                            d += self.pref * pg.dot(&dk) * ssum;
                        }
                        d
                    }
                };
            }
        }
        value
    }

    /// Add one sub-pixel/layer's contribution to every parameter's derivative.
    /// `fixed`: the pixel's one Ω point under the first-sub-pixel convention.
    fn sub_derivs(
        &self,
        pan: &PanelPre,
        panel: usize,
        g: &SubGeom,
        fixed: Option<&FixedOmega>,
        acc: &SubAcc,
        ds: &mut [f64],
    ) {
        let oc = g.omega * g.cap;
        let u = Vec3::new(g.u[0], g.u[1], g.u[2]);
        // γ = Σ_m M_mᵀ H_m, needed by detector parameters.
        let mut gamma: Option<Vec3> = None;
        for (j, kind) in self.kinds.iter().enumerate() {
            match kind {
                PKind::Crystal(dms) => {
                    let mut t = 0.0;
                    for (dm, h) in dms.iter().zip(&acc.h) {
                        let v = dm * u;
                        t += h[0] * v.x + h[1] * v.y + h[2] * v.z;
                    }
                    ds[j] += oc * t;
                }
                PKind::Ncells { dn, tr2 } => {
                    let na = &acc.na;
                    let c = dn[(0, 0)] * na[0]
                        + dn[(1, 1)] * na[1]
                        + dn[(2, 2)] * na[2]
                        + dn[(0, 1)] * na[3]
                        + dn[(1, 2)] * na[4]
                        + dn[(0, 2)] * na[5];
                    ds[j] += oc * (tr2 * acc.i - 2.0 * GAUSS_C * c);
                }
                PKind::Lambda0 => ds[j] += oc * acc.l0,
                PKind::Lambda1 => ds[j] += oc * acc.l1,
                PKind::Scale => {}
                _ => {
                    let Some(dp) = det_dp(kind, pan, panel, g.fd, g.sd, g.depth) else { continue };
                    let dn = match kind {
                        PKind::Rot { axis, .. } => pan.drot[*axis][3],
                        _ => Vec3::zeros(),
                    };
                    let gam = *gamma.get_or_insert_with(|| {
                        let mut v = Vec3::zeros();
                        for (m, h) in self.m_dom.iter().zip(&acc.h) {
                            v += m.transpose() * Vec3::new(h[0], h[1], h[2]);
                        }
                        v
                    });
                    let (k, dpa) = (arr(&g.k), arr(&dp));
                    let dk = Vec3::from(direction_derivative(&k, g.r, &dpa));
                    // Ω moves with the point it is evaluated at: this sub-pixel, or the fixed one.
                    let (op, ok, or, odp) = match fixed {
                        Some(fx) => {
                            // Same parameter and panel, so `det_dp` is `Some` here too.
                            let d = det_dp(kind, pan, panel, fx.fd, fx.sd, 0.0).unwrap_or(dp);
                            (fx.p, arr(&fx.k), fx.r, arr(&d))
                        }
                        None => (g.p, k, g.r, dpa),
                    };
                    let domega = if self.point_pixel {
                        solid_angle_point_derivative(&ok, or, &odp)
                    } else {
                        solid_angle_derivative(
                            pan.area,
                            &arr(&pan.normal),
                            &arr(&dn),
                            &arr(&op),
                            &ok,
                            or,
                            &odp,
                        )
                    };
                    let dcap = if pan.absorbs { g.dcap * (dk.dot(&pan.normal) + g.k.dot(&dn)) } else { 0.0 };
                    let doc = domega * g.cap + g.omega * dcap;
                    ds[j] += oc * gam.dot(&dk) + doc * acc.i;
                }
            }
        }
    }

    /// The Gaussian fast path over all steps of one sub-pixel. Each block of
    /// [`LANES`] steps is two branch-free passes the compiler vectorises: the
    /// indices, exponent and table slot; then (unless every lane is beyond the
    /// cutoff) the |F|² gather and the accumulation in per-lane registers.
    #[inline(always)]
    fn steps_gauss<const MODE: u8, const SCALED: bool, const DIAG: bool, const FAST: bool>(
        &self,
        u: [f64; 3],
        acc: &mut SubAcc,
        fout: &mut [f64],
        fw: f64,
    ) {
        let [u0, u1, u2] = u;
        let nm = self.nm;
        let lut = self.lut;
        let f2t = self.fhkl.f2_slice();
        let last = f2t.len() - 1;
        let asu = self.fhkl.asu_slice();
        let sce: &[f64] = self.scale_ext.as_deref().unwrap_or(&[]);
        let sce_last = sce.len().saturating_sub(1);
        let sstride = (self.n_asu + 1) as f64;
        let n_asu = self.n_asu;
        let c2 = 2.0 * GAUSS_C;
        let mut isum = [0.0f64; LANES];
        let mut l0 = [0.0f64; LANES];
        let mut l1 = [0.0f64; LANES];
        let mut na = [[0.0f64; LANES]; 6];
        let [cwx, cwy, cwz] = &mut acc.cw;
        for b in (0..self.n_pad).step_by(LANES) {
            let r = b..b + LANES;
            let blk = &self.blocks[b / LANES];
            let m = &blk.ms;
            let mut e = [0.0f64; LANES];
            let mut slot = [0.0f64; LANES];
            let mut dh = [[0.0f64; LANES]; 3];
            let mut hv = [[0.0f64; LANES]; 3];
            let mut vv = [[0.0f64; LANES]; 3];
            for l in 0..LANES {
                let fm = madd::<FAST>;
                let hx = fm(m[2][l], u2, fm(m[1][l], u1, m[0][l] * u0));
                let hy = fm(m[5][l], u2, fm(m[4][l], u1, m[3][l] * u0));
                let hz = fm(m[8][l], u2, fm(m[7][l], u1, m[6][l] * u0));
                let rm = round_miller_with::<FAST>;
                let (ax, ay, az) = (rm(hx), rm(hy), rm(hz));
                let (dx, dy, dz) = (hx - ax, hy - ay, hz - az);
                let (vx, vy, vz) = if DIAG {
                    (nm[0] * dx, nm[4] * dy, nm[8] * dz)
                } else {
                    (
                        fm(nm[2], dz, fm(nm[1], dy, nm[0] * dx)),
                        fm(nm[5], dz, fm(nm[4], dy, nm[3] * dx)),
                        fm(nm[8], dz, fm(nm[7], dy, nm[6] * dx)),
                    )
                };
                let x = GAUSS_C * fm(vz, vz, fm(vy, vy, vx * vx));
                let ex = exp_neg_with::<FAST>(-x);
                e[l] = if x > GAUSS_CUTOFF { 0.0 } else { ex };
                slot[l] = lut.slot_f(ax, ay, az);
                dh[0][l] = dx;
                dh[1][l] = dy;
                dh[2][l] = dz;
                hv[0][l] = hx;
                hv[1][l] = hy;
                hv[2][l] = hz;
                vv[0][l] = vx;
                vv[1][l] = vy;
                vv[2][l] = vz;
            }
            // Skip the gather when every lane is beyond the cutoff (e = +0.0 exactly).
            if e.iter().fold(0u64, |a, x| a | x.to_bits()) == 0 {
                if MODE == GRAD {
                    cwx[r.clone()].fill(0.0);
                    cwy[r.clone()].fill(0.0);
                    cwz[r].fill(0.0);
                }
                continue;
            }
            if MODE == FHKL || MODE == CURV {
                // Scatter-add into the per-(ASU, channel) gradient: one lane at a time.
                for l in 0..LANES {
                    let i = b + l;
                    let sl = slot_index(slot[l]).min(last);
                    let base = blk.w[l] * f2t[sl] * e[l];
                    let a = asu[sl] as usize;
                    let ch = self.chan[i] as usize;
                    isum[l] += base * sce[(a + ch * (n_asu + 1)).min(sce_last)];
                    if a < n_asu {
                        if MODE == FHKL {
                            fout[a + ch * n_asu] += fw * base;
                        } else {
                            pix_add(&mut acc.pix, (a + ch * n_asu) as u32, fw * base);
                        }
                    }
                }
                continue;
            }
            // The gather: J = w·|F|²(·s)·e per lane. Neighbouring steps usually hit
            // the same reflection, so one load serves the block when all slots agree.
            let w = &blk.w;
            let mut j = [0.0f64; LANES];
            let same = slot.iter().fold(true, |a, &x| a & (x == slot[0]));
            if same && !SCALED {
                let f2 = f2t[slot_index(slot[0]).min(last)];
                for l in 0..LANES {
                    j[l] = w[l] * f2 * e[l];
                }
            } else {
                for l in 0..LANES {
                    let sl = slot_index(slot[l]).min(last);
                    j[l] = w[l] * f2t[sl] * e[l];
                }
            }
            if SCALED {
                let chf = &blk.chan_f;
                for l in 0..LANES {
                    let sl = slot_index(slot[l]).min(last);
                    let k = slot_index(asu[sl] as f64 + chf[l] * sstride);
                    j[l] *= sce[k.min(sce_last)];
                }
            }
            for l in 0..LANES {
                isum[l] += j[l];
            }
            if MODE == GRAD {
                // Small single-purpose lane loops: each one vectorises on its own.
                let sv = &blk.s;
                let lam = &blk.lam;
                let [vx, vy, vz] = &vv;
                let mut wv = [[0.0f64; LANES]; 3];
                for l in 0..LANES {
                    if DIAG {
                        wv[0][l] = nm[0] * vx[l];
                        wv[1][l] = nm[4] * vy[l];
                        wv[2][l] = nm[8] * vz[l];
                    } else {
                        wv[0][l] = nm[0] * vx[l] + nm[1] * vy[l] + nm[2] * vz[l];
                        wv[1][l] = nm[3] * vx[l] + nm[4] * vy[l] + nm[5] * vz[l];
                        wv[2][l] = nm[6] * vx[l] + nm[7] * vy[l] + nm[8] * vz[l];
                    }
                }
                let mut cj = [0.0f64; LANES];
                for l in 0..LANES {
                    cj[l] = c2 * j[l] * sv[l];
                }
                let mut cw = [[0.0f64; LANES]; 3];
                for k in 0..3 {
                    for l in 0..LANES {
                        cw[k][l] = -cj[l] * wv[k][l];
                    }
                }
                for l in 0..LANES {
                    let t = cj[l] * (wv[0][l] * hv[0][l] + wv[1][l] * hv[1][l] + wv[2][l] * hv[2][l]);
                    l0[l] += t;
                    l1[l] += t * lam[l];
                }
                let [dx, dy, dz] = &dh;
                for l in 0..LANES {
                    na[0][l] += j[l] * vx[l] * dx[l];
                    na[1][l] += j[l] * vy[l] * dy[l];
                    na[2][l] += j[l] * vz[l] * dz[l];
                }
                for l in 0..LANES {
                    na[3][l] += j[l] * (vx[l] * dy[l] + vy[l] * dx[l]);
                    na[4][l] += j[l] * (vy[l] * dz[l] + vz[l] * dy[l]);
                    na[5][l] += j[l] * (vx[l] * dz[l] + vz[l] * dx[l]);
                }
                cwx[r.clone()].copy_from_slice(&cw[0]);
                cwy[r.clone()].copy_from_slice(&cw[1]);
                cwz[r].copy_from_slice(&cw[2]);
            }
        }
        acc.i = isum.iter().sum();
        if MODE == GRAD {
            acc.l0 = l0.iter().sum();
            acc.l1 = l1.iter().sum();
            for (a, lanes) in acc.na.iter_mut().zip(&na) {
                *a = lanes.iter().sum();
            }
            // H_m = Σ over domain m's sources of the per-step terms.
            let ns = self.n_src;
            for (m, h) in acc.h.iter_mut().enumerate() {
                let seg = m * ns..(m + 1) * ns;
                *h = [cwx[seg.clone()].iter().sum(), cwy[seg.clone()].iter().sum(), cwz[seg].iter().sum()];
            }
        }
    }

    /// The other lattice shapes (forward and Fhkl-gradient modes), one step at a time.
    fn steps_other<const MODE: u8, const SCALED: bool>(
        &self,
        u: [f64; 3],
        acc: &mut SubAcc,
        fout: &mut [f64],
        fw: f64,
    ) {
        let fh: &FhklTable = self.fhkl;
        let nm = self.nm;
        let sce: &[f64] = self.scale_ext.as_deref().unwrap_or(&[]);
        let mut isum = 0.0;
        for i in 0..self.n_pad {
            let (blk, l) = (&self.blocks[i / LANES], i % LANES);
            if blk.w[l] == 0.0 {
                continue;
            }
            let mut h = [0.0; 3];
            for (r, hr) in h.iter_mut().enumerate() {
                *hr = blk.ms[3 * r][l] * u[0] + blk.ms[3 * r + 1][l] * u[1] + blk.ms[3 * r + 2][l] * u[2];
            }
            let h0 = h.map(round_miller_f);
            let d = [h[0] - h0[0], h[1] - h0[1], h[2] - h0[2]];
            let v: [f64; 3] =
                std::array::from_fn(|r| nm[3 * r] * d[0] + nm[3 * r + 1] * d[1] + nm[3 * r + 2] * d[2]);
            let il = lattice_intensity(self.shape, &h, &v, self.det_n, &self.n_diag);
            if il == 0.0 {
                continue;
            }
            let sl = fh.slot(&self.lut, h0[0], h0[1], h0[2]);
            let base = blk.w[l] * fh.f2_slot(sl) * il;
            let a = fh.asu_slot(sl) as usize;
            isum += if SCALED { base * sce[a + self.chan[i] as usize * (self.n_asu + 1)] } else { base };
            if MODE == FHKL && a < self.n_asu {
                fout[a + self.chan[i] as usize * self.n_asu] += fw * base;
            }
            if MODE == CURV && a < self.n_asu {
                pix_add(&mut acc.pix, (a + self.chan[i] as usize * self.n_asu) as u32, fw * base);
            }
        }
        acc.i = isum;
    }
}

/// Add `v` to the entry for `k` (few entries: a linear search).
#[inline]
fn pix_add(v: &mut Vec<(u32, f64)>, k: u32, d: f64) {
    match v.iter_mut().find(|e| e.0 == k) {
        Some(e) => e.1 += d,
        None => v.push((k, d)),
    }
}

/// The one point where Ω (and P) are evaluated for a whole pixel under
/// [`super::SubpixelFactors::FirstSubpixel`]: position, distance, direction,
/// fast/slow offsets on the panel (mm) and Ω there.
struct FixedOmega {
    omega: f64,
    p: Vec3,
    r: f64,
    k: Vec3,
    fd: f64,
    sd: f64,
}

/// Geometry of one sub-pixel/layer.
struct SubGeom {
    p: Vec3,
    r: f64,
    k: Vec3,
    omega: f64,
    cap: f64,
    dcap: f64,
    depth: f64,
    fd: f64,
    sd: f64,
    u: [f64; 3],
}

/// ∂P/∂θ of a point (fast mm `fd`, slow mm `sd`, depth) on `panel`, for a
/// detector parameter; `None` when θ does not move this panel or is not a
/// detector parameter.
#[inline]
fn det_dp(kind: &PKind, pan: &PanelPre, panel: usize, fd: f64, sd: f64, depth: f64) -> Option<Vec3> {
    match kind {
        PKind::DetZ => Some(Vec3::z()),
        PKind::Shift { panel: q, axis } if *q == panel => {
            let mut v = Vec3::zeros();
            v[*axis] = 1.0;
            Some(v)
        }
        PKind::Rot { panel: q, axis } if *q == panel => {
            let d = &pan.drot[*axis];
            Some(d[0] + d[1] * fd + d[2] * sd + d[3] * depth)
        }
        _ => None,
    }
}

/// A non-negative integer-valued double below 2³² as an index, by bit
/// extraction (adding 2⁵² puts it in the low mantissa bits). Unlike `as`, this
/// needs no saturation checks, so the loops that use it stay vectorised.
#[inline(always)]
fn slot_index(x: f64) -> usize {
    ((x + 4503599627370496.0).to_bits() as u32) as usize
}

#[inline(always)]
fn arr(v: &Vec3) -> [f64; 3] {
    [v.x, v.y, v.z]
}
