//! L-BFGS-B against scipy's `minimize(method="L-BFGS-B")` (python3 + scipy).
//!
//! Each problem is run by both sides with the same x0, bounds and options; the
//! objectives evaluate in the same operation order, so f and g agree bit for
//! bit. We require the same minimiser within tight tolerances and the same kind
//! of termination, and print the iteration/evaluation counts side by side.

#![allow(clippy::needless_range_loop)]

use diffbragg::error::Result;
use diffbragg::refine::lbfgsb::{minimize, Bound, Control, Options, Progress, Status};
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(Clone)]
enum Kind {
    Rosen,
    Driver1,
    Quad { a: Vec<Vec<f64>>, c: Vec<f64> },
}

struct Problem {
    name: &'static str,
    kind: Kind,
    x0: Vec<f64>,
    bounds: Option<Vec<Bound>>,
    opts: Options,
    /// Tolerance on |x_ours − x_scipy| (absolute, per coordinate).
    xtol: f64,
}

fn rosen(x: &[f64], g: &mut [f64]) -> f64 {
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
    f
}

/// The example of the L-BFGS-B distribution (driver1).
fn driver1(x: &[f64], g: &mut [f64]) -> f64 {
    let n = x.len();
    let mut f = 0.25 * (x[0] - 1.0).powi(2);
    for i in 1..n {
        f += (x[i] - x[i - 1].powi(2)).powi(2);
    }
    f *= 4.0;
    let mut t1 = x[1] - x[0].powi(2);
    g[0] = 2.0 * (x[0] - 1.0) - 16.0 * x[0] * t1;
    for i in 1..n - 1 {
        let t2 = t1;
        t1 = x[i + 1] - x[i].powi(2);
        g[i] = 8.0 * t2 - 16.0 * x[i] * t1;
    }
    g[n - 1] = 8.0 * t1;
    f
}

fn quad(a: &[Vec<f64>], c: &[f64], x: &[f64], g: &mut [f64]) -> f64 {
    let n = x.len();
    let r: Vec<f64> = (0..n).map(|i| x[i] - c[i]).collect();
    let mut f = 0.0;
    for i in 0..n {
        let mut s = 0.0;
        for j in 0..n {
            s += a[i][j] * r[j];
        }
        g[i] = s;
        f += 0.5 * r[i] * s;
    }
    f
}

/// Q·diag(λ)·Qᵀ with Q a Householder reflection (exactly symmetric by construction).
fn rotated_diag(lams: &[f64], v: &[f64]) -> Vec<Vec<f64>> {
    let n = lams.len();
    let vv: f64 = v.iter().map(|a| a * a).sum();
    let q: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| (if i == j { 1.0 } else { 0.0 }) - 2.0 * v[i] * v[j] / vv).collect())
        .collect();
    let mut a = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = 0.0;
            for k in 0..n {
                s += q[i][k] * lams[k] * q[j][k];
            }
            a[i][j] = s;
            a[j][i] = s;
        }
    }
    a
}

