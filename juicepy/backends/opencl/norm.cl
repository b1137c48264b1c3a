// Batch normalisation over (N, C, S): statistics per channel, one work-item per channel
// for the reductions, one per element for the elementwise passes. torch semantics.
#pragma OPENCL FP_CONTRACT OFF

#define STORE(o, i, v, acc) { if (acc) (o)[i] += (v); else (o)[i] = (v); }

// Sums over one contiguous plane with eight running sums (independent adds, instead of one
// chain of dependent adds). TERM(L, i) is term i, its inputs read through L(pointer, i).
// VEC_SUMS (CPU devices): the eight sums are the lanes of one float8 and each step loads
// eight consecutive values as one vector; PoCL's LLVM left the scalar form scalar (its
// per-channel kernels, one work-item each, are not vectorised across work-items). The same
// terms go to the same sums in the same order, so both forms give the same bits.
#define AT_S(p, i) (p)[i]
#ifndef VEC_SUMS
#define VEC_SUMS 0
#endif
#if VEC_SUMS
#define AT_V(p, i) (*(__global const float8_u *)((p) + (i)))
#define EIGHT_WAY_SUM(n, TERM)                                                              \
    float8 a = (float8)(0.0f);                                                              \
    int s = 0;                                                                              \
    for (; s + 8 <= (n); s += 8) a += TERM(AT_V, s);                                        \
    float a0 = a.s0;                                                                        \
    for (; s < (n); ++s) a0 += TERM(AT_S, s);                                               \
    return ((a0 + a.s1) + (a.s2 + a.s3)) + ((a.s4 + a.s5) + (a.s6 + a.s7));
#else
#define EIGHT_WAY_SUM(n, TERM)                                                              \
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f, a4 = 0.0f, a5 = 0.0f, a6 = 0.0f, a7 = 0.0f; \
    int s = 0;                                                                              \
    for (; s + 8 <= (n); s += 8) {                                                          \
        a0 += TERM(AT_S, s); a1 += TERM(AT_S, s + 1); a2 += TERM(AT_S, s + 2); a3 += TERM(AT_S, s + 3); \
        a4 += TERM(AT_S, s + 4); a5 += TERM(AT_S, s + 5); a6 += TERM(AT_S, s + 6); a7 += TERM(AT_S, s + 7); \
    }                                                                                       \
    for (; s < (n); ++s) a0 += TERM(AT_S, s);                                               \
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
#endif

inline float plane_sum(__global const float *p, const int n)
{
#define TERM_X(L, i) L(p, i)
    EIGHT_WAY_SUM(n, TERM_X)
#undef TERM_X
}

inline float plane_dev(__global const float *p, const int n, const float mu)
{
#define TERM_DEV(L, i) (L(p, i) - mu)
    EIGHT_WAY_SUM(n, TERM_DEV)
#undef TERM_DEV
}

inline float plane_sq_dev(__global const float *p, const int n, const float mu)
{
#define TERM_SQ(L, i) ((L(p, i) - mu) * (L(p, i) - mu))
    EIGHT_WAY_SUM(n, TERM_SQ)
#undef TERM_SQ
}

inline float plane_dot_xhat(__global const float *g, __global const float *p, const int n, const float mu,
                            const float is)
{
#define TERM_DOT(L, i) (L(g, i) * ((L(p, i) - mu) * is))
    EIGHT_WAY_SUM(n, TERM_DOT)
#undef TERM_DOT
}

