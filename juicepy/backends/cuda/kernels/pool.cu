// Max and average pooling over NCHW planes; padding is implicit (-inf for max, 0 for average).
#include "common.cuh"

struct PoolGeom {
    int planes, height, width, out_h, out_w, kh, kw, sh, sw, ph, pw;
};

// Kernels take the geometry as plain ints (every launcher passes them the same way).
#define POOL_GEOM_ARGS int planes, int height, int width, int out_h, int out_w, int kh, int kw, \
    int sh, int sw, int ph, int pw
#define POOL_GEOM {planes, height, width, out_h, out_w, kh, kw, sh, sw, ph, pw}

extern "C" {

// argmax holds the flat y * W + x index of each maximum inside its plane; the first maximum in
// scan order wins (strictly greater replaces), and a NaN wins, a later NaN too, as in PyTorch.
__global__ void max_pool_forward(const real* x, real* out, int* argmax, POOL_GEOM_ARGS) {
    const PoolGeom g = POOL_GEOM;
    const i64 out_plane = (i64)g.out_h * g.out_w;
    GRID_STRIDE(i, (i64)g.planes * out_plane) {
        const i64 p = i / out_plane, pos = i - p * out_plane;
        const int oy = pos / g.out_w, ox = pos - (i64)oy * g.out_w;
        const real* plane = x + p * g.height * g.width;
        real best = (real)(-JP_INF);
        int where = -1;
        for (int ky = 0; ky < g.kh; ++ky) {
            const int y = oy * g.sh - g.ph + ky;
            if (y < 0 || y >= g.height) continue;
            for (int kx = 0; kx < g.kw; ++kx) {
                const int xx = ox * g.sw - g.pw + kx;
                if (xx < 0 || xx >= g.width) continue;
                const real v = plane[y * g.width + xx];
                if (where < 0 || v > best || v != v) {
                    best = v;
                    where = y * g.width + xx;
                }
            }
        }
        out[i] = best;
        argmax[i] = where;
    }
}

// A gather, one thread per input element: it adds the dy of every window that covers it and
// whose maximum it is, in the windows' scan order, which is the order in which a serial walk
// over the outputs would scatter them (so overlapping windows give the same sums, bit for bit,
// on every run, with no atomics).
__global__ void max_pool_backward(const real* dy, const int* argmax, real* dx, POOL_GEOM_ARGS, int acc) {
    const PoolGeom g = POOL_GEOM;
    const i64 in_plane = (i64)g.height * g.width, out_plane = (i64)g.out_h * g.out_w;
    GRID_STRIDE(i, (i64)g.planes * in_plane) {
        const i64 p = i / in_plane;
        const int pos = (int)(i - p * in_plane), y = pos / g.width, xx = pos - y * g.width;
        // windows oy with oy * sh - ph <= y < oy * sh - ph + kh (likewise along x)
        const int ty = y + g.ph, tx = xx + g.pw;
        const int oy_lo = ty < g.kh ? 0 : (ty - g.kh) / g.sh + 1, ox_lo = tx < g.kw ? 0 : (tx - g.kw) / g.sw + 1;
        const int oy_hi = min(ty / g.sh, g.out_h - 1), ox_hi = min(tx / g.sw, g.out_w - 1);
        const i64 base = p * out_plane;
        real s = acc ? dx[i] : (real)0;
        for (int oy = oy_lo; oy <= oy_hi; ++oy)
            for (int ox = ox_lo; ox <= ox_hi; ++ox) {
                const i64 o = base + (i64)oy * g.out_w + ox;
                if (argmax[o] == pos) s += dy[o];
            }
        dx[i] = s;
    }
}

__device__ __forceinline__ int window_count(int out_idx, int stride, int pad, int kernel, int size,
                                            int include_pad) {
    const int start = out_idx * stride - pad;
    if (include_pad) return kernel;  // floor mode: every window lies inside the padded input
    const int lo = start < 0 ? 0 : start;
    const int hi = start + kernel > size ? size : start + kernel;
    return hi - lo;
}

__global__ void avg_pool_forward(const real* x, real* out, POOL_GEOM_ARGS, int include_pad) {
    const PoolGeom g = POOL_GEOM;
    const i64 out_plane = (i64)g.out_h * g.out_w;
    GRID_STRIDE(i, (i64)g.planes * out_plane) {
        const i64 p = i / out_plane, pos = i - p * out_plane;
        const int oy = pos / g.out_w, ox = pos - (i64)oy * g.out_w;
        const real* plane = x + p * g.height * g.width;
        real s = 0;
        for (int ky = 0; ky < g.kh; ++ky) {
            const int y = oy * g.sh - g.ph + ky;
            if (y < 0 || y >= g.height) continue;
            for (int kx = 0; kx < g.kw; ++kx) {
                const int xx = ox * g.sw - g.pw + kx;
                if (xx >= 0 && xx < g.width) s += plane[y * g.width + xx];
            }
        }
        const int count = window_count(oy, g.sh, g.ph, g.kh, g.height, include_pad) *
                          window_count(ox, g.sw, g.pw, g.kw, g.width, include_pad);
        out[i] = s / (real)count;
    }
}

// A gather over the windows that cover each input pixel.
__global__ void avg_pool_backward(const real* dy, real* dx, POOL_GEOM_ARGS, int include_pad, int acc) {
    const PoolGeom g = POOL_GEOM;
    const i64 in_plane = (i64)g.height * g.width, out_plane = (i64)g.out_h * g.out_w;
    GRID_STRIDE(i, (i64)g.planes * in_plane) {
        const i64 p = i / in_plane, pos = i - p * in_plane;
        const int y = pos / g.width, xx = pos - (i64)y * g.width;
        real s = 0;
        for (int ky = 0; ky < g.kh; ++ky) {
            const int ty = y + g.ph - ky;
            if (ty < 0 || ty % g.sh) continue;
            const int oy = ty / g.sh;
            if (oy >= g.out_h) continue;
            for (int kx = 0; kx < g.kw; ++kx) {
                const int tx = xx + g.pw - kx;
                if (tx < 0 || tx % g.sw) continue;
                const int ox = tx / g.sw;
                if (ox >= g.out_w) continue;
                const int count = window_count(oy, g.sh, g.ph, g.kh, g.height, include_pad) *
                                  window_count(ox, g.sw, g.pw, g.kw, g.width, include_pad);
                s += dy[p * out_plane + (i64)oy * g.out_w + ox] / (real)count;
            }
        }
        dx[i] = acc ? dx[i] + s : s;
    }
}

}  // extern "C"
