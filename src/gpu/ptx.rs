//! The CUDA source (embedded in the binary), its run-time compilation to PTX
//! with NVRTC (loaded dynamically through cudarc), and a disk cache of the PTX.
//!
//! * Source = `kernels/diffbragg_model.cuh` + `kernels/diffbragg.cu` (the
//!   header first; its include guard turns the `.cu`'s `#include` off).
//! * PTX is compiled for the virtual architecture `compute_XY` of the device
//!   (capped at the newest NVRTC supports; the driver JIT-compiles PTX for
//!   newer GPUs). Double-precision `atomicAdd` needs `compute_60`.
//! * Cache: `$XDG_CACHE_HOME/diffbragg-rs/ptx` or `$HOME/.cache/diffbragg-rs/ptx`,
//!   one file per (source + options hash, NVRTC version, architecture), written
//!   atomically (temporary file + rename). A cache that cannot be written is
//!   skipped with a warning.
//! * NVRTC is found on the loader path (`LD_LIBRARY_PATH`, a CUDA toolkit), or
//!   in a few conventional places ([`nvrtc_search_dirs`]), including the PyPI
//!   wheel `nvidia-cuda-nvrtc-cu12` that `scripts/setup.sh` unpacks under
//!   `$HOME/.cache/diffbragg-rs/nvrtc-cu12`.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The shared maths header.
pub const MODEL_HEADER: &str = include_str!("../../kernels/diffbragg_model.cuh");
/// The kernel entry points.
pub const KERNELS: &str = include_str!("../../kernels/diffbragg.cu");
/// Entry points the backend loads.
pub const ENTRY_POINTS: [&str; 4] = ["db_forward", "db_gradient", "db_fhkl_gradient", "db_reduce"];
/// Oldest architecture the kernels support (f64 atomicAdd).
pub const MIN_ARCH: u32 = 60;

/// The full NVRTC program text.
pub fn kernel_source() -> String {
    format!("{MODEL_HEADER}\n{KERNELS}")
}

/// Compiler options (besides the architecture). Precise division and square
/// root, no flush-to-zero: the kernels must match the CPU kernel in f64.
pub fn compile_options() -> Vec<String> {
    vec!["--std=c++14".into(), "--prec-div=true".into(), "--prec-sqrt=true".into(), "--ftz=false".into()]
}

/// Directories where libnvrtc may be, besides the loader's own search path.
pub fn nvrtc_search_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = std::env::var_os(var) {
            v.push(PathBuf::from(&d).join("lib64"));
            v.push(PathBuf::from(&d).join("lib"));
        }
    }
    v.push(PathBuf::from("/usr/local/cuda/lib64"));
    if let Some(c) = std::env::var_os("DIFFBRAGG_CACHE") {
        v.push(PathBuf::from(c).join("nvrtc-cu12/nvidia/cuda_nvrtc/lib"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        v.push(PathBuf::from(home).join(".cache/diffbragg-rs/nvrtc-cu12/nvidia/cuda_nvrtc/lib"));
    }
    v
}

/// Make sure NVRTC can be loaded: already on the loader path, or pre-loaded
/// from [`nvrtc_search_dirs`] (cudarc then finds it by its soname). Returns a
/// description of where it came from.
pub fn ensure_nvrtc() -> Result<String> {
    // SAFETY: probing with dlopen runs the library's initialisers only.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Ok("libnvrtc from the loader path".into());
    }
    for dir in nvrtc_search_dirs() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        let mut names: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libnvrtc.so")))
            .collect();
        names.sort();
        for lib in names {
            if preload(&lib) && unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                return Ok(format!("libnvrtc from {}", lib.display()));
            }
        }
    }
    Err(Error::msg(format!(
        "NVRTC (libnvrtc.so) not found: searched the loader path and {}. Install the CUDA toolkit, or \
         `pip install --target $HOME/.cache/diffbragg-rs/nvrtc-cu12 nvidia-cuda-nvrtc-cu12` (scripts/setup.sh does this)",
        nvrtc_search_dirs().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )))
}

