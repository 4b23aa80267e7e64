//! Before vs after: the same reflections evaluated with the input and with the
//! refined models, their statistics side by side, a text table and the report
//! folder (text + PNG figures).
//!
//! Reflections are paired by (shot_id, panel, hkl, observed pixel position):
//! these identify the spot whatever table it came from (diffBragg's refined
//! `.refl` keeps the input's observed centroids but may drop rows). A paired
//! refined row takes the input row's `refl_id`, so both rows of a pair share the
//! key `(shot_id, refl_id)` used by the `residuals` table and its SQL views.
//! Only paired reflections enter the comparison.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{io_err, Error, Result};
use crate::experiment::ExperimentList;
use crate::geometry::Detector;
use crate::reflections::ReflectionTable;

use super::figures;
use super::residuals::{evaluate, EvalOptions, Evaluation, ModelKind, ResidualRow};
use super::stats::{by_group, by_panel, DatasetStats, GroupStats, PanelGroup};

/// Paired residual rows of the input and the refined models.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    /// Input-model rows (`model = input`), in input order.
    pub before: Vec<ResidualRow>,
    /// Refined-model rows, `after[i]` pairs with `before[i]`.
    pub after: Vec<ResidualRow>,
    /// Rows of each side that found no partner.
    pub unmatched_before: usize,
    pub unmatched_after: usize,
}

type Key = (i64, u32, [i32; 3], [u64; 2]);

fn key(r: &ResidualRow) -> Key {
    (r.shot_id, r.panel, r.hkl, [r.obs_px[0].to_bits(), r.obs_px[1].to_bits()])
}

impl Comparison {
    /// Pair `before` (input model) with `after` (refined model) rows.
    pub fn new(before: Vec<ResidualRow>, after: Vec<ResidualRow>) -> Comparison {
        let mut pool: HashMap<Key, VecDeque<ResidualRow>> = HashMap::new();
        let n_after = after.len();
        for r in after {
            pool.entry(key(&r)).or_default().push_back(r);
        }
        let mut out = Comparison::default();
        for b in before {
            match pool.get_mut(&key(&b)).and_then(|q| q.pop_front()) {
                Some(mut a) => {
                    a.refl_id = b.refl_id;
                    out.before.push(b);
                    out.after.push(a);
                }
                None => out.unmatched_before += 1,
            }
        }
        out.unmatched_after = n_after - out.after.len();
        out
    }

    pub fn len(&self) -> usize {
        self.before.len()
    }

    pub fn is_empty(&self) -> bool {
        self.before.is_empty()
    }

    /// Per-panel statistics (panels with at least one pair), before and after.
    pub fn per_panel(&self) -> Vec<(u32, GroupStats, GroupStats)> {
        let b = by_panel(&self.before);
        let a = by_panel(&self.after);
        b.into_iter().map(|(p, sb)| (p, sb, a[&p])).collect()
    }

    /// Per-group statistics, before and after.
    pub fn per_group(&self, groups: &[PanelGroup]) -> Vec<(PanelGroup, GroupStats, GroupStats)> {
        by_group(&self.before, groups)
            .into_iter()
            .zip(by_group(&self.after, groups))
            .map(|((g, b), (_, a))| (g, b, a))
            .collect()
    }

    /// Dataset statistics, before and after.
    pub fn dataset(&self, groups: &[PanelGroup]) -> (DatasetStats, DatasetStats) {
        (DatasetStats::of(&self.before, groups), DatasetStats::of(&self.after, groups))
    }

    /// Both sides as one list of rows (the `residuals` table content).
    pub fn rows(&self) -> impl Iterator<Item = &ResidualRow> {
        self.before.iter().chain(&self.after)
    }

