// Sequence ops: axis swap, embedding gather/scatter and the fused recurrent cells (the
// contract is in backends/base.py). Every array is a base buffer plus an element offset.
// The cells run on a (hidden, rows) grid: work-item (j, n) owns unit j of row n, so no
// kernel divides per element and CPU drivers vectorise along j.
#pragma OPENCL FP_CONTRACT OFF

#define STORE(o, i, r, acc) { if (acc) (o)[i] += (r); else (o)[i] = (r); }
#define SIGMOID(a) ((tanh_f((a) * 0.5f) + 1.0f) * 0.5f)

// The cells' bounds check is asked per work-group first (as GID_CHECK in elementwise.cl): a
// per-item check alone makes PoCL mask every load and store of the vectorised work-group loop.
#define CELL_CHECK(hid) const int j = get_global_id(0), n = get_global_id(1); \
    if ((get_group_id(0) + 1) * get_local_size(0) > (size_t)(hid) && j >= (hid)) return;
// Without a bias b is a valid stand-in buffer (xw), read but not used: a load under the
// condition would be a masked one.
#define BIAS(load) ({ const float bv = (load); has_bias ? bv : 0.0f; })

// PoCL calls tanh (and exp) out of line, one element at a time, which stops it vectorising a
// cell across work-items: the cells' tanh is written out instead, as the NumPy backend's C
// kernels do (Cephes' tanhf: an odd polynomial below |x| = 0.625, 1 - 2 / (e^2|x| + 1) above,
// e^x by Cephes' expf polynomial with 2^n from the exponent bits), within a few float32 ulps.
inline float exp_f(float x)
{
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to integer
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    return p * as_float(((int)n + 127) << 23);
}

inline float tanh_f(const float y)
{
    // sign and magnitude by bits: PoCL calls fabs and copysign out of line too
    const int sign = as_int(y) & (int)0x80000000;
    const float ax = as_float(as_int(y) & 0x7fffffff);
    const float big = as_float(as_int(1.0f - 2.0f / (exp_f(ax + ax) + 1.0f)) | sign);
    const float z = y * y;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    return ax < 0.625f ? p * z * y + y : big;
}

// dst (B, A, R)[j, i, r] (+)= src (A, B, R)[i, j, r]; one work-item per (r, j, i)
__kernel void swap_leading_axes(const int rest, __global const float *src, const int s_off,
                                __global float *dst, const int d_off, const int a_len,
                                const int b_len, const int acc)
{
    const int r = get_global_id(0), j = get_global_id(1), i = get_global_id(2);
    if ((get_group_id(0) + 1) * get_local_size(0) > (size_t)rest && r >= rest) return;  // see CELL_CHECK
    const float v = src[s_off + ((size_t)i * b_len + j) * rest + r];
    STORE(dst, d_off + ((size_t)j * a_len + i) * rest + r, v, acc)
}

// out[k, d] = weight[indices[k], d]; launched as (dim, rows)
__kernel void embedding_gather(const int dim, __global const int *idx, const int i_off,
                               __global const float *w, const int w_off,
                               __global float *out, const int o_off)
{
    const int d = get_global_id(0), k = get_global_id(1);
    if ((get_group_id(0) + 1) * get_local_size(0) > (size_t)dim && d >= dim) return;  // see CELL_CHECK
    out[o_off + (size_t)k * dim + d] = w[w_off + (size_t)idx[i_off + k] * dim + d];
}

// One work-item per column d walks the rows in order: a deterministic scatter-sum without
// atomics (OpenCL 1.2 has no float atomic add). The padding row is never written.
__kernel void embedding_scatter(const int dim, __global const int *idx, const int i_off,
                                __global const float *dy, const int dy_off,
                                __global float *dw, const int dw_off, const int rows,
                                const int vocab, const int padding, const int acc)
{
    const int d = get_global_id(0);
    if (d >= dim) return;
    if (!acc)
        for (int v = 0; v < vocab; ++v) dw[dw_off + (size_t)v * dim + d] = 0.0f;
    for (int k = 0; k < rows; ++k) {
        const int v = idx[i_off + k];
        if (v != padding) dw[dw_off + (size_t)v * dim + d] += dy[dy_off + (size_t)k * dim + d];
    }
}

// h = act(xw + hw + b): act 0 tanh, 1 relu
__kernel void rnn_cell(const int hid, __global const float *xw, const int x_off,
                       __global const float *hw, const int hw_off, __global const float *b,
                       const int b_off, const int has_bias, __global float *h, const int h_off,
                       const int relu)
{
    CELL_CHECK(hid)
    const size_t e = (size_t)n * hid + j;
    const float a = xw[x_off + e] + hw[hw_off + e] + BIAS(b[b_off + j]);
    h[h_off + e] = relu ? (a < 0.0f ? 0.0f : a) : tanh_f(a);
}

