//! Stage-2 outputs: the `fhkl` rows, the MTZ files, the per-shot
//! `shot_params` rows and the convergence `traces`.
//!
//! # Conventions
//! * Intensities are on the model's scale: `I = s·I⁰`, `σ_I = I⁰·σ_s` with
//!   `σ_s = 1/√H` (see [`super::target`]); amplitudes by cctbx's
//!   `f_sq_as_f_xtal_3_7`: `F = √max(I, 0)`, `σ_F = σ_I/(F + √(F² + σ_I))`
//!   (0 when F and σ_I are both below 1e-6).
//! * MTZ: one file per channel, `optimized_channel{c}.mtz` (final) and
//!   `optimized_channel{c}_iter{N}.mtz` (checkpoint N), columns
//!   `H K L F(+) SIGF(+) F(-) SIGF(-)` (types G L G L) in the anomalous ASU;
//!   a centric index fills F(+) only (as cctbx writes it); missing values are
//!   NaN. An index is written when its curvature is positive and
//!   `var(s) = 1/H < --maxSigma` (\[TRAP\] the reference compares the
//!   **variance** with a flag named sigma; kept for compatibility).
//! * Every writer here is idempotent: before appending rows it checks
//!   whether the rows of that run tag and checkpoint are already in the
//!   table, so a run resumed after a crash never duplicates rows. MTZ files
//!   are rewritten atomically.

use std::collections::BTreeSet;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type};

use crate::crystal::UnitCell;
use crate::error::Result;
use crate::io::mtz::Mtz;
use crate::store::parquet::read_shard_each;
use crate::store::{BatchBuilder, Store, Table, TraceRow, Value};
use crate::symmetry::{Miller, SpaceGroup};

use super::checkpoint::TracePoint;
use super::params::FhklLayout;

/// cctbx `f_sq_as_f_xtal_3_7`.
pub fn f_from_i(i: f64, sigma_i: f64) -> (f64, f64) {
    let f = i.max(0.0).sqrt();
    if f < 1e-6 && sigma_i < 1e-6 {
        return (f, 0.0);
    }
    (f, sigma_i / (f + (f * f + sigma_i).sqrt()))
}

/// One `fhkl` row.
#[derive(Clone, Debug, PartialEq)]
pub struct FhklRow {
    pub hkl: Miller,
    pub asu_id: i32,
    pub channel: i32,
    pub i: f64,
    pub sigma_i: Option<f64>,
    pub f: f64,
    pub sigma_f: Option<f64>,
    pub scale: f64,
    pub i_init: f64,
    pub multiplicity: i32,
    pub d: f64,
    /// var(s) = 1/H (infinite without curvature), for the MTZ filter.
    pub var_scale: f64,
    pub centric: bool,
}

/// The rows of every refined (index, channel) at scales `s` (per parameter)
/// and curvature `h` (per parameter).
pub fn fhkl_rows(layout: &FhklLayout, s: &[f64], h: &[f64]) -> Vec<FhklRow> {
    let n_asu = layout.n_asu();
    let mut out = Vec::new();
    for (p, (a, chans)) in layout.params.iter().enumerate() {
        let a = *a as usize;
        let i0 = layout.i_init[a];
        let var = if h[p] > 0.0 { 1.0 / h[p] } else { f64::INFINITY };
        for &c in chans {
            let i = s[p] * i0;
            let sigma_i = var.is_finite().then(|| var.sqrt() * i0);
            let (f, sigma_f) = match sigma_i {
                Some(si) => {
                    let (f, sf) = f_from_i(i, si);
                    (f, Some(sf))
                }
                None => (i.max(0.0).sqrt(), None),
            };
            out.push(FhklRow {
                hkl: layout.asu_hkl[a],
                asu_id: a as i32,
                channel: c as i32,
                i,
                sigma_i,
                f,
                sigma_f,
                scale: s[p],
                i_init: i0,
                multiplicity: layout.multiplicity[a + c as usize * n_asu] as i32,
                d: layout.d[a],
                var_scale: var,
                centric: layout.centric[a],
            });
        }
    }
    out
}

/// Append the rows of one checkpoint (`is_final` = the end result) unless
/// rows of that tag and iteration are already there. Returns whether it wrote.
pub fn write_fhkl(
    store: &mut Store,
    tag: &str,
    rows: &[FhklRow],
    iteration: i32,
    is_final: bool,
) -> Result<bool> {
    if fhkl_present(store, tag, iteration, is_final)? {
        return Ok(false);
    }
    let mut b = BatchBuilder::new(Table::Fhkl);
    for r in rows {
        b.append(&[
            ("tag", tag.into()),
            ("hkl", r.hkl.into()),
            ("asu_id", r.asu_id.into()),
            ("channel", r.channel.into()),
            ("I", r.i.into()),
            ("sigma_I", r.sigma_i.into()),
            ("F", r.f.into()),
            ("sigma_F", r.sigma_f.into()),
            ("scale", r.scale.into()),
            ("I_init", r.i_init.into()),
            ("multiplicity", r.multiplicity.into()),
            ("d", r.d.into()),
            ("iteration", iteration.into()),
            ("is_final", is_final.into()),
        ])?;
    }
    store.append_builder(&mut b)?;
    Ok(true)
}

