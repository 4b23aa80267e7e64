//! Typed rows for the tables whose writers are simple enough to fix now:
//! `experiments` and `spectra` (for import), `traces` and `failures` (for the
//! stages). Each converts to cells of [`super::builder::BatchBuilder`]; a unit
//! test appends every one, so a column renamed in `schemas/` breaks the build's
//! tests rather than a run.

use std::path::Path;

use chrono::{DateTime, Utc};

use super::builder::{Row, Value};
use super::schema::Table;
use crate::conventions::{energy_ev_from_wavelength_a, mat3_to_row_major, reciprocal_from_real};
use crate::crystal::Crystal;
use crate::error::{Error, Result};
use crate::geometry::{Beam, Detector};
use crate::spectrum::Spectrum;

/// One `experiments` row: a shot's source and a summary of its models.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentRow {
    pub shot_id: i64,
    /// Canonical absolute expt path.
    pub exp_name: String,
    pub exp_idx: i32,
    pub identifier: Option<String>,
    pub refl_name: Option<String>,
    pub image_file: Option<String>,
    pub image_index: Option<i64>,
    /// Å.
    pub wavelength: f64,
    /// Sample → source (DIALS `direction`).
    pub beam_direction: [f64; 3],
    pub polarization_normal: [f64; 3],
    pub polarization_fraction: f64,
    pub n_panels: i32,
    pub detector_distance_mm: Option<f64>,
    pub pixel_size_mm: Option<[f64; 2]>,
    pub image_size: Option<[i32; 2]>,
    pub n_pixels: i64,
    /// dxtbx `A = U·B`, row-major, Å⁻¹.
    pub a_matrix: [f64; 9],
    /// a, b, c (Å), α, β, γ (deg).
    pub cell: [f64; 6],
    pub space_group_hall: String,
    pub ml_half_mosaicity_deg: Option<f64>,
    pub ml_domain_size_ang: Option<f64>,
    pub spectrum_source: Option<String>,
}

impl ExperimentRow {
    /// Summarise the models of experiment `exp_idx` of `exp_name` (already
    /// canonical, see [`super::shot_id::shot_id`]). Source fields other than
    /// the expt (identifier, refl, image, spectrum) start empty.
    pub fn from_models(
        shot_id: i64,
        exp_name: &Path,
        exp_idx: usize,
        beam: &Beam,
        detector: &Detector,
        crystal: &Crystal,
    ) -> Result<ExperimentRow> {
        let at = |m: &str| Error::record(exp_name, format!("experiment {exp_idx}"), m.to_string());
        let exp_idx = i32::try_from(exp_idx).map_err(|_| at("experiment index exceeds int32"))?;
        let a = reciprocal_from_real(&crystal.real)
            .ok_or_else(|| at("crystal lattice vectors are degenerate"))?;
        let p0 = detector.panels.first();
        let v3 = |v: &crate::conventions::Vec3| [v.x, v.y, v.z];
        Ok(ExperimentRow {
            shot_id,
            exp_name: exp_name.to_string_lossy().into_owned(),
            exp_idx,
            identifier: None,
            refl_name: None,
            image_file: None,
            image_index: None,
            wavelength: beam.wavelength,
            beam_direction: v3(&beam.direction),
            polarization_normal: v3(&beam.polarization_normal),
            polarization_fraction: beam.polarization_fraction,
            n_panels: i32::try_from(detector.panels.len()).map_err(|_| at("too many panels"))?,
            detector_distance_mm: p0.map(|p| p.close_distance()),
            pixel_size_mm: p0.map(|p| p.pixel_size),
            image_size: p0.map(|p| [p.image_size[0] as i32, p.image_size[1] as i32]),
            n_pixels: detector.n_pixels() as i64,
            a_matrix: mat3_to_row_major(&a),
            cell: crystal.unit_cell().to_array(),
            space_group_hall: crystal.space_group_hall.clone(),
            ml_half_mosaicity_deg: crystal.ml_half_mosaicity_deg,
            ml_domain_size_ang: crystal.ml_domain_size_ang,
            spectrum_source: None,
        })
    }
}

