//! `diffbragg report <dir>`: the diagnostics of an output folder, whatever
//! stages wrote into it.
//!
//! * Stage 1 (the `residuals` table, written by `diffbragg hopper`): input vs
//!   refined models paired ([`crate::report::summary::Comparison`]) into
//!   `summary.txt` plus the PNG figures (per-panel Δψ histograms, offset
//!   histograms, Δψ vs 2θ, detector maps) and a convergence line from
//!   `shot_params`.
//! * Predict (the `predictions` table, `diffbragg integrate`): counts,
//!   match distances and strong fractions ([`crate::predict::report`]).
//! * Stage 2 (`fhkl` rows, `diffbragg ens-hopper`): per run tag, the
//!   per-evaluation convergence plot and, with `--reference`, CC of F against
//!   the reference by resolution bin (with `--with-merge`, the conventional
//!   ROI-sum merge's CC in the same bins; with `--half-tags`, CC½)
//!   ([`crate::stage2::report`]).
//!
//! Everything goes to `<dir>/report` (or `--out`); the text is printed. The same
//! numbers are available in SQL: `residuals_by_panel`,
//! `residuals_panel_comparison`, `stage1_convergence`, `predict_summary`,
//! `stage2_convergence`, `stage2_fhkl_final` (see `sql/`).

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, UInt32Type};
use clap::Args;

use crate::crystal::UnitCell;
use crate::error::{Error, Result};
use crate::report::residuals::{ModelKind, ResidualRow};
use crate::report::stats::panel_groups;
use crate::report::summary::Comparison;
use crate::stage2::report::{write_report as stage2_report, ReportOptions};
use crate::store::{Store, Table};
use crate::symmetry::SpaceGroup;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// An output folder (store) of `diffbragg hopper`, `integrate` or `ens-hopper`.
    pub outdir: PathBuf,
    /// Detector hierarchy level of the panel groups (0 = whole detector).
    #[arg(long, default_value_t = 0)]
    pub hierarchy_level: usize,
    /// Where to write the report (default: <outdir>/report).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Stage 2: report only this run tag (default: every tag in `fhkl`).
    #[arg(long)]
    pub tag: Option<String>,
    /// Stage 2: a reference MTZ to compute CC of F by resolution bin against.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Stage 2: the reference's amplitude columns (`F(+),F(-)`, `F-model`, `FP`, `I(+),I(-)`, ...).
    #[arg(long = "reference-columns", default_value = "F(+),F(-)")]
    pub reference_columns: String,
    /// Stage 2: also compare the conventional ROI-sum merge with the reference.
    #[arg(long = "with-merge")]
    pub with_merge: bool,
    /// Stage 2: two run tags refined on the even and odd half sets (`--halfSet`), for CC½.
    #[arg(long = "half-tags", num_args = 2, value_names = ["TAG_A", "TAG_B"])]
    pub half_tags: Option<Vec<String>>,
    /// Stage 2: number of resolution bins.
    #[arg(long, default_value_t = 10)]
    pub bins: usize,
    /// Stage 2: space group of the comparison (default: the experiments' space group).
    #[arg(long = "space-group")]
    pub space_group: Option<String>,
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
        // The f64 columns, in schema order after the key and index columns.
        let names = &ResidualRow::COLUMNS[5..];
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
         median(n_evals) AS med_evals, round(median(sigz), 4) AS med_sigz, round(median(wall_time_s), 2) AS med_wall \
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

/// A single count from SQL (0 when the table is absent or empty).
fn count(store: &Store, sql: &str) -> i64 {
    let Ok(q) = store.query(sql) else { return 0 };
    q.batches
        .first()
        .filter(|b| b.num_rows() > 0)
        .and_then(|b| b.column(0).as_primitive_opt::<Int64Type>().map(|a| a.value(0)))
        .unwrap_or(0)
}

/// The stage-2 run tags that have `fhkl` rows.
fn stage2_tags(store: &Store) -> Result<Vec<String>> {
    let q = store.query("SELECT DISTINCT tag FROM fhkl ORDER BY tag")?;
    let mut out = Vec::new();
    for b in &q.batches {
        let t = b.column(0).as_string::<i32>();
        out.extend((0..b.num_rows()).filter(|&i| t.is_valid(i)).map(|i| t.value(i).to_string()));
    }
    Ok(out)
}