// the same sums of dy taken back through the ReLU whose output is r (relu_bwd's dy * 0 where
// r <= 0, so a non-finite dy there stays NaN as in the unfused ops)
#define RELU_DY(g, r, i) ((r)[i] > 0.0f ? (g)[i] : (g)[i] * 0.0f)
// the same through L, scalar or vector (a conditional, not select: a call in PyPI's PoCL 3.0
// where its LLVM names the CPU apart from its kernel library's variant; docs/opencl.md, session 43)
#define RELU_DY_AT(L, g, r, i) (L(r, i) > 0.0f ? L(g, i) : L(g, i) * 0.0f)
inline float plane_sum_relu(__global const float *p, __global const float *r, const int n)
{
#define TERM_XR(L, i) RELU_DY_AT(L, p, r, i)
    EIGHT_WAY_SUM(n, TERM_XR)
#undef TERM_XR
}

inline float plane_dot_xhat_relu(__global const float *g, __global const float *r, __global const float *p,
                                 const int n, const float mu, const float is)
{
#define TERM_DOTR(L, i) (RELU_DY_AT(L, g, r, i) * ((L(p, i) - mu) * is))
    EIGHT_WAY_SUM(n, TERM_DOTR)
#undef TERM_DOTR
}

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
    for (int n = 0; n < N; ++n) total += plane_sum(x + x_off + ((size_t)n * C + c) * S, S);
    const float mu = total / (float)count;
    float sq = 0.0f;
    for (int n = 0; n < N; ++n) sq += plane_sq_dev(x + x_off + ((size_t)n * C + c) * S, S, mu);
    const float var = sq / (float)count;
    mean[m_off + c] = mu;
    invstd[i_off + c] = 1.0f / sqrt(var + eps);
    if (has_running) {
        const float unbiased = count > 1 ? sq / (float)(count - 1) : var;
        run_mean[rm_off + c] = (1.0f - momentum) * run_mean[rm_off + c] + momentum * mu;
        run_var[rv_off + c] = (1.0f - momentum) * run_var[rv_off + c] + momentum * unbiased;
    }
}

// The per-element kernels run as (L rounded up, rows): element i = row * L + j. Planes of S > 1
// pixels are the rows (L = S): a work-group lies in one plane, so its channel is one division
// per work-item of a uniform value, not an integer division per element (which AVX2 has no
// vector instruction for); with S == 1 ((N, C) inputs) the rows are the samples and the channel
// is j (chan_inner). The bounds are asked per work-group first (GID_CHECK in elementwise.cl: a
// per-item check made every load and store masked).
#define PLANE_ITEM \
    const int j = get_global_id(0), row = get_global_id(1); \
    if ((get_group_id(0) + 1) * get_local_size(0) > (size_t)L && j >= L) return; \
    const int c = chan_inner ? j : row % C; \
    const size_t i = (size_t)row * L + j;
#if defined(__clang__)
#define BN_SQRT(x) __builtin_sqrtf(x)
#else
#define BN_SQRT(x) sqrt(x)
#endif

// inference's scale: out[c] = 1 / sqrt(var[c] + eps), once per channel (in bn_apply, per
// element, the square root kept PoCL from vectorising it)
__kernel void bn_invstd(const int C, __global const float *var, const int v_off, const float eps,
                        __global float *out, const int o_off)
{
    const int c = get_global_id(0);
    if (c >= C) return;
    out[o_off + c] = 1.0f / BN_SQRT(var[v_off + c] + eps);
}

// (x - mu) * sc * g + be, then max(., 0) where `relu` (NaN stays, as relu_fwd): one value of
// bn_apply and bn_apply_planes
inline float bn_apply_value(const float x, const float mu, const float sc, const float g, const float be,
                            const int has_gamma, const int has_beta, const int relu)
{
    float v = (x - mu) * sc;
    if (has_gamma) v = v * g;
    if (has_beta) v = v + be;
    return relu && v < 0.0f ? 0.0f : v;
}

// dx of one value from its xhat and its dy (through the ReLU where fused), k = gamma * invstd / M,
// m = M, s0 = sum(dy), s1 = sum(dy * xhat): one value of bn_bwd_data and bn_bwd_data_planes
inline float bn_dx_value(const float xhat, const float d, const float k, const float m, const float s0,
                         const float s1)
{
    return k * (m * d - s0 - xhat * s1);
}

