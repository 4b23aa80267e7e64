//! The report figures (PNG): Δψ histograms per panel, radial/transverse
//! histograms, Δψ against 2θ, and detector maps of the offsets.
//!
//! Colours: input model blue, refined model orange. Detector maps are drawn as
//! seen from the source (lab x right, lab y up), like `detector_residuals`.
//! Histogram ranges are symmetric and cover the 99th percentile of |value| over
//! both models, so a few wild outliers do not squash the distribution (they are
//! counted in the end bins).

use crate::geometry::Detector;

use super::plot::{
    colorbar, diverging, histogram, legend, text_height, text_width, Axes, Canvas, Rgb, BLACK, BLUE, GREY,
    LIGHT_GREY, ORANGE, WHITE,
};
use super::residuals::ResidualRow;
use super::stats::{GroupStats, PanelGroup};
use super::summary::Comparison;

/// Offsets are drawn this many times their size (`delta_scalar` of detector_residuals).
pub const DELTA_SCALAR: f64 = 50.0;
/// Δψ colour scale limit, degrees.
pub const DELPSI_CLIP_DEG: f64 = 0.1;

/// Every figure with its file name.
pub fn all(cmp: &Comparison, detector: &Detector, groups: &[PanelGroup]) -> Vec<(&'static str, Canvas)> {
    vec![
        ("deltapsi_by_panel.png", deltapsi_histograms(cmp, groups)),
        ("offset_histograms.png", offset_histograms(cmp)),
        ("deltapsi_vs_two_theta.png", deltapsi_vs_two_theta(cmp)),
        ("detector_offsets_input.png", detector_offsets(&cmp.before, detector, "input model")),
        ("detector_offsets_refined.png", detector_offsets(&cmp.after, detector, "refined model")),
    ]
}

/// Upper limit of a symmetric range: the 99th percentile of |v|, rounded up to
/// 1, 2 or 5 × 10ᵏ; `floor` if there is nothing.
fn sym_limit(values: impl Iterator<Item = f64>, floor: f64) -> f64 {
    let mut a: Vec<f64> = values.filter(|v| v.is_finite()).map(f64::abs).collect();
    if a.is_empty() {
        return floor;
    }
    a.sort_by(f64::total_cmp);
    let p = a[((a.len() - 1) as f64 * 0.99).round() as usize].max(floor);
    let mag = 10f64.powf(p.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|x| *x >= p).unwrap_or(10.0 * mag)
}

fn fmt(v: f64, dec: usize) -> String {
    if v.is_finite() {
        format!("{v:.dec$}")
    } else {
        "–".into()
    }
}

/// Δψ histograms, one small plot per panel (or panel group), before vs after.
pub fn deltapsi_histograms(cmp: &Comparison, groups: &[PanelGroup]) -> Canvas {
    // Units: panel groups if the grouping is coarser than panels, else panels with data.
    let single = groups.iter().all(|g| g.panels.len() == 1);
    let mut units: Vec<(String, Vec<usize>)> = Vec::new();
    if single {
        let mut panels: Vec<u32> = cmp.before.iter().map(|r| r.panel).collect();
        panels.sort_unstable();
        panels.dedup();
        for p in panels {
            units.push((format!("panel {p}"), vec![p as usize]));
        }
    } else {
        for g in groups {
            if cmp.before.iter().any(|r| g.panels.contains(&(r.panel as usize))) {
                units.push((g.name.clone(), g.panels.clone()));
            }
        }
    }
    if units.is_empty() {
        units.push(("no reflections".into(), vec![]));
    }
    let lim = sym_limit(cmp.rows().map(|r| r.delpsi_deg), 1e-4);
    let m = units.len();
    let cols = (m as f64).sqrt().ceil() as usize;
    let rows = m.div_ceil(cols);
    let (scale, cw, ch) = if m == 1 { (2usize, 760usize, 520usize) } else { (1, 230, 165) };
    let top = 30 * scale;
    let mut c = Canvas::new(cols * cw + 20, rows * ch + top + 10, WHITE);
    c.text(10, 6, &format!("Δψ (deg): input blue, refined orange; range ±{lim}"), BLACK, scale);
    let th = text_height(scale) as f64;
    for (k, (name, panels)) in units.iter().enumerate() {
        let (gx, gy) = ((k % cols) * cw + 10, (k / cols) * ch + top);
        let sel = |rows: &[ResidualRow]| -> Vec<f64> {
            rows.iter().filter(|r| panels.contains(&(r.panel as usize))).map(|r| r.delpsi_deg).collect()
        };
        let (b, a) = (sel(&cmp.before), sel(&cmp.after));
        let nb = if m == 1 { 40 } else { 24 };
        let hb = histogram(&b, -lim, lim, nb);
        let ha = histogram(&a, -lim, lim, nb);
        let ymax = hb.iter().chain(&ha).copied().max().unwrap_or(1).max(1) as f64 * 1.1;
        let left = 8.0 * th.max(1.0);
        let ax = Axes::new(
            (
                gx as f64 + left * 0.45,
                gy as f64 + th + 8.0,
                (gx + cw) as f64 - 12.0 * scale as f64,
                (gy + ch) as f64 - 2.5 * th - 8.0,
            ),
            (-lim, lim),
            (0.0, ymax),
        );
        ax.filled_histogram(&mut c, &hb, -lim, lim, BLUE, 0.3);
        ax.step_histogram(&mut c, &hb, -lim, lim, BLUE);
        ax.step_histogram(&mut c, &ha, -lim, lim, ORANGE);
        ax.line(&mut c, 0.0, 0.0, 0.0, ymax, GREY);
        let sb = GroupStats::of(cmp.before.iter().filter(|r| panels.contains(&(r.panel as usize))));
        let sa = GroupStats::of(cmp.after.iter().filter(|r| panels.contains(&(r.panel as usize))));
        let title = format!(
            "{name} n={} mean {}→{}",
            b.len(),
            fmt(sb.delpsi_mean_deg, 3),
            fmt(sa.delpsi_mean_deg, 3)
        );
        let xl = if m == 1 { "Δψ (deg)" } else { "" };
        let yl = if m == 1 { "reflections" } else { "" };
        ax.draw_frame(&mut c, &title, xl, yl, scale);
    }
    c
}

