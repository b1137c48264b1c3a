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

// ------------------------------------------------------------------ fused sequence steps
// lstm_sequence / gru_sequence and their backward (recurrent.py) launch one kernel per time
// step instead of a GEMM, a cell and a slice: a work-group owns a block of hidden units for a
// range of rows, computes the recurrent product for exactly the gate columns of those units
// and applies the cell to it straight from registers, so neither h_prev @ W_hh^T nor the
// pre-activation gradient product ever goes to memory. One work-item per work-group (as
// gemm_packed): a register-blocked micro-kernel, the units of a block in float8 vectors.
// Rows past the last are read as the last row (valid memory) and never stored.
#define LD8(p) (*(__global const float8_u *)(p))
#define ST8(p, v) (*(__global float8_u *)(p) = (v))

// The vector exp and tanh are contracted to FMA (shorter dependency chains: each polynomial
// step one instruction), as the NumPy backend's x86-64-v3 clones are; the scalar ones above
// stay as the file's pragma says.
inline float8 exp_f8(float8 x)
{
#pragma OPENCL FP_CONTRACT ON
    x = x < -87.3f ? (float8)(-87.3f) : (x > 88.3f ? (float8)(88.3f) : x);
    const float8 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float8 r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float8 p = (float8)(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    return p * as_float8((convert_int8(n) + 127) << 23);
}

// tanh_f on 8 lanes (the same operations, lane by lane)
inline float8 tanh_f8(const float8 y)
{
#pragma OPENCL FP_CONTRACT ON
    const int8 sign = as_int8(y) & (int)0x80000000;
    const float8 ax = as_float8(as_int8(y) & 0x7fffffff);
    const float8 big = as_float8(as_int8(1.0f - 2.0f / (exp_f8(ax + ax) + 1.0f)) | sign);
    const float8 z = y * y;
    float8 p = (float8)(-5.70498872745e-3f);
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    return ax < 0.625f ? p * z * y + y : big;
}
#define SIGMOID8(a) ((tanh_f8((a) * 0.5f) + 1.0f) * 0.5f)

// Wp[b][g][off + k][v] = W[(g * H + 16 b + v) * K + k], Kt rows per gate: the forward's 16
// columns of gate g of unit block b, k-major, so each k of the product reads two vectors in a
// row. W_hh goes to rows [0, H) and, where the step projects its inputs, W_ih to rows [H, H + I),
// so that one panel multiplies the step's [h_prev | x_t]. One work-item per (k, v, b * G + g).
__kernel void pack_gate_columns(const int H, const int G, const int K, const int off, const int Kt,
                                __global const float *W, const int w_off, __global float *Wp, const int p_off)
{
    const int k = get_global_id(0), v = get_global_id(1), bg = get_global_id(2);
    if ((get_group_id(0) + 1) * get_local_size(0) > (size_t)K && k >= K) return;  // see CELL_CHECK
    const int b = bg / G, g = bg - b * G;
    Wp[p_off + ((size_t)bg * Kt + off + k) * 16 + v] = W[w_off + ((size_t)g * H + b * 16 + v) * K + k];
}

// Wb[b][k][v] = W[k * H + 16 b + v] (k < K = G * H): the backward's 16 columns of unit block b,
// contiguous per k. One work-item per (v, k, b).
__kernel void pack_unit_rows(const int H, const int K, __global const float *W, const int w_off,
                             __global float *Wb, const int p_off)
{
    const int v = get_global_id(0), k = get_global_id(1), b = get_global_id(2);
    Wb[p_off + ((size_t)b * K + k) * 16 + v] = W[w_off + (size_t)k * H + b * 16 + v];
}

// The fused steps' product: 6 rows (from r0) x 16 columns (two vectors) of A[rows, :K] @ a
// packed [K][16] panel w, added to accumulators a<row>_<vector> (12 of AVX2's 16 registers; 3 x
// 4 vectors spilled). A's rows are ld floats apart. The product alone is contracted to FMA, as
// gemm.cl's are (the cells' arithmetic stays as the file's pragma says).
#define ACC_ZERO \
        float8 a0_0 = 0.0f, a0_1 = 0.0f, a1_0 = 0.0f, a1_1 = 0.0f, a2_0 = 0.0f, a2_1 = 0.0f; \
        float8 a3_0 = 0.0f, a3_1 = 0.0f, a4_0 = 0.0f, a4_1 = 0.0f, a5_0 = 0.0f, a5_1 = 0.0f;
#define ACCUMULATE_6x2(A, ld, K, w) { \
            _Pragma("OPENCL FP_CONTRACT ON") \
            __global const float *p0 = (A) + (size_t)min(r0, N - 1) * (ld); \
            __global const float *p1 = (A) + (size_t)min(r0 + 1, N - 1) * (ld); \
            __global const float *p2 = (A) + (size_t)min(r0 + 2, N - 1) * (ld); \
            __global const float *p3 = (A) + (size_t)min(r0 + 3, N - 1) * (ld); \
            __global const float *p4 = (A) + (size_t)min(r0 + 4, N - 1) * (ld); \
            __global const float *p5 = (A) + (size_t)min(r0 + 5, N - 1) * (ld); \
            __global const float8_u *wk = (w); \
            for (int k = 0; k < (K); ++k) { \
                const float8 w0 = wk[0], w1 = wk[1]; \
                float x = p0[k]; a0_0 += x * w0; a0_1 += x * w1; \
                x = p1[k]; a1_0 += x * w0; a1_1 += x * w1; \
                x = p2[k]; a2_0 += x * w0; a2_1 += x * w1; \
                x = p3[k]; a3_0 += x * w0; a3_1 += x * w1; \
                x = p4[k]; a4_0 += x * w0; a4_1 += x * w1; \
                x = p5[k]; a5_0 += x * w0; a5_1 += x * w1; \
                wk += 2; \
            } \
        }
