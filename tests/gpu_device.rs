//! Device selection and the backend interface.
//!
//! On a machine without a CUDA driver (CI): `--device cuda` fails with one
//! clear error (library call and CLI), `--device auto` falls back to the CPU
//! and says so. On a machine with a GPU the same tests instead run the CUDA
//! backend against the CPU kernel (values, derivatives, Fhkl gradient,
//! multi-shot batches, resident pixels reused across evaluations).

use diffbragg::cli::bench::{find_rois, standard_case};
use diffbragg::dist::SingleProcess;
use diffbragg::gpu::{cuda, select, select_for, Backend, CpuBackend, DeviceChoice, Mode, PixelBatch};
use diffbragg::kernel::{pixels_from_rois, FhklScales, FhklTable, Param, Pixel, PreparedShot, ShotModel};

fn gpu_present() -> bool {
    matches!(cuda::device_count(), Ok(n) if n > 0)
}

fn case() -> (ShotModel, FhklTable, Vec<Pixel>) {
    let (m, mut fhkl) = standard_case(4).unwrap();
    let ids: Vec<u32> = (0..fhkl.n_grid() as u32).map(|g| g % 5000).collect();
    fhkl.set_asu_id_vec(&ids).unwrap();
    let rois = find_rois(&m, &fhkl, 6, 9).unwrap();
    let (px, _) = pixels_from_rois(&rois, &m.detector).unwrap();
    (m, fhkl, px)
}

fn close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let max = b.iter().fold(0.0f64, |x, y| x.max(y.abs()));
    assert!(max > 0.0, "{what}: reference is zero");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-6 * y.abs() + 1e-10 * max, "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn cuda_fails_hard_without_a_gpu_and_auto_falls_back() {
    if gpu_present() {
        eprintln!("a GPU is present: the failure path is not testable here (see cuda_backend_matches_cpu)");
        return;
    }
    let e = select(DeviceChoice::Cuda, &SingleProcess).err().expect("--device cuda must fail without a GPU");
    let msg = e.to_string();
    assert!(msg.contains("--device cuda"), "{msg}");
    assert!(msg.contains("CUDA") || msg.contains("libcuda"), "{msg}");
    let b = select(DeviceChoice::Auto, &SingleProcess).unwrap();
    assert_eq!(b.name(), "cpu");
    assert_eq!(select(DeviceChoice::Cpu, &SingleProcess).unwrap().name(), "cpu");
}

#[test]
fn cpu_only_work_takes_the_cpu_or_fails_with_cuda() {
    // With or without a GPU: the reason decides, CUDA is not probed.
    let why = "the nanoBragg sub-pixel convention";
    for c in [DeviceChoice::Cpu, DeviceChoice::Auto] {
        assert_eq!(select_for(c, &SingleProcess, Some(why)).unwrap().name(), "cpu");
    }
    let e =
        select_for(DeviceChoice::Cuda, &SingleProcess, Some(why)).err().expect("cuda must fail").to_string();
    assert!(e.contains("--device cuda") && e.contains(why) && e.contains("--device cpu"), "{e}");
    // Without a reason it is `select`.
    assert_eq!(select_for(DeviceChoice::Cpu, &SingleProcess, None).unwrap().name(), "cpu");
    assert_eq!(
        select_for(DeviceChoice::Auto, &SingleProcess, None).unwrap().name(),
        if gpu_present() { "cuda" } else { "cpu" }
    );
}

