// Batch norm over x (N, C, inner): statistics per channel.
//
// A channel's count = N * inner values, in flat order k = n * inner + s, are cut into `chunks`
// runs of `chunk` values (the last one shorter), one block each: one block per channel would
// leave most SMs idle for the 16 to 64 channels of a small CNN. A first kernel writes each
// block's partials into a workspace buffer `partials` of (2, C, chunks); a second kernel, again
// one block per (channel, chunk), combines its channel's partials in one fixed order (the same
// bits in every block, every run: no atomics) and finishes its own chunk. Block b of such a
// launch serves channel b / chunks, chunk b % chunks. With chunks == 1 the single kernels below
// (one block per channel) do the whole op in one launch.
#include "common.cuh"

__device__ __forceinline__ real chunk_count(i64 j, i64 chunk, i64 count) {
    const i64 left = count - j * chunk;
    return (real)(left < chunk ? left : chunk);
}

// Mean and sum of squared deviations (M2) of values [start, end) of channel c, two passes over
// them (every thread gets both).
__device__ void chunk_mean_m2(const real* x, i64 start, i64 end, i64 c, i64 channels, i64 inner,
                              real* scratch32, real* mean, real* m2) {
    real s = 0;
    for (ChannelWalk w(start, end, c, channels, inner); w.more(); w.next()) s += x[w.index];
    const real mu = block_sum(s, scratch32) / (real)(end - start);
    real q = 0;
    for (ChannelWalk w(start, end, c, channels, inner); w.more(); w.next()) {
        const real d = x[w.index] - mu;
        q += d * d;
    }
    *mean = mu;
    *m2 = block_sum(q, scratch32);
}

// sum(dy) and sum(dy * xhat) over values [start, end) of channel c (every thread gets both).
__device__ void chunk_grad_sums(const real* x, const real* dy, real mu, real inv, i64 start, i64 end, i64 c,
                                i64 channels, i64 inner, real* scratch32, real* s_dy, real* s_dy_xhat) {
    real a = 0, b = 0;
    for (ChannelWalk w(start, end, c, channels, inner); w.more(); w.next()) {
        const real g = dy[w.index];
        a += g;
        b += g * ((x[w.index] - mu) * inv);
    }
    *s_dy = block_sum(a, scratch32);
    *s_dy_xhat = block_sum(b, scratch32);
}

// The channel's mean and biased variance from its chunks' means and M2s (Chan et al.'s
// parallel variance: M2 = sum M2_j + sum n_j (mean_j - mean)^2, no difference of large sums).
// Called by whole warps; every lane of every warp gets the same values.
__device__ void combine_mean_var(const real* partials, i64 c, i64 channels, i64 chunks, i64 chunk, i64 count,
                                 real* mean, real* var) {
    const real* means = partials + c * chunks;
    const real* m2s = partials + (channels + c) * chunks;
    real a = 0;
    for (i64 j = threadIdx.x & 31; j < chunks; j += 32) a += chunk_count(j, chunk, count) * means[j];
    const real mu = warp_sum_all(a) / (real)count;
    real q = 0;
    for (i64 j = threadIdx.x & 31; j < chunks; j += 32) {
        const real d = means[j] - mu;
        q += m2s[j] + chunk_count(j, chunk, count) * d * d;
    }
    *mean = mu;
    *var = warp_sum_all(q) / (real)count;
}

// mean/invstd of channel c, and the running statistics torch-style (running_var tracks the
// unbiased variance); running_mean may be null (no running statistics).
__device__ __forceinline__ void store_stats(i64 c, real mu, real var, real inv, real* mean, real* invstd,
                                            real* running_mean, real* running_var, real momentum,
                                            real one_minus_momentum, real unbiased_momentum) {
    mean[c] = mu;
    invstd[c] = inv;
    if (running_mean != nullptr) {
        running_mean[c] = running_mean[c] * one_minus_momentum + mu * momentum;
        running_var[c] = running_var[c] * one_minus_momentum + var * unbiased_momentum;
    }
}

__device__ __forceinline__ void normalise(const real* x, real* out, real mu, real scale, real shift, i64 start,
                                          i64 end, i64 c, i64 channels, i64 inner) {
    for (ChannelWalk w(start, end, c, channels, inner); w.more(); w.next())
        out[w.index] = (x[w.index] - mu) * scale + shift;
}

