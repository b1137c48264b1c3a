// Row-wise ops on (rows, cols) arrays: softmax family and the fused losses.
// One block per row; blockDim.x is a multiple of 32.
#include "common.cuh"

extern "C" {

__global__ void softmax_forward(const real* x, real* y, i64 cols) {
    __shared__ real scratch[32];
    const real* xr = x + blockIdx.x * cols;
    real* yr = y + blockIdx.x * cols;
    real m = (real)(-JP_INF);
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) m = nan_max(m, xr[c]);
    m = block_max(m, scratch);
    real s = 0;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const real e = exp(xr[c] - m);
        yr[c] = e;
        s += e;
    }
    s = block_sum(s, scratch);
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = yr[c] / s;
}

// dx (+)= y * (dy - sum(dy * y))
__global__ void softmax_backward(const real* y, const real* dy, real* dx, i64 cols, int acc) {
    __shared__ real scratch[32];
    const i64 base = blockIdx.x * cols;
    real dot = 0;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) dot += dy[base + c] * y[base + c];
    dot = block_sum(dot, scratch);
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const real v = (dy[base + c] - dot) * y[base + c];
        dx[base + c] = acc ? dx[base + c] + v : v;
    }
}

__global__ void log_softmax_forward(const real* x, real* y, i64 cols) {
    __shared__ real scratch[32];
    const real* xr = x + blockIdx.x * cols;
    real* yr = y + blockIdx.x * cols;
    real m = (real)(-JP_INF);
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) m = nan_max(m, xr[c]);
    m = block_max(m, scratch);
    real s = 0;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) s += exp(xr[c] - m);
    s = log(block_sum(s, scratch));
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = (xr[c] - m) - s;
}

// dx (+)= dy - exp(y) * sum(dy)
__global__ void log_softmax_backward(const real* y, const real* dy, real* dx, i64 cols, int acc) {
    __shared__ real scratch[32];
    const i64 base = blockIdx.x * cols;
    real total = 0;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) total += dy[base + c];
    total = block_sum(total, scratch);
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const real v = dy[base + c] - exp(y[base + c]) * total;
        dx[base + c] = acc ? dx[base + c] + v : v;
    }
}

// losses[r] = logsumexp(x[r]) - x[r, label]; dx = grad_scale * (softmax(x) - onehot(label)).
// A label outside [0, cols) gives a NaN loss (the trainer validates labels before this).
__global__ void softmax_cross_entropy(const real* logits, const int* labels, real* losses, real* dx,
                                      i64 cols, real grad_scale) {
    __shared__ real scratch[32];
    const i64 base = blockIdx.x * cols;
    const int label = labels[blockIdx.x];
    real m = (real)(-JP_INF);
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) m = nan_max(m, logits[base + c]);
    m = block_max(m, scratch);
    real s = 0;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const real e = exp(logits[base + c] - m);
        dx[base + c] = e;
        s += e;
    }
    s = block_sum(s, scratch);
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
        real p = dx[base + c] / s;
        if (c == label) p = p - (real)1;
        dx[base + c] = p * grad_scale;
    }
    if (threadIdx.x == 0) {
        const bool valid = label >= 0 && label < cols;
        losses[blockIdx.x] = valid ? (log(s) + m) - logits[base + label] : (real)JP_NAN;
    }
}

// losses[r] = -logp[r, label]; dx = -grad_scale * onehot(label). Grid-stride over all elements.
__global__ void nll_loss(const real* logp, const int* labels, real* losses, real* dx, i64 rows,
                         i64 cols, real grad_scale) {
    GRID_STRIDE(i, rows * cols) {
        const i64 r = i / cols, c = i - r * cols;
        const int label = labels[r];
        dx[i] = c == label ? -grad_scale : (real)0;
        if (c == label) losses[r] = -logp[i];
        if (c == 0 && (label < 0 || label >= cols)) losses[r] = (real)JP_NAN;
    }
}

// losses[r] = sum over the row of (pred - target)^2; dx = scale2 * (pred - target), scale2 = 2 * grad_scale.
__global__ void mse_loss(const real* pred, const real* target, real* losses, real* dx, i64 cols,
                         real scale2) {
    __shared__ real scratch[32];
    const i64 base = blockIdx.x * cols;
    real s = 0;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const real d = pred[base + c] - target[base + c];
        s += d * d;
        dx[base + c] = d * scale2;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) losses[blockIdx.x] = s;
}

}  // extern "C"
