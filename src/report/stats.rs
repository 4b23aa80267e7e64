//! Statistics of residual rows per panel, panel group, shot and dataset.
//!
//! Definitions (`detector_residuals.plot_all`, `panel_fitting.three_feature_fit`):
//! * RMSD = 1000·sqrt(Σ(Δx² + Δy²)/n) µm; radial and transverse RMSDs likewise
//!   from their components.
//! * `cc(ΔR,Δψ)`, `cc(ΔT,Δψ)`: **uncentred** correlations Σxy/sqrt(Σx²·Σy²)
//!   (sklearn `EmpiricalCovariance(assume_centered=True)`), defined for n ≥ 3
//!   (cctbx's threshold); NaN otherwise. Units cancel.
//! * `CC(Δψ, Δ2θ)`: Pearson (centred) correlation, Δ2θ = 2θ_obs − 2θ_cal; NaN
//!   when n < 2 or a variance is zero (cctbx's `linear_correlation` reports 0 there;
//!   NaN keeps "undefined" apart from "uncorrelated").
//! * Δψ: mean, sample SD (n − 1), median (mean of the middle pair for even n),
//!   MAD = median|Δψ − median| **unscaled** (no 1.4826 factor; DuckDB `mad()`).
//! * Weighted RMSD: weights 1/|xyzobs.mm.variance| over rows with a positive,
//!   finite variance.
//! * Group-RMSD mean and SD: weighted by reflection count, SD as GSL's
//!   `gsl_stats_wsd` (scitbx `mean_and_variance`), over groups with n > 0.
//!
//! **\[BUG?\] decided:** cctbx's `get_unweighted_rmsd` sums only rows with a non-zero
//! variance but divides by the count of all rows. Here the unweighted RMSD uses all
//! rows for both.

// `!(x > 0.0)` is deliberate: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use std::collections::BTreeMap;

use crate::geometry::{Detector, NodeChild};

use super::residuals::ResidualRow;

/// Statistics of one set of residual rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupStats {
    pub n: usize,
    pub rmsd_um: f64,
    pub radial_rmsd_um: f64,
    pub transverse_rmsd_um: f64,
    pub mean_radial_um: f64,
    pub mean_transverse_um: f64,
    pub delpsi_mean_deg: f64,
    pub delpsi_sd_deg: f64,
    pub delpsi_median_deg: f64,
    pub delpsi_mad_deg: f64,
    /// Uncentred cc(ΔR, Δψ).
    pub cc_radial_delpsi: f64,
    /// Uncentred cc(ΔT, Δψ).
    pub cc_transverse_delpsi: f64,
    /// Pearson CC(Δψ, Δ2θ).
    pub cc_delpsi_d2theta: f64,
    pub n_delpsi_pos: usize,
    pub n_delpsi_neg: usize,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

fn rms(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt()
}

/// Sample standard deviation (n − 1); NaN for n < 2.
pub fn sample_sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return f64::NAN;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Median (mean of the middle pair for even n); NaN when empty. NaNs sort last.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Median absolute deviation from the median, unscaled.
pub fn mad(v: &[f64]) -> f64 {
    let m = median(v);
    let dev: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
    median(&dev)
}

/// Uncentred correlation Σxy/sqrt(Σx²Σy²); NaN for n < 3 or a zero sum of squares.
pub fn uncentred_cc(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len());
    if x.len() < 3 {
        return f64::NAN;
    }
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| a * b).sum();
    let sxx: f64 = x.iter().map(|a| a * a).sum();
    let syy: f64 = y.iter().map(|b| b * b).sum();
    if sxx > 0.0 && syy > 0.0 {
        sxy / (sxx * syy).sqrt()
    } else {
        f64::NAN
    }
}

/// Pearson correlation; NaN for n < 2 or a zero variance.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len());
    if x.len() < 2 {
        return f64::NAN;
    }
    let (mx, my) = (mean(x), mean(y));
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    let syy: f64 = y.iter().map(|b| (b - my) * (b - my)).sum();
    if sxx > 0.0 && syy > 0.0 {
        sxy / (sxx * syy).sqrt()
    } else {
        f64::NAN
    }
}