    /// The text summary: a before/after table per panel (or per group when the
    /// groups are not single panels) and the dataset totals.
    pub fn text_summary(&self, groups: &[PanelGroup]) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Stage-1 detector residuals: input (before) vs refined (after) models");
        let _ = writeln!(
            s,
            "{} reflections paired ({} input-only, {} refined-only rows left out); offsets are cal − obs.",
            self.len(),
            self.unmatched_before,
            self.unmatched_after
        );
        let _ = writeln!(s);
        let single = groups.iter().all(|g| g.panels.len() == 1);
        let rows: Vec<(String, GroupStats, GroupStats)> = if single {
            let names: BTreeMap<usize, &str> =
                groups.iter().map(|g| (g.panels[0], g.name.as_str())).collect();
            self.per_panel()
                .into_iter()
                .map(|(p, b, a)| {
                    let nm = names.get(&(p as usize)).map_or(String::new(), |n| format!(" {n}"));
                    (format!("{p}{nm}"), b, a)
                })
                .collect()
        } else {
            self.per_group(groups)
                .into_iter()
                .filter(|(_, b, _)| b.n > 0)
                .map(|(g, b, a)| (g.name, b, a))
                .collect()
        };
        let hdr = [
            "RMSD µm",
            "radial µm",
            "transv µm",
            "mean ΔR µm",
            "mean ΔT µm",
            "mean Δψ °",
            "SD Δψ °",
            "median Δψ °",
            "MAD Δψ °",
            "cc(ΔR,Δψ)",
            "cc(ΔT,Δψ)",
            "CC(Δψ,Δ2θ)",
            "Δψ>0/<0",
        ];
        // One line per panel (group); every cell is "before→after".
        let mut table: Vec<Vec<String>> = Vec::new();
        let mut head = vec![if single { "panel".to_string() } else { "group".to_string() }, "n".to_string()];
        head.extend(hdr.iter().map(|h| h.to_string()));
        table.push(head);
        for (name, b, a) in &rows {
            let mut line = vec![name.chars().take(24).collect::<String>(), b.n.to_string()];
            line.extend(columns(b).iter().zip(columns(a)).map(|(vb, va)| format!("{vb}→{va}")));
            table.push(line);
        }
        let ncol = table[0].len();
        let widths: Vec<usize> =
            (0..ncol).map(|j| table.iter().map(|r| r[j].chars().count()).max().unwrap_or(0)).collect();
        let _ = writeln!(s, "Per {} (each cell: before→after)", if single { "panel" } else { "panel group" });
        for (i, r) in table.iter().enumerate() {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    let pad = widths[j] - c.chars().count();
                    if j == 0 {
                        format!("{c}{}", " ".repeat(pad))
                    } else {
                        format!("{}{c}", " ".repeat(pad))
                    }
                })
                .collect();
            let _ = writeln!(s, "{}", cells.join("  ").trim_end());
            if i == 0 {
                let total: usize = widths.iter().sum::<usize>() + 2 * (ncol - 1);
                let _ = writeln!(s, "{}", "-".repeat(total));
            }
        }
        let (db, da) = self.dataset(groups);
        let _ = writeln!(s);
        let _ = writeln!(s, "Dataset ({} shots, {} reflections)", db.n_shots, db.overall.n);
        let _ = writeln!(s, "  {:<34} {:>12}   {:>12}", "", "before", "after");
        let line = |s: &mut String, label: &str, b: String, a: String| {
            let _ = writeln!(s, "  {label:<34} {b:>12}   {a:>12}");
        };
        line(&mut s, "unweighted RMSD µm", f(db.overall.rmsd_um, 2), f(da.overall.rmsd_um, 2));
        line(&mut s, "weighted RMSD µm (1/|var|)", f(db.weighted_rmsd_um, 2), f(da.weighted_rmsd_um, 2));
        line(&mut s, "radial RMSD µm", f(db.overall.radial_rmsd_um, 2), f(da.overall.radial_rmsd_um, 2));
        line(
            &mut s,
            "transverse RMSD µm",
            f(db.overall.transverse_rmsd_um, 2),
            f(da.overall.transverse_rmsd_um, 2),
        );
        for (k, nm) in ["group RMSD µm, mean±SD", "group radial µm, mean±SD", "group transv µm, mean±SD"]
            .iter()
            .enumerate()
        {
            line(
                &mut s,
                nm,
                format!("{}±{}", f(db.group_rmsd_mean_um[k], 1), f(db.group_rmsd_sd_um[k], 1)),
                format!("{}±{}", f(da.group_rmsd_mean_um[k], 1), f(da.group_rmsd_sd_um[k], 1)),
            );
        }
        line(&mut s, "mean Δψ °", f(db.overall.delpsi_mean_deg, 5), f(da.overall.delpsi_mean_deg, 5));
        line(&mut s, "SD Δψ °", f(db.overall.delpsi_sd_deg, 5), f(da.overall.delpsi_sd_deg, 5));
        line(&mut s, "median Δψ °", f(db.overall.delpsi_median_deg, 5), f(da.overall.delpsi_median_deg, 5));
        line(&mut s, "MAD Δψ °", f(db.overall.delpsi_mad_deg, 5), f(da.overall.delpsi_mad_deg, 5));
        line(
            &mut s,
            "cc(ΔR,Δψ) uncentred",
            f(db.overall.cc_radial_delpsi, 3),
            f(da.overall.cc_radial_delpsi, 3),
        );
        line(
            &mut s,
            "cc(ΔT,Δψ) uncentred",
            f(db.overall.cc_transverse_delpsi, 3),
            f(da.overall.cc_transverse_delpsi, 3),
        );
        line(&mut s, "CC(Δψ,Δ2θ)", f(db.overall.cc_delpsi_d2theta, 3), f(da.overall.cc_delpsi_d2theta, 3));
        line(
            &mut s,
            "Δψ>0 / Δψ<0",
            format!("{}/{}", db.overall.n_delpsi_pos, db.overall.n_delpsi_neg),
            format!("{}/{}", da.overall.n_delpsi_pos, da.overall.n_delpsi_neg),
        );
        s
    }

    /// Write `summary.txt` and the figures into `dir` (created if needed).
    /// `detector` lays out the detector maps (the input experiment's detector).
    pub fn write_report(
        &self,
        dir: &Path,
        detector: &Detector,
        groups: &[PanelGroup],
    ) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut written = Vec::new();
        let txt = dir.join("summary.txt");
        super::plot::write_atomic(&txt, self.text_summary(groups).as_bytes())?;
        written.push(txt);
        for (name, canvas) in figures::all(self, detector, groups) {
            let p = dir.join(name);
            canvas.write_png(&p)?;
            written.push(p);
        }
        Ok(written)
    }
}