#[test]
fn cli_device_cuda_is_a_clear_error_without_a_gpu() {
    if gpu_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_diffbragg"))
        .current_dir(dir.path())
        .args(["bench", "kernel", "--device", "cuda", "--rois", "2", "--sources", "2", "--repeat", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {:?}", out.status);
    assert!(err.contains("--device cuda") && err.contains("no CUDA driver"), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_diffbragg"))
        .args(["bench", "kernel", "--device", "tpu"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cpu, cuda, auto"));
}

/// Run `backend` on a two-shot batch in every mode and compare with the CPU kernel.
fn check_backend(backend: &dyn Backend) {
    let (m, fhkl, px) = case();
    let mut m2 = m.clone();
    m2.scale = 0.5;
    m2.crystal.rot_xyz = [1e-4, -2e-4, 5e-5];
    let mut params = Param::stage1_defaults(&m.crystal);
    params.push(Param::DetzShift);
    let s1 = PreparedShot::new(&m, &fhkl, None, &params).unwrap();
    let s2 = PreparedShot::new(&m2, &fhkl, None, &params[..4]).unwrap();
    let batch = PixelBatch::new(vec![px.clone(), px[..px.len() / 2].to_vec()]);
    for _ in 0..2 {
        // twice: the second evaluation reuses resident pixels and the Fhkl grid
        let out = backend.evaluate(&[&s1, &s2], &batch, Mode::Derivs, None).unwrap();
        for (k, (s, p)) in [(&s1, batch.shot(0)), (&s2, batch.shot(1))].into_iter().enumerate() {
            let cpu = s.forward_with_derivs(p).unwrap();
            close(&out.values[k], &cpu.values, &format!("shot {k} values"));
            assert_eq!(out.derivs[k].len(), cpu.derivs.len());
            for (j, d) in cpu.derivs.iter().enumerate() {
                close(&out.derivs[k][j], d, &format!("shot {k} ∂{}", s.params()[j].name()));
            }
        }
    }
    let f = PreparedShot::new(&m, &fhkl, None, &[]).unwrap();
    close(&backend.forward(&f, &px).unwrap(), &f.forward(&px).unwrap(), "forward");
    let scales =
        FhklScales { n_channels: 1, values: (0..fhkl.n_asu()).map(|i| 1.0 + (i % 3) as f64 * 0.1).collect() };
    let (a, b) = (
        PreparedShot::new(&m, &fhkl, Some(&scales), &[]).unwrap(),
        PreparedShot::new(&m2, &fhkl, Some(&scales), &[]).unwrap(),
    );
    let w: Vec<f64> = (0..batch.len()).map(|i| ((i % 11) as f64 - 5.0) * 0.1).collect();
    let g = backend.evaluate(&[&a, &b], &batch, Mode::FhklGrad, Some(&w)).unwrap();
    assert!(g.values.is_empty());
    let n0 = batch.shot(0).len();
    let mut want = a.fhkl_scale_gradient(batch.shot(0), &w[..n0]).unwrap();
    let g2 = b.fhkl_scale_gradient(batch.shot(1), &w[n0..]).unwrap();
    want.iter_mut().zip(&g2).for_each(|(x, y)| *x += y);
    close(&g.fhkl_grad, &want, "Fhkl gradient");
    // Argument errors are named, not panics.
    let e = backend.evaluate(&[&a, &b], &batch, Mode::FhklGrad, Some(&w[1..])).unwrap_err();
    assert!(e.to_string().contains("weights"), "{e}");
    let e = backend.evaluate(&[&a], &batch, Mode::Forward, None).unwrap_err();
    assert!(e.to_string().contains("pixel lists"), "{e}");
    // Shots without pixels (laue mode's λ̄ pass of a shot without spots): empty
    // rows, one per parameter, and a zero gradient of the full length.
    let empty = PixelBatch::new(vec![vec![], vec![]]);
    let out = backend.evaluate(&[&s1, &s2], &empty, Mode::Derivs, None).unwrap();
    assert_eq!(out.values, vec![Vec::<f64>::new(); 2]);
    assert_eq!(out.derivs[0], s1.forward_with_derivs(&[]).unwrap().derivs);
    assert_eq!(out.derivs[1], vec![Vec::<f64>::new(); 4]);
    assert_eq!(backend.forward(&f, &[]).unwrap(), Vec::<f64>::new());
    let g = backend.evaluate(&[&a, &b], &empty, Mode::FhklGrad, Some(&[])).unwrap();
    assert_eq!(g.fhkl_grad, a.fhkl_scale_gradient(&[], &[]).unwrap());
    assert!(!g.fhkl_grad.is_empty());
}

#[test]
fn cpu_backend_matches_the_kernel() {
    check_backend(&CpuBackend);
    assert_eq!(CpuBackend.name(), "cpu");
}

#[test]
fn cuda_backend_matches_cpu() {
    if !gpu_present() {
        eprintln!(
            "cuda_backend_matches_cpu: SKIPPED: {}",
            cuda::device_count().err().map_or("no device".into(), |e| e.to_string())
        );
        return;
    }
    let b = select(DeviceChoice::Cuda, &SingleProcess).unwrap();
    assert_eq!(b.name(), "cuda");
    eprintln!("{}", b.describe());
    check_backend(&*b);
    drop(b); // buffers, module, stream and context released in order without errors
}

#[test]
fn pixel_batches_have_distinct_identities() {
    let p = vec![Pixel { panel: 0, fast: 1, slow: 2 }];
    let a = PixelBatch::new(vec![p.clone(), vec![], p.clone()]);
    let b = PixelBatch::single(&p);
    assert_eq!(a.n_shots(), 3);
    assert_eq!(a.shot(1).len(), 0);
    assert_eq!(a.shot(2), &p[..]);
    assert_eq!(a.len(), 2);
    assert_eq!(b.all(), &p[..]);
    // Two batches with identical content are still two device residents.
    assert_ne!(format!("{a:?}").split(',').next(), format!("{b:?}").split(',').next());
}

/// The GPU benchmark's code path (stage-1 and stage-2 figures, the CPU check
/// line) on the CPU backend, with a tiny case.
#[test]
fn gpu_bench_runs_on_any_backend() {
    let a = diffbragg::cli::bench::KernelBenchArgs {
        rois: 2,
        roi_size: 5,
        sources: 2,
        domains: vec![1, 2],
        repeat: 1,
        mode: "both".into(),
        simd: None,
        threads: None,
        reference: None,
        device: DeviceChoice::Cpu,
        batch_shots: 2,
    };
    diffbragg::gpu::bench::run(&CpuBackend, &a).unwrap();
}