impl GroupStats {
    /// Statistics of `rows` (any iterator of rows).
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a ResidualRow>) -> GroupStats {
        let rows: Vec<&ResidualRow> = rows.into_iter().collect();
        let um = |f: fn(&ResidualRow) -> f64| rows.iter().map(|r| 1000.0 * f(r)).collect::<Vec<f64>>();
        let norm = um(ResidualRow::delta_norm_mm);
        let rad = um(|r| r.radial_mm);
        let tra = um(|r| r.transverse_mm);
        let psi: Vec<f64> = rows.iter().map(|r| r.delpsi_deg).collect();
        let d2t: Vec<f64> = rows.iter().map(|r| r.delta_two_theta_deg()).collect();
        GroupStats {
            n: rows.len(),
            rmsd_um: rms(&norm),
            radial_rmsd_um: rms(&rad),
            transverse_rmsd_um: rms(&tra),
            mean_radial_um: mean(&rad),
            mean_transverse_um: mean(&tra),
            delpsi_mean_deg: mean(&psi),
            delpsi_sd_deg: sample_sd(&psi),
            delpsi_median_deg: median(&psi),
            delpsi_mad_deg: mad(&psi),
            cc_radial_delpsi: uncentred_cc(&rad, &psi),
            cc_transverse_delpsi: uncentred_cc(&tra, &psi),
            cc_delpsi_d2theta: pearson(&psi, &d2t),
            n_delpsi_pos: psi.iter().filter(|&&p| p > 0.0).count(),
            n_delpsi_neg: psi.iter().filter(|&&p| p < 0.0).count(),
        }
    }
}

/// Statistics per key (panel, shot, ...), keys in order.
pub fn by_key<'a, K: Ord>(
    rows: impl IntoIterator<Item = &'a ResidualRow>,
    key: impl Fn(&ResidualRow) -> K,
) -> BTreeMap<K, GroupStats> {
    let mut groups: BTreeMap<K, Vec<&ResidualRow>> = BTreeMap::new();
    for r in rows {
        groups.entry(key(r)).or_default().push(r);
    }
    groups.into_iter().map(|(k, v)| (k, GroupStats::of(v))).collect()
}

/// Statistics per panel.
pub fn by_panel<'a>(rows: impl IntoIterator<Item = &'a ResidualRow>) -> BTreeMap<u32, GroupStats> {
    by_key(rows, |r| r.panel)
}

/// Statistics per shot (per-image RMSD, Δψ > 0 vs < 0 counts).
pub fn by_shot<'a>(rows: impl IntoIterator<Item = &'a ResidualRow>) -> BTreeMap<i64, GroupStats> {
    by_key(rows, |r| r.shot_id)
}

/// A set of panels that move together: a node of the detector hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PanelGroup {
    pub name: String,
    pub panels: Vec<usize>,
}

