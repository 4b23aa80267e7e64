//! Connected regions of a pixel mask → spots (bbox, pixels, centroid, summed intensity) →
//! DIALS strong-spot reflection rows.
//!
//! # Conventions
//! * Images and masks are row-major `(slow, fast)` = `(y, x)` slices, `shape = [ny, nx]`.
//! * **Pixel positions use the pixel-corner origin on both sides**: pixel (y, x) spans
//!   [x, x+1) × [y, y+1), its centre is (x + 0.5, y + 0.5) (DIALS, `conventions`). Observed
//!   spots (from data) and predicted spots (from model images) go through the same code and get
//!   the same convention. **[TRAP T1.3]** diffBragg's integrate shifts the *observed* centroids
//!   by −0.5 px and not the predicted ones; we shift neither.
//! * One still image is one frame: `frame` f gives bbox z = [f, f+1) and centroid z = f + 0.5
//!   (stills use f = 0; SSX stills imported as sequences use image number − 1).
//!
//! # What matches DIALS (dials c054ebea), and how
//! * Connectivity: 4-neighbour (edges to x+1 and y+1 only: `PixelListLabeller::labels_2d`).
//! * Spot order: panel, then the raster position (y, x) of each region's first pixel (boost's
//!   `connected_components` numbers components in order of their lowest vertex).
//! * Size filter: min_spot_size ≤ n ≤ max_spot_size, applied before anything else
//!   (`PixelListShoeboxCreator`).
//! * Centroid (`Shoebox::centroid_valid` → `CentroidPoints`): weights = pixel values,
//!   coordinates = pixel centres; position = Σw·c / Σw; unbiased variance
//!   V = Σw(c−m)² · S / (S² − Σw²) with S = Σw; `xyzobs.px.variance` = V/S + 1/12 (DIALS stores the
//!   squared standard error plus the 1/12 of a uniform pixel, not V). Special cases as DIALS:
//!   S² ≤ Σw² (e.g. one pixel) → variance (1/12, 1/12, 1/12); S ≤ 0 → position = bbox centre and
//!   variance (0, 0, 0). z of a one-frame bbox is z0 + 0.5.
//! * `intensity.sum.value` = Σv (the shoebox background is zero), `.variance` = |Σv|;
//!   `n_signal` = pixel count; `flags` = strong.
//! * Optional peak–centroid filter (`spotfinder.filter.max_separation`, DIALS find_spots default
//!   2 px; diffBragg integrate runs with no filter): the peak is the first maximum of the
//!   shoebox data in C order, where non-spot pixels of the bbox hold 0.
//!
//! DIALS sums in `float` (its shoebox type); we accumulate in f64 from the f64 pixel values, so
//! centroids and sums agree with DIALS' to f32 rounding (≈1e-7 relative), not bit for bit.
//! Shoeboxes we write hold f32 data like DIALS' (mask Valid|Foreground = 5 on spot pixels,
//! 0 elsewhere in the bbox, zero background), with int32 masks so any DIALS can read them.

use crate::error::{Error, Result};
use crate::reflections::{flags, mask_code, ReflectionTable, Shoebox, ShoeboxData, ShoeboxMask};

use super::spotfinder::{self, DispersionParams};

/// Region filters. [`Default`] = what diffBragg integrate applies to model spots
/// (min 1, max 1000, no peak–centroid filter).
#[derive(Clone, Debug, PartialEq)]
pub struct LabelParams {
    /// `spotfinder.filter.min_spot_size` (pixels, ≥ 1).
    pub min_spot_size: usize,
    /// `spotfinder.filter.max_spot_size` (pixels, ≥ min).
    pub max_spot_size: usize,
    /// `spotfinder.filter.max_separation` (pixels): drop spots whose peak pixel centre is
    /// farther than this from the centroid. `None` = no filter.
    pub max_separation: Option<f64>,
}

impl Default for LabelParams {
    fn default() -> Self {
        LabelParams { min_spot_size: 1, max_spot_size: 1000, max_separation: None }
    }
}

impl LabelParams {
    /// DIALS `dials.find_spots` filters (min_spot_size as given, max 1000, max_separation 2).
    pub fn dials_find_spots(min_spot_size: usize) -> LabelParams {
        LabelParams { min_spot_size, max_spot_size: 1000, max_separation: Some(2.0) }
    }

