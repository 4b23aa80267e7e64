//! A small RGB rasteriser for report figures: canvas, lines, dots, bitmap text,
//! axes with ticks, colour maps, PNG output (atomic).
//!
//! Coordinates: canvas pixels have (0, 0) at the top-left, x right, y down.
//! [`Axes`] maps data coordinates into a pixel rectangle with y **up**.
//! Nothing here knows about crystallography; [`super::figures`] composes it.

// `!(x > 0.0)` is deliberate: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use std::io::Write;
use std::path::Path;

use crate::error::{io_err, Error, Result};

use super::font::{glyph, CELL_H, CELL_W};

pub type Rgb = [u8; 3];

pub const WHITE: Rgb = [255, 255, 255];
pub const BLACK: Rgb = [0, 0, 0];
pub const GREY: Rgb = [150, 150, 150];
pub const LIGHT_GREY: Rgb = [225, 225, 225];
/// "Before" (input model) colour.
pub const BLUE: Rgb = [31, 119, 180];
/// "After" (refined model) colour.
pub const ORANGE: Rgb = [230, 110, 0];

/// An RGB image.
#[derive(Clone, Debug, PartialEq)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    /// Row-major RGB bytes.
    pub data: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, bg: Rgb) -> Canvas {
        let mut data = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            data.extend_from_slice(&bg);
        }
        Canvas { width, height, data }
    }

    pub fn get(&self, x: usize, y: usize) -> Rgb {
        let i = 3 * (y * self.width + x);
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Set a pixel; points outside the canvas are ignored.
    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = 3 * (y as usize * self.width + x as usize);
            self.data[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Mix `c` into a pixel with opacity `alpha` ∈ [0, 1].
    pub fn blend(&mut self, x: i64, y: i64, c: Rgb, alpha: f64) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = 3 * (y as usize * self.width + x as usize);
            for (d, &ck) in self.data[i..i + 3].iter_mut().zip(&c) {
                let v = *d as f64 * (1.0 - alpha) + ck as f64 * alpha;
                *d = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }

    /// Filled rectangle, corners inclusive (clipped to the canvas).
    pub fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        let (w, h) = (self.width as i64, self.height as i64);
        for y in y0.min(y1).max(0)..=y0.max(y1).min(h - 1) {
            for x in x0.min(x1).max(0)..=x0.max(x1).min(w - 1) {
                self.set(x, y, c);
            }
        }
    }

    /// Rectangle outline, corners inclusive (clipped to the canvas).
    pub fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        let (w, h) = (self.width as i64, self.height as i64);
        for x in x0.max(-1)..=x1.min(w) {
            self.set(x, y0, c);
            self.set(x, y1, c);
        }
        for y in y0.max(-1)..=y1.min(h) {
            self.set(x0, y, c);
            self.set(x1, y, c);
        }
    }

    /// A 1-pixel line (Bresenham) between real pixel positions; non-finite
    /// endpoints draw nothing; very long lines are clipped to the canvas first.
    pub fn line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, c: Rgb) {
        let Some((x0, y0, x1, y1)) = clip_line(x0, y0, x1, y1, self.width as f64, self.height as f64) else {
            return;
        };
        let (mut x, mut y) = (x0.round() as i64, y0.round() as i64);
        let (xe, ye) = (x1.round() as i64, y1.round() as i64);
        let dx = (xe - x).abs();
        let dy = -(ye - y).abs();
        let sx = if x < xe { 1 } else { -1 };
        let sy = if y < ye { 1 } else { -1 };
        let mut err = dx + dy;
        loop {
            self.set(x, y, c);
            if x == xe && y == ye {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Filled disc of radius `r` pixels.
    pub fn disc(&mut self, cx: f64, cy: f64, r: f64, c: Rgb) {
        let m = r.abs() + 2.0;
        if !(cx > -m && cy > -m && cx < self.width as f64 + m && cy < self.height as f64 + m && r.is_finite())
        {
            return;
        }
        let ri = r.ceil() as i64;
        let (x0, y0) = (cx.round() as i64, cy.round() as i64);
        for dy in -ri..=ri {
            for dx in -ri..=ri {
                if ((dx * dx + dy * dy) as f64) <= r * r + 0.25 {
                    self.set(x0 + dx, y0 + dy, c);
                }
            }
        }
    }

    /// Text with its top-left corner at (x, y); `scale` multiplies the 5×7 font.
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb, scale: usize) {
        let mut cx = x;
        for ch in s.chars() {
            let (rows, shift) = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let px = cx.saturating_add((col * scale) as i64);
                        let py = y.saturating_add(((r + shift) * scale) as i64);
                        self.fill_rect(
                            px,
                            py,
                            px.saturating_add(scale as i64 - 1),
                            py.saturating_add(scale as i64 - 1),
                            c,
                        );
                    }
                }
            }
            cx = cx.saturating_add((CELL_W * scale) as i64);
        }
    }

    /// Text rotated 90° counter-clockwise (reads bottom to top), its
    /// bounding box's top-left at (x, y).
    pub fn text_vertical(&mut self, x: i64, y: i64, s: &str, c: Rgb, scale: usize) {
        let n = s.chars().count();
        let len = (n * CELL_W * scale) as i64;
        for (k, ch) in s.chars().enumerate() {
            let (rows, shift) = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        // Unrotated (u, v) = (k·cell + col, row) → rotated (v, len − u).
                        let u = ((k * CELL_W + col) * scale) as i64;
                        let v = ((r + shift) * scale) as i64;
                        let px = x.saturating_add(v);
                        let py = y.saturating_add(len - u - scale as i64);
                        self.fill_rect(
                            px,
                            py,
                            px.saturating_add(scale as i64 - 1),
                            py.saturating_add(scale as i64 - 1),
                            c,
                        );
                    }
                }
            }
        }
    }

    /// Text centred horizontally on `cx`.
    pub fn text_centred(&mut self, cx: i64, y: i64, s: &str, c: Rgb, scale: usize) {
        self.text(cx.saturating_sub(text_width(s, scale) as i64 / 2), y, s, c, scale);
    }

    /// Fraction of pixels that differ from `bg`.
    pub fn ink_fraction(&self, bg: Rgb) -> f64 {
        let n = self.data.chunks_exact(3).filter(|p| *p != bg).count();
        n as f64 / (self.width * self.height).max(1) as f64
    }

    /// PNG bytes (8-bit RGB).
    pub fn png_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().map_err(|e| Error::msg(format!("PNG encoder: {e}")))?;
            w.write_image_data(&self.data).map_err(|e| Error::msg(format!("PNG encoder: {e}")))?;
        }
        Ok(out)
    }

    /// Write a PNG atomically (`path.tmp-<pid>`, then rename).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.png_bytes()?)
    }
}