// the product alone, zero when !live
#define PRODUCT_6x2(live, A, ld, K, w) ACC_ZERO if (live) ACCUMULATE_6x2(A, ld, K, w)
// A forward step's product for gate gk (panels of KT = H + K2 rows): [h_prev | x_t] @ its
// panel, h's part where `hk` and not the first step (the zero state), x's where `xk` and K2.
#define GATE_PRODUCT(gk, hk, xk) ACC_ZERO \
        if ((hk) && !first) ACCUMULATE_6x2(A, H, H, w + (size_t)(gk) * KT * 2) \
        if ((xk) && K2) ACCUMULATE_6x2(X, ldx, K2, w + ((size_t)(gk) * KT + H) * 2)
#define ROWS6(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define ROWS6Q(X) X(0, 0) X(0, 1) X(1, 0) X(1, 1) X(2, 0) X(2, 1) X(3, 0) X(3, 1) X(4, 0) X(4, 1) X(5, 0) X(5, 1)
// gate g's product of this row panel kept for the last gate's pass
#define KEEP(r, q) part[(gk * 6 + (r)) * 2 + (q)] = a##r##_##q;

// w: unit block b's panels, G of KT rows each
#define STEP_SETUP(G, KT) \
    const int u_blk = get_group_id(0) * 16; \
    const int r_begin = get_group_id(1) * rows_wg, r_end = min(N, r_begin + rows_wg); \
    __global const float8_u *w = (__global const float8_u *)(Wp + p_off) + (size_t)get_group_id(0) * (G) * (KT) * 2;
// The forward steps' operands beyond the states: the packed panels (rows [h_prev | x_t], K2 = 0:
// h_prev alone), x_t (rows ldx floats apart), the given projections xw (has_xw: added to the
// pre-activations as they are), a bias (has_bias), and `keep`: whether the gates go to `gates`
// (for the backward) or nowhere (inference).
#define FWD_ARGS const int H, const int N, const int rows_wg, const int first, \
                 __global const float *Wp, const int p_off, const int K2, \
                 __global const float *x, const int x_off, const int ldx, \
                 __global const float *xw, const int xw_off, const int has_xw, \
                 __global const float *b, const int b_off, const int has_bias, \
                 __global float *gates, const int g_off, const int keep, \
                 __global float *h_prev, const int hp_off, __global float *h, const int h_off
#define FWD_SETUP(G) \
    const int KT = H + K2; \
    STEP_SETUP(G, KT) \
    __global const float *A = h_prev + hp_off, *X = x + x_off;
#define BIAS8(k) (has_bias ? LD8(b + b_off + (k) * H + u) : 0.0f)
// ex: the row's place in xw (N, G * H)
#define XW8(k) (has_xw ? LD8(xw + xw_off + ex + (k) * H) : 0.0f)
#define KEEP_GATES(e4, v0, v1, v2, v3) if (keep) { \
            ST8(gates + g_off + (e4), v0); ST8(gates + g_off + (e4) + H, v1); \
            ST8(gates + g_off + (e4) + 2 * H, v2); ST8(gates + g_off + (e4) + 3 * H, v3); }