/// Radial and transverse offset histograms (µm), before vs after.
pub fn offset_histograms(cmp: &Comparison) -> Canvas {
    let (w, h) = (1300usize, 560usize);
    let mut c = Canvas::new(w, h, WHITE);
    c.text(16, 10, "Offsets cal − obs (µm): input (blue) vs refined (orange)", BLACK, 2);
    let sb = GroupStats::of(&cmp.before);
    let sa = GroupStats::of(&cmp.after);
    type Pick = fn(&ResidualRow) -> f64;
    let parts: [(&str, Pick, f64, f64); 2] = [
        ("radial", |r| 1000.0 * r.radial_mm, sb.radial_rmsd_um, sa.radial_rmsd_um),
        ("transverse", |r| 1000.0 * r.transverse_mm, sb.transverse_rmsd_um, sa.transverse_rmsd_um),
    ];
    for (k, (name, pick, rb, ra)) in parts.iter().enumerate() {
        let lim = sym_limit(cmp.rows().map(pick), 1e-3);
        let b: Vec<f64> = cmp.before.iter().map(pick).collect();
        let a: Vec<f64> = cmp.after.iter().map(pick).collect();
        let hb = histogram(&b, -lim, lim, 40);
        let ha = histogram(&a, -lim, lim, 40);
        let ymax = hb.iter().chain(&ha).copied().max().unwrap_or(1).max(1) as f64 * 1.15;
        let x0 = 110.0 + k as f64 * 640.0;
        let ax = Axes::new((x0, 80.0, x0 + 500.0, 460.0), (-lim, lim), (0.0, ymax));
        ax.filled_histogram(&mut c, &hb, -lim, lim, BLUE, 0.3);
        ax.step_histogram(&mut c, &hb, -lim, lim, BLUE);
        ax.step_histogram(&mut c, &ha, -lim, lim, ORANGE);
        ax.line(&mut c, 0.0, 0.0, 0.0, ymax, GREY);
        ax.draw_frame(&mut c, &format!("{name} offset"), &format!("{name} (µm)"), "reflections", 2);
        legend(
            &mut c,
            x0 as i64 + 8,
            88,
            &[
                (BLUE, &format!("input RMSD {}", fmt(*rb, 1))),
                (ORANGE, &format!("refined RMSD {}", fmt(*ra, 1))),
            ],
            2,
        );
    }
    c
}

/// Δψ against 2θ, before vs after.
pub fn deltapsi_vs_two_theta(cmp: &Comparison) -> Canvas {
    let mut c = Canvas::new(900, 640, WHITE);
    c.text(16, 10, "Δψ vs 2θ: input (blue), refined (orange)", BLACK, 2);
    let lim = sym_limit(cmp.rows().map(|r| r.delpsi_deg), 1e-4);
    let tt: Vec<f64> = cmp.rows().map(|r| r.two_theta_cal_deg).filter(|v| v.is_finite()).collect();
    let (lo, hi) = tt.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let pad = ((hi - lo) * 0.03).max(0.1);
    let ax = Axes::new((120.0, 70.0, 860.0, 560.0), (lo - pad, hi + pad), (-lim, lim));
    ax.line(&mut c, lo - pad, 0.0, hi + pad, 0.0, LIGHT_GREY);
    for (rows, col) in [(&cmp.before, BLUE), (&cmp.after, ORANGE)] {
        for r in rows.iter() {
            ax.dot(&mut c, r.two_theta_cal_deg, r.delpsi_deg.clamp(-lim, lim), 2.0, col);
        }
    }
    ax.draw_frame(&mut c, "", "2θ (deg, model)", "Δψ (deg)", 2);
    c
}

