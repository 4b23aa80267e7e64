//! Detector residuals per reflection: cal − obs split into radial and
//! transverse components, Δψ, 2θ and d, for one model of each shot.
//!
//! Semantics of `cctbx.xfel.detector_residuals` (`setup_stats`, `plot_all`),
//! evaluated with each experiment's own beam and detector:
//! * `bc_lab`: where the beam line meets the plane of the spot's panel;
//! * `Δ_lab = fast·(x_cal − x_obs) + slow·(y_cal − y_obs)`, lab mm (cal − obs);
//! * `r̂ = unit(obs_lab − bc_lab)`, `t̂ = unit(r̂ × bc_lab)`;
//! * radial = `Δ_lab·r̂`, transverse = `Δ_lab·t̂` (mm);
//! * 2θ at the observed and the model pixel (dxtbx `get_two_theta_at_pixel`, px→mm
//!   through the panel's strategy), degrees; d = 1/|A·h| of the model, Å.
//!
//! Where the model centroid comes from ([`CalSource`]):
//! * `Repredict` (the `detector_residuals` default): the DIALS stills prediction
//!   with the model's `A` and beam (optionally another wavelength) on the row's panel.
//! * `Table`: the table's `xyzcal.px` (what diffBragg writes: its model centroid,
//!   fwd-model §4.9), converted to mm with the panel's px→mm, because diffBragg
//!   replaces `xyzcal.px` but leaves a stale `xyzcal.mm`.
//!   **\[TRAP\] decided** (fwd-model §1.2): diffBragg ignores parallax, so its
//!   centroid is a position on the pixel grid, like the observed centroid. Both
//!   go through the same dxtbx px→mm, so the offset compares like with like.
//!
//! Δψ is always recomputed from the model (`delpsical.rad` of a diffBragg table is
//! zero or stale, fwd-model §5.1).

use crate::conventions::Vec3;
use crate::error::{Error, Result};
use crate::experiment::{Experiment, ExperimentList};
use crate::geometry::Panel;
use crate::reflections::{flags, ReflectionTable};

use super::deltapsi::{predict_ray, PxMm};

/// Which model a residual row was evaluated with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelKind {
    /// The models stage 1 started from.
    Input,
    /// The models stage 1 refined.
    Refined,
}

impl ModelKind {
    /// The `model` column value.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Input => "input",
            ModelKind::Refined => "refined",
        }
    }

    pub fn parse(s: &str) -> Option<ModelKind> {
        match s {
            "input" => Some(ModelKind::Input),
            "refined" => Some(ModelKind::Refined),
            _ => None,
        }
    }
}

/// Where the model centroid of a reflection comes from (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalSource {
    Repredict,
    Table,
}

/// Options of an evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalOptions {
    pub cal_source: CalSource,
    /// Predict with this wavelength (Å), e.g. the spectrum's weighted mean,
    /// instead of the beam's.
    pub wavelength: Option<f64>,
    /// Keep only rows flagged `used_in_refinement` (the `detector_residuals`
    /// default `exclude_outliers_from_refinement=True`). Needs a `flags` column.
    pub used_in_refinement_only: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { cal_source: CalSource::Repredict, wavelength: None, used_in_refinement_only: true }
    }
}

/// One row of the `residuals` table (`schemas/residuals.json`): one reflection
/// evaluated with one model. Positions are (x fast, y slow).
#[derive(Clone, Debug, PartialEq)]
pub struct ResidualRow {
    pub shot_id: i64,
    /// Row index of the reflection within its shot in the input table.
    pub refl_id: i32,
    pub model: ModelKind,
    pub panel: u32,
    pub hkl: [i32; 3],
    /// Resolution 1/|A·h| of this model, Å.
    pub d: f64,
    pub two_theta_obs_deg: f64,
    pub two_theta_cal_deg: f64,
    pub obs_px: [f64; 2],
    pub cal_px: [f64; 2],
    pub obs_mm: [f64; 2],
    pub cal_mm: [f64; 2],
    /// (cal − obs)·r̂, mm.
    pub radial_mm: f64,
    /// (cal − obs)·t̂, mm.
    pub transverse_mm: f64,
    /// Δψ of this model, degrees.
    pub delpsi_deg: f64,
    /// |xyzobs.mm.variance| (mm²), the inverse weight of the weighted RMSD;
    /// NaN when the table has no variance.
    pub obs_var_mm2: f64,
    /// Wavelength the model was evaluated with, Å.
    pub wavelength: f64,
}