impl Row for ExperimentRow {
    const TABLE: Table = Table::Experiments;
    fn cells(&self) -> Vec<(&'static str, Value<'_>)> {
        let [a, b, c, al, be, ga] = self.cell;
        vec![
            ("shot_id", self.shot_id.into()),
            ("exp_name", (&self.exp_name).into()),
            ("exp_idx", self.exp_idx.into()),
            ("identifier", self.identifier.as_ref().into()),
            ("refl_name", self.refl_name.as_ref().into()),
            ("image_file", self.image_file.as_ref().into()),
            ("image_index", self.image_index.into()),
            ("wavelength", self.wavelength.into()),
            ("beam_direction", (&self.beam_direction).into()),
            ("polarization_normal", (&self.polarization_normal).into()),
            ("polarization_fraction", self.polarization_fraction.into()),
            ("n_panels", self.n_panels.into()),
            ("detector_distance_mm", self.detector_distance_mm.into()),
            ("pixel_size_mm", self.pixel_size_mm.as_ref().into()),
            ("image_size", self.image_size.as_ref().into()),
            ("n_pixels", self.n_pixels.into()),
            ("a_matrix", (&self.a_matrix).into()),
            ("a", a.into()),
            ("b", b.into()),
            ("c", c.into()),
            ("al", al.into()),
            ("be", be.into()),
            ("ga", ga.into()),
            ("space_group_hall", (&self.space_group_hall).into()),
            ("ml_half_mosaicity_deg", self.ml_half_mosaicity_deg.into()),
            ("ml_domain_size_ang", self.ml_domain_size_ang.into()),
            ("spectrum_source", self.spectrum_source.as_ref().into()),
        ]
    }
}

/// One `spectra` row (one channel). The energy is derived from the wavelength.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpectrumRow {
    pub shot_id: i64,
    pub channel: i32,
    /// Å.
    pub wavelength: f64,
    pub weight: f64,
}

impl SpectrumRow {
    /// The rows of a whole spectrum, validated (finite, λ > 0, weights ≥ 0, sum > 0).
    pub fn from_spectrum(shot_id: i64, s: &Spectrum) -> Result<Vec<SpectrumRow>> {
        s.validate().map_err(|m| Error::msg(format!("spectrum of shot {shot_id}: {m}")))?;
        Ok(s.wavelengths
            .iter()
            .zip(&s.weights)
            .enumerate()
            .map(|(i, (&wavelength, &weight))| SpectrumRow { shot_id, channel: i as i32, wavelength, weight })
            .collect())
    }
}

impl Row for SpectrumRow {
    const TABLE: Table = Table::Spectra;
    fn cells(&self) -> Vec<(&'static str, Value<'_>)> {
        vec![
            ("shot_id", self.shot_id.into()),
            ("channel", self.channel.into()),
            ("wavelength", self.wavelength.into()),
            ("energy", energy_ev_from_wavelength_a(self.wavelength).into()),
            ("weight", self.weight.into()),
        ]
    }
}

/// One `traces` row: one target-function evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRow {
    /// `None` for an evaluation of the global stage-2 target.
    pub shot_id: Option<i64>,
    pub stage: String,
    pub eval: i32,
    pub f: f64,
    pub sigz: Option<f64>,
    pub grad_norm: Option<f64>,
    /// Seconds since the refinement started.
    pub time: f64,
}

impl Row for TraceRow {
    const TABLE: Table = Table::Traces;
    fn cells(&self) -> Vec<(&'static str, Value<'_>)> {
        vec![
            ("shot_id", self.shot_id.into()),
            ("stage", (&self.stage).into()),
            ("eval", self.eval.into()),
            ("f", self.f.into()),
            ("sigz", self.sigz.into()),
            ("grad_norm", self.grad_norm.into()),
            ("time", self.time.into()),
        ]
    }
}

/// One `failures` row.
#[derive(Clone, Debug, PartialEq)]
pub struct FailureRow {
    pub shot_id: i64,
    pub stage: String,
    pub exp_name: Option<String>,
    pub exp_idx: Option<i32>,
    /// Short snake_case code to group by.
    pub reason: String,
    pub message: String,
    pub time: DateTime<Utc>,
}

impl FailureRow {
    /// A failure stamped with the current time.
    pub fn now(shot_id: i64, stage: &str, reason: &str, message: impl Into<String>) -> FailureRow {
        FailureRow {
            shot_id,
            stage: stage.into(),
            exp_name: None,
            exp_idx: None,
            reason: reason.into(),
            message: message.into(),
            time: Utc::now(),
        }
    }
}