// Step t of the LSTM forward for 16 units: gates i, f, g in turn kept in `part`, then o's
// product and the cell (lstm_cell's operations) per row and vector of 8 units.
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void lstm_seq_step(FWD_ARGS, __global float *c_prev, const int cp_off, __global float *c, const int c_off)
{
    FWD_SETUP(4)
    __local float8 part[3 * 6 * 2];
    for (int r0 = r_begin; r0 < r_end; r0 += 6) {
        for (int gk = 0; gk < 3; ++gk) {
            GATE_PRODUCT(gk, 1, 1)
            ROWS6Q(KEEP)
        }
        GATE_PRODUCT(3, 1, 1)
#define LSTM_CELL(r, q) if (r0 + (r) < r_end) { \
            const int u = u_blk + 8 * (q); \
            const size_t e4 = (size_t)(r0 + (r)) * 4 * H + u, e1 = (size_t)(r0 + (r)) * H + u, ex = e4; \
            const float8 i = SIGMOID8(XW8(0) + part[(0 * 6 + (r)) * 2 + (q)] + BIAS8(0)); \
            const float8 f = SIGMOID8(XW8(1) + part[(1 * 6 + (r)) * 2 + (q)] + BIAS8(1)); \
            const float8 g = tanh_f8(XW8(2) + part[(2 * 6 + (r)) * 2 + (q)] + BIAS8(2)); \
            const float8 o = SIGMOID8(XW8(3) + a##r##_##q + BIAS8(3)); \
            KEEP_GATES(e4, i, f, g, o) \
            float8 cp = 0.0f; \
            if (first) { ST8(h_prev + hp_off + e1, cp); ST8(c_prev + cp_off + e1, cp); } \
            else cp = LD8(c_prev + cp_off + e1); \
            const float8 cv = f * cp + i * g; \
            ST8(c + c_off + e1, cv); \
            ST8(h + h_off + e1, o * tanh_f8(cv)); }
        ROWS6Q(LSTM_CELL)
#undef LSTM_CELL
    }
}

// Step t of the GRU forward for 16 units: r's and z's products kept, and W_in x_t's where the
// step projects its inputs (n's input part stays apart: the reset multiplies only
// hn = W_hn h + b_hn), then hn's product and the cell. The input bias b_ih (has_bih) where the
// projections are not given.
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void gru_seq_step(FWD_ARGS, __global const float *b_ih, const int bi_off, const int has_bih)
{
    FWD_SETUP(3)
    __local float8 part[3 * 6 * 2];
    for (int r0 = r_begin; r0 < r_end; r0 += 6) {
        for (int gk = 0; gk < 3; ++gk) {
            GATE_PRODUCT(gk, gk < 2, 1)
            ROWS6Q(KEEP)
        }
        GATE_PRODUCT(2, 1, 0)
#define BIH8(k) (has_bih ? LD8(b_ih + bi_off + (k) * H + u) : 0.0f)
#define GRU_CELL(r, q) if (r0 + (r) < r_end) { \
            const int u = u_blk + 8 * (q); \
            const size_t e4 = (size_t)(r0 + (r)) * 4 * H + u, e1 = (size_t)(r0 + (r)) * H + u; \
            const size_t ex = (size_t)(r0 + (r)) * 3 * H + u; \
            const float8 rg = SIGMOID8(XW8(0) + part[(0 * 6 + (r)) * 2 + (q)] + BIH8(0) + BIAS8(0)); \
            const float8 z = SIGMOID8(XW8(1) + part[(1 * 6 + (r)) * 2 + (q)] + BIH8(1) + BIAS8(1)); \
            const float8 hn = a##r##_##q + BIAS8(2); \
            const float8 nv = tanh_f8(rg * hn + (XW8(2) + part[(2 * 6 + (r)) * 2 + (q)] + BIH8(2))); \
            KEEP_GATES(e4, rg, z, nv, hn) \
            float8 hp = 0.0f; \
            if (first) ST8(h_prev + hp_off + e1, hp); else hp = LD8(h_prev + hp_off + e1); \
            ST8(h + h_off + e1, (1.0f - z) * nv + z * hp); }
        ROWS6Q(GRU_CELL)
#undef GRU_CELL
#undef BIH8
    }
}
#undef XW8
#undef BIAS8

#define BWD_SETUP(G) STEP_SETUP(G, H)