    pub fn validate(&self) -> Result<()> {
        if self.min_spot_size == 0 {
            return Err(Error::param("spotfinder.filter.min_spot_size", "must be ≥ 1"));
        }
        if self.max_spot_size < self.min_spot_size {
            return Err(Error::param(
                "spotfinder.filter.max_spot_size",
                format!("{} is below min_spot_size {}", self.max_spot_size, self.min_spot_size),
            ));
        }
        if let Some(d) = self.max_separation {
            if !(d.is_finite() && d >= 0.0) {
                return Err(Error::param(
                    "spotfinder.filter.max_separation",
                    format!("must be ≥ 0, got {d}"),
                ));
            }
        }
        Ok(())
    }
}

/// One pixel of a spot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpotPixel {
    pub y: u32,
    pub x: u32,
    pub value: f64,
}

/// A weighted centroid in pixels (fast, slow, frame), corner origin.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Centroid {
    /// `xyzobs.px.value`.
    pub position: [f64; 3],
    /// Unbiased weighted variance of the pixel positions (spot width², px²).
    pub variance: [f64; 3],
    /// `xyzobs.px.variance`: variance / S + 1/12 (squared standard error of the position).
    pub std_err_sq: [f64; 3],
}

/// One connected region.
#[derive(Clone, Debug, PartialEq)]
pub struct Spot {
    pub panel: usize,
    /// (x0, x1, y0, y1, z0, z1), half-open.
    pub bbox: [i32; 6],
    /// Pixels in raster order.
    pub pixels: Vec<SpotPixel>,
    pub centroid: Centroid,
    /// Σ value (`intensity.sum.value`).
    pub intensity: f64,
    /// Centre of the peak pixel (DIALS `peak_coordinates`).
    pub peak: [f64; 3],
}

impl Spot {
    pub fn n_pixels(&self) -> usize {
        self.pixels.len()
    }
}

/// Label the true pixels of `mask` into 4-connected spots of one panel, filter them and
/// compute centroids. Values of masked-in pixels must be finite.
pub fn label_panel(
    values: &[f64],
    mask: &[bool],
    shape: [usize; 2],
    panel: usize,
    frame: i32,
    params: &LabelParams,
) -> Result<Vec<Spot>> {
    params.validate()?;
    // Masked-in pixels must be finite; elsewhere anything goes.
    spotfinder::check_image(values, shape, mask)?;
    if frame == i32::MAX {
        return Err(Error::msg("frame number i32::MAX leaves no room for the bbox end"));
    }
    let [_, nx] = shape;
    let pix: Vec<usize> = (0..mask.len()).filter(|&k| mask[k]).collect();
    let labels = label_4_connected(&pix, shape);
    let nlab = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut groups: Vec<Vec<SpotPixel>> = vec![Vec::new(); nlab];
    for (&k, &l) in pix.iter().zip(&labels) {
        groups[l].push(SpotPixel { y: (k / nx) as u32, x: (k % nx) as u32, value: values[k] });
    }
    let mut spots = Vec::new();
    for pixels in groups {
        let n = pixels.len();
        if n < params.min_spot_size || n > params.max_spot_size {
            continue;
        }
        let spot = make_spot(pixels, panel, frame);
        if let Some(maxd) = params.max_separation {
            let d2: f64 = (0..3).map(|a| (spot.peak[a] - spot.centroid.position[a]).powi(2)).sum();
            if d2.sqrt() > maxd {
                continue;
            }
        }
        spots.push(spot);
    }
    Ok(spots)
}

/// Component label of each listed pixel (`pix`: linear indices, increasing). Labels are
/// numbered in order of each component's first pixel.
fn label_4_connected(pix: &[usize], shape: [usize; 2]) -> Vec<usize> {
    let nx = shape[1];
    let n = pix.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut a: usize) -> usize {
        while parent[a] != a {
            parent[a] = parent[parent[a]];
            a = parent[a];
        }
        a
    }
    fn union(parent: &mut [usize], a: usize, b: usize) {
        let (ra, rb) = (find(parent, a), find(parent, b));
        // Keep the smaller index as the root, so a root is its component's first pixel.
        if ra < rb {
            parent[rb] = ra;
        } else if rb < ra {
            parent[ra] = rb;
        }
    }
    // `up` walks the list in step, pointing at the first listed pixel ≥ k − nx.
    let mut up = 0usize;
    for a in 0..n {
        let k = pix[a];
        if a > 0 && k % nx != 0 && pix[a - 1] == k - 1 {
            union(&mut parent, a, a - 1);
        }
        if k >= nx {
            while pix[up] < k - nx {
                up += 1;
            }
            if pix[up] == k - nx {
                union(&mut parent, a, up);
            }
        }
    }
    let mut label = vec![usize::MAX; n];
    let mut next = 0;
    let mut out = vec![0usize; n];
    for (a, o) in out.iter_mut().enumerate() {
        let r = find(&mut parent, a);
        if label[r] == usize::MAX {
            label[r] = next;
            next += 1;
        }
        *o = label[r];
    }
    out
}

