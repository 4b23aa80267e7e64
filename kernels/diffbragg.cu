// diffbragg.cu: the CUDA entry points. All maths is in diffbragg_model.cuh
// (prepended to this file by the host before NVRTC compiles it; the include
// below only matters for a stand-alone nvcc build).
//
// Launch layout: one thread per (pixel, part); thread g handles pixel
// g % n_pixels, part g / n_pixels, so neighbouring threads take neighbouring
// pixels (same shot, mostly the same reflections) and the same steps (the step
// records are broadcast loads). With K > 1 parts each thread writes its row to
// `parts` and db_reduce sums the K parts in a fixed order (deterministic).
// The Fhkl-scale gradient is accumulated with atomicAdd on doubles (sm_60+),
// so its last bits depend on the order of the atomic adds.

#ifndef DB_MODEL_CUH
#include "diffbragg_model.cuh"
#endif

template <int MODE>
__device__ void db_entry(const unsigned char* __restrict__ blob, const DbPixel* __restrict__ pixels,
                         long long n_pixels, const double* __restrict__ f2, const unsigned int* __restrict__ asu,
                         const double* __restrict__ weights, int K, long long row, double* __restrict__ values,
                         double* __restrict__ derivs, double* __restrict__ parts, double* __restrict__ grad) {
    const long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= n_pixels * K) return;
    const long long p = g % n_pixels;
    const int k = (int)(g / n_pixels);
    DbView v;
    v.blob = blob;
    v.pixels = pixels;
    v.n_pixels = n_pixels;
    v.f2 = f2;
    v.asu = asu;
    v.weights = weights;
    double out[1 + DB_MAX_PARAMS];
    db_pixel<MODE>(v, p, k, K, out, MODE == DB_MODE_GRAD ? row : 1, grad);
    if (K > 1) {
        double* dst = parts + ((long long)k * n_pixels + p) * row;
        dst[0] = out[0];
        if (MODE == DB_MODE_GRAD)
            for (long long j = 1; j < row; ++j) dst[j] = out[j];
    } else {
        values[p] = out[0];
        if (MODE == DB_MODE_GRAD)
            for (long long j = 1; j < row; ++j) derivs[p * (row - 1) + (j - 1)] = out[j];
    }
}

extern "C" __global__ void db_forward(const unsigned char* blob, const DbPixel* pixels, long long n_pixels,
                                      const double* f2, const unsigned int* asu, const double* weights, int K,
                                      long long row, double* values, double* derivs, double* parts,
                                      double* grad) {
    db_entry<DB_MODE_FWD>(blob, pixels, n_pixels, f2, asu, weights, K, row, values, derivs, parts, grad);
}

extern "C" __global__ void db_gradient(const unsigned char* blob, const DbPixel* pixels, long long n_pixels,
                                       const double* f2, const unsigned int* asu, const double* weights, int K,
                                       long long row, double* values, double* derivs, double* parts,
                                       double* grad) {
    db_entry<DB_MODE_GRAD>(blob, pixels, n_pixels, f2, asu, weights, K, row, values, derivs, parts, grad);
}

extern "C" __global__ void db_fhkl_gradient(const unsigned char* blob, const DbPixel* pixels, long long n_pixels,
                                            const double* f2, const unsigned int* asu, const double* weights,
                                            int K, long long row, double* values, double* derivs, double* parts,
                                            double* grad) {
    db_entry<DB_MODE_FHKL>(blob, pixels, n_pixels, f2, asu, weights, K, row, values, derivs, parts, grad);
}

// values[p] and derivs[p][j] from the K parts ([k][p][row]); one thread per (pixel, slot).
extern "C" __global__ void db_reduce(const double* parts, long long n_pixels, long long row, int K,
                                     double* values, double* derivs) {
    const long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= n_pixels * row) return;
    const long long p = g / row, slot = g % row;
    const double x = db_reduce_parts(parts, n_pixels, row, K, p, slot);
    if (slot == 0)
        values[p] = x;
    else
        derivs[p * (row - 1) + (slot - 1)] = x;
}
