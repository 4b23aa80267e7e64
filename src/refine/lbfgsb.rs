//! L-BFGS-B: limited-memory quasi-Newton minimisation with optional box bounds.
//!
//! The algorithm is Byrd, Lu, Nocedal & Zhu (1995) as revised in L-BFGS-B 3.0
//! (Morales & Nocedal 2011), the version behind scipy's
//! `minimize(method="L-BFGS-B")`. Each iteration:
//! 1. finds the generalised Cauchy point (GCP): the first local minimiser of the
//!    quadratic model along the projected steepest-descent path;
//! 2. minimises the model over the variables left free at the GCP (direct primal
//!    method via the compact representation `B = θI − W·M·Wᵀ`, `W = [Y, θS]`), then
//!    projects that Newton step into the box, backtracking to the feasible
//!    segment when the projected step is not a descent direction (the 3.0 change);
//! 3. runs a Moré–Thuente line search (MINPACK-2 `dcsrch` semantics,
//!    ftol = 1e-3, gtol = 0.9, xtol = 0.1, at most `maxls` trial points) along
//!    `d = z − x`, with step 1/‖d‖ on the first iteration of a problem that is not
//!    fully boxed and the step capped so that the iterate stays in the box;
//! 4. stores the pair (s, y) unless `sᵀy ≤ ε·(−gᵀs)`.
//!
//! Termination is scipy's, checked in scipy's order after every accepted
//! iterate: observer stop, `maxiter` iterations, more than `maxfun` evaluations
//! (so a line search may overrun `maxfun`, as in scipy), then
//! `max_i |proj g_i| ≤ gtol`, then `(f_k − f_{k+1})/max(|f_k|,|f_{k+1}|,1) ≤ ftol`.
//! The projected-gradient test is also applied at the starting point.
//!
//! # Why our own implementation
//! The Rust crates are either unbounded (argmin, liblbfgs), young (lbfgsb-rs-pure)
//! or wrap C (lbfgsb). More importantly, stage 2 runs one replica of the optimiser
//! on every MPI rank and feeds it an allreduced (f, g): every rank must produce
//! the same iterate bit for bit. This code is single-threaded, allocation order
//! independent, uses no FMA contraction and no hash-ordered containers, so equal
//! inputs give equal outputs on every rank.
//!
//! # Deviations from the reference code, by design
//! * The 2col×2col subspace matrix `K` is rebuilt from cached `SᵀS`, `SᵀY`, `YᵀY`
//!   and sums over the (smaller of the) free or active sets, instead of being
//!   updated incrementally. Same mathematics, different rounding.
//! * Breakpoints in the Cauchy search are ordered by (t, index); ties are
//!   therefore broken by coordinate index.
//! * An invalid line-search start (initial step above the step cap) counts as a
//!   line-search failure (restart, or stop when the memory is empty) instead of
//!   re-evaluating the same point until `maxls` is reached.
//! * A non-finite f or g, or an error from the closure, stops with
//!   [`Status::EvaluationFailed`] and returns the last accepted iterate.
//!
//! # Evaluation count
//! A trial point equal (bitwise) to the last evaluated point reuses that
//! evaluation, as scipy's `ScalarFunction` does, so `n_eval` counts closure calls
//! and matches scipy's `nfev`.
//!
//! # Resuming (checkpoints)
//! [`minimize_resumable`] reports the optimiser's complete [`State`] at the top
//! of every iteration (after the memory update of the previous one) and can
//! start from such a state instead of x0. Everything the later iterations
//! depend on is in it (x, f, g, counters, the (s, y) memory and its inner
//! products, θ; the Cholesky factor is recomputed bit-identically, the Cauchy
//! status of each coordinate is recomputed from x and g), so a resumed run
//! makes exactly the same evaluations as the uninterrupted one. Stage 2
//! checkpoints this state plus the evaluations made since it.
//!
//! # Line-search failure at the noise floor
//! With tolerances tighter than the rounding noise of f (hopper's gtol = 1e-12
//! is), a run can end with [`Status::LineSearchFailed`]: no trial point is
//! lower than the current one by more than rounding. As in scipy
//! (`ABNORMAL_TERMINATION_IN_LNSRCH`) `x` is then the best iterate found, and is
//! in practice converged; callers decide whether to treat it as such.

use crate::error::{Error, Result};
use nalgebra::DMatrix;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};

const EPS: f64 = f64::EPSILON;
/// Line-search constants of L-BFGS-B (`lnsrlb`).
const LS_FTOL: f64 = 1e-3;
const LS_GTOL: f64 = 0.9;
const LS_XTOL: f64 = 0.1;
/// Step cap when the problem has no finite bound on the search direction.
const BIG_STEP: f64 = 1e10;

/// Bounds of one coordinate; `None` (or an infinite value) means unbounded.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Bound {
    pub lower: Option<f64>,
    pub upper: Option<f64>,
}

impl Bound {
    pub const FREE: Bound = Bound { lower: None, upper: None };

    pub fn new(lower: f64, upper: f64) -> Bound {
        Bound { lower: Some(lower), upper: Some(upper) }
    }

    pub fn lower(lower: f64) -> Bound {
        Bound { lower: Some(lower), upper: None }
    }

    pub fn upper(upper: f64) -> Bound {
        Bound { lower: None, upper: Some(upper) }
    }

    /// Both bounds equal: the coordinate is held at `value`.
    pub fn fixed(value: f64) -> Bound {
        Bound::new(value, value)
    }
}

/// Options, named and defaulted as in scipy's `minimize(method="L-BFGS-B")`.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// History length (scipy `maxcor`).
    pub m: usize,
    /// Relative-reduction tolerance on f.
    pub ftol: f64,
    /// Tolerance on the ∞-norm of the projected gradient.
    pub gtol: f64,
    /// Maximum number of accepted iterates.
    pub maxiter: usize,
    /// Maximum number of evaluations (checked after each iterate, as scipy).
    pub maxfun: usize,
    /// Maximum number of trial points per line search.
    pub maxls: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options { m: 10, ftol: 1e7 * EPS, gtol: 1e-5, maxiter: 15000, maxfun: 15000, maxls: 20 }
    }
}

impl Options {
    /// diffBragg hopper's settings (`hopper_utils.py`, §4.8): ftol 1e-10,
    /// gtol 1e-12, maxfun = maxiter = 1e5.
    pub fn hopper() -> Options {
        Options { ftol: 1e-10, gtol: 1e-12, maxfun: 100_000, maxiter: 100_000, ..Options::default() }
    }

    fn validate(&self) -> Result<()> {
        if self.m == 0 {
            return Err(Error::param("m", "history length must be at least 1"));
        }
        if !(self.ftol >= 0.0) {
            return Err(Error::param("ftol", format!("must be >= 0, got {}", self.ftol)));
        }
        if !(self.gtol >= 0.0) {
            return Err(Error::param("gtol", format!("must be >= 0, got {}", self.gtol)));
        }
        if self.maxls == 0 {
            return Err(Error::param("maxls", "must be at least 1"));
        }
        Ok(())
    }
}

/// Why the minimisation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// `max |proj g_i| ≤ gtol`.
    GradientConverged,
    /// `(f_k − f_{k+1})/max(|f_k|,|f_{k+1}|,1) ≤ ftol`.
    FunctionConverged,
    /// `maxiter` iterations done.
    IterationLimit,
    /// More than `maxfun` evaluations done.
    EvaluationLimit,
    /// The observer asked to stop.
    ObserverStop,
    /// The line search failed with an empty quasi-Newton memory.
    LineSearchFailed,
    /// The closure returned an error or a non-finite f or g.
    EvaluationFailed,
}

impl Status {
    /// Converged by one of the two tolerance tests.
    pub fn converged(self) -> bool {
        matches!(self, Status::GradientConverged | Status::FunctionConverged)
    }
}

/// What an observer sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The closure was evaluated (start point or line-search trial).
    Evaluation,
    /// A line search ended: `x` is the new iterate.
    Iteration,
}

/// One report to the observer.
#[derive(Debug)]
pub struct Progress<'a> {
    pub event: Event,
    /// Evaluations so far, this one included.
    pub n_eval: usize,
    /// Accepted iterates so far (this one included for [`Event::Iteration`]).
    pub n_iter: usize,
    pub x: &'a [f64],
    pub f: f64,
    pub g: &'a [f64],
}

/// The observer's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

