// Sequence ops: axis swap, embedding gather/scatter and the fused recurrent cells (the
// contract is in backends/base.py). Cells run one thread per (row, hidden unit); `b` (the
// hidden bias) may be a null pointer. Sigmoid is 0.5 * (1 + tanh(a / 2)) as everywhere.
#include "common.cuh"

#define JP_SIGMOID(a) ((tanh((a) * (real)0.5) + (real)1) * (real)0.5)

extern "C" {

// dst (B, A, R)[j, i, r] (+)= src (A, B, R)[i, j, r]; n = A * B * R, indexed over dst.
__global__ void swap_leading_axes(const real* src, real* dst, i64 n, i64 a_len, i64 b_len, i64 rest,
                                  int acc) {
    GRID_STRIDE(e, n) {
        const i64 r = e % rest, ji = e / rest;
        const i64 i = ji % a_len, j = ji / a_len;
        const real v = src[(i * b_len + j) * rest + r];
        dst[e] = acc ? dst[e] + v : v;
    }
}

// out[k, d] = weight[idx[k], d]; n = rows * dim.
__global__ void embedding_gather(const int* idx, const real* w, real* out, i64 n, i64 dim) {
    GRID_STRIDE(e, n) {
        const i64 k = e / dim, d = e - k * dim;
        out[e] = w[(i64)idx[k] * dim + d];
    }
}

// One thread per column walks the rows in order: deterministic, no atomics; the padding row
// (padding >= 0) is never written.
__global__ void embedding_scatter(const int* idx, const real* dy, real* dw, i64 rows, i64 vocab,
                                  i64 dim, int padding, int acc) {
    GRID_STRIDE(d, dim) {
        if (!acc)
            for (i64 v = 0; v < vocab; ++v) dw[v * dim + d] = (real)0;
        for (i64 k = 0; k < rows; ++k) {
            const int v = idx[k];
            if (v != padding) dw[(i64)v * dim + d] += dy[k * dim + d];
        }
    }
}

__global__ void rnn_cell(const real* xw, const real* hw, const real* b, real* h, i64 n, i64 hid,
                         int relu) {
    GRID_STRIDE(e, n) {
        const i64 j = e % hid;
        const real a = xw[e] + hw[e] + (b ? b[j] : (real)0);
        h[e] = relu ? (a < (real)0 ? (real)0 : a) : tanh(a);
    }
}

__global__ void lstm_cell(const real* xw, const real* hw, const real* b, const real* c_prev,
                          real* gates, real* c, real* h, i64 n, i64 hid) {
    GRID_STRIDE(e, n) {
        const i64 row = e / hid, j = e - row * hid, base = row * 4 * hid + j;
        real a[4];
        for (int k = 0; k < 4; ++k)
            a[k] = xw[base + k * hid] + hw[base + k * hid] + (b ? b[k * hid + j] : (real)0);
        const real i = JP_SIGMOID(a[0]), f = JP_SIGMOID(a[1]), g = tanh(a[2]), o = JP_SIGMOID(a[3]);
        gates[base] = i;
        gates[base + hid] = f;
        gates[base + 2 * hid] = g;
        gates[base + 3 * hid] = o;
        const real cv = f * c_prev[e] + i * g;
        c[e] = cv;
        h[e] = o * tanh(cv);
    }
}

// dc_prev may be dc itself: each thread reads its element before writing it.
__global__ void lstm_cell_backward(const real* gates, const real* c_prev, const real* c, const real* dh,
                                   const real* dc, real* dgates, real* dc_prev, i64 n, i64 hid) {
    GRID_STRIDE(e, n) {
        const i64 row = e / hid, j = e - row * hid, base = row * 4 * hid + j;
        const real i = gates[base], f = gates[base + hid], g = gates[base + 2 * hid], o = gates[base + 3 * hid];
        const real tc = tanh(c[e]), d = dh[e];
        const real dct = dc[e] + d * o * ((real)1 - tc * tc);
        dgates[base] = dct * g * (i * ((real)1 - i));
        dgates[base + hid] = dct * c_prev[e] * (f * ((real)1 - f));
        dgates[base + 2 * hid] = dct * i * ((real)1 - g * g);
        dgates[base + 3 * hid] = d * tc * (o * ((real)1 - o));
        dc_prev[e] = dct * f;
    }
}

// gates receives [r, z, n, hn] (N, 4H); torch's GRU: n = tanh(xw_n + r * (hw_n + b_hn)).
__global__ void gru_cell(const real* xw, const real* hw, const real* b, const real* h_prev,
                         real* gates, real* h, i64 n, i64 hid) {
    GRID_STRIDE(e, n) {
        const i64 row = e / hid, j = e - row * hid, b3 = row * 3 * hid + j, b4 = row * 4 * hid + j;
        const real r = JP_SIGMOID(xw[b3] + hw[b3] + (b ? b[j] : (real)0));
        const real z = JP_SIGMOID(xw[b3 + hid] + hw[b3 + hid] + (b ? b[hid + j] : (real)0));
        const real hn = hw[b3 + 2 * hid] + (b ? b[2 * hid + j] : (real)0);
        const real nv = tanh(r * hn + xw[b3 + 2 * hid]);
        gates[b4] = r;
        gates[b4 + hid] = z;
        gates[b4 + 2 * hid] = nv;
        gates[b4 + 3 * hid] = hn;
        h[e] = ((real)1 - z) * nv + z * h_prev[e];
    }
}

// dh_prev may be dh itself.
__global__ void gru_cell_backward(const real* gates, const real* h_prev, const real* dh, real* dxw,
                                  real* dhw, real* dh_prev, i64 n, i64 hid) {
    GRID_STRIDE(e, n) {
        const i64 row = e / hid, j = e - row * hid, b3 = row * 3 * hid + j, b4 = row * 4 * hid + j;
        const real r = gates[b4], z = gates[b4 + hid], nv = gates[b4 + 2 * hid], hn = gates[b4 + 3 * hid];
        const real d = dh[e];
        const real dn = d * ((real)1 - z) * ((real)1 - nv * nv);
        const real dz = d * (h_prev[e] - nv) * (z * ((real)1 - z));
        const real dr = dn * hn * (r * ((real)1 - r));
        dxw[b3] = dr;
        dxw[b3 + hid] = dz;
        dxw[b3 + 2 * hid] = dn;
        dhw[b3] = dr;
        dhw[b3 + hid] = dz;
        dhw[b3 + 2 * hid] = dn * r;
        dh_prev[e] = d * z;
    }
}

}  // extern "C"