fn f(v: f64, dec: usize) -> String {
    if v.is_finite() {
        format!("{v:.dec$}")
    } else {
        "–".into()
    }
}

fn columns(s: &GroupStats) -> [String; 13] {
    [
        f(s.rmsd_um, 1),
        f(s.radial_rmsd_um, 1),
        f(s.transverse_rmsd_um, 1),
        f(s.mean_radial_um, 1),
        f(s.mean_transverse_um, 1),
        f(s.delpsi_mean_deg, 4),
        f(s.delpsi_sd_deg, 4),
        f(s.delpsi_median_deg, 4),
        f(s.delpsi_mad_deg, 4),
        f(s.cc_radial_delpsi, 2),
        f(s.cc_transverse_delpsi, 2),
        f(s.cc_delpsi_d2theta, 2),
        format!("{}/{}", s.n_delpsi_pos, s.n_delpsi_neg),
    ]
}

/// Evaluate both models and pair them. `refined_refls` is the refined table when
/// it differs from the input one (e.g. diffBragg's with its model centroids);
/// `input_opts`/`refined_opts` choose the centroid source of each side.
pub fn compare(
    input: &ExperimentList,
    input_refls: &ReflectionTable,
    refined: &ExperimentList,
    refined_refls: Option<&ReflectionTable>,
    input_opts: &EvalOptions,
    refined_opts: &EvalOptions,
    shot_ids: Option<&[i64]>,
) -> Result<(Comparison, Evaluation, Evaluation)> {
    if input.len() != refined.len() {
        return Err(Error::msg(format!(
            "input and refined experiment lists differ in length ({} vs {})",
            input.len(),
            refined.len()
        )));
    }
    let mut before = evaluate(input, input_refls, ModelKind::Input, input_opts, shot_ids)?;
    let mut after =
        evaluate(refined, refined_refls.unwrap_or(input_refls), ModelKind::Refined, refined_opts, shot_ids)?;
    let cmp = Comparison::new(std::mem::take(&mut before.rows), std::mem::take(&mut after.rows));
    Ok((cmp, before, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(shot: i64, id: i32, hkl: [i32; 3], model: ModelKind, dx: f64) -> ResidualRow {
        ResidualRow {
            shot_id: shot,
            refl_id: id,
            model,
            panel: 0,
            hkl,
            d: 2.0,
            two_theta_obs_deg: 10.0,
            two_theta_cal_deg: 10.0,
            obs_px: [id as f64, 3.5],
            cal_px: [id as f64, 3.5],
            obs_mm: [1.0, 1.0],
            cal_mm: [1.0 + dx, 1.0],
            radial_mm: dx,
            transverse_mm: 0.0,
            delpsi_deg: 0.01,
            obs_var_mm2: 1e-4,
            wavelength: 1.0,
        }
    }

    #[test]
    fn pairs_by_spot_and_takes_input_refl_id() {
        let before = vec![
            row(1, 0, [1, 0, 0], ModelKind::Input, 0.01),
            row(1, 1, [0, 1, 0], ModelKind::Input, 0.02),
            row(2, 0, [1, 0, 0], ModelKind::Input, 0.03),
        ];
        // Refined table dropped row 0 of shot 1, so its row ids shifted.
        let mut a1 = row(1, 0, [0, 1, 0], ModelKind::Refined, 0.001);
        a1.obs_px = before[1].obs_px;
        let a2 = row(2, 0, [1, 0, 0], ModelKind::Refined, 0.002);
        let extra = row(3, 0, [5, 5, 5], ModelKind::Refined, 0.0);
        let c = Comparison::new(before, vec![extra, a2, a1]);
        assert_eq!(c.len(), 2);
        assert_eq!((c.unmatched_before, c.unmatched_after), (1, 1));
        assert_eq!(c.after[0].refl_id, 1);
        assert_eq!(c.after[0].hkl, [0, 1, 0]);
        assert_eq!(c.after[1].shot_id, 2);
        let s = c.text_summary(&[PanelGroup { name: "p".into(), panels: vec![0] }]);
        assert!(s.contains("2 reflections paired"), "{s}");
        // before RMSD = sqrt((20² + 30²)/2) µm
        assert!(s.contains(&format!("{:.2}", (650.0f64).sqrt())), "{s}");
    }
}