/// Result of [`minimize`]. `x`, `f`, `g` are the last accepted iterate (if the
/// very first evaluation fails, `x` is the projected x0 and `f`, `g` are NaN).
#[derive(Clone, Debug)]
pub struct Outcome {
    pub x: Vec<f64>,
    pub f: f64,
    pub g: Vec<f64>,
    pub n_iter: usize,
    pub n_eval: usize,
    pub status: Status,
    pub message: String,
    /// ∞-norm of the projected gradient at `x`.
    pub proj_grad_norm: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Nbd {
    Free,
    Lower,
    Both,
    Upper,
}

impl Nbd {
    fn has_lower(self) -> bool {
        matches!(self, Nbd::Lower | Nbd::Both)
    }
    fn has_upper(self) -> bool {
        matches!(self, Nbd::Upper | Nbd::Both)
    }
}

/// Status of a coordinate in the Cauchy search (the reference's `iwhere`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Where {
    /// No bounds: always free.
    Unbounded,
    /// Bounded, moved along the Cauchy path.
    Moving,
    /// Bounded, zero gradient: free but not moved.
    Still,
    AtLower,
    AtUpper,
    /// Equal bounds: never moves.
    Fixed,
}

impl Where {
    fn is_free(self) -> bool {
        matches!(self, Where::Unbounded | Where::Moving | Where::Still)
    }
}

/// The box, with ±∞ for missing bounds (values are only read where `nbd` says so).
struct Box_ {
    nbd: Vec<Nbd>,
    l: Vec<f64>,
    u: Vec<f64>,
    constrained: bool,
    boxed: bool,
}

impl Box_ {
    fn new(n: usize, bounds: Option<&[Bound]>) -> Result<Box_> {
        let mut nbd = vec![Nbd::Free; n];
        let mut l = vec![f64::NEG_INFINITY; n];
        let mut u = vec![f64::INFINITY; n];
        if let Some(b) = bounds {
            if b.len() != n {
                return Err(Error::param("bounds", format!("{} bounds for {} coordinates", b.len(), n)));
            }
            for (i, bi) in b.iter().enumerate() {
                let lo = bi.lower.filter(|v| !(v.is_infinite() && *v < 0.0));
                let hi = bi.upper.filter(|v| !(v.is_infinite() && *v > 0.0));
                if lo.is_some_and(|v| v.is_nan() || v == f64::INFINITY)
                    || hi.is_some_and(|v| v.is_nan() || v == f64::NEG_INFINITY)
                {
                    return Err(Error::param(format!("bounds[{i}]"), format!("invalid bound {bi:?}")));
                }
                if let (Some(a), Some(c)) = (lo, hi) {
                    if a > c {
                        return Err(Error::param(
                            format!("bounds[{i}]"),
                            format!("lower bound {a} is above upper bound {c}"),
                        ));
                    }
                }
                nbd[i] = match (lo, hi) {
                    (None, None) => Nbd::Free,
                    (Some(_), None) => Nbd::Lower,
                    (Some(_), Some(_)) => Nbd::Both,
                    (None, Some(_)) => Nbd::Upper,
                };
                if let Some(a) = lo {
                    l[i] = a;
                }
                if let Some(c) = hi {
                    u[i] = c;
                }
            }
        }
        let constrained = nbd.iter().any(|&k| k != Nbd::Free);
        let boxed = nbd.iter().all(|&k| k == Nbd::Both);
        Ok(Box_ { nbd, l, u, constrained, boxed })
    }

    fn project(&self, x: &mut [f64]) {
        for i in 0..x.len() {
            if self.nbd[i].has_lower() && x[i] < self.l[i] {
                x[i] = self.l[i];
            } else if self.nbd[i].has_upper() && x[i] > self.u[i] {
                x[i] = self.u[i];
            }
        }
    }

    /// ∞-norm of the projected gradient (`projgr`).
    fn proj_grad_norm(&self, x: &[f64], g: &[f64]) -> f64 {
        let mut norm: f64 = 0.0;
        for i in 0..x.len() {
            let mut gi = g[i];
            if gi < 0.0 {
                if self.nbd[i].has_upper() {
                    gi = gi.max(x[i] - self.u[i]);
                }
            } else if self.nbd[i].has_lower() {
                gi = gi.min(x[i] - self.l[i]);
            }
            norm = norm.max(gi.abs());
        }
        norm
    }