__kernel void lstm_cell(const int hid, __global const float *xw, const int x_off,
                        __global const float *hw, const int hw_off, __global const float *b,
                        const int b_off, const int has_bias, __global const float *c_prev,
                        const int cp_off, __global float *gates, const int g_off,
                        __global float *c, const int c_off, __global float *h, const int h_off)
{
    CELL_CHECK(hid)
    const size_t row = (size_t)n * 4 * hid, e = (size_t)n * hid + j;
    // four named gates, not a private array: PoCL kept the array in memory and did not
    // vectorise the kernel across work-items
#define GATE(k) (xw[x_off + row + (k) * hid + j] + hw[hw_off + row + (k) * hid + j] + BIAS(b[b_off + (k) * hid + j]))
    const float i = SIGMOID(GATE(0)), f = SIGMOID(GATE(1)), g = tanh_f(GATE(2)), o = SIGMOID(GATE(3));
#undef GATE
    gates[g_off + row + j] = i;
    gates[g_off + row + hid + j] = f;
    gates[g_off + row + 2 * hid + j] = g;
    gates[g_off + row + 3 * hid + j] = o;
    const float cv = f * c_prev[cp_off + e] + i * g;
    c[c_off + e] = cv;
    h[h_off + e] = o * tanh_f(cv);
}

__kernel void lstm_cell_bwd(const int hid, __global const float *gates, const int g_off,
                            __global const float *c_prev, const int cp_off,
                            __global const float *c, const int c_off,
                            __global const float *dh, const int dh_off,
                            __global const float *dc, const int dc_off,
                            __global float *dgates, const int dg_off,
                            __global float *dc_prev, const int dcp_off)
{
    CELL_CHECK(hid)
    const size_t row = (size_t)n * 4 * hid, e = (size_t)n * hid + j;
    const float i = gates[g_off + row + j], f = gates[g_off + row + hid + j];
    const float g = gates[g_off + row + 2 * hid + j], o = gates[g_off + row + 3 * hid + j];
    const float tc = tanh_f(c[c_off + e]), d = dh[dh_off + e];
    const float dct = dc[dc_off + e] + d * o * (1.0f - tc * tc);
    dgates[dg_off + row + j] = dct * g * (i * (1.0f - i));
    dgates[dg_off + row + hid + j] = dct * c_prev[cp_off + e] * (f * (1.0f - f));
    dgates[dg_off + row + 2 * hid + j] = dct * i * (1.0f - g * g);
    dgates[dg_off + row + 3 * hid + j] = d * tc * (o * (1.0f - o));
    dc_prev[dcp_off + e] = dct * f;
}

__kernel void gru_cell(const int hid, __global const float *xw, const int x_off,
                       __global const float *hw, const int hw_off, __global const float *b,
                       const int b_off, const int has_bias, __global const float *h_prev,
                       const int hp_off, __global float *gates, const int g_off,
                       __global float *h, const int h_off)
{
    CELL_CHECK(hid)
    const size_t row3 = (size_t)n * 3 * hid, row4 = (size_t)n * 4 * hid, e = (size_t)n * hid + j;
    const float br = BIAS(b[b_off + j]);
    const float bz = BIAS(b[b_off + hid + j]);
    const float bn = BIAS(b[b_off + 2 * hid + j]);
    const float r = SIGMOID(xw[x_off + row3 + j] + hw[hw_off + row3 + j] + br);
    const float z = SIGMOID(xw[x_off + row3 + hid + j] + hw[hw_off + row3 + hid + j] + bz);
    const float hn = hw[hw_off + row3 + 2 * hid + j] + bn;
    const float nv = tanh_f(r * hn + xw[x_off + row3 + 2 * hid + j]);
    gates[g_off + row4 + j] = r;
    gates[g_off + row4 + hid + j] = z;
    gates[g_off + row4 + 2 * hid + j] = nv;
    gates[g_off + row4 + 3 * hid + j] = hn;
    h[h_off + e] = (1.0f - z) * nv + z * h_prev[hp_off + e];
}

__kernel void gru_cell_bwd(const int hid, __global const float *gates, const int g_off,
                           __global const float *h_prev, const int hp_off,
                           __global const float *dh, const int dh_off,
                           __global float *dxw, const int dx_off, __global float *dhw,
                           const int dhw_off, __global float *dh_prev, const int dhp_off)
{
    CELL_CHECK(hid)
    const size_t row3 = (size_t)n * 3 * hid, row4 = (size_t)n * 4 * hid, e = (size_t)n * hid + j;
    const float r = gates[g_off + row4 + j], z = gates[g_off + row4 + hid + j];
    const float nv = gates[g_off + row4 + 2 * hid + j], hn = gates[g_off + row4 + 3 * hid + j];
    const float d = dh[dh_off + e];
    const float dn = d * (1.0f - z) * (1.0f - nv * nv);
    const float dz = d * (h_prev[hp_off + e] - nv) * (z * (1.0f - z));
    const float dr = dn * hn * (r * (1.0f - r));
    dxw[dx_off + row3 + j] = dr;
    dxw[dx_off + row3 + hid + j] = dz;
    dxw[dx_off + row3 + 2 * hid + j] = dn;
    dhw[dhw_off + row3 + j] = dr;
    dhw[dhw_off + row3 + hid + j] = dz;
    dhw[dhw_off + row3 + 2 * hid + j] = dn * r;
    dh_prev[dhp_off + e] = d * z;
}
