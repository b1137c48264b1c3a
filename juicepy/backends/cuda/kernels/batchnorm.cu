// Batch norm over x (N, C, inner): statistics per channel, one block per channel.
#include "common.cuh"

__device__ __forceinline__ i64 bn_index(i64 k, i64 c, i64 channels, i64 inner) {
    return ((k / inner) * channels + c) * inner + (k % inner);
}

// sum(dy) and sum(dy * xhat) of this block's channel (every thread gets both); thread 0
// stores them into dbeta / dgamma (either may be null; acc_params adds into them)
__device__ void channel_grad_sums(const real* x, const real* dy, const real* mean, const real* invstd, i64 batch,
                                  i64 channels, i64 inner, real* dgamma, real* dbeta, int acc_params,
                                  real* s_dy, real* s_dy_xhat) {
    __shared__ real scratch[32];
    const i64 c = blockIdx.x, count = batch * inner;
    const real mu = mean[c], inv = invstd[c];
    real a = 0, b = 0;
    for (i64 k = threadIdx.x; k < count; k += blockDim.x) {
        const i64 j = bn_index(k, c, channels, inner);
        a += dy[j];
        b += dy[j] * ((x[j] - mu) * inv);
    }
    a = block_sum(a, scratch);
    b = block_sum(b, scratch);
    if (threadIdx.x == 0) {
        if (dbeta != nullptr) dbeta[c] = acc_params ? dbeta[c] + a : a;
        if (dgamma != nullptr) dgamma[c] = acc_params ? dgamma[c] + b : b;
    }
    *s_dy = a;
    *s_dy_xhat = b;
}

extern "C" {

// Normalise with batch statistics, keep mean/invstd for the backward pass and update the
// running statistics torch-style (running_var tracks the unbiased variance); running_mean
// may be null (no running statistics).
__global__ void batch_norm_train(const real* x, const real* gamma, const real* beta, real* out,
                                 real* mean, real* invstd, real* running_mean, real* running_var,
                                 i64 batch, i64 channels, i64 inner, real momentum,
                                 real one_minus_momentum, real unbiased_momentum, real eps) {
    __shared__ real scratch[32];
    const i64 c = blockIdx.x, count = batch * inner;
    real s = 0;
    for (i64 k = threadIdx.x; k < count; k += blockDim.x) s += x[bn_index(k, c, channels, inner)];
    const real mu = block_sum(s, scratch) / (real)count;
    real q = 0;
    for (i64 k = threadIdx.x; k < count; k += blockDim.x) {
        const real d = x[bn_index(k, c, channels, inner)] - mu;
        q += d * d;
    }
    const real var = block_sum(q, scratch) / (real)count;
    const real inv = (real)1 / sqrt(var + eps);
    if (threadIdx.x == 0) {
        mean[c] = mu;
        invstd[c] = inv;
        if (running_mean != nullptr) {
            running_mean[c] = running_mean[c] * one_minus_momentum + mu * momentum;
            running_var[c] = running_var[c] * one_minus_momentum + var * unbiased_momentum;
        }
    }
    const real scale = gamma[c] * inv, shift = beta[c];
    for (i64 k = threadIdx.x; k < count; k += blockDim.x) {
        const i64 j = bn_index(k, c, channels, inner);
        out[j] = (x[j] - mu) * scale + shift;
    }
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
__global__ void batch_norm_backward(const real* x, const real* dy, const real* gamma, const real* mean,
                                    const real* invstd, real* dx, real* dgamma, real* dbeta,
                                    i64 batch, i64 channels, i64 inner, int acc_dx, int acc_params) {
    real s_dy, s_dy_xhat;
    channel_grad_sums(x, dy, mean, invstd, batch, channels, inner, dgamma, dbeta, acc_params, &s_dy, &s_dy_xhat);
    if (dx == nullptr) return;
    const i64 c = blockIdx.x, count = batch * inner;
    const real mu = mean[c], inv = invstd[c];
    const real coef = gamma[c] * inv * ((real)1 / (real)count);
    for (i64 k = threadIdx.x; k < count; k += blockDim.x) {
        const i64 j = bn_index(k, c, channels, inner);
        const real xhat = (x[j] - mu) * inv;
        const real v = (dy[j] * (real)count - (xhat * s_dy_xhat + s_dy)) * coef;
        dx[j] = acc_dx ? dx[j] + v : v;
    }
}

// Synchronised batch norm: per-channel sums that the caller adds up over ranks between kernels.
// sums[c] = sum(x - shift[c]), sums[C + c] = sum((x - shift[c])^2); one block per channel.
__global__ void batch_norm_sums(const real* x, const real* shift, real* sums, i64 batch, i64 channels,
                                i64 inner) {
    __shared__ real scratch[32];
    const i64 c = blockIdx.x, count = batch * inner;
    const real mu = shift[c];
    real s = 0, q = 0;
    for (i64 k = threadIdx.x; k < count; k += blockDim.x) {
        const real d = x[bn_index(k, c, channels, inner)] - mu;
        s += d;
        q += d * d;
    }
    s = block_sum(s, scratch);
    q = block_sum(q, scratch);
    if (threadIdx.x == 0) {
        sums[c] = s;
        sums[channels + c] = q;
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

// sums[c] = sum(dy), sums[C + c] = sum(dy * xhat); dbeta / dgamma (may be null) (+)= them
__global__ void batch_norm_backward_reduce(const real* x, const real* dy, const real* mean, const real* invstd,
                                           real* sums, real* dgamma, real* dbeta, i64 batch, i64 channels,
                                           i64 inner, int acc_params) {
    real s_dy, s_dy_xhat;
    channel_grad_sums(x, dy, mean, invstd, batch, channels, inner, dgamma, dbeta, acc_params, &s_dy, &s_dy_xhat);
    if (threadIdx.x == 0) {
        sums[blockIdx.x] = s_dy;
        sums[channels + blockIdx.x] = s_dy_xhat;
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
