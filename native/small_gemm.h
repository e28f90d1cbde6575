// C (M, N) = A (M, K) B (N, K)^T for the small M of a streaming step (a few streams), float32, one thread.
//
// Both operands are read along K, the layout nn.GRU's weights (3H, K) and a batch of inputs (B, K) already have,
// so nothing is packed or transposed. Register block: 2 rows of A x 4 rows of B = 8 AVX accumulators (+ 4 B
// vectors: 12 of the 16 ymm registers); each 8-wide step of K loads 6 vectors for 8 FMAs. The outer loop walks
// blocks of B's rows and the inner loop all of A's rows, so B (the weights, megabytes) streams from memory exactly
// once per call while A stays in L1. That is the whole cost of a product at batch 1-4 (a matrix-vector product),
// where the BLAS's packing and per-call set-up (six calls per step and thread) cost more than the product; at
// larger batches the BLAS wins (native/gru.cpp, gru_step, says where).
//
// Built only with AVX2 and FMA (-march=native on a machine that has them); elsewhere kHaveSmallGemm is false and
// the callers use at::mm.
#pragma once

#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace ds_native {

constexpr bool kHaveSmallGemm = true;

__attribute__((always_inline)) inline float hsum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// One MR x NR block of C: rows of A at stride lda, rows of B at stride ldb, C rows at stride ldc.
template <int MR, int NR>
__attribute__((always_inline)) inline void block_nt(const float* A, int64_t lda, const float* B, int64_t ldb,
                                                    float* C, int64_t ldc, int64_t K) {
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 b[NR];
    for (int j = 0; j < NR; ++j) b[j] = _mm256_loadu_ps(B + j * ldb + k);
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_loadu_ps(A + i * lda + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(a, b[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      float s = hsum8(acc[i][j]);
      for (int64_t t = k; t < K; ++t) s += A[i * lda + t] * B[j * ldb + t];
      C[i * ldc + j] = s;
    }
}

template <int NR>
inline void rows_nt(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t M,
                    int64_t K) {
  int64_t i = 0;
  for (; i + 2 <= M; i += 2) block_nt<2, NR>(A + i * lda, lda, B, ldb, C + i * ldc, ldc, K);
  if (i < M) block_nt<1, NR>(A + i * lda, lda, B, ldb, C + i * ldc, ldc, K);
}

inline void gemm_nt(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t M,
                    int64_t N, int64_t K) {
  int64_t j = 0;
  for (; j + 4 <= N; j += 4) rows_nt<4>(A, lda, B + j * ldb, ldb, C + j, ldc, M, K);
  for (; j < N; ++j) rows_nt<1>(A, lda, B + j * ldb, ldb, C + j, ldc, M, K);
}

}  // namespace ds_native

#else

#include <cstdlib>

namespace ds_native {
constexpr bool kHaveSmallGemm = false;
// Declared so that callers compile; they test kHaveSmallGemm first, so reaching this is a bug, not a silent zero.
[[noreturn]] inline void gemm_nt(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t, int64_t,
                                 int64_t) {
  std::abort();
}
}  // namespace ds_native

#endif
