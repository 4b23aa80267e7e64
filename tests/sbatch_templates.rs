//! The Perlmutter sbatch templates (scripts/sbatch/) build command lines that
//! the program accepts: each is run with a stand-in `srun` (which runs the
//! command once) and `module`, against the real binary. On a machine without
//! a GPU, stage 1 and stage 2 must stop at the device choice (so their
//! arguments parsed), integrate and the pre-import at their (empty) inputs;
//! none may stop at argument parsing.

use std::path::Path;
use std::process::Command;

fn write_exe(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    let mut perm = std::fs::metadata(p).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(p, perm).unwrap();
}

#[test]
fn templates_build_command_lines_the_program_accepts() {
    if Command::new("nvidia-smi").output().map(|o| o.status.success()).unwrap_or(false) {
        eprintln!("a GPU is present: the device refusal this test relies on does not happen; skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let bin = d.join("bin");
    std::fs::create_dir(&bin).unwrap();
    // srun: drop its own options (up to the program path), run the rest once.
    write_exe(
        &bin.join("srun"),
        "#!/bin/bash\nwhile [ $# -gt 0 ] && [[ \"$1\" == -* || \"$1\" =~ ^[0-9]+$ ]]; do shift; done\nexec \"$@\"\n",
    );
    write_exe(&bin.join("module"), "#!/bin/bash\nexit 0\n");
    // The binary: claims an MPI build for the template's check, else the real one.
    let real = env!("CARGO_BIN_EXE_diffbragg");
    let wrapper = d.join("diffbragg");
    write_exe(
        &wrapper,
        &format!("#!/bin/bash\nif [ \"$1\" = info ]; then echo 'diffbragg (features: mpi=true)'; exit 0; fi\nexec {real} \"$@\"\n"),
    );
    let phil = d.join("x.phil");
    std::fs::write(&phil, "outdir = out\nexp_ref_spec_file = spec.out\n").unwrap();
    let proc_phil = d.join("proc.phil");
    std::fs::write(&proc_phil, "spotfinder.filter.min_spot_size = 2\n").unwrap();
    let store = d.join("store");
    std::fs::create_dir(&store).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sbatch");
    let p = phil.to_str().unwrap();
    let s = store.to_str().unwrap();
    let pp = proc_phil.to_str().unwrap();
    let cases: [(&str, Vec<&str>, &str); 4] = [
        ("stage1.sbatch", vec![p, "refiner.sigma_r=3"], "--device cuda"),
        ("integrate.sbatch", vec![p, pp, s, "reintegrated"], "not a diffbragg store"),
        ("preimport.sbatch", vec!["reintegrated-missing", p, "pre"], "reintegrated-missing"),
        ("stage2.sbatch", vec![s, p, "global"], "--device cuda"),
    ];
    for (script, args, want) in cases {
        let out = Command::new("bash")
            .arg(root.join(script))
            .args(&args)
            .current_dir(d)
            .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()))
            .env("DIFFBRAGG", &wrapper)
            .env("SLURM_NTASKS", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{script}: expected the device/input error\n{err}");
        assert!(
            !err.contains("unexpected argument") && !err.contains("Usage:"),
            "{script}: arguments rejected\n{err}"
        );
        assert!(err.contains(want), "{script}: expected `{want}` in\n{err}");
    }
}