/// Write bytes to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| Error::file(path, "not a file path"))?;
    let tmp = path.with_file_name(format!("{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

/// Width in pixels of `s` drawn at `scale`.
pub fn text_width(s: &str, scale: usize) -> usize {
    s.chars().count() * CELL_W * scale
}

/// Height in pixels of one text line at `scale`.
pub fn text_height(scale: usize) -> usize {
    CELL_H * scale
}

/// Liang–Barsky clip of a segment to [−1, w] × [−1, h] (a margin of one pixel).
fn clip_line(x0: f64, y0: f64, x1: f64, y1: f64, w: f64, h: f64) -> Option<(f64, f64, f64, f64)> {
    if ![x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
        return None;
    }
    let (dx, dy) = (x1 - x0, y1 - y0);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [(-dx, x0 + 1.0), (dx, w - x0), (-dy, y0 + 1.0), (dy, h - y0)] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let r = q / p;
            if p < 0.0 {
                t0 = t0.max(r);
            } else {
                t1 = t1.min(r);
            }
        }
    }
    (t0 <= t1).then_some((x0 + t0 * dx, y0 + t0 * dy, x0 + t1 * dx, y0 + t1 * dy))
}

/// Diverging blue–grey–red map of `t` ∈ [−1, 1] (values outside are clipped),
/// close to matplotlib's "coolwarm".
pub fn diverging(t: f64) -> Rgb {
    const STOPS: [(f64, Rgb); 5] = [
        (-1.0, [59, 76, 192]),
        (-0.5, [141, 176, 254]),
        (0.0, [210, 210, 210]),
        (0.5, [244, 154, 123]),
        (1.0, [180, 4, 38]),
    ];
    let t = if t.is_nan() { 0.0 } else { t.clamp(-1.0, 1.0) };
    for w in STOPS.windows(2) {
        let ((a, ca), (b, cb)) = (w[0], w[1]);
        if t <= b {
            let f = (t - a) / (b - a);
            let mix = |k: usize| (ca[k] as f64 + f * (cb[k] as f64 - ca[k] as f64)).round() as u8;
            return [mix(0), mix(1), mix(2)];
        }
    }
    STOPS[4].1
}