impl ResidualRow {
    /// Column names, in `schemas/residuals.json` order.
    pub const COLUMNS: [&'static str; 21] = [
        "shot_id",
        "refl_id",
        "model",
        "panel",
        "miller_index",
        "d",
        "two_theta_obs_deg",
        "two_theta_cal_deg",
        "obs_x_px",
        "obs_y_px",
        "cal_x_px",
        "cal_y_px",
        "obs_x_mm",
        "obs_y_mm",
        "cal_x_mm",
        "cal_y_mm",
        "radial_mm",
        "transverse_mm",
        "delpsi_deg",
        "obs_var_mm2",
        "wavelength",
    ];

    /// cal − obs in panel millimetres.
    pub fn delta_mm(&self) -> [f64; 2] {
        [self.cal_mm[0] - self.obs_mm[0], self.cal_mm[1] - self.obs_mm[1]]
    }

    /// |cal − obs|, mm (`difference_vector_norms`).
    pub fn delta_norm_mm(&self) -> f64 {
        let d = self.delta_mm();
        d[0].hypot(d[1])
    }

    /// 2θ(obs) − 2θ(cal), degrees.
    pub fn delta_two_theta_deg(&self) -> f64 {
        self.two_theta_obs_deg - self.two_theta_cal_deg
    }
}

/// The cal − obs offset of one spot in the lab frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Offsets {
    /// cal − obs, lab mm.
    pub delta_lab: Vec3,
    /// Beam centre on the panel plane, lab mm.
    pub bc_lab: Vec3,
    pub radial_unit: Vec3,
    pub transverse_unit: Vec3,
    pub radial_mm: f64,
    pub transverse_mm: f64,
}

/// Radial and transverse offsets of `cal_mm` from `obs_mm` on `panel` for a beam
/// along `s0`. `None` when the beam does not meet the panel plane or the spot
/// sits on the beam centre (no radial direction).
pub fn offsets(panel: &Panel, s0: &Vec3, obs_mm: [f64; 2], cal_mm: [f64; 2]) -> Option<Offsets> {
    let bc_lab = panel.beam_centre_lab(s0)?;
    let obs_lab = panel.mm_to_lab(obs_mm[0], obs_mm[1]);
    let delta_lab = panel.fast * (cal_mm[0] - obs_mm[0]) + panel.slow * (cal_mm[1] - obs_mm[1]);
    let r = obs_lab - bc_lab;
    let r = r.try_normalize(1e-12)?;
    let t = r.cross(&bc_lab).try_normalize(1e-300)?;
    Some(Offsets {
        delta_lab,
        bc_lab,
        radial_unit: r,
        transverse_unit: t,
        radial_mm: delta_lab.dot(&r),
        transverse_mm: delta_lab.dot(&t),
    })
}

/// Scattering angle 2θ (degrees) of a lab point for a beam along `s0`.
pub fn two_theta_deg(s0: &Vec3, lab: &Vec3) -> f64 {
    s0.cross(lab).norm().atan2(s0.dot(lab)).to_degrees()
}

/// A reflection that could not be evaluated, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    pub shot_id: i64,
    pub refl_id: i32,
    pub reason: String,
}

/// The rows of an evaluation and the reflections it had to leave out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub rows: Vec<ResidualRow>,
    pub skipped: Vec<Skipped>,
    /// Rows left out by the `used_in_refinement` filter.
    pub n_filtered: usize,
}

