//! Pixel batches: the ROI pixels of this rank's shots, streamed from the
//! `pixels` table into a compact in-memory form.
//!
//! # Layout in memory
//! Per shot, ROI after ROI, pixels slow-major inside each box (the table's
//! order): `data` and `background` as f32 photons (8 B), the trusted flag as
//! one bit (0.125 B), the overlap multiplicity as u8 only when the table has
//! it (1 B), plus one [`RoiData`] (44 B) per ROI. With 5×5 or larger boxes that
//! is ≤ 11 B per pixel; [`ShotPixels::heap_bytes`] counts it exactly. The
//! kernel's pixel list (12 B per pixel) and the f64 work arrays are built per
//! shot while it is evaluated and dropped afterwards.
//!
//! # Streaming
//! Each shard is decoded one row group at a time ([`read_shard_each`]) and only
//! the rows of the requested shots are kept, so the Arrow form of the table
//! never sits in memory as a whole. ROIs are put in `roi_id` order per shot
//! whatever the shard order, so every rank count sees the same data.
//!
//! # Validation
//! Every row is checked (box non-empty, list lengths equal the box area,
//! finite values, σ ≥ 0, trusted ∈ {0, 1}, freq ≥ 1, no repeated roi_id);
//! a bad row gives one error naming the shard, the shot and the ROI.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, Int32Type, Int64Type, UInt32Type, UInt8Type};
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::kernel::Pixel;
use crate::store::parquet::read_shard_each;
use crate::store::{Store, Table};

/// One ROI: a half-open box `[x0, x1) × [y0, y1)` on `panel`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoiData {
    pub roi_id: i32,
    pub panel: u32,
    pub x0: u32,
    pub x1: u32,
    pub y0: u32,
    pub y1: u32,
    /// Readout variance σ_r² (photons²).
    pub sigma_r2: f32,
    /// Nominal Miller index (conventional setting); `None` when the table has none.
    pub hkl: Option<[i32; 3]>,
}

impl RoiData {
    pub fn n_pixels(&self) -> usize {
        ((self.x1 - self.x0) * (self.y1 - self.y0)) as usize
    }
}

/// The pixels of one shot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShotPixels {
    pub rois: Vec<RoiData>,
    pub data: Vec<f32>,
    pub background: Vec<f32>,
    /// Trusted flags, one bit per pixel.
    trusted: Vec<u64>,
    /// Overlap multiplicity per pixel, when the table carries it.
    pub freq: Option<Vec<u8>>,
}

impl ShotPixels {
    pub fn n_pixels(&self) -> usize {
        self.data.len()
    }

    pub fn is_trusted(&self, i: usize) -> bool {
        self.trusted[i / 64] >> (i % 64) & 1 == 1
    }

    pub fn n_trusted(&self) -> usize {
        self.trusted.iter().map(|w| w.count_ones() as usize).sum()
    }

    fn push_trusted(&mut self, t: bool) {
        let i = self.data.len() - 1;
        if i / 64 >= self.trusted.len() {
            self.trusted.push(0);
        }
        if t {
            self.trusted[i / 64] |= 1 << (i % 64);
        }
    }

    /// Trusted flags as bools (for the likelihood).
    pub fn trusted_flags(&self) -> Vec<bool> {
        (0..self.n_pixels()).map(|i| self.is_trusted(i)).collect()
    }

    /// Bytes held on the heap (capacity, not length: what the process pays).
    pub fn heap_bytes(&self) -> usize {
        self.rois.capacity() * std::mem::size_of::<RoiData>()
            + self.data.capacity() * 4
            + self.background.capacity() * 4
            + self.trusted.capacity() * 8
            + self.freq.as_ref().map_or(0, |f| f.capacity())
    }

    fn shrink(&mut self) {
        self.rois.shrink_to_fit();
        self.data.shrink_to_fit();
        self.background.shrink_to_fit();
        self.trusted.shrink_to_fit();
        if let Some(f) = &mut self.freq {
            f.shrink_to_fit();
        }
    }

