//! The whole chain on a small synthetic dataset, through the CLI with the
//! user's files (seed/README.md's command lines, paths given by --cmdlinePhil):
//! `diffbragg synth` → `hopper` → `integrate` (simulation.phil,
//! sim_processing.phil) → `ens-hopper --preImport` (stage_two_test.phil) →
//! `ens-hopper` (the global refinement). The pre-imported table is checked
//! against independent readings: the HDF5 images (h5py), the integrate
//! store's predictions, the stage-1 spectra, gemmi's reciprocal ASU, and the
//! hot-pixel mask.
//!
//! A second test pre-imports with stage 1's own phil and compares the ROIs
//! with what stage 1's gather makes of the same image around the indexed
//! spots: where the boxes coincide, data, background and trusted flags agree.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type};

use diffbragg::config::{EnsHopperConfig, HopperConfig};
use diffbragg::dist::SingleProcess;
use diffbragg::stage2::data::load_pixels;
use diffbragg::stage2::RunOptions;
use diffbragg::store::Store;
use diffbragg::synth::{generate, SynthOptions};
use diffbragg::testutil::shared;

const N_PX: usize = 256;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_diffbragg"))
}

/// Run a command in `dir`; assert success; stdout + stderr.
fn run_ok(dir: &Path, args: &[String]) -> String {
    let o = Command::new(bin()).current_dir(dir).args(args).output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "diffbragg {args:?} failed:\n{log}");
    log
}