/// The panel groups at hierarchy `level` (0 = the whole detector, 1 = the root's
/// children, ...), as `serialtbx.detector.iterate_detector_at_level`. A panel
/// that sits above `level` forms its own group. Without a hierarchy, level 0 is
/// one group and deeper levels are single panels. Panels the hierarchy does not
/// reach are appended as single-panel groups.
pub fn panel_groups(detector: &Detector, level: usize) -> Vec<PanelGroup> {
    let n = detector.panels.len();
    let panel_name = |i: usize| {
        let nm = detector.panels.get(i).map(|p| p.name.as_str()).unwrap_or("");
        if nm.is_empty() {
            format!("panel {i}")
        } else {
            nm.to_string()
        }
    };
    let mut groups = Vec::new();
    match &detector.hierarchy {
        None if level == 0 => groups.push(PanelGroup { name: "detector".into(), panels: (0..n).collect() }),
        None => groups.extend((0..n).map(|i| PanelGroup { name: panel_name(i), panels: vec![i] })),
        Some(root) => {
            fn leaves(node: &crate::geometry::DetectorNode, out: &mut Vec<usize>) {
                for c in &node.children {
                    match c {
                        NodeChild::Panel(i) => out.push(*i),
                        NodeChild::Group(g) => leaves(g, out),
                    }
                }
            }
            fn walk(
                node: &crate::geometry::DetectorNode,
                depth: usize,
                level: usize,
                groups: &mut Vec<PanelGroup>,
                panel_name: &dyn Fn(usize) -> String,
            ) {
                if depth == level {
                    let mut p = Vec::new();
                    leaves(node, &mut p);
                    let name = match (node.name.is_empty(), depth) {
                        (false, _) => node.name.clone(),
                        (true, 0) => "detector".into(),
                        (true, _) => format!("group {}", groups.len()),
                    };
                    groups.push(PanelGroup { name, panels: p });
                    return;
                }
                for c in &node.children {
                    match c {
                        NodeChild::Panel(i) => {
                            groups.push(PanelGroup { name: panel_name(*i), panels: vec![*i] })
                        }
                        NodeChild::Group(g) => walk(g, depth + 1, level, groups, panel_name),
                    }
                }
            }
            walk(root, 0, level, &mut groups, &panel_name);
            let mut seen = vec![false; n];
            for g in &mut groups {
                g.panels.retain(|&i| i < n);
                for &i in &g.panels {
                    seen[i] = true;
                }
            }
            groups.extend(
                (0..n).filter(|&i| !seen[i]).map(|i| PanelGroup { name: panel_name(i), panels: vec![i] }),
            );
        }
    }
    groups
}

/// Statistics per panel group, in the order of `groups`.
pub fn by_group<'a>(
    rows: impl IntoIterator<Item = &'a ResidualRow>,
    groups: &[PanelGroup],
) -> Vec<(PanelGroup, GroupStats)> {
    let rows: Vec<&ResidualRow> = rows.into_iter().collect();
    groups
        .iter()
        .map(|g| {
            let sel = rows.iter().copied().filter(|r| g.panels.contains(&(r.panel as usize)));
            (g.clone(), GroupStats::of(sel))
        })
        .collect()
}

/// Mean and GSL weighted SD of values with weights (NaN where undefined).
pub fn weighted_mean_sd(values: &[f64], weights: &[f64]) -> (f64, f64) {
    let sw: f64 = weights.iter().sum();
    let sw2: f64 = weights.iter().map(|w| w * w).sum();
    if !(sw > 0.0) {
        return (f64::NAN, f64::NAN);
    }
    let m = values.iter().zip(weights).map(|(v, w)| v * w).sum::<f64>() / sw;
    let d2: f64 = values.iter().zip(weights).map(|(v, w)| w * (v - m) * (v - m)).sum();
    let denom = sw * sw - sw2;
    let sd = if denom > 0.0 { (sw / denom * d2).sqrt() } else { f64::NAN };
    (m, sd)
}

/// Dataset-level statistics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DatasetStats {
    /// Everything pooled (its `rmsd_um` is the unweighted dataset RMSD).
    pub overall: GroupStats,
    /// sqrt(Σ w|Δ|²/Σ w) with w = 1/|xyzobs.mm.variance|, µm.
    pub weighted_rmsd_um: f64,
    /// Rows that carried a usable variance.
    pub n_weighted: usize,
    pub n_shots: usize,
    /// Reflection-count-weighted mean of the group RMSDs (total, radial, transverse), µm.
    pub group_rmsd_mean_um: [f64; 3],
    /// GSL weighted SD of the group RMSDs (total, radial, transverse), µm.
    pub group_rmsd_sd_um: [f64; 3],
}