// dx (+)= gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat)) over [start, end)
__device__ __forceinline__ void grad_input(const real* x, const real* dy, real* dx, real gamma, real mu, real inv,
                                           real s_dy, real s_dy_xhat, i64 start, i64 end, i64 c, i64 channels,
                                           i64 inner, i64 count, int acc_dx) {
    const real coef = gamma * inv * ((real)1 / (real)count);
    for (ChannelWalk w(start, end, c, channels, inner); w.more(); w.next()) {
        const i64 j = w.index;
        const real xhat = (x[j] - mu) * inv;
        const real v = (dy[j] * (real)count - (xhat * s_dy_xhat + s_dy)) * coef;
        dx[j] = acc_dx ? dx[j] + v : v;
    }
}

#define BN_STATS_ARGS real momentum, real one_minus_momentum, real unbiased_momentum, real eps

extern "C" {

// Normalise with batch statistics and keep mean/invstd for the backward pass; one block per
// channel.
__global__ void batch_norm_train(const real* x, const real* gamma, const real* beta, real* out,
                                 real* mean, real* invstd, real* running_mean, real* running_var,
                                 i64 batch, i64 channels, i64 inner, BN_STATS_ARGS) {
    __shared__ real scratch[32];
    const i64 c = blockIdx.x, count = batch * inner;
    real mu, m2;
    chunk_mean_m2(x, 0, count, c, channels, inner, scratch, &mu, &m2);
    const real var = m2 / (real)count;
    const real inv = (real)1 / sqrt(var + eps);
    if (threadIdx.x == 0)
        store_stats(c, mu, var, inv, mean, invstd, running_mean, running_var, momentum, one_minus_momentum,
                    unbiased_momentum);
    normalise(x, out, mu, gamma[c] * inv, beta[c], 0, count, c, channels, inner);
}

// batch_norm_train's first kernel: each chunk's mean and M2.
__global__ void batch_norm_train_partials(const real* x, real* partials, i64 batch, i64 channels, i64 inner,
                                          i64 chunks, i64 chunk) {
    __shared__ real scratch[32];
    const i64 c = blockIdx.x / chunks, j = blockIdx.x - c * chunks, count = batch * inner;
    const i64 start = j * chunk, end = start + chunk < count ? start + chunk : count;
    real mu, m2;
    chunk_mean_m2(x, start, end, c, channels, inner, scratch, &mu, &m2);
    if (threadIdx.x == 0) {
        partials[c * chunks + j] = mu;
        partials[(channels + c) * chunks + j] = m2;
    }
}

// batch_norm_train's second kernel: every block combines its channel's partials; chunk 0's
// block stores the statistics, each block normalises its chunk.
__global__ void batch_norm_train_chunks(const real* x, const real* gamma, const real* beta, real* out,
                                        real* mean, real* invstd, real* running_mean, real* running_var,
                                        const real* partials, i64 batch, i64 channels, i64 inner, i64 chunks,
                                        i64 chunk, BN_STATS_ARGS) {
    const i64 c = blockIdx.x / chunks, j = blockIdx.x - c * chunks, count = batch * inner;
    const i64 start = j * chunk, end = start + chunk < count ? start + chunk : count;
    real mu, var;
    combine_mean_var(partials, c, channels, chunks, chunk, count, &mu, &var);
    const real inv = (real)1 / sqrt(var + eps);
    if (j == 0 && threadIdx.x == 0)
        store_stats(c, mu, var, inv, mean, invstd, running_mean, running_var, momentum, one_minus_momentum,
                    unbiased_momentum);
    normalise(x, out, mu, gamma[c] * inv, beta[c], start, end, c, channels, inner);
}

__global__ void batch_norm_infer(const real* x, const real* gamma, const real* beta,
                                 const real* running_mean, const real* running_var, real eps,
                                 real* out, i64 n, i64 channels, i64 inner) {
    GRID_STRIDE(i, n) {
        const i64 c = (i / inner) % channels;
        const real scale = gamma[c] / sqrt(running_var[c] + eps);
        out[i] = x[i] * scale + (beta[c] - running_mean[c] * scale);
    }
}

// dbeta = sum(dy), dgamma = sum(dy * xhat) (either may be null; acc_params adds into them);
// dx (may be null) = gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat)).
// One block per channel.
__global__ void batch_norm_backward(const real* x, const real* dy, const real* gamma, const real* mean,
                                    const real* invstd, real* dx, real* dgamma, real* dbeta,
                                    i64 batch, i64 channels, i64 inner, int acc_dx, int acc_params) {
    __shared__ real scratch[32];
    const i64 c = blockIdx.x, count = batch * inner;
    const real mu = mean[c], inv = invstd[c];
    real s_dy, s_dy_xhat;
    chunk_grad_sums(x, dy, mu, inv, 0, count, c, channels, inner, scratch, &s_dy, &s_dy_xhat);
    if (threadIdx.x == 0) {
        if (dbeta != nullptr) dbeta[c] = acc_params ? dbeta[c] + s_dy : s_dy;
        if (dgamma != nullptr) dgamma[c] = acc_params ? dgamma[c] + s_dy_xhat : s_dy_xhat;
    }
    if (dx != nullptr)
        grad_input(x, dy, dx, gamma[c], mu, inv, s_dy, s_dy_xhat, 0, count, c, channels, inner, count, acc_dx);
}

// The first kernel of batch_norm_backward and batch_norm_backward_reduce: each chunk's
// sum(dy) (partials row 0) and sum(dy * xhat) (row 1).
__global__ void batch_norm_grad_partials(const real* x, const real* dy, const real* mean, const real* invstd,
                                         real* partials, i64 batch, i64 channels, i64 inner, i64 chunks,
                                         i64 chunk) {
    __shared__ real scratch[32];
    const i64 c = blockIdx.x / chunks, j = blockIdx.x - c * chunks, count = batch * inner;
    const i64 start = j * chunk, end = start + chunk < count ? start + chunk : count;
    real s_dy, s_dy_xhat;
    chunk_grad_sums(x, dy, mean[c], invstd[c], start, end, c, channels, inner, scratch, &s_dy, &s_dy_xhat);
    if (threadIdx.x == 0) {
        partials[c * chunks + j] = s_dy;
        partials[(channels + c) * chunks + j] = s_dy_xhat;
    }
}

// batch_norm_backward's second kernel: every block combines its channel's sums; chunk 0's block
// stores dbeta / dgamma, each block computes dx over its chunk.
__global__ void batch_norm_backward_chunks(const real* x, const real* dy, const real* gamma, const real* mean,
                                           const real* invstd, const real* partials, real* dx, real* dgamma,
                                           real* dbeta, i64 batch, i64 channels, i64 inner, i64 chunks, i64 chunk,
                                           int acc_dx, int acc_params) {
    const i64 c = blockIdx.x / chunks, j = blockIdx.x - c * chunks, count = batch * inner;
    const i64 start = j * chunk, end = start + chunk < count ? start + chunk : count;
    const real s_dy = warp_total(partials + c * chunks, chunks);
    const real s_dy_xhat = warp_total(partials + (channels + c) * chunks, chunks);
    if (j == 0 && threadIdx.x == 0) {
        if (dbeta != nullptr) dbeta[c] = acc_params ? dbeta[c] + s_dy : s_dy;
        if (dgamma != nullptr) dgamma[c] = acc_params ? dgamma[c] + s_dy_xhat : s_dy_xhat;
    }
    if (dx != nullptr)
        grad_input(x, dy, dx, gamma[c], mean[c], invstd[c], s_dy, s_dy_xhat, start, end, c, channels, inner, count,
                   acc_dx);
}

// Synchronised batch norm: per-channel sums that the caller adds up over ranks between kernels,
// sum(x - shift[c]) and sum((x - shift[c])^2) of each chunk into partials (2, C, chunks); with
// one chunk a channel, partials is the result itself (sums[c], sums[C + c]).
__global__ void batch_norm_sums_partials(const real* x, const real* shift, real* partials, i64 batch,
                                         i64 channels, i64 inner, i64 chunks, i64 chunk) {
    __shared__ real scratch[32];
    const i64 c = blockIdx.x / chunks, j = blockIdx.x - c * chunks, count = batch * inner;
    const i64 start = j * chunk, end = start + chunk < count ? start + chunk : count;
    const real mu = shift[c];
    real s = 0, q = 0;
    for (ChannelWalk w(start, end, c, channels, inner); w.more(); w.next()) {
        const real d = x[w.index] - mu;
        s += d;
        q += d * d;
    }
    s = block_sum(s, scratch);
    q = block_sum(q, scratch);
    if (threadIdx.x == 0) {
        partials[c * chunks + j] = s;
        partials[(channels + c) * chunks + j] = q;
    }
}

// The second kernel of batch_norm_sums and batch_norm_backward_reduce, one warp per channel:
// sums[c] / sums[C + c] = the totals of partials rows 0 / 1; dbeta / dgamma (may be null)
// (+)= them.
__global__ void batch_norm_combine_sums(const real* partials, real* sums, real* dgamma, real* dbeta,
                                        i64 channels, i64 chunks, int acc_params) {
    const i64 c = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (c >= channels) return;  // whole warps: blockDim.x is a multiple of 32
    const real a = warp_total(partials + c * chunks, chunks);
    const real b = warp_total(partials + (channels + c) * chunks, chunks);
    if ((threadIdx.x & 31) == 0) {
        sums[c] = a;
        sums[channels + c] = b;
        if (dbeta != nullptr) dbeta[c] = acc_params ? dbeta[c] + a : a;
        if (dgamma != nullptr) dgamma[c] = acc_params ? dgamma[c] + b : b;
    }
}

// mean = shift + sums[c] / count, biased var = sums[C + c] / count - (sums[c] / count)^2 (>= 0);
// shift may be mean or running_mean itself: each thread reads its channel's shift first.
// running_mean may be null (no running statistics).
__global__ void batch_norm_stats(const real* sums, const real* shift, real* mean, real* invstd,
                                 real* running_mean, real* running_var, i64 channels, real count,
                                 real momentum, real one_minus_momentum, real unbiased_momentum, real eps) {
    GRID_STRIDE(c, channels) {
        const real d = sums[c] / count;
        real var = sums[channels + c] / count - d * d;
        if (var < (real)0) var = 0;
        const real mu = shift[c] + d;
        mean[c] = mu;
        invstd[c] = (real)1 / sqrt(var + eps);
        if (running_mean != nullptr) {
            running_mean[c] = running_mean[c] * one_minus_momentum + mu * momentum;
            running_var[c] = running_var[c] * one_minus_momentum + var * unbiased_momentum;
        }
    }
}

__global__ void batch_norm_apply(const real* x, const real* gamma, const real* beta, const real* mean,
                                 const real* invstd, real* out, i64 n, i64 channels, i64 inner) {
    GRID_STRIDE(i, n) {
        const i64 c = (i / inner) % channels;
        out[i] = (x[i] - mean[c]) * (gamma[c] * invstd[c]) + beta[c];
    }
}

// sums[c] = sum(dy), sums[C + c] = sum(dy * xhat); dbeta / dgamma (may be null) (+)= them.
// One block per channel.
__global__ void batch_norm_backward_reduce(const real* x, const real* dy, const real* mean, const real* invstd,
                                           real* sums, real* dgamma, real* dbeta, i64 batch, i64 channels,
                                           i64 inner, int acc_params) {
    __shared__ real scratch[32];
    const i64 c = blockIdx.x, count = batch * inner;
    real s_dy, s_dy_xhat;
    chunk_grad_sums(x, dy, mean[c], invstd[c], 0, count, c, channels, inner, scratch, &s_dy, &s_dy_xhat);
    if (threadIdx.x == 0) {
        sums[c] = s_dy;
        sums[channels + c] = s_dy_xhat;
        if (dbeta != nullptr) dbeta[c] = acc_params ? dbeta[c] + s_dy : s_dy;
        if (dgamma != nullptr) dgamma[c] = acc_params ? dgamma[c] + s_dy_xhat : s_dy_xhat;
    }
}

// dx (+)= gamma * invstd / M * (M * dy - sums[c] - xhat * sums[C + c]), M = count over every rank
__global__ void batch_norm_backward_data(const real* x, const real* dy, const real* gamma, const real* mean,
                                         const real* invstd, const real* sums, real* dx, i64 n, i64 channels,
                                         i64 inner, real count, int acc_dx) {
    GRID_STRIDE(i, n) {
        const i64 c = (i / inner) % channels;
        const real inv = invstd[c];
        const real xhat = (x[i] - mean[c]) * inv;
        const real v = (dy[i] * count - (xhat * sums[channels + c] + sums[c])) * (gamma[c] * inv / count);
        dx[i] = acc_dx ? dx[i] + v : v;
    }
}

}  // extern "C"
