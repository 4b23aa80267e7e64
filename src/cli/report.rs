//! `diffbragg report <outdir>`: the stage-1 diagnostics of an output folder.
//!
//! Reads the `residuals` table (input vs refined models, written by stage 1),
//! pairs the rows ([`crate::report::summary::Comparison`]) and writes
//! `<outdir>/report/summary.txt` plus the PNG figures (per-panel Δψ
//! histograms, offset histograms, Δψ vs 2θ, detector maps), prints the
//! summary, and a one-line convergence summary from `shot_params`. The same
//! numbers are available in SQL: `residuals_by_panel`,
//! `residuals_panel_comparison`, `stage1_convergence` (see `sql/`).

use std::path::PathBuf;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, UInt32Type};
use clap::Args;

use crate::error::{Error, Result};
use crate::report::residuals::{ModelKind, ResidualRow};
use crate::report::stats::panel_groups;
use crate::report::summary::Comparison;
use crate::store::{Store, Table};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A stage-1 output folder (the store written by `diffbragg hopper`).
    pub outdir: PathBuf,
    /// Detector hierarchy level of the panel groups (0 = whole detector).
    #[arg(long, default_value_t = 0)]
    pub hierarchy_level: usize,
    /// Where to write the report (default: <outdir>/report).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The `residuals` rows of a store.
#[allow(clippy::needless_range_loop)]
pub fn read_residuals(store: &Store) -> Result<Vec<ResidualRow>> {
    let mut out = Vec::new();
    for b in store.read(Table::Residuals, None)? {
        let col =
            |n: &str| b.column_by_name(n).ok_or_else(|| Error::msg(format!("residuals: no column {n}")));
        let f = |n: &str| -> Result<Vec<f64>> {
            let c = col(n)?;
            let a = c.as_primitive::<Float64Type>();
            Ok((0..a.len()).map(|i| if a.is_null(i) { f64::NAN } else { a.value(i) }).collect())
        };
        let sid = col("shot_id")?.as_primitive::<Int64Type>().clone();
        let rid = col("refl_id")?.as_primitive::<Int32Type>().clone();
        let model = col("model")?.as_string::<i32>().clone();
        let panel = col("panel")?.as_primitive::<UInt32Type>().clone();
        let mi = col("miller_index")?.as_struct().clone();
        let (h, k, l) = (
            mi.column(0).as_primitive::<Int32Type>().clone(),
            mi.column(1).as_primitive::<Int32Type>().clone(),
            mi.column(2).as_primitive::<Int32Type>().clone(),
        );
        let names = [
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
        let v: Vec<Vec<f64>> = names.iter().map(|n| f(n)).collect::<Result<_>>()?;
        for i in 0..b.num_rows() {
            let m = ModelKind::parse(model.value(i))
                .ok_or_else(|| Error::msg(format!("residuals: unknown model `{}`", model.value(i))))?;
            out.push(ResidualRow {
                shot_id: sid.value(i),
                refl_id: rid.value(i),
                model: m,
                panel: panel.value(i),
                hkl: [h.value(i), k.value(i), l.value(i)],
                d: v[0][i],
                two_theta_obs_deg: v[1][i],
                two_theta_cal_deg: v[2][i],
                obs_px: [v[3][i], v[4][i]],
                cal_px: [v[5][i], v[6][i]],
                obs_mm: [v[7][i], v[8][i]],
                cal_mm: [v[9][i], v[10][i]],
                radial_mm: v[11][i],
                transverse_mm: v[12][i],
                delpsi_deg: v[13][i],
                obs_var_mm2: v[14][i],
                wavelength: v[15][i],
            });
        }
    }
    Ok(out)
}

/// Write the report of a stage-1 store; returns the summary text.
pub fn write(outdir: &std::path::Path, out: &std::path::Path, level: usize) -> Result<String> {
    let store = Store::open(outdir)?;
    let rows = read_residuals(&store)?;
    if rows.is_empty() {
        return Err(Error::file(outdir, "no residuals rows: run `diffbragg hopper` into this folder first"));
    }
    let (before, after): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.model == ModelKind::Input);
    let cmp = Comparison::new(before, after);
    // The detector of the first refined experiment lays out the maps.
    let q = store.query("SELECT opt_exp_name FROM shot_params WHERE opt_exp_name IS NOT NULL LIMIT 1")?;
    let mut det = None;
    for b in &q.batches {
        if b.num_rows() > 0 {
            let p = b.column(0).as_string::<i32>().value(0).to_string();
            let l = crate::experiment::ExperimentList::read(&p)?;
            det = l.experiments.first().and_then(|e| e.detector.clone());
        }
    }
    let det = det.ok_or_else(|| Error::file(outdir, "no refined experiment to take the detector from"))?;
    let groups = panel_groups(&det, level);
    cmp.write_report(out, &det, &groups)?;
    let mut text = cmp.text_summary(&groups);
    let conv = store.query(
        "SELECT count(*) AS n, count(*) FILTER (WHERE status LIKE 'converged%') AS n_conv, \
         median(n_evals) AS med_evals, median(sigz) AS med_sigz, median(wall_time_s) AS med_wall \
         FROM shot_params WHERE stage = 'stage1'",
    )?;
    if let Some(b) = conv.batches.first().filter(|b| b.num_rows() > 0) {
        let s = arrow::util::display::ArrayFormatter::try_new(b.column(0).as_ref(), &Default::default());
        let cell = |c: usize| {
            arrow::util::display::ArrayFormatter::try_new(b.column(c).as_ref(), &Default::default())
                .map(|f| f.value(0).to_string())
                .unwrap_or_default()
        };
        let _ = s;
        text.push_str(&format!(
            "\nstage 1: {} shots, {} converged; median {} evaluations, sigZ {}, {} s per shot\n",
            cell(0),
            cell(1),
            cell(2),
            cell(3),
            cell(4)
        ));
    }
    let nf = store.query("SELECT count(*) FROM failures WHERE stage = 'stage1'")?;
    if let Some(b) = nf.batches.first().filter(|b| b.num_rows() > 0) {
        let n = b.column(0).as_primitive::<Int64Type>().value(0);
        text.push_str(&format!("stage 1: {n} failed shot(s) (SELECT * FROM failures_by_reason)\n"));
    }
    crate::report::plot::write_atomic(&out.join("summary.txt"), text.as_bytes())?;
    Ok(text)
}

pub fn run(a: ReportArgs) -> anyhow::Result<()> {
    let out = a.out.clone().unwrap_or_else(|| a.outdir.join("report"));
    let text = write(&a.outdir, &out, a.hierarchy_level)?;
    print!("{text}");
    println!("report written to {}", out.display());
    Ok(())
}
