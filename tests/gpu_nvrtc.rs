//! The CUDA source compiles: NVRTC (found on the loader path or where
//! scripts/setup.sh unpacks the `nvidia-cuda-nvrtc-cu12` wheel) turns the
//! embedded kernels into PTX for the oldest and newest supported
//! architectures, ptxas assembles them, and the PTX disk cache round-trips.
//! Skipped, with the reason printed, when no NVRTC is installed.

use diffbragg::gpu::ptx;

fn nvrtc_or_skip(test: &str) -> bool {
    match ptx::ensure_nvrtc() {
        Ok(from) => {
            eprintln!("{test}: using {from}, NVRTC {:?}", ptx::nvrtc_version().unwrap());
            true
        }
        Err(e) => {
            eprintln!("{test}: SKIPPED: {e}");
            false
        }
    }
}

#[test]
fn kernels_compile_to_ptx_and_assemble() {
    if !nvrtc_or_skip("kernels_compile_to_ptx_and_assemble") {
        return;
    }
    let archs = ptx::nvrtc_archs().unwrap();
    let newest = *archs.iter().max().unwrap();
    assert!(newest >= 90, "NVRTC without Hopper support: {archs:?}");
    for arch in [ptx::MIN_ARCH, newest] {
        let text = ptx::compile(arch).unwrap_or_else(|e| panic!("compute_{arch}: {e}"));
        assert!(text.contains(&format!(".target sm_{arch}")), "compute_{arch}: no .target line");
        for e in ptx::ENTRY_POINTS {
            assert!(text.contains(&format!(".entry {e}(")), "compute_{arch}: entry {e} missing");
        }
        // f64 atomics are what stage 2 relies on.
        assert!(text.contains("atom.global.add.f64"), "compute_{arch}: no f64 atomic add");
        let report = ptx::ptxas_report(arch).unwrap_or_else(|e| panic!("sm_{arch}: {e}"));
        eprintln!("sm_{arch} ptxas:\n{report}");
        for e in ptx::ENTRY_POINTS {
            assert!(report.contains(&format!("'{e}'")), "sm_{arch}: ptxas did not assemble {e}");
        }
    }
}

#[test]
fn ptx_cache_is_written_atomically_and_reused() {
    if !nvrtc_or_skip("ptx_cache_is_written_atomically_and_reused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("ptx");
    let (a, hit) = ptx::cached_ptx_in(Some(&cache), 70).unwrap();
    assert!(!hit, "empty cache reported a hit");
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].to_string_lossy().to_string();
    assert!(name.ends_with("-compute_70.ptx") && !name.contains(".tmp-"), "{name}");
    let (b, hit) = ptx::cached_ptx_in(Some(&cache), 70).unwrap();
    assert!(hit && a == b);
    // A damaged entry is recompiled, not loaded.
    std::fs::write(cache.join(&name), "garbage").unwrap();
    let (c, hit) = ptx::cached_ptx_in(Some(&cache), 70).unwrap();
    assert!(!hit);
    // NVRTC numbers its call sequences ("// callseq N") across a process, so
    // compare the PTX without comments.
    assert_eq!(strip_comments(&c), strip_comments(&a));
    assert_eq!(std::fs::read_to_string(cache.join(&name)).unwrap(), c);
}

fn strip_comments(ptx: &str) -> String {
    ptx.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}