// out = (x - mean[c]) * scale[c] * gamma[c] + beta[c], then max(out, 0) where `relu`
__kernel void bn_apply(const int L, const int C, const int chan_inner, __global const float *x, const int x_off,
                       __global const float *mean, const int m_off, __global const float *scale, const int s_off,
                       __global const float *gamma, const int g_off, __global const float *beta, const int b_off,
                       const int has_gamma, const int has_beta, const int relu, __global float *out, const int o_off)
{
    PLANE_ITEM
    out[o_off + i] = bn_apply_value(x[x_off + i], mean[m_off + c], scale[s_off + c],
                                    has_gamma ? gamma[g_off + c] : 1.0f, has_beta ? beta[b_off + c] : 0.0f,
                                    has_gamma, has_beta, relu);
}

// sums[c] = sum(dy), sums[C + c] = sum(dy * xhat); dgamma/dbeta (+)= them where given; where
// has_relu, dy is first taken back through the ReLU whose output is relu_out
__kernel void bn_bwd_reduce(const int N, const int C, const int S, __global const float *x, const int x_off,
                            __global const float *dy, const int dy_off,
                            __global const float *relu_out, const int r_off, const int has_relu,
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
        if (has_relu) {
            sum_dy += plane_sum_relu(dy + dy_off + base, relu_out + r_off + base, S);
            sum_dy_xhat += plane_dot_xhat_relu(dy + dy_off + base, relu_out + r_off + base, x + x_off + base, S, mu, is);
        } else {
            sum_dy += plane_sum(dy + dy_off + base, S);
            sum_dy_xhat += plane_dot_xhat(dy + dy_off + base, x + x_off + base, S, mu, is);
        }
    }
    sums[s_off + c] = sum_dy;
    sums[s_off + C + c] = sum_dy_xhat;
    if (has_dbeta) STORE(dbeta, db_off + c, sum_dy, acc)
    if (has_dgamma) STORE(dgamma, dg_off + c, sum_dy_xhat, acc)
}

// dx = gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat)), dy through the ReLU
// whose output is relu_out where has_relu
__kernel void bn_bwd_data(const int L, const int C, const int chan_inner, const int count,
                          __global const float *x, const int x_off, __global const float *dy, const int dy_off,
                          __global const float *relu_out, const int r_off, const int has_relu,
                          __global const float *mean, const int m_off, __global const float *invstd, const int i_off,
                          __global const float *sums, const int s_off,
                          __global const float *gamma, const int g_off, const int has_gamma,
                          __global float *dx, const int dx_off, const int acc)
{
    PLANE_ITEM
    const float is = invstd[i_off + c];
    const float xhat = (x[x_off + i] - mean[m_off + c]) * is;
    const float g = has_gamma ? gamma[g_off + c] : 1.0f;
    const float m = (float)count;
    const float d = has_relu ? RELU_DY(dy + dy_off, relu_out + r_off, i) : dy[dy_off + i];
    const float v = bn_dx_value(xhat, d, g * is / m, m, sums[s_off + c], sums[s_off + C + c]);
    STORE(dx, dx_off + i, v, acc)
}

// bn_apply and bn_bwd_data on CPU drivers for planes of S > 1 values: one work-item per (n, c)
// plane, alone in its work-group, looping along it (the compiler vectorises the loop), the same
// arithmetic per element; a work-item per element in work-groups of 64 spent as long on its
// work-groups as on the elements. Launched as (N * C).
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void bn_apply_planes(const int S, const int C, __global const float *x, const int x_off,
                     __global const float *mean, const int m_off, __global const float *scale, const int s_off,
                     __global const float *gamma, const int g_off, __global const float *beta, const int b_off,
                     const int has_gamma, const int has_beta, const int relu, __global float *out, const int o_off)
{
    const int p = get_global_id(0), c = p % C;
    const float mu = mean[m_off + c], sc = scale[s_off + c];
    const float g = has_gamma ? gamma[g_off + c] : 1.0f, be = has_beta ? beta[b_off + c] : 0.0f;
    __global const float *xp = x + x_off + (size_t)p * S;
    __global float *op = out + o_off + (size_t)p * S;
    for (int j = 0; j < S; ++j) op[j] = bn_apply_value(xp[j], mu, sc, g, be, has_gamma, has_beta, relu);
}

