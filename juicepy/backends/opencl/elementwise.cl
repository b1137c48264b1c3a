// Elementwise ops over flat float32 ranges. Every array argument is a base buffer plus an
// element offset (params live at offsets inside one flat buffer). `acc` selects out += r.
// Contraction is off so results match NumPy's separately rounded multiply and add.
#pragma OPENCL FP_CONTRACT OFF

// The bounds check is asked per work-group first: PoCL vectorises a work-group's work-items
// as one loop, and a per-item check alone made every load and store of that loop a masked one
// (vmaskmovps), which AMD's AVX2 cores run many times slower (measured: Adam's step 7x
// slower); with the group-wide condition the loop is unswitched and only the last work-group
// of a launch runs masked.
#define GID_CHECK(n) const int i = get_global_id(0); \
    if ((get_group_id(0) + 1) * get_local_size(0) > (size_t)(n) && i >= (n)) return;

// Some CPU drivers (PoCL) call fmax/sqrt out of line, which stops them vectorising a kernel
// across work-items; selects and the compiler's own sqrt (correctly rounded, like NumPy's) don't.
// The selects propagate NaN as NumPy's maximum does.
#define MAX_NAN(a, b) ((a) < (b) ? (b) : (a))
#define MIN_NAN(a, b) ((a) > (b) ? (b) : (a))
#if defined(__clang__)
#define SQRT(x) __builtin_sqrtf(x)
#else
#define SQRT(x) sqrt(x)
#endif
#define STORE(o, i, r, acc) { if (acc) (o)[i] += (r); else (o)[i] = (r); }

__kernel void fill_f32(const int n, __global float *out, const int o_off, const float value)
{
    GID_CHECK(n)
    out[o_off + i] = value;
}

__kernel void copy_f32(const int n, __global const float *x, const int x_off,
                       __global float *out, const int o_off)
{
    GID_CHECK(n)
    out[o_off + i] = x[x_off + i];
}

__kernel void copy_i32(const int n, __global const int *x, const int x_off,
                       __global int *out, const int o_off)
{
    GID_CHECK(n)
    out[o_off + i] = x[x_off + i];
}

// relu != 0: max(a + b, 0) as relu_fwd computes it (a residual sum and its ReLU in one pass)
__kernel void add_f32(const int n, __global const float *a, const int a_off,
                      __global const float *b, const int b_off, __global float *out, const int o_off,
                      const int relu)
{
    GID_CHECK(n)
    const float v = a[a_off + i] + b[b_off + i];
    out[o_off + i] = relu ? MAX_NAN(v, 0.0f) : v;
}

__kernel void scale_f32(const int n, __global const float *x, const int x_off, const float alpha,
                        __global float *out, const int o_off)
{
    GID_CHECK(n)
    out[o_off + i] = x[x_off + i] * alpha;
}

__kernel void mul_f32(const int n, __global const float *a, const int a_off,
                      __global const float *b, const int b_off,
                      __global float *out, const int o_off, const int acc)
{
    GID_CHECK(n)
    STORE(out, o_off + i, a[a_off + i] * b[b_off + i], acc)
}

// out[r, c] += bias[c]: a 2-D launch (channels, rows) needs no integer division per element
__kernel void add_bias_rows(const int rows, const int channels, __global float *out, const int o_off,
                            __global const float *bias, const int b_off)
{
    const int c = get_global_id(0), r = get_global_id(1);
    if ((get_group_id(0) + 1) * get_local_size(0) > (size_t)channels && c >= channels) return;  // see GID_CHECK
    if (r >= rows) return;
    out[o_off + (size_t)r * channels + c] += bias[b_off + c];
}

// out[r, c, :] += bias[c] for rows x channels x inner elements: one work-item per (c, r)
// image plane, its loop running along the plane. Launched as (channels rounded up, rows).
__kernel void add_bias(const int channels, __global float *out, const int o_off,
                       __global const float *bias, const int b_off, const int inner)
{
    const int c = get_global_id(0), r = get_global_id(1);
    if (c >= channels) return;
    __global float *p = out + o_off + ((size_t)r * channels + c) * inner;
    const float v = bias[b_off + c];
    for (int s = 0; s < inner; ++s) p[s] += v;
}

// ------------------------------------------------------------------ activations
__kernel void relu_fwd(const int n, __global const float *x, const int x_off,
                       __global float *out, const int o_off)
{
    GID_CHECK(n)
    out[o_off + i] = MAX_NAN(x[x_off + i], 0.0f);
}