impl Evaluation {
    fn extend(&mut self, other: Evaluation) {
        self.rows.extend(other.rows);
        self.skipped.extend(other.skipped);
        self.n_filtered += other.n_filtered;
    }
}

/// Evaluate the rows of one shot (`refls` holds only that shot's rows; its `id`
/// column is not consulted) with the models of `expt`.
pub fn evaluate_shot(
    expt: &Experiment,
    refls: &ReflectionTable,
    shot_id: i64,
    model: ModelKind,
    opts: &EvalOptions,
) -> Result<Evaluation> {
    let n = refls.nrows();
    let mut out = Evaluation::default();
    if n == 0 {
        return Ok(out);
    }
    let beam = expt.beam()?;
    let detector = expt.detector()?;
    let crystal = expt.crystal()?;
    let lambda = opts.wavelength.unwrap_or(beam.wavelength);
    if !(lambda > 0.0 && lambda.is_finite()) {
        return Err(Error::param("wavelength", format!("must be a positive number of Å, got {lambda}")));
    }
    let s0 = beam.unit_s0() / lambda;
    if !s0.iter().all(|v| v.is_finite()) {
        return Err(expt.error("beam direction is zero or not finite"));
    }
    let a = crate::conventions::reciprocal_from_real(&crystal.real)
        .filter(|a| a.iter().all(|v| v.is_finite()))
        .ok_or_else(|| expt.error("crystal real-space vectors are degenerate or not finite"))?;
    let pxmm = PxMm::for_detector(detector, &expt.detector_meta).map_err(|m| expt.error(m))?;

    let panels = refls.get_size("panel")?;
    let hkls = refls.get_miller("miller_index")?;
    let obs_px_col = refls.get_vec3("xyzobs.px.value").ok();
    let obs_mm_col = refls.get_vec3("xyzobs.mm.value").ok();
    if obs_px_col.is_none() && obs_mm_col.is_none() {
        return Err(Error::msg(
            "reflection table has neither `xyzobs.px.value` nor `xyzobs.mm.value`: no observed centroids",
        ));
    }
    let obs_mm_var = refls.get_vec3("xyzobs.mm.variance").ok();
    let obs_px_var = refls.get_vec3("xyzobs.px.variance").ok();
    let cal_px_col = match opts.cal_source {
        CalSource::Table => Some(refls.get_vec3("xyzcal.px")?),
        CalSource::Repredict => None,
    };
    let flag_col = if opts.used_in_refinement_only {
        Some(refls.get_size("flags").map_err(|e| {
            Error::msg(format!(
                "{e}; the used-in-refinement filter needs it (turn the filter off to keep every row)"
            ))
        })?)
    } else {
        None
    };

    for i in 0..n {
        let refl_id = i32::try_from(i).map_err(|_| Error::msg("more than 2³¹ reflections in one shot"))?;
        if let Some(f) = flag_col {
            if !flags::has_flag(f[i], flags::USED_IN_REFINEMENT) {
                out.n_filtered += 1;
                continue;
            }
        }
        let skip =
            |out: &mut Evaluation, reason: String| out.skipped.push(Skipped { shot_id, refl_id, reason });
        let pid = panels[i];
        let panel = usize::try_from(pid).ok().and_then(|p| detector.panels.get(p)).ok_or_else(|| {
            expt.error(format!(
                "reflection row {i} (shot {shot_id}) is on panel {pid}, but the detector has {} panels",
                detector.panels.len()
            ))
        })?;
        let pm = &pxmm[pid as usize];
        let hkl = hkls[i];
        if hkl == [0, 0, 0] {
            skip(&mut out, "not indexed (hkl 0 0 0)".into());
            continue;
        }
        // Observed centroid in px and mm (whichever the table lacks is converted).
        let (obs_px, obs_mm) = match (obs_px_col, obs_mm_col) {
            (Some(p), Some(m)) => ([p[i][0], p[i][1]], [m[i][0], m[i][1]]),
            (Some(p), None) => {
                let px = [p[i][0], p[i][1]];
                match pm.px_to_mm(panel, px) {
                    Some(mm) => (px, mm),
                    None => {
                        skip(&mut out, "observed pixel cannot be converted to mm".into());
                        continue;
                    }
                }
            }
            (None, Some(m)) => {
                let mm = [m[i][0], m[i][1]];
                match pm.mm_to_px(panel, mm) {
                    Some(px) => (px, mm),
                    None => {
                        skip(&mut out, "observed mm position cannot be converted to pixels".into());
                        continue;
                    }
                }
            }
            (None, None) => unreachable!("checked above"),
        };
        if !obs_px.iter().chain(&obs_mm).all(|v| v.is_finite()) {
            skip(&mut out, "observed centroid is not finite".into());
            continue;
        }
        let ray = match predict_ray(&a, &s0, hkl) {
            Ok(r) => r,
            Err(e) => {
                skip(&mut out, e.to_string());
                continue;
            }
        };
        let (cal_px, cal_mm) = match cal_px_col {
            None => {
                let Some((x, y)) = panel.ray_intersection_mm(&ray.s1) else {
                    skip(&mut out, "predicted ray does not meet the panel plane".into());
                    continue;
                };
                match pm.mm_to_px(panel, [x, y]) {
                    Some(px) => (px, [x, y]),
                    None => {
                        skip(&mut out, "predicted ray grazes the panel".into());
                        continue;
                    }
                }
            }
            Some(c) => {
                let px = [c[i][0], c[i][1]];
                if !px.iter().all(|v| v.is_finite()) {
                    skip(&mut out, "no model centroid (xyzcal.px is NaN)".into());
                    continue;
                }
                match pm.px_to_mm(panel, px) {
                    Some(mm) => (px, mm),
                    None => {
                        skip(&mut out, "model centroid cannot be converted to mm".into());
                        continue;
                    }
                }
            }
        };
        let Some(off) = offsets(panel, &s0, obs_mm, cal_mm) else {
            skip(
                &mut out,
                "no radial direction (beam misses the panel plane or spot at the beam centre)".into(),
            );
            continue;
        };
        // dxtbx evaluates 2θ at pixel coordinates (px → mm → lab).
        let tt = |px: [f64; 2]| {
            pm.px_to_mm(panel, px).map(|mm| two_theta_deg(&s0, &panel.mm_to_lab(mm[0], mm[1])))
        };
        let (Some(tt_obs), Some(tt_cal)) = (tt(obs_px), tt(cal_px)) else {
            skip(&mut out, "2θ undefined (pixel cannot be converted to mm)".into());
            continue;
        };
        if ![off.radial_mm, off.transverse_mm, tt_obs, tt_cal]
            .iter()
            .chain(&cal_mm)
            .chain(&cal_px)
            .all(|v| v.is_finite())
        {
            skip(&mut out, "geometry gives non-finite offsets (check the panel and beam models)".into());
            continue;
        }
        let q = a * Vec3::new(hkl[0] as f64, hkl[1] as f64, hkl[2] as f64);
        let obs_var_mm2 = match (obs_mm_var, obs_px_var) {
            (Some(v), _) => Vec3::new(v[i][0], v[i][1], v[i][2]).norm(),
            (None, Some(v)) => {
                let (p0, p1) = (panel.pixel_size[0], panel.pixel_size[1]);
                Vec3::new(v[i][0] * p0 * p0, v[i][1] * p1 * p1, v[i][2]).norm()
            }
            (None, None) => f64::NAN,
        };
        out.rows.push(ResidualRow {
            shot_id,
            refl_id,
            model,
            panel: pid as u32,
            hkl,
            d: 1.0 / q.norm(),
            two_theta_obs_deg: tt_obs,
            two_theta_cal_deg: tt_cal,
            obs_px,
            cal_px,
            obs_mm,
            cal_mm,
            radial_mm: off.radial_mm,
            transverse_mm: off.transverse_mm,
            delpsi_deg: ray.delpsi.to_degrees(),
            obs_var_mm2,
            wavelength: lambda,
        });
    }
    Ok(out)
}