    /// The kernel's pixel list (ROI after ROI, slow-major).
    pub fn kernel_pixels(&self) -> Vec<Pixel> {
        let mut v = Vec::with_capacity(self.n_pixels());
        for r in &self.rois {
            for y in r.y0..r.y1 {
                for x in r.x0..r.x1 {
                    v.push(Pixel { panel: r.panel, fast: x, slow: y });
                }
            }
        }
        v
    }

    /// Per-pixel readout variance (photons²).
    pub fn sigma_r2(&self) -> Vec<f64> {
        let mut v = Vec::with_capacity(self.n_pixels());
        for r in &self.rois {
            v.extend(std::iter::repeat_n(r.sigma_r2 as f64, r.n_pixels()));
        }
        v
    }

    /// Index of the first pixel of each ROI, plus the total at the end.
    pub fn roi_offsets(&self) -> Vec<usize> {
        let mut o = Vec::with_capacity(self.rois.len() + 1);
        let mut acc = 0;
        o.push(0);
        for r in &self.rois {
            acc += r.n_pixels();
            o.push(acc);
        }
        o
    }

    /// Check every ROI against the panel sizes (fast, slow) of the shot's detector.
    pub fn check_panels(&self, dims: &[[usize; 2]], shot_id: i64) -> Result<()> {
        for r in &self.rois {
            let Some(d) = dims.get(r.panel as usize) else {
                return Err(Error::msg(format!(
                    "pixels table: shot {shot_id} ROI {}: panel {} does not exist on its detector ({} panels)",
                    r.roi_id,
                    r.panel,
                    dims.len()
                )));
            };
            if r.x1 as usize > d[0] || r.y1 as usize > d[1] {
                return Err(Error::msg(format!(
                    "pixels table: shot {shot_id} ROI {}: box [{}, {}) × [{}, {}) leaves panel {} ({}×{})",
                    r.roi_id, r.x0, r.x1, r.y0, r.y1, r.panel, d[0], d[1]
                )));
            }
        }
        Ok(())
    }
}

/// Pixel and ROI counts of one shot (for the schedule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShotCount {
    pub shot_id: i64,
    pub n_rois: u64,
    pub n_pixels: u64,
}

fn bad_row(path: &Path, shot: i64, roi: i32, msg: impl Into<String>) -> Error {
    Error::record(path, format!("shot_id {shot} roi_id {roi}"), msg)
}

fn bbox_of(b: &RecordBatch, i: usize, path: &Path, shot: i64, roi: i32) -> Result<[u32; 4]> {
    let bb = b.column_by_name("bbox").expect("projected").as_fixed_size_list();
    let v = bb.value(i);
    let v = v.as_primitive::<Int32Type>();
    let [x0, x1, y0, y1] = [v.value(0), v.value(1), v.value(2), v.value(3)];
    if x0 < 0 || y0 < 0 || x1 <= x0 || y1 <= y0 {
        return Err(bad_row(path, shot, roi, format!("bbox ({x0}, {x1}, {y0}, {y1}) is empty or negative")));
    }
    if (x1 - x0) as i64 * (y1 - y0) as i64 > 1 << 24 {
        return Err(bad_row(path, shot, roi, format!("bbox ({x0}, {x1}, {y0}, {y1}) is implausibly large")));
    }
    Ok([x0 as u32, x1 as u32, y0 as u32, y1 as u32])
}

/// Pixel and ROI counts per shot, sorted by shot id (reads only two columns).
pub fn shot_counts(store: &Store) -> Result<Vec<ShotCount>> {
    let mut m: BTreeMap<i64, ShotCount> = BTreeMap::new();
    for (_, _, path) in store.shards(Table::Pixels)? {
        read_shard_each(Table::Pixels, &path, Some(&["shot_id", "roi_id", "bbox"]), None, |b| {
            let ids = b.column_by_name("shot_id").expect("projected").as_primitive::<Int64Type>();
            let rois = b.column_by_name("roi_id").expect("projected").as_primitive::<Int32Type>();
            for i in 0..b.num_rows() {
                let (shot, roi) = (ids.value(i), rois.value(i));
                let [x0, x1, y0, y1] = bbox_of(&b, i, &path, shot, roi)?;
                let e = m.entry(shot).or_insert(ShotCount { shot_id: shot, n_rois: 0, n_pixels: 0 });
                e.n_rois += 1;
                e.n_pixels += ((x1 - x0) * (y1 - y0)) as u64;
            }
            Ok(())
        })?;
    }
    Ok(m.into_values().collect())
}

