// Row-wise ops on (rows, cols) arrays, reductions and the fused losses.
// One work-item owns one row (class counts are small next to batch sizes).
#pragma OPENCL FP_CONTRACT OFF

#define ROW_CHECK(n) const int r = get_global_id(0); if (r >= (n)) return;
#define STORE(o, i, v, acc) { if (acc) (o)[i] += (v); else (o)[i] = (v); }

__kernel void softmax_rows(const int rows, const int cols, __global const float *x, const int x_off,
                           __global float *out, const int o_off, const int log_out)
{
    ROW_CHECK(rows)
    __global const float *xr = x + x_off + (size_t)r * cols;
    __global float *yr = out + o_off + (size_t)r * cols;
    float mx = -INFINITY;
    for (int c = 0; c < cols; ++c) mx = fmax(mx, xr[c]);
    float total = 0.0f;
    for (int c = 0; c < cols; ++c) total += exp(xr[c] - mx);
    if (log_out) {
        const float lse = log(total);
        for (int c = 0; c < cols; ++c) yr[c] = (xr[c] - mx) - lse;
    } else {
        for (int c = 0; c < cols; ++c) yr[c] = exp(xr[c] - mx) / total;
    }
}

// softmax: dx = y * (dy - sum(dy * y)); log-softmax: dx = dy - exp(y) * sum(dy)
__kernel void softmax_rows_bwd(const int rows, const int cols, __global const float *y, const int y_off,
                               __global const float *dy, const int dy_off,
                               __global float *dx, const int dx_off, const int log_in, const int acc)
{
    ROW_CHECK(rows)
    const size_t base = (size_t)r * cols;
    __global const float *yr = y + y_off + base;
    __global const float *gr = dy + dy_off + base;
    __global float *dr = dx + dx_off + base;
    float total = 0.0f;
    if (log_in) {
        for (int c = 0; c < cols; ++c) total += gr[c];
        for (int c = 0; c < cols; ++c) STORE(dr, c, gr[c] - exp(yr[c]) * total, acc)
    } else {
        for (int c = 0; c < cols; ++c) total += gr[c] * yr[c];
        for (int c = 0; c < cols; ++c) STORE(dr, c, (gr[c] - total) * yr[c], acc)
    }
}

__kernel void softmax_xent(const int rows, const int cols, __global const float *logits, const int l_off,
                           __global const int *labels, const int lab_off,
                           __global float *losses, const int loss_off,
                           __global float *dx, const int dx_off, const float grad_scale)
{
    ROW_CHECK(rows)
    const size_t base = (size_t)r * cols;
    __global const float *xr = logits + l_off + base;
    __global float *dr = dx + dx_off + base;
    float mx = -INFINITY;
    for (int c = 0; c < cols; ++c) mx = fmax(mx, xr[c]);
    float total = 0.0f;
    for (int c = 0; c < cols; ++c) {
        const float e = exp(xr[c] - mx);
        dr[c] = e;
        total += e;
    }
    const int label = labels[lab_off + r];
    losses[loss_off + r] = (log(total) + mx) - xr[label];
    for (int c = 0; c < cols; ++c) {
        const float p = dr[c] / total;
        dr[c] = (c == label ? p - 1.0f : p) * grad_scale;
    }
}

__kernel void nll(const int rows, const int cols, __global const float *logp, const int l_off,
                  __global const int *labels, const int lab_off,
                  __global float *losses, const int loss_off,
                  __global float *dx, const int dx_off, const float grad_scale)
{
    ROW_CHECK(rows)
    const size_t base = (size_t)r * cols;
    const int label = labels[lab_off + r];
    losses[loss_off + r] = -logp[l_off + base + label];
    __global float *dr = dx + dx_off + base;
    for (int c = 0; c < cols; ++c) dr[c] = c == label ? -grad_scale : 0.0f;
}

__kernel void mse(const int rows, const int cols, __global const float *pred, const int p_off,
                  __global const float *target, const int t_off,
                  __global float *losses, const int loss_off,
                  __global float *dx, const int dx_off, const float two_scale)
{
    ROW_CHECK(rows)
    const size_t base = (size_t)r * cols;
    float total = 0.0f;
    for (int c = 0; c < cols; ++c) {
        const float d = pred[p_off + base + c] - target[t_off + base + c];
        total += d * d;
        dx[dx_off + base + c] = d * two_scale;
    }
    losses[loss_off + r] = total;
}

// Sum of n contiguous floats with eight running sums: independent adds the compiler can put
// in one vector register, instead of one chain of n dependent adds.
inline float row_sum(__global const float *p, const int n)
{
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f, a4 = 0.0f, a5 = 0.0f, a6 = 0.0f, a7 = 0.0f;
    int s = 0;
    for (; s + 8 <= n; s += 8) {
        a0 += p[s]; a1 += p[s + 1]; a2 += p[s + 2]; a3 += p[s + 3];
        a4 += p[s + 4]; a5 += p[s + 5]; a6 += p[s + 6]; a7 += p[s + 7];
    }
    for (; s < n; ++s) a0 += p[s];
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
}