/// dlopen a library globally and keep it loaded for the life of the process.
fn preload(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: dlopen with a valid C string; the handle is deliberately never closed.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    !h.is_null()
}

/// NVRTC's version (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    ensure_nvrtc()?;
    let (mut a, mut b) = (0, 0);
    // SAFETY: NVRTC is loadable (checked above); two out-pointers.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::msg(format!("nvrtcVersion failed: {r:?}")));
    }
    Ok((a, b))
}

/// Architectures NVRTC can compile for (e.g. 50, 52, …, 90).
pub fn nvrtc_archs() -> Result<Vec<u32>> {
    ensure_nvrtc()?;
    let mut n = 0;
    // SAFETY: NVRTC is loadable; the array has the reported length.
    unsafe {
        if cudarc::nvrtc::sys::nvrtcGetNumSupportedArchs(&mut n)
            != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS
            || n <= 0
        {
            return Err(Error::msg("nvrtcGetNumSupportedArchs failed"));
        }
        let mut v = vec![0i32; n as usize];
        if cudarc::nvrtc::sys::nvrtcGetSupportedArchs(v.as_mut_ptr())
            != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS
        {
            return Err(Error::msg("nvrtcGetSupportedArchs failed"));
        }
        Ok(v.into_iter().map(|x| x as u32).collect())
    }
}

/// The architecture to compile for on a device of compute capability `cc`
/// (e.g. 90): the newest NVRTC supports that is not newer than the device.
pub fn choose_arch(cc: u32, supported: &[u32]) -> Result<u32> {
    if cc < MIN_ARCH {
        return Err(Error::msg(format!(
            "compute capability {}.{} is too old: the kernels need {}.{} (double-precision atomicAdd)",
            cc / 10,
            cc % 10,
            MIN_ARCH / 10,
            MIN_ARCH % 10
        )));
    }
    supported
        .iter()
        .copied()
        .filter(|&a| a >= MIN_ARCH && a <= cc)
        .max()
        .ok_or_else(|| Error::msg(format!("this NVRTC supports none of the architectures {MIN_ARCH}..={cc}")))
}

/// Compile the kernels to PTX for `compute_{arch}` (no cache).
pub fn compile(arch: u32) -> Result<String> {
    ensure_nvrtc()?;
    let mut options = compile_options();
    options.push(format!("--gpu-architecture=compute_{arch}"));
    let opts =
        cudarc::nvrtc::CompileOptions { options, name: Some("diffbragg.cu".into()), ..Default::default() };
    let src = kernel_source();
    // cudarc panics (rather than erring) if a symbol is missing from an odd libnvrtc.
    let res = std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(&src, opts))
        .map_err(|_| Error::msg("NVRTC failed to load (missing symbol?)"))?;
    match res {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => {
            Err(Error::msg(format!("NVRTC could not compile the kernels:\n{}", log.to_string_lossy())))
        }
        Err(e) => Err(Error::msg(format!("NVRTC: {e}"))),
    }
}