/// Total size of the `pixels` shards on disk, bytes.
pub fn bytes_on_disk(store: &Store) -> Result<u64> {
    let mut total = 0;
    for (_, _, p) in store.shards(Table::Pixels)? {
        total += std::fs::metadata(&p).map_err(|e| crate::error::io_err(&p, e))?.len();
    }
    Ok(total)
}

/// Rows of one ROI before they are put in roi_id order.
struct Staged {
    roi: RoiData,
    start: usize,
}

/// Load the pixels of `shots` (streaming, see the module docs). Shots without
/// rows are absent from the result.
pub fn load_pixels(store: &Store, shots: &BTreeSet<i64>) -> Result<BTreeMap<i64, ShotPixels>> {
    let mut staged: BTreeMap<i64, (ShotPixels, Vec<Staged>)> = BTreeMap::new();
    let cols = [
        "shot_id",
        "roi_id",
        "panel",
        "bbox",
        "hkl",
        "sigma_readout",
        "data",
        "background",
        "trusted",
        "freq",
    ];
    for (_, _, path) in store.shards(Table::Pixels)? {
        read_shard_each(Table::Pixels, &path, Some(&cols), Some(shots), |b| {
            add_batch(&b, &path, &mut staged)
        })?;
    }
    let mut out = BTreeMap::new();
    for (shot, (sp, mut st)) in staged {
        st.sort_by_key(|s| s.roi.roi_id);
        if let Some(w) = st.windows(2).find(|w| w[0].roi.roi_id == w[1].roi.roi_id) {
            return Err(Error::msg(format!(
                "pixels table: shot {shot} has ROI {} twice (a shard written twice?)",
                w[0].roi.roi_id
            )));
        }
        // Put the ROIs in roi_id order.
        let mut o = ShotPixels {
            rois: Vec::with_capacity(st.len()),
            data: Vec::with_capacity(sp.n_pixels()),
            background: Vec::with_capacity(sp.n_pixels()),
            trusted: Vec::with_capacity(sp.trusted.len()),
            freq: sp.freq.as_ref().map(|f| Vec::with_capacity(f.len())),
        };
        for s in &st {
            o.rois.push(s.roi);
            for i in s.start..s.start + s.roi.n_pixels() {
                o.data.push(sp.data[i]);
                o.background.push(sp.background[i]);
                o.push_trusted(sp.is_trusted(i));
                if let (Some(dst), Some(src)) = (&mut o.freq, &sp.freq) {
                    dst.push(src[i]);
                }
            }
        }
        drop(sp);
        o.shrink();
        out.insert(shot, o);
    }
    Ok(out)
}

