//! Pixel masks that seed spots: DIALS' `dispersion` and `dispersion_extended` thresholds for
//! measured images, and the two model-image masks (`model > threshold`, local maxima) that
//! diffBragg uses for predicted spots. Labelling the masks into spots is [`super::label`].
//!
//! # Conventions
//! * One panel at a time. An image is a row-major `(slow, fast)` = `(y, x)` slice of f64 with
//!   `shape = [ny, nx]`; masks are `Vec<bool>` in the same layout. `trusted[k] == true` means
//!   the pixel may be used (DIALS mask convention, True = good).
//! * `kernel_size = [ky, kx]` are **half**-sizes; the window is (2ky+1)×(2kx+1), clipped at the
//!   image edges. **[TRAP]** DIALS' phil `kernel_size = a b` reaches the C++ as `int2(a, b)`,
//!   and the C++ uses element 0 along the slow axis (`kysize = kernel_size_[0]`), although the
//!   phil help speaks of "(2 * nx + 1, 2 * ny + 1)". We keep DIALS' behaviour: `[slow, fast]`
//!   in phil order.
//! * Pixel values are in whatever unit the image holds (ADU for raw data: integrate does not
//!   divide by `adu_per_photon`, predict-and-stage2.md §1.5). `gain` is the variance-to-mean
//!   ratio of a background pixel (var = gain·mean), i.e. image units per photon: for a
//!   Jungfrau image stored in keV it is about the photon energy in keV. Without it the
//!   dispersion test assumes var = mean in image units and finds far too much or too little.
//! * Phil note: the user's `sim_processing.phil` sets `global_threshold` twice (0, then 10);
//!   phil keeps the last definition, so its value is 10.
//!
//! # The algorithms (DIALS `algorithms/image/threshold/local.h`, dials c054ebea)
//! Local sums over the window use only trusted pixels whose value is below 2^24 (DIALS' `BIG`,
//! "about 16m counts"): n = count, s = Σv, s2 = Σv². They come from summed-area tables, so
//! the cost is O(pixels) whatever the kernel. The table arithmetic follows DIALS operation by
//! operation (row running sums added to the table row above; corner differences in the same
//! order), so for the same input the masks are bit-identical to DIALS'.
//!
//! `dispersion`: a pixel is strong when it is trusted, n ≥ min_local, s ≥ 0, v > global_threshold,
//! its window's index of dispersion (n·s2 − s²)/(s·(n−1)) exceeds 1 + σ_b·√(2/(n−1)) and
//! n·v − s > σ_s·√(g·s·n) (v above the local mean by σ_s local sigmas). Without a gain DIALS
//! evaluates the algebraically equal `n·s2 − s² − s(n−1) > s·σ_b·√(2(n−1))`; the gain branch
//! is `n·s2 − s² > g·s·(n−1 + σ_b·√(2(n−1)))`. The two round differently, so gain = None and
//! gain = 1 are kept distinct, as in DIALS.
//!
//! `dispersion_extended` (the DIALS default since 2019-08, dials 736fd8f5; also for
//! `dials.stills_process`):
//! 1. "Not background" D: untrusted pixels are D = true; trusted pixels with n ≥ min_local and
//!    s ≥ 0 take the dispersion test above (no σ_s or global test); others are D = false.
//! 2. d = Chebyshev distance to the nearest D = false pixel (DIALS' two-pass transform; with no
//!    such pixel every d is ny + nx + 1).
//! 3. Background B = trusted ∧ ¬(D ∧ d ≥ min(ky, kx)): everything but the core of the
//!    non-background regions (the region's rim counts as background again).
//! 4. n, s over B in a window grown by 2 on each half-size; mean = s/n if n ≥ 2 else 0.
//! 5. Strong = trusted ∧ s ≥ 0 ∧ ¬B ∧ v > global_threshold ∧ v ≥ mean + σ_s·√(g·mean).
//!    (min_local does not enter this step.)
//!
//! `min_local` ≤ 0 means "the whole kernel" ((2ky+1)(2kx+1)); otherwise 2 ≤ min_local ≤ kernel
//! (DIALS asserts; we return a parameter error).
//!
//! # Deliberate deviations
//! * A non-finite value in a trusted pixel is an error naming the pixel. In an untrusted pixel
//!   it is ignored. (DIALS adds `0 * v` for excluded pixels, so one NaN or ∞ anywhere, even
//!   masked, poisons every window below and to the right of it.)
//! * `global_threshold = Auto` (DIALS' elbow estimate) is not implemented: give a number.

