// Elementwise ops: activations and their backward twins, arithmetic, bias, finiteness.
// `acc` != 0 means out += result (gradients that add up), else out = result.
#include "common.cuh"

extern "C" {

// relu != 0: the ReLU of relu_forward applied to the sum in the same pass (a residual block)
__global__ void add_arrays(const real* a, const real* b, real* out, i64 n, int relu) {
    GRID_STRIDE(i, n) {
        const real v = a[i] + b[i];
        out[i] = (!relu || v > (real)0 || v != v) ? v : (real)0;
    }
}

__global__ void scale_array(const real* x, real alpha, real* out, i64 n) {
    GRID_STRIDE(i, n) out[i] = x[i] * alpha;
}

__global__ void mul_arrays(const real* a, const real* b, real* out, i64 n, int acc) {
    GRID_STRIDE(i, n) {
        const real v = a[i] * b[i];
        out[i] = acc ? out[i] + v : v;
    }
}

__global__ void fill_array(real* out, real value, i64 n) {
    GRID_STRIDE(i, n) out[i] = value;
}

// out[:, c, ...] += bias[c]; `inner` is the product of the axes after the channel axis.
__global__ void add_bias(real* out, const real* bias, i64 n, i64 channels, i64 inner) {
    GRID_STRIDE(i, n) out[i] += bias[(i / inner) % channels];
}

// dbias[c] (+)= the sum of dy (N, C, inner) over the batch and spatial axes, in one of three
// forms (chunks as in batchnorm.cu: a channel's N * inner values cut into runs of `chunk`).
// One block per channel (few values a channel, or many channels):
__global__ void bias_grad(const real* dy, real* dbias, i64 batch, i64 channels, i64 inner, int acc) {
    __shared__ real scratch[32];
    const i64 c = blockIdx.x;
    real s = 0;
    for (ChannelWalk w(0, batch * inner, c, channels, inner); w.more(); w.next()) s += dy[w.index];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) dbias[c] = acc ? dbias[c] + s : s;
}