// dx (+)= dy where y > 0 (relu) or x > 0 (leaky relu), dy * slope elsewhere
__kernel void step_bwd(const int n, __global const float *y, const int y_off,
                       __global const float *dy, const int dy_off,
                       __global float *dx, const int dx_off, const float slope, const int acc)
{
    GID_CHECK(n)
    const float g = dy[dy_off + i];
    const float r = y[y_off + i] > 0.0f ? g : g * slope;
    STORE(dx, dx_off + i, r, acc)
}

__kernel void leaky_relu_fwd(const int n, __global const float *x, const int x_off,
                             __global float *out, const int o_off, const float slope)
{
    GID_CHECK(n)
    const float v = x[x_off + i];
    const float s = v * slope;
    out[o_off + i] = slope <= 1.0f ? MAX_NAN(v, s) : MIN_NAN(v, s);
}

__kernel void sigmoid_fwd(const int n, __global const float *x, const int x_off,
                          __global float *out, const int o_off)
{
    GID_CHECK(n)
    // 0.5 * (1 + tanh(x / 2)) never overflows, as in the NumPy backend
    out[o_off + i] = (tanh(x[x_off + i] * 0.5f) + 1.0f) * 0.5f;
}

__kernel void sigmoid_bwd(const int n, __global const float *y, const int y_off,
                          __global const float *dy, const int dy_off,
                          __global float *dx, const int dx_off, const int acc)
{
    GID_CHECK(n)
    const float v = y[y_off + i];
    STORE(dx, dx_off + i, (1.0f - v) * v * dy[dy_off + i], acc)
}

__kernel void tanh_fwd(const int n, __global const float *x, const int x_off,
                       __global float *out, const int o_off)
{
    GID_CHECK(n)
    out[o_off + i] = tanh(x[x_off + i]);
}

__kernel void tanh_bwd(const int n, __global const float *y, const int y_off,
                       __global const float *dy, const int dy_off,
                       __global float *dx, const int dx_off, const int acc)
{
    GID_CHECK(n)
    const float v = y[y_off + i];
    STORE(dx, dx_off + i, (1.0f - v * v) * dy[dy_off + i], acc)
}

// ---------------------------------------------------------------------- dropout
// lowbias32 and the two-round element draw, line for line as juicepy/backends/rng.py
#define GOLDEN 0x9E3779B9u