/// "Nice" tick positions (1, 2, 5 × 10ᵏ) covering [lo, hi], about `target` of them.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil();
    let last = (hi / step).floor();
    // Guards against ranges below the resolution of f64 (ticks would repeat).
    if !(first.is_finite() && last.is_finite()) || last - first > 1000.0 {
        return vec![];
    }
    (first as i64..=last as i64).map(|k| k as f64 * step).collect()
}

/// Label of a tick value with just enough decimals for the spacing `step`.
pub fn tick_label(v: f64, step: f64) -> String {
    let dec = if step > 0.0 { (-step.log10().floor()).max(0.0) as usize } else { 0 };
    let s = format!("{:.*}", dec.min(8), v);
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// Counts of `values` in `nbins` equal bins over [lo, hi); values outside go
/// to the end bins (so nothing vanishes from a histogram); NaNs are dropped.
pub fn histogram(values: &[f64], lo: f64, hi: f64, nbins: usize) -> Vec<usize> {
    let mut h = vec![0usize; nbins.max(1)];
    let n = h.len();
    for &v in values {
        if v.is_nan() || !(hi > lo) {
            continue;
        }
        let f = ((v - lo) / (hi - lo) * n as f64).floor();
        let i = if f < 0.0 { 0 } else { (f as usize).min(n - 1) };
        h[i] += 1;
    }
    h
}

/// A plot area: pixel rectangle [x0, x1] × [y0, y1] and data ranges.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Axes {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
    pub xr: (f64, f64),
    pub yr: (f64, f64),
}

impl Axes {
    /// Ranges with zero width are widened so the mapping stays finite.
    pub fn new(rect: (f64, f64, f64, f64), xr: (f64, f64), yr: (f64, f64)) -> Axes {
        let widen = |r: (f64, f64)| {
            if !(r.0.is_finite() && r.1.is_finite()) {
                (0.0, 1.0)
            } else if r.1 > r.0 {
                r
            } else {
                let d = if r.0 == 0.0 { 1.0 } else { r.0.abs() * 0.1 };
                (r.0 - d, r.1 + d)
            }
        };
        Axes { x0: rect.0, y0: rect.1, x1: rect.2, y1: rect.3, xr: widen(xr), yr: widen(yr) }
    }

    pub fn px(&self, x: f64) -> f64 {
        self.x0 + (x - self.xr.0) / (self.xr.1 - self.xr.0) * (self.x1 - self.x0)
    }

    pub fn py(&self, y: f64) -> f64 {
        self.y1 - (y - self.yr.0) / (self.yr.1 - self.yr.0) * (self.y1 - self.y0)
    }

    pub fn contains_px(&self, x: f64, y: f64) -> bool {
        x >= self.x0 && x <= self.x1 && y >= self.y0 && y <= self.y1
    }