    fn initial_where(&self) -> Vec<Where> {
        (0..self.nbd.len())
            .map(|i| match self.nbd[i] {
                Nbd::Free => Where::Unbounded,
                Nbd::Both if self.u[i] - self.l[i] <= 0.0 => Where::Fixed,
                _ => Where::Moving,
            })
            .collect()
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut s = 0.0;
    for i in 0..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// The limited-memory matrix `B = θI − W M Wᵀ`, `W = [Y, θS]`, columns oldest first.
struct Memory {
    m: usize,
    s: VecDeque<Vec<f64>>,
    y: VecDeque<Vec<f64>>,
    /// `sy[(i,j)] = s_i·y_j`; the diagonal holds the line-search `sᵀy`.
    sy: DMatrix<f64>,
    /// `s_i·y_i` as a dot product (the reference uses it in R_z, and the
    /// line-search value in D).
    sy_dot: VecDeque<f64>,
    ss: DMatrix<f64>,
    yy: DMatrix<f64>,
    theta: f64,
    /// Lower Cholesky factor J of `T = θSᵀS + L D⁻¹ Lᵀ`.
    jt: DMatrix<f64>,
}

impl Memory {
    fn new(m: usize) -> Memory {
        Memory {
            m,
            s: VecDeque::new(),
            y: VecDeque::new(),
            sy: DMatrix::zeros(0, 0),
            sy_dot: VecDeque::new(),
            ss: DMatrix::zeros(0, 0),
            yy: DMatrix::zeros(0, 0),
            theta: 1.0,
            jt: DMatrix::zeros(0, 0),
        }
    }

    fn col(&self) -> usize {
        self.s.len()
    }

    fn to_state(&self) -> MemoryState {
        let flat = |m: &DMatrix<f64>| -> Vec<f64> {
            let k = m.nrows();
            (0..k * k).map(|i| m[(i / k, i % k)]).collect()
        };
        MemoryState {
            s: self.s.iter().cloned().collect(),
            y: self.y.iter().cloned().collect(),
            sy: flat(&self.sy),
            ss: flat(&self.ss),
            yy: flat(&self.yy),
            sy_dot: self.sy_dot.iter().copied().collect(),
            theta: self.theta,
        }
    }

    /// Rebuild from a saved state (the Cholesky factor is recomputed, which
    /// gives the same bits as when it was first formed).
    fn from_state(m: usize, n: usize, st: &MemoryState) -> Result<Memory> {
        let k = st.s.len();
        let bad = |msg: String| Error::param("resume.memory", msg);
        if k > m {
            return Err(bad(format!("{k} stored pairs but the history length is {m}")));
        }
        if st.y.len() != k
            || st.sy_dot.len() != k
            || [&st.sy, &st.ss, &st.yy].iter().any(|v| v.len() != k * k)
        {
            return Err(bad("inconsistent sizes".into()));
        }
        if st.s.iter().chain(&st.y).any(|v| v.len() != n) {
            return Err(bad(format!("stored vectors are not of length {n}")));
        }
        let all_finite =
            st.s.iter()
                .chain(&st.y)
                .flatten()
                .chain(&st.sy)
                .chain(&st.ss)
                .chain(&st.yy)
                .chain(&st.sy_dot)
                .all(|v| v.is_finite());
        if !(all_finite && st.theta.is_finite() && st.theta > 0.0) {
            return Err(bad("non-finite values".into()));
        }
        let mat = |v: &[f64]| DMatrix::from_fn(k, k, |i, j| v[i * k + j]);
        let mut mem = Memory {
            m,
            s: st.s.iter().cloned().collect(),
            y: st.y.iter().cloned().collect(),
            sy: mat(&st.sy),
            sy_dot: st.sy_dot.iter().copied().collect(),
            ss: mat(&st.ss),
            yy: mat(&st.yy),
            theta: st.theta,
            jt: DMatrix::zeros(0, 0),
        };
        if k > 0 && !mem.form_t() {
            return Err(bad("the stored memory is not positive definite".into()));
        }
        Ok(mem)
    }

    fn reset(&mut self) {
        *self = Memory::new(self.m);
    }

    /// Add the pair (s, y). `sty` is the line search's `sᵀy`, `sts` its `sᵀs`.
    /// Returns false if `T` is not positive definite (the caller resets).
    fn push(&mut self, s: Vec<f64>, y: Vec<f64>, sty: f64, sts: f64, yty: f64) -> bool {
        if self.col() == self.m {
            self.s.pop_front();
            self.y.pop_front();
            self.sy_dot.pop_front();
            self.sy = self.sy.clone().remove_row(0).remove_column(0);
            self.ss = self.ss.clone().remove_row(0).remove_column(0);
            self.yy = self.yy.clone().remove_row(0).remove_column(0);
        }
        let k = self.col();
        let mut sy = DMatrix::zeros(k + 1, k + 1);
        let mut ss = DMatrix::zeros(k + 1, k + 1);
        let mut yy = DMatrix::zeros(k + 1, k + 1);
        sy.view_mut((0, 0), (k, k)).copy_from(&self.sy);
        ss.view_mut((0, 0), (k, k)).copy_from(&self.ss);
        yy.view_mut((0, 0), (k, k)).copy_from(&self.yy);
        for j in 0..k {
            sy[(k, j)] = dot(&s, &self.y[j]);
            sy[(j, k)] = dot(&self.s[j], &y);
            let v = dot(&self.s[j], &s);
            ss[(j, k)] = v;
            ss[(k, j)] = v;
            let w = dot(&self.y[j], &y);
            yy[(j, k)] = w;
            yy[(k, j)] = w;
        }
        sy[(k, k)] = sty;
        ss[(k, k)] = sts;
        yy[(k, k)] = yty;
        self.sy_dot.push_back(dot(&s, &y));
        self.s.push_back(s);
        self.y.push_back(y);
        self.sy = sy;
        self.ss = ss;
        self.yy = yy;
        self.theta = yty / sty;
        self.form_t()
    }

    /// Cholesky-factor `T = θSᵀS + L D⁻¹ Lᵀ` (L strictly lower part of SᵀY, D its diagonal).
    fn form_t(&mut self) -> bool {
        let col = self.col();
        let mut t = DMatrix::zeros(col, col);
        for i in 0..col {
            for j in i..col {
                let mut acc = 0.0;
                for k in 0..i.min(j) {
                    acc += self.sy[(i, k)] * self.sy[(j, k)] / self.sy[(k, k)];
                }
                let v = acc + self.theta * self.ss[(i, j)];
                t[(i, j)] = v;
                t[(j, i)] = v;
            }
        }
        match cholesky_lower(&t) {
            Some(j) => {
                self.jt = j;
                true
            }
            None => false,
        }
    }

    /// `M·v` for the 2col×2col middle matrix, using
    /// `M⁻¹ = [[D^½, 0], [−L D^-½, J]] · [[−D^½, D^-½ Lᵀ], [0, Jᵀ]]`.
    fn bmv(&self, v: &[f64]) -> Option<Vec<f64>> {
        let col = self.col();
        let mut p = vec![0.0; 2 * col];
        if col == 0 {
            return Some(p);
        }
        // Lower factor: p1 = D^-½ v1, J p2 = v2 + L D⁻¹ v1.
        let mut p2 = vec![0.0; col];
        for i in 0..col {
            let mut acc = 0.0;
            for k in 0..i {
                acc += self.sy[(i, k)] * v[k] / self.sy[(k, k)];
            }
            p2[i] = v[col + i] + acc;
        }
        solve_lower(&self.jt, &mut p2)?;
        for i in 0..col {
            p[i] = v[i] / self.sy[(i, i)].sqrt();
        }
        // Upper factor: Jᵀ q2 = p2, q1 = −D^-½ p1 + D⁻¹ Lᵀ q2.
        solve_lower_transpose(&self.jt, &mut p2)?;
        for i in 0..col {
            p[i] = -p[i] / self.sy[(i, i)].sqrt();
        }
        for i in 0..col {
            let mut acc = 0.0;
            for k in i + 1..col {
                acc += self.sy[(k, i)] * p2[k] / self.sy[(i, i)];
            }
            p[i] += acc;
        }
        p[col..].copy_from_slice(&p2);
        Some(p)
    }
}

/// Lower Cholesky factor, or None if the matrix is not positive definite.
fn cholesky_lower(a: &DMatrix<f64>) -> Option<DMatrix<f64>> {
    let n = a.nrows();
    let mut l = DMatrix::zeros(n, n);
    for j in 0..n {
        let mut d = a[(j, j)];
        for k in 0..j {
            d -= l[(j, k)] * l[(j, k)];
        }
        if !(d > 0.0) {
            return None;
        }
        let d = d.sqrt();
        l[(j, j)] = d;
        for i in j + 1..n {
            let mut v = a[(i, j)];
            for k in 0..j {
                v -= l[(i, k)] * l[(j, k)];
            }
            l[(i, j)] = v / d;
        }
    }
    Some(l)
}

/// Solve `L x = b` in place (L lower triangular).
fn solve_lower(l: &DMatrix<f64>, b: &mut [f64]) -> Option<()> {
    for i in 0..b.len() {
        let mut v = b[i];
        for k in 0..i {
            v -= l[(i, k)] * b[k];
        }
        if l[(i, i)] == 0.0 {
            return None;
        }
        b[i] = v / l[(i, i)];
    }
    Some(())
}

/// Solve `Lᵀ x = b` in place (L lower triangular).
fn solve_lower_transpose(l: &DMatrix<f64>, b: &mut [f64]) -> Option<()> {
    // Column (axpy) order, as reference BLAS back substitution.
    for i in (0..b.len()).rev() {
        if l[(i, i)] == 0.0 {
            return None;
        }
        b[i] /= l[(i, i)];
        let bi = b[i];
        for k in 0..i {
            b[k] -= l[(i, k)] * bi;
        }
    }
    Some(())
}

/// A breakpoint ordered by (t, coordinate).
#[derive(PartialEq)]
struct Breakpoint(f64, usize);
impl Eq for Breakpoint {}
impl PartialOrd for Breakpoint {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Breakpoint {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Generalised Cauchy point. Returns (xcp, c = Wᵀ(xcp − x)), or None when a
/// triangular solve in `bmv` fails.
fn cauchy(
    x: &[f64],
    g: &[f64],
    bx: &Box_,
    wh: &mut [Where],
    mem: &Memory,
    sbgnrm: f64,
) -> Option<(Vec<f64>, Vec<f64>)> {
    let n = x.len();
    let col = mem.col();
    let theta = mem.theta;
    let mut xcp = x.to_vec();
    if sbgnrm <= 0.0 {
        return Some((xcp, vec![0.0; 2 * col]));
    }
    let mut p = vec![0.0; 2 * col];
    let mut d = vec![0.0; n];
    let mut breaks: Vec<Breakpoint> = Vec::new();
    let mut n_unbounded = 0usize;
    let mut bnded = true;
    let mut f1 = 0.0;
    for i in 0..n {
        let neggi = -g[i];
        let (mut tl, mut tu) = (0.0, 0.0);
        if wh[i] != Where::Fixed && wh[i] != Where::Unbounded {
            let k = bx.nbd[i];
            if k.has_lower() {
                tl = x[i] - bx.l[i];
            }
            if k.has_upper() {
                tu = bx.u[i] - x[i];
            }
            let xlower = k.has_lower() && tl <= 0.0;
            let xupper = k.has_upper() && tu <= 0.0;
            wh[i] = Where::Moving;
            if xlower {
                if neggi <= 0.0 {
                    wh[i] = Where::AtLower;
                }
            } else if xupper {
                if neggi >= 0.0 {
                    wh[i] = Where::AtUpper;
                }
            } else if neggi.abs() <= 0.0 {
                wh[i] = Where::Still;
            }
        }
        if wh[i] != Where::Moving && wh[i] != Where::Unbounded {
            d[i] = 0.0;
            continue;
        }
        d[i] = neggi;
        f1 -= neggi * neggi;
        for j in 0..col {
            p[j] += mem.y[j][i] * neggi;
            p[col + j] += mem.s[j][i] * neggi;
        }
        let k = bx.nbd[i];
        if k.has_lower() && neggi < 0.0 {
            breaks.push(Breakpoint(tl / -neggi, i));
        } else if k.has_upper() && neggi > 0.0 {
            breaks.push(Breakpoint(tu / neggi, i));
        } else {
            n_unbounded += 1;
            if neggi.abs() > 0.0 {
                bnded = false;
            }
        }
    }
    if theta != 1.0 {
        for v in &mut p[col..] {
            *v *= theta;
        }
    }
    if breaks.is_empty() && n_unbounded == 0 {
        return Some((xcp, vec![0.0; 2 * col]));
    }
    let mut c = vec![0.0; 2 * col];
    let mut f2 = -theta * f1;
    let f2_org = f2;
    if col > 0 {
        let v = mem.bmv(&p)?;
        f2 -= dot(&v, &p);
    }
    let mut dtm = -f1 / f2;
    let mut tsum = 0.0;
    let nbreak = breaks.len();
    let mut all_fixed = false;
    if nbreak > 0 {
        let mut heap: BinaryHeap<Reverse<Breakpoint>> = breaks.into_iter().map(Reverse).collect();
        let mut nleft = nbreak;
        let mut tj = 0.0;
        while let Some(Reverse(Breakpoint(t, ibp))) = heap.pop() {
            let tj0 = tj;
            tj = t;
            let dt = tj - tj0;
            if dtm < dt {
                break;
            }
            // The minimiser lies beyond this breakpoint: fix coordinate ibp at its bound.
            tsum += dt;
            nleft -= 1;
            let dibp = d[ibp];
            d[ibp] = 0.0;
            let zibp;
            if dibp > 0.0 {
                zibp = bx.u[ibp] - x[ibp];
                xcp[ibp] = bx.u[ibp];
                wh[ibp] = Where::AtUpper;
            } else {
                zibp = bx.l[ibp] - x[ibp];
                xcp[ibp] = bx.l[ibp];
                wh[ibp] = Where::AtLower;
            }
            if nleft == 0 && nbreak == n {
                dtm = dt;
                all_fixed = true;
                break;
            }
            let dibp2 = dibp * dibp;
            f1 = f1 + dt * f2 + dibp2 - theta * dibp * zibp;
            f2 -= theta * dibp2;
            if col > 0 {
                for j in 0..2 * col {
                    c[j] += dt * p[j];
                }
                let mut wbp = vec![0.0; 2 * col];
                for j in 0..col {
                    wbp[j] = mem.y[j][ibp];
                    wbp[col + j] = theta * mem.s[j][ibp];
                }
                let v = mem.bmv(&wbp)?;
                let wmc = dot(&c, &v);
                let wmp = dot(&p, &v);
                let wmw = dot(&wbp, &v);
                for j in 0..2 * col {
                    p[j] -= dibp * wbp[j];
                }
                f1 += dibp * wmc;
                f2 = f2 + dibp * 2.0 * wmp - dibp2 * wmw;
            }
            f2 = f2.max(EPS * f2_org);
            if nleft > 0 {
                dtm = -f1 / f2;
            } else {
                dtm = if bnded { 0.0 } else { -f1 / f2 };
                break;
            }
        }
    }
    if !all_fixed {
        if dtm <= 0.0 {
            dtm = 0.0;
        }
        tsum += dtm;
        for i in 0..n {
            xcp[i] += tsum * d[i];
        }
    }
    for j in 0..2 * col {
        c[j] += dtm * p[j];
    }
    Some((xcp, c))
}

/// Newton step of the quadratic model over the free variables:
/// `du = (1/θ) r + (1/θ²) ZᵀW K⁻¹ WᵀZ r`, with
/// `K = [[−D − YᵀZZᵀY/θ, L_aᵀ − R_zᵀ], [L_a − R_z, θ SᵀAAᵀS]]` (Z free, A active,
/// L_a strictly lower part of SᵀAAᵀY, R_z upper part of SᵀZZᵀY).
/// K is factored as `F·E·Fᵀ`, `F = [[L, 0], [−Xᵀ, J]]`, `E = diag(−I, I)`,
/// `LLᵀ = D + YᵀZZᵀY/θ`, `X = L⁻¹(L_aᵀ − R_zᵀ)`, `JJᵀ = θSᵀAAᵀS + XᵀX`.
/// None when a factorisation fails (the caller resets the memory).
fn subspace_newton(mem: &Memory, free: &[usize], active: &[usize], r: &[f64]) -> Option<Vec<f64>> {
    let col = mem.col();
    let theta = mem.theta;
    // Inner products over the free set, from whichever set is smaller.
    let mut yzy = DMatrix::zeros(col, col);
    let mut szy = DMatrix::zeros(col, col);
    let mut sas = DMatrix::zeros(col, col);
    let mut say = DMatrix::zeros(col, col);
    for i in 0..col {
        for j in 0..col {
            let (si, yi, sj, yj) = (&mem.s[i], &mem.y[i], &mem.s[j], &mem.y[j]);
            let mut a_ss = 0.0;
            let mut a_sy = 0.0;
            for &k in active {
                a_ss += si[k] * sj[k];
                a_sy += si[k] * yj[k];
            }
            sas[(i, j)] = a_ss;
            say[(i, j)] = a_sy;
            if active.len() <= free.len() {
                let mut a_yy = 0.0;
                for &k in active {
                    a_yy += yi[k] * yj[k];
                }
                yzy[(i, j)] = mem.yy[(i, j)] - a_yy;
                let sy_ij = if i == j { mem.sy_dot[i] } else { mem.sy[(i, j)] };
                szy[(i, j)] = sy_ij - a_sy;
            } else {
                let mut z_yy = 0.0;
                let mut z_sy = 0.0;
                for &k in free {
                    z_yy += yi[k] * yj[k];
                    z_sy += si[k] * yj[k];
                }
                yzy[(i, j)] = z_yy;
                szy[(i, j)] = z_sy;
            }
        }
    }
    let mut a11 = DMatrix::zeros(col, col);
    let mut bm = DMatrix::zeros(col, col);
    for i in 0..col {
        for j in 0..col {
            a11[(i, j)] = yzy[(i, j)] / theta;
            // Bm(i,j) = L_a(j,i) − R_z(j,i).
            let la = if j > i { say[(j, i)] } else { 0.0 };
            let rz = if j <= i { szy[(j, i)] } else { 0.0 };
            bm[(i, j)] = la - rz;
        }
        a11[(i, i)] += mem.sy[(i, i)];
    }
    let l = cholesky_lower(&a11)?;
    let mut x = bm.clone();
    for jcol in 0..col {
        let mut colv: Vec<f64> = (0..col).map(|i| x[(i, jcol)]).collect();
        solve_lower(&l, &mut colv)?;
        for i in 0..col {
            x[(i, jcol)] = colv[i];
        }
    }
    // Explicit loops (not nalgebra's gemm, whose SIMD kernel is chosen at run
    // time) keep the summation order, hence the bits, fixed on every machine.
    let mut jj = DMatrix::zeros(col, col);
    for i in 0..col {
        for j in 0..col {
            let mut acc = 0.0;
            for k in 0..col {
                acc += x[(k, i)] * x[(k, j)];
            }
            jj[(i, j)] = theta * sas[(i, j)] + acc;
        }
    }
    let jl = cholesky_lower(&jj)?;

    // w = WᵀZ r.
    let mut w1 = vec![0.0; col];
    let mut w2 = vec![0.0; col];
    for j in 0..col {
        let mut a = 0.0;
        let mut b = 0.0;
        for (idx, &k) in free.iter().enumerate() {
            a += mem.y[j][k] * r[idx];
            b += mem.s[j][k] * r[idx];
        }
        w1[j] = a;
        w2[j] = theta * b;
    }
    // F u = w; u1 ← −u1; Fᵀ v = u.
    solve_lower(&l, &mut w1)?;
    for j in 0..col {
        let mut acc = 0.0;
        for k in 0..col {
            acc += x[(k, j)] * w1[k];
        }
        w2[j] += acc;
    }
    solve_lower(&jl, &mut w2)?;
    for v in &mut w1 {
        *v = -*v;
    }
    solve_lower_transpose(&jl, &mut w2)?;
    for j in 0..col {
        let mut acc = 0.0;
        for k in 0..col {
            acc += x[(j, k)] * w2[k];
        }
        w1[j] += acc;
    }
    solve_lower_transpose(&l, &mut w1)?;
    // du = (r + Y v1/θ + S v2)/θ over the free set.
    let mut du = r.to_vec();
    for j in 0..col {
        for (idx, &k) in free.iter().enumerate() {
            du[idx] += mem.y[j][k] * w1[j] / theta + mem.s[j][k] * w2[j];
        }
    }
    for v in &mut du {
        *v /= theta;
    }
    Some(du)
}

/// Project the subspace Newton step into the box (L-BFGS-B 3.0). `z` holds the
/// Cauchy point on entry and the subspace minimiser on exit.
fn project_newton(z: &mut [f64], du: &mut [f64], free: &[usize], bx: &Box_, x: &[f64], g: &[f64]) {
    let zc = z.to_vec();
    let mut hit = false;
    for (idx, &k) in free.iter().enumerate() {
        let target = zc[k] + du[idx];
        z[k] = match bx.nbd[k] {
            Nbd::Free => target,
            Nbd::Lower => target.max(bx.l[k]),
            Nbd::Upper => target.min(bx.u[k]),
            Nbd::Both => target.max(bx.l[k]).min(bx.u[k]),
        };
        if (bx.nbd[k].has_lower() && z[k] == bx.l[k]) || (bx.nbd[k].has_upper() && z[k] == bx.u[k]) {
            hit = true;
        }
    }
    if !hit {
        return;
    }
    let mut dd = 0.0;
    for i in 0..z.len() {
        dd += (z[i] - x[i]) * g[i];
    }
    if dd <= 0.0 {
        return;
    }
    // The projected step is not a descent direction: go back to the Cauchy
    // point and move along du only as far as the box allows.
    z.copy_from_slice(&zc);
    let mut alpha: f64 = 1.0;
    let mut temp1: f64 = 1.0;
    let mut ibd = 0usize;
    for (idx, &k) in free.iter().enumerate() {
        let dk = du[idx];
        if bx.nbd[k] == Nbd::Free {
            continue;
        }
        if dk < 0.0 && bx.nbd[k].has_lower() {
            let t2 = bx.l[k] - z[k];
            if t2 >= 0.0 {
                temp1 = 0.0;
            } else if dk * alpha < t2 {
                temp1 = t2 / dk;
            }
        } else if dk > 0.0 && bx.nbd[k].has_upper() {
            let t2 = bx.u[k] - z[k];
            if t2 <= 0.0 {
                temp1 = 0.0;
            } else if dk * alpha > t2 {
                temp1 = t2 / dk;
            }
        }
        if temp1 < alpha {
            alpha = temp1;
            ibd = idx;
        }
    }
    if alpha < 1.0 {
        let k = free[ibd];
        let dk = du[ibd];
        if dk > 0.0 {
            z[k] = bx.u[k];
            du[ibd] = 0.0;
        } else if dk < 0.0 {
            z[k] = bx.l[k];
            du[ibd] = 0.0;
        }
    }
    for (idx, &k) in free.iter().enumerate() {
        z[k] += alpha * du[idx];
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LsTask {
    Evaluate,
    Converged,
    Warning,
}

/// Moré–Thuente line search with MINPACK-2 `dcsrch` semantics.
struct LineSearch {
    stpmin: f64,
    stpmax: f64,
    brackt: bool,
    stage: u8,
    finit: f64,
    ginit: f64,
    gtest: f64,
    stx: f64,
    fx: f64,
    gx: f64,
    sty: f64,
    fy: f64,
    gy: f64,
    stmin: f64,
    stmax: f64,
    width: f64,
    width1: f64,
}

impl LineSearch {
    /// None if the inputs are invalid (step outside [stpmin, stpmax] or g ≥ 0).
    fn start(f: f64, g: f64, stp: f64, stpmin: f64, stpmax: f64) -> Option<LineSearch> {
        if stp < stpmin || stp > stpmax || g >= 0.0 || stpmin < 0.0 || stpmax < stpmin {
            return None;
        }
        let width = stpmax - stpmin;
        Some(LineSearch {
            stpmin,
            stpmax,
            brackt: false,
            stage: 1,
            finit: f,
            ginit: g,
            gtest: LS_FTOL * g,
            stx: 0.0,
            fx: f,
            gx: g,
            sty: 0.0,
            fy: f,
            gy: g,
            stmin: 0.0,
            stmax: stp + 4.0 * stp,
            width,
            width1: width / 0.5,
        })
    }

    /// Given f and g = f′ at `stp`, decide whether to stop or where to go next.
    fn next(&mut self, f: f64, g: f64, stp: &mut f64) -> LsTask {
        let ftest = self.finit + *stp * self.gtest;
        if self.stage == 1 && f <= ftest && g >= 0.0 {
            self.stage = 2;
        }
        let mut task = LsTask::Evaluate;
        if self.brackt && (*stp <= self.stmin || *stp >= self.stmax) {
            task = LsTask::Warning;
        }
        if self.brackt && self.stmax - self.stmin <= LS_XTOL * self.stmax {
            task = LsTask::Warning;
        }
        if *stp == self.stpmax && f <= ftest && g <= self.gtest {
            task = LsTask::Warning;
        }
        if *stp == self.stpmin && (f > ftest || g >= self.gtest) {
            task = LsTask::Warning;
        }
        if f <= ftest && g.abs() <= LS_GTOL * (-self.ginit) {
            task = LsTask::Converged;
        }
        if task != LsTask::Evaluate {
            return task;
        }
        if self.stage == 1 && f <= self.fx && f > ftest {
            // Work on the auxiliary function ψ(α) = f(α) − f(0) − ftol·α·f′(0).
            let gt = self.gtest;
            let mut fxm = self.fx - self.stx * gt;
            let mut fym = self.fy - self.sty * gt;
            let mut gxm = self.gx - gt;
            let mut gym = self.gy - gt;
            let fm = f - *stp * gt;
            let gm = g - gt;
            dcstep(
                &mut self.stx,
                &mut fxm,
                &mut gxm,
                &mut self.sty,
                &mut fym,
                &mut gym,
                stp,
                fm,
                gm,
                &mut self.brackt,
                self.stmin,
                self.stmax,
            );
            self.fx = fxm + self.stx * gt;
            self.fy = fym + self.sty * gt;
            self.gx = gxm + gt;
            self.gy = gym + gt;
        } else {
            dcstep(
                &mut self.stx,
                &mut self.fx,
                &mut self.gx,
                &mut self.sty,
                &mut self.fy,
                &mut self.gy,
                stp,
                f,
                g,
                &mut self.brackt,
                self.stmin,
                self.stmax,
            );
        }
        if self.brackt {
            if (self.sty - self.stx).abs() >= 0.66 * self.width1 {
                *stp = self.stx + 0.5 * (self.sty - self.stx);
            }
            self.width1 = self.width;
            self.width = (self.sty - self.stx).abs();
        }
        if self.brackt {
            self.stmin = self.stx.min(self.sty);
            self.stmax = self.stx.max(self.sty);
        } else {
            self.stmin = *stp + 1.1 * (*stp - self.stx);
            self.stmax = *stp + 4.0 * (*stp - self.stx);
        }
        *stp = stp.max(self.stpmin).min(self.stpmax);
        if self.brackt
            && (*stp <= self.stmin || *stp >= self.stmax || self.stmax - self.stmin <= LS_XTOL * self.stmax)
        {
            *stp = self.stx;
        }
        LsTask::Evaluate
    }
}

/// Safeguarded cubic/quadratic step of Moré & Thuente (MINPACK-2 `dcstep`).
#[allow(clippy::too_many_arguments)]
fn dcstep(
    stx: &mut f64,
    fx: &mut f64,
    dx: &mut f64,
    sty: &mut f64,
    fy: &mut f64,
    dy: &mut f64,
    stp: &mut f64,
    fp: f64,
    dp: f64,
    brackt: &mut bool,
    stpmin: f64,
    stpmax: f64,
) {
    let sgnd = dp * (*dx / dx.abs());
    let stpf;
    if fp > *fx {
        // Higher value: the minimum is bracketed.
        let theta = 3.0 * (*fx - fp) / (*stp - *stx) + *dx + dp;
        let s = theta.abs().max(dx.abs()).max(dp.abs());
        let mut gamma = s * ((theta / s).powi(2) - (*dx / s) * (dp / s)).sqrt();
        if *stp < *stx {
            gamma = -gamma;
        }
        let p = (gamma - *dx) + theta;
        let q = ((gamma - *dx) + gamma) + dp;
        let r = p / q;
        let stpc = *stx + r * (*stp - *stx);
        let stpq = *stx + ((*dx / ((*fx - fp) / (*stp - *stx) + *dx)) / 2.0) * (*stp - *stx);
        stpf = if (stpc - *stx).abs() < (stpq - *stx).abs() { stpc } else { stpc + (stpq - stpc) / 2.0 };
        *brackt = true;
    } else if sgnd < 0.0 {
        // Lower value, derivatives of opposite sign: bracketed.
        let theta = 3.0 * (*fx - fp) / (*stp - *stx) + *dx + dp;
        let s = theta.abs().max(dx.abs()).max(dp.abs());
        let mut gamma = s * ((theta / s).powi(2) - (*dx / s) * (dp / s)).sqrt();
        if *stp > *stx {
            gamma = -gamma;
        }
        let p = (gamma - dp) + theta;
        let q = ((gamma - dp) + gamma) + *dx;
        let r = p / q;
        let stpc = *stp + r * (*stx - *stp);
        let stpq = *stp + (dp / (dp - *dx)) * (*stx - *stp);
        stpf = if (stpc - *stp).abs() > (stpq - *stp).abs() { stpc } else { stpq };
        *brackt = true;
    } else if dp.abs() < dx.abs() {
        // Lower value, same sign, derivative magnitude decreases.
        let theta = 3.0 * (*fx - fp) / (*stp - *stx) + *dx + dp;
        let s = theta.abs().max(dx.abs()).max(dp.abs());
        let mut gamma = s * (0.0f64).max((theta / s).powi(2) - (*dx / s) * (dp / s)).sqrt();
        if *stp > *stx {
            gamma = -gamma;
        }
        let p = (gamma - dp) + theta;
        let q = (gamma + (*dx - dp)) + gamma;
        let r = p / q;
        let stpc = if r < 0.0 && gamma != 0.0 {
            *stp + r * (*stx - *stp)
        } else if *stp > *stx {
            stpmax
        } else {
            stpmin
        };
        let stpq = *stp + (dp / (dp - *dx)) * (*stx - *stp);
        if *brackt {
            let mut s1 = if (stpc - *stp).abs() < (stpq - *stp).abs() { stpc } else { stpq };
            if *stp > *stx {
                s1 = s1.min(*stp + 0.66 * (*sty - *stp));
            } else {
                s1 = s1.max(*stp + 0.66 * (*sty - *stp));
            }
            stpf = s1;
        } else {
            let s1 = if (stpc - *stp).abs() > (stpq - *stp).abs() { stpc } else { stpq };
            stpf = s1.min(stpmax).max(stpmin);
        }
    } else {
        // Lower value, same sign, derivative magnitude does not decrease.
        if *brackt {
            let theta = 3.0 * (fp - *fy) / (*sty - *stp) + *dy + dp;
            let s = theta.abs().max(dy.abs()).max(dp.abs());
            let mut gamma = s * ((theta / s).powi(2) - (*dy / s) * (dp / s)).sqrt();
            if *stp > *sty {
                gamma = -gamma;
            }
            let p = (gamma - dp) + theta;
            let q = ((gamma - dp) + gamma) + *dy;
            let r = p / q;
            stpf = *stp + r * (*sty - *stp);
        } else if *stp > *stx {
            stpf = stpmax;
        } else {
            stpf = stpmin;
        }
    }
    if fp > *fx {
        *sty = *stp;
        *fy = fp;
        *dy = dp;
    } else {
        if sgnd < 0.0 {
            *sty = *stx;
            *fy = *fx;
            *dy = *dx;
        }
        *stx = *stp;
        *fx = fp;
        *dx = dp;
    }
    *stp = stpf;
}

/// Evaluate the closure, turning errors and non-finite output into a message.
fn evaluate<F>(fg: &mut F, x: &[f64], g: &mut [f64]) -> std::result::Result<f64, String>
where
    F: FnMut(&[f64], &mut [f64]) -> Result<f64>,
{
    match fg(x, g) {
        Err(e) => Err(format!("objective failed: {e}")),
        Ok(f) if !f.is_finite() => Err(format!("objective returned f = {f}")),
        Ok(f) => match g.iter().position(|v| !v.is_finite()) {
            Some(i) => Err(format!("objective returned g[{i}] = {}", g[i])),
            None => Ok(f),
        },
    }
}

/// The L-BFGS memory of a [`State`]: the stored pairs (oldest first) and
/// their inner products (`col×col`, row-major), exactly as the optimiser holds them.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryState {
    pub s: Vec<Vec<f64>>,
    pub y: Vec<Vec<f64>>,
    pub sy: Vec<f64>,
    pub ss: Vec<f64>,
    pub yy: Vec<f64>,
    pub sy_dot: Vec<f64>,
    pub theta: f64,
}

/// The optimiser between two iterations (see the module docs, "Resuming").
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub x: Vec<f64>,
    pub f: f64,
    pub g: Vec<f64>,
    pub n_iter: usize,
    pub n_eval: usize,
    /// ∞-norm of the projected gradient as last computed.
    pub proj_grad_norm: f64,
    pub memory: MemoryState,
}

/// A borrowed view of the state, handed to the `on_state` callback of
/// [`minimize_resumable`]; [`StateView::to_state`] copies it.
pub struct StateView<'a> {
    pub x: &'a [f64],
    pub f: f64,
    pub g: &'a [f64],
    pub n_iter: usize,
    pub n_eval: usize,
    pub proj_grad_norm: f64,
    mem: &'a Memory,
}

impl StateView<'_> {
    pub fn to_state(&self) -> State {
        State {
            x: self.x.to_vec(),
            f: self.f,
            g: self.g.to_vec(),
            n_iter: self.n_iter,
            n_eval: self.n_eval,
            proj_grad_norm: self.proj_grad_norm,
            memory: self.mem.to_state(),
        }
    }
}

/// Minimise `f` from `x0` within `bounds` (None: unbounded everywhere).
///
/// `fg(x, g)` returns f(x) and writes ∇f(x) into `g`. `observer` is called after
/// every evaluation and every accepted iterate; [`Control::Stop`] ends the run.
/// Invalid inputs (length mismatch, non-finite `x0`, crossed bounds, bad
/// options) give `Err`; everything that happens during the run gives `Ok` with
/// a [`Status`].
pub fn minimize<F, O>(
    fg: F,
    x0: &[f64],
    bounds: Option<&[Bound]>,
    opts: &Options,
    observer: O,
) -> Result<Outcome>
where
    F: FnMut(&[f64], &mut [f64]) -> Result<f64>,
    O: FnMut(&Progress) -> Control,
{
    minimize_resumable(fg, x0, bounds, opts, None, observer, |_: &StateView| {})
}

/// [`minimize`], reporting the [`State`] at the top of every iteration to
/// `on_state`, and starting from `resume` instead of evaluating at `x0` when
/// given (then `x0` only fixes the dimension). A resumed run continues exactly
/// as the original would have: same evaluation points, same result.
#[allow(clippy::too_many_arguments)]
pub fn minimize_resumable<F, O, S>(
    mut fg: F,
    x0: &[f64],
    bounds: Option<&[Bound]>,
    opts: &Options,
    resume: Option<&State>,
    mut observer: O,
    mut on_state: S,
) -> Result<Outcome>
where
    F: FnMut(&[f64], &mut [f64]) -> Result<f64>,
    O: FnMut(&Progress) -> Control,
    S: FnMut(&StateView),
{
    opts.validate()?;
    let n = x0.len();
    if n == 0 {
        return Err(Error::param("x0", "no coordinates to optimise"));
    }
    if let Some(i) = x0.iter().position(|v| !v.is_finite()) {
        return Err(Error::param(format!("x0[{i}]"), format!("not finite: {}", x0[i])));
    }
    let bx = Box_::new(n, bounds)?;
    let wh = bx.initial_where();
    // scipy's tolerance is factr·ε with factr = ftol/ε.
    let tol = (opts.ftol / EPS) * EPS;

    let finish =
        |x: Vec<f64>, f: f64, g: Vec<f64>, n_iter: usize, n_eval: usize, status: Status, message: String| {
            let proj_grad_norm = bx.proj_grad_norm(&x, &g);
            Ok(Outcome { x, f, g, n_iter, n_eval, status, message, proj_grad_norm })
        };
    if let Some(st) = resume {
        let bad = |m: String| Error::param("resume", m);
        if st.x.len() != n || st.g.len() != n {
            return Err(bad(format!("state of dimension {} for {n} coordinates", st.x.len())));
        }
        if !(st.f.is_finite() && st.x.iter().chain(&st.g).all(|v| v.is_finite())) {
            return Err(bad("non-finite x, f or g".into()));
        }
        let mut xp = st.x.clone();
        bx.project(&mut xp);
        if xp != st.x {
            return Err(bad("x lies outside the bounds".into()));
        }
        let mem = Memory::from_state(opts.m, n, &st.memory)?;
        return run_iterations(
            &mut fg,
            &bx,
            opts,
            wh,
            tol,
            Iterate {
                x: st.x.clone(),
                f: st.f,
                g: st.g.clone(),
                n_iter: st.n_iter,
                n_eval: st.n_eval,
                sbgnrm: st.proj_grad_norm,
            },
            mem,
            &mut observer,
            &mut on_state,
            &finish,
        );
    }

    let mut x = x0.to_vec();
    bx.project(&mut x);
    let mut g = vec![0.0; n];
    let n_eval = 1usize;
    let n_iter = 0usize;
    let f = match evaluate(&mut fg, &x, &mut g) {
        Ok(f) => f,
        Err(msg) => {
            return Ok(Outcome {
                x,
                f: f64::NAN,
                g: vec![f64::NAN; n],
                n_iter,
                n_eval,
                status: Status::EvaluationFailed,
                message: msg,
                proj_grad_norm: f64::NAN,
            })
        }
    };
    let prog = Progress { event: Event::Evaluation, n_eval, n_iter, x: &x, f, g: &g };
    if observer(&prog) == Control::Stop {
        return finish(x, f, g, n_iter, n_eval, Status::ObserverStop, "stopped by observer".into());
    }
    let sbgnrm = bx.proj_grad_norm(&x, &g);
    if sbgnrm <= opts.gtol {
        let msg = format!("projected gradient norm {sbgnrm:e} <= gtol");
        return finish(x, f, g, n_iter, n_eval, Status::GradientConverged, msg);
    }
    run_iterations(
        &mut fg,
        &bx,
        opts,
        wh,
        tol,
        Iterate { x, f, g, n_iter, n_eval, sbgnrm },
        Memory::new(opts.m),
        &mut observer,
        &mut on_state,
        &finish,
    )
}

/// The loop variables carried from one iteration to the next (besides the memory).
struct Iterate {
    x: Vec<f64>,
    f: f64,
    g: Vec<f64>,
    n_iter: usize,
    n_eval: usize,
    sbgnrm: f64,
}

type Finish<'a> = dyn Fn(Vec<f64>, f64, Vec<f64>, usize, usize, Status, String) -> Result<Outcome> + 'a;

/// The iterations of [`minimize_resumable`], from a started state.
#[allow(clippy::too_many_arguments)]
fn run_iterations<F, O, S>(
    fg: &mut F,
    bx: &Box_,
    opts: &Options,
    mut wh: Vec<Where>,
    tol: f64,
    start: Iterate,
    mut mem: Memory,
    observer: &mut O,
    on_state: &mut S,
    finish: &Finish,
) -> Result<Outcome>
where
    F: FnMut(&[f64], &mut [f64]) -> Result<f64>,
    O: FnMut(&Progress) -> Control,
    S: FnMut(&StateView),
{
    let Iterate { mut x, mut f, mut g, mut n_iter, mut n_eval, mut sbgnrm } = start;
    let n = x.len();
    let mut x_evaluated = x.clone();
    let mut free: Vec<usize> = (0..n).collect();
    let mut active: Vec<usize> = Vec::new();
    loop {
        on_state(&StateView { x: &x, f, g: &g, n_iter, n_eval, proj_grad_norm: sbgnrm, mem: &mem });
        // --- Search direction: Cauchy point, then subspace minimisation. ---
        let col = mem.col();
        let (mut z, c) = if !bx.constrained && col > 0 {
            (x.clone(), Vec::new())
        } else {
            match cauchy(&x, &g, bx, &mut wh, &mem, sbgnrm) {
                Some(v) => {
                    free.clear();
                    active.clear();
                    for i in 0..n {
                        if wh[i].is_free() {
                            free.push(i);
                        } else {
                            active.push(i);
                        }
                    }
                    v
                }
                None => {
                    mem.reset();
                    continue;
                }
            }
        };
        if !free.is_empty() && col > 0 {
            // r = −Zᵀ(g + B(xcp − x)), B(xcp − x) = θ(xcp − x) − W M c.
            let r: Option<Vec<f64>> = if !bx.constrained {
                Some(g.iter().map(|v| -v).collect())
            } else {
                mem.bmv(&c).map(|mc| {
                    free.iter()
                        .map(|&k| {
                            let mut v = -mem.theta * (z[k] - x[k]) - g[k];
                            for j in 0..col {
                                v += mem.y[j][k] * mc[j] + mem.s[j][k] * (mem.theta * mc[col + j]);
                            }
                            v
                        })
                        .collect()
                })
            };
            let du = r.and_then(|r| subspace_newton(&mem, &free, &active, &r));
            match du {
                Some(mut du) => project_newton(&mut z, &mut du, &free, bx, &x, &g),
                None => {
                    mem.reset();
                    continue;
                }
            }
        }
        let mut d: Vec<f64> = (0..n).map(|i| z[i] - x[i]).collect();

        // --- Line search along d. ---
        let dtd = dot(&d, &d);
        let dnorm = dtd.sqrt();
        let mut stpmx = BIG_STEP;
        if bx.constrained {
            if n_iter == 0 {
                stpmx = 1.0;
            } else {
                for i in 0..n {
                    let a1 = d[i];
                    if a1 < 0.0 && bx.nbd[i].has_lower() {
                        let a2 = bx.l[i] - x[i];
                        if a2 >= 0.0 {
                            stpmx = 0.0;
                        } else if a1 * stpmx < a2 {
                            stpmx = a2 / a1;
                        }
                    } else if a1 > 0.0 && bx.nbd[i].has_upper() {
                        let a2 = bx.u[i] - x[i];
                        if a2 <= 0.0 {
                            stpmx = 0.0;
                        } else if a1 * stpmx > a2 {
                            stpmx = a2 / a1;
                        }
                    }
                }
            }
        }
        let mut stp = if n_iter == 0 && !bx.boxed { (1.0 / dnorm).min(stpmx) } else { 1.0 };
        let x_old = x.clone();
        let g_old = g.clone();
        let f_old = f;
        let gd_old = dot(&g, &d);
        let mut gd = gd_old;
        let mut accepted = false;
        let mut n_trials = 0usize;
        let ls = if gd_old < 0.0 { LineSearch::start(f, gd_old, stp, 0.0, stpmx) } else { None };
        if let Some(mut ls) = ls {
            loop {
                n_trials += 1;
                if n_trials > opts.maxls {
                    break;
                }
                if stp == 1.0 {
                    x.copy_from_slice(&z);
                } else {
                    for i in 0..n {
                        let mut v = stp * d[i] + x_old[i];
                        if bx.nbd[i].has_lower() {
                            v = v.max(bx.l[i]);
                        }
                        if bx.nbd[i].has_upper() {
                            v = v.min(bx.u[i]);
                        }
                        x[i] = v;
                    }
                }
                // dcsrch may ask for the point it just had; like scipy's
                // ScalarFunction we reuse the last evaluation (f, g still hold it).
                if x != x_evaluated {
                    n_eval += 1;
                    match evaluate(fg, &x, &mut g) {
                        Ok(v) => f = v,
                        Err(msg) => {
                            return finish(
                                x_old,
                                f_old,
                                g_old,
                                n_iter,
                                n_eval,
                                Status::EvaluationFailed,
                                msg,
                            );
                        }
                    }
                    x_evaluated.copy_from_slice(&x);
                    let prog = Progress { event: Event::Evaluation, n_eval, n_iter, x: &x, f, g: &g };
                    if observer(&prog) == Control::Stop {
                        let msg = "stopped by observer during a line search".to_string();
                        return finish(x_old, f_old, g_old, n_iter, n_eval, Status::ObserverStop, msg);
                    }
                }
                gd = dot(&g, &d);
                match ls.next(f, gd, &mut stp) {
                    LsTask::Evaluate => continue,
                    LsTask::Converged | LsTask::Warning => {
                        accepted = true;
                        break;
                    }
                }
            }
        }
        if !accepted {
            // Restore the previous iterate; restart with an empty memory, or
            // give up if the memory was already empty.
            x.copy_from_slice(&x_old);
            g.copy_from_slice(&g_old);
            f = f_old;
            x_evaluated.copy_from_slice(&x_old);
            if mem.col() == 0 {
                let msg = "line search failed to find a lower point along a descent direction".to_string();
                return finish(x, f, g, n_iter, n_eval, Status::LineSearchFailed, msg);
            }
            mem.reset();
            continue;
        }

        // --- New iterate: scipy's stopping tests, in scipy's order. ---
        n_iter += 1;
        sbgnrm = bx.proj_grad_norm(&x, &g);
        let prog = Progress { event: Event::Iteration, n_eval, n_iter, x: &x, f, g: &g };
        if observer(&prog) == Control::Stop {
            return finish(x, f, g, n_iter, n_eval, Status::ObserverStop, "stopped by observer".into());
        }
        if n_iter >= opts.maxiter {
            let msg = format!("reached maxiter = {}", opts.maxiter);
            return finish(x, f, g, n_iter, n_eval, Status::IterationLimit, msg);
        }
        if n_eval > opts.maxfun {
            let msg = format!("number of evaluations {} exceeds maxfun = {}", n_eval, opts.maxfun);
            return finish(x, f, g, n_iter, n_eval, Status::EvaluationLimit, msg);
        }
        if sbgnrm <= opts.gtol {
            let msg = format!("projected gradient norm {sbgnrm:e} <= gtol");
            return finish(x, f, g, n_iter, n_eval, Status::GradientConverged, msg);
        }
        let ddum = f_old.abs().max(f.abs()).max(1.0);
        if f_old - f <= tol * ddum {
            let msg = format!("relative reduction of f {:e} <= ftol", (f_old - f) / ddum);
            return finish(x, f, g, n_iter, n_eval, Status::FunctionConverged, msg);
        }

        // --- Update the memory with s = stp·d, y = g − g_old. ---
        let y: Vec<f64> = (0..n).map(|i| g[i] - g_old[i]).collect();
        let rr = dot(&y, &y);
        let (dr, ddum) = if stp == 1.0 {
            (gd - gd_old, -gd_old)
        } else {
            for v in &mut d {
                *v *= stp;
            }
            ((gd - gd_old) * stp, -gd_old * stp)
        };
        if dr <= EPS * ddum {
            continue; // skip the update: curvature condition not met
        }
        let sts = if stp == 1.0 { dtd } else { stp * stp * dtd };
        if !mem.push(d, y, dr, sts, rr) {
            mem.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rosen(x: &[f64], g: &mut [f64]) -> Result<f64> {
        let n = x.len();
        let mut f = 0.0;
        g.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..n - 1 {
            let a = x[i + 1] - x[i] * x[i];
            let b = 1.0 - x[i];
            f += 100.0 * a * a + b * b;
            g[i] += -400.0 * x[i] * a - 2.0 * b;
            g[i + 1] += 200.0 * a;
        }
        Ok(f)
    }

    fn no_obs(_: &Progress) -> Control {
        Control::Continue
    }

    #[test]
    fn rosenbrock_converges() {
        let opts = Options { ftol: 1e-14, gtol: 1e-10, ..Options::default() };
        let out = minimize(rosen, &[-1.2, 1.0], None, &opts, no_obs).unwrap();
        assert!(out.status.converged(), "{:?} {}", out.status, out.message);
        assert!((out.x[0] - 1.0).abs() < 1e-6 && (out.x[1] - 1.0).abs() < 1e-6, "{:?}", out.x);
    }

    #[test]
    fn n_eval_counts_closure_calls() {
        let mut calls = 0;
        let b = [Bound::new(-2.0, 0.8), Bound::FREE, Bound::lower(0.5)];
        let out = minimize(
            |x: &[f64], g: &mut [f64]| {
                calls += 1;
                rosen(x, g)
            },
            &[-1.0, 0.3, 0.9],
            Some(&b),
            &Options { ftol: 0.0, gtol: 0.0, maxiter: 200, ..Options::default() },
            no_obs,
        )
        .unwrap();
        assert_eq!(out.n_eval, calls);
    }

    #[test]
    fn deterministic_bit_for_bit() {
        let opts = Options::default();
        let b = [Bound::new(-2.0, 0.8), Bound::FREE, Bound::lower(0.5), Bound::upper(2.0)];
        let a = minimize(rosen, &[-1.0, 0.3, 0.9, 1.5], Some(&b), &opts, no_obs).unwrap();
        let c = minimize(rosen, &[-1.0, 0.3, 0.9, 1.5], Some(&b), &opts, no_obs).unwrap();
        assert_eq!(
            a.x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            c.x.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!((a.n_eval, a.n_iter), (c.n_eval, c.n_iter));
        assert!(a.x[0] <= 0.8 && a.x[2] >= 0.5 && a.x[3] <= 2.0);
    }

    #[test]
    fn closure_error_and_nan_stop_cleanly() {
        // Fails on the 4th evaluation.
        let mut calls = 0;
        let out = minimize(
            |x: &[f64], g: &mut [f64]| {
                calls += 1;
                if calls == 4 {
                    return Err(Error::msg("kernel exploded"));
                }
                rosen(x, g)
            },
            &[-1.2, 1.0],
            None,
            &Options::default(),
            no_obs,
        )
        .unwrap();
        assert_eq!(out.status, Status::EvaluationFailed);
        assert!(out.message.contains("kernel exploded"));
        assert!(out.f.is_finite());
        // NaN in f on the first evaluation.
        let out =
            minimize(|_x: &[f64], _g: &mut [f64]| Ok(f64::NAN), &[1.0], None, &Options::default(), no_obs)
                .unwrap();
        assert_eq!(out.status, Status::EvaluationFailed);
        // NaN in the gradient at a trial point: the last good iterate comes back.
        let out = minimize(
            |x: &[f64], g: &mut [f64]| {
                g[0] = if x[0] < 0.5 { f64::NAN } else { 2.0 * (x[0] - 0.2) };
                Ok((x[0] - 0.2).powi(2))
            },
            &[3.0],
            None,
            &Options::default(),
            no_obs,
        )
        .unwrap();
        assert_eq!(out.status, Status::EvaluationFailed, "{}", out.message);
        assert!(out.x[0] >= 0.5 && out.g[0].is_finite());
    }

    #[test]
    fn observer_can_stop_and_sees_every_evaluation() {
        let mut evals = 0;
        let mut iters = 0;
        let out = minimize(rosen, &[-1.2, 1.0], None, &Options::default(), |p: &Progress| {
            match p.event {
                Event::Evaluation => evals += 1,
                Event::Iteration => iters += 1,
            }
            assert_eq!(p.n_eval, evals);
            if iters == 5 {
                Control::Stop
            } else {
                Control::Continue
            }
        })
        .unwrap();
        assert_eq!(out.status, Status::ObserverStop);
        assert_eq!(out.n_iter, 5);
        assert_eq!(out.n_eval, evals);
    }

    #[test]
    fn limits() {
        let opts = Options { maxiter: 3, ..Options::default() };
        let out = minimize(rosen, &[-1.2, 1.0], None, &opts, no_obs).unwrap();
        assert_eq!((out.status, out.n_iter), (Status::IterationLimit, 3));
        let opts = Options { maxfun: 5, ..Options::default() };
        let out = minimize(rosen, &[-1.2, 1.0], None, &opts, no_obs).unwrap();
        assert_eq!(out.status, Status::EvaluationLimit);
        assert!(out.n_eval > 5);
    }

    #[test]
    fn invalid_inputs_are_errors() {
        let o = Options::default();
        assert!(minimize(rosen, &[], None, &o, no_obs).is_err());
        assert!(minimize(rosen, &[f64::NAN, 1.0], None, &o, no_obs).is_err());
        let b = [Bound::new(1.0, 0.0), Bound::FREE];
        let e = minimize(rosen, &[0.5, 1.0], Some(&b), &o, no_obs).unwrap_err();
        assert!(e.to_string().contains("bounds[0]"), "{e}");
        assert!(minimize(rosen, &[0.5, 1.0], Some(&b[..1]), &o, no_obs).is_err());
        assert!(minimize(rosen, &[0.5, 1.0], None, &Options { m: 0, ..o.clone() }, no_obs).is_err());
    }

    #[test]
    fn bmv_inverts_the_middle_matrix() {
        // Build a memory from a few (s, y) pairs of a convex quadratic and
        // compare M·v with the explicit inverse of [[−D, Lᵀ], [L, θSᵀS]].
        let a = [[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]];
        let mut mem = Memory::new(5);
        let ss = [[1.0, 0.2, -0.3], [0.1, -1.0, 0.4], [0.3, 0.3, 1.0]];
        for s in ss {
            let y: Vec<f64> = (0..3).map(|i| (0..3).map(|j| a[i][j] * s[j]).sum()).collect();
            let sty = dot(&s, &y);
            let sts = dot(&s, &s);
            let yty = dot(&y, &y);
            assert!(mem.push(s.to_vec(), y, sty, sts, yty));
        }
        let col = mem.col();
        let mut minv = DMatrix::zeros(2 * col, 2 * col);
        for i in 0..col {
            minv[(i, i)] = -mem.sy[(i, i)];
            for j in 0..col {
                if i > j {
                    minv[(col + i, j)] = mem.sy[(i, j)];
                    minv[(j, col + i)] = mem.sy[(i, j)];
                }
                minv[(col + i, col + j)] = mem.theta * mem.ss[(i, j)];
            }
        }
        let m = minv.try_inverse().unwrap();
        let v: Vec<f64> = (0..2 * col).map(|i| (i as f64 * 0.7).sin() + 0.1).collect();
        let want = &m * nalgebra::DVector::from_column_slice(&v);
        let got = mem.bmv(&v).unwrap();
        for i in 0..2 * col {
            assert!(
                (got[i] - want[i]).abs() < 1e-10 * (1.0 + want[i].abs()),
                "{i}: {} vs {}",
                got[i],
                want[i]
            );
        }
    }

    /// Resuming from any saved state reproduces the uninterrupted run bit for
    /// bit: the same evaluation points afterwards and the same outcome.
    #[test]
    fn resume_from_any_state_is_exact() {
        let b = [Bound::new(-2.0, 0.8), Bound::FREE, Bound::lower(0.5), Bound::upper(1.5)];
        let x0 = [-1.0, 0.3, 0.9, 1.2];
        let opts = Options { ftol: 0.0, gtol: 1e-9, maxiter: 60, m: 4, ..Options::default() };
        let mut points: Vec<Vec<f64>> = Vec::new();
        let mut states: Vec<State> = Vec::new();
        let full = minimize_resumable(
            |x: &[f64], g: &mut [f64]| {
                points.push(x.to_vec());
                rosen(x, g)
            },
            &x0,
            Some(&b),
            &opts,
            None,
            no_obs,
            |s: &StateView| states.push(s.to_state()),
        )
        .unwrap();
        assert!(states.len() > 10, "{}", states.len());
        for st in states.iter().step_by(3) {
            let mut later: Vec<Vec<f64>> = Vec::new();
            let out = minimize_resumable(
                |x: &[f64], g: &mut [f64]| {
                    later.push(x.to_vec());
                    rosen(x, g)
                },
                &x0,
                Some(&b),
                &opts,
                Some(st),
                no_obs,
                |_: &StateView| {},
            )
            .unwrap();
            assert_eq!(later[..], points[st.n_eval..], "evaluations after n_eval = {}", st.n_eval);
            assert_eq!(out.x, full.x);
            assert_eq!(out.f.to_bits(), full.f.to_bits());
            assert_eq!((out.n_eval, out.n_iter, out.status), (full.n_eval, full.n_iter, full.status));
        }
        // A state that does not fit the problem is refused.
        let mut bad = states[5].clone();
        bad.x.pop();
        assert!(
            minimize_resumable(rosen, &x0, Some(&b), &opts, Some(&bad), no_obs, |_: &StateView| {}).is_err()
        );
        let mut bad = states[5].clone();
        bad.memory.theta = f64::NAN;
        assert!(
            minimize_resumable(rosen, &x0, Some(&b), &opts, Some(&bad), no_obs, |_: &StateView| {}).is_err()
        );
    }
}