fn make_spot(pixels: Vec<SpotPixel>, panel: usize, frame: i32) -> Spot {
    let x0 = pixels.iter().map(|p| p.x).min().unwrap_or(0);
    let x1 = pixels.iter().map(|p| p.x + 1).max().unwrap_or(0);
    let y0 = pixels.iter().map(|p| p.y).min().unwrap_or(0);
    let y1 = pixels.iter().map(|p| p.y + 1).max().unwrap_or(0);
    let bbox = [x0 as i32, x1 as i32, y0 as i32, y1 as i32, frame, frame + 1];
    let centroid = centroid_of(&pixels, bbox);
    let intensity = pixels.iter().map(|p| p.value).sum();
    let peak = peak_of(&pixels, bbox);
    Spot { panel, bbox, pixels, centroid, intensity, peak }
}

/// DIALS' centroid of the spot pixels (see the module doc), in bbox-local coordinates plus the
/// bbox offset, as DIALS computes it.
pub fn centroid_of(pixels: &[SpotPixel], bbox: [i32; 6]) -> Centroid {
    let [x0, x1, y0, y1, z0, z1] = bbox.map(f64::from);
    let s: f64 = pixels.iter().map(|p| p.value).sum();
    if pixels.is_empty() || s.is_nan() || s <= 0.0 {
        return Centroid {
            position: [(x1 + x0) / 2.0, (y1 + y0) / 2.0, (z1 + z0) / 2.0],
            variance: [0.0; 3],
            std_err_sq: [0.0; 3],
        };
    }
    let local = |p: &SpotPixel| [p.x as f64 - x0 + 0.5, p.y as f64 - y0 + 0.5, 0.5];
    let s2: f64 = pixels.iter().map(|p| p.value * p.value).sum();
    let mut sc = [0.0; 3];
    for p in pixels {
        let c = local(p);
        (0..3).for_each(|a| sc[a] += p.value * c[a]);
    }
    let mean = sc.map(|v| v / s);
    let mut sd = [0.0; 3];
    for p in pixels {
        let c = local(p);
        (0..3).for_each(|a| sd[a] += p.value * (c[a] - mean[a]).powi(2));
    }
    let mut position = [mean[0] + x0, mean[1] + y0, mean[2] + z0];
    if z1 == z0 + 1.0 {
        position[2] = z0 + 0.5;
    }
    let (variance, std_err_sq) = if s * s > s2 {
        let v = sd.map(|d| d * s / (s * s - s2));
        (v, v.map(|v| v / s + 1.0 / 12.0))
    } else {
        ([0.0; 3], [1.0 / 12.0; 3])
    };
    Centroid { position, variance, std_err_sq }
}

/// Centre of the first maximum of the bbox's data in C order (non-spot pixels are 0).
fn peak_of(pixels: &[SpotPixel], bbox: [i32; 6]) -> [f64; 3] {
    let [x0, x1, y0, y1, z0, _] = bbox;
    let centre = |y: i64, x: i64| [x as f64 + 0.5, y as f64 + 0.5, z0 as f64 + 0.5];
    let mut best = &pixels[0];
    for p in pixels {
        if p.value > best.value {
            best = p;
        }
    }
    let area = (x1 - x0) as usize * (y1 - y0) as usize;
    let has_gap = pixels.len() < area;
    if has_gap && best.value <= 0.0 {
        // A zero-filled gap pixel is the maximum (or ties and may come first): find the first gap.
        let mut it = pixels.iter().peekable();
        for y in y0..y1 {
            for x in x0..x1 {
                match it.peek() {
                    Some(p) if p.y as i32 == y && p.x as i32 == x => {
                        if best.value == 0.0 && std::ptr::eq(*p, best) {
                            return centre(y as i64, x as i64);
                        }
                        it.next();
                    }
                    _ => return centre(y as i64, x as i64),
                }
            }
        }
    }
    centre(best.y as i64, best.x as i64)
}

