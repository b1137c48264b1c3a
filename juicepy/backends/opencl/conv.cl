// Convolution by im2col / col2im around the GEMM, and 2-D pooling. NCHW float32.
// col layout: (C * kh * kw, N * Ho * Wo), row (c, ki, kj), column (n, oh, ow).

#define STORE(o, i, v, acc) { if (acc) (o)[i] += (v); else (o)[i] = (v); }

// One work-item per (output row oh, col row (c, ki, kj), image n) copies a row of Wo values:
// the inner loop runs along contiguous memory, which CPU drivers vectorise (a loop inside a
// kernel keeps them from vectorising across work-items). Launched as (Ho rounded up, C*kh*kw, N).
__kernel void im2col(const int Ho, __global const float *x, const int x_off,
                     const int N, const int C, const int H, const int W, const int Wo,
                     const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                     const int dh, const int dw, __global float *col, const int c_off)
{
    const int oh = get_global_id(0), row = get_global_id(1), n = get_global_id(2);
    if (oh >= Ho) return;
    const int kj = row % kw, ki = (row / kw) % kh, c = row / (kw * kh);
    const int h = oh * sh - ph + ki * dh;
    __global float *dst = col + c_off + (size_t)row * N * Ho * Wo + ((size_t)n * Ho + oh) * Wo;
    if (h < 0 || h >= H) {
        for (int ow = 0; ow < Wo; ++ow) dst[ow] = 0.0f;
        return;
    }
    __global const float *src = x + x_off + (((size_t)n * C + c) * H + h) * W;
    const int w0 = kj * dw - pw;
    for (int ow = 0; ow < Wo; ++ow) {
        const int w = w0 + ow * sw;
        dst[ow] = (w >= 0 && w < W) ? src[w] : 0.0f;
    }
}

// dx[n, c, h, :] (+)= every col entry that im2col read from that input row; one work-item per
// (h, n*C + c) owns its row, so there are no races. Launched as (H rounded up, N * C).
__kernel void col2im(const int H, __global const float *col, const int c_off,
                     const int N, const int C, const int W, const int Ho, const int Wo,
                     const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                     const int dh, const int dw, __global float *dx, const int x_off, const int acc)
{
    const int h = get_global_id(0), nc = get_global_id(1);
    if (h >= H) return;
    const int n = nc / C, c = nc - n * C;
    __global float *dst = dx + x_off + ((size_t)nc * H + h) * W;
    if (!acc) for (int w = 0; w < W; ++w) dst[w] = 0.0f;
    const size_t cols = (size_t)N * Ho * Wo;
    for (int ki = 0; ki < kh; ++ki) {
        int oh = h + ph - ki * dh;
        if (oh < 0 || oh % sh) continue;
        oh /= sh;
        if (oh >= Ho) continue;
        for (int kj = 0; kj < kw; ++kj) {
            __global const float *src = col + c_off + ((size_t)(c * kh + ki) * kw + kj) * cols
                                        + ((size_t)n * Ho + oh) * Wo;
            const int w0 = kj * dw - pw;
            for (int ow = 0; ow < Wo; ++ow) {
                const int w = w0 + ow * sw;
                if (w >= 0 && w < W) dst[w] += src[ow];
            }
        }
    }
}

// (A0, A1, S) -> (A1, A0, S); `acc` adds into the destination. Launched as (S rounded up, A1, A0).
__kernel void swap_batch_channels(const int S, __global const float *src, const int s_off,
                                  const int A0, const int A1,
                                  __global float *dst, const int d_off, const int acc)
{
    const int s = get_global_id(0), b = get_global_id(1), a = get_global_id(2);
    if (s >= S) return;
    STORE(dst, d_off + ((size_t)b * A0 + a) * S + s, src[s_off + ((size_t)a * A1 + b) * S + s], acc)
}

