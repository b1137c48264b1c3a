// im2col / col2im for NCHW convolution, and the (N, C, L) <-> (C, N, L) permutes around the GEMMs.
// The column matrix has one row per (channel, ky, kx) and one column per (image, out_y, out_x):
// shape (C * kh * kw, N * OH * OW), so one GEMM covers the whole batch.
#include "common.cuh"

struct ConvGeom {
    int batch, channels, height, width, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw;
};

// Kernels take the geometry as plain ints (every launcher passes them the same way).
#define CONV_GEOM_ARGS int batch, int channels, int height, int width, int out_h, int out_w, \
    int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw
#define CONV_GEOM {batch, channels, height, width, out_h, out_w, kh, kw, sh, sw, ph, pw, dh, dw}

extern "C" {

__global__ void im2col(const real* x, real* col, CONV_GEOM_ARGS) {
    const ConvGeom g = CONV_GEOM;
    const i64 out_plane = (i64)g.out_h * g.out_w;
    const i64 cols = (i64)g.batch * out_plane;
    const i64 total = (i64)g.channels * g.kh * g.kw * cols;
    GRID_STRIDE(i, total) {
        const i64 row = i / cols, column = i - row * cols;
        const int kx = row % g.kw, ky = (row / g.kw) % g.kh, c = row / ((i64)g.kw * g.kh);
        const int b = column / out_plane;
        const i64 pos = column - b * out_plane;
        const int oy = pos / g.out_w, ox = pos - (i64)oy * g.out_w;
        const int y = oy * g.sh - g.ph + ky * g.dh, xx = ox * g.sw - g.pw + kx * g.dw;
        real v = 0;
        if (y >= 0 && y < g.height && xx >= 0 && xx < g.width)
            v = x[(((i64)b * g.channels + c) * g.height + y) * g.width + xx];
        col[i] = v;
    }
}

// dx (+)= the sum of every column entry that im2col copied from each input pixel: a gather,
// so no atomics and the same result on every run.
__global__ void col2im(const real* col, real* dx, CONV_GEOM_ARGS, int acc) {
    const ConvGeom g = CONV_GEOM;
    const i64 out_plane = (i64)g.out_h * g.out_w;
    const i64 cols = (i64)g.batch * out_plane;
    const i64 total = (i64)g.batch * g.channels * g.height * g.width;
    GRID_STRIDE(i, total) {
        const int xx = i % g.width, y = (i / g.width) % g.height;
        const i64 bc = i / ((i64)g.width * g.height);
        const int c = bc % g.channels, b = bc / g.channels;
        real s = 0;
        for (int ky = 0; ky < g.kh; ++ky) {
            const int ty = y + g.ph - ky * g.dh;
            if (ty < 0 || ty % g.sh) continue;
            const int oy = ty / g.sh;
            if (oy >= g.out_h) continue;
            for (int kx = 0; kx < g.kw; ++kx) {
                const int tx = xx + g.pw - kx * g.dw;
                if (tx < 0 || tx % g.sw) continue;
                const int ox = tx / g.sw;
                if (ox >= g.out_w) continue;
                const i64 row = ((i64)c * g.kh + ky) * g.kw + kx;
                s += col[row * cols + (i64)b * out_plane + (i64)oy * g.out_w + ox];
            }
        }
        dx[i] = acc ? dx[i] + s : s;
    }
}

// (N, C, L) -> (C, N, L)
__global__ void batch_to_channel_major(const real* src, real* dst, i64 batch, i64 channels, i64 inner) {
    GRID_STRIDE(i, batch * channels * inner) {
        const i64 s = i % inner, rest = i / inner;
        const i64 b = rest % batch, c = rest / batch;
        dst[i] = src[(b * channels + c) * inner + s];
    }
}

// (C, N, L) -> (N, C, L), optionally adding into dst.
__global__ void channel_to_batch_major(const real* src, real* dst, i64 batch, i64 channels, i64 inner,
                                       int acc) {
    GRID_STRIDE(i, batch * channels * inner) {
        const i64 s = i % inner, rest = i / inner;
        const i64 c = rest % channels, b = rest / channels;
        const real v = src[(c * batch + b) * inner + s];
        dst[i] = acc ? dst[i] + v : v;
    }
}

}  // extern "C"
