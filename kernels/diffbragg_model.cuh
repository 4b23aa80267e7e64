// diffbragg_model.cuh: the per-pixel forward model and its first derivatives,
// as __host__ __device__ functions over plain structs.
//
// One source, two compilers: NVRTC compiles it (with diffbragg.cu) for the GPU
// at run time, and the host C++ compiler compiles it (with host_kernel.cpp) so
// CI can check, without a GPU, that these numbers equal the Rust CPU kernel's
// (src/kernel/cpu.rs, src/kernel/model.rs: the maths is documented there).
//
// Conventions (identical to the CPU kernel):
// * lengths mm, q in 1/Å, angles radians; all arithmetic in double;
// * the step list of a shot is (domain m, source c) flattened as i = m·n_src + c
//   (sources fastest), with Ms_i = A_real(m)ᵀ/λ'_c, so h = Ms_i·(k̂ − ŝ0);
// * h0 = ceil(h − ½); Gaussian exponent C·|N·Δh|² cut to 0 above DB_GAUSS_CUTOFF;
// * derivatives use the CPU kernel's reduction: per domain the step terms are
//   summed into H_m, then contracted with ∂M_m/∂θ·u (crystal parameters) and
//   M_mᵀ H_m (detector parameters) when the domain ends.
// * A thread computes a part k of K of one pixel's steps (all sub-pixels and
//   layers, steps [n·k/K, n·(k+1)/K)); every output is linear in the step sums,
//   so the parts of a pixel add up to the whole.
//
// The struct layouts are mirrored in src/gpu/layout.rs (#[repr(C)]); a test
// compares sizes and offsets through db_layout_info().

#ifndef DB_MODEL_CUH
#define DB_MODEL_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define DB_FN __host__ __device__ inline
#define DB_DEVICE 1
#else
#include <math.h>
#include <stdint.h>
#define DB_FN static inline
#define __restrict__
#endif

#if defined(__CUDACC_RTC__)
// NVRTC has no system headers: the fixed-width integer types by hand.
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#endif

// Evaluation modes.
#define DB_MODE_FWD 0
#define DB_MODE_GRAD 1
#define DB_MODE_FHKL 2

// Lattice shapes (values of DbShot.shape), as kernel::LatticeShape.
#define DB_SHAPE_GAUSS 0
#define DB_SHAPE_SQUARE 1
#define DB_SHAPE_ROUND 2
#define DB_SHAPE_TOPHAT 3
#define DB_SHAPE_GAUSS_ARGCHK 4
// nanoBragg GAUSS_ARGCHK: zero where the amplitude exponent |N·Δh|²/0.63 reaches this.
#define DB_GAUSS_ARGCHK_LIMIT 35.0

// Parameter kinds (values of DbParam.kind), as kernel::prepared::PKind.
#define DB_P_CRYSTAL 0
#define DB_P_NCELLS 1
#define DB_P_SCALE 2
#define DB_P_LAMBDA0 3
#define DB_P_LAMBDA1 4
#define DB_P_DETZ 5
#define DB_P_SHIFT 6
#define DB_P_ROT 7

// Most derivative parameters per shot (a per-thread accumulator array).
#define DB_MAX_PARAMS 64

#define DB_GAUSS_C (2.0 / 0.63)
#define DB_GAUSS_CUTOFF 100.0
#define DB_ROUND_NORM 0.723601254558268
#define DB_TOPHAT_R2 0.3969
#define DB_PI 3.14159265358979323846

// ---------------------------------------------------------------- layouts

// Offsets (bytes from the start of the blob) and counts of one packed batch.
struct DbHeader {
    int64_t n_shots;
    int64_t off_shots;   // DbShot[n_shots]
    int64_t off_panels;  // DbPanel[]
    int64_t off_steps;   // DbStep[]
    int64_t off_mdom;    // double[9] per domain: A_real(m)ᵀ (for γ = Σ M_mᵀ H_m)
    int64_t off_params;  // DbParam[]
    int64_t off_dmats;   // double[9] per (crystal parameter, domain): ∂M_m/∂θ
    int64_t off_scales;  // double[] per-(ASU, channel) scales, "no ASU" slot = 1
    int64_t row;         // output row length: 1 + max parameters per shot
    int64_t total_bytes;
};