use rayon::prelude::*;

use crate::error::{Error, Result};

/// DIALS' cut for values that enter the local sums ("about 16m counts").
pub const BIG: f64 = (1u32 << 24) as f64;

/// Largest kernel half-size accepted (far beyond any detector; keeps index arithmetic exact).
pub const MAX_KERNEL_HALF: usize = 1 << 20;

/// Which DIALS threshold algorithm to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThresholdAlgorithm {
    Dispersion,
    DispersionExtended,
}

impl ThresholdAlgorithm {
    /// The phil name (`spotfinder.threshold.algorithm`).
    pub fn name(self) -> &'static str {
        match self {
            ThresholdAlgorithm::Dispersion => "dispersion",
            ThresholdAlgorithm::DispersionExtended => "dispersion_extended",
        }
    }

    pub fn from_name(name: &str) -> Result<ThresholdAlgorithm> {
        match name {
            "dispersion" => Ok(ThresholdAlgorithm::Dispersion),
            "dispersion_extended" => Ok(ThresholdAlgorithm::DispersionExtended),
            other => Err(Error::param(
                "spotfinder.threshold.algorithm",
                format!("`{other}` is not supported (use dispersion or dispersion_extended)"),
            )),
        }
    }
}

/// `spotfinder.threshold.*` parameters. [`Default`] gives DIALS' defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct DispersionParams {
    pub algorithm: ThresholdAlgorithm,
    /// `dispersion.gain`: a uniform gain; `None` selects DIALS' no-gain formulas.
    pub gain: Option<f64>,
    /// `dispersion.kernel_size`: half-sizes `[slow, fast]` (phil order, see module doc).
    pub kernel_size: [usize; 2],
    /// `dispersion.sigma_background` (σ_b).
    pub sigma_background: f64,
    /// `dispersion.sigma_strong` (σ_s).
    pub sigma_strong: f64,
    /// `dispersion.min_local`: ≤ 0 for the whole kernel, else 2..=kernel pixels.
    pub min_local: i64,
    /// `dispersion.global_threshold` (≥ 0; strict `v > threshold`).
    pub global_threshold: f64,
}

impl Default for DispersionParams {
    fn default() -> Self {
        DispersionParams {
            algorithm: ThresholdAlgorithm::DispersionExtended,
            gain: None,
            kernel_size: [3, 3],
            sigma_background: 6.0,
            sigma_strong: 3.0,
            min_local: 2,
            global_threshold: 0.0,
        }
    }
}

const P: &str = "spotfinder.threshold.dispersion";

impl DispersionParams {
    /// Check every parameter (DIALS' constructor assertions, as errors that name the parameter).
    pub fn validate(&self) -> Result<()> {
        let [ky, kx] = self.kernel_size;
        if ky == 0 || kx == 0 || ky > MAX_KERNEL_HALF || kx > MAX_KERNEL_HALF {
            return Err(Error::param(
                format!("{P}.kernel_size"),
                format!("half-sizes must be 1..={MAX_KERNEL_HALF}, got {ky} {kx}"),
            ));
        }
        for (name, v) in [("sigma_background", self.sigma_background), ("sigma_strong", self.sigma_strong)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::param(
                    format!("{P}.{name}"),
                    format!("must be a finite number ≥ 0, got {v}"),
                ));
            }
        }
        if !(self.global_threshold.is_finite() && self.global_threshold >= 0.0) {
            return Err(Error::param(
                format!("{P}.global_threshold"),
                format!("must be a finite number ≥ 0, got {}", self.global_threshold),
            ));
        }
        if let Some(g) = self.gain {
            if !(g.is_finite() && g > 0.0) {
                return Err(Error::param(
                    format!("{P}.gain"),
                    format!("must be a finite number > 0, got {g}"),
                ));
            }
        }
        let kernel = self.kernel_pixels();
        if self.min_local > 0 && (self.min_local < 2 || self.min_local as u64 > kernel) {
            return Err(Error::param(
                format!("{P}.min_local"),
                format!(
                    "must be ≤ 0 (whole kernel) or between 2 and the {kernel} kernel pixels, got {}",
                    self.min_local
                ),
            ));
        }
        Ok(())
    }

    /// Pixels in the (2ky+1)×(2kx+1) kernel.
    pub fn kernel_pixels(&self) -> u64 {
        let [ky, kx] = self.kernel_size;
        (2 * ky as u64 + 1) * (2 * kx as u64 + 1)
    }

    /// The effective minimum count of valid pixels in a window.
    pub fn min_count(&self) -> f64 {
        if self.min_local <= 0 {
            self.kernel_pixels() as f64
        } else {
            self.min_local as f64
        }
    }
}

