"""Reference side of tests/refine_lbfgsb.rs: run scipy's L-BFGS-B on the problems
described (as JSON on stdin) and print x, fun, nit, nfev, status, message as JSON.
The objectives are written with plain Python floats in the same operation order
as the Rust test, so both sides evaluate bit-identical f and g."""
import json, math, sys
from scipy.optimize import minimize


def rosen(x):
    n = len(x)
    f = 0.0
    g = [0.0] * n
    for i in range(n - 1):
        a = x[i + 1] - x[i] * x[i]
        b = 1.0 - x[i]
        f += 100.0 * a * a + b * b
        g[i] += -400.0 * x[i] * a - 2.0 * b
        g[i + 1] += 200.0 * a
    return f, g


def driver1(x):
    """The example of the L-BFGS-B distribution (driver1): an extended
    Rosenbrock-like function, 25-D, bounds alternately [1, 100] and [-100, 100]."""
    n = len(x)
    f = 0.25 * (x[0] - 1.0) ** 2
    for i in range(1, n):
        f += (x[i] - x[i - 1] ** 2) ** 2
    f *= 4.0
    g = [0.0] * n
    t1 = x[1] - x[0] ** 2
    g[0] = 2.0 * (x[0] - 1.0) - 16.0 * x[0] * t1
    for i in range(1, n - 1):
        t2 = t1
        t1 = x[i + 1] - x[i] ** 2
        g[i] = 8.0 * t2 - 16.0 * x[i] * t1
    g[n - 1] = 8.0 * t1
    return f, g


def quad(a, c):
    def fun(x):
        n = len(x)
        r = [x[i] - c[i] for i in range(n)]
        g = [0.0] * n
        f = 0.0
        for i in range(n):
            s = 0.0
            for j in range(n):
                s += a[i][j] * r[j]
            g[i] = s
            f += 0.5 * r[i] * s
        return f, g
    return fun


def main():
    out = []
    for p in json.load(sys.stdin):
        fun = {"rosen": rosen, "driver1": driver1}.get(p["kind"]) or quad(p["a"], p["c"])
        bounds = None
        if p["bounds"] is not None:
            bounds = [(lo if lo is not None else -math.inf, hi if hi is not None else math.inf)
                      for lo, hi in p["bounds"]]
        o = p["options"]
        res = minimize(lambda x: (lambda fg: (fg[0], fg[1]))(fun([float(v) for v in x])),
                       p["x0"], jac=True, method="L-BFGS-B", bounds=bounds,
                       options=dict(maxcor=o["m"], ftol=o["ftol"], gtol=o["gtol"],
                                    maxiter=o["maxiter"], maxfun=o["maxfun"]))
        out.append(dict(name=p["name"], x=[float(v) for v in res.x], fun=float(res.fun),
                        nit=int(res.nit), nfev=int(res.nfev), status=int(res.status),
                        message=str(res.message)))
    json.dump(out, sys.stdout)


main()