fn add_batch(
    b: &RecordBatch,
    path: &Path,
    staged: &mut BTreeMap<i64, (ShotPixels, Vec<Staged>)>,
) -> Result<()> {
    let ids = b.column_by_name("shot_id").expect("projected").as_primitive::<Int64Type>();
    let rois = b.column_by_name("roi_id").expect("projected").as_primitive::<Int32Type>();
    let panel = b.column_by_name("panel").expect("projected").as_primitive::<UInt32Type>();
    let hkl = b.column_by_name("hkl").expect("projected").as_struct();
    let sig = b.column_by_name("sigma_readout").expect("projected").as_primitive::<Float32Type>();
    let data = b.column_by_name("data").expect("projected").as_list::<i32>();
    let bg = b.column_by_name("background").expect("projected").as_list::<i32>();
    let tr = b.column_by_name("trusted").expect("projected").as_list::<i32>();
    let fq = b.column_by_name("freq").expect("projected").as_list::<i32>();
    for i in 0..b.num_rows() {
        let (shot, roi_id) = (ids.value(i), rois.value(i));
        let bad = |m: String| bad_row(path, shot, roi_id, m);
        let [x0, x1, y0, y1] = bbox_of(b, i, path, shot, roi_id)?;
        let n = ((x1 - x0) * (y1 - y0)) as usize;
        let d = data.value(i);
        let d = d.as_primitive::<Float32Type>();
        let g = bg.value(i);
        let g = g.as_primitive::<Float32Type>();
        let t = tr.value(i);
        let t = t.as_primitive::<UInt8Type>();
        for (name, len) in [("data", d.len()), ("background", g.len()), ("trusted", t.len())] {
            if len != n {
                return Err(bad(format!("`{name}` holds {len} values for a {}×{} box", x1 - x0, y1 - y0)));
            }
        }
        if d.null_count() + g.null_count() + t.null_count() > 0 {
            return Err(bad("null pixel values".into()));
        }
        let s = sig.value(i);
        if !(s.is_finite() && s >= 0.0) {
            return Err(bad(format!("sigma_readout {s} must be finite and ≥ 0")));
        }
        let h = if hkl.is_valid(i) {
            let c = |k: usize| hkl.column(k).as_primitive::<Int32Type>().value(i);
            Some([c(0), c(1), c(2)])
        } else {
            None
        };
        let freq = if fq.is_valid(i) {
            let f = fq.value(i);
            let f = f.as_primitive::<UInt8Type>().clone();
            if f.len() != n || f.null_count() > 0 {
                return Err(bad(format!("`freq` holds {} values for {n} pixels", f.len())));
            }
            if let Some(k) = f.values().iter().position(|&v| v == 0) {
                return Err(bad(format!("freq[{k}] is 0 (a pixel is in at least its own ROI)")));
            }
            Some(f)
        } else {
            None
        };
        let (sp, st) = staged.entry(shot).or_default();
        if st.is_empty() {
            sp.freq = freq.as_ref().map(|_| Vec::new());
        }
        if sp.freq.is_some() != freq.is_some() {
            return Err(bad("`freq` is given for some ROIs of the shot and not for others".into()));
        }
        let start = sp.data.len();
        for k in 0..n {
            let (dv, gv) = (d.value(k), g.value(k));
            if !dv.is_finite() || !gv.is_finite() {
                return Err(bad(format!("pixel {k}: data {dv} or background {gv} is not finite")));
            }
            let tv = t.value(k);
            if tv > 1 {
                return Err(bad(format!("trusted[{k}] = {tv}, expected 0 or 1")));
            }
            sp.data.push(dv);
            sp.background.push(gv);
            sp.push_trusted(tv == 1);
        }
        if let (Some(dst), Some(f)) = (&mut sp.freq, &freq) {
            dst.extend_from_slice(f.values());
        }
        let roi = RoiData { roi_id, panel: panel.value(i), x0, x1, y0, y1, sigma_r2: s * s, hkl: h };
        st.push(Staged { roi, start });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_bits_and_offsets() {
        let mut p = ShotPixels::default();
        for i in 0..130 {
            p.data.push(i as f32);
            p.background.push(0.0);
            p.push_trusted(i % 3 != 0);
        }
        assert_eq!(p.n_trusted(), (0..130).filter(|i| i % 3 != 0).count());
        assert!(!p.is_trusted(0) && p.is_trusted(1) && !p.is_trusted(129) && p.is_trusted(128));
        p.rois.push(RoiData { roi_id: 0, panel: 0, x0: 0, x1: 10, y0: 0, y1: 13, sigma_r2: 1.0, hkl: None });
        assert_eq!(p.roi_offsets(), vec![0, 130]);
        let px = p.kernel_pixels();
        assert_eq!(px[11], Pixel { panel: 0, fast: 1, slow: 1 });
        assert!(p.check_panels(&[[10, 13]], 1).is_ok());
        assert!(p.check_panels(&[[9, 13]], 1).is_err());
        assert!(p.check_panels(&[], 1).is_err());
    }
}