// Step t of the LSTM backward: dh = dgates[t_next] @ W_hh (has_next) + dout[t] columns
// [offset, offset + H), then lstm_cell_bwd with the carried dc (zero when first).
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void lstm_seq_bwd_step(const int H, const int N, const int rows_wg, const int has_next,
                       __global const float *Wp, const int p_off,
                       __global const float *dnext, const int dn_off,
                       __global const float *dout, const int do_off, const int C,
                       __global const float *gates, const int g_off,
                       __global const float *c_prev, const int cp_off, __global const float *c, const int c_off,
                       __global float *dc, const int dc_off, __global float *dgates, const int dg_off)
{
    BWD_SETUP(4)
    for (int r0 = r_begin; r0 < r_end; r0 += 6) {
        PRODUCT_6x2(has_next, dnext + dn_off, 4 * H, 4 * H, w)
#define LSTM_BWD(r, q) if (r0 + (r) < r_end) { \
            const int u = u_blk + 8 * (q); \
            const size_t e4 = (size_t)(r0 + (r)) * 4 * H + u, e1 = (size_t)(r0 + (r)) * H + u; \
            const float8 d = a##r##_##q + LD8(dout + do_off + (size_t)(r0 + (r)) * C + u); \
            const float8 i = LD8(gates + g_off + e4), f = LD8(gates + g_off + e4 + H); \
            const float8 g = LD8(gates + g_off + e4 + 2 * H), o = LD8(gates + g_off + e4 + 3 * H); \
            const float8 tc = tanh_f8(LD8(c + c_off + e1)); \
            const float8 dct = (has_next ? LD8(dc + dc_off + e1) : 0.0f) + d * o * (1.0f - tc * tc); \
            ST8(dgates + dg_off + e4, dct * g * (i * (1.0f - i))); \
            ST8(dgates + dg_off + e4 + H, dct * LD8(c_prev + cp_off + e1) * (f * (1.0f - f))); \
            ST8(dgates + dg_off + e4 + 2 * H, dct * i * (1.0f - g * g)); \
            ST8(dgates + dg_off + e4 + 3 * H, d * tc * (o * (1.0f - o))); \
            ST8(dc + dc_off + e1, dct * f); }
#define LSTM_BWD_ROW(r) LSTM_BWD(r, 0) LSTM_BWD(r, 1)
        LSTM_BWD_ROW(0) LSTM_BWD_ROW(1) LSTM_BWD_ROW(2) LSTM_BWD_ROW(3) LSTM_BWD_ROW(4) LSTM_BWD_ROW(5)
#undef LSTM_BWD_ROW
#undef LSTM_BWD
    }
}

// Step t of the GRU backward: dh = dh * z[t_next] + dhw[t_next] @ W_hh (has_next, dh the
// carried gradient of h[t]) + dout[t] columns [offset, offset + H), then gru_cell_bwd; dh keeps
// the total for the next step.
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void gru_seq_bwd_step(const int H, const int N, const int rows_wg, const int has_next,
                      __global const float *Wp, const int p_off,
                      __global const float *dnext, const int dn_off, __global const float *gnext, const int gn_off,
                      __global const float *dout, const int do_off, const int C,
                      __global const float *gates, const int g_off, __global const float *h_prev, const int hp_off,
                      __global float *dh, const int dh_off, __global float *dxw, const int dx_off,
                      __global float *dhw, const int dhw_off)
{
    BWD_SETUP(3)
    for (int r0 = r_begin; r0 < r_end; r0 += 6) {
        PRODUCT_6x2(has_next, dnext + dn_off, 3 * H, 3 * H, w)
#define GRU_BWD(r, q) if (r0 + (r) < r_end) { \
            const int u = u_blk + 8 * (q); \
            const size_t e3 = (size_t)(r0 + (r)) * 3 * H + u, e4 = (size_t)(r0 + (r)) * 4 * H + u; \
            const size_t e1 = (size_t)(r0 + (r)) * H + u; \
            const float8 dout_v = LD8(dout + do_off + (size_t)(r0 + (r)) * C + u); \
            const float8 d = has_next ? (a##r##_##q + LD8(dh + dh_off + e1) * LD8(gnext + gn_off + e4 + H)) + dout_v \
                                      : dout_v; \
            const float8 rg = LD8(gates + g_off + e4), z = LD8(gates + g_off + e4 + H); \
            const float8 nv = LD8(gates + g_off + e4 + 2 * H), hn = LD8(gates + g_off + e4 + 3 * H); \
            const float8 dn = d * (1.0f - z) * (1.0f - nv * nv); \
            const float8 dz = d * (LD8(h_prev + hp_off + e1) - nv) * (z * (1.0f - z)); \
            const float8 dr = dn * hn * (rg * (1.0f - rg)); \
            ST8(dxw + dx_off + e3, dr); ST8(dxw + dx_off + e3 + H, dz); ST8(dxw + dx_off + e3 + 2 * H, dn); \
            ST8(dhw + dhw_off + e3, dr); ST8(dhw + dhw_off + e3 + H, dz); ST8(dhw + dhw_off + e3 + 2 * H, dn * rg); \
            ST8(dh + dh_off + e1, d); }
#define GRU_BWD_ROW(r) GRU_BWD(r, 0) GRU_BWD(r, 1)
        GRU_BWD_ROW(0) GRU_BWD_ROW(1) GRU_BWD_ROW(2) GRU_BWD_ROW(3) GRU_BWD_ROW(4) GRU_BWD_ROW(5)
#undef GRU_BWD_ROW
#undef GRU_BWD
    }
}
