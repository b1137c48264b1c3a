// Convolution by im2col / col2im around the GEMM, and 2-D pooling. NCHW float32.
// col layout: (C * kh * kw, N * Ho * Wo), row (c, ki, kj), column (n, oh, ow).

#define STORE(o, i, v, acc) { if (acc) (o)[i] += (v); else (o)[i] = (v); }

// One work-item per output position (n, oh, ow) walks every (c, ki, kj) row: one division per
// work-item, and consecutive work-items touch consecutive columns (CPU drivers vectorise that).
// Launched as (Ho * Wo rounded up, N).
__kernel void im2col(const int spatial, __global const float *x, const int x_off,
                     const int N, const int C, const int H, const int W, const int Ho, const int Wo,
                     const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                     const int dh, const int dw, __global float *col, const int c_off)
{
    const int j = get_global_id(0), n = get_global_id(1);
    if (j >= spatial) return;
    const int oh = j / Wo, ow = j - oh * Wo;
    const size_t cols = (size_t)N * spatial;
    __global float *dst = col + c_off + (size_t)n * spatial + j;
    __global const float *xn = x + x_off + (size_t)n * C * H * W;
    for (int c = 0; c < C; ++c) {
        __global const float *xc = xn + (size_t)c * H * W;
        for (int ki = 0; ki < kh; ++ki) {
            const int h = oh * sh - ph + ki * dh;
            const bool h_in = h >= 0 && h < H;
            for (int kj = 0; kj < kw; ++kj) {
                const int w = ow * sw - pw + kj * dw;
                *dst = (h_in && w >= 0 && w < W) ? xc[h * W + w] : 0.0f;
                dst += cols;
            }
        }
    }
}

// dx[n, c, h, w] (+)= every col entry that im2col read from (n, c, h, w): a gather, no atomics.
// Launched as (H * W rounded up, N * C).
__kernel void col2im(const int plane, __global const float *col, const int c_off,
                     const int N, const int C, const int H, const int W, const int Ho, const int Wo,
                     const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                     const int dh, const int dw, __global float *dx, const int x_off, const int acc)
{
    const int i = get_global_id(0), nc = get_global_id(1);
    if (i >= plane) return;
    const int h = i / W, w = i - h * W;
    const int n = nc / C, c = nc - n * C;
    const size_t cols = (size_t)N * Ho * Wo;
    __global const float *src = col + c_off + (size_t)c * kh * kw * cols + (size_t)n * Ho * Wo;
    float v = 0.0f;
    for (int ki = 0; ki < kh; ++ki) {
        int oh = h + ph - ki * dh;
        if (oh < 0) continue;
        if (sh > 1) {
            if (oh % sh) continue;
            oh /= sh;
        }
        if (oh >= Ho) continue;
        for (int kj = 0; kj < kw; ++kj) {
            int ow = w + pw - kj * dw;
            if (ow < 0) continue;
            if (sw > 1) {
                if (ow % sw) continue;
                ow /= sw;
            }
            if (ow >= Wo) continue;
            v += src[(size_t)(ki * kw + kj) * cols + oh * Wo + ow];
        }
    }
    STORE(dx, x_off + (size_t)nc * plane + i, v, acc)
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
            if (where < 0 || v > best || isnan(v)) {   // first maximum wins; NaN wins (torch)
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