/// The detector seen from the source: panel outlines, and at each observed spot
/// the offset (cal − obs) × [`DELTA_SCALAR`] coloured by Δψ (clipped to
/// ±[`DELPSI_CLIP_DEG`]); per panel, the mean offset × 50 from the panel centre in black.
pub fn detector_offsets(rows: &[ResidualRow], detector: &Detector, what: &str) -> Canvas {
    let (w, h) = (1000usize, 900usize);
    let mut c = Canvas::new(w, h, WHITE);
    let title = format!("Offsets (cal − obs) × {DELTA_SCALAR} coloured by Δψ, {what}");
    c.text(16, 10, &title, BLACK, 2);
    let corners = |p: &crate::geometry::Panel| {
        let (nx, ny) = (p.image_size[0] as f64 * p.pixel_size[0], p.image_size[1] as f64 * p.pixel_size[1]);
        [p.mm_to_lab(0.0, 0.0), p.mm_to_lab(nx, 0.0), p.mm_to_lab(nx, ny), p.mm_to_lab(0.0, ny)]
    };
    let mut lo = [f64::INFINITY; 2];
    let mut hi = [f64::NEG_INFINITY; 2];
    for p in &detector.panels {
        for q in corners(p) {
            for k in 0..2 {
                lo[k] = lo[k].min(q[k]);
                hi[k] = hi[k].max(q[k]);
            }
        }
    }
    if !lo.iter().chain(&hi).all(|v| v.is_finite()) {
        lo = [-1.0, -1.0];
        hi = [1.0, 1.0];
    }
    // Equal aspect: fit the larger span into the square plot area.
    let (ax0, ay0, side) = (110.0, 60.0, 740.0);
    let span = (hi[0] - lo[0]).max(hi[1] - lo[1]) * 1.04;
    let (cx, cy) = ((lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0);
    let ax = Axes::new(
        (ax0, ay0, ax0 + side, ay0 + side),
        (cx - span / 2.0, cx + span / 2.0),
        (cy - span / 2.0, cy + span / 2.0),
    );
    let big = detector.panels.len() <= 1 || side / detector.panels.len() as f64 > 6.0;
    for (i, p) in detector.panels.iter().enumerate() {
        let q = corners(p);
        for k in 0..4 {
            let (a, b) = (q[k], q[(k + 1) % 4]);
            ax.line(&mut c, a.x, a.y, b.x, b.y, GREY);
        }
        let centre = (q[0] + q[2]) / 2.0;
        if big {
            let label = i.to_string();
            let (px, py) = (ax.px(centre.x), ax.py(centre.y));
            if ax.contains_px(px, py) {
                c.text(px as i64 - text_width(&label, 1) as i64 / 2, py as i64 - 3, &label, LIGHT_GREY, 1);
            }
        }
    }
    let mut per_panel: Vec<(crate::conventions::Vec3, usize)> =
        vec![(crate::conventions::Vec3::zeros(), 0); detector.panels.len()];
    for r in rows {
        let Some(p) = detector.panels.get(r.panel as usize) else { continue };
        let obs = p.mm_to_lab(r.obs_mm[0], r.obs_mm[1]);
        let d = r.delta_mm();
        let dl = p.fast * d[0] + p.slow * d[1];
        let tip = obs + dl * DELTA_SCALAR;
        let col: Rgb = diverging(r.delpsi_deg / DELPSI_CLIP_DEG);
        ax.line(&mut c, obs.x, obs.y, tip.x, tip.y, col);
        ax.dot(&mut c, tip.x, tip.y, 1.6, col);
        per_panel[r.panel as usize].0 += dl;
        per_panel[r.panel as usize].1 += 1;
    }
    for (p, (sum, n)) in detector.panels.iter().zip(&per_panel) {
        if *n >= 3 {
            let q = corners(p);
            let centre = (q[0] + q[2]) / 2.0;
            let tip = centre + sum / *n as f64 * DELTA_SCALAR;
            ax.line(&mut c, centre.x, centre.y, tip.x, tip.y, BLACK);
            ax.dot(&mut c, centre.x, centre.y, 1.5, BLACK);
        }
    }
    ax.draw_frame(&mut c, "", "lab x (mm)", "lab y (mm)", 2);
    colorbar(&mut c, (ax0 + side) as i64 + 40, ay0 as i64 + 40, ay0 as i64 + 400, DELPSI_CLIP_DEG, "Δψ °", 2);
    // Scale bar: a 0.1 mm offset.
    let bar = 0.1 * DELTA_SCALAR;
    let (bx, by) = (ax0 + side + 40.0, ay0 + 480.0);
    let blen = bar / span * side;
    c.line(bx, by, bx + blen, by, BLACK);
    c.line(bx, by - 4.0, bx, by + 4.0, BLACK);
    c.line(bx + blen, by - 4.0, bx + blen, by + 4.0, BLACK);
    c.text(bx as i64, by as i64 + 8, "0.1 mm", BLACK, 1);
    c.text(bx as i64, by as i64 + 20, "offset", BLACK, 1);
    c.text(
        16,
        (ay0 + side) as i64 + 60,
        &format!("{} reflections; black: panel mean offset × {DELTA_SCALAR}", rows.len()),
        BLACK,
        1,
    );
    c
}