fn python(script: &str) -> String {
    let o = Command::new("python3").arg("-c").arg(script).output().expect("python3");
    assert!(o.status.success(), "python failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(x: impl AsRef<std::ffi::OsStr>) -> String {
    x.as_ref().to_string_lossy().into_owned()
}

/// Integer columns of a query (cast to BIGINT in the SQL).
fn ints(store: &Store, sql: &str) -> Vec<Vec<i64>> {
    let q = store.query(sql).unwrap();
    let mut out = Vec::new();
    for b in &q.batches {
        for i in 0..b.num_rows() {
            out.push(
                (0..b.num_columns()).map(|c| b.column(c).as_primitive::<Int64Type>().value(i)).collect(),
            );
        }
    }
    out
}

/// Float columns of a query (cast to DOUBLE in the SQL).
fn floats(store: &Store, sql: &str) -> Vec<Vec<f64>> {
    let q = store.query(sql).unwrap();
    let mut out = Vec::new();
    for b in &q.batches {
        for i in 0..b.num_rows() {
            out.push(
                (0..b.num_columns()).map(|c| b.column(c).as_primitive::<Float64Type>().value(i)).collect(),
            );
        }
    }
    out
}

/// Hot pixels of the mask used by the pre-import (sparse: most ROIs keep ≤ 4).
fn is_hot(x: usize, y: usize) -> bool {
    (x * 7 + y * 13) % 97 == 0
}

struct Chain {
    dir: PathBuf,
    syn: PathBuf,
    integ: PathBuf,
    hot_mask: PathBuf,
    mtz: PathBuf,
    shot_ids: Vec<i64>,
}

/// synth → hopper → integrate, with the user's integrate phil files.
fn chain(dir: &Path, shots: usize) -> Chain {
    let syn = dir.join("syn");
    generate(&SynthOptions {
        out: syn.clone(),
        shots,
        seed: 21,
        n_pixels: N_PX,
        distance_mm: 40.0,
        channels: 12,
        space_group: "P 41 21 2".into(),
        ..Default::default()
    })
    .unwrap();
    let log = run_ok(dir, &["hopper".into(), s(syn.join("hopper.phil")), "--no-progress".into()]);
    assert!(log.contains(&format!("{shots} refined, 0 failed")), "{log}");
    // Masks: all good for spot finding; sparse hot pixels for the pre-import.
    let mask = dir.join("mask.npy");
    let hot_mask = dir.join("hot.npy");
    python(&format!(
        "import numpy as np\n\
         np.save('{}', np.ones((1, {N_PX}, {N_PX}), bool))\n\
         y, x = np.mgrid[0:{N_PX}, 0:{N_PX}]\n\
         np.save('{}', ((x * 7 + y * 13) % 97 != 0)[None])\n",
        mask.display(),
        hot_mask.display()
    ));
    let integ = dir.join("reintegrated");
    let log = run_ok(
        dir,
        &[
            "integrate".into(),
            s(shared("seed/simulation.phil")),
            s(shared("seed/sim_processing.phil")),
            s(syn.join("stage1")),
            "reintegrated".into(),
            "--numdev".into(),
            "4".into(),
            "--hopInputName".into(),
            "pred".into(),
            "--cmdlinePhil".into(),
            "threshold=1e2".into(),
            format!("spotfinder.lookup.mask={}", mask.display()),
        ],
    );
    assert!(log.contains(&format!("predicted {shots} of {shots} shots")), "{log}");
    // The MTZ columns the user's stage-2 phil names, with the synthetic amplitudes.
    let syn_mtz = diffbragg::io::mtz::Mtz::read(syn.join("F.mtz")).unwrap();
    let hkl = syn_mtz.hkl().unwrap();
    let f = syn_mtz.column("F").unwrap().values.clone();
    let sg = diffbragg::symmetry::SpaceGroup::parse("P 41 21 2").unwrap();
    let mut m = diffbragg::io::mtz::Mtz::new_merged(syn_mtz.cell, sg, &hkl, ("lz08", "x", "y"), 1.3);
    m.add_column("F-model", 'F', f.clone()).unwrap();
    m.add_column("PHIF-model", 'P', vec![0.0; f.len()]).unwrap();
    let mtz = dir.join("CRY1Aae_refine_156.mtz");
    m.write(&mtz).unwrap();
    let shot_ids = (0..shots)
        .map(|i| diffbragg::store::shot_id::shot_id(&syn.join(format!("shot_{i:03}.expt")), 0).unwrap().0)
        .collect();
    Chain { dir: dir.to_path_buf(), syn, integ, hot_mask, mtz, shot_ids }
}

/// The --cmdlinePhil paths the user's stage_two_test.phil needs here (its
/// /pscratch paths do not exist), and σ_r of the synthetic detector.
fn path_overrides(c: &Chain) -> Vec<String> {
    vec![
        format!("roi.hotpixel_mask={}", c.hot_mask.display()),
        format!("refiner.reference_geom={}", c.syn.join("shot_000.expt").display()),
        format!("simulator.structure_factors.mtz_name={}", c.mtz.display()),
        "refiner.sigma_r=3".into(),
    ]
}

fn preimport_cli(c: &Chain) -> String {
    let mut a: Vec<String> = [
        "ens-hopper",
        "reintegrated/pred.parquet",
        &s(shared("seed/stage_two_test.phil")),
        "--outdir",
        "preimport",
        "--maxSigma",
        "3",
        "--saveFreq",
        "10",
        "--preImport",
        "--refl",
        "predicted_refls",
        "--cmdlinePhil",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(path_overrides(c));
    run_ok(&c.dir, &a)
}

/// Pixel values of boxes `[panel, x0, x1, y0, y1]` of image 0 of an HDF5 file, read by h5py.
fn h5_boxes(h5: &Path, boxes: &[[u32; 5]]) -> Vec<Vec<f64>> {
    let out = python(&format!(
        "import h5py, json\n\
         f = h5py.File('{}', 'r')\n\
         im = f['images'][0]\n\
         print(json.dumps([[float(v) for v in im[p, y0:y1, x0:x1].ravel()] for p, x0, x1, y0, y1 in {:?}]))\n",
        h5.display(),
        boxes
    ));
    serde_json::from_str(out.trim()).unwrap()
}

#[test]
fn synth_to_global_refinement_through_the_preimport() {
    let tmp = tempfile::tempdir().unwrap();
    let c = chain(tmp.path(), 4);
    // Shot 3's image is truncated after integrate: the pre-import must record it as a failure.
    let h5_3 = c.syn.join("shot_003.h5");
    let len = std::fs::metadata(&h5_3).unwrap().len();
    let bytes = std::fs::read(&h5_3).unwrap();
    std::fs::write(&h5_3, &bytes[..(len as usize) * 2 / 5]).unwrap();

    // srun ... ens.hopper reintegrated/pred.pkl stage_two_test.phil --outdir preimport --maxSigma 3
    //   --saveFreq 10 --preImport --refl predicted_refls
    let log = preimport_cli(&c);
    println!("{log}");
    assert!(log.contains("3 shot(s) imported, 1 failed, 0 already present (of 4 listed)"), "{log}");
    assert!(log.contains("--refl predicted_refls is ignored"), "{log}");
    let pre = tmp.path().join("preimport");
    let store = Store::open(&pre).unwrap();

    // Rows: the lists hold exactly the box areas, and the summary agrees.
    let t = ints(
        &store,
        "SELECT count(*), CAST(sum((bbox[2] - bbox[1]) * (bbox[4] - bbox[3])) AS BIGINT), \
         CAST(sum(len(data)) AS BIGINT), CAST(sum(len(background)) AS BIGINT), CAST(sum(len(trusted)) AS BIGINT), \
         count(DISTINCT shot_id), CAST(sum(list_sum(trusted)) AS BIGINT) FROM pixels",
    )[0]
    .clone();
    let (n_rois, area) = (t[0], t[1]);
    assert!(n_rois > 100, "{n_rois} ROIs");
    assert_eq!((t[2], t[3], t[4]), (area, area, area), "list lengths vs box areas");
    assert_eq!(t[5], 3);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pre.join("preimport_summary.json")).unwrap()).unwrap();
    assert_eq!(summary["n_pixels"].as_u64().unwrap(), area as u64);
    assert_eq!(summary["n_rois"].as_u64().unwrap(), n_rois as u64);
    assert_eq!(summary["n_trusted"].as_u64().unwrap(), t[6] as u64);
    let bpp_mem = summary["bytes_per_pixel_memory"].as_f64().unwrap();
    let bpp_disk = summary["bytes_per_pixel_disk"].as_f64().unwrap();
    assert!(bpp_mem > 8.0 && bpp_mem <= 12.0, "{bpp_mem} B/pixel in memory");
    assert!(bpp_disk > 0.0, "{bpp_disk}");
    assert!(log.contains(&format!("{n_rois} ROIs, {area} pixels")), "{log}");

    // The truncated shot: one failure row, nothing else.
    let bad = c.shot_ids[3];
    let f = ints(&store, &format!("SELECT count(*) FROM failures WHERE stage = 'preimport' AND shot_id = {bad} AND reason = 'bad_image'"));
    assert_eq!(f[0][0], 1);
    for t in ["pixels", "shot_params", "spectra", "experiments"] {
        assert_eq!(ints(&store, &format!("SELECT count(*) FROM {t} WHERE shot_id = {bad}"))[0][0], 0, "{t}");
    }

    // Data in photons = the image at the box (h5py), for a sample of ROIs of every good shot.
    let good: BTreeSet<i64> = c.shot_ids[..3].iter().copied().collect();
    let px = load_pixels(&store, &good).unwrap();
    for (i, sid) in c.shot_ids[..3].iter().enumerate() {
        let p = &px[sid];
        let offs = p.roi_offsets();
        let sample: Vec<usize> = (0..p.rois.len()).step_by(7).collect();
        let boxes: Vec<[u32; 5]> = sample
            .iter()
            .map(|&k| {
                let r = p.rois[k];
                [r.panel, r.x0, r.x1, r.y0, r.y1]
            })
            .collect();
        let vals = h5_boxes(&c.syn.join(format!("shot_{i:03}.h5")), &boxes);
        for (j, &k) in sample.iter().enumerate() {
            let got = &p.data[offs[k]..offs[k + 1]];
            let want: Vec<f32> = vals[j].iter().map(|&v| (v / 1.0) as f32).collect();
            assert_eq!(got, &want[..], "shot {i} ROI {k}");
        }
        // Hot pixels are never trusted, and some ROI holds one.
        let mut n_hot = 0;
        for (k, r) in p.rois.iter().enumerate() {
            let mut q = offs[k];
            for y in r.y0..r.y1 {
                for x in r.x0..r.x1 {
                    if is_hot(x as usize, y as usize) {
                        assert!(!p.is_trusted(q), "shot {i}: hot pixel ({x}, {y}) trusted");
                        n_hot += 1;
                    }
                    q += 1;
                }
            }
        }
        assert!(n_hot > 0, "shot {i}: no ROI contains a hot pixel; the mask check is vacuous");
        // σ_r in photons.
        assert!(p.rois.iter().all(|r| r.sigma_r2 == 9.0));
    }

    // Every ROI's hkl is its prediction's, and hkl_asu is gemmi's anomalous-ASU key.
    let integ = Store::open(&c.integ).unwrap();
    let pred: HashMap<(i64, i64), [i64; 3]> = ints(
        &integ,
        "SELECT shot_id, CAST(pred_id AS BIGINT), CAST(miller_index.h AS BIGINT), CAST(miller_index.k AS BIGINT), CAST(miller_index.l AS BIGINT) FROM predictions",
    )
    .into_iter()
    .map(|r| ((r[0], r[1]), [r[2], r[3], r[4]]))
    .collect();
    let rows = ints(
        &store,
        "SELECT shot_id, CAST(refl_id AS BIGINT), CAST(hkl.h AS BIGINT), CAST(hkl.k AS BIGINT), CAST(hkl.l AS BIGINT), \
         CAST(hkl_asu.h AS BIGINT), CAST(hkl_asu.k AS BIGINT), CAST(hkl_asu.l AS BIGINT), CAST(asu_id IS NOT NULL AS BIGINT) FROM pixels",
    );
    assert_eq!(rows.len() as i64, n_rois);
    let mut pairs = BTreeSet::new();
    for r in &rows {
        assert_eq!(pred.get(&(r[0], r[1])), Some(&[r[2], r[3], r[4]]), "shot {} refl {}", r[0], r[1]);
        pairs.insert(([r[2], r[3], r[4]], [r[5], r[6], r[7]]));
    }
    assert!(rows.iter().filter(|r| r[8] == 1).count() > rows.len() / 2, "asu_id mostly set (MTZ indices)");
    let pairs: Vec<_> = pairs.into_iter().collect();
    let mism = python(&format!(
        "import gemmi, json\n\
         sg = gemmi.SpaceGroup('P 41 21 2'); ops = sg.operations(); asu = gemmi.ReciprocalAsu(sg)\n\
         bad = []\n\
         for h, a in {pairs:?}:\n\
         \x20   m, isym = asu.to_asu(list(h), ops)\n\
         \x20   key = list(m) if (ops.is_reflection_centric(list(h)) or isym % 2 == 1) else [-v for v in m]\n\
         \x20   if key != list(a): bad.append((h, a, key))\n\
         print(json.dumps(bad))\n"
    ));
    assert_eq!(mism.trim(), "[]", "hkl_asu differs from gemmi's");

    // Spectra and stage-1 rows are those of stage 1.
    let s1 = Store::open(&c.syn.join("stage1")).unwrap();
    let ids = c.shot_ids[..3].iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
    let q_ids = format!(
        "SELECT shot_id, CAST(channel AS BIGINT) FROM spectra WHERE shot_id IN ({ids}) ORDER BY 1, 2"
    );
    let q_val =
        format!("SELECT wavelength, weight FROM spectra WHERE shot_id IN ({ids}) ORDER BY shot_id, channel");
    assert!(ints(&s1, &q_ids).len() >= 3 * 3);
    assert_eq!(ints(&store, &q_ids), ints(&s1, &q_ids));
    assert_eq!(floats(&store, &q_val), floats(&s1, &q_val), "spectra differ from stage 1's");
    let q = "SELECT spot_scales, Amats[1], Amats[5], Amats[9], ncells[1] FROM shot_params WHERE stage = 'stage1' ORDER BY shot_id";
    let q_s1 = format!("SELECT spot_scales, Amats[1], Amats[5], Amats[9], ncells[1] FROM shot_params WHERE stage = 'stage1' AND shot_id IN ({ids}) ORDER BY shot_id");
    assert_eq!(floats(&store, q), floats(&s1, &q_s1));
    assert_eq!(ints(&store, "SELECT count(*) FROM experiments")[0][0], 3);

    // A rerun adds nothing.
    let log2 = preimport_cli(&c);
    assert!(log2.contains("0 shot(s) imported, 0 failed, 4 already present (of 4 listed)"), "{log2}");
    assert_eq!(ints(&store, "SELECT count(*) FROM pixels")[0][0], n_rois);
    assert_eq!(ints(&store, "SELECT count(*) FROM failures")[0][0], 1);
    assert_eq!(ints(&store, "SELECT count(*) FROM shot_params")[0][0], 3);

    // srun ... ens.hopper preimport/preImport_for_ensemble.pkl stage_two_test.phil --outdir global
    //   --maxSigma 3 --saveFreq 10 --refl ens.hopper.imported --cmdlinePhil fix.Nabc=True ...
    // (the store replaces the pickle; --maxEvals bounds the time)
    let mut a: Vec<String> = [
        "ens-hopper",
        "preimport",
        &s(shared("seed/stage_two_test.phil")),
        "--outdir",
        "global",
        "--maxSigma",
        "3",
        "--saveFreq",
        "10",
        "--refl",
        "ens.hopper.imported",
        "--maxEvals",
        "12",
        "--cmdlinePhil",
        "fix.Nabc=True",
        "fix.ucell=True",
        "fix.RotXYZ=True",
        "fix.Fhkl=False",
        "fix.G=False",
        "sigmas.G=1e-2",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(path_overrides(&c));
    let log3 = run_ok(tmp.path(), &a);
    println!("{log3}");
    assert!(log3.contains("stage 2 `stage2`: 3 shots"), "{log3}");
    for name in ["optimized_channel0.mtz", "optimized_channel0_iter10.mtz"] {
        let m = diffbragg::io::mtz::Mtz::read(tmp.path().join("global").join(name)).unwrap();
        assert!(m.nrefl > 50, "{name}: {} reflections", m.nrefl);
    }
    assert_eq!(ints(&store, "SELECT count(*) FROM shot_params WHERE stage = 'stage2'")[0][0], 3);

    // adu_per_photon divides the data (and σ_r): the same shots at 2 ADU/photon.
    let (cfg, _) = EnsHopperConfig::load(&[shared("seed/stage_two_test.phil")], &{
        let mut o = path_overrides(&c);
        o.push("refiner.adu_per_photon=2".into());
        o
    })
    .unwrap();
    let out2 = tmp.path().join("preimport_adu2");
    let mut opts = RunOptions::new(&c.integ, &out2);
    opts.quiet = true;
    let s2 = diffbragg::stage2::preimport(&cfg, &opts, &SingleProcess).unwrap();
    assert_eq!((s2.n_imported, s2.n_failed), (3, 1));
    let st2 = Store::open(&out2).unwrap();
    let px2 = load_pixels(&st2, &good).unwrap();
    let p1 = &px[&c.shot_ids[0]];
    let p2 = &px2[&c.shot_ids[0]];
    assert!(p2.rois.iter().all(|r| r.sigma_r2 == 2.25));
    let boxes1: HashMap<_, usize> =
        p1.rois.iter().enumerate().map(|(k, r)| ((r.panel, r.x0, r.x1, r.y0, r.y1), k)).collect();
    let (o1, o2) = (p1.roi_offsets(), p2.roi_offsets());
    let mut n_same = 0;
    for (k2, r) in p2.rois.iter().enumerate() {
        if let Some(&k1) = boxes1.get(&(r.panel, r.x0, r.x1, r.y0, r.y1)) {
            for (a, b) in p1.data[o1[k1]..o1[k1 + 1]].iter().zip(&p2.data[o2[k2]..o2[k2 + 1]]) {
                assert_eq!((*a as f64 / 2.0) as f32, *b);
            }
            n_same += 1;
        }
    }
    assert!(n_same > 10, "{n_same}");
}

#[test]
fn preimported_rois_match_stage_ones_gather_where_the_boxes_coincide() {
    use diffbragg::stage1::gather::{gather_from_image, GatherOptions};
    let tmp = tempfile::tempdir().unwrap();
    let c = chain(tmp.path(), 2);
    // The pre-import with stage 1's own phil: the same ROI parameters stage 1 used.
    let phil = c.syn.join("hopper.phil");
    let (cfg, _) = EnsHopperConfig::load(std::slice::from_ref(&phil), &[]).unwrap();
    let out = tmp.path().join("preimport");
    let mut opts = RunOptions::new(&c.integ, &out);
    opts.quiet = true;
    let sum = diffbragg::stage2::preimport(&cfg, &opts, &SingleProcess).unwrap();
    assert_eq!((sum.n_imported, sum.n_failed), (2, 0));
    let store = Store::open(&out).unwrap();
    let ids: BTreeSet<i64> = c.shot_ids.iter().copied().collect();
    let px = load_pixels(&store, &ids).unwrap();
    let (h1, _) = HopperConfig::load(std::slice::from_ref(&phil), &[]).unwrap();
    let gopt = GatherOptions::from_params(&h1);
    let mut n_same = 0;
    for (i, sid) in c.shot_ids.iter().enumerate() {
        // Stage 1's gather on its own inputs: the indexed spots of the shot.
        let expt = c.syn.join(format!("shot_{i:03}.expt"));
        let list = diffbragg::experiment::ExperimentList::read(&expt).unwrap();
        let e = list.get(0).unwrap();
        let refl = diffbragg::io::dials_refl::read_refl(c.syn.join(format!("shot_{i:03}.refl"))).unwrap();
        let img = diffbragg::image::open_image_source(c.syn.join(format!("shot_{i:03}.h5")))
            .unwrap()
            .read_image(0)
            .unwrap();
        let d = gather_from_image(e, &refl, &img, None, &gopt).unwrap();
        assert!(d.rois.len() > 20);
        let mut start = vec![0usize];
        for r in &d.rois {
            start.push(start.last().unwrap() + (r.x1 - r.x0) * (r.y1 - r.y0));
        }
        let stage1_box: BTreeMap<_, usize> = d
            .rois
            .iter()
            .enumerate()
            .map(|(k, r)| ((r.panel as u32, r.x0 as u32, r.x1 as u32, r.y0 as u32, r.y1 as u32), k))
            .collect();
        let p = &px[sid];
        let offs = p.roi_offsets();
        let mut n_shot = 0;
        for (k, r) in p.rois.iter().enumerate() {
            let Some(&k1) = stage1_box.get(&(r.panel, r.x0, r.x1, r.y0, r.y1)) else { continue };
            for j in 0..r.n_pixels() {
                let (a, b) = (offs[k] + j, start[k1] + j);
                assert_eq!(p.data[a], d.data[b] as f32, "shot {i} ROI {k} pixel {j}: data");
                assert_eq!(p.background[a], d.background[b] as f32, "shot {i} ROI {k} pixel {j}: background");
                assert_eq!(p.is_trusted(a), d.trusted[b], "shot {i} ROI {k} pixel {j}: trusted");
            }
            n_shot += 1;
        }
        assert!(n_shot >= 5, "shot {i}: only {n_shot} boxes in common with stage 1");
        n_same += n_shot;
    }
    println!("{n_same} ROIs with the same box as stage 1");
}
