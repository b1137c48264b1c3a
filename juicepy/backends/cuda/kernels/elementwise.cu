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

// One block per channel: dbias[c] (+)= sum of dy over batch and spatial axes.
__global__ void bias_grad(const real* dy, real* dbias, i64 batch, i64 channels, i64 inner, int acc) {
    __shared__ real scratch[32];
    const i64 c = blockIdx.x;
    const i64 count = batch * inner;
    real s = 0;
    for (i64 k = threadIdx.x; k < count; k += blockDim.x) {
        const i64 b = k / inner, s_idx = k - b * inner;
        s += dy[(b * channels + c) * inner + s_idx];
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) dbias[c] = acc ? dbias[c] + s : s;
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
