// Fused optimizer updates over one flat segment of params: torch.optim's formulas, in the
// operation order of the NumPy backend (compiled without FMA contraction, so results match it).
//
// `guard` (may be null) points at the step's summed loss: when it is not finite every thread
// returns and params and optimizer state stay as they were (the NaN guard of a replayed step).
// The step count is step_base + *step_shift (see dropout.cu), so a captured step replays with the
// right bias corrections.
#include "common.cuh"

__device__ __forceinline__ bool guard_stops(const real* guard) {
    return guard != nullptr && !isfinite(guard[0]);
}

extern "C" {

// momentum == 0 leaves buf untouched (may be null); first_step copies g into buf.
__global__ void sgd_update(real* param, const real* grad, real* buf, i64 n, real lr, real momentum,
                           real one_minus_dampening, int dampen, int nesterov, real weight_decay,
                           int decay, int use_momentum, int first_step, const real* guard) {
    if (guard_stops(guard)) return;
    GRID_STRIDE(i, n) {
        real g = grad[i];
        if (decay) g = param[i] * weight_decay + g;
        if (use_momentum) {
            real b;
            if (first_step) {
                b = g;
            } else {
                b = buf[i] * momentum;
                b = b + (dampen ? g * one_minus_dampening : g);
            }
            buf[i] = b;
            g = nesterov ? b * momentum + g : b;
        }
        param[i] = param[i] - g * lr;
    }
}

// Adam (decoupled = 0) and AdamW (decoupled = 1); max_exp_avg_sq non-null turns on AMSGrad.
__global__ void adam_update(real* param, const real* grad, real* exp_avg, real* exp_avg_sq,
                            real* max_exp_avg_sq, i64 n, double lr, double beta1, double beta2,
                            real eps, double weight_decay, int decoupled, i64 step_base,
                            const i64* step_shift, const real* guard) {
    if (guard_stops(guard)) return;
    __shared__ real step_size, inv_bias_correction2_sqrt;
    if (threadIdx.x == 0) {
        const double step = (double)(step_base + *step_shift);
        const double bias_correction1 = 1.0 - pow(beta1, step);
        const double bias_correction2_sqrt = sqrt(1.0 - pow(beta2, step));
        step_size = (real)(lr / bias_correction1);
        inv_bias_correction2_sqrt = (real)(1.0 / bias_correction2_sqrt);
    }
    __syncthreads();
    const real one_minus_beta1 = (real)(1.0 - beta1), one_minus_beta2 = (real)(1.0 - beta2);
    const real b2 = (real)beta2, wd = (real)weight_decay, decay_factor = (real)(1.0 - lr * weight_decay);
    GRID_STRIDE(i, n) {
        real p = param[i];
        real g = grad[i];
        if (weight_decay != 0.0) {
            if (decoupled) p = p * decay_factor;
            else g = p * wd + g;
        }
        const real m = exp_avg[i] + (g - exp_avg[i]) * one_minus_beta1;
        const real v = exp_avg_sq[i] * b2 + g * one_minus_beta2 * g;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        real second = v;
        if (max_exp_avg_sq != nullptr) {
            second = v > max_exp_avg_sq[i] ? v : max_exp_avg_sq[i];
            max_exp_avg_sq[i] = second;
        }
        const real denom = sqrt(second) * inv_bias_correction2_sqrt + eps;
        param[i] = p - (m / denom) * step_size;
    }
}

}  // extern "C"