    /// Frame, ticks with labels, axis labels and a title.
    pub fn draw_frame(&self, c: &mut Canvas, title: &str, xlabel: &str, ylabel: &str, scale: usize) {
        let (x0, y0, x1, y1) = (self.x0 as i64, self.y0 as i64, self.x1 as i64, self.y1 as i64);
        let th = text_height(scale) as i64;
        let xt =
            nice_ticks(self.xr.0, self.xr.1, ((self.x1 - self.x0) / (70.0 * scale as f64)).max(2.0) as usize);
        let step = if xt.len() > 1 { xt[1] - xt[0] } else { 1.0 };
        for &t in &xt {
            let x = self.px(t).round() as i64;
            c.line(x as f64, y1 as f64, x as f64, (y1 + 4) as f64, BLACK);
            c.text_centred(x, y1 + 6, &tick_label(t, step), BLACK, scale);
        }
        let yt =
            nice_ticks(self.yr.0, self.yr.1, ((self.y1 - self.y0) / (40.0 * scale as f64)).max(2.0) as usize);
        let step = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
        let mut max_w = 0;
        for &t in &yt {
            let y = self.py(t).round() as i64;
            c.line((x0 - 4) as f64, y as f64, x0 as f64, y as f64, BLACK);
            let l = tick_label(t, step);
            let w = text_width(&l, scale) as i64;
            max_w = max_w.max(w);
            c.text(x0 - 6 - w, y - th / 2 + scale as i64, &l, BLACK, scale);
        }
        c.rect(x0, y0, x1, y1, BLACK);
        c.text_centred((x0 + x1) / 2, y1 + 8 + th, xlabel, BLACK, scale);
        let lw = text_width(ylabel, scale) as i64;
        c.text_vertical(x0 - 12 - max_w - th, (y0 + y1) / 2 - lw / 2, ylabel, BLACK, scale);
        c.text_centred((x0 + x1) / 2, y0 - th - 4, title, BLACK, scale);
    }

    /// A line in data coordinates, clipped to the plot rectangle.
    pub fn line(&self, c: &mut Canvas, x0: f64, y0: f64, x1: f64, y1: f64, col: Rgb) {
        let (a, b, d, e) = (self.px(x0), self.py(y0), self.px(x1), self.py(y1));
        // Clip in the axes' own rectangle by shifting into its frame.
        let w = self.x1 - self.x0;
        let h = self.y1 - self.y0;
        if let Some((a, b, d, e)) = clip_line(
            a - self.x0 - 1.0,
            b - self.y0 - 1.0,
            d - self.x0 - 1.0,
            e - self.y0 - 1.0,
            w - 1.0,
            h - 1.0,
        ) {
            c.line(a + self.x0 + 1.0, b + self.y0 + 1.0, d + self.x0 + 1.0, e + self.y0 + 1.0, col);
        }
    }

    /// A dot at a data point, drawn only inside the rectangle.
    pub fn dot(&self, c: &mut Canvas, x: f64, y: f64, r: f64, col: Rgb) {
        let (px, py) = (self.px(x), self.py(y));
        if self.contains_px(px, py) {
            c.disc(px, py, r, col);
        }
    }

    /// Step outline of a histogram with bins over [lo, hi].
    pub fn step_histogram(&self, c: &mut Canvas, counts: &[usize], lo: f64, hi: f64, col: Rgb) {
        let n = counts.len();
        let bw = (hi - lo) / n as f64;
        let mut prev = 0.0;
        for (i, &k) in counts.iter().enumerate() {
            let xa = lo + i as f64 * bw;
            let y = k as f64;
            self.line(c, xa, prev, xa, y, col);
            self.line(c, xa, y, xa + bw, y, col);
            prev = y;
        }
        self.line(c, hi, prev, hi, 0.0, col);
    }

    /// Translucent filled histogram bars.
    pub fn filled_histogram(&self, c: &mut Canvas, counts: &[usize], lo: f64, hi: f64, col: Rgb, alpha: f64) {
        let bw = (hi - lo) / counts.len() as f64;
        for (i, &k) in counts.iter().enumerate() {
            if k == 0 {
                continue;
            }
            let xa = self.px(lo + i as f64 * bw).round() as i64;
            let xb = self.px(lo + (i + 1) as f64 * bw).round() as i64;
            let yt = self.py(k as f64).max(self.y0).round() as i64;
            let yb = self.y1 as i64 - 1;
            for y in yt..=yb {
                for x in xa.max(self.x0 as i64 + 1)..xb.min(self.x1 as i64) {
                    c.blend(x, y, col, alpha);
                }
            }
        }
    }
}

