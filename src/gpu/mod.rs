//! The GPU backend and the one interface the stages use to run the kernel.
//!
//! * [`backend`]: the [`Backend`] trait (batches of shots, values, derivative
//!   rows, Fhkl-scale gradient), the CPU implementation, `--device
//!   cpu|cuda|auto` and the device choice per MPI rank.
//! * [`cuda`]: the CUDA implementation (cudarc 0.19, NVRTC at run time).
//! * [`ptx`]: the embedded CUDA source, NVRTC discovery, the PTX disk cache.
//! * [`ops`]: the evaluations predict and simulate make through a backend
//!   (a pixel list, the full detector, the laue-mode mean wavelength).
//! * [`layout`]: the packed batch the kernels read (`#[repr(C)]` mirrors of
//!   `kernels/diffbragg_model.cuh`).
//! * [`host`]: the kernels' maths compiled for the host (tests only: proves the
//!   CUDA source computes what the CPU kernel computes, without a GPU).
//! * [`bench`]: `diffbragg bench kernel --device cuda`.
//!
//! The maths lives once per language: `src/kernel/model.rs` + `cpu.rs` (Rust)
//! and `kernels/diffbragg_model.cuh` (CUDA/C++); `tests/host_kernel.rs` holds
//! them to ≤ 1e-6 relative agreement on every shape and gradient.

pub mod backend;
pub mod bench;
pub mod cuda;
#[doc(hidden)]
pub mod host;
pub mod layout;
pub mod ops;
pub mod ptx;

pub use backend::{
    select, select_for, Backend, BatchOutput, CpuBackend, DeviceArgs, DeviceChoice, Mode, PixelBatch,
};
pub use cuda::CudaBackend;
