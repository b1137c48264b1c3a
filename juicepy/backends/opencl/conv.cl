// Convolution by im2col / col2im around the GEMM, and 2-D pooling. NCHW float32.
// col layout: (C * kh * kw, N * Ho * Wo), row (c, ki, kj), column (n, oh, ow).

#define STORE(o, i, v, acc) { if (acc) (o)[i] += (v); else (o)[i] = (v); }

__kernel void im2col(const int total, __global const float *x, const int x_off,
                     const int N, const int C, const int H, const int W, const int Ho, const int Wo,
                     const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                     const int dh, const int dw, __global float *col, const int c_off)
{
    const int i = get_global_id(0);
    if (i >= total) return;
    const int spatial = Ho * Wo;
    const int j = i % (N * spatial);          // column: (n, oh, ow)
    const int row = i / (N * spatial);        // row: (c, ki, kj)
    const int ow = j % Wo, oh = (j / Wo) % Ho, n = j / spatial;
    const int kj = row % kw, ki = (row / kw) % kh, c = row / (kw * kh);
    const int h = oh * sh - ph + ki * dh;
    const int w = ow * sw - pw + kj * dw;
    float v = 0.0f;
    if (h >= 0 && h < H && w >= 0 && w < W) v = x[x_off + (((size_t)n * C + c) * H + h) * W + w];
    col[c_off + i] = v;
}

// dx[n, c, h, w] (+)= every col entry that im2col read from (n, c, h, w): a gather, no atomics
__kernel void col2im(const int total, __global const float *col, const int c_off,
                     const int N, const int C, const int H, const int W, const int Ho, const int Wo,
                     const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                     const int dh, const int dw, __global float *dx, const int x_off, const int acc)
{
    const int i = get_global_id(0);
    if (i >= total) return;
    const int w = i % W, h = (i / W) % H, c = (i / (W * H)) % C, n = i / (W * H * C);
    const int cols = N * Ho * Wo;
    float v = 0.0f;
    for (int ki = 0; ki < kh; ++ki) {
        const int hh = h + ph - ki * dh;
        if (hh < 0 || hh % sh) continue;
        const int oh = hh / sh;
        if (oh >= Ho) continue;
        for (int kj = 0; kj < kw; ++kj) {
            const int ww = w + pw - kj * dw;
            if (ww < 0 || ww % sw) continue;
            const int ow = ww / sw;
            if (ow >= Wo) continue;
            const int row = (c * kh + ki) * kw + kj;
            v += col[c_off + (size_t)row * cols + ((size_t)n * Ho + oh) * Wo + ow];
        }
    }
    STORE(dx, x_off + i, v, acc)
}

// (N, C, S) -> (C, N, S) and back; `acc` adds into the destination
__kernel void swap_batch_channels(const int total, __global const float *src, const int s_off,
                                  const int A0, const int A1, const int S,
                                  __global float *dst, const int d_off, const int acc)
{
    const int i = get_global_id(0);
    if (i >= total) return;
    const int s = i % S, b = (i / S) % A1, a = i / (S * A1);   // src index (a, b, s)
    STORE(dst, d_off + ((size_t)b * A0 + a) * S + s, src[s_off + i], acc)
}

__kernel void max_pool(const int total, __global const float *x, const int x_off,
                       const int H, const int W, const int Ho, const int Wo,
                       const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                       __global float *out, const int o_off, __global int *argmax, const int a_off)
{
    const int i = get_global_id(0);
    if (i >= total) return;
    const int ow = i % Wo, oh = (i / Wo) % Ho, plane = i / (Wo * Ho);
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

__kernel void avg_pool(const int total, __global const float *x, const int x_off,
                       const int H, const int W, const int Ho, const int Wo,
                       const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                       const int include_pad, __global float *out, const int o_off)
{
    const int i = get_global_id(0);
    if (i >= total) return;
    const int ow = i % Wo, oh = (i / Wo) % Ho, plane = i / (Wo * Ho);
    __global const float *xp = x + x_off + (size_t)plane * H * W;
    const int h0 = oh * sh - ph, w0 = ow * sw - pw;
    float s = 0.0f;
    for (int h = max(h0, 0); h < min(h0 + kh, H); ++h)
        for (int w = max(w0, 0); w < min(w0 + kw, W); ++w) s += xp[h * W + w];
    out[o_off + i] = s / (float)pool_divisor(h0, w0, H, W, kh, kw, ph, pw, include_pad);
}

__kernel void avg_pool_bwd(const int total, __global const float *dy, const int dy_off,
                           const int H, const int W, const int Ho, const int Wo,
                           const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                           const int include_pad, __global float *dx, const int dx_off, const int acc)
{
    const int i = get_global_id(0);
    if (i >= total) return;
    const int w = i % W, h = (i / W) % H, plane = i / (W * H);
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
