"""Independent numpy implementation of the stage-1 residual diagnostics.

Written from docs/forward-model-and-stage1.md section 5.2 and the dxtbx/cctbx
definitions, sharing no code with the Rust crate. It reads the .expt JSON
itself (composing the detector hierarchy from its local frames) and, in "refl"
mode, the DIALS .refl msgpack file too.

usage: python3 report_numpy.py input.json output.json
input:  {"expt": path, "hierarchy_level": int,
         "refl": path (optional; cal = xyzcal.mm/px of the file),
         "rows": [{"shot", "key", "panel", "obs_mm", "cal_mm", "obs_px", "cal_px",
                   "delpsi_deg", "var"}] (optional)}
output: {"rows": {key: {...}}, "panels": {panel: stats}, "groups": [...], "dataset": {...}}
"""
import json
import sys

import msgpack
import numpy as np


def unit(v):
    return v / np.linalg.norm(v)


def load_detector(expt):
    det = expt["detector"][0]
    panels = [None] * len(det["panels"])

    def frame(parent, node):
        # parent: (f, s, n, o) global; node local fast/slow/origin
        f_p, s_p, n_p, o_p = parent
        r = np.column_stack([f_p, s_p, n_p])
        f = r @ np.array(node["fast_axis"], float)
        s = r @ np.array(node["slow_axis"], float)
        o = r @ np.array(node["origin"], float) + o_p
        return f, s, unit(np.cross(f, s)), o

    ident = (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0]), np.zeros(3))
    groups_at = {}

    def walk(node, parent, depth, group_path):
        fr = frame(parent, node)
        for ch in node.get("children", []):
            if "panel" in ch:
                i = ch["panel"]
                p = det["panels"][i]
                f, s, _, o = frame(fr, p)
                panels[i] = dict(p, f=f, s=s, o=o)
                for d, g in enumerate(group_path + [node["name"]]):
                    groups_at.setdefault(d, {}).setdefault(g, []).append(i)
                # a panel sitting above a level is its own group there
                for d in range(depth + 1, 8):
                    groups_at.setdefault(d, {}).setdefault(p["name"], []).append(i)
            else:
                walk(ch, fr, depth + 1, group_path + [node["name"]])

    if "hierarchy" in det:
        walk(det["hierarchy"], ident, 0, [])
    for i, p in enumerate(det["panels"]):
        if panels[i] is None:
            panels[i] = dict(p, f=np.array(p["fast_axis"]), s=np.array(p["slow_axis"]), o=np.array(p["origin"]))
    for p in panels:
        strat = p.get("px_mm_strategy", {})
        mu = strat.get("mu", p.get("mu", 0.0))
        t0 = strat.get("t0", p.get("thickness", 0.0))
        par = strat.get("type") == "ParallaxCorrectedPxMmStrategy" and mu > 0 and t0 > 0
        p["mu_t0"] = (mu, t0) if par else None
    return panels, groups_at


def px_to_mm(p, px):
    mm = np.array(px[:2], float) * np.array(p["pixel_size"], float)
    if p["mu_t0"] is None:
        return mm
    mu, t0 = p["mu_t0"]
    lab = p["o"] + mm[0] * p["f"] + mm[1] * p["s"]
    u = unit(lab)
    n = np.cross(p["f"], p["s"])
    if p["o"] @ n < 0:
        n = -n
    cos_t = u @ n
    att = 1.0 / mu - (t0 / cos_t + 1.0 / mu) * np.exp(-mu * t0 / cos_t)
    return mm - np.array([u @ p["f"], u @ p["s"]]) * att


def lab(p, mm):
    return p["o"] + mm[0] * p["f"] + mm[1] * p["s"]


def angle(a, b):
    return np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


def read_refl(path):
    d = msgpack.unpackb(open(path, "rb").read(), strict_map_key=False)
    hdr = d[2]
    n = hdr["nrows"]
    types = {"double": ("<f8", 1), "vec3<double>": ("<f8", 3), "int": ("<i4", 1),
             "std::size_t": ("<u8", 1), "cctbx::miller::index<>": ("<i4", 3)}
    out = {}
    for k, (t, (_, blob)) in hdr["data"].items():
        if t in types:
            dt, c = types[t]
            a = np.frombuffer(blob, dtype=dt)
            out[k] = a.reshape(n, c) if c > 1 else a
    return out


def uncentred_cc(x, y):
    # sklearn EmpiricalCovariance(assume_centered=True): cov = XᵀX/n
    if len(x) < 3:
        return None
    X = np.column_stack([x, y])
    cov = X.T @ X / len(x)
    if cov[0, 0] <= 0 or cov[1, 1] <= 0:
        return None
    return cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])


