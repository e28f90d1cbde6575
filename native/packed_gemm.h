// C (M, n) = A (M, K) W[r0 : r0 + n]^T on weights packed once into panels, float32, one thread: the products of a
// streaming GRU step, whose weights stay the same from step to step.
//
// The BLAS packs its operands on every call; at the M of a streaming step (1-32 streams) that packing costs as
// much as the product, and it is done for the same weights at every step. Here the weights are packed once
// (pack_panels, cached by the caller) into panels of 16 rows stored k-major, P[p][k][0..15] = W[r0 + 16p + r][k],
// zero-padded, so a panel is one contiguous stream. The micro-kernel is the broadcast form of BLIS's AVX2 kernel
// (Van Zee and van de Geijn 2015): a block of MR <= 6 rows of A times one panel keeps 2 MR accumulators, and each
// step of k loads two panel vectors and broadcasts MR elements of A for 2 MR FMAs (MR = 6: 12 accumulators, 8 loads
// for 12 FMAs; FMA-bound on Zen 3 and Haswell). A is read in place (rows at stride lda); each panel (K x 64 bytes,
// 24-42 KB at the small preset) is read once per block of 6 rows, from L1 or L2.
//
// Built only with AVX2 and FMA (kHavePackedGemm); elsewhere the callers use the BLAS.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace ds_native {

constexpr int64_t kPanel = 16;  // rows of W per packed panel

inline int64_t packed_floats(int64_t n, int64_t K) { return (n + kPanel - 1) / kPanel * kPanel * K; }

// P (packed_floats(n, K) floats) <- rows [0, n) of W (row stride ldw) in panels of kPanel rows, k-major.
inline void pack_panels(const float* W, int64_t ldw, int64_t n, int64_t K, float* P) {
  for (int64_t p = 0; p * kPanel < n; ++p) {
    float* dst = P + p * kPanel * K;
    const int64_t rows = std::min<int64_t>(kPanel, n - p * kPanel);
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t r = 0; r < rows; ++r) dst[k * kPanel + r] = W[(p * kPanel + r) * ldw + k];
      for (int64_t r = rows; r < kPanel; ++r) dst[k * kPanel + r] = 0.0f;
    }
  }
}

// The same panels from the columns of a row-major V (K, n) (row stride ldv): P[p][k][r] = V[k][16p + r], for
// C = A V (e.g. the backward's (B, 3H) x W_hh (3H, H)). Each panel row is 16 contiguous floats of V.
inline void pack_panels_t(const float* V, int64_t ldv, int64_t n, int64_t K, float* P) {
  for (int64_t p = 0; p * kPanel < n; ++p) {
    float* dst = P + p * kPanel * K;
    const int64_t cols = std::min<int64_t>(kPanel, n - p * kPanel);
    for (int64_t k = 0; k < K; ++k) {
      std::memcpy(dst + k * kPanel, V + k * ldv + p * kPanel, sizeof(float) * cols);
      for (int64_t r = cols; r < kPanel; ++r) dst[k * kPanel + r] = 0.0f;
    }
  }
}

}  // namespace ds_native

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace ds_native {

constexpr bool kHavePackedGemm = true;

// C[0:MR, 0:cols] (+)= A[0:MR, 0:K] x panel^T (cols <= 16 valid columns of the panel; P points at row k = 0 of
// this slice of K). With `add` the products are added to C, else they overwrite it.
template <int MR>
__attribute__((always_inline)) inline void panel_block(const float* A, int64_t lda, const float* P, int64_t K,
                                                       float* C, int64_t ldc, int64_t cols, bool add) {
  __m256 acc[MR][2];
  for (int i = 0; i < MR; ++i) {
    if (!add) {
      acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    } else if (cols == kPanel) {
      acc[i][0] = _mm256_loadu_ps(C + i * ldc);
      acc[i][1] = _mm256_loadu_ps(C + i * ldc + 8);
    } else {
      alignas(32) float row[kPanel] = {};
      std::memcpy(row, C + i * ldc, sizeof(float) * cols);
      acc[i][0] = _mm256_load_ps(row);
      acc[i][1] = _mm256_load_ps(row + 8);
    }
  }
#pragma GCC unroll 2  // without it gcc 12 schedules the 3- and 4-row blocks at half the speed of the 6-row one
  for (int64_t k = 0; k < K; ++k) {
    const __m256 w0 = _mm256_loadu_ps(P + k * kPanel), w1 = _mm256_loadu_ps(P + k * kPanel + 8);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(A + i * lda + k);
      acc[i][0] = _mm256_fmadd_ps(a, w0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(a, w1, acc[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    if (cols == kPanel) {
      _mm256_storeu_ps(C + i * ldc, acc[i][0]);
      _mm256_storeu_ps(C + i * ldc + 8, acc[i][1]);
    } else {
      alignas(32) float row[kPanel];
      _mm256_store_ps(row, acc[i][0]);
      _mm256_store_ps(row + 8, acc[i][1]);
      std::memcpy(C + i * ldc, row, sizeof(float) * cols);
    }
  }
}

// Rows of K per slice: a panel slice of kSliceK x 16 floats (16 KB) stays in L1 while every block of A's rows
// passes over it.
constexpr int64_t kSliceK = 256;

// C (M, n) = A (M, K) x W^T (or C += with `accumulate`), W packed by pack_panels(W, ., n, K, P).
inline void gemm_packed(const float* A, int64_t lda, const float* P, int64_t n, int64_t K, float* C, int64_t ldc,
                        int64_t M, bool accumulate = false) {
  for (int64_t p = 0; p * kPanel < n; ++p) {
    const int64_t cols = std::min<int64_t>(kPanel, n - p * kPanel);
    float* c = C + p * kPanel;
    for (int64_t k0 = 0; k0 < K; k0 += kSliceK) {
      const int64_t kn = std::min(kSliceK, K - k0);
      const float* panel = P + (p * K + k0) * kPanel;
      const float* a = A + k0;
      const bool add = accumulate || k0 > 0;
      // Rows in near-equal blocks of at most 6 (M = 32: 6 6 5 5 5 5, not 6 x 5 + 2): every block re-reads the
      // panel slice, and a block of 1-2 rows keeps too few accumulators to hide the FMA latency.
      const int64_t blocks = (M + 5) / 6;
      for (int64_t b = 0, i = 0; b < blocks; ++b) {
        const int64_t mr = (M - i) / (blocks - b);
        const float* ab = a + i * lda;
        float* cb = c + i * ldc;
        switch (mr) {
          case 6: panel_block<6>(ab, lda, panel, kn, cb, ldc, cols, add); break;
          case 5: panel_block<5>(ab, lda, panel, kn, cb, ldc, cols, add); break;
          case 4: panel_block<4>(ab, lda, panel, kn, cb, ldc, cols, add); break;
          case 3: panel_block<3>(ab, lda, panel, kn, cb, ldc, cols, add); break;
          case 2: panel_block<2>(ab, lda, panel, kn, cb, ldc, cols, add); break;
          default: panel_block<1>(ab, lda, panel, kn, cb, ldc, cols, add); break;
        }
        i += mr;
      }
    }
  }
}

}  // namespace ds_native

#else

#include <cstdlib>

namespace ds_native {
constexpr bool kHavePackedGemm = false;
// Declared so that callers compile; they test kHavePackedGemm first, so reaching this is a bug.
[[noreturn]] inline void gemm_packed(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t, int64_t,
                                     bool = false) {
  std::abort();
}
}  // namespace ds_native

#endif