// Pooling kernels are launched as (Ho * Wo or H * W rounded up, N * C planes).
__kernel void max_pool(const int spatial, __global const float *x, const int x_off,
                       const int H, const int W, const int Ho, const int Wo,
                       const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                       __global float *out, const int o_off, __global int *argmax, const int a_off)
{
    const int j = get_global_id(0), plane = get_global_id(1);
    if (j >= spatial) return;
    const int oh = j / Wo, ow = j - oh * Wo;
    const size_t i = (size_t)plane * spatial + j;
    __global const float *xp = x + x_off + (size_t)plane * H * W;
    const int h0 = oh * sh - ph, w0 = ow * sw - pw;
    float best = -INFINITY;
    int where = -1;
    for (int ki = 0; ki < kh; ++ki) {
        const int h = h0 + ki;
        if (h < 0 || h >= H) continue;
        for (int kj = 0; kj < kw; ++kj) {
            const int w = w0 + kj;
            if (w < 0 || w >= W) continue;
            const float v = xp[h * W + w];
            if (where < 0 || v > best || v != v) {   // first maximum wins; NaN wins (torch)
                best = v;
                where = h * W + w;
            }
        }
    }
    out[o_off + i] = best;
    argmax[a_off + i] = where;
}

// one work-item per (n, c) plane scatters its outputs' gradients (planes never overlap)
__kernel void max_pool_bwd(const int planes, const int HW, const int HoWo,
                           __global const float *dy, const int dy_off, __global const int *argmax, const int a_off,
                           __global float *dx, const int dx_off, const int acc)
{
    const int p = get_global_id(0);
    if (p >= planes) return;
    __global float *dxp = dx + dx_off + (size_t)p * HW;
    if (!acc) for (int j = 0; j < HW; ++j) dxp[j] = 0.0f;
    const size_t base = (size_t)p * HoWo;
    for (int j = 0; j < HoWo; ++j) dxp[argmax[a_off + base + j]] += dy[dy_off + base + j];
}

// torch's divisor: the window clipped to the padded input (count_include_pad) or to the input
inline int pool_divisor(int h0, int w0, int H, int W, int kh, int kw, int ph, int pw, int include_pad)
{
    int h1 = min(h0 + kh, H + ph), w1 = min(w0 + kw, W + pw);
    const int padded = (h1 - h0) * (w1 - w0);
    if (include_pad) return padded;
    h0 = max(h0, 0); w0 = max(w0, 0);
    h1 = min(h1, H); w1 = min(w1, W);
    return (h1 - h0) * (w1 - w0);
}

__kernel void avg_pool(const int spatial, __global const float *x, const int x_off,
                       const int H, const int W, const int Ho, const int Wo,
                       const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                       const int include_pad, __global float *out, const int o_off)
{
    const int j = get_global_id(0), plane = get_global_id(1);
    if (j >= spatial) return;
    const int oh = j / Wo, ow = j - oh * Wo;
    const size_t i = (size_t)plane * spatial + j;
    __global const float *xp = x + x_off + (size_t)plane * H * W;
    const int h0 = oh * sh - ph, w0 = ow * sw - pw;
    float s = 0.0f;
    for (int h = max(h0, 0); h < min(h0 + kh, H); ++h)
        for (int w = max(w0, 0); w < min(w0 + kw, W); ++w) s += xp[h * W + w];
    out[o_off + i] = s / (float)pool_divisor(h0, w0, H, W, kh, kw, ph, pw, include_pad);
}

// one work-item per input element gathers from the outputs whose window holds it;
// launched as (H * W rounded up, N * C planes)
__kernel void avg_pool_bwd(const int spatial, __global const float *dy, const int dy_off,
                           const int H, const int W, const int Ho, const int Wo,
                           const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                           const int include_pad, __global float *dx, const int dx_off, const int acc)
{
    const int j = get_global_id(0), plane = get_global_id(1);
    if (j >= spatial) return;
    const int h = j / W, w = j - h * W;
    const size_t i = (size_t)plane * spatial + j;
    __global const float *dyp = dy + dy_off + (size_t)plane * Ho * Wo;
    // outputs whose window [o*s - p, o*s - p + k) holds h
    const int oh_lo = max(0, (h + ph - kh + sh) / sh), oh_hi = min(Ho - 1, (h + ph) / sh);
    const int ow_lo = max(0, (w + pw - kw + sw) / sw), ow_hi = min(Wo - 1, (w + pw) / sw);
    float v = 0.0f;
    for (int oh = oh_lo; oh <= oh_hi; ++oh) {
        for (int ow = ow_lo; ow <= ow_hi; ++ow) {
            const int h0 = oh * sh - ph, w0 = ow * sw - pw;
            if (h < h0 || h >= h0 + kh || w < w0 || w >= w0 + kw) continue;
            v += dyp[oh * Wo + ow] / (float)pool_divisor(h0, w0, H, W, kh, kw, ph, pw, include_pad);
        }
    }
    STORE(dx, dx_off + i, v, acc)
}
