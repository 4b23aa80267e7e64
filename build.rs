// Build script:
// * links the prebuilt DuckDB library with an rpath so binaries and tests find
//   it at run time without LD_LIBRARY_PATH;
// * compiles the GPU kernels' shared maths (kernels/diffbragg_model.cuh) for the
//   host through kernels/host_kernel.cpp, so tests can compare it with the CPU
//   kernel on machines without a GPU (see src/gpu/host.rs). No CUDA is needed.
fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    if let Ok(dir) = std::env::var("DUCKDB_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }

    println!("cargo:rerun-if-changed=kernels/diffbragg_model.cuh");
    println!("cargo:rerun-if-changed=kernels/host_kernel.cpp");
    cc::Build::new()
        .cpp(true)
        // Plain C-style C++: no exceptions, RTTI or standard library at link time.
        .cpp_link_stdlib(None)
        .flag_if_supported("-std=c++14")
        .flag_if_supported("-fno-exceptions")
        .flag_if_supported("-fno-rtti")
        // Round every operation like the Rust kernel's portable path (no contraction to FMA).
        .flag_if_supported("-ffp-contract=off")
        .opt_level(2)
        .warnings(true)
        .file("kernels/host_kernel.cpp")
        .compile("diffbragg_host_kernel");
}