/// Gain per pixel as the threshold sees it.
#[derive(Clone, Copy)]
enum Gain<'a> {
    None,
    Uniform(f64),
    Map(&'a [f64]),
}

impl Gain<'_> {
    #[inline]
    fn at(&self, k: usize) -> Option<f64> {
        match self {
            Gain::None => None,
            Gain::Uniform(g) => Some(*g),
            Gain::Map(m) => Some(m[k]),
        }
    }
}

/// Strong-pixel mask of one panel with the DIALS threshold in `params`.
pub fn threshold_panel(
    image: &[f64],
    shape: [usize; 2],
    trusted: &[bool],
    params: &DispersionParams,
) -> Result<Vec<bool>> {
    let gain = params.gain.map_or(Gain::None, Gain::Uniform);
    run(image, shape, trusted, gain, params)
}

/// As [`threshold_panel`] with a per-pixel gain map (DIALS' `threshold_w_gain`). `params.gain`
/// must then be `None` (one gain source, not two silently multiplied).
pub fn threshold_panel_with_gain_map(
    image: &[f64],
    shape: [usize; 2],
    trusted: &[bool],
    gain_map: &[f64],
    params: &DispersionParams,
) -> Result<Vec<bool>> {
    if params.gain.is_some() {
        return Err(Error::param(format!("{P}.gain"), "cannot be combined with a per-pixel gain map"));
    }
    check_shape(shape, gain_map.len(), "gain map")?;
    if let Some((k, g)) = gain_map.iter().enumerate().find(|(_, g)| !(g.is_finite() && **g > 0.0)) {
        let [_, nx] = shape;
        return Err(Error::msg(format!(
            "gain map: pixel (slow {}, fast {}) has gain {g}; gains must be finite and > 0",
            k / nx,
            k % nx
        )));
    }
    run(image, shape, trusted, Gain::Map(gain_map), params)
}

fn check_shape(shape: [usize; 2], len: usize, what: &str) -> Result<()> {
    let [ny, nx] = shape;
    let n = ny.checked_mul(nx).filter(|&n| n > 0 && n <= (i32::MAX as usize) / 2);
    match n {
        None => {
            Err(Error::msg(format!("{what}: image shape {ny}×{nx} must be non-empty and below 2^30 pixels")))
        }
        Some(n) if n != len => {
            Err(Error::msg(format!("{what} has {len} values, image shape {ny}×{nx} needs {n}")))
        }
        Some(_) => Ok(()),
    }
}

/// Validate an image and its trusted mask (shared by the thresholds and the labeller).
pub(crate) fn check_image(image: &[f64], shape: [usize; 2], trusted: &[bool]) -> Result<()> {
    check_shape(shape, image.len(), "image")?;
    check_shape(shape, trusted.len(), "trusted mask")?;
    if let Some(k) = (0..image.len()).find(|&k| trusted[k] && !image[k].is_finite()) {
        return Err(Error::msg(format!(
            "image pixel (slow {}, fast {}) is trusted but holds {}; mask it or fix the image",
            k / shape[1],
            k % shape[1],
            image[k]
        )));
    }
    Ok(())
}

fn run(
    image: &[f64],
    shape: [usize; 2],
    trusted: &[bool],
    gain: Gain,
    params: &DispersionParams,
) -> Result<Vec<bool>> {
    params.validate()?;
    check_image(image, shape, trusted)?;
    Ok(match params.algorithm {
        ThresholdAlgorithm::Dispersion => dispersion(image, shape, trusted, gain, params),
        ThresholdAlgorithm::DispersionExtended => dispersion_extended(image, shape, trusted, gain, params),
    })
}