impl Row for FailureRow {
    const TABLE: Table = Table::Failures;
    fn cells(&self) -> Vec<(&'static str, Value<'_>)> {
        vec![
            ("shot_id", self.shot_id.into()),
            ("stage", (&self.stage).into()),
            ("exp_name", self.exp_name.as_ref().into()),
            ("exp_idx", self.exp_idx.into()),
            ("reason", (&self.reason).into()),
            ("message", (&self.message).into()),
            ("time", self.time.into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conventions::Vec3;
    use crate::crystal::UnitCell;
    use crate::geometry::Panel;
    use crate::store::builder::BatchBuilder;
    use arrow::array::AsArray;
    use arrow::datatypes::Float64Type;

    pub(crate) fn sample_experiment(shot_id: i64) -> ExperimentRow {
        let beam = Beam { direction: Vec3::new(0.0, 0.0, 1.0), wavelength: 1.3, ..Default::default() };
        let panel = Panel {
            origin: Vec3::new(-20.0, 15.0, -150.0),
            pixel_size: [0.075, 0.075],
            image_size: [256, 254],
            ..Default::default()
        };
        let det = Detector { panels: vec![panel.clone(), panel], hierarchy: None };
        let cell = UnitCell::new(55.0, 65.0, 75.0, 90.0, 95.0, 90.0);
        let xtal = Crystal::from_u_and_cell(&crate::conventions::rot_xyz(0.1, -0.2, 0.3), &cell, " P 2yb");
        ExperimentRow::from_models(shot_id, Path::new("/data/a.expt"), 2, &beam, &det, &xtal).unwrap()
    }

    #[test]
    fn experiment_row_summarises_the_models() {
        let r = sample_experiment(11);
        assert_eq!((r.n_panels, r.n_pixels, r.image_size), (2, 2 * 256 * 254, Some([256, 254])));
        assert!((r.detector_distance_mm.unwrap() - 150.0).abs() < 1e-12);
        for (x, y) in r.cell.iter().zip([55.0, 65.0, 75.0, 90.0, 95.0, 90.0]) {
            assert!((x - y).abs() < 1e-9, "{:?}", r.cell);
        }
        // |a*| = 1/(a sin β) for a monoclinic-b cell: the A matrix is the reciprocal one.
        let a = crate::conventions::mat3_from_row_major(&r.a_matrix);
        let astar = a.column(0).norm();
        assert!((astar - 1.0 / (55.0 * 95f64.to_radians().sin())).abs() < 1e-12);
        let mut b = BatchBuilder::new(Table::Experiments);
        b.append_row(&r).unwrap();
        assert_eq!(b.finish().unwrap().num_rows(), 1);
    }

    #[test]
    fn every_typed_row_fits_its_table() {
        let s = Spectrum::new(vec![1.30, 1.31], vec![1.0, 3.0]);
        let rows = SpectrumRow::from_spectrum(4, &s).unwrap();
        let mut b = BatchBuilder::new(Table::Spectra);
        rows.iter().try_for_each(|r| b.append_row(r)).unwrap();
        let batch = b.finish().unwrap();
        let e = batch.column_by_name("energy").unwrap().as_primitive::<Float64Type>();
        // Independent constant: h·c/e = 12398.419843320026 eV·Å (CODATA 2018).
        assert!((e.value(0) - 12398.419843320026 / 1.30).abs() < 1e-9);
        assert!(SpectrumRow::from_spectrum(4, &Spectrum::new(vec![1.0], vec![f64::NAN])).is_err());

        let mut b = BatchBuilder::new(Table::Traces);
        let t = TraceRow {
            shot_id: None,
            stage: "stage2".into(),
            eval: 0,
            f: 1.0,
            sigz: Some(1.1),
            grad_norm: None,
            time: 0.1,
        };
        b.append_row(&t).unwrap();
        assert_eq!(b.finish().unwrap().column_by_name("shot_id").unwrap().null_count(), 1);

        let mut b = BatchBuilder::new(Table::Failures);
        b.append_row(&FailureRow::now(5, "stage1", "no_rois", "no ROI survived")).unwrap();
        assert_eq!(b.finish().unwrap().num_rows(), 1);
    }
}