/// Threshold one panel of a measured image with DIALS' algorithm and label it.
pub fn find_spots_panel(
    image: &[f64],
    shape: [usize; 2],
    trusted: &[bool],
    panel: usize,
    frame: i32,
    threshold: &DispersionParams,
    label: &LabelParams,
) -> Result<Vec<Spot>> {
    let mask = spotfinder::threshold_panel(image, shape, trusted, threshold)?;
    label_panel(image, &mask, shape, panel, frame, label)
}

/// How model (predicted) pixels are selected before labelling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ModelMask {
    /// `model > threshold` (`predictions.threshold`, model photons per pixel).
    AboveThreshold(f64),
    /// Local maxima at or above the threshold (`predictions.use_peak_detection`).
    LocalMaxima(f64),
}

/// Predicted spots of one panel of a model image (frame 0, no trusted mask, as the reference).
pub fn model_spots_panel(
    model: &[f64],
    shape: [usize; 2],
    panel: usize,
    select: ModelMask,
    label: &LabelParams,
) -> Result<Vec<Spot>> {
    let mask = match select {
        ModelMask::AboveThreshold(t) => spotfinder::above_threshold(model, shape, t)?,
        ModelMask::LocalMaxima(t) => spotfinder::local_maxima(model, shape, t)?,
    };
    label_panel(model, &mask, shape, panel, 0, label)
}

/// Options for [`spots_to_table`]. [`Default`]: id 0, flags = strong, no shoeboxes.
#[derive(Clone, Debug, PartialEq)]
pub struct TableOptions {
    /// Experiment index written to `id` (and `imageset_id`, one imageset per still).
    pub id: i32,
    /// The `flags` value of every row: [`flags::STRONG`] for spots found on data,
    /// [`flags::PREDICTED`] for model spots (the reference writes flags = 1 for those).
    pub flags: u64,
    /// Add the `shoebox` column (f32 data, int32 masks; DIALS v1 layout).
    pub shoeboxes: bool,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions { id: 0, flags: flags::STRONG, shoeboxes: false }
    }
}

/// A DIALS spot table: `bbox, flags, id, imageset_id, intensity.sum.value,
/// intensity.sum.variance, n_signal, panel, xyzobs.px.value, xyzobs.px.variance` and optionally
/// `shoebox` (the columns `dials.find_spots` writes).
pub fn spots_to_table(spots: &[Spot], opts: &TableOptions) -> Result<ReflectionTable> {
    let n = spots.len();
    let mut t = ReflectionTable::new(n);
    t.insert("bbox", spots.iter().map(|s| s.bbox).collect::<Vec<_>>())?;
    t.insert("flags", vec![opts.flags; n])?;
    t.insert("id", vec![opts.id; n])?;
    t.insert("imageset_id", vec![opts.id; n])?;
    t.insert("intensity.sum.value", spots.iter().map(|s| s.intensity).collect::<Vec<_>>())?;
    t.insert("intensity.sum.variance", spots.iter().map(|s| s.intensity.abs()).collect::<Vec<_>>())?;
    let counts = spots
        .iter()
        .map(|s| i32::try_from(s.n_pixels()).map_err(|_| Error::msg("spot with more than 2^31 pixels")))
        .collect::<Result<Vec<i32>>>()?;
    t.insert("n_signal", counts)?;
    t.insert("panel", spots.iter().map(|s| s.panel as u64).collect::<Vec<_>>())?;
    t.insert("xyzobs.px.value", spots.iter().map(|s| s.centroid.position).collect::<Vec<_>>())?;
    t.insert("xyzobs.px.variance", spots.iter().map(|s| s.centroid.std_err_sq).collect::<Vec<_>>())?;
    if opts.shoeboxes {
        t.insert("shoebox", spots.iter().map(shoebox_of).collect::<Vec<_>>())?;
    }
    Ok(t)
}