/// Evaluate every experiment of a list with the rows of `refls` whose `id` is
/// its index. `shot_ids[i]` names experiment i in the output (default: i).
pub fn evaluate(
    experiments: &ExperimentList,
    refls: &ReflectionTable,
    model: ModelKind,
    opts: &EvalOptions,
    shot_ids: Option<&[i64]>,
) -> Result<Evaluation> {
    if let Some(s) = shot_ids {
        if s.len() != experiments.len() {
            return Err(Error::msg(format!(
                "{} shot ids given for {} experiments",
                s.len(),
                experiments.len()
            )));
        }
    }
    let ids = refls.get_int("id")?;
    if let Some((row, bad)) = ids.iter().enumerate().find(|(_, &v)| v < 0 || v as usize >= experiments.len())
    {
        return Err(Error::msg(format!(
            "reflection row {row} has id {bad}, but there are {} experiments",
            experiments.len()
        )));
    }
    let mut out = Evaluation::default();
    for (i, expt) in experiments.iter().enumerate() {
        let mask: Vec<bool> = ids.iter().map(|&v| v as usize == i).collect();
        if !mask.iter().any(|&m| m) {
            continue;
        }
        let sub = refls.select(&mask)?;
        let shot_id = shot_ids.map_or(i as i64, |s| s[i]);
        out.extend(evaluate_shot(expt, &sub, shot_id, model, opts)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat_panel() -> Panel {
        Panel {
            origin: Vec3::new(-50.0, 50.0, -100.0),
            fast: Vec3::x(),
            slow: -Vec3::y(),
            pixel_size: [0.1, 0.1],
            image_size: [1000, 1000],
            ..Default::default()
        }
    }

    #[test]
    fn radial_is_outwards_and_transverse_counter_clockwise() {
        let p = flat_panel();
        let s0 = Vec3::new(0.0, 0.0, -1.0);
        // Beam centre at panel mm (50, 50). A spot at lab (+20, 0): mm (70, 50).
        let obs = [70.0, 50.0];
        // cal further out along +x: positive radial.
        let o = offsets(&p, &s0, obs, [70.3, 50.0]).unwrap();
        assert!((o.radial_mm - 0.3).abs() < 1e-12 && o.transverse_mm.abs() < 1e-12);
        assert!((o.bc_lab - Vec3::new(0.0, 0.0, -100.0)).norm() < 1e-12);
        // cal at lab +y (panel y decreases because slow = −y): positive transverse.
        let o = offsets(&p, &s0, obs, [70.0, 49.8]).unwrap();
        assert!(o.radial_mm.abs() < 1e-12 && (o.transverse_mm - 0.2).abs() < 1e-12);
        assert!((o.transverse_unit - Vec3::y()).norm() < 1e-12);
        // Spot on the beam centre: no radial direction.
        assert!(offsets(&p, &s0, [50.0, 50.0], [50.1, 50.0]).is_none());
    }

    #[test]
    fn two_theta_of_points() {
        let s0 = Vec3::new(0.0, 0.0, -0.8);
        assert!((two_theta_deg(&s0, &Vec3::new(100.0, 0.0, -100.0)) - 45.0).abs() < 1e-12);
        assert!(two_theta_deg(&s0, &Vec3::new(0.0, 0.0, -5.0)).abs() < 1e-12);
    }

    #[test]
    fn model_names_roundtrip() {
        for m in [ModelKind::Input, ModelKind::Refined] {
            assert_eq!(ModelKind::parse(m.as_str()), Some(m));
        }
        assert_eq!(ModelKind::parse("other"), None);
    }
}
