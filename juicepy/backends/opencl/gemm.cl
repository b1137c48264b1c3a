// GEMM: C = alpha * op(A) @ op(B) + beta * C, row-major, float32.
//
// Tuned for CPU OpenCL drivers (PoCL): one work-item per work-group owns a BM x BN tile of C.
// For each BK slice of K it packs the A and B tiles into local memory in micro-panel order
// (transposes and edge zero-padding happen here, so the inner loop is branch-free), then a
// register-blocked micro-kernel (MR rows x 2 float16 vectors) runs FMAs out of the panels.
// Partial sums of the tile live in local memory between K slices.

#ifndef BM
#define BM 64
#endif
#ifndef BN
#define BN 64
#endif
#ifndef BK
#define BK 256
#endif
#ifndef MR
#define MR 12
#endif
#define NR 32

#define ACC_ROW(r) float16 c##r##_0, c##r##_1;
#define ZERO_ROW(r) c##r##_0 = (float16)(0.0f); c##r##_1 = (float16)(0.0f);
#define LOAD_ROW(r) c##r##_0 = ct[(r) * (BN / 16)]; c##r##_1 = ct[(r) * (BN / 16) + 1];
#define STORE_ROW(r) ct[(r) * (BN / 16)] = c##r##_0; ct[(r) * (BN / 16) + 1] = c##r##_1;
#define FMA_ROW(r) { const float a = ap[r]; c##r##_0 += a * b0; c##r##_1 += a * b1; }
#if MR == 8
#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#elif MR == 12
#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#elif MR == 14
#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)
#else
#error "MR must be 8, 12 or 14"
#endif