/// DIALS' spot-finding shoebox: f32 data on the spot pixels, mask Valid|Foreground there,
/// zeros elsewhere in the bbox, zero background.
pub fn shoebox_of(spot: &Spot) -> Shoebox {
    let [x0, x1, y0, y1, _, _] = spot.bbox;
    let nx = (x1 - x0) as usize;
    let n = nx * (y1 - y0) as usize;
    let mut data = vec![0f32; n];
    let mut mask = vec![0i32; n];
    for p in &spot.pixels {
        let k = (p.y as i32 - y0) as usize * nx + (p.x as i32 - x0) as usize;
        data[k] = p.value as f32;
        mask[k] = mask_code::VALID | mask_code::FOREGROUND;
    }
    Shoebox {
        panel: spot.panel as u32,
        bbox: spot.bbox,
        data: Some(ShoeboxData { data, mask: ShoeboxMask::I32(mask), background: vec![0f32; n] }),
    }
}

/// Add `scatter` = `intensity.sum.value / n_signal` (mean value per spot pixel; for model spots
/// the mean model photons per pixel that integrate's weak selection ranks by).
pub fn add_scatter(table: &mut ReflectionTable) -> Result<()> {
    let i = table.get_double("intensity.sum.value")?;
    let n = table.get_int("n_signal")?;
    let scatter: Vec<f64> =
        i.iter().zip(n).map(|(&i, &n)| if n > 0 { i / n as f64 } else { f64::NAN }).collect();
    table.insert("scatter", scatter)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: &[&str]) -> (Vec<f64>, Vec<bool>, [usize; 2]) {
        let ny = rows.len();
        let nx = rows[0].len();
        let mut v = Vec::new();
        for r in rows {
            for c in r.chars() {
                v.push(c.to_digit(10).unwrap() as f64);
            }
        }
        let m = v.iter().map(|&x| x > 0.0).collect();
        (v, m, [ny, nx])
    }

    #[test]
    fn four_connectivity_and_order() {
        // Diagonal neighbours are separate spots; order follows the first pixel in raster order.
        let (v, m, s) = grid(&["1000", "0100", "0011", "0000", "2002"]);
        let spots = label_panel(&v, &m, s, 3, 0, &LabelParams::default()).unwrap();
        let firsts: Vec<(u32, u32, usize)> =
            spots.iter().map(|s| (s.pixels[0].y, s.pixels[0].x, s.n_pixels())).collect();
        assert_eq!(firsts, vec![(0, 0, 1), (1, 1, 1), (2, 2, 2), (4, 0, 1), (4, 3, 1)]);
        assert_eq!(spots[2].bbox, [2, 4, 2, 3, 0, 1]);
        assert!(spots.iter().all(|s| s.panel == 3));
        // A U shape joins through the bottom row although its arms start separately.
        let (v, m, s) = grid(&["101", "101", "111"]);
        let spots = label_panel(&v, &m, s, 0, 0, &LabelParams::default()).unwrap();
        assert_eq!(spots.len(), 1);
        assert_eq!(spots[0].n_pixels(), 7);
        // Wrap-around: last pixel of a row and first of the next are not neighbours.
        let (v, m, s) = grid(&["001", "100"]);
        assert_eq!(label_panel(&v, &m, s, 0, 0, &LabelParams::default()).unwrap().len(), 2);
    }

    #[test]
    fn size_filter_and_centroid_by_hand() {
        let (v, m, s) = grid(&["0000", "0130", "0000", "2000"]);
        let p = LabelParams { min_spot_size: 2, ..Default::default() };
        let spots = label_panel(&v, &m, s, 0, 7, &p).unwrap();
        assert_eq!(spots.len(), 1);
        let c = spots[0].centroid;
        // x = (1·1.5 + 3·2.5)/4 = 2.25; y = 1.5; z = 7.5.
        assert_eq!(c.position, [2.25, 1.5, 7.5]);
        // Σw(x−m)² = 1·0.75² + 3·0.25² = 0.75; V = 0.75·4/(16−10) = 0.5; se² = 0.5/4 + 1/12.
        assert!((c.variance[0] - 0.5).abs() < 1e-15);
        assert!((c.std_err_sq[0] - (0.125 + 1.0 / 12.0)).abs() < 1e-15);
        assert_eq!(c.std_err_sq[1], 1.0 / 12.0);
        assert_eq!(spots[0].bbox, [1, 3, 1, 2, 7, 8]);
        assert_eq!(spots[0].peak, [2.5, 1.5, 7.5]);
        let p = LabelParams { min_spot_size: 1, max_spot_size: 1, ..Default::default() };
        assert_eq!(label_panel(&v, &m, s, 0, 0, &p).unwrap().len(), 1);
        assert!(LabelParams { min_spot_size: 0, ..Default::default() }.validate().is_err());
        assert!(LabelParams { min_spot_size: 3, max_spot_size: 2, max_separation: None }.validate().is_err());
    }

    #[test]
    fn degenerate_centroids_follow_dials() {
        // One pixel: S² = Σw² → variance 0, std err² 1/12.
        let c = centroid_of(&[SpotPixel { y: 4, x: 2, value: 9.0 }], [2, 3, 4, 5, 0, 1]);
        assert_eq!(c.position, [2.5, 4.5, 0.5]);
        assert_eq!(c.std_err_sq, [1.0 / 12.0; 3]);
        // Non-positive total → bbox centre, zero variance.
        let px = [SpotPixel { y: 0, x: 0, value: -1.0 }, SpotPixel { y: 0, x: 1, value: 0.5 }];
        let c = centroid_of(&px, [0, 2, 0, 1, 0, 1]);
        assert_eq!(c.position, [1.0, 0.5, 0.5]);
        assert_eq!(c.std_err_sq, [0.0; 3]);
    }

    #[test]
    fn peak_with_gaps_and_negative_values() {
        // L-shaped spot with a gap at (0,1): all values negative → the gap (value 0) is the peak.
        let px = [
            SpotPixel { y: 0, x: 0, value: -2.0 },
            SpotPixel { y: 1, x: 0, value: -1.0 },
            SpotPixel { y: 1, x: 1, value: -3.0 },
        ];
        assert_eq!(peak_of(&px, [0, 2, 0, 2, 0, 1]), [1.5, 0.5, 0.5]);
        // A zero spot pixel before the gap wins the tie (first in C order).
        let px = [
            SpotPixel { y: 0, x: 0, value: 0.0 },
            SpotPixel { y: 1, x: 0, value: -1.0 },
            SpotPixel { y: 1, x: 1, value: -3.0 },
        ];
        assert_eq!(peak_of(&px, [0, 2, 0, 2, 0, 1]), [0.5, 0.5, 0.5]);
    }

    #[test]
    fn model_spots_use_the_same_labeller() {
        let model = [0.0, 0.5, 2.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 1.0];
        let p = LabelParams::default();
        let s = model_spots_panel(&model, [2, 6], 1, ModelMask::AboveThreshold(0.4), &p).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].n_pixels(), 3);
        // (0.5·1.5 + 2·2.5 + 0.5·3.5)/3 = 2.5: the same pixel-centre convention as data spots.
        assert_eq!(s[0].centroid.position, [2.5, 0.5, 0.5]);
        let s = model_spots_panel(&model, [2, 6], 1, ModelMask::LocalMaxima(0.4), &p).unwrap();
        assert_eq!(s.iter().map(|s| s.n_pixels()).collect::<Vec<_>>(), vec![1, 1]);
        assert_eq!(s[0].centroid.position, [2.5, 0.5, 0.5]);
        assert_eq!(s[1].centroid.position, [4.5, 1.5, 0.5]);
    }

    #[test]
    fn table_and_shoebox_columns() {
        let (v, m, s) = grid(&["0120", "0030"]);
        let spots = label_panel(&v, &m, s, 1, 0, &LabelParams::default()).unwrap();
        let mut t =
            spots_to_table(&spots, &TableOptions { id: 4, shoeboxes: true, ..Default::default() }).unwrap();
        assert_eq!(t.nrows(), 1);
        assert_eq!(t.get_int("n_signal").unwrap(), &[3]);
        assert_eq!(t.get_double("intensity.sum.value").unwrap(), &[6.0]);
        assert_eq!(t.get_size("flags").unwrap(), &[flags::STRONG]);
        assert_eq!(t.get_int("id").unwrap(), &[4]);
        let sb = &t.get_shoebox("shoebox").unwrap()[0];
        assert_eq!(sb.bbox, [1, 3, 0, 2, 0, 1]);
        let d = sb.data.as_ref().unwrap();
        assert_eq!(d.data, vec![1.0, 2.0, 0.0, 3.0]);
        assert_eq!(d.mask, ShoeboxMask::I32(vec![5, 5, 0, 5]));
        sb.validate().unwrap();
        add_scatter(&mut t).unwrap();
        assert_eq!(t.get_double("scatter").unwrap(), &[2.0]);
    }
}