/// Summed-area tables of count, sum and sum of squares (DIALS' `compute_sat`).
struct Sat {
    nx: usize,
    ny: usize,
    m: Vec<i32>,
    x: Vec<f64>,
    y: Vec<f64>,
}

impl Sat {
    /// Tables over the pixels with `include[k]` and a value below [`BIG`]. Row running sums
    /// are built in parallel, then each row adds the finished row above (DIALS computes
    /// `above + running`; IEEE addition is commutative, so the sums are DIALS' bit for bit).
    fn build(image: &[f64], include: &[bool], shape: [usize; 2], squares: bool) -> Sat {
        let [ny, nx] = shape;
        let n = nx * ny;
        let mut m = vec![0i32; n];
        let mut x = vec![0f64; n];
        let mut y = if squares { vec![0f64; n] } else { Vec::new() };
        let rows = m.par_chunks_mut(nx).zip(x.par_chunks_mut(nx)).enumerate();
        if squares {
            rows.zip(y.par_chunks_mut(nx)).for_each(|((j, (mr, xr)), yr)| {
                let (mut cm, mut cx, mut cy) = (0i32, 0f64, 0f64);
                for i in 0..nx {
                    let k = j * nx + i;
                    let v = image[k];
                    if include[k] && v < BIG {
                        cm += 1;
                        cx += v;
                        cy += v * v;
                    }
                    mr[i] = cm;
                    xr[i] = cx;
                    yr[i] = cy;
                }
            });
        } else {
            rows.for_each(|(j, (mr, xr))| {
                let (mut cm, mut cx) = (0i32, 0f64);
                for i in 0..nx {
                    let k = j * nx + i;
                    let v = image[k];
                    if include[k] && v < BIG {
                        cm += 1;
                        cx += v;
                    }
                    mr[i] = cm;
                    xr[i] = cx;
                }
            });
        }
        for j in 1..ny {
            let (done, rest) = m.split_at_mut(j * nx);
            rest[..nx].iter_mut().zip(&done[(j - 1) * nx..]).for_each(|(r, a)| *r += *a);
            let (done, rest) = x.split_at_mut(j * nx);
            rest[..nx].iter_mut().zip(&done[(j - 1) * nx..]).for_each(|(r, a)| *r += *a);
            if squares {
                let (done, rest) = y.split_at_mut(j * nx);
                rest[..nx].iter_mut().zip(&done[(j - 1) * nx..]).for_each(|(r, a)| *r += *a);
            }
        }
        Sat { nx, ny, m, x, y }
    }

    /// (n, s, s2) over the window of half-sizes (ky, kx) around (j, i), clipped to the image,
    /// with DIALS' corner arithmetic. `s2` is 0 for tables built without squares.
    #[inline]
    fn window(&self, j: usize, i: usize, ky: usize, kx: usize) -> (f64, f64, f64) {
        let nx = self.nx;
        let i0 = i as i64 - kx as i64 - 1;
        let j0 = j as i64 - ky as i64 - 1;
        let i1 = (i + kx).min(nx - 1);
        let j1 = (j + ky).min(self.ny - 1);
        let sq = !self.y.is_empty();
        let (mut m, mut x, mut y) = (0f64, 0f64, 0f64);
        if i0 >= 0 && j0 >= 0 {
            let (i0, j0) = (i0 as usize, j0 as usize);
            let (k00, k10, k01) = (j0 * nx + i0, j1 * nx + i0, j0 * nx + i1);
            m += (self.m[k00] as i64 - (self.m[k10] as i64 + self.m[k01] as i64)) as f64;
            x += self.x[k00] - (self.x[k10] + self.x[k01]);
            if sq {
                y += self.y[k00] - (self.y[k10] + self.y[k01]);
            }
        } else if i0 >= 0 {
            let k10 = j1 * nx + i0 as usize;
            m -= self.m[k10] as f64;
            x -= self.x[k10];
            if sq {
                y -= self.y[k10];
            }
        } else if j0 >= 0 {
            let k01 = j0 as usize * nx + i1;
            m -= self.m[k01] as f64;
            x -= self.x[k01];
            if sq {
                y -= self.y[k01];
            }
        }
        let k11 = j1 * nx + i1;
        m += self.m[k11] as f64;
        x += self.x[k11];
        if sq {
            y += self.y[k11];
        }
        (m, x, y)
    }
}

