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

// The index arithmetic in 32 bits where every index fits: a 64-bit division is a long
// instruction sequence, paid once per element by these memory-bound kernels.
#define INDEX_DISPATCH(total, call) \
    do { if ((total) <= 0x7fffffffLL) call(unsigned); else call(i64); } while (0)
#define GRID_STRIDE_AS(I, i, n) \
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < (I)(n); i += (I)blockDim.x * gridDim.x)

// One thread per (channel, output column) writes that column's kh * kw taps: the divisions
// are paid once per kh * kw values, and each tap's writes are coalesced along the columns.
template <typename I>
__device__ void im2col_as(const real* x, real* col, const ConvGeom& g) {
    const I out_plane = (I)g.out_h * g.out_w, cols = (I)g.batch * out_plane;
    const int taps = g.kh * g.kw;
    GRID_STRIDE_AS(I, i, (i64)g.channels * cols) {
        const I c = i / cols, column = i - c * cols;
        const I b = column / out_plane, pos = column - b * out_plane;
        const int oy = pos / g.out_w, ox = pos - (I)oy * g.out_w;
        const real* plane = x + ((i64)b * g.channels + c) * g.height * g.width;
        real* dst = col + (i64)c * taps * cols + column;
        const int y0 = oy * g.sh - g.ph, x0 = ox * g.sw - g.pw;
        for (int ky = 0; ky < g.kh; ++ky) {
            const int y = y0 + ky * g.dh;
            const bool row_in = y >= 0 && y < g.height;
            for (int kx = 0; kx < g.kw; ++kx) {
                const int xx = x0 + kx * g.dw;
                dst[(i64)(ky * g.kw + kx) * cols] = (row_in && xx >= 0 && xx < g.width) ? plane[y * g.width + xx] : (real)0;
            }
        }
    }
}

// dx (+)= the sum of every column entry that im2col copied from each input pixel: a gather,
// so no atomics and the same result on every run. UNIT_STRIDE drops the divisions that find
// which taps land on a stride's grid (every tap does at stride 1).
template <typename I, bool UNIT_STRIDE>
__device__ void col2im_as(const real* col, real* dx, const ConvGeom& g, int acc) {
    const I out_plane = (I)g.out_h * g.out_w, cols = (I)g.batch * out_plane;
    GRID_STRIDE_AS(I, i, (i64)g.batch * g.channels * g.height * g.width) {
        const I row_index = i / g.width;
        const int xx = i - row_index * g.width;
        const I bc = row_index / g.height;
        const int y = row_index - bc * g.height;
        const I b = bc / g.channels;
        const int c = bc - b * g.channels;
        const real* taps = col + (i64)c * g.kh * g.kw * cols + (i64)b * out_plane;
        real s = 0;
        for (int ky = 0; ky < g.kh; ++ky) {
            const int ty = y + g.ph - ky * g.dh;
            if (ty < 0 || (!UNIT_STRIDE && ty % g.sh)) continue;
            const int oy = UNIT_STRIDE ? ty : ty / g.sh;
            if (oy >= g.out_h) continue;
            for (int kx = 0; kx < g.kw; ++kx) {
                const int tx = xx + g.pw - kx * g.dw;
                if (tx < 0 || (!UNIT_STRIDE && tx % g.sw)) continue;
                const int ox = UNIT_STRIDE ? tx : tx / g.sw;
                if (ox >= g.out_w) continue;
                s += taps[(i64)(ky * g.kw + kx) * cols + (i64)oy * g.out_w + ox];
            }
        }
        dx[i] = acc ? dx[i] + s : s;
    }
}

// (N, C, L) <-> (C, N, L); to_channel_major picks the direction, acc adds into dst.
template <typename I>
__device__ void permute_batch_channels_as(const real* src, real* dst, I batch, I channels, I inner,
                                          bool to_channel_major, int acc) {
    GRID_STRIDE_AS(I, i, (i64)batch * channels * inner) {
        const I rest = i / inner, s = i - rest * inner;
        I from;
        if (to_channel_major) {
            const I c = rest / batch, b = rest - c * batch;
            from = (b * channels + c) * inner + s;
        } else {
            const I b = rest / channels, c = rest - b * channels;
            from = (c * batch + b) * inner + s;
        }
        dst[i] = acc ? dst[i] + src[from] : src[from];
    }
}

extern "C" {

__global__ void im2col(const real* x, real* col, CONV_GEOM_ARGS) {
    const ConvGeom g = CONV_GEOM;
#define IM2COL(I) im2col_as<I>(x, col, g)
    INDEX_DISPATCH((i64)g.channels * g.kh * g.kw * g.batch * g.out_h * g.out_w, IM2COL);
#undef IM2COL
}

__global__ void col2im(const real* col, real* dx, CONV_GEOM_ARGS, int acc) {
    const ConvGeom g = CONV_GEOM;
    const i64 largest = (i64)g.channels * g.kh * g.kw * g.batch * g.out_h * g.out_w;
    const i64 dx_size = (i64)g.batch * g.channels * g.height * g.width;
#define COL2IM(I) col2im_as<I, false>(col, dx, g, acc)
#define COL2IM_UNIT(I) col2im_as<I, true>(col, dx, g, acc)
    if (g.sh == 1 && g.sw == 1)
        INDEX_DISPATCH(largest > dx_size ? largest : dx_size, COL2IM_UNIT);
    else
        INDEX_DISPATCH(largest > dx_size ? largest : dx_size, COL2IM);
#undef COL2IM
#undef COL2IM_UNIT
}

__global__ void batch_to_channel_major(const real* src, real* dst, i64 batch, i64 channels, i64 inner) {
#define PERMUTE(I) permute_batch_channels_as<I>(src, dst, (I)batch, (I)channels, (I)inner, true, 0)
    INDEX_DISPATCH(batch * channels * inner, PERMUTE);
#undef PERMUTE
}

__global__ void channel_to_batch_major(const real* src, real* dst, i64 batch, i64 channels, i64 inner,
                                       int acc) {
#define PERMUTE(I) permute_batch_channels_as<I>(src, dst, (I)batch, (I)channels, (I)inner, false, acc)
    INDEX_DISPATCH(batch * channels * inner, PERMUTE);
#undef PERMUTE
}

}  // extern "C"
