//! `diffbragg residuals`: the stage-1 diagnostics of DIALS/diffBragg files.
//!
//! Evaluates the reflections with the input models and with the refined models
//! (defaults: the input ones), and writes into `--out`: `summary.txt` (also
//! printed), `residuals.csv` (the rows of the `residuals` table, both models)
//! and the PNG figures.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::error::{Error, Result};
use crate::experiment::ExperimentList;
use crate::io::dials_refl::read_refl;

use super::residuals::{CalSource, EvalOptions, ResidualRow};
use super::stats::panel_groups;
use super::summary::compare;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CalArg {
    /// DIALS stills re-prediction with the model (detector_residuals default).
    Repredict,
    /// The table's `xyzcal.px` (diffBragg's model centroids).
    Table,
}

impl From<CalArg> for CalSource {
    fn from(c: CalArg) -> CalSource {
        match c {
            CalArg::Repredict => CalSource::Repredict,
            CalArg::Table => CalSource::Table,
        }
    }
}

/// Detector residuals and Δψ before vs after stage 1.
#[derive(Args, Debug)]
pub struct ResidualsArgs {
    /// Input experiments (.expt): the models stage 1 started from.
    #[arg(long)]
    pub expt: PathBuf,
    /// Input reflections (.refl) with observed centroids.
    #[arg(long)]
    pub refl: PathBuf,
    /// Refined experiments (default: the input experiments).
    #[arg(long)]
    pub refined_expt: Option<PathBuf>,
    /// Refined reflections, e.g. diffBragg's with model centroids (default: the input reflections).
    #[arg(long)]
    pub refined_refl: Option<PathBuf>,
    /// Where the refined model centroids come from.
    #[arg(long, value_enum, default_value = "repredict")]
    pub refined_cal: CalArg,
    /// Predict the refined models with this wavelength (Å), e.g. a spectrum's weighted mean.
    #[arg(long)]
    pub wavelength: Option<f64>,
    /// Detector hierarchy level of the panel groups (0 = whole detector).
    #[arg(long, default_value_t = 0)]
    pub hierarchy_level: usize,
    /// Keep every reflection, not only those flagged used_in_refinement.
    #[arg(long)]
    pub all_reflections: bool,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
}

/// Run the subcommand.
pub fn run(a: &ResidualsArgs) -> Result<()> {
    let input = ExperimentList::read(&a.expt)?;
    let refls = read_refl(&a.refl)?;
    let refined = match &a.refined_expt {
        Some(p) => ExperimentList::read(p)?,
        None => input.clone(),
    };
    let refined_refls = a.refined_refl.as_ref().map(read_refl).transpose()?;
    let keep_all = a.all_reflections;
    let base = EvalOptions { used_in_refinement_only: !keep_all, ..Default::default() };
    let ropts = EvalOptions { cal_source: a.refined_cal.into(), wavelength: a.wavelength, ..base };
    let (cmp, ev_in, ev_ref) =
        compare(&input, &refls, &refined, refined_refls.as_ref(), &base, &ropts, None)?;
    let det = input
        .experiments
        .first()
        .and_then(|e| e.detector.as_ref())
        .ok_or_else(|| Error::file(&a.expt, "no experiment with a detector"))?;
    let groups = panel_groups(det, a.hierarchy_level);
    cmp.write_report(&a.out, det, &groups)?;
    super::plot::write_atomic(&a.out.join("residuals.csv"), residuals_csv(cmp.rows()).as_bytes())?;
    print!("{}", cmp.text_summary(&groups));
    for (what, ev) in [("input", &ev_in), ("refined", &ev_ref)] {
        if !ev.skipped.is_empty() || ev.n_filtered > 0 {
            println!(
                "{what}: {} reflections skipped, {} not used in refinement{}",
                ev.skipped.len(),
                ev.n_filtered,
                ev.skipped.first().map_or(String::new(), |s| format!(" (first skip: {})", s.reason))
            );
        }
    }
    println!("report written to {}", a.out.display());
    Ok(())
}

/// The `residuals` rows as CSV (`miller_index` as three columns h, k, l; NaN empty).
pub fn residuals_csv<'a>(rows: impl IntoIterator<Item = &'a ResidualRow>) -> String {
    let mut s = String::new();
    let head: Vec<&str> = ResidualRow::COLUMNS
        .iter()
        .flat_map(|c| if *c == "miller_index" { vec!["h", "k", "l"] } else { vec![*c] })
        .collect();
    let _ = writeln!(s, "{}", head.join(","));
    let num = |v: f64| if v.is_finite() { format!("{v:?}") } else { String::new() };
    for r in rows {
        let vals = [
            r.d,
            r.two_theta_obs_deg,
            r.two_theta_cal_deg,
            r.obs_px[0],
            r.obs_px[1],
            r.cal_px[0],
            r.cal_px[1],
            r.obs_mm[0],
            r.obs_mm[1],
            r.cal_mm[0],
            r.cal_mm[1],
            r.radial_mm,
            r.transverse_mm,
            r.delpsi_deg,
            r.obs_var_mm2,
            r.wavelength,
        ]
        .map(num);
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{}",
            r.shot_id,
            r.refl_id,
            r.model.as_str(),
            r.panel,
            r.hkl[0],
            r.hkl[1],
            r.hkl[2],
            vals.join(",")
        );
    }
    s
}