/// DIALS' index-of-dispersion test on one window (the part shared by both algorithms).
#[inline]
fn dispersed(m: f64, x: f64, y: f64, g: Option<f64>, nsig_b: f64) -> bool {
    match g {
        None => {
            let a = m * y - x * x - x * (m - 1.0);
            let c = x * nsig_b * (2.0 * (m - 1.0)).sqrt();
            a > c
        }
        Some(g) => {
            let a = m * y - x * x;
            let c = g * x * (m - 1.0 + nsig_b * (2.0 * (m - 1.0)).sqrt());
            a > c
        }
    }
}

fn dispersion(
    image: &[f64],
    shape: [usize; 2],
    trusted: &[bool],
    gain: Gain,
    p: &DispersionParams,
) -> Vec<bool> {
    let [ny, nx] = shape;
    let [ky, kx] = p.kernel_size;
    let sat = Sat::build(image, trusted, shape, true);
    let min_count = p.min_count();
    let (nsig_b, nsig_s, thr) = (p.sigma_background, p.sigma_strong, p.global_threshold);
    let mut dst = vec![false; ny * nx];
    dst.par_chunks_mut(nx).enumerate().for_each(|(j, row)| {
        for (i, out) in row.iter_mut().enumerate() {
            let k = j * nx + i;
            let v = image[k];
            if !trusted[k] || v <= thr {
                continue;
            }
            let (m, x, y) = sat.window(j, i, ky, kx);
            if m >= min_count && x >= 0.0 {
                let g = gain.at(k);
                let b = m * v - x;
                let d = match g {
                    None => nsig_s * (x * m).sqrt(),
                    Some(g) => nsig_s * (g * x * m).sqrt(),
                };
                *out = dispersed(m, x, y, g, nsig_b) && b > d;
            }
        }
    });
    dst
}

fn dispersion_extended(
    image: &[f64],
    shape: [usize; 2],
    trusted: &[bool],
    gain: Gain,
    p: &DispersionParams,
) -> Vec<bool> {
    let [ny, nx] = shape;
    let [ky, kx] = p.kernel_size;
    let min_count = p.min_count();
    let nsig_b = p.sigma_background;

    // 1. Not-background mask D.
    let sat = Sat::build(image, trusted, shape, true);
    let mut not_bg = vec![false; ny * nx];
    not_bg.par_chunks_mut(nx).enumerate().for_each(|(j, row)| {
        for (i, out) in row.iter_mut().enumerate() {
            let k = j * nx + i;
            if !trusted[k] {
                *out = true;
                continue;
            }
            let (m, x, y) = sat.window(j, i, ky, kx);
            if m >= min_count && x >= 0.0 {
                *out = dispersed(m, x, y, gain.at(k), nsig_b);
            }
        }
    });
    drop(sat);

    // 2.–3. Erode: background = trusted and not in the core of a non-background region.
    let dist = chebyshev_distance_to_false(&not_bg, shape);
    let erosion = ky.min(kx) as u32;
    let background: Vec<bool> =
        (0..ny * nx).map(|k| trusted[k] && !(not_bg[k] && dist[k] >= erosion)).collect();
    drop(dist);
    drop(not_bg);

    // 4.–5. Local mean over the background in the grown window; final test.
    let sat = Sat::build(image, &background, shape, false);
    let (nsig_s, thr) = (p.sigma_strong, p.global_threshold);
    let mut dst = vec![false; ny * nx];
    dst.par_chunks_mut(nx).enumerate().for_each(|(j, row)| {
        for (i, out) in row.iter_mut().enumerate() {
            let k = j * nx + i;
            let v = image[k];
            // Cheap rejections first; the result is the same conjunction DIALS evaluates.
            if !trusted[k] || background[k] || v <= thr {
                continue;
            }
            let (m, x, _) = sat.window(j, i, ky + 2, kx + 2);
            if x >= 0.0 {
                let mean = if m >= 2.0 { x / m } else { 0.0 };
                let spread = match gain.at(k) {
                    None => mean.sqrt(),
                    Some(g) => (g * mean).sqrt(),
                };
                *out = v >= mean + nsig_s * spread;
            }
        }
    });
    dst
}