struct DbShot {
    double inc[3];    // unit ŝ0
    double pol_e[3];  // polarization E axis ⟂ ŝ0
    double pol_b[3];  // ŝ0 × E
    double kahn;
    double pref;       // r_e²·Φ·G·(det N)²[Gauss]/(N_mos·os²)
    double pref_no_g;  // the same without G
    double nm[9];      // N, row-major
    double det_n;      // det N (1 with no_Nabc_scale)
    double n_diag[3];
    double lut_lo[3];  // bordered Fhkl box, as doubles
    double lut_hi[3];
    double lut_nk;
    double lut_nl;
    int64_t panel_off;  // first DbPanel of this shot
    int64_t step_off;   // first DbStep
    int64_t mdom_off;   // first domain matrix (units of 9 doubles)
    int64_t param_off;  // first DbParam
    int64_t scale_off;  // first scale (doubles), -1 when unscaled
    int32_t os;
    int32_t point_pixel;
    int32_t polarize;
    int32_t shape;
    int32_t n_src;
    int32_t n_dom;
    int32_t n_params;
    int32_t n_asu;
    int32_t n_panels;
    int32_t pad_;
};

struct DbPanel {
    double origin[3];
    double fast[3];
    double slow[3];
    double normal[3];   // outward unit normal
    double px[2];       // pixel size (fast, slow), mm
    double area;        // px[0]·px[1]
    double dz;          // layer thickness, mm
    double att;         // attenuation length, mm
    double drot[3][4][3];  // per rotation axis: ∂P/∂ω = d0 + F·d1 + S·d2 + depth·d3; ∂n̂/∂ω = d3
    int32_t nf;
    int32_t ns;
    int32_t layers;
    int32_t absorbs;
};

struct DbStep {
    double ms[9];  // A_real(m)ᵀ/λ'_c, row-major
    double w;      // normalised source weight
    double s;      // 1/λ'_c
    double lam;    // uncorrected λ_c
    uint32_t chan;
    uint32_t pad_;
};

struct DbParam {
    int32_t kind;
    int32_t panel;
    int32_t axis;
    int32_t pad_;
    double dn[9];  // Ncells: dN (row-major)
    double tr2;    // Ncells: 2·tr(N⁻¹dN), 0 with no_Nabc_scale
    int64_t dmat_off;  // crystal: first ∂M matrix (units of 9 doubles), domains follow
};

struct DbPixel {
    uint32_t shot;
    uint32_t panel;  // panel index within its shot
    uint32_t fast;
    uint32_t slow;
};

// Read-only inputs of one evaluation.
struct DbView {
    const unsigned char* blob;
    const DbPixel* pixels;
    int64_t n_pixels;
    const double* f2;         // |F|² on the bordered grid
    const uint32_t* asu;      // ASU id on the bordered grid (n_asu = none)
    const double* weights;    // FHKL mode: ∂f/∂model per pixel (× roi_scale)
};

// ---------------------------------------------------------------- helpers

DB_FN const DbHeader* db_header(const DbView& v) { return (const DbHeader*)v.blob; }
DB_FN const DbShot* db_shots(const DbView& v) { return (const DbShot*)(v.blob + db_header(v)->off_shots); }
DB_FN const DbPanel* db_panels(const DbView& v) { return (const DbPanel*)(v.blob + db_header(v)->off_panels); }
DB_FN const DbStep* db_steps(const DbView& v) { return (const DbStep*)(v.blob + db_header(v)->off_steps); }
DB_FN const double* db_mdom(const DbView& v) { return (const double*)(v.blob + db_header(v)->off_mdom); }
DB_FN const DbParam* db_params(const DbView& v) { return (const DbParam*)(v.blob + db_header(v)->off_params); }
DB_FN const double* db_dmats(const DbView& v) { return (const double*)(v.blob + db_header(v)->off_dmats); }
DB_FN const double* db_scales(const DbView& v) { return (const double*)(v.blob + db_header(v)->off_scales); }

