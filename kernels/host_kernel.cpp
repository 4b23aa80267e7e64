// host_kernel.cpp: the CUDA kernels' maths (diffbragg_model.cuh) compiled by
// the host C++ compiler, with the launch replaced by serial loops over the same
// (pixel, part) grid and the same reduction. Tests call it through
// src/gpu/host.rs to check the GPU maths against the Rust CPU kernel on
// machines without a GPU. Not used for production evaluations.

#include <stddef.h>

#include "diffbragg_model.cuh"

template <int MODE>
static void db_host_mode(const DbView& v, int K, int64_t row, double* values, double* derivs, double* parts,
                         double* grad) {
    double out[1 + DB_MAX_PARAMS];
    const int64_t r = MODE == DB_MODE_GRAD ? row : 1;
    for (int k = 0; k < K; ++k) {
        for (int64_t p = 0; p < v.n_pixels; ++p) {
            db_pixel<MODE>(v, p, k, K, out, r, grad);
            double* dst = parts + ((int64_t)k * v.n_pixels + p) * r;
            for (int64_t j = 0; j < r; ++j) dst[j] = out[j];
        }
    }
    for (int64_t p = 0; p < v.n_pixels; ++p) {
        for (int64_t slot = 0; slot < r; ++slot) {
            const double x = db_reduce_parts(parts, v.n_pixels, r, K, p, slot);
            if (slot == 0)
                values[p] = x;
            else
                derivs[p * (r - 1) + (slot - 1)] = x;
        }
    }
}

extern "C" {

// Evaluate every pixel in `mode` (DB_MODE_*), split into K parts.
// `parts` must hold K·n_pixels·row doubles (row = 1 unless GRAD);
// `grad` is added to (FHKL mode). Returns 0, or −1 for a bad argument.
int db_host_run(int mode, const unsigned char* blob, const DbPixel* pixels, int64_t n_pixels, const double* f2,
                const uint32_t* asu, const double* weights, int K, double* values, double* derivs, double* parts,
                double* grad) {
    if (K < 1 || n_pixels < 0) return -1;
    DbView v;
    v.blob = blob;
    v.pixels = pixels;
    v.n_pixels = n_pixels;
    v.f2 = f2;
    v.asu = asu;
    v.weights = weights;
    const int64_t row = db_header(v)->row;
    if (row < 1 || row > 1 + DB_MAX_PARAMS) return -1;
    switch (mode) {
        case DB_MODE_FWD: db_host_mode<DB_MODE_FWD>(v, K, row, values, derivs, parts, grad); return 0;
        case DB_MODE_GRAD: db_host_mode<DB_MODE_GRAD>(v, K, row, values, derivs, parts, grad); return 0;
        case DB_MODE_FHKL: db_host_mode<DB_MODE_FHKL>(v, K, row, values, derivs, parts, grad); return 0;
        default: return -1;
    }
}

#define DB_OFF(T, f) ((uint64_t)offsetof(T, f))

// Sizes and selected field offsets of the shared structs, for the layout test
// (order: see src/gpu/layout.rs `host_layout`). Returns the number written.
int db_layout_info(uint64_t* out, int cap) {
    const uint64_t v[] = {
        sizeof(DbHeader), DB_OFF(DbHeader, row), DB_OFF(DbHeader, total_bytes),
        sizeof(DbShot), DB_OFF(DbShot, kahn), DB_OFF(DbShot, nm), DB_OFF(DbShot, lut_nl),
        DB_OFF(DbShot, panel_off), DB_OFF(DbShot, scale_off), DB_OFF(DbShot, os), DB_OFF(DbShot, n_panels),
        sizeof(DbPanel), DB_OFF(DbPanel, px), DB_OFF(DbPanel, drot), DB_OFF(DbPanel, nf), DB_OFF(DbPanel, absorbs),
        sizeof(DbStep), DB_OFF(DbStep, w), DB_OFF(DbStep, lam), DB_OFF(DbStep, chan),
        sizeof(DbParam), DB_OFF(DbParam, axis), DB_OFF(DbParam, dn), DB_OFF(DbParam, tr2), DB_OFF(DbParam, dmat_off),
        sizeof(DbPixel), DB_OFF(DbPixel, slow),
    };
    const int n = (int)(sizeof(v) / sizeof(v[0]));
    for (int i = 0; i < n && i < cap; ++i) out[i] = v[i];
    return n;
}

}  // extern "C"