__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void gemm_tiled(const int M, const int N, const int K,
                __global const float *A, const int a_off, const int lda, const int trans_a,
                __global const float *B, const int b_off, const int ldb, const int trans_b,
                __global float *C, const int c_off, const int ldc,
                const float alpha, const float beta)
{
    // float16 declarations keep the panels 64-byte aligned for whole-vector loads
    __local float16 a_store[BM * BK / 16];   // [BM/MR][BK][MR]
    __local float16 b_store[BK * BN / 16];   // [BN/NR][BK][NR]
    __local float16 c_store[BM * BN / 16];   // [BM][BN] partial sums
    __local float *a_pack = (__local float *)a_store;
    __local float *b_pack = (__local float *)b_store;
    __local float *c_tile = (__local float *)c_store;

    const int row0 = get_group_id(1) * BM;
    const int col0 = get_group_id(0) * BN;
    A += a_off;
    B += b_off;
    C += c_off;

    for (int k0 = 0; k0 < K; k0 += BK) {
        const int kc = min(BK, K - k0);
        // pack A: element (m, k) of op(A) is A[m*lda + k] or, transposed, A[k*lda + m]
        for (int i0 = 0; i0 < BM; i0 += MR) {
            __local float *panel = a_pack + (i0 / MR) * (BK * MR);
            if (trans_a && row0 + i0 + MR <= M) {
                for (int k = 0; k < kc; ++k) {
                    __global const float *src = A + (size_t)(k0 + k) * lda + row0 + i0;
                    for (int r = 0; r < MR; ++r) panel[k * MR + r] = src[r];
                }
            } else {
                for (int r = 0; r < MR; ++r) {
                    const int m = row0 + i0 + r;
                    if (m >= M) {
                        for (int k = 0; k < kc; ++k) panel[k * MR + r] = 0.0f;
                    } else if (trans_a) {
                        for (int k = 0; k < kc; ++k) panel[k * MR + r] = A[(size_t)(k0 + k) * lda + m];
                    } else {
                        __global const float *src = A + (size_t)m * lda + k0;
                        for (int k = 0; k < kc; ++k) panel[k * MR + r] = src[k];
                    }
                }
            }
        }
        // pack B: element (k, n) of op(B) is B[k*ldb + n] or, transposed, B[n*ldb + k]
        for (int j0 = 0; j0 < BN; j0 += NR) {
            __local float *panel = b_pack + (j0 / NR) * (BK * NR);
            if (!trans_b && col0 + j0 + NR <= N) {
                for (int k = 0; k < kc; ++k) {
                    __global const float *src = B + (size_t)(k0 + k) * ldb + col0 + j0;
                    for (int c = 0; c < NR; ++c) panel[k * NR + c] = src[c];
                }
            } else {
                for (int c = 0; c < NR; ++c) {
                    const int n = col0 + j0 + c;
                    if (n >= N) {
                        for (int k = 0; k < kc; ++k) panel[k * NR + c] = 0.0f;
                    } else if (trans_b) {
                        __global const float *src = B + (size_t)n * ldb + k0;
                        for (int k = 0; k < kc; ++k) panel[k * NR + c] = src[k];
                    } else {
                        for (int k = 0; k < kc; ++k) panel[k * NR + c] = B[(size_t)(k0 + k) * ldb + n];
                    }
                }
            }
        }
        // micro-kernel over every MR x NR block of the tile
        for (int i0 = 0; i0 < BM; i0 += MR) {
            if (row0 + i0 >= M) break;
            for (int j0 = 0; j0 < BN; j0 += NR) {
                if (col0 + j0 >= N) break;
                __local float16 *ct = c_store + (i0 * BN + j0) / 16;
                ROWS(ACC_ROW)
                if (k0 == 0) { ROWS(ZERO_ROW) } else { ROWS(LOAD_ROW) }
                __local const float *ap = a_pack + (i0 / MR) * (BK * MR);
                __local const float16 *bp = b_store + (j0 / NR) * (BK * NR / 16);
                for (int k = 0; k < kc; ++k) {
                    const float16 b0 = bp[0];
                    const float16 b1 = bp[1];
                    ROWS(FMA_ROW)
                    ap += MR;
                    bp += NR / 16;
                }
                ROWS(STORE_ROW)
            }
        }
    }
    // write back: C = alpha * acc + beta * C (C is not read when beta == 0)
    const int rows = min(BM, M - row0);
    const int cols = min(BN, N - col0);
    for (int i = 0; i < rows; ++i) {
        __global float *dst = C + (size_t)(row0 + i) * ldc + col0;
        __local const float *src = c_tile + i * BN;
        if (beta == 0.0f) {
            for (int j = 0; j < cols; ++j) dst[j] = alpha * src[j];
        } else {
            for (int j = 0; j < cols; ++j) dst[j] = alpha * src[j] + beta * dst[j];
        }
    }
}

// Classic cooperative tiling for GPUs (their local memory is too small for the CPU tiles):
// a TS x TS work-group stages TS x TS tiles of op(A) and op(B) in local memory.
#define TS 16
__kernel __attribute__((reqd_work_group_size(TS, TS, 1)))
void gemm_tiled_gpu(const int M, const int N, const int K,
                    __global const float *A, const int a_off, const int lda, const int trans_a,
                    __global const float *B, const int b_off, const int ldb, const int trans_b,
                    __global float *C, const int c_off, const int ldc,
                    const float alpha, const float beta)
{
    __local float a_tile[TS][TS + 1];
    __local float b_tile[TS][TS + 1];
    const int tx = get_local_id(0), ty = get_local_id(1);
    const int col = get_group_id(0) * TS + tx;
    const int row = get_group_id(1) * TS + ty;
    float total = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TS) {
        const int ka = k0 + tx, kb = k0 + ty;
        a_tile[ty][tx] = (row < M && ka < K)
            ? A[a_off + (trans_a ? (size_t)ka * lda + row : (size_t)row * lda + ka)] : 0.0f;
        b_tile[ty][tx] = (col < N && kb < K)
            ? B[b_off + (trans_b ? (size_t)col * ldb + kb : (size_t)kb * ldb + col)] : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k = 0; k < TS; ++k) total += a_tile[ty][k] * b_tile[k][tx];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (row < M && col < N) {
        __global float *dst = C + c_off + (size_t)row * ldc + col;
        *dst = beta == 0.0f ? alpha * total : alpha * total + beta * *dst;
    }
}
