//! The whole pipeline through the command line, as a user runs it: synth →
//! hopper → integrate (the user's simulation.phil and sim_processing.phil) →
//! the stage-2 pre-import and the global refinement with the user's
//! stage_two_test.phil and the seed README's command lines (site paths
//! replaced with --cmdlinePhil) → report.
//!
//! Checks on the pre-import: every ROI is a kept prediction with its index,
//! the pixel values are the image's (read independently with h5py) divided
//! by adu_per_photon, the spectra and stage-1 rows travel with the shots, a
//! truncated image becomes one failure row, and a rerun adds nothing.

use std::path::Path;
use std::process::{Command, Output};

use arrow::array::AsArray;
use arrow::datatypes::{Float32Type, Int32Type, Int64Type};

use diffbragg::store::Store;
use diffbragg::testutil::shared;

fn dbx(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_diffbragg")).args(args).output().expect("run diffbragg");
    assert!(
        out.status.success(),
        "diffbragg {}\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn count(store: &Store, sql: &str) -> i64 {
    let q = store.query(sql).unwrap();
    q.batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// The user's stage_two_test.phil names site files; these replace them.
const S2: [&str; 7] = [
    "simulator.structure_factors.mtz_name=None",
    "default_F=100",
    "space_group=P43212",
    "roi.hotpixel_mask=None",
    "refiner.reference_geom=None",
    "refiner.sigma_r=3",
    "downsamp_spec.delta_en=1",
];

#[test]
fn synth_to_stage_two_through_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (synth, stage1, integ, pre, global) =
        (d.join("synth"), d.join("stage1"), d.join("reintegrated"), d.join("preimport"), d.join("global"));
    dbx(&[
        "synth",
        "--out",
        s(&synth),
        "--shots",
        "4",
        "--pixels",
        "384",
        "--distance",
        "50",
        "--channels",
        "20",
        "--seed",
        "3",
    ]);
    dbx(&[
        "hopper",
        s(&synth.join("hopper.phil")),
        "--cmdlinePhil",
        &format!("outdir={}", s(&stage1)),
        "--no-progress",
    ]);
    let seed = shared("seed");
    dbx(&[
        "integrate",
        s(&seed.join("simulation.phil")),
        s(&seed.join("sim_processing.phil")),
        s(&stage1),
        s(&integ),
        "--hopInputName",
        "pred",
        "--cmdlinePhil",
        "threshold=1e2",
        "spotfinder.lookup.mask=None",
        "integration.lookup.mask=None",
    ]);
    let istore = Store::open(&integ).unwrap();
    let n_pred_shots = count(&istore, "SELECT count(DISTINCT shot_id) FROM predictions");
    assert_eq!(n_pred_shots, 4);

    // One image truncated after prediction: the pre-import records it and goes on.
    let victim = synth.join("shot_002.h5");
    let bytes = std::fs::read(&victim).unwrap();
    let saved = d.join("shot_002.h5.saved");
    std::fs::write(&saved, &bytes).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 3]).unwrap();

    // srun ... ens.hopper reintegrated/pred.pkl stage_two_test.phil --outdir preimport --maxSigma 3
    //   --saveFreq 10 --preImport --refl predicted_refls   (our pred.parquet stands for the folder)
    let phil2 = seed.join("stage_two_test.phil");
    let mut pre_args = vec![
        "ens-hopper",
        s(&integ).to_string().leak() as &str,
        s(&phil2).to_string().leak() as &str,
        "--outdir",
        s(&pre).to_string().leak() as &str,
        "--maxSigma",
        "3",
        "--saveFreq",
        "10",
        "--preImport",
        "--refl",
        "predicted_refls",
        "--cmdlinePhil",
    ];
    pre_args.extend(S2);
    let pred_file = integ.join("pred.parquet");
    pre_args[1] = s(&pred_file).to_string().leak();
    let out = dbx(&pre_args);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("3 shot(s) imported, 1 failed"), "{log}");
    let p = Store::open(&pre).unwrap();
    assert_eq!(
        count(&p, "SELECT count(*) FROM failures WHERE stage = 'preimport' AND reason = 'bad_image'"),
        1
    );

    // Every ROI is a kept prediction of its shot, with the prediction's index.
    let n_roi = count(&p, "SELECT count(*) FROM pixels");
    assert!(n_roi > 100, "{n_roi} ROIs");
    let joined = count(
        &p,
        &format!(
            "SELECT count(*) FROM pixels x JOIN read_parquet('{}/predictions/*.parquet') q \
             ON q.shot_id = x.shot_id AND q.pred_id = x.refl_id \
             WHERE q.miller_index = x.hkl",
            s(&integ)
        ),
    );
    assert_eq!(joined, n_roi, "each ROI matches its prediction's index");
    // Pixels per ROI: the box area; trust and background are per pixel.
    assert_eq!(
        count(
            &p,
            "SELECT count(*) FROM pixels WHERE len(data) = (bbox[2] - bbox[1]) * (bbox[4] - bbox[3]) \
             AND len(background) = len(data) AND len(trusted) = len(data)"
        ),
        n_roi
    );
    // Spectra and stage-1 rows travel with each imported shot, unchanged.
    for (table, key) in [("spectra", "sum(weight * wavelength)"), ("shot_params", "sum(spot_scales)")] {
        let q = format!(
            "SELECT count(*) FROM (SELECT shot_id, count(*) AS n, {key} AS k FROM {table} GROUP BY shot_id) a \
             JOIN (SELECT shot_id, count(*) AS n, {key} AS k FROM read_parquet('{}/{table}/*.parquet') GROUP BY shot_id) b \
             USING (shot_id) WHERE a.n = b.n AND a.k = b.k",
            s(&integ)
        );
        assert_eq!(count(&p, &q), 3, "{table}");
    }

    // The pixel values are the image's, in photons (adu_per_photon = 1 here), at the bbox.
    let b = p
        .query(
            "SELECT x.bbox[1], x.bbox[2], x.bbox[3], x.bbox[4], x.data, e.image_file FROM pixels x \
             JOIN experiments e USING (shot_id) ORDER BY x.shot_id, x.roi_id LIMIT 1",
        )
        .unwrap();
    let b = &b.batches[0];
    let c = |k: usize| b.column(k).as_primitive::<Int32Type>().value(0);
    let (x0, x1, y0, y1) = (c(0), c(1), c(2), c(3));
    let data = b.column(4).as_list::<i32>().value(0);
    let data = data.as_primitive::<Float32Type>();
    let img = b.column(5).as_string::<i32>().value(0).to_string();
    let py = format!(
        "import h5py, numpy as np\nv = h5py.File('{img}', 'r')['images'][0, 0, {y0}:{y1}, {x0}:{x1}]\nprint(' '.join(repr(float(x)) for x in np.ravel(v)))"
    );
    let out = Command::new("python3").arg("-c").arg(&py).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want: Vec<f64> =
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!(want.len(), data.len());
    for (k, w) in want.iter().enumerate() {
        assert_eq!(data.value(k) as f64, (*w as f32) as f64, "pixel {k}");
    }

    // A rerun skips every shot already there (the failed one included) and adds nothing.
    let before = count(&p, "SELECT count(*) FROM pixels");
    let out = dbx(&pre_args);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 shot(s) imported, 0 failed, 4 already present"));
    let p = Store::open(&pre).unwrap();
    assert_eq!(count(&p, "SELECT count(*) FROM pixels"), before);
    assert_eq!(count(&p, "SELECT count(*) FROM failures"), 1);
    assert_eq!(count(&p, "SELECT count(*) FROM shot_params"), 3);

    // srun ... ens.hopper preimport/... stage_two_test.phil --outdir global --maxSigma 3 --saveFreq 10
    //   --refl ens.hopper.imported --cmdlinePhil fix.Nabc=True fix.ucell=True fix.RotXYZ=True
    //   fix.Fhkl=False fix.G=False sigmas.G=1e-2
    let mut g_args = vec![
        "ens-hopper",
        s(&pre).to_string().leak() as &str,
        s(&phil2).to_string().leak() as &str,
        "--outdir",
        s(&global).to_string().leak() as &str,
        "--maxSigma",
        "3",
        "--saveFreq",
        "10",
        "--refl",
        "ens.hopper.imported",
        "--maxEvals",
        "20",
        "--quiet",
        "--cmdlinePhil",
        "fix.Nabc=True",
        "fix.ucell=True",
        "fix.RotXYZ=True",
        "fix.Fhkl=False",
        "fix.G=False",
        "sigmas.G=1e-2",
    ];
    g_args.extend(S2);
    let out = dbx(&g_args);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("3 shots") && log.contains("20 evaluations"), "{log}");
    assert!(global.join("optimized_channel0.mtz").is_file());
    let p = Store::open(&pre).unwrap();
    assert_eq!(count(&p, "SELECT count(*) FROM shot_params WHERE stage = 'stage2'"), 3);

    // The report of every folder.
    for dir in [&stage1, &integ, &pre] {
        dbx(&["report", s(dir)]);
        assert!(dir.join("report/summary.txt").is_file());
    }
    let out = dbx(&[
        "report",
        s(&pre),
        "--reference",
        s(&synth.join("F.mtz")),
        "--reference-columns",
        "F",
        "--bins",
        "3",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let overall = text.lines().find(|l| l.trim_start().starts_with("overall")).expect("CC table");
    let cc: f64 = overall.split_whitespace().nth(1).unwrap().parse().unwrap();
    // From flat F after 20 evaluations on 3 small shots the refined F already correlate with the truth.
    assert!(cc > 0.5, "{overall}");
    std::fs::rename(&saved, &victim).unwrap();
}
