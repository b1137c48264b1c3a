// Batch normalisation over (N, C, S): statistics per channel, one work-item per channel
// for the reductions, one per element for the elementwise passes. torch semantics.
#pragma OPENCL FP_CONTRACT OFF

#define STORE(o, i, v, acc) { if (acc) (o)[i] += (v); else (o)[i] = (v); }

// mean and invstd (biased variance) of each channel; running stats updated with the unbiased one
__kernel void bn_stats(const int N, const int C, const int S, __global const float *x, const int x_off,
                       __global float *mean, const int m_off, __global float *invstd, const int i_off,
                       __global float *run_mean, const int rm_off, __global float *run_var, const int rv_off,
                       const int has_running, const float momentum, const float eps)
{
    const int c = get_global_id(0);
    if (c >= C) return;
    const int count = N * S;
    float total = 0.0f;
    for (int n = 0; n < N; ++n) {
        __global const float *p = x + x_off + ((size_t)n * C + c) * S;
        for (int s = 0; s < S; ++s) total += p[s];
    }
    const float mu = total / (float)count;
    float sq = 0.0f;
    for (int n = 0; n < N; ++n) {
        __global const float *p = x + x_off + ((size_t)n * C + c) * S;
        for (int s = 0; s < S; ++s) { const float d = p[s] - mu; sq += d * d; }
    }
    const float var = sq / (float)count;
    mean[m_off + c] = mu;
    invstd[i_off + c] = 1.0f / sqrt(var + eps);
    if (has_running) {
        const float unbiased = count > 1 ? sq / (float)(count - 1) : var;
        run_mean[rm_off + c] = (1.0f - momentum) * run_mean[rm_off + c] + momentum * mu;
        run_var[rv_off + c] = (1.0f - momentum) * run_var[rv_off + c] + momentum * unbiased;
    }
}

// out = (x - mean[c]) * scale[c] * gamma[c] + beta[c]; `from_var` turns scale into 1/sqrt(var + eps)
__kernel void bn_apply(const int total, const int C, const int S, __global const float *x, const int x_off,
                       __global const float *mean, const int m_off, __global const float *scale, const int s_off,
                       const int from_var, const float eps,
                       __global const float *gamma, const int g_off, __global const float *beta, const int b_off,
                       const int has_gamma, const int has_beta, __global float *out, const int o_off)
{
    const int i = get_global_id(0);
    if (i >= total) return;
    const int c = (i / S) % C;
    const float sc = from_var ? 1.0f / sqrt(scale[s_off + c] + eps) : scale[s_off + c];
    float v = (x[x_off + i] - mean[m_off + c]) * sc;
    if (has_gamma) v = v * gamma[g_off + c];
    if (has_beta) v = v + beta[b_off + c];
    out[o_off + i] = v;
}

// sums[c] = sum(dy), sums[C + c] = sum(dy * xhat); dgamma/dbeta (+)= them where given
__kernel void bn_bwd_reduce(const int N, const int C, const int S, __global const float *x, const int x_off,
                            __global const float *dy, const int dy_off,
                            __global const float *mean, const int m_off, __global const float *invstd, const int i_off,
                            __global float *sums, const int s_off,
                            __global float *dgamma, const int dg_off, __global float *dbeta, const int db_off,
                            const int has_dgamma, const int has_dbeta, const int acc)
{
    const int c = get_global_id(0);
    if (c >= C) return;
    const float mu = mean[m_off + c], is = invstd[i_off + c];
    float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
    for (int n = 0; n < N; ++n) {
        const size_t base = ((size_t)n * C + c) * S;
        for (int s = 0; s < S; ++s) {
            const float g = dy[dy_off + base + s];
            sum_dy += g;
            sum_dy_xhat += g * ((x[x_off + base + s] - mu) * is);
        }
    }
    sums[s_off + c] = sum_dy;
    sums[s_off + C + c] = sum_dy_xhat;
    if (has_dbeta) STORE(dbeta, db_off + c, sum_dy, acc)
    if (has_dgamma) STORE(dgamma, dg_off + c, sum_dy_xhat, acc)
}

// dx = gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))
__kernel void bn_bwd_data(const int total, const int C, const int S, const int count,
                          __global const float *x, const int x_off, __global const float *dy, const int dy_off,
                          __global const float *mean, const int m_off, __global const float *invstd, const int i_off,
                          __global const float *sums, const int s_off,
                          __global const float *gamma, const int g_off, const int has_gamma,
                          __global float *dx, const int dx_off, const int acc)
{
    const int i = get_global_id(0);
    if (i >= total) return;
    const int c = (i / S) % C;
    const float is = invstd[i_off + c];
    const float xhat = (x[x_off + i] - mean[m_off + c]) * is;
    const float g = has_gamma ? gamma[g_off + c] : 1.0f;
    const float m = (float)count;
    const float v = (g * is / m) * (m * dy[dy_off + i] - sums[s_off + c] - xhat * sums[s_off + C + c]);
    STORE(dx, dx_off + i, v, acc)
}
