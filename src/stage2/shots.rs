//! Each shot's forward model, assembled from the store and the shot's `.expt`.
//!
//! # Where each input comes from
//! * Crystal: the stage-1 `shot_params` row (`Amats`, `ncells`, `ncells_def`,
//!   `eta_abc`, `num_mosaicity_samples`). `Amats` already holds the refined
//!   misorientation, so stage 2 starts from rotX/Y/Z = 0 with U = A·B⁻¹; the cell
//!   comes from `Amats` too (projected onto the space group's lattice system).
//! * Scale G: `spot_scales` (our G, i.e. cctbx's G / N_sources, see `kernel`).
//! * Spectrum: the `spectra` rows of the shot. \[TRAP\] T2.3 decided: the
//!   spectrum is never lost, and a shot without rows is modelled with the
//!   beam's wavelength only, with a warning (the reference silently does that).
//! * Beam: the shot's experiment (`exp_name`, `exp_idx`). Detector: the same
//!   experiment, or `refiner.reference_geom`'s first detector for every shot
//!   (as the reference), with `detz_shift_mm` applied and the sensor thickness
//!   set to 0 when `simulator.detector.force_zero_thickness`.
//! * \[TRAP\] T3.5 decided: oversample, fluence (`total_flux`/`beamsize_mm²`),
//!   λ correction and mosaic settings are the **shot's stage-1 values**, since
//!   G was refined together with them; the phil only fills in missing values
//!   (`simulator.oversample`, `simulator.total_flux`, `simulator.beam.size_mm`).
//!   The reference takes them from the stage-2 phil and the last-loaded shot (T3.7).
//! * Fluence in photons/m²: `total_flux/(beamsize_mm·10⁻³)²`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use arrow::record_batch::RecordBatch;

use crate::config::EnsHopperConfig;
use crate::conventions::{energy_ev_from_wavelength_a, mat3_from_row_major, Mat3};
use crate::crystal::{Crystal, UnitCell};
use crate::error::{Error, Result};
use crate::experiment::ExperimentList;
use crate::geometry::{Beam, Detector};
use crate::kernel::{CrystalModel, DetectorShifts, Eta, LatticeShape, MosaicSpec, ShotModel, Source};
use crate::store::parquet::read_shard_each;
use crate::store::{Store, Table};
use crate::symmetry::SpaceGroup;
use crate::ucell::{LatticeSystem, UcellParams};

/// The stage-1 results stage 2 starts from (one `shot_params` row).
#[derive(Clone, Debug, PartialEq)]
pub struct Stage1Row {
    pub shot_id: i64,
    pub exp_name: String,
    pub exp_idx: i32,
    pub refl_name: Option<String>,
    pub spot_scales: f64,
    pub amats: [f64; 9],
    pub ncells: [f64; 3],
    pub ncells_def: Option<[f64; 3]>,
    pub eta_abc: Option<[f64; 3]>,
    pub num_mosaicity_samples: Option<i32>,
    pub detz_shift_mm: Option<f64>,
    pub lam0: Option<f64>,
    pub lam1: Option<f64>,
    pub total_flux: Option<f64>,
    pub beamsize_mm: Option<f64>,
    pub oversample: Option<i32>,
    pub spectrum_source: Option<String>,
    pub spectrum_filename: Option<String>,
    pub spectrum_stride: Option<i32>,
}

fn f64_at(b: &RecordBatch, name: &str, i: usize) -> Option<f64> {
    let c = b.column_by_name(name)?.as_primitive::<Float64Type>();
    c.is_valid(i).then(|| c.value(i))
}

fn i32_at(b: &RecordBatch, name: &str, i: usize) -> Option<i32> {
    let c = b.column_by_name(name)?.as_primitive::<Int32Type>();
    c.is_valid(i).then(|| c.value(i))
}

fn str_at(b: &RecordBatch, name: &str, i: usize) -> Option<String> {
    let c = b.column_by_name(name)?.as_string::<i32>();
    c.is_valid(i).then(|| c.value(i).to_string())
}

fn fixed_at<const N: usize>(b: &RecordBatch, name: &str, i: usize) -> Option<[f64; N]> {
    let c = b.column_by_name(name)?.as_fixed_size_list();
    if !c.is_valid(i) {
        return None;
    }
    let v = c.value(i);
    let v = v.as_primitive::<Float64Type>();
    (v.len() == N && v.null_count() == 0).then(|| std::array::from_fn(|k| v.value(k)))
}