/// The cell (mean over the run's shot_params rows, else the stage-1 rows) and
/// the space group of a stage-2 comparison.
fn stage2_cell_and_group(
    store: &Store,
    tag: &str,
    sg: Option<&str>,
    reference: Option<&Path>,
) -> Result<(UnitCell, SpaceGroup)> {
    let mut cell = None;
    for stage in [tag, "stage1"] {
        let q = store.query(&format!(
            "SELECT avg(a), avg(b), avg(c), avg(al), avg(be), avg(ga) FROM shot_params \
             WHERE stage = {} AND a IS NOT NULL",
            crate::store::catalog::sql_string(stage)
        ))?;
        if let Some(b) = q.batches.first().filter(|b| b.num_rows() > 0 && b.column(0).is_valid(0)) {
            let v: [f64; 6] = std::array::from_fn(|k| b.column(k).as_primitive::<Float64Type>().value(0));
            cell = Some(UnitCell::from_array(v));
            break;
        }
    }
    let cell =
        cell.ok_or_else(|| Error::file(store.root(), "no shot_params rows to take the unit cell from"))?;
    // The group maps the reference's indices onto ours: --space-group, else the
    // reference MTZ's own, else the experiments'. Without a reference it is unused.
    let group = if let Some(s) = sg {
        SpaceGroup::parse(s).map_err(|e| Error::param("--space-group", e.to_string()))?
    } else if let Some(g) = reference.map(crate::io::mtz::Mtz::read).transpose()?.and_then(|m| m.space_group)
    {
        g
    } else {
        let q = store
            .query("SELECT space_group_hall FROM experiments WHERE space_group_hall IS NOT NULL LIMIT 1");
        let hall = q
            .ok()
            .and_then(|q| q.batches.into_iter().find(|b| b.num_rows() > 0))
            .map(|b| b.column(0).as_string::<i32>().value(0).to_string());
        match (hall, reference) {
            (Some(h), _) => SpaceGroup::from_hall(&h)?,
            (None, None) => SpaceGroup::parse("P 1").map_err(|e| Error::msg(e.to_string()))?,
            (None, Some(p)) => {
                return Err(Error::file(
                    p,
                    "the reference has no space group and the store none: give --space-group",
                ))
            }
        }
    };
    Ok((cell, group))
}

/// Write every section that the store's tables support; returns the text.
pub fn write_all(a: &ReportArgs, out: &Path) -> Result<String> {
    let store = Store::open(&a.outdir)?;
    let mut text = String::new();
    let mut sections = 0;
    if count(&store, "SELECT count(*) FROM residuals") > 0 {
        text.push_str("== stage 1: detector residuals and Δψ, input vs refined models\n");
        text.push_str(&write(&a.outdir, out, a.hierarchy_level)?);
        sections += 1;
    }
    if count(&store, "SELECT count(*) FROM predictions") > 0 {
        let files = crate::predict::report::write_report(&a.outdir, out)?;
        text.push_str("\n== predict: predictions matched to strong spots\n");
        // The last file is predict_summary.txt.
        if let Some(p) = files.last() {
            text.push_str(&std::fs::read_to_string(p).map_err(|e| crate::error::io_err(p, e))?);
        }
        sections += 1;
    }
    if count(&store, "SELECT count(*) FROM fhkl") > 0 {
        let tags = match &a.tag {
            Some(t) => vec![t.clone()],
            None => stage2_tags(&store)?,
        };
        let half_tags = a.half_tags.as_ref().map(|v| (v[0].clone(), v[1].clone()));
        for (i, tag) in tags.iter().enumerate() {
            let (cell, sg) =
                stage2_cell_and_group(&store, tag, a.space_group.as_deref(), a.reference.as_deref())?;
            let opts = ReportOptions {
                reference: a.reference.clone().map(|p| (p, a.reference_columns.clone())),
                // CC½ compares two runs: print it once.
                half_tags: if i == 0 { half_tags.clone() } else { None },
                n_bins: a.bins,
                with_merge: a.with_merge,
            };
            text.push_str(&format!("\n== stage 2 run `{tag}`\n"));
            text.push_str(&stage2_report(&store, tag, &cell, &sg, &opts, out)?);
        }
        sections += 1;
    }
    if sections == 0 {
        return Err(Error::file(
            &a.outdir,
            "nothing to report: no residuals (hopper), predictions (integrate) or fhkl (ens-hopper) rows",
        ));
    }
    crate::report::plot::write_atomic(&out.join("summary.txt"), text.as_bytes())?;
    Ok(text)
}

pub fn run(a: ReportArgs) -> anyhow::Result<()> {
    let out = a.out.clone().unwrap_or_else(|| a.outdir.join("report"));
    let text = write_all(&a, &out)?;
    print!("{text}");
    println!("report written to {}", out.display());
    Ok(())
}