/// Chebyshev (chessboard) distance from each pixel to the nearest pixel where `mask` is
/// false, by DIALS' two-pass transform (`image/filter/distance.h`). Without any false pixel
/// every distance is ny + nx + 1, as in DIALS.
pub fn chebyshev_distance_to_false(mask: &[bool], shape: [usize; 2]) -> Vec<u32> {
    let [h, w] = shape;
    assert_eq!(mask.len(), h * w, "mask size");
    let maxd = (h + w) as u32;
    let mut d = vec![0u32; h * w];
    // Forward pass: N, W, NW, NE.
    for j in 0..h {
        for i in 0..w {
            let k = j * w + i;
            if !mask[k] {
                d[k] = 0;
                continue;
            }
            let n = if j > 0 { d[k - w] } else { maxd };
            let wv = if i > 0 { d[k - 1] } else { maxd };
            let nw = if j > 0 && i > 0 { d[k - w - 1] } else { maxd };
            let ne = if j > 0 && i + 1 < w { d[k - w + 1] } else { maxd };
            d[k] = 1 + n.min(wv).min(nw.min(ne));
        }
    }
    // Backward pass: S, E, SE, SW.
    for j in (0..h).rev() {
        for i in (0..w).rev() {
            let k = j * w + i;
            let s = if j + 1 < h { d[k + w] } else { maxd };
            let e = if i + 1 < w { d[k + 1] } else { maxd };
            let sw = if j + 1 < h && i > 0 { d[k + w - 1] } else { maxd };
            let se = if j + 1 < h && i + 1 < w { d[k + w + 1] } else { maxd };
            let other = s.min(e).min(se.min(sw));
            if other < d[k] {
                d[k] = 1 + other;
            }
        }
    }
    d
}

/// Predicted-spot mask: `model > threshold` (diffBragg `refls_from_sims`; `threshold` in model
/// photons per pixel). Non-finite model values are an error naming the pixel.
pub fn above_threshold(model: &[f64], shape: [usize; 2], threshold: f64) -> Result<Vec<bool>> {
    check_model(model, shape, threshold)?;
    Ok(model.iter().map(|&v| v > threshold).collect())
}

/// Predicted-spot mask by local maxima (diffBragg `utils.detect_peaks`, used with
/// `predictions.use_peak_detection`). With v' = (v < threshold ? 0 : v), a pixel is marked
/// when v' equals the maximum of v' over its 3×3 neighbourhood (in-bounds part), XOR it lies
/// in the interior of the v' = 0 region (it and all in-bounds neighbours zero; scipy's
/// `binary_erosion(border_value=1)` treats outside as zero too). So plateaus mark every pixel
/// of the plateau (they then label as one spot), and a 0 pixel bordering negative values is
/// marked, exactly as in the reference. Note `threshold` is inclusive here and strict in
/// [`above_threshold`].
pub fn local_maxima(model: &[f64], shape: [usize; 2], threshold: f64) -> Result<Vec<bool>> {
    check_model(model, shape, threshold)?;
    let [h, w] = shape;
    let v: Vec<f64> = model.iter().map(|&x| if x < threshold { 0.0 } else { x }).collect();
    let mut out = vec![false; h * w];
    out.par_chunks_mut(w).enumerate().for_each(|(j, row)| {
        for (i, o) in row.iter_mut().enumerate() {
            let c = v[j * w + i];
            let mut max = c;
            let mut all_zero = true;
            for jj in j.saturating_sub(1)..=(j + 1).min(h - 1) {
                for ii in i.saturating_sub(1)..=(i + 1).min(w - 1) {
                    let q = v[jj * w + ii];
                    max = max.max(q);
                    all_zero &= q == 0.0;
                }
            }
            *o = (c == max) ^ all_zero;
        }
    });
    Ok(out)
}