/// The stage-1 rows (`stage == tag`, final results only) of `shots`, one per
/// shot. When a shot has several (a rerun), the last shard's row wins, which
/// is deterministic.
pub fn read_stage1_rows(
    store: &Store,
    tag: &str,
    shots: Option<&BTreeSet<i64>>,
) -> Result<BTreeMap<i64, Stage1Row>> {
    let mut out = BTreeMap::new();
    for (_, _, path) in store.shards(Table::ShotParams)? {
        read_shard_each(Table::ShotParams, &path, None, shots, |b| {
            let ids = b.column_by_name("shot_id").expect("schema").as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                if str_at(&b, "stage", i).as_deref() != Some(tag) || i32_at(&b, "iteration", i).is_some() {
                    continue;
                }
                let shot_id = ids.value(i);
                let bad = |m: &str| Error::record(&path, format!("shot_id {shot_id}"), m.to_string());
                let row = Stage1Row {
                    shot_id,
                    exp_name: str_at(&b, "exp_name", i).ok_or_else(|| bad("no exp_name"))?,
                    exp_idx: i32_at(&b, "exp_idx", i).ok_or_else(|| bad("no exp_idx"))?,
                    refl_name: str_at(&b, "refl_name", i),
                    spot_scales: f64_at(&b, "spot_scales", i).ok_or_else(|| bad("no spot_scales"))?,
                    amats: fixed_at::<9>(&b, "Amats", i).ok_or_else(|| bad("no Amats"))?,
                    ncells: fixed_at::<3>(&b, "ncells", i).ok_or_else(|| bad("no ncells"))?,
                    ncells_def: fixed_at::<3>(&b, "ncells_def", i),
                    eta_abc: fixed_at::<3>(&b, "eta_abc", i),
                    num_mosaicity_samples: i32_at(&b, "num_mosaicity_samples", i),
                    detz_shift_mm: f64_at(&b, "detz_shift_mm", i),
                    lam0: f64_at(&b, "lam0", i),
                    lam1: f64_at(&b, "lam1", i),
                    total_flux: f64_at(&b, "total_flux", i),
                    beamsize_mm: f64_at(&b, "beamsize_mm", i),
                    oversample: i32_at(&b, "oversample", i),
                    spectrum_source: str_at(&b, "spectrum_source", i),
                    spectrum_filename: str_at(&b, "spectrum_filename", i),
                    spectrum_stride: i32_at(&b, "spectrum_stride", i),
                };
                out.insert(shot_id, row);
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// (wavelength Å, weight) per shot, in channel order.
pub fn read_spectra(store: &Store, shots: &BTreeSet<i64>) -> Result<BTreeMap<i64, Vec<(f64, f64)>>> {
    let mut rows: BTreeMap<i64, BTreeMap<i32, (f64, f64)>> = BTreeMap::new();
    for (_, _, path) in store.shards(Table::Spectra)? {
        read_shard_each(
            Table::Spectra,
            &path,
            Some(&["shot_id", "channel", "wavelength", "weight"]),
            Some(shots),
            |b| {
                let ids = b.column_by_name("shot_id").expect("projected").as_primitive::<Int64Type>();
                let ch = b.column_by_name("channel").expect("projected").as_primitive::<Int32Type>();
                let wl = b.column_by_name("wavelength").expect("projected").as_primitive::<Float64Type>();
                let w = b.column_by_name("weight").expect("projected").as_primitive::<Float64Type>();
                for i in 0..b.num_rows() {
                    let (s, c, l, wt) = (ids.value(i), ch.value(i), wl.value(i), w.value(i));
                    if !(l.is_finite() && l > 0.0 && wt.is_finite() && wt >= 0.0) {
                        return Err(Error::record(
                            &path,
                            format!("shot_id {s} channel {c}"),
                            format!("wavelength {l} must be > 0 and weight {wt} ≥ 0"),
                        ));
                    }
                    let e = rows.entry(s).or_default();
                    if let Some(old) = e.insert(c, (l, wt)) {
                        if old != (l, wt) {
                            return Err(Error::record(
                                &path,
                                format!("shot_id {s} channel {c}"),
                                "given twice with different values",
                            ));
                        }
                    }
                }
                Ok(())
            },
        )?;
    }
    Ok(rows.into_iter().map(|(s, m)| (s, m.into_values().collect())).collect())
}

pub use crate::ucell::lattice_system;

/// The cell projected onto `system`'s constraints (equal edges averaged,
/// fixed angles set). Errors if the cell is more than 0.5 % (edges) or 0.5°
/// (angles) away from them: the shot belongs to another lattice.
pub fn symmetrize_cell(system: LatticeSystem, cell: &UnitCell) -> Result<UcellParams> {
    let [a, b, c, al, be, ga] = cell.to_array();
    let p = match system {
        LatticeSystem::Triclinic => vec![a, b, c, al.to_radians(), be.to_radians(), ga.to_radians()],
        LatticeSystem::Monoclinic => vec![a, b, c, be.to_radians()],
        LatticeSystem::Orthorhombic => vec![a, b, c],
        LatticeSystem::Tetragonal | LatticeSystem::Hexagonal => vec![(a + b) / 2.0, c],
        LatticeSystem::Rhombohedral => vec![(a + b + c) / 3.0, ((al + be + ga) / 3.0).to_radians()],
        LatticeSystem::Cubic => vec![(a + b + c) / 3.0],
    };
    let u = UcellParams::new(system, p)?;
    let back = u.unit_cell().to_array();
    let want = cell.to_array();
    for k in 0..6 {
        let off = if k < 3 { (back[k] - want[k]).abs() / want[k] } else { (back[k] - want[k]).abs() / 100.0 };
        if off > 5e-3 {
            return Err(Error::param(
                "unit_cell",
                format!("cell {want:?} is not {system:?} (the space group's lattice system)"),
            ));
        }
    }
    Ok(u)
}

/// The nearest proper rotation (polar decomposition).
fn nearest_rotation(m: &Mat3) -> Result<Mat3> {
    let svd = m.svd(true, true);
    let (u, vt) = (svd.u.expect("computed"), svd.v_t.expect("computed"));
    let r = u * vt;
    if r.determinant() < 0.0 || (m - r).abs().max() > 1e-3 {
        return Err(Error::msg("Amats: U = A·B⁻¹ is not a rotation (A and the cell disagree)"));
    }
    Ok(r)
}

/// Everything fixed about one shot's forward model.
#[derive(Clone, Debug)]
pub struct ShotInput {
    pub shot_id: i64,
    pub row: Stage1Row,
    pub detector: Arc<Detector>,
    pub beam: Beam,
    /// Sources with their Fhkl channel.
    pub sources: Vec<Source>,
    /// Which Fhkl channels carry spectral weight in this shot.
    pub channels: Vec<bool>,
    pub u: Mat3,
    pub ucell: UcellParams,
    pub o_matrix: Mat3,
    pub ncells: [f64; 6],
    pub mosaic_n: usize,
    pub eta: Option<Eta>,
    pub no_nabc_scale: bool,
    pub fluence: f64,
    pub oversample: usize,
    pub lambda_coef: [f64; 2],
    pub detz_shift: f64,
    /// True when the spectrum was missing and the beam's wavelength was used.
    pub mono_fallback: bool,
}

impl ShotInput {
    /// The forward model with refined values rot (rad), Na/Nb/Nc, cell
    /// parameters; G = 1 (the scale is applied outside the kernel).
    pub fn model(&self, rot: [f64; 3], nabc: [f64; 3], ucell: &[f64]) -> Result<ShotModel> {
        let mut ncells = self.ncells;
        ncells[..3].copy_from_slice(&nabc);
        let ucell = UcellParams::new(self.ucell.system, ucell.to_vec())?;
        let mosaic = match (&self.eta, self.mosaic_n) {
            (Some(eta), n) if n > 1 => {
                let real = self.u * ucell.b_real();
                MosaicSpec::Generated { n_domains: n, eta: eta.clone(), axes: real }
            }
            _ => MosaicSpec::Single,
        };
        let crystal = CrystalModel {
            u: self.u,
            ucell,
            o_matrix: self.o_matrix,
            rot_xyz: rot,
            ncells,
            shape: LatticeShape::Gauss,
            no_nabc_scale: self.no_nabc_scale,
            mosaic,
        };
        let mut m = ShotModel::new(
            (*self.detector).clone(),
            self.beam.clone(),
            self.sources.clone(),
            crystal,
            self.fluence,
        );
        m.oversample = self.oversample;
        m.lambda_coef = self.lambda_coef;
        m.shifts = DetectorShifts { detz_shift: self.detz_shift, ..Default::default() };
        Ok(m)
    }

    /// The refined reciprocal matrix `A = U'·B_recip` with `U' = Rx·Ry·Rz·U`.
    pub fn a_matrix(&self, rot: [f64; 3], ucell: &[f64]) -> Result<Mat3> {
        let uc = UcellParams::new(self.ucell.system, ucell.to_vec())?;
        let u = crate::conventions::rot_xyz(rot[0], rot[1], rot[2]) * self.u;
        Ok(u * uc.unit_cell().b_recip())
    }
}

/// The Fhkl channel of a photon energy: `bounds` (eV, ascending) split
/// [0, ∞) into `bounds.len() + 1` intervals; an energy equal to a bound
/// belongs to the interval above it.
pub fn channel_of(energy_ev: f64, bounds: &[f64]) -> u32 {
    bounds.iter().filter(|&&b| energy_ev >= b).count() as u32
}

/// Settings shared by every shot.
pub struct ShotSettings<'a> {
    pub cfg: &'a EnsHopperConfig,
    pub space_group: &'a SpaceGroup,
    pub channel_bounds: &'a [f64],
}

/// Build the inputs of `rows`' shots (expt files are read once each). A shot
/// whose inputs are unusable gets its error, the others go on; the result is
/// in shot_id order. An error of the whole call (e.g. `reference_geom`
/// unreadable) concerns every shot.
pub fn build_inputs(
    rows: &BTreeMap<i64, Stage1Row>,
    spectra: &BTreeMap<i64, Vec<(f64, f64)>>,
    set: &ShotSettings,
) -> Result<Vec<(i64, Result<ShotInput>)>> {
    let cfg = set.cfg;
    let system = lattice_system(set.space_group);
    let o_matrix = set.space_group.change_of_basis_to_primitive()?.o_matrix();
    let reference_det = match &cfg.refiner.reference_geom {
        Some(p) => {
            let mut d = first_detector(p)?;
            if cfg.simulator.detector.force_zero_thickness {
                d.panels.iter_mut().for_each(|p| p.thickness = 0.0);
            }
            Some(Arc::new(d))
        }
        None => None,
    };
    let mut unique: Vec<Arc<Detector>> = Vec::new();
    let n_chan = set.channel_bounds.len() + 1;
    // Group by expt file so each is parsed once.
    let mut by_file: BTreeMap<&str, Vec<&Stage1Row>> = BTreeMap::new();
    for r in rows.values() {
        by_file.entry(r.exp_name.as_str()).or_default().push(r);
    }
    let mut out = Vec::with_capacity(rows.len());
    for (file, rs) in by_file {
        let path = PathBuf::from(file);
        let list = match ExperimentList::read(&path) {
            Ok(l) => l,
            Err(e) => {
                let msg = e.to_string();
                out.extend(rs.iter().map(|r| (r.shot_id, Err(Error::msg(msg.clone())))));
                continue;
            }
        };
        for r in rs {
            let mut one = || -> Result<ShotInput> {
                let idx = usize::try_from(r.exp_idx).map_err(|_| {
                    Error::record(&path, format!("shot_id {}", r.shot_id), "negative exp_idx")
                })?;
                let e = list.get(idx)?;
                let beam = e.beam()?.clone();
                let det = match &reference_det {
                    Some(d) => d.clone(),
                    None => {
                        let mut d = e.detector()?.clone();
                        if cfg.simulator.detector.force_zero_thickness {
                            d.panels.iter_mut().for_each(|p| p.thickness = 0.0);
                        }
                        // Shots of one file usually share a detector: keep one copy.
                        match unique.iter().find(|u| ***u == d) {
                            Some(u) => u.clone(),
                            None => {
                                let d = Arc::new(d);
                                unique.push(d.clone());
                                d
                            }
                        }
                    }
                };
                shot_input(r, det, beam, spectra.get(&r.shot_id), set, system, o_matrix, n_chan)
            };
            let res = one();
            out.push((r.shot_id, res));
        }
    }
    out.sort_by_key(|s| s.0);
    Ok(out)
}

fn first_detector(path: &Path) -> Result<Detector> {
    let list = ExperimentList::read_one(path, 0)?;
    Ok(list.get(0)?.detector()?.clone())
}

#[allow(clippy::too_many_arguments)]
fn shot_input(
    r: &Stage1Row,
    detector: Arc<Detector>,
    beam: Beam,
    spectrum: Option<&Vec<(f64, f64)>>,
    set: &ShotSettings,
    system: LatticeSystem,
    o_matrix: Mat3,
    n_chan: usize,
) -> Result<ShotInput> {
    let cfg = set.cfg;
    let bad = |m: String| Error::msg(format!("shot {} ({} #{}): {m}", r.shot_id, r.exp_name, r.exp_idx));
    let a = mat3_from_row_major(&r.amats);
    let xtal = Crystal::from_a_matrix(&a, "P 1").ok_or_else(|| bad("Amats is singular".into()))?;
    let ucell = symmetrize_cell(system, &xtal.unit_cell()).map_err(|e| bad(e.to_string()))?;
    let u = nearest_rotation(&(xtal.real * ucell.b_real().try_inverse().expect("valid cell")))
        .map_err(|e| bad(e.to_string()))?;
    let (spec, mono_fallback) = match spectrum {
        Some(s) if !s.is_empty() && s.iter().map(|x| x.1).sum::<f64>() > 0.0 => (s.clone(), false),
        _ => (vec![(beam.wavelength, 1.0)], true),
    };
    let mut channels = vec![false; n_chan];
    let sources: Vec<Source> = spec
        .iter()
        .map(|&(wavelength, weight)| {
            let channel = channel_of(energy_ev_from_wavelength_a(wavelength), set.channel_bounds);
            if weight > 0.0 {
                channels[channel as usize] = true;
            }
            Source { wavelength, weight, channel }
        })
        .collect();
    let [nd, ne, nf] = r.ncells_def.unwrap_or(cfg.init.ndef);
    let ncells = [r.ncells[0], r.ncells[1], r.ncells[2], nd, ne, nf];
    let mosaic_n =
        r.num_mosaicity_samples.map_or(cfg.simulator.crystal.num_mosaicity_samples, |n| n.max(1) as usize);
    let eta = r.eta_abc.filter(|e| e.iter().any(|&v| v > 0.0)).map(|e| {
        if cfg.simulator.crystal.has_isotropic_mosaicity || (e[0] == e[1] && e[1] == e[2]) {
            Eta::Iso(e[0])
        } else {
            Eta::Aniso(e)
        }
    });
    let total_flux = r.total_flux.filter(|v| v.is_finite() && *v > 0.0).unwrap_or(cfg.simulator.total_flux);
    let beamsize = r.beamsize_mm.filter(|v| v.is_finite() && *v > 0.0).unwrap_or(cfg.simulator.beam.size_mm);
    if !(total_flux > 0.0 && beamsize > 0.0) {
        return Err(bad(format!("total_flux {total_flux} and beam size {beamsize} mm must be > 0")));
    }
    let fluence = total_flux / (beamsize * 1e-3).powi(2);
    let oversample = match r.oversample {
        Some(o) if o > 0 => o as usize,
        _ if cfg.simulator.oversample > 0 => cfg.simulator.oversample,
        _ => 1,
    };
    let coef = |v: Option<f64>, default: f64| v.filter(|x| x.is_finite() && *x != -1.0).unwrap_or(default);
    let lambda_coef = [coef(r.lam0, 0.0), coef(r.lam1, 1.0)];
    if !(r.spot_scales.is_finite() && r.spot_scales > 0.0) {
        return Err(bad(format!("spot_scales (G) = {} must be > 0", r.spot_scales)));
    }
    Ok(ShotInput {
        shot_id: r.shot_id,
        row: r.clone(),
        detector,
        beam,
        sources,
        channels,
        u,
        ucell,
        o_matrix,
        ncells,
        mosaic_n,
        eta,
        no_nabc_scale: cfg.no_nabc_scale,
        fluence,
        oversample,
        lambda_coef,
        detz_shift: r.detz_shift_mm.unwrap_or(0.0),
        mono_fallback,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_split_at_bounds() {
        assert_eq!(channel_of(9000.0, &[]), 0);
        assert_eq!(channel_of(8999.0, &[9000.0]), 0);
        assert_eq!(channel_of(9000.0, &[9000.0]), 1);
        assert_eq!(channel_of(9500.0, &[9000.0, 9400.0]), 2);
    }

    #[test]
    fn cells_are_projected_onto_the_lattice() {
        let c = UnitCell::new(79.1, 79.100001, 38.2, 90.0, 90.0, 90.0);
        let u = symmetrize_cell(LatticeSystem::Tetragonal, &c).unwrap();
        assert!((u.values[0] - 79.1000005).abs() < 1e-9);
        let bad = UnitCell::new(79.1, 85.0, 38.2, 90.0, 90.0, 90.0);
        assert!(symmetrize_cell(LatticeSystem::Tetragonal, &bad).is_err());
        let sg = SpaceGroup::from_hm("P 43 21 2").unwrap();
        assert_eq!(lattice_system(&sg), LatticeSystem::Tetragonal);
        assert_eq!(lattice_system(&SpaceGroup::from_hm("R 3:H").unwrap()), LatticeSystem::Hexagonal);
    }
}