/// Whether `fhkl` holds rows of (tag, iteration, is_final).
pub fn fhkl_present(store: &Store, tag: &str, iteration: i32, is_final: bool) -> Result<bool> {
    let mut found = false;
    for (_, _, p) in store.shards(Table::Fhkl)? {
        read_shard_each(Table::Fhkl, &p, Some(&["tag", "iteration", "is_final"]), None, |b| {
            let t = b.column(0).as_string::<i32>();
            let it = b.column(1).as_primitive::<Int32Type>();
            let fin = b.column(2).as_boolean();
            for i in 0..b.num_rows() {
                if t.value(i) == tag && it.is_valid(i) && it.value(i) == iteration && fin.value(i) == is_final
                {
                    found = true;
                }
            }
            Ok(())
        })?;
        if found {
            break;
        }
    }
    Ok(found)
}

/// Write one channel's MTZ (see the module docs).
pub fn write_mtz(
    path: &Path,
    rows: &[FhklRow],
    channel: i32,
    cell: &UnitCell,
    sg: &SpaceGroup,
    max_var: f64,
    wavelength: f64,
) -> Result<usize> {
    use std::collections::BTreeMap;
    // ASU index → (F+, σ+, F−, σ−).
    let asu = crate::symmetry::ReciprocalAsu::new(sg);
    let mut m: BTreeMap<Miller, [f32; 4]> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.channel == channel && r.var_scale < max_var && r.var_scale.is_finite())
    {
        // Plus keys are ASU indices; minus keys are their negation.
        let plus = r.centric || asu.is_in(&r.hkl);
        let key = if plus { r.hkl } else { [-r.hkl[0], -r.hkl[1], -r.hkl[2]] };
        let e = m.entry(key).or_insert([f32::NAN; 4]);
        let (fv, sv) = (r.f as f32, r.sigma_f.unwrap_or(f64::NAN) as f32);
        if plus {
            e[0] = fv;
            e[1] = sv;
        } else {
            e[2] = fv;
            e[3] = sv;
        }
    }
    let hkl: Vec<Miller> = m.keys().copied().collect();
    let mut mtz = Mtz::new_merged(*cell, sg.clone(), &hkl, ("diffbragg", "stage2", "stage2"), wavelength);
    for (k, (label, kind)) in
        [("F(+)", 'G'), ("SIGF(+)", 'L'), ("F(-)", 'G'), ("SIGF(-)", 'L')].iter().enumerate()
    {
        mtz.add_column(label, *kind, m.values().map(|v| v[k]).collect())?;
    }
    mtz.write(path)?;
    Ok(hkl.len())
}

/// The largest `eval` of the global traces of `tag` already stored.
pub fn traces_max_eval(store: &Store, tag: &str) -> Result<Option<i32>> {
    let mut max: Option<i32> = None;
    for (_, _, p) in store.shards(Table::Traces)? {
        read_shard_each(Table::Traces, &p, Some(&["shot_id", "stage", "eval"]), None, |b| {
            let id = b.column(0).as_primitive::<Int64Type>();
            let st = b.column(1).as_string::<i32>();
            let ev = b.column(2).as_primitive::<Int32Type>();
            for i in 0..b.num_rows() {
                if id.is_null(i) && st.value(i) == tag {
                    max = Some(max.map_or(ev.value(i), |m| m.max(ev.value(i))));
                }
            }
            Ok(())
        })?;
    }
    Ok(max)
}

/// Append the trace points not stored yet (by eval).
pub fn write_traces(store: &mut Store, tag: &str, points: &[TracePoint]) -> Result<usize> {
    let have = traces_max_eval(store, tag)?;
    let mut b = BatchBuilder::new(Table::Traces);
    let mut n = 0;
    for p in points.iter().filter(|p| have.is_none_or(|m| p.eval as i32 > m)) {
        b.append_row(&TraceRow {
            shot_id: None,
            stage: tag.to_string(),
            eval: p.eval as i32,
            f: p.f,
            sigz: Some(p.sigz),
            grad_norm: Some(p.grad_norm),
            time: p.time,
        })?;
        n += 1;
    }
    if n > 0 {
        store.append_builder(&mut b)?;
    }
    Ok(n)
}