// partial[r, c] = sum of dy[r, c, :] (the first stage of bias_grad for images);
// launched as (channels rounded up, rows)
__kernel void plane_sums(const int channels, __global const float *dy, const int dy_off, const int inner,
                         __global float *partial, const int p_off)
{
    const int c = get_global_id(0), r = get_global_id(1);
    if (c >= channels) return;
    const size_t plane = (size_t)r * channels + c;
    partial[p_off + plane] = row_sum(dy + dy_off + plane * inner, inner);
}

// plane_sums for planes of 64 floats or more: a work-item (a work-group of one) sums `per_item`
// consecutive planes (memory order: (row, channel)) one after the other, each in four float16
// running sums (64 floats a step: four independent chains of vector adds), then across them and
// their lanes. (plane_sums runs a plane's eight sums as one chain of 8-float adds, one add
// waiting for the last.) Other sums than plane_sums': same floats, another order.
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void plane_sums_v(const int planes, const int per_item, __global const float *dy, const int dy_off,
                  const int inner, __global float *partial, const int p_off)
{
    const int p0 = get_global_id(0) * per_item, p1 = min(planes, p0 + per_item);
    for (int p = p0; p < p1; ++p) {
        __global const float *src = dy + dy_off + (size_t)p * inner;
        float16 a0 = (float16)(0.0f), a1 = a0, a2 = a0, a3 = a0;
        int s = 0;
        for (; s + 64 <= inner; s += 64) {
            a0 += *(__global const float16_u *)(src + s);
            a1 += *(__global const float16_u *)(src + s + 16);
            a2 += *(__global const float16_u *)(src + s + 32);
            a3 += *(__global const float16_u *)(src + s + 48);
        }
        for (; s + 16 <= inner; s += 16) a0 += *(__global const float16_u *)(src + s);
        const float16 t16 = (a0 + a1) + (a2 + a3);
        const float8 t8 = t16.lo + t16.hi;
        const float4 t4 = t8.lo + t8.hi;
        const float2 t2 = t4.lo + t4.hi;
        float total = t2.x + t2.y;
        for (; s < inner; ++s) total += src[s];
        partial[p_off + p] = total;
    }
}

// partial[z, c] = sum of dy[r, c] over the rows r of chunk z ([z * chunk, (z + 1) * chunk)), in
// row order; one work-item per chunk walks its rows whole. (One work-item per column walked a
// column: PoCL runs a work-group's work-items as the outer loop, so each load crossed to a row
// 4 KB on, missing the TLB and aliasing in L1.)
__kernel void column_sums(const int channels, __global const float *dy, const int dy_off, const int rows,
                          const int chunk, __global float *partial, const int p_off)
{
    const int z = get_global_id(0);
    const int begin = z * chunk, end = min(rows, begin + chunk);
    __global float *dst = partial + p_off + (size_t)z * channels;
    __global const float *src = dy + dy_off + (size_t)begin * channels;
    for (int c = 0; c < channels; ++c) dst[c] = src[c];
    for (int r = begin + 1; r < end; ++r) {
        src += channels;
        for (int c = 0; c < channels; ++c) dst[c] += src[c];
    }
}

// dbias[c] (+)= sum over rows and inner elements of dy (rows, channels, inner)
__kernel void bias_grad(const int rows, const int channels, const int inner,
                        __global const float *dy, const int dy_off,
                        __global float *db, const int db_off, const int acc)
{
    // bounds asked per work-group first and a plain column walk where inner == 1 (the sum
    // row_sum gives for one element): a per-item check and the row_sum loop made PoCL mask
    // or scalarise every load of the vectorised work-group loop
    const int c = get_global_id(0);
    if ((get_group_id(0) + 1) * get_local_size(0) > (size_t)channels && c >= channels) return;
    float total = 0.0f;
    if (inner == 1) {
        __global const float *col = dy + dy_off + c;
        for (int r = 0; r < rows; ++r) total += col[(size_t)r * channels];
    } else {
        for (int r = 0; r < rows; ++r) total += row_sum(dy + dy_off + ((size_t)r * channels + c) * inner, inner);
    }
    STORE(db, db_off + c, total, acc)
}

// Single work-group reductions (launched with one group of REDUCE_WG work-items).
#define REDUCE_WG 256

__kernel __attribute__((reqd_work_group_size(REDUCE_WG, 1, 1)))
void sum_all(const int n, __global const float *x, const int x_off, __global float *out, const int o_off)
{
    __local float partial[REDUCE_WG];
    const int t = get_local_id(0);
    float total = 0.0f;
    for (int i = t; i < n; i += REDUCE_WG) total += x[x_off + i];
    partial[t] = total;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int step = REDUCE_WG / 2; step > 0; step >>= 1) {
        if (t < step) partial[t] += partial[t + step];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (t == 0) out[o_off] = partial[0];
}

// flag[0] = 1 when every element is finite, else 0 (bit test: immune to fast-math flags)
__kernel __attribute__((reqd_work_group_size(REDUCE_WG, 1, 1)))
void all_finite(const int n, __global const uint *x, const int x_off, __global int *flag)
{
    __local int bad[REDUCE_WG];
    const int t = get_local_id(0);
    int any = 0;
    for (int i = t; i < n; i += REDUCE_WG) any |= (x[x_off + i] & 0x7F800000u) == 0x7F800000u;
    bad[t] = any;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int step = REDUCE_WG / 2; step > 0; step >>= 1) {
        if (t < step) bad[t] |= bad[t + step];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (t == 0) flag[0] = !bad[0];
}
