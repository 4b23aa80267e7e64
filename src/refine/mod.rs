//! The refinement toolbox shared by stage 1 (per-shot) and stage 2 (global Fhkl):
//! * [`lbfgsb`]: a deterministic L-BFGS-B with scipy's stopping rules;
//! * [`params`]: diffBragg's reparameterisation (x₀ = 1) and named parameter sets;
//! * [`restraints`]: Gaussian restraints on parameter values and the Nvol restraint;
//! * [`likelihood`]: the pixel target (Gaussian with model-based variance), its
//!   gradient assembly and curvature, and the least-squares starting scale;
//! * [`uncertainty`]: standard errors from the Fisher information at the optimum.

// `!(a > b)` is how these modules reject NaN along with bad values, and index
// loops keep the numerical kernels' summation order explicit.
#![allow(clippy::neg_cmp_op_on_partial_ord, clippy::needless_range_loop)]

pub mod lbfgsb;
pub mod likelihood;
pub mod params;
pub mod restraints;
pub mod uncertainty;