__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void bn_bwd_data_planes(const int S, const int C, const int count,
                        __global const float *x, const int x_off, __global const float *dy, const int dy_off,
                        __global const float *relu_out, const int r_off, const int has_relu,
                        __global const float *mean, const int m_off, __global const float *invstd, const int i_off,
                        __global const float *sums, const int s_off,
                        __global const float *gamma, const int g_off, const int has_gamma,
                        __global float *dx, const int dx_off, const int acc)
{
    const int p = get_global_id(0), c = p % C;
    const float is = invstd[i_off + c], mu = mean[m_off + c];
    const float g = has_gamma ? gamma[g_off + c] : 1.0f;
    const float m = (float)count, k = g * is / m, s0 = sums[s_off + c], s1 = sums[s_off + C + c];
    const size_t base = (size_t)p * S;
    __global const float *xp = x + x_off + base, *dp = dy + dy_off + base, *rp = relu_out + r_off + base;
    __global float *op = dx + dx_off + base;
    for (int j = 0; j < S; ++j) {
        const float xhat = (xp[j] - mu) * is;
        const float d = has_relu ? RELU_DY(dp, rp, j) : dp[j];
        const float v = bn_dx_value(xhat, d, k, m, s0, s1);
        STORE(op, j, v, acc)
    }
}

// Synchronised batch norm: per-channel sums a caller adds up over ranks between the kernels.
// sums[c] = sum(x - shift[c]), sums[C + c] = sum((x - shift[c])^2)
__kernel void bn_sums(const int N, const int C, const int S, __global const float *x, const int x_off,
                      __global const float *shift, const int sh_off, __global float *sums, const int s_off)
{
    const int c = get_global_id(0);
    if (c >= C) return;
    const float mu = shift[sh_off + c];
    float total = 0.0f, sq = 0.0f;
    for (int n = 0; n < N; ++n) {
        __global const float *p = x + x_off + ((size_t)n * C + c) * S;
        total += plane_dev(p, S, mu);
        sq += plane_sq_dev(p, S, mu);
    }
    sums[s_off + c] = total;
    sums[s_off + C + c] = sq;
}

// mean = shift + sums[c] / count, biased var = sums[C + c] / count - (sums[c] / count)^2;
// shift may be the mean or the running mean itself (read before either is written)
__kernel void bn_stats_from_sums(const int C, const float count, __global const float *sums, const int s_off,
                                 __global const float *shift, const int sh_off,
                                 __global float *mean, const int m_off, __global float *invstd, const int i_off,
                                 __global float *run_mean, const int rm_off, __global float *run_var, const int rv_off,
                                 const int has_running, const float momentum, const float eps)
{
    const int c = get_global_id(0);
    if (c >= C) return;
    const float d = sums[s_off + c] / count;
    const float var = fmax(sums[s_off + C + c] / count - d * d, 0.0f);
    const float mu = shift[sh_off + c] + d;
    mean[m_off + c] = mu;
    invstd[i_off + c] = 1.0f / sqrt(var + eps);
    if (has_running) {
        const float unbiased = count > 1.0f ? var * (count / (count - 1.0f)) : var;
        run_mean[rm_off + c] = (1.0f - momentum) * run_mean[rm_off + c] + momentum * mu;
        run_var[rv_off + c] = (1.0f - momentum) * run_var[rv_off + c] + momentum * unbiased;
    }
}