fn check_model(model: &[f64], shape: [usize; 2], threshold: f64) -> Result<()> {
    check_shape(shape, model.len(), "model image")?;
    if !threshold.is_finite() {
        return Err(Error::param("predictions.threshold", format!("must be finite, got {threshold}")));
    }
    if let Some(k) = model.iter().position(|v| !v.is_finite()) {
        return Err(Error::msg(format!(
            "model image pixel (slow {}, fast {}) holds {}",
            k / shape[1],
            k % shape[1],
            model[k]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_validation_names_parameter() {
        assert!(DispersionParams::default().validate().is_ok());
        let mut p = DispersionParams { min_local: 1, ..Default::default() };
        assert!(p.validate().unwrap_err().to_string().contains("min_local"));
        p.min_local = 49;
        assert!(p.validate().is_ok());
        p.min_local = 50;
        assert!(p.validate().is_err());
        p.min_local = -3;
        assert_eq!(p.min_count(), 49.0);
        let p = DispersionParams { kernel_size: [0, 3], ..Default::default() };
        assert!(p.validate().unwrap_err().to_string().contains("kernel_size"));
        let p = DispersionParams { gain: Some(0.0), ..Default::default() };
        assert!(p.validate().unwrap_err().to_string().contains("gain"));
        let p = DispersionParams { global_threshold: -1.0, ..Default::default() };
        assert!(p.validate().unwrap_err().to_string().contains("global_threshold"));
        assert!(ThresholdAlgorithm::from_name("radial_profile").is_err());
        assert_eq!(ThresholdAlgorithm::from_name("dispersion").unwrap(), ThresholdAlgorithm::Dispersion);
    }

    #[test]
    fn bad_images_are_errors() {
        let p = DispersionParams::default();
        assert!(threshold_panel(&[1.0; 6], [2, 3], &[true; 5], &p).is_err());
        assert!(threshold_panel(&[1.0; 6], [2, 4], &[true; 6], &p).is_err());
        assert!(threshold_panel(&[], [0, 0], &[], &p).is_err());
        let mut img = vec![1.0; 6];
        img[4] = f64::NAN;
        let e = threshold_panel(&img, [2, 3], &[true; 6], &p).unwrap_err().to_string();
        assert!(e.contains("slow 1, fast 1"), "{e}");
        let mut trusted = vec![true; 6];
        trusted[4] = false;
        assert!(threshold_panel(&img, [2, 3], &trusted, &p).is_ok());
        let pg = DispersionParams { gain: Some(2.0), ..Default::default() };
        assert!(threshold_panel_with_gain_map(&[1.0; 6], [2, 3], &[true; 6], &[1.0; 6], &pg).is_err());
        assert!(threshold_panel_with_gain_map(
            &[1.0; 6],
            [2, 3],
            &[true; 6],
            &[1.0, -1.0, 1.0, 1.0, 1.0, 1.0],
            &p
        )
        .is_err());
    }

    #[test]
    fn chebyshev_small_cases() {
        // One background pixel in the middle of a 3×5 image.
        let mut m = vec![true; 15];
        m[7] = false;
        let d = chebyshev_distance_to_false(&m, [3, 5]);
        assert_eq!(d, vec![2, 1, 1, 1, 2, 2, 1, 0, 1, 2, 2, 1, 1, 1, 2]);
        // No background at all: ny + nx + 1 everywhere.
        let d = chebyshev_distance_to_false(&[true; 6], [2, 3]);
        assert!(d.iter().all(|&v| v == 6));
    }

    #[test]
    fn local_maxima_reference_cases() {
        // 1×5 row: a peak, a plateau and zeros.
        let m = local_maxima(&[0.0, 3.0, 1.0, 2.0, 2.0], [1, 5], 0.5).unwrap();
        assert_eq!(m, vec![false, true, false, true, true]);
        // Below threshold → zero; interior zeros are not peaks.
        let m = local_maxima(&[0.2, 0.0, 0.0, 0.0], [2, 2], 0.5).unwrap();
        assert_eq!(m, vec![false; 4]);
        assert!(local_maxima(&[f64::NAN], [1, 1], 0.0).is_err());
        assert_eq!(above_threshold(&[0.5, 1.0, 1.5], [1, 3], 1.0).unwrap(), vec![false, false, true]);
    }
}