/// Shots with a `shot_params` row of `tag` at `iteration` (None: final).
pub fn shots_written(store: &Store, tag: &str, iteration: Option<i32>) -> Result<BTreeSet<i64>> {
    let mut out = BTreeSet::new();
    for (_, _, p) in store.shards(Table::ShotParams)? {
        read_shard_each(Table::ShotParams, &p, Some(&["shot_id", "stage", "iteration"]), None, |b| {
            let id = b.column(0).as_primitive::<Int64Type>();
            let st = b.column(1).as_string::<i32>();
            let it = b.column(2).as_primitive::<Int32Type>();
            for i in 0..b.num_rows() {
                let at = if it.is_null(i) { None } else { Some(it.value(i)) };
                if st.value(i) == tag && at == iteration {
                    out.insert(id.value(i));
                }
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// One stage-2 `shot_params` row.
#[derive(Clone, Debug, PartialEq)]
pub struct ShotRow {
    pub shot_id: i64,
    pub exp_name: String,
    pub exp_idx: i32,
    pub refl_name: Option<String>,
    pub status: String,
    pub n_evals: i32,
    pub wall_time_s: f64,
    pub f_final: f64,
    pub sigz: f64,
    pub g: f64,
    pub g_init: f64,
    pub sigma_g: f64,
    pub amats: [f64; 9],
    pub ncells: [f64; 3],
    pub ncells_init: [f64; 3],
    pub ncells_def: [f64; 3],
    pub rot: [f64; 3],
    pub cell: [f64; 6],
    pub cell_init: [f64; 6],
    pub eta_abc: Option<[f64; 3]>,
    pub num_mosaicity_samples: i32,
    pub detz_shift_mm: f64,
    pub lam: [f64; 2],
    pub spectrum_source: Option<String>,
    pub spectrum_filename: Option<String>,
    pub spectrum_stride: Option<i32>,
    pub total_flux: Option<f64>,
    pub beamsize_mm: Option<f64>,
    pub oversample: i32,
    /// The kernel backend that evaluated the shot ([`crate::gpu::Backend::name`]).
    pub backend: String,
}

/// Append rows (stage = tag; iteration: None for the final result, Some(N)
/// at checkpoint N with `--saveAll`) for shots that have none yet.
pub fn write_shot_rows(
    store: &mut Store,
    tag: &str,
    rows: &[ShotRow],
    iteration: Option<i32>,
) -> Result<usize> {
    let have = shots_written(store, tag, iteration)?;
    let mut b = BatchBuilder::new(Table::ShotParams);
    let mut n = 0;
    for r in rows.iter().filter(|r| !have.contains(&r.shot_id)) {
        let c = r.cell;
        let ci = r.cell_init;
        let cells: Vec<(&str, Value)> = vec![
            ("shot_id", r.shot_id.into()),
            ("stage", tag.into()),
            ("iteration", iteration.into()),
            ("exp_name", (&r.exp_name).into()),
            ("exp_idx", r.exp_idx.into()),
            ("refl_name", r.refl_name.clone().into()),
            ("status", (&r.status).into()),
            ("backend", (&r.backend).into()),
            ("n_evals", r.n_evals.into()),
            ("wall_time_s", r.wall_time_s.into()),
            ("f_final", r.f_final.into()),
            ("sigz", r.sigz.into()),
            ("spot_scales", r.g.into()),
            ("spot_scales_init", r.g_init.into()),
            ("Amats", r.amats.into()),
            ("ncells", r.ncells.into()),
            ("ncells_init", r.ncells_init.into()),
            ("ncells_def", r.ncells_def.into()),
            ("eta_abc", r.eta_abc.map(|v| v.to_vec()).into()),
            ("num_mosaicity_samples", r.num_mosaicity_samples.into()),
            ("detz_shift_mm", r.detz_shift_mm.into()),
            ("rotX", r.rot[0].into()),
            ("rotY", r.rot[1].into()),
            ("rotZ", r.rot[2].into()),
            ("a", c[0].into()),
            ("b", c[1].into()),
            ("c", c[2].into()),
            ("al", c[3].into()),
            ("be", c[4].into()),
            ("ga", c[5].into()),
            ("a_init", ci[0].into()),
            ("b_init", ci[1].into()),
            ("c_init", ci[2].into()),
            ("al_init", ci[3].into()),
            ("be_init", ci[4].into()),
            ("ga_init", ci[5].into()),
            ("lam0", r.lam[0].into()),
            ("lam1", r.lam[1].into()),
            ("spectrum_source", r.spectrum_source.clone().into()),
            ("spectrum_filename", r.spectrum_filename.clone().into()),
            ("spectrum_stride", r.spectrum_stride.into()),
            ("total_flux", r.total_flux.into()),
            ("beamsize_mm", r.beamsize_mm.into()),
            ("oversample", r.oversample.into()),
            ("sigma_spot_scales", (r.sigma_g.is_finite().then_some(r.sigma_g)).into()),
        ];
        b.append(&cells)?;
        n += 1;
    }
    if n > 0 {
        store.append_builder(&mut b)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amplitudes_follow_xtal_3_7() {
        assert_eq!(f_from_i(100.0, 0.0), (10.0, 0.0));
        let (f, s) = f_from_i(100.0, 20.0);
        assert_eq!(f, 10.0);
        assert!((s - 20.0 / (10.0 + 120f64.sqrt())).abs() < 1e-15);
        // Negative intensity: F = 0, σ_F = √σ_I.
        let (f, s) = f_from_i(-5.0, 16.0);
        assert_eq!((f, s), (0.0, 4.0));
        assert_eq!(f_from_i(0.0, 0.0), (0.0, 0.0));
    }
}