inline uint hash32(uint x)
{
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

__kernel void dropout_fwd(const int n, __global const float *x, const int x_off,
                          __global float *out, const int o_off, __global float *mask, const int m_off,
                          const uint key, const uint threshold, const float keep_scale)
{
    GID_CHECK(n)
    const uint bits = hash32(hash32((uint)i ^ key) + GOLDEN) >> 8;
    const float m = bits >= threshold ? keep_scale : 0.0f;
    mask[m_off + i] = m;
    out[o_off + i] = x[x_off + i] * m;
}

// ------------------------------------------------------------------- optimizers
// torch.optim.SGD, in the NumPy backend's order of float32 roundings
__kernel void sgd_step(const int n, __global float *param, const int p_off,
                       __global const float *grad, const int g_off, __global float *buf, const int b_off,
                       const float lr, const float momentum, const float one_minus_dampening, const int nesterov,
                       const float weight_decay, const int first_step)
{
    GID_CHECK(n)
    const float p = param[p_off + i];
    float g = grad[g_off + i];
    if (weight_decay != 0.0f) g = p * weight_decay + g;
    if (momentum != 0.0f) {
        float b;
        if (first_step) {
            b = g;
        } else {
            b = buf[b_off + i] * momentum;
            b = one_minus_dampening == 1.0f ? b + g : b + g * one_minus_dampening;
        }
        buf[b_off + i] = b;
        g = nesterov ? b * momentum + g : b;
    }
    param[p_off + i] = p - g * lr;
}

// torch.optim.Adam / AdamW (decoupled), optionally AMSGrad: the arguments and the update of one
// element (T float) or of a vector (T float8 or float16), through LD(array, offset) / ST(value, array, offset)
#define ADAM_ARGS const int n, __global float *param, const int p_off, \
                  __global const float *grad, const int g_off, \
                  __global float *exp_avg, const int m_off, __global float *exp_avg_sq, const int v_off, \
                  __global float *max_sq, const int x_off, const int amsgrad, \
                  const float one_minus_beta1, const float beta2, const float one_minus_beta2, \
                  const float eps, const float weight_decay, const int decoupled, \
                  const float decay_factor, const float inv_bc2_sqrt, const float step_size
#define ADAM_UPDATE(T, LD, ST, MAXNAN, ROOT) \
    T p = LD(param, p_off); \
    T g = LD(grad, g_off); \
    if (weight_decay != 0.0f) { \
        if (decoupled) p = p * decay_factor; \
        else g = p * weight_decay + g; \
    } \
    T m = LD(exp_avg, m_off); \
    m = m + (g - m) * one_minus_beta1; \
    ST(m, exp_avg, m_off); \
    T v = LD(exp_avg_sq, v_off) * beta2; \
    v = v + g * one_minus_beta2 * g; \
    ST(v, exp_avg_sq, v_off); \
    if (amsgrad) { \
        v = MAXNAN(v, LD(max_sq, x_off)); \
        ST(v, max_sq, x_off); \
    } \
    const T denom = ROOT(v) * inv_bc2_sqrt + eps; \
    ST(p - (m / denom) * step_size, param, p_off);

#define LD1(a, off) (a)[(off) + i]
#define ST1(value, a, off) (a)[(off) + i] = (value)

__kernel void adam_step(ADAM_ARGS)
{
    GID_CHECK(n)
    ADAM_UPDATE(float, LD1, ST1, MAX_NAN, SQRT)
}

#if ADAM_VEC == 8 || ADAM_VEC == 16
// adam_step on ADAM_VEC (8 or 16) consecutive elements per work-item, in float vectors (n: the
// runs of ADAM_VEC): PoCL 3.1 (LLVM 15, AVX-512) ran adam_step's work-item loop at about 1
// element per ns, this kernel's 16-lane build about 7 times faster (docs/opencl.md, session 33).
// The caller runs adam_step over the last n % ADAM_VEC elements. sqrt and the division of float
// vectors are IEEE-rounded on x86 (vsqrtps, vdivps), as NumPy's. Built only where the backend
// runs it, at the lanes its compiler keeps in one register: float16 on a compiler without AVX-512
// is passed to sqrt split in two (clang's ABI warning), and PoCL 3.0 on Zen 4 then brought the
// whole program back from its kernel cache without kernels.
#if ADAM_VEC == 16
#define ADAM_T float16
#define ADAM_TU float16_u
#else
#define ADAM_T float8
#define ADAM_TU float8_u
#endif
// vector loads and stores at any float offset (vectors.cl's unaligned types)
#define LDV(a, off) (*(__global const ADAM_TU *)((a) + (off) + ADAM_VEC * i))
#define STV(value, a, off) (*(__global ADAM_TU *)((a) + (off) + ADAM_VEC * i) = (value))
// NaN in v stays, as MAX_NAN
#define MAX_NANV(v, x) ((v) < (x) ? (x) : (v))

__kernel void adam_step_vec(ADAM_ARGS)
{
    const int i = get_global_id(0);
    if (i >= n) return;
    ADAM_UPDATE(ADAM_T, LDV, STV, MAX_NANV, sqrt)
}
#endif

// --------------------------------------------------------------------- channels
// dst[:, offset:offset+C_src] (+)= src, shapes (rows, C, inner)
__kernel void copy_channels(const int n, __global const float *src, const int s_off, const int src_c,
                            __global float *dst, const int d_off, const int dst_c, const int offset,
                            const int inner, const int acc)
{
    GID_CHECK(n)
    const int s = i % inner;
    const int c = (i / inner) % src_c;
    const int r = i / (inner * src_c);
    const int d = d_off + (r * dst_c + offset + c) * inner + s;
    STORE(dst, d, src[s_off + i], acc)
}

// dst (+)= src[:, offset:offset+C_dst]
__kernel void slice_channels(const int n, __global const float *src, const int s_off, const int src_c,
                             __global float *dst, const int d_off, const int dst_c, const int offset,
                             const int inner, const int acc)
{
    GID_CHECK(n)
    const int s = i % inner;
    const int c = (i / inner) % dst_c;
    const int r = i / (inner * dst_c);
    STORE(dst, d_off + i, src[s_off + (r * src_c + offset + c) * inner + s], acc)
}