/// Compile the kernels all the way to machine code for `sm_{sm}` (NVRTC runs
/// ptxas) and return ptxas's resource report (registers, stack, spills per
/// entry point). A diagnostic: proves the PTX assembles without a GPU.
pub fn ptxas_report(sm: u32) -> Result<String> {
    use cudarc::nvrtc::sys as nv;
    use std::ffi::CString;
    ensure_nvrtc()?;
    let ok = |r: nv::nvrtcResult, what: &str| {
        if r == nv::nvrtcResult::NVRTC_SUCCESS {
            Ok(())
        } else {
            Err(Error::msg(format!("NVRTC {what}: {r:?}")))
        }
    };
    let src = CString::new(kernel_source()).map_err(|_| Error::msg("kernel source contains NUL"))?;
    let name = CString::new("diffbragg.cu").expect("no NUL");
    let mut opts = compile_options();
    opts.push(format!("--gpu-architecture=sm_{sm}"));
    opts.push("--ptxas-options=-v".into());
    let opts: Vec<CString> = opts.into_iter().map(|o| CString::new(o).expect("no NUL")).collect();
    let ptrs: Vec<*const std::ffi::c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: nv::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: NVRTC is loaded; every pointer is a live NUL-terminated string or
    // an out-parameter of the right type; the program is destroyed below.
    unsafe {
        ok(
            nv::nvrtcCreateProgram(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            ),
            "create",
        )?;
        let rc = nv::nvrtcCompileProgram(prog, ptrs.len() as i32, ptrs.as_ptr());
        let mut n = 0usize;
        let mut log = String::new();
        if nv::nvrtcGetProgramLogSize(prog, &mut n) == nv::nvrtcResult::NVRTC_SUCCESS && n > 0 {
            let mut buf = vec![0u8; n];
            if nv::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut std::ffi::c_char)
                == nv::nvrtcResult::NVRTC_SUCCESS
            {
                log = String::from_utf8_lossy(&buf[..n - 1]).into_owned();
            }
        }
        let mut cubin = 0usize;
        let got =
            if rc == nv::nvrtcResult::NVRTC_SUCCESS { nv::nvrtcGetCUBINSize(prog, &mut cubin) } else { rc };
        nv::nvrtcDestroyProgram(&mut prog);
        ok(rc, &format!("compile for sm_{sm}:\n{log}"))?;
        ok(got, "cubin size")?;
        if cubin == 0 {
            return Err(Error::msg(format!("NVRTC produced no machine code for sm_{sm}")));
        }
        Ok(log)
    }
}

/// The PTX cache folder.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("diffbragg-rs").join("ptx"))
}

/// Cache key of the PTX for `arch` with NVRTC `version`: a hash of the source
/// and options, the NVRTC version and the architecture.
pub fn cache_key(arch: u32, version: (i32, i32)) -> String {
    let mut h = Sha256::new();
    h.update(kernel_source().as_bytes());
    for o in compile_options() {
        h.update([0u8]);
        h.update(o.as_bytes());
    }
    let d = h.finalize();
    let hex: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("diffbragg-{hex}-nvrtc{}.{}-compute_{arch}.ptx", version.0, version.1)
}

/// PTX for `arch`, from `dir` when cached there, else compiled and stored
/// (atomically). Returns the PTX and whether it came from the cache.
pub fn cached_ptx_in(dir: Option<&Path>, arch: u32) -> Result<(String, bool)> {
    let version = nvrtc_version()?;
    let key = cache_key(arch, version);
    if let Some(d) = dir {
        if let Ok(s) = std::fs::read_to_string(d.join(&key)) {
            if s.contains(".entry db_forward") && !s.contains('\0') {
                return Ok((s, true));
            }
        }
    }
    let ptx = compile(arch)?;
    if let Some(d) = dir {
        if let Err(e) = write_atomic(d, &key, &ptx) {
            eprintln!("warning: PTX cache {} not written: {e}", d.display());
        }
    }
    Ok((ptx, false))
}

/// [`cached_ptx_in`] the default [`cache_dir`].
pub fn cached_ptx(arch: u32) -> Result<(String, bool)> {
    cached_ptx_in(cache_dir().as_deref(), arch)
}

fn write_atomic(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_choice() {
        let sup = [50, 52, 60, 61, 70, 75, 80, 86, 89, 90];
        assert_eq!(choose_arch(90, &sup).unwrap(), 90);
        assert_eq!(choose_arch(87, &sup).unwrap(), 86);
        assert_eq!(choose_arch(100, &sup).unwrap(), 90); // newer GPU: PTX JIT by the driver
        assert!(choose_arch(52, &sup).unwrap_err().to_string().contains("too old"));
        assert!(choose_arch(70, &[50, 52]).is_err());
    }

    #[test]
    fn source_is_self_contained_and_keys_differ() {
        let s = kernel_source();
        assert!(s.find("#define DB_MODEL_CUH").unwrap() < s.find("extern \"C\" __global__").unwrap());
        for e in ENTRY_POINTS {
            assert!(s.contains(&format!("__global__ void {e}(")), "{e}");
        }
        assert_ne!(cache_key(90, (12, 6)), cache_key(80, (12, 6)));
        assert_ne!(cache_key(90, (12, 6)), cache_key(90, (12, 8)));
    }
}