fn problems() -> Vec<Problem> {
    let tight = Options { ftol: 1e-15, gtol: 1e-10, ..Options::default() };
    let mut v = Vec::new();
    v.push(Problem {
        name: "rosenbrock-2d",
        kind: Kind::Rosen,
        x0: vec![-1.2, 1.0],
        bounds: None,
        opts: tight.clone(),
        xtol: 1e-6,
    });
    v.push(Problem {
        name: "rosenbrock-10d",
        kind: Kind::Rosen,
        x0: vec![1.3, 0.7, 0.8, 1.9, 1.2, -0.5, 0.1, 1.4, 0.3, -1.1],
        bounds: None,
        opts: tight.clone(),
        xtol: 1e-6,
    });
    v.push(Problem {
        name: "rosenbrock-10d-defaults",
        kind: Kind::Rosen,
        x0: vec![1.3, 0.7, 0.8, 1.9, 1.2, -0.5, 0.1, 1.4, 0.3, -1.1],
        bounds: None,
        opts: Options::default(),
        xtol: 1e-3,
    });
    // Bounded quadratic whose unconstrained minimiser lies outside the box on
    // several coordinates (lower, upper and one-sided bounds become active).
    let m = [
        [1.0, 0.3, -0.2, 0.0, 0.5, 0.1],
        [0.0, 1.2, 0.4, -0.3, 0.0, 0.2],
        [0.2, 0.0, 0.9, 0.5, -0.1, 0.0],
        [-0.4, 0.1, 0.0, 1.1, 0.3, -0.2],
        [0.0, 0.0, 0.6, 0.2, 1.3, 0.4],
        [0.3, -0.5, 0.0, 0.1, 0.2, 0.8],
    ];
    let mut a = vec![vec![0.0; 6]; 6];
    for i in 0..6 {
        for j in 0..6 {
            let mut s = if i == j { 0.5 } else { 0.0 };
            for k in 0..6 {
                s += m[i][k] * m[j][k];
            }
            a[i][j] = s;
        }
    }
    let c = vec![2.0, -1.5, 0.4, 3.0, -2.0, 0.7];
    v.push(Problem {
        name: "bounded-quadratic",
        kind: Kind::Quad { a: a.clone(), c: c.clone() },
        x0: vec![0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        bounds: Some(vec![
            Bound::new(-1.0, 1.0),
            Bound::new(-1.0, 1.0),
            Bound::new(-1.0, 1.0),
            Bound::upper(1.5),
            Bound::lower(-0.5),
            Bound::FREE,
        ]),
        opts: tight.clone(),
        xtol: 1e-8,
    });
    v.push(Problem {
        name: "rosenbrock-4d-one-fixed",
        kind: Kind::Rosen,
        x0: vec![-1.0, 0.6, 0.9, 1.5],
        bounds: Some(vec![Bound::FREE, Bound::fixed(0.6), Bound::new(-2.0, 2.0), Bound::FREE]),
        opts: tight.clone(),
        xtol: 1e-6,
    });
    // The L-BFGS-B distribution's own example: m = 5, many active bounds.
    v.push(Problem {
        name: "lbfgsb-driver1-25d",
        kind: Kind::Driver1,
        x0: vec![3.0; 25],
        bounds: Some(
            (0..25)
                .map(|i| if i % 2 == 0 { Bound::new(1.0, 100.0) } else { Bound::new(-100.0, 100.0) })
                .collect(),
        ),
        opts: Options { m: 5, ftol: 1e-15, gtol: 1e-8, ..Options::default() },
        xtol: 1e-6,
    });
    // Condition number 1e6, eigenvectors mixed by a reflection.
    let lams = [1.0, 3.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
    let hv = [0.3, -0.1, 0.5, 0.2, -0.4, 0.1, 0.35, -0.25];
    let a = rotated_diag(&lams, &hv);
    v.push(Problem {
        name: "ill-conditioned-quadratic",
        kind: Kind::Quad { a, c: vec![1.0, -2.0, 0.5, 3.0, -1.0, 0.25, 2.0, -0.75] },
        x0: vec![0.0; 8],
        bounds: None,
        opts: Options { ftol: 1e-15, gtol: 1e-9, ..Options::default() },
        xtol: 1e-6,
    });
    v
}

fn scipy_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/refine_lbfgsb_scipy.py")
}

fn run_scipy(probs: &[Problem]) -> Vec<Value> {
    let spec: Vec<Value> = probs
        .iter()
        .map(|p| {
            let (kind, a, c) = match &p.kind {
                Kind::Rosen => ("rosen", Value::Null, Value::Null),
                Kind::Driver1 => ("driver1", Value::Null, Value::Null),
                Kind::Quad { a, c } => ("quad", json!(a), json!(c)),
            };
            let bounds =
                p.bounds.as_ref().map(|b| b.iter().map(|b| json!([b.lower, b.upper])).collect::<Vec<_>>());
            json!({
                "name": p.name, "kind": kind, "a": a, "c": c, "x0": p.x0, "bounds": bounds,
                "options": {"m": p.opts.m, "ftol": p.opts.ftol, "gtol": p.opts.gtol,
                            "maxiter": p.opts.maxiter, "maxfun": p.opts.maxfun},
            })
        })
        .collect();
    let mut child = Command::new("python3")
        .arg(scipy_script())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the scipy cross-check (scripts/setup.sh installs scipy)");
    child.stdin.take().unwrap().write_all(serde_json::to_string(&spec).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "scipy reference failed (is scipy installed? scripts/setup.sh installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn lbfgsb_matches_scipy() {
    let probs = problems();
    let refs = run_scipy(&probs);
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}  status (ours | scipy)",
        "problem", "nit", "nit_sp", "nfev", "nfev_sp"
    );
    for (p, r) in probs.iter().zip(&refs) {
        assert_eq!(r["name"], p.name);
        let kind = p.kind.clone();
        let fg = move |x: &[f64], g: &mut [f64]| -> Result<f64> {
            Ok(match &kind {
                Kind::Rosen => rosen(x, g),
                Kind::Driver1 => driver1(x, g),
                Kind::Quad { a, c } => quad(a, c, x, g),
            })
        };
        let out =
            minimize(fg, &p.x0, p.bounds.as_deref(), &p.opts, |_: &Progress| Control::Continue).unwrap();
        let sx: Vec<f64> = r["x"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let (nit, nfev) = (r["nit"].as_u64().unwrap() as usize, r["nfev"].as_u64().unwrap() as usize);
        println!(
            "{:<28} {:>9} {:>9} {:>9} {:>9}  {:?} | {}",
            p.name, out.n_iter, nit, out.n_eval, nfev, out.status, r["message"]
        );
        for i in 0..sx.len() {
            assert!(
                (out.x[i] - sx[i]).abs() <= p.xtol,
                "{}: x[{i}] = {} vs scipy {} (tol {})",
                p.name,
                out.x[i],
                sx[i],
                p.xtol
            );
        }
        let sf = r["fun"].as_f64().unwrap();
        assert!((out.f - sf).abs() <= 1e-8 * (1.0 + sf.abs()), "{}: f {} vs scipy {}", p.name, out.f, sf);
        // Same kind of stop: converged on both sides (scipy status 0).
        assert_eq!(r["status"].as_i64().unwrap(), 0, "{}: scipy did not converge", p.name);
        assert!(out.status.converged(), "{}: {:?} {}", p.name, out.status, out.message);
        // Same algorithm, so the work should be comparable (rounding alone makes
        // ill-conditioned runs drift apart after a few iterations).
        assert!(out.n_eval <= 2 * nfev + 5, "{}: {} evaluations vs scipy {}", p.name, out.n_eval, nfev);
        if let Some(b) = &p.bounds {
            for (i, bi) in b.iter().enumerate() {
                assert!(bi.lower.is_none_or(|l| out.x[i] >= l) && bi.upper.is_none_or(|u| out.x[i] <= u));
            }
        }
    }
}

#[test]
fn fixed_coordinate_never_moves() {
    let b = [Bound::FREE, Bound::fixed(0.6), Bound::new(-2.0, 2.0), Bound::FREE];
    let mut seen = Vec::new();
    let out = minimize(
        |x: &[f64], g: &mut [f64]| -> Result<f64> {
            seen.push(x[1]);
            Ok(rosen(x, g))
        },
        &[-1.0, 0.9, 0.9, 1.5],
        Some(&b),
        &Options::default(),
        |_: &Progress| Control::Continue,
    )
    .unwrap();
    // x0[1] = 0.9 is projected onto the fixed value before the first evaluation.
    assert!(seen.iter().all(|&v| v == 0.6), "fixed coordinate moved: {seen:?}");
    assert!(out.status.converged() || out.status == Status::FunctionConverged);
}