impl DatasetStats {
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a ResidualRow>, groups: &[PanelGroup]) -> DatasetStats {
        let rows: Vec<&ResidualRow> = rows.into_iter().collect();
        let overall = GroupStats::of(rows.iter().copied());
        let (mut sw, mut swd, mut nw) = (0.0, 0.0, 0usize);
        for r in &rows {
            if r.obs_var_mm2 > 0.0 && r.obs_var_mm2.is_finite() {
                let w = 1.0 / r.obs_var_mm2;
                let d = 1000.0 * r.delta_norm_mm();
                sw += w;
                swd += w * d * d;
                nw += 1;
            }
        }
        let weighted_rmsd_um = if nw > 0 { (swd / sw).sqrt() } else { f64::NAN };
        let mut shots: Vec<i64> = rows.iter().map(|r| r.shot_id).collect();
        shots.sort_unstable();
        shots.dedup();
        let per_group: Vec<GroupStats> =
            by_group(rows.iter().copied(), groups).into_iter().map(|(_, s)| s).filter(|s| s.n > 0).collect();
        let w: Vec<f64> = per_group.iter().map(|s| s.n as f64).collect();
        let pick = |f: fn(&GroupStats) -> f64| {
            let v: Vec<f64> = per_group.iter().map(f).collect();
            weighted_mean_sd(&v, &w)
        };
        let (m0, s0) = pick(|s| s.rmsd_um);
        let (m1, s1) = pick(|s| s.radial_rmsd_um);
        let (m2, s2) = pick(|s| s.transverse_rmsd_um);
        DatasetStats {
            overall,
            weighted_rmsd_um,
            n_weighted: nw,
            n_shots: shots.len(),
            group_rmsd_mean_um: [m0, m1, m2],
            group_rmsd_sd_um: [s0, s1, s2],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conventions::Vec3;
    use crate::geometry::{DetectorNode, Panel};
    use crate::report::residuals::ModelKind;

    fn row(panel: u32, dx: f64, dy: f64, rad: f64, tra: f64, psi: f64) -> ResidualRow {
        ResidualRow {
            shot_id: 0,
            refl_id: 0,
            model: ModelKind::Input,
            panel,
            hkl: [1, 2, 3],
            d: 2.0,
            two_theta_obs_deg: 20.0 + psi,
            two_theta_cal_deg: 20.0,
            obs_px: [0.0; 2],
            cal_px: [0.0; 2],
            obs_mm: [10.0, 10.0],
            cal_mm: [10.0 + dx, 10.0 + dy],
            radial_mm: rad,
            transverse_mm: tra,
            delpsi_deg: psi,
            obs_var_mm2: 0.01,
            wavelength: 1.0,
        }
    }

    #[test]
    fn robust_statistics_by_hand() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        // |x − 2.5| = 1.5 0.5 0.5 1.5 → median 1.0
        assert_eq!(mad(&[4.0, 1.0, 2.0, 3.0]), 1.0);
        assert!((sample_sd(&[1.0, 2.0, 3.0, 4.0]) - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert!(median(&[]).is_nan() && sample_sd(&[1.0]).is_nan());
        // Uncentred: a constant offset does not decorrelate (unlike Pearson).
        let x = [1.0, 1.1, 0.9, 1.0];
        let y = [2.0, 2.0, 2.0, 2.0];
        assert!((uncentred_cc(&x, &y) - 4.0 / (4.02f64 * 4.0).sqrt() * 1.0).abs() < 1e-12);
        assert!(pearson(&x, &y).is_nan());
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 1.0, -1.0]) + 1.0).abs() < 1e-15);
        assert!(uncentred_cc(&[1.0, 2.0], &[1.0, 2.0]).is_nan());
    }

    #[test]
    fn group_stats_by_hand() {
        let rows = [
            row(0, 0.003, 0.004, 0.003, 0.004, 0.02),
            row(0, 0.0, 0.0, 0.0, 0.0, -0.01),
            row(1, 0.0, 0.001, 0.001, 0.0, 0.0),
        ];
        let s = GroupStats::of(&rows[..2]);
        assert_eq!(s.n, 2);
        // |Δ| = 5 µm and 0 → RMSD sqrt(25/2).
        assert!((s.rmsd_um - (12.5f64).sqrt()).abs() < 1e-9);
        assert!((s.radial_rmsd_um - (4.5f64).sqrt()).abs() < 1e-9);
        assert!((s.transverse_rmsd_um - 8.0f64.sqrt()).abs() < 1e-9);
        assert_eq!((s.n_delpsi_pos, s.n_delpsi_neg), (1, 1));
        assert!((s.delpsi_mean_deg - 0.005).abs() < 1e-15);
        assert!(s.cc_radial_delpsi.is_nan()); // n < 3
        let p = by_panel(&rows);
        assert_eq!(p.len(), 2);
        assert_eq!(p[&1].n, 1);
        // Δ2θ = Δψ by construction here → CC = 1.
        let all = GroupStats::of(&rows);
        assert!((all.cc_delpsi_d2theta - 1.0).abs() < 1e-12);
        assert!(all.cc_radial_delpsi > 0.0);
    }

    #[test]
    fn dataset_weights_and_group_moments() {
        let mut rows = vec![row(0, 0.003, 0.004, 0.0, 0.0, 0.0), row(1, 0.0, 0.0, 0.0, 0.0, 0.0)];
        rows[1].obs_var_mm2 = 0.03; // weight 1/3 of row 0's
        let groups = vec![
            PanelGroup { name: "a".into(), panels: vec![0] },
            PanelGroup { name: "b".into(), panels: vec![1] },
        ];
        let d = DatasetStats::of(&rows, &groups);
        // weighted: sqrt((100·25 + 33.3·0)/(133.3)) = sqrt(18.75)
        assert!((d.weighted_rmsd_um - 18.75f64.sqrt()).abs() < 1e-9);
        assert!((d.overall.rmsd_um - 12.5f64.sqrt()).abs() < 1e-9);
        // Group RMSDs 5 and 0 with weights 1, 1: mean 2.5; GSL wsd = sqrt(2/(4−2)·12.5).
        assert!((d.group_rmsd_mean_um[0] - 2.5).abs() < 1e-12);
        assert!((d.group_rmsd_sd_um[0] - 12.5f64.sqrt()).abs() < 1e-12);
        rows[1].obs_var_mm2 = 0.0;
        let d = DatasetStats::of(&rows, &groups);
        assert_eq!(d.n_weighted, 1);
        assert!((d.weighted_rmsd_um - 5.0).abs() < 1e-9);
    }

    #[test]
    fn hierarchy_levels() {
        let panels: Vec<Panel> =
            (0..5).map(|i| Panel { name: format!("p{i}"), ..Default::default() }).collect();
        let node = |name: &str, children: Vec<NodeChild>| DetectorNode {
            name: name.into(),
            local_fast: Vec3::x(),
            local_slow: Vec3::y(),
            local_origin: Vec3::zeros(),
            children,
        };
        let q0 = node("Q0", vec![NodeChild::Panel(0), NodeChild::Panel(1)]);
        let q1 =
            node("Q1", vec![NodeChild::Group(node("S", vec![NodeChild::Panel(2)])), NodeChild::Panel(3)]);
        let root = node("root", vec![NodeChild::Group(q0), NodeChild::Group(q1)]);
        let det = Detector { panels, hierarchy: Some(root) };
        let g0 = panel_groups(&det, 0);
        assert_eq!(g0.len(), 2); // root + unreachable panel 4
        assert_eq!(g0[0].panels, vec![0, 1, 2, 3]);
        assert_eq!(g0[1], PanelGroup { name: "p4".into(), panels: vec![4] });
        let g1 = panel_groups(&det, 1);
        assert_eq!(g1.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["Q0", "Q1", "p4"]);
        let g2 = panel_groups(&det, 2);
        assert_eq!(
            g2.iter().map(|g| g.panels.clone()).collect::<Vec<_>>(),
            [vec![0], vec![1], vec![2], vec![3], vec![4]]
        );
        let flat = Detector { panels: det.panels.clone(), hierarchy: None };
        assert_eq!(panel_groups(&flat, 0)[0].panels.len(), 5);
        assert_eq!(panel_groups(&flat, 1).len(), 5);
    }
}