/// A vertical colour bar for the diverging map over [−vmax, vmax].
pub fn colorbar(c: &mut Canvas, x: i64, y0: i64, y1: i64, vmax: f64, label: &str, scale: usize) {
    let h = (y1 - y0).max(1);
    for y in y0..=y1 {
        let t = 1.0 - 2.0 * (y - y0) as f64 / h as f64;
        c.fill_rect(x, y, x + 14, y, diverging(t));
    }
    c.rect(x, y0, x + 14, y1, BLACK);
    let th = text_height(scale) as i64;
    for (t, v) in [(1.0, vmax), (0.0, 0.0), (-1.0, -vmax)] {
        let y = y0 + ((1.0 - t) / 2.0 * h as f64).round() as i64;
        c.line((x + 14) as f64, y as f64, (x + 18) as f64, y as f64, BLACK);
        let step = if vmax > 0.0 { vmax / 2.0 } else { 1.0 };
        c.text(x + 21, y - th / 2 + scale as i64, &tick_label(v, step), BLACK, scale);
    }
    c.text_centred(x + 7, y0 - th - 4, label, BLACK, scale);
}

/// A legend: colour swatches with labels, one per line, from (x, y).
pub fn legend(c: &mut Canvas, x: i64, y: i64, items: &[(Rgb, &str)], scale: usize) {
    let th = text_height(scale) as i64;
    for (k, (col, label)) in items.iter().enumerate() {
        let yy = y + k as i64 * (th + 4);
        c.fill_rect(x, yy + 2, x + 14, yy + th - 4, *col);
        c.text(x + 20, yy, label, BLACK, scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = nice_ticks(-0.13, 0.27, 4);
        assert_eq!(t.len(), 4);
        assert!((t[0] + 0.1).abs() < 1e-12 && (t[3] - 0.2).abs() < 1e-12);
        assert!(nice_ticks(1.0, 1.0, 4).is_empty());
        assert_eq!(tick_label(0.30000000000000004, 0.1), "0.3");
        assert_eq!(tick_label(-0.0, 0.1), "0.0");
        assert_eq!(tick_label(20.0, 10.0), "20");
    }

    #[test]
    fn histogram_keeps_outliers_in_end_bins() {
        let h = histogram(&[-5.0, 0.1, 0.5, 0.99, 1.0, 7.0, f64::NAN], 0.0, 1.0, 2);
        assert_eq!(h, vec![2, 4]);
    }

    #[test]
    fn colour_map_ends_and_middle() {
        assert_eq!(diverging(-3.0), [59, 76, 192]);
        assert_eq!(diverging(1.0), [180, 4, 38]);
        assert_eq!(diverging(0.0), [210, 210, 210]);
        assert_eq!(diverging(f64::NAN), [210, 210, 210]);
    }

    #[test]
    fn drawing_and_png_roundtrip() {
        let mut c = Canvas::new(60, 40, WHITE);
        c.line(-100.0, 20.0, 1e12, 20.0, BLACK); // clipped, not a hang
        for x in 0..60 {
            assert_eq!(c.get(x, 20), BLACK);
        }
        c.line(f64::NAN, 0.0, 3.0, 3.0, BLACK); // ignored
        c.text(2, 2, "Aψ", BLUE, 1);
        assert_eq!(c.get(2 + 1, 2), BLUE); // 'A' top row 0x0E: columns 1..3
        c.text_vertical(40, 2, "1", ORANGE, 1);
        assert!(c.ink_fraction(WHITE) > 0.02);
        let bytes = c.png_bytes().unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (60, 40));
        assert_eq!(&buf[..info.buffer_size()], &c.data[..]);
    }

    #[test]
    fn axes_map_y_up() {
        let a = Axes::new((10.0, 10.0, 110.0, 60.0), (0.0, 1.0), (0.0, 5.0));
        assert_eq!(a.px(0.5), 60.0);
        assert_eq!(a.py(0.0), 60.0);
        assert_eq!(a.py(5.0), 10.0);
        let z = Axes::new((0.0, 0.0, 1.0, 1.0), (2.0, 2.0), (f64::NAN, 1.0));
        assert!(z.px(2.0).is_finite() && z.py(0.5).is_finite());
    }
}