// Long channels, first kernel: block b sums chunk b % chunks of channel b / chunks into
// partials (C, chunks); bias_grad_combine then adds each channel's partials in a fixed order.
__global__ void bias_grad_partials(const real* dy, real* partials, i64 batch, i64 channels, i64 inner,
                                   i64 chunks, i64 chunk) {
    __shared__ real scratch[32];
    const i64 c = blockIdx.x / chunks, j = blockIdx.x - c * chunks, count = batch * inner;
    const i64 start = j * chunk, end = start + chunk < count ? start + chunk : count;
    real s = 0;
    for (ChannelWalk w(start, end, c, channels, inner); w.more(); w.next()) s += dy[w.index];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// One warp per channel.
__global__ void bias_grad_combine(const real* partials, real* dbias, i64 channels, i64 chunks, int acc) {
    const i64 c = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (c >= channels) return;  // whole warps: blockDim.x is a multiple of 32
    const real s = warp_total(partials + c * chunks, chunks);
    if ((threadIdx.x & 31) == 0) dbias[c] = acc ? dbias[c] + s : s;
}

// inner == 1 (a Linear layer's dy, rows x cols): the column sums. A block takes 32 columns at a
// time, each warp reading 32 consecutive columns of its rows (coalesced, where one block per
// column reads with stride cols); warp w of W adds rows w, w + W, ..., then warp 0 adds the W
// partial sums in warp order.
__global__ void bias_grad_columns(const real* dy, real* dbias, i64 rows, i64 cols, int acc) {
    __shared__ real part[1024];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (i64 tile = blockIdx.x; tile * 32 < cols; tile += gridDim.x) {
        const i64 col = tile * 32 + lane;
        real s = 0;
        if (col < cols)
            for (i64 r = warp; r < rows; r += warps) s += dy[r * cols + col];
        __syncthreads();  // the previous tile's partial sums have been read
        part[threadIdx.x] = s;
        __syncthreads();
        if (warp == 0 && col < cols) {
            real t = part[lane];
            for (int w = 1; w < warps; ++w) t += part[w * 32 + lane];
            dbias[col] = acc ? dbias[col] + t : t;
        }
    }
}

// One block: out[0] = sum(x).
__global__ void sum_all(const real* x, real* out, i64 n) {
    __shared__ real scratch[32];
    real s = 0;
    for (i64 i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[0] = s;
}

// flag[0] is set to 1 beforehand; any NaN or Inf clears it.
__global__ void check_finite(const real* x, int* flag, i64 n) {
    GRID_STRIDE(i, n) {
        if (!isfinite(x[i])) flag[0] = 0;
    }
}

__global__ void relu_forward(const real* x, real* y, i64 n) {
    GRID_STRIDE(i, n) y[i] = (x[i] > (real)0 || x[i] != x[i]) ? x[i] : (real)0;  // NaN passes, as np.maximum
}

__global__ void relu_backward(const real* y, const real* dy, real* dx, i64 n, int acc) {
    GRID_STRIDE(i, n) {
        const real v = y[i] > (real)0 ? dy[i] : (real)0;
        dx[i] = acc ? dx[i] + v : v;
    }
}

__global__ void leaky_relu_forward(const real* x, real* y, i64 n, real slope) {
    GRID_STRIDE(i, n) y[i] = x[i] > (real)0 ? x[i] : x[i] * slope;
}

__global__ void leaky_relu_backward(const real* x, const real* dy, real* dx, i64 n, real slope, int acc) {
    GRID_STRIDE(i, n) {
        const real v = x[i] > (real)0 ? dy[i] : dy[i] * slope;
        dx[i] = acc ? dx[i] + v : v;
    }
}

// 0.5 * (1 + tanh(x / 2)) never overflows, unlike 1 / (1 + exp(-x)); the NumPy backend agrees.
__global__ void sigmoid_forward(const real* x, real* y, i64 n) {
    GRID_STRIDE(i, n) y[i] = (tanh(x[i] * (real)0.5) + (real)1) * (real)0.5;
}

__global__ void sigmoid_backward(const real* y, const real* dy, real* dx, i64 n, int acc) {
    GRID_STRIDE(i, n) {
        const real v = ((real)1 - y[i]) * y[i] * dy[i];
        dx[i] = acc ? dx[i] + v : v;
    }
}

__global__ void tanh_forward(const real* x, real* y, i64 n) {
    GRID_STRIDE(i, n) y[i] = tanh(x[i]);
}

__global__ void tanh_backward(const real* y, const real* dy, real* dx, i64 n, int acc) {
    GRID_STRIDE(i, n) {
        const real v = ((real)1 - y[i] * y[i]) * dy[i];
        dx[i] = acc ? dx[i] + v : v;
    }
}

// dst[:, offset:offset + c_src] (+)= src: concatenation along axis 1.
__global__ void copy_channels(const real* src, real* dst, i64 n, i64 c_src, i64 c_dst, i64 offset,
                              i64 inner, int acc) {
    GRID_STRIDE(i, n) {
        const i64 s = i % inner, rest = i / inner;
        const i64 c = rest % c_src, b = rest / c_src;
        const i64 j = (b * c_dst + offset + c) * inner + s;
        dst[j] = acc ? dst[j] + src[i] : src[i];
    }
}

// dst (+)= src[:, offset:offset + c_dst]: a split along axis 1.
__global__ void slice_channels(const real* src, real* dst, i64 n, i64 c_src, i64 c_dst, i64 offset,
                               i64 inner, int acc) {
    GRID_STRIDE(i, n) {
        const i64 s = i % inner, rest = i / inner;
        const i64 c = rest % c_dst, b = rest / c_dst;
        const real v = src[(b * c_src + offset + c) * inner + s];
        dst[i] = acc ? dst[i] + v : v;
    }
}

}  // extern "C"
