//! The packed form of a batch of prepared shots that the GPU kernels (and the
//! host build of their maths) read: `#[repr(C)]` mirrors of the structs in
//! `kernels/diffbragg_model.cuh`, and [`pack`], which flattens
//! [`PreparedShot`]s into one byte blob (uploaded with one copy per evaluation)
//! plus the pixel records.
//!
//! Layout rules: every struct holds 8-byte fields first, then 4-byte fields
//! in pairs, so the C and Rust layouts agree without padding surprises; the
//! test `layout_matches_the_header` compares sizes and offsets with the
//! C++ compiler's. Matrices are row-major `[f64; 9]` (nalgebra is column-major:
//! entry (r, c) goes to index `3r + c`).

use crate::conventions::{Mat3, Vec3};
use crate::error::{Error, Result};
use crate::kernel::fhkl::FhklTable;
use crate::kernel::model::LatticeShape;
use crate::kernel::pixels::validate_pixels;
use crate::kernel::prepared::{PKind, PreparedShot, LANES};
use crate::kernel::Pixel;

/// Evaluation modes (`DB_MODE_*`).
pub const MODE_FWD: i32 = 0;
pub const MODE_GRAD: i32 = 1;
pub const MODE_FHKL: i32 = 2;

/// Most derivative parameters per shot on the GPU (`DB_MAX_PARAMS`).
pub const MAX_PARAMS: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DbHeader {
    pub n_shots: i64,
    pub off_shots: i64,
    pub off_panels: i64,
    pub off_steps: i64,
    pub off_mdom: i64,
    pub off_params: i64,
    pub off_dmats: i64,
    pub off_scales: i64,
    pub row: i64,
    pub total_bytes: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DbShot {
    pub inc: [f64; 3],
    pub pol_e: [f64; 3],
    pub pol_b: [f64; 3],
    pub kahn: f64,
    pub pref: f64,
    pub pref_no_g: f64,
    pub nm: [f64; 9],
    pub det_n: f64,
    pub n_diag: [f64; 3],
    pub lut_lo: [f64; 3],
    pub lut_hi: [f64; 3],
    pub lut_nk: f64,
    pub lut_nl: f64,
    pub panel_off: i64,
    pub step_off: i64,
    pub mdom_off: i64,
    pub param_off: i64,
    pub scale_off: i64,
    pub os: i32,
    pub point_pixel: i32,
    pub polarize: i32,
    pub shape: i32,
    pub n_src: i32,
    pub n_dom: i32,
    pub n_params: i32,
    pub n_asu: i32,
    pub n_panels: i32,
    pub pad_: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DbPanel {
    pub origin: [f64; 3],
    pub fast: [f64; 3],
    pub slow: [f64; 3],
    pub normal: [f64; 3],
    pub px: [f64; 2],
    pub area: f64,
    pub dz: f64,
    pub att: f64,
    pub drot: [[[f64; 3]; 4]; 3],
    pub nf: i32,
    pub ns: i32,
    pub layers: i32,
    pub absorbs: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DbStep {
    pub ms: [f64; 9],
    pub w: f64,
    pub s: f64,
    pub lam: f64,
    pub chan: u32,
    pub pad_: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DbParam {
    pub kind: i32,
    pub panel: i32,
    pub axis: i32,
    pub pad_: i32,
    pub dn: [f64; 9],
    pub tr2: f64,
    pub dmat_off: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbPixel {
    pub shot: u32,
    pub panel: u32,
    pub fast: u32,
    pub slow: u32,
}

const P_CRYSTAL: i32 = 0;
const P_NCELLS: i32 = 1;
const P_SCALE: i32 = 2;
const P_LAMBDA0: i32 = 3;
const P_LAMBDA1: i32 = 4;
const P_DETZ: i32 = 5;
const P_SHIFT: i32 = 6;
const P_ROT: i32 = 7;

/// A packed batch: the blob (as `u64`s for 8-byte alignment) and where each
/// shot's pixels are.
#[derive(Clone, Debug)]
pub struct Packed {
    pub blob: Vec<u64>,
    pub header: DbHeader,
    /// Output row length: 1 + the most derivative parameters of any shot (GRAD), else 1.
    pub row: usize,
    /// Fewest steps (sources × domains) of any shot: the useful number of parts per pixel.
    pub min_steps: usize,
    /// Parameters per shot.
    pub n_params: Vec<usize>,
    /// Length of the Fhkl-scale gradient (n_asu · n_channels), FHKL mode only.
    pub grad_len: usize,
}

impl Packed {
    pub fn blob_bytes(&self) -> &[u8] {
        // SAFETY: a u64 slice viewed as bytes (alignment 1, same length in bytes).
        unsafe { std::slice::from_raw_parts(self.blob.as_ptr() as *const u8, self.blob.len() * 8) }
    }
}

fn row_major(m: &Mat3) -> [f64; 9] {
    std::array::from_fn(|i| m[(i / 3, i % 3)])
}

fn a3(v: &Vec3) -> [f64; 3] {
    [v.x, v.y, v.z]
}

fn shape_code(s: LatticeShape) -> i32 {
    match s {
        LatticeShape::Gauss => 0,
        LatticeShape::Square => 1,
        LatticeShape::Round => 2,
        LatticeShape::Tophat => 3,
        LatticeShape::GaussArgchk => 4,
    }
}

/// Appends `T` records to a byte image, 8-byte aligned.
struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    fn align(&mut self) -> i64 {
        while self.bytes.len() % 8 != 0 {
            self.bytes.push(0);
        }
        self.bytes.len() as i64
    }
    fn put<T: Copy>(&mut self, items: &[T]) -> i64 {
        let off = self.align();
        // SAFETY: T is one of the plain #[repr(C)] records or f64 above: no
        // references, no uninitialised padding (the pad fields are explicit).
        let b =
            unsafe { std::slice::from_raw_parts(items.as_ptr() as *const u8, std::mem::size_of_val(items)) };
        self.bytes.extend_from_slice(b);
        off
    }
}

/// The shots' common Fhkl table (the kernels take one table per batch).
pub fn common_fhkl<'a>(shots: &[&PreparedShot<'a>]) -> Result<&'a FhklTable> {
    let first = shots.first().ok_or_else(|| Error::param("shots", "empty batch"))?;
    for (i, s) in shots.iter().enumerate() {
        if !std::ptr::eq(s.fhkl, first.fhkl) {
            return Err(Error::param(
                format!("shots[{i}]"),
                "every shot of a GPU batch must use the same structure-factor table",
            ));
        }
    }
    Ok(first.fhkl)
}

/// Pack `shots` for one evaluation in `mode` (`MODE_*`), checking `pixels`
/// (one list per shot) against the panels. Returns the blob and the pixel records.
pub fn pack(shots: &[&PreparedShot<'_>], pixels: &[&[Pixel]], mode: i32) -> Result<(Packed, Vec<DbPixel>)> {
    common_fhkl(shots)?;
    if pixels.len() != shots.len() {
        return Err(Error::param(
            "pixels",
            format!("{} pixel lists for {} shots", pixels.len(), shots.len()),
        ));
    }
    if shots.len() > u32::MAX as usize {
        return Err(Error::param("shots", "too many shots in one batch"));
    }
    let grad = mode == MODE_GRAD;
    let fhkl_mode = mode == MODE_FHKL;
    let mut shot_recs = Vec::with_capacity(shots.len());
    let (mut panels, mut steps, mut mdom, mut params, mut dmats) = (vec![], vec![], vec![], vec![], vec![]);
    let mut scales: Vec<f64> = vec![];
    // Scale arrays are usually identical across shots (stage 2): store each distinct one once.
    let mut scale_sets: Vec<(i64, &[f64])> = vec![];
    let mut n_params = Vec::with_capacity(shots.len());
    let mut min_steps = usize::MAX;
    let mut grad_len = 0usize;
    let mut n_pix_total = 0usize;
    for (si, shot) in shots.iter().enumerate() {
        if shot.first_subpixel {
            // The nanoBragg convention exists to compare with nanoBragg's own images
            // (kernel::SubpixelFactors); the GPU kernels implement diffBragg's only.
            return Err(Error::param(
                "subpixel_factors",
                format!("shot {si}: the nanoBragg sub-pixel convention is CPU-only; use --device cpu"),
            ));
        }
        let dims: Vec<[usize; 2]> = shot.panels.iter().map(|p| p.n).collect();
        validate_pixels(pixels[si], &dims)
            .map_err(|e| Error::param(format!("shots[{si}]"), e.to_string()))?;
        n_pix_total += pixels[si].len();
        let np = if grad { shot.kinds.len() } else { 0 };
        if np > MAX_PARAMS {
            return Err(Error::param(
                format!("shots[{si}].params"),
                format!("{np} derivative parameters; the GPU kernel takes at most {MAX_PARAMS} per shot"),
            ));
        }
        n_params.push(np);
        if fhkl_mode {
            if shot.scale_ext.is_none() {
                return Err(Error::param(
                    format!("shots[{si}]"),
                    "the Fhkl-scale gradient needs shots prepared with scales",
                ));
            }
            let len = shot.n_asu * shot.n_chan;
            if si > 0 && len != grad_len {
                return Err(Error::param(
                    format!("shots[{si}]"),
                    "every shot of an Fhkl-gradient batch needs the same number of channels",
                ));
            }
            grad_len = len;
        }
        let n_steps = shot.n_src * shot.n_dom;
        min_steps = min_steps.min(n_steps);
        if shot.n_asu >= i32::MAX as usize || shot.os > i32::MAX as usize {
            return Err(Error::param(format!("shots[{si}]"), "too large for the GPU kernel"));
        }
        let scale_off = match &shot.scale_ext {
            None => -1,
            Some(ext) => match scale_sets.iter().find(|(_, s)| *s == ext.as_slice()) {
                Some((off, _)) => *off,
                None => {
                    let off = scales.len() as i64;
                    scales.extend_from_slice(ext);
                    scale_sets.push((off, ext.as_slice()));
                    off
                }
            },
        };
        let rec = DbShot {
            inc: a3(&shot.inc),
            pol_e: a3(&shot.pol_e),
            pol_b: a3(&shot.pol_b),
            kahn: shot.kahn,
            pref: shot.pref,
            pref_no_g: shot.pref_no_g,
            nm: shot.nm,
            det_n: shot.det_n,
            n_diag: shot.n_diag,
            lut_lo: shot.lut.lo,
            lut_hi: shot.lut.hi,
            lut_nk: shot.lut.nk,
            lut_nl: shot.lut.nl,
            panel_off: panels.len() as i64,
            step_off: steps.len() as i64,
            mdom_off: (mdom.len() / 9) as i64,
            param_off: params.len() as i64,
            scale_off,
            os: shot.os as i32,
            point_pixel: shot.point_pixel as i32,
            polarize: shot.polarize as i32,
            shape: shape_code(shot.shape),
            n_src: shot.n_src as i32,
            n_dom: shot.n_dom as i32,
            n_params: np as i32,
            n_asu: shot.n_asu as i32,
            n_panels: shot.panels.len() as i32,
            pad_: 0,
        };
        shot_recs.push(rec);
        for p in &shot.panels {
            panels.push(DbPanel {
                origin: a3(&p.origin),
                fast: a3(&p.fast),
                slow: a3(&p.slow),
                normal: a3(&p.normal),
                px: p.px,
                area: p.area,
                dz: p.dz,
                att: p.att,
                drot: std::array::from_fn(|j| std::array::from_fn(|q| a3(&p.drot[j][q]))),
                nf: p.n[0] as i32,
                ns: p.n[1] as i32,
                layers: p.layers as i32,
                absorbs: p.absorbs as i32,
            });
        }
        for i in 0..n_steps {
            let (b, l) = (&shot.blocks[i / LANES], i % LANES);
            steps.push(DbStep {
                ms: std::array::from_fn(|k| b.ms[k][l]),
                w: b.w[l],
                s: b.s[l],
                lam: b.lam[l],
                chan: shot.chan[i],
                pad_: 0,
            });
        }
        for m in &shot.m_dom {
            mdom.extend_from_slice(&row_major(m));
        }
        for kind in shot.kinds.iter().take(np) {
            let mut q = DbParam::default();
            match kind {
                PKind::Crystal(dms) => {
                    q.kind = P_CRYSTAL;
                    q.dmat_off = (dmats.len() / 9) as i64;
                    for d in dms {
                        dmats.extend_from_slice(&row_major(d));
                    }
                }
                PKind::Ncells { dn, tr2 } => {
                    q.kind = P_NCELLS;
                    q.dn = row_major(dn);
                    q.tr2 = *tr2;
                }
                PKind::Scale => q.kind = P_SCALE,
                PKind::Lambda0 => q.kind = P_LAMBDA0,
                PKind::Lambda1 => q.kind = P_LAMBDA1,
                PKind::DetZ => q.kind = P_DETZ,
                PKind::Shift { panel, axis } => {
                    q.kind = P_SHIFT;
                    q.panel = *panel as i32;
                    q.axis = *axis as i32;
                }
                PKind::Rot { panel, axis } => {
                    q.kind = P_ROT;
                    q.panel = *panel as i32;
                    q.axis = *axis as i32;
                }
            }
            params.push(q);
        }
    }
    let row = 1 + n_params.iter().copied().max().unwrap_or(0);
    let mut w = Writer { bytes: vec![0u8; std::mem::size_of::<DbHeader>()] };
    let mut h = DbHeader { n_shots: shots.len() as i64, row: row as i64, ..Default::default() };
    h.off_shots = w.put(&shot_recs);
    h.off_panels = w.put(&panels);
    h.off_steps = w.put(&steps);
    h.off_mdom = w.put(&mdom);
    h.off_params = w.put(&params);
    h.off_dmats = w.put(&dmats);
    h.off_scales = w.put(&scales);
    h.total_bytes = w.align();
    let hb = {
        // SAFETY: DbHeader is plain i64 fields.
        unsafe {
            std::slice::from_raw_parts(&h as *const DbHeader as *const u8, std::mem::size_of::<DbHeader>())
        }
    };
    w.bytes[..hb.len()].copy_from_slice(hb);
    let blob: Vec<u64> =
        w.bytes.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes"))).collect();

    let mut pix = Vec::with_capacity(n_pix_total);
    for (si, list) in pixels.iter().enumerate() {
        pix.extend(list.iter().map(|p| DbPixel {
            shot: si as u32,
            panel: p.panel,
            fast: p.fast,
            slow: p.slow,
        }));
    }
    let packed = Packed {
        blob,
        header: h,
        row,
        min_steps: if min_steps == usize::MAX { 0 } else { min_steps },
        n_params,
        grad_len,
    };
    Ok((packed, pix))
}

/// Sizes and offsets of the Rust mirrors, in the order of `db_layout_info`
/// in `kernels/host_kernel.cpp`.
pub fn rust_layout() -> Vec<u64> {
    use std::mem::{offset_of, size_of};
    [
        size_of::<DbHeader>(),
        offset_of!(DbHeader, row),
        offset_of!(DbHeader, total_bytes),
        size_of::<DbShot>(),
        offset_of!(DbShot, kahn),
        offset_of!(DbShot, nm),
        offset_of!(DbShot, lut_nl),
        offset_of!(DbShot, panel_off),
        offset_of!(DbShot, scale_off),
        offset_of!(DbShot, os),
        offset_of!(DbShot, n_panels),
        size_of::<DbPanel>(),
        offset_of!(DbPanel, px),
        offset_of!(DbPanel, drot),
        offset_of!(DbPanel, nf),
        offset_of!(DbPanel, absorbs),
        size_of::<DbStep>(),
        offset_of!(DbStep, w),
        offset_of!(DbStep, lam),
        offset_of!(DbStep, chan),
        size_of::<DbParam>(),
        offset_of!(DbParam, axis),
        offset_of!(DbParam, dn),
        offset_of!(DbParam, tr2),
        offset_of!(DbParam, dmat_off),
        size_of::<DbPixel>(),
        offset_of!(DbPixel, slow),
    ]
    .into_iter()
    .map(|x| x as u64)
    .collect()
}
