"""Independent numpy evaluation of the reference pixel formula
(shared/reference/README.md) for selected pixels, under both sub-pixel
conventions:

  nanobragg: Omega and P once, at the centre of the first sub-pixel;
  diffbragg: Omega at every sub-pixel (full pixel area), P at the pixel centre.

Uses only the case's own files (.expt JSON, .lam, _umats.txt, params JSON and
the h k l F text); no code of the Rust crate.

usage: python3 kernel_reference_numpy.py CASE_DIR CASE PIXELS.json OUT.json
PIXELS.json: [[panel, fast, slow], ...]; OUT.json: {"nanobragg": [...], "diffbragg": [...]}
"""
import gzip
import json
import sys

import numpy as np

case_dir, case, pix_path, out_path = sys.argv[1:5]
J = lambda name: json.load(open(f"{case_dir}/{name}"))
params = J(f"{case}_params.json")
expt = J(f"{case}.expt")

# Geometry: panels in the lab frame (this script supports a flat hierarchy with an identity root).
det = expt["detector"][0]
h = det.get("hierarchy")
if h is not None:
    assert h["fast_axis"] == [1.0, 0.0, 0.0] and h["slow_axis"] == [0.0, 1.0, 0.0]
    assert h["origin"] == [0.0, 0.0, 0.0]
    assert all("panel" in c for c in h["children"])
panels = []
for p in det["panels"]:
    f = np.array(p["fast_axis"], float)
    s = np.array(p["slow_axis"], float)
    f /= np.linalg.norm(f)
    s /= np.linalg.norm(s)
    o = np.array(p["origin"], float)
    n = np.cross(f, s)
    n /= np.linalg.norm(n)
    if n @ o < 0:
        n = -n
    panels.append((o, f, s, n, p["pixel_size"]))

beam = expt["beam"][0]
inc = -np.array(beam["direction"], float)
inc /= np.linalg.norm(inc)
pn = np.array(beam["polarization_normal"], float)
E = np.cross(pn, inc)
E /= np.linalg.norm(E)
K = 2.0 * beam["polarization_fraction"] - 1.0
assert abs(K - params["kahn_factor"]) < 1e-12

real = np.array([expt["crystal"][0][k] for k in ("real_space_a", "real_space_b", "real_space_c")], float)  # rows a, b, c
umats = [np.array(l.split(), float).reshape(3, 3) for l in open(f"{case_dir}/{params['mosaic_umats']}") if l.strip()]
# rows: domain m, axis i: U_m a_i
axes = np.array([[U @ real[i] for i in range(3)] for U in umats])  # (M, 3, 3)

lam = np.loadtxt(f"{case_dir}/{case}.lam", delimiter=",", skiprows=1, ndmin=2)
wl, w = lam[:, 0], lam[:, 1] / lam[:, 1].sum()

F = {}
with gzip.open(f"{case_dir}/lyso_P1.hkl.gz", "rt") as fh:
    for line in fh:
        t = line.split()
        if len(t) == 4:
            F[(int(t[0]), int(t[1]), int(t[2]))] = float(t[3])
default_F = params["default_F"]
N = np.array(params["Ncells_abc"], float)
assert params["lattice_shape"] == "gauss_xtal"
os_ = int(params["oversample"])
pref = params["r_e_sqr_m2"] * params["fluence_photons_per_m2"] / (len(umats) * os_ * os_)


def polar(pos):
    k = pos / np.linalg.norm(pos)
    c2t = inc @ k
    B_in = np.cross(E, inc)
    E_in = np.cross(inc, B_in)
    x, y = k @ E_in, k @ B_in
    cos2psi = (x * x - y * y) / (x * x + y * y) if x * x + y * y > 0 else 1.0
    return 0.5 * (1.0 + c2t * c2t - K * cos2psi * (1.0 - c2t * c2t))


def omega(pos, n, area):
    r = np.linalg.norm(pos)
    return area * (n @ pos) / r**3


out = {"nanobragg": [], "diffbragg": []}
for pi, fast, slow in json.load(open(pix_path)):
    o, f, s, n, (px, py) = panels[pi]
    area = px * py
    subs = [(i, j) for j in range(os_) for i in range(os_)]  # (fast, slow) sub-pixel indices
    pos = [o + f * (fast + (i + 0.5) / os_) * px + s * (slow + (j + 0.5) / os_) * py for i, j in subs]
    I_sub = []
    for P in pos:
        k = P / np.linalg.norm(P)
        q = (k - inc)[None, :] / wl[:, None]  # (C, 3)
        hh = np.einsum("mij,cj->cmi", axes, q)  # (C, M, 3)
        h0 = np.ceil(hh - 0.5)
        latt = np.prod(N) ** 2 * np.exp(-2.0 * (((hh - h0) * N) ** 2).sum(-1) / 0.63)
        f2 = np.vectorize(lambda a, b, c: F.get((int(a), int(b), int(c)), default_F) ** 2)(h0[..., 0], h0[..., 1], h0[..., 2])
        I_sub.append((w[:, None] * f2 * latt).sum())
    I_sub = np.array(I_sub)
    first = pos[0]
    out["nanobragg"].append(pref * polar(first) * omega(first, n, area) * I_sub.sum())
    centre = o + f * (fast + 0.5) * px + s * (slow + 0.5) * py
    out["diffbragg"].append(pref * polar(centre) * sum(omega(P, n, area) * I for P, I in zip(pos, I_sub)))
json.dump(out, open(out_path, "w"))
