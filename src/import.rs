//! `diffbragg import`: DIALS experiments + reflection tables (+ spectra) into
//! the `experiments`, `reflections` and `spectra` tables of a store.
//!
//! Sources are either an `exp_ref_spec_file` (one shot per line, as stage 1
//! reads it) or explicit `(expt, refl)` pairs, of which every experiment is
//! imported with the reflection rows whose `id` equals its index. A shot that
//! cannot be imported (no crystal, unreadable spectrum, ...) becomes a
//! `failures` row; the others go on. A file that cannot be read at all stops
//! the import with an error naming it, before anything is written.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::experiment::ExperimentList;
use crate::io::{dials_refl, lam, spec_file};
use crate::spectrum::Spectrum;
use crate::store::builder::BatchBuilder;
use crate::store::reflections::reflections_batch;
use crate::store::rows::{ExperimentRow, FailureRow, SpectrumRow};
use crate::store::schema::Table;
use crate::store::{shot_id, Store};

/// One group of shots to import: an expt/refl pair, and which experiments of it.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportSource {
    pub expt: PathBuf,
    pub refl: PathBuf,
    /// `None`: every experiment of the expt file.
    pub exp_idx: Option<usize>,
    pub spectrum: Option<PathBuf>,
}

/// Sources from a spec file (paths already resolved against its folder).
pub fn sources_from_spec_file(path: &Path) -> Result<Vec<ImportSource>> {
    Ok(spec_file::read_spec_file(path)?
        .into_iter()
        .map(|e| ImportSource { expt: e.expt, refl: e.refl, exp_idx: Some(e.exp_idx), spectrum: e.spectrum })
        .collect())
}

/// Counts of what was written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImportSummary {
    pub shots: usize,
    pub reflections: usize,
    pub spectra_channels: usize,
    pub failures: usize,
    /// DIALS columns present in the inputs that the `reflections` table does not hold.
    pub skipped_columns: Vec<String>,
}

/// Import `sources` into the store at `out` (created if needed).
pub fn import(sources: &[ImportSource], out: &Path) -> Result<ImportSummary> {
    if sources.is_empty() {
        return Err(Error::msg("import: no input files given"));
    }
    // Read every input first, so a missing or malformed file stops us before writing.
    let mut loaded = Vec::with_capacity(sources.len());
    for s in sources {
        let list = ExperimentList::read(&s.expt)?;
        let refl = dials_refl::read_refl(&s.refl)?;
        if let Some(i) = s.exp_idx {
            if i >= list.len() {
                return Err(Error::file(
                    &s.expt,
                    format!("experiment index {i} requested but the file has {}", list.len()),
                ));
            }
        }
        loaded.push((list, refl));
    }

    let mut store = Store::create(out, 0, true)?;
    let mut exps = BatchBuilder::new(Table::Experiments);
    let mut spectra = BatchBuilder::new(Table::Spectra);
    let mut failures = BatchBuilder::new(Table::Failures);
    let mut refl_batches = Vec::new();
    let mut summary = ImportSummary::default();

    for (s, (list, refl)) in sources.iter().zip(&loaded) {
        let ids: Vec<i32> =
            if refl.contains("id") { refl.get_int("id")?.to_vec() } else { vec![0; refl.nrows()] };
        let indices: Vec<usize> = match s.exp_idx {
            Some(i) => vec![i],
            None => (0..list.len()).collect(),
        };
        for i in indices {
            let (sid, canonical) = shot_id::shot_id(&s.expt, i)?;
            let fail = |reason: &str, msg: String| {
                let mut f = FailureRow::now(sid, "import", reason, msg);
                f.exp_name = Some(canonical.to_string_lossy().into_owned());
                f.exp_idx = Some(i as i32);
                f
            };
            let exp = &list.experiments[i];
            let models = exp.beam().and_then(|b| Ok((b, exp.detector()?, exp.crystal()?)));
            let (beam, detector, crystal) = match models {
                Ok(m) => m,
                Err(e) => {
                    failures.append_row(&fail("missing_model", e.to_string()))?;
                    summary.failures += 1;
                    continue;
                }
            };
            let spectrum: Option<(Spectrum, String)> = match &s.spectrum {
                Some(p) => match lam::read_lam(p) {
                    Ok(sp) => Some((sp, p.to_string_lossy().into_owned())),
                    Err(e) => {
                        failures.append_row(&fail("bad_spectrum", e.to_string()))?;
                        summary.failures += 1;
                        continue;
                    }
                },
                None => None,
            };
            let mut row = ExperimentRow::from_models(sid, &canonical, i, beam, detector, crystal)?;
            row.identifier = (!exp.identifier.is_empty()).then(|| exp.identifier.clone());
            row.refl_name =
                Some(std::fs::canonicalize(&s.refl).unwrap_or(s.refl.clone()).to_string_lossy().into_owned());
            if let Ok(loc) = exp.image_location() {
                row.image_file = Some(loc.path.to_string_lossy().into_owned());
                row.image_index = Some(loc.index as i64);
            }
            row.spectrum_source = spectrum.as_ref().map(|(_, src)| src.clone());
            exps.append_row(&row)?;
            if let Some((sp, _)) = &spectrum {
                for r in SpectrumRow::from_spectrum(sid, sp)? {
                    spectra.append_row(&r)?;
                    summary.spectra_channels += 1;
                }
            }
            let rows: Vec<usize> =
                ids.iter().enumerate().filter(|(_, &id)| id == i as i32).map(|(r, _)| r).collect();
            let (batch, skipped) = reflections_batch(sid, refl, &rows)?;
            for c in skipped {
                if !summary.skipped_columns.contains(&c) {
                    summary.skipped_columns.push(c);
                }
            }
            summary.reflections += rows.len();
            summary.shots += 1;
            refl_batches.push(batch);
        }
    }
    store.append_builder(&mut exps)?;
    store.append_builder(&mut spectra)?;
    store.append_builder(&mut failures)?;
    store.append(Table::Reflections, &refl_batches)?;
    store.publish()?;
    summary.skipped_columns.sort();
    Ok(summary)
}