def pearson(x, y):
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def stats(sel):
    if len(sel) == 0:
        return {"n": 0}
    dx = np.array([r["d"] for r in sel])
    rad = np.array([r["radial"] for r in sel]) * 1000
    tra = np.array([r["transverse"] for r in sel]) * 1000
    psi = np.array([r["delpsi_deg"] for r in sel])
    d2t = np.array([r["tt_obs"] - r["tt_cal"] for r in sel])
    med = np.median(psi)
    return {
        "n": len(sel),
        "rmsd_um": float(1000 * np.sqrt(np.sum(dx[:, 0] ** 2 + dx[:, 1] ** 2) / len(sel))),
        "radial_rmsd_um": float(np.sqrt(np.mean(rad ** 2))),
        "transverse_rmsd_um": float(np.sqrt(np.mean(tra ** 2))),
        "mean_radial_um": float(np.mean(rad)),
        "mean_transverse_um": float(np.mean(tra)),
        "delpsi_mean_deg": float(np.mean(psi)),
        "delpsi_sd_deg": float(np.std(psi, ddof=1)) if len(psi) > 1 else None,
        "delpsi_median_deg": float(med),
        "delpsi_mad_deg": float(np.median(np.abs(psi - med))),
        "cc_radial_delpsi": uncentred_cc(rad, psi),
        "cc_transverse_delpsi": uncentred_cc(tra, psi),
        "cc_delpsi_d2theta": pearson(psi, d2t),
        "n_delpsi_pos": int(np.sum(psi > 0)),
        "n_delpsi_neg": int(np.sum(psi < 0)),
    }


def main():
    inp = json.load(open(sys.argv[1]))
    expt = json.load(open(inp["expt"]))
    panels, groups_at = load_detector(expt)
    beams = expt["beam"]
    exps = expt["experiment"]

    rows = []
    if "refl" in inp:
        t = read_refl(inp["refl"])
        counts = {}
        for i in range(len(t["id"])):
            sid = int(t["id"][i])
            k = counts.get(sid, 0)
            counts[sid] = k + 1
            rows.append({"shot": sid, "key": f"{sid}:{k}", "panel": int(t["panel"][i]),
                         "obs_mm": t["xyzobs.mm.value"][i][:2], "cal_mm": t["xyzcal.mm"][i][:2],
                         "obs_px": t["xyzobs.px.value"][i][:2], "cal_px": t["xyzcal.px"][i][:2],
                         "delpsi_deg": float(np.degrees(t["delpsical.rad"][i])),
                         "var": float(np.linalg.norm(t["xyzobs.mm.variance"][i]))})
    else:
        rows = inp["rows"]

    out_rows = {}
    for r in rows:
        p = panels[r["panel"]]
        b = beams[exps[r["shot"]]["beam"]]
        s0 = -unit(np.array(b["direction"], float)) / b["wavelength"]
        # beam centre on the panel plane: o + x f + y s = t ŝ0
        n = np.cross(p["f"], p["s"])
        tpar = (p["o"] @ n) / (unit(s0) @ n)
        bc = tpar * unit(s0)
        obs_lab = lab(p, np.array(r["obs_mm"], float))
        dmm = np.array(r["cal_mm"], float) - np.array(r["obs_mm"], float)
        delta = dmm[0] * p["f"] + dmm[1] * p["s"]
        rhat = unit(obs_lab - bc)
        that = unit(np.cross(rhat, bc))
        tt_obs = angle(s0, lab(p, px_to_mm(p, r["obs_px"])))
        tt_cal = angle(s0, lab(p, px_to_mm(p, r["cal_px"])))
        rr = dict(r, radial=float(delta @ rhat), transverse=float(delta @ that), tt_obs=float(tt_obs),
                  tt_cal=float(tt_cal), d=dmm)
        out_rows[r["key"]] = rr

    allr = list(out_rows.values())
    per_panel = {}
    for pid in sorted(set(r["panel"] for r in allr)):
        per_panel[str(pid)] = stats([r for r in allr if r["panel"] == pid])
    level = inp.get("hierarchy_level", 0)
    groups = []
    for name, members in groups_at.get(level, {"detector": list(range(len(panels)))}).items():
        sel = [r for r in allr if r["panel"] in members]
        groups.append({"name": name, "panels": sorted(members), "stats": stats(sel)})

    dn = np.array([np.hypot(*r["d"]) for r in allr])
    var = np.array([r["var"] for r in allr])
    ok = (var > 0) & np.isfinite(var)
    w = 1 / var[ok]
    gs = [g["stats"] for g in groups if g["stats"]["n"] > 0]
    gw = np.array([g["n"] for g in gs], float)

    def wms(key):
        v = np.array([g[key] for g in gs])
        m = np.average(v, weights=gw)
        V1, V2 = gw.sum(), (gw ** 2).sum()
        sd = np.sqrt(V1 / (V1 ** 2 - V2) * np.sum(gw * (v - m) ** 2)) if V1 ** 2 > V2 else None
        return [float(m), None if sd is None else float(sd)]

    dataset = {
        "overall": stats(allr),
        "rmsd_um": float(1000 * np.sqrt(np.mean(dn ** 2))),
        "weighted_rmsd_um": float(1000 * np.sqrt(np.sum(w * dn[ok] ** 2) / np.sum(w))),
        "n_weighted": int(ok.sum()),
        "group_rmsd": [wms("rmsd_um"), wms("radial_rmsd_um"), wms("transverse_rmsd_um")],
    }
    for r in out_rows.values():
        for k in ("d", "obs_mm", "cal_mm", "obs_px", "cal_px"):
            r.pop(k, None)
    json.dump({"rows": out_rows, "panels": per_panel, "groups": groups, "dataset": dataset},
              open(sys.argv[2], "w"))


main()