DB_FN double db_dot(const double* a, const double* b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

// y = M·x for a row-major 3×3 M.
DB_FN void db_matvec(const double* m, const double* x, double* y) {
    y[0] = m[0] * x[0] + m[1] * x[1] + m[2] * x[2];
    y[1] = m[3] * x[0] + m[4] * x[1] + m[5] * x[2];
    y[2] = m[6] * x[0] + m[7] * x[1] + m[8] * x[2];
}

// y += Mᵀ·x for a row-major 3×3 M.
DB_FN void db_matvec_t_add(const double* m, const double* x, double* y) {
    y[0] += m[0] * x[0] + m[3] * x[1] + m[6] * x[2];
    y[1] += m[1] * x[0] + m[4] * x[1] + m[7] * x[2];
    y[2] += m[2] * x[0] + m[5] * x[1] + m[8] * x[2];
}

// Kahn polarization P = ½(1 + cos²2θ − K·((k·e)² − (k·b)²)) (see model::polarization).
DB_FN double db_polarization(const double* k, const double* inc, const double* e, const double* b, double kahn) {
    double c = db_dot(k, inc), ke = db_dot(k, e), kb = db_dot(k, b);
    return 0.5 * (1.0 + c * c - kahn * (ke * ke - kb * kb));
}

DB_FN void db_polarization_grad(const double* k, const double* inc, const double* e, const double* b, double kahn,
                                double* g) {
    double c = db_dot(k, inc), ke = db_dot(k, e), kb = db_dot(k, b);
    for (int i = 0; i < 3; ++i) g[i] = c * inc[i] - kahn * (ke * e[i] - kb * b[i]);
}

// ∂k̂ for a move dp of the point p = r·k̂: (dp − k̂(k̂·dp))/r.
DB_FN void db_direction_derivative(const double* k, double r, const double* dp, double* dk) {
    double kdp = db_dot(k, dp);
    for (int i = 0; i < 3; ++i) dk[i] = (dp[i] - k[i] * kdp) / r;
}

// ∂Ω of area·(n̂·p)/r³ (full pixel area at every sub-pixel; see model::solid_angle_derivative).
DB_FN double db_solid_angle_derivative(double area, const double* n, const double* dn, const double* p,
                                       const double* k, double r, const double* dp) {
    double r3 = r * r * r;
    return area * ((db_dot(dn, p) + db_dot(n, dp)) / r3 - 3.0 * db_dot(n, p) * db_dot(k, dp) / (r3 * r));
}

DB_FN double db_sincg(double x, double n) { return x == 0.0 ? n : sin(n * x) / sin(x); }

DB_FN double db_sinc3(double x) {
    if (fabs(x) < 0.1) {
        double x2 = x * x;
        return 1.0 - x2 * (1.0 / 10.0 - x2 * (1.0 / 280.0 - x2 * (1.0 / 15120.0 - x2 / 1330560.0)));
    }
    return 3.0 * (sin(x) / x - cos(x)) / (x * x);
}

// F_latt² of the non-Gaussian shapes (model::lattice_intensity).
DB_FN double db_lattice_other(int shape, const double* h, const double* v, double det_n, const double* n_diag) {
    double v2 = db_dot(v, v);
    double f;
    if (shape == DB_SHAPE_SQUARE) {
        f = 1.0;
        for (int i = 0; i < 3; ++i)
            if (n_diag[i] > 1.0) f *= db_sincg(DB_PI * h[i], n_diag[i]);
    } else if (shape == DB_SHAPE_GAUSS_ARGCHK) {
        const double x = v2 / 0.63;
        f = x >= DB_GAUSS_ARGCHK_LIMIT ? 0.0 : det_n * exp(-x);
    } else if (shape == DB_SHAPE_ROUND) {
        f = det_n * DB_ROUND_NORM * db_sinc3(DB_PI * sqrt(v2));
    } else {
        f = v2 < DB_TOPHAT_R2 ? det_n : 0.0;
    }
    return f * f;
}

// Slot of a rounded index in the bordered |F|² grid (clamped onto the border).
DB_FN int64_t db_slot(const DbShot& s, double h, double k, double l) {
    double a = fmin(fmax(h, s.lut_lo[0]), s.lut_hi[0]) - s.lut_lo[0];
    double b = fmin(fmax(k, s.lut_lo[1]), s.lut_hi[1]) - s.lut_lo[1];
    double c = fmin(fmax(l, s.lut_lo[2]), s.lut_hi[2]) - s.lut_lo[2];
    return (int64_t)((a * s.lut_nk + b) * s.lut_nl + c);
}

// ∂P/∂θ of a point on the pixel's panel for a detector parameter; false when θ does not move it.
DB_FN bool db_det_dp(const DbParam& q, const DbPanel& pan, int panel, double fd, double sd, double depth,
                     double* dp) {
    if (q.kind == DB_P_DETZ) {
        dp[0] = 0.0; dp[1] = 0.0; dp[2] = 1.0;
        return true;
    }
    if (q.kind == DB_P_SHIFT && q.panel == panel) {
        dp[0] = 0.0; dp[1] = 0.0; dp[2] = 0.0;
        dp[q.axis] = 1.0;
        return true;
    }
    if (q.kind == DB_P_ROT && q.panel == panel) {
        const double(*d)[3] = pan.drot[q.axis];
        for (int i = 0; i < 3; ++i) dp[i] = d[0][i] + d[1][i] * fd + d[2][i] * sd + d[3][i] * depth;
        return true;
    }
    return false;
}

// Fhkl-gradient scatter with run-length coalescing: consecutive steps of a
// thread mostly hit the same reflection, so one atomic add serves a run.
struct DbScatter {
    double* grad;
    int64_t idx;
    double acc;
};

DB_FN void db_scatter_flush(DbScatter& sc) {
    if (sc.idx >= 0 && sc.acc != 0.0) {
#ifdef DB_DEVICE
        atomicAdd(sc.grad + sc.idx, sc.acc);
#else
        sc.grad[sc.idx] += sc.acc;
#endif
    }
    sc.idx = -1;
    sc.acc = 0.0;
}

DB_FN void db_scatter_add(DbScatter& sc, int64_t idx, double v) {
    if (idx != sc.idx) {
        db_scatter_flush(sc);
        sc.idx = idx;
    }
    sc.acc += v;
}

// ---------------------------------------------------------------- the pixel

// Per sub-pixel/layer step sums.
struct DbSub {
    double i;      // Σ J
    double l0;     // λ0 sum
    double l1;     // λ1 sum
    double na[6];  // Σ J·sym(V⊗Δh): 00, 11, 22, 01+10, 12+21, 02+20
    double gam[3]; // Σ_m M_mᵀ H_m
    double h[3];   // H of the current domain
};

// End of domain m in GRAD mode: contract H_m into the crystal derivatives and γ.
DB_FN void db_flush_domain(const DbView& v, const DbShot& s, int m, const double* u, double oc, DbSub& a,
                           double* ds) {
    const DbParam* ps = db_params(v) + s.param_off;
    const double* dm = db_dmats(v);
    for (int j = 0; j < s.n_params; ++j) {
        if (ps[j].kind != DB_P_CRYSTAL) continue;
        double t[3];
        db_matvec(dm + 9 * (ps[j].dmat_off + m), u, t);
        ds[j] += oc * db_dot(a.h, t);
    }
    db_matvec_t_add(db_mdom(v) + 9 * (s.mdom_off + m), a.h, a.gam);
    a.h[0] = 0.0; a.h[1] = 0.0; a.h[2] = 0.0;
}

// Part k of K of pixel p. Writes `out[0]` = value and `out[1 + j]` = ∂value/∂θ_j
// (GRAD mode, j < n_params; the rest of the row up to `row` is zeroed); in FHKL
// mode scatters weights[p]·∂value/∂s into `grad`.
template <int MODE>
DB_FN void db_pixel(const DbView& v, int64_t p, int k, int K, double* out, int64_t row, double* grad) {
    const DbPixel px = v.pixels[p];
    const DbShot& s = db_shots(v)[px.shot];
    const DbPanel& pan = db_panels(v)[s.panel_off + px.panel];
    const DbStep* steps = db_steps(v) + s.step_off;
    const DbParam* ps = db_params(v) + s.param_off;
    const double* scales = s.scale_off >= 0 ? db_scales(v) + s.scale_off : (const double*)0;
    const int n_par = MODE == DB_MODE_GRAD ? s.n_params : 0;
    const int64_t n_steps = (int64_t)s.n_src * s.n_dom;
    const int64_t lo = n_steps * k / K, hi = n_steps * (k + 1) / K;
    const double f = (double)px.fast, sl = (double)px.slow;

    // Polarization once per pixel, at the pixel centre on the front face.
    const double fc = (f + 0.5) * pan.px[0], scn = (sl + 0.5) * pan.px[1];
    double pc[3], kc[3];
    for (int i = 0; i < 3; ++i) pc[i] = pan.origin[i] + pan.fast[i] * fc + pan.slow[i] * scn;
    const double rc = sqrt(db_dot(pc, pc));
    for (int i = 0; i < 3; ++i) kc[i] = pc[i] / rc;
    const double pol = s.polarize ? db_polarization(kc, s.inc, s.pol_e, s.pol_b, s.kahn) : 1.0;

    double ds[DB_MAX_PARAMS];
    for (int j = 0; j < n_par; ++j) ds[j] = 0.0;
    DbScatter scat;
    scat.grad = grad;
    scat.idx = -1;
    scat.acc = 0.0;
    const double fw_pix = MODE == DB_MODE_FHKL ? v.weights[p] * s.pref * pol : 0.0;
    const int n_asu = s.n_asu;
    const double inv_os = 1.0 / (double)s.os;
    const bool gauss = s.shape == DB_SHAPE_GAUSS;
    double ssum = 0.0;

    for (int sy = 0; sy < s.os; ++sy) {
        for (int sx = 0; sx < s.os; ++sx) {
            const double fd = (f + ((double)sx + 0.5) * inv_os) * pan.px[0];
            const double sd = (sl + ((double)sy + 0.5) * inv_os) * pan.px[1];
            for (int t = 0; t < pan.layers; ++t) {
                const double depth = (double)t * pan.dz;
                double P[3], kk[3];
                for (int i = 0; i < 3; ++i)
                    P[i] = pan.origin[i] + pan.fast[i] * fd + pan.slow[i] * sd + pan.normal[i] * depth;
                const double r = sqrt(db_dot(P, P));
                for (int i = 0; i < 3; ++i) kk[i] = P[i] / r;
                const double ndp = db_dot(pan.normal, P);
                const double omega = s.point_pixel ? 1.0 / (r * r) : pan.area * ndp / (r * r * r);
                double cap = 1.0, dcap = 0.0;
                if (pan.absorbs) {
                    // Capture in the slab [depth, depth + dz] (model::capture_fraction).
                    const double cs = db_dot(kk, pan.normal);
                    const double l = pan.att * cs, d1 = depth + pan.dz;
                    const double e0 = exp(-depth / l), e1 = exp(-d1 / l);
                    cap = e0 - e1;
                    dcap = (e0 * depth - e1 * d1) / (l * cs);
                }
                const double oc = omega * cap;
                const double u[3] = {kk[0] - s.inc[0], kk[1] - s.inc[1], kk[2] - s.inc[2]};
                const double fw = fw_pix * oc;

                DbSub a;
                a.i = 0.0; a.l0 = 0.0; a.l1 = 0.0;
                for (int q = 0; q < 6; ++q) a.na[q] = 0.0;
                for (int q = 0; q < 3; ++q) { a.gam[q] = 0.0; a.h[q] = 0.0; }
                int m = (int)(lo / s.n_src);
                int c = (int)(lo % s.n_src);
                for (int64_t i = lo; i < hi; ++i) {
                    const DbStep& st = steps[i];
                    double h[3], h0[3], dh[3], vv[3];
                    db_matvec(st.ms, u, h);
                    for (int q = 0; q < 3; ++q) {
                        h0[q] = ceil(h[q] - 0.5);
                        dh[q] = h[q] - h0[q];
                    }
                    db_matvec(s.nm, dh, vv);
                    double il;
                    if (gauss) {
                        const double x = DB_GAUSS_C * db_dot(vv, vv);
                        il = x > DB_GAUSS_CUTOFF ? 0.0 : exp(-x);
                    } else {
                        il = db_lattice_other(s.shape, h, vv, s.det_n, s.n_diag);
                    }
                    if (il != 0.0) {
                        const int64_t slot = db_slot(s, h0[0], h0[1], h0[2]);
                        const uint32_t asu_id = v.asu[slot];
                        const double base = st.w * v.f2[slot] * il;
                        const double j = scales ? base * scales[asu_id + (int64_t)st.chan * (n_asu + 1)] : base;
                        a.i += j;
                        if (MODE == DB_MODE_FHKL && (int)asu_id < n_asu)
                            db_scatter_add(scat, (int64_t)asu_id + (int64_t)st.chan * n_asu, fw * base);
                        if (MODE == DB_MODE_GRAD && n_par > 0) {
                            // ∂J/∂θ = −2C·J·(N·V)·∂h/∂θ (N symmetric); see cpu.rs steps_gauss.
                            double wv[3];
                            db_matvec(s.nm, vv, wv);
                            const double cj = 2.0 * DB_GAUSS_C * j * st.s;
                            for (int q = 0; q < 3; ++q) a.h[q] -= cj * wv[q];
                            const double tl = cj * db_dot(wv, h);
                            a.l0 += tl;
                            a.l1 += tl * st.lam;
                            a.na[0] += j * vv[0] * dh[0];
                            a.na[1] += j * vv[1] * dh[1];
                            a.na[2] += j * vv[2] * dh[2];
                            a.na[3] += j * (vv[0] * dh[1] + vv[1] * dh[0]);
                            a.na[4] += j * (vv[1] * dh[2] + vv[2] * dh[1]);
                            a.na[5] += j * (vv[0] * dh[2] + vv[2] * dh[0]);
                        }
                    }
                    if (++c == s.n_src) {
                        c = 0;
                        if (MODE == DB_MODE_GRAD && n_par > 0) db_flush_domain(v, s, m, u, oc, a, ds);
                        ++m;
                    }
                }
                if (MODE == DB_MODE_GRAD && n_par > 0 && c != 0) db_flush_domain(v, s, m, u, oc, a, ds);
                ssum += oc * a.i;

                if (MODE == DB_MODE_GRAD) {
                    for (int j = 0; j < n_par; ++j) {
                        const DbParam& q = ps[j];
                        if (q.kind == DB_P_NCELLS) {
                            const double cc = q.dn[0] * a.na[0] + q.dn[4] * a.na[1] + q.dn[8] * a.na[2] +
                                              q.dn[1] * a.na[3] + q.dn[5] * a.na[4] + q.dn[2] * a.na[5];
                            ds[j] += oc * (q.tr2 * a.i - 2.0 * DB_GAUSS_C * cc);
                        } else if (q.kind == DB_P_LAMBDA0) {
                            ds[j] += oc * a.l0;
                        } else if (q.kind == DB_P_LAMBDA1) {
                            ds[j] += oc * a.l1;
                        } else {
                            double dp[3];
                            if (!db_det_dp(q, pan, px.panel, fd, sd, depth, dp)) continue;
                            double dn[3] = {0.0, 0.0, 0.0};
                            if (q.kind == DB_P_ROT)
                                for (int i = 0; i < 3; ++i) dn[i] = pan.drot[q.axis][3][i];
                            double dk[3];
                            db_direction_derivative(kk, r, dp, dk);
                            const double domega =
                                s.point_pixel ? -2.0 * db_dot(kk, dp) / (r * r * r)
                                              : db_solid_angle_derivative(pan.area, pan.normal, dn, P, kk, r, dp);
                            const double dc =
                                pan.absorbs ? dcap * (db_dot(dk, pan.normal) + db_dot(kk, dn)) : 0.0;
                            const double doc = domega * cap + omega * dc;
                            ds[j] += oc * db_dot(a.gam, dk) + doc * a.i;
                        }
                    }
                }
            }
        }
    }
    if (MODE == DB_MODE_FHKL) db_scatter_flush(scat);

    out[0] = s.pref * pol * ssum;
    if (MODE == DB_MODE_GRAD) {
        double pg[3] = {0.0, 0.0, 0.0};
        if (s.polarize) db_polarization_grad(kc, s.inc, s.pol_e, s.pol_b, s.kahn, pg);
        for (int j = 0; j < n_par; ++j) {
            const DbParam& q = ps[j];
            double d;
            if (q.kind == DB_P_SCALE) {
                d = s.pref_no_g * pol * ssum;
            } else {
                d = s.pref * pol * ds[j];
                double dp[3];
                // The polarization moves with the pixel centre.
                if (db_det_dp(q, pan, px.panel, fc, scn, 0.0, dp)) {
                    double dk[3];
                    db_direction_derivative(kc, rc, dp, dk);
                    d += s.pref * db_dot(pg, dk) * ssum;
                }
            }
            out[1 + j] = d;
        }
        for (int64_t j = 1 + n_par; j < row; ++j) out[j] = 0.0;
    }
}

// Sum the K parts of pixel p's row slot `slot` from `parts` ([k][p][row]).
DB_FN double db_reduce_parts(const double* parts, int64_t n_pixels, int64_t row, int K, int64_t p, int64_t slot) {
    double acc = 0.0;
    for (int k = 0; k < K; ++k) acc += parts[((int64_t)k * n_pixels + p) * row + slot];
    return acc;
}

#endif  // DB_MODEL_CUH
