// Fused CTC loss for CUDA (Graves et al. 2006; fused as warp-ctc, DS2 section 4): the GPU twin of native/ctc_loss.cpp,
// same inputs, outputs and meaning (F.ctc_loss(logits.log_softmax(-1), ...), loss per utterance and the gradient
// with respect to the logits, softmax - normalised state occupancy). Three kernels on the current stream:
//   1. ctc_lse_kernel: one block per (t, b) row, the log-softmax normaliser lse = max + log sum exp(a - max);
//   2. ctc_alpha_beta_kernel: one block per utterance, threads across the 2L + 1 states, the alpha and beta
//      recursions in log space, one __syncthreads per frame (alpha_t(s) includes the emission at t, beta_t(s)
//      excludes it), and log p;
//   3. ctc_grad_kernel: one block per (t, b) row, the softmax written across the alphabet, then the occupancy
//      exp(alpha + beta - log p) subtracted state by state in a fixed order (deterministic; a label repeated in
//      the transcript or the blank collect several states in the same column).
// The normaliser and the recursions accumulate in double whatever the storage type, as the CPU kernel does: in
// float, alpha_t is a sum of t log-probabilities (about -8,500 after 1,000 frames of a 5,000-symbol alphabet), each
// step rounds at that magnitude's ulp (~5e-4), and exp(alpha + beta - log p) inherits the drift: measured on an
// H200, float accumulation left gradient errors of 1e-3 (T 400) to 1.2e-2 (T 1,000), as F.ctc_loss's own float
// CUDA path does (6e-4 to 1.7e-3 at T 400); double brings them to the input's rounding.
//
// Shapes: logits (T, B, V); targets (B, S_max) padded or (sum L_b,) concatenated, int64; input_lengths (B,),
// target_lengths (B,) int64 -> loss (B,) (inf when infeasible, or 0 with zero_infinity), grad (T, B, V) (NaN rows
// for an infeasible utterance without zero_infinity, as F.ctc_loss; zero rows past an utterance's length).
#include <torch/extension.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ctc_common.h"

#include <algorithm>
#include <vector>

namespace {

constexpr int kThreads = 256;  // a power of two: the block reductions halve it

template <typename T>
__device__ __forceinline__ T neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() {
  return __int_as_float(0xff800000);
}
template <>
__device__ __forceinline__ double neg_inf<double>() {
  return __longlong_as_double(0xfff0000000000000ULL);
}

template <typename T>
__device__ __forceinline__ T log_add(T a, T b) {
  if (a == neg_inf<T>()) return b;
  if (b == neg_inf<T>()) return a;
  const T m = a > b ? a : b;
  return m + log1p(exp(-fabs(a - b)));
}

// Block-wide max (is_max) or sum of v over kThreads threads; every thread gets the result.
template <typename T>
__device__ T block_reduce(T v, T* shm, bool is_max) {
  shm[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      const T o = shm[threadIdx.x + half];
      shm[threadIdx.x] = is_max ? (o > shm[threadIdx.x] ? o : shm[threadIdx.x]) : shm[threadIdx.x] + o;
    }
    __syncthreads();
  }
  const T r = shm[0];
  __syncthreads();
  return r;
}

template <typename scalar_t, typename acc_t>
__global__ void ctc_lse_kernel(const scalar_t* __restrict__ logits, acc_t* __restrict__ lse,
                               const int64_t* __restrict__ il, int64_t B, int64_t V) {
  __shared__ acc_t shm[kThreads];
  const int64_t row = blockIdx.x, t = row / B, b = row - t * B;
  if (t >= il[b]) return;  // the whole block leaves together: no reduction is left waiting
  const scalar_t* a = logits + row * V;
  acc_t m = neg_inf<acc_t>();
  for (int64_t v = threadIdx.x; v < V; v += kThreads) m = max(m, static_cast<acc_t>(a[v]));
  m = block_reduce<acc_t>(m, shm, true);
  acc_t s = 0;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) s += exp(static_cast<acc_t>(a[v]) - m);
  s = block_reduce<acc_t>(s, shm, false);
  if (threadIdx.x == 0) lse[row] = m + log(s);
}

// alpha / beta: (B, T, S_max) each; log_p (B,) = -inf for an infeasible utterance.
template <typename scalar_t, typename acc_t>
__global__ void ctc_alpha_beta_kernel(const scalar_t* __restrict__ logits, const acc_t* __restrict__ lse,
                                      const int64_t* __restrict__ targets, const int64_t* __restrict__ offsets,
                                      const int64_t* __restrict__ il, const int64_t* __restrict__ tl, int64_t B,
                                      int64_t V, int64_t T_max, int64_t S_max, int64_t blank, acc_t* alpha,
                                      acc_t* beta, acc_t* __restrict__ log_p) {
  __shared__ int feasible;
  const int64_t b = blockIdx.x, T = il[b], L = tl[b], S = 2 * L + 1;
  const int64_t* label = targets + offsets[b];
  acc_t* al = alpha + b * T_max * S_max;
  acc_t* be = beta + b * T_max * S_max;
  auto ext = [&](int64_t s) -> int64_t { return (s & 1) ? label[s >> 1] : blank; };
  auto logp = [&](int64_t t, int64_t v) -> acc_t {
    return static_cast<acc_t>(logits[(t * B + b) * V + v]) - lse[t * B + b];
  };
  if (threadIdx.x == 0) {  // each repeated pair needs a blank between, so T >= L + repeats
    int64_t repeats = 0;
    for (int64_t k = 1; k < L; ++k) repeats += (label[k] == label[k - 1]);
    feasible = T > 0 && T >= L + repeats;
  }
  __syncthreads();
  if (!feasible) {
    if (threadIdx.x == 0) log_p[b] = neg_inf<acc_t>();
    return;
  }
  for (int64_t s = threadIdx.x; s < S; s += kThreads)
    al[s] = s == 0 ? logp(0, blank) : (s == 1 ? logp(0, ext(1)) : neg_inf<acc_t>());
  __syncthreads();
  for (int64_t t = 1; t < T; ++t) {
    const acc_t* prev = al + (t - 1) * S_max;
    acc_t* cur = al + t * S_max;
    for (int64_t s = threadIdx.x; s < S; s += kThreads) {
      acc_t x = prev[s];
      if (s >= 1) x = log_add(x, prev[s - 1]);
      if (s >= 2 && ext(s) != blank && ext(s) != ext(s - 2)) x = log_add(x, prev[s - 2]);
      cur[s] = x == neg_inf<acc_t>() ? x : x + logp(t, ext(s));
    }
    __syncthreads();
  }
  const acc_t* last = al + (T - 1) * S_max;
  const acc_t lp = log_add(last[S - 1], S > 1 ? last[S - 2] : neg_inf<acc_t>());
  for (int64_t s = threadIdx.x; s < S; s += kThreads)
    be[(T - 1) * S_max + s] = (s == S - 1 || s == S - 2) ? acc_t(0) : neg_inf<acc_t>();
  __syncthreads();
  for (int64_t t = T - 2; t >= 0; --t) {
    const acc_t* next = be + (t + 1) * S_max;
    acc_t* cur = be + t * S_max;
    for (int64_t s = threadIdx.x; s < S; s += kThreads) {
      acc_t x = next[s] == neg_inf<acc_t>() ? next[s] : next[s] + logp(t + 1, ext(s));
      if (s + 1 < S && next[s + 1] != neg_inf<acc_t>()) x = log_add(x, next[s + 1] + logp(t + 1, ext(s + 1)));
      if (s + 2 < S && ext(s + 2) != blank && ext(s + 2) != ext(s) && next[s + 2] != neg_inf<acc_t>())
        x = log_add(x, next[s + 2] + logp(t + 1, ext(s + 2)));
      cur[s] = x;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) log_p[b] = lp;
}

template <typename scalar_t, typename acc_t>
__global__ void ctc_grad_kernel(const scalar_t* __restrict__ logits, const acc_t* __restrict__ lse,
                                const int64_t* __restrict__ targets, const int64_t* __restrict__ offsets,
                                const int64_t* __restrict__ il, const int64_t* __restrict__ tl, int64_t B, int64_t V,
                                int64_t T_max, int64_t S_max, int64_t blank, const acc_t* __restrict__ alpha,
                                const acc_t* __restrict__ beta, const acc_t* __restrict__ log_p, bool zero_infinity,
                                scalar_t* __restrict__ grad) {
  const int64_t row = blockIdx.x, t = row / B, b = row - t * B;
  const scalar_t* a = logits + row * V;
  scalar_t* g = grad + row * V;
  const acc_t lp = log_p[b];
  if (t >= il[b] || lp == neg_inf<acc_t>()) {
    // Padding frames: zero. Infeasible: zero with zero_infinity, else NaN (the gradient of an infinite loss).
    const scalar_t fill = (t >= il[b] || zero_infinity) ? scalar_t(0) : static_cast<scalar_t>(NAN);
    for (int64_t v = threadIdx.x; v < V; v += kThreads) g[v] = fill;
    return;
  }
  const acc_t l = lse[row];
  for (int64_t v = threadIdx.x; v < V; v += kThreads) g[v] = static_cast<scalar_t>(exp(static_cast<acc_t>(a[v]) - l));
  __syncthreads();
  if (threadIdx.x != 0) return;
  const int64_t S = 2 * tl[b] + 1;
  const int64_t* label = targets + offsets[b];
  const acc_t* al = alpha + (b * T_max + t) * S_max;
  const acc_t* be = beta + (b * T_max + t) * S_max;
  for (int64_t s = 0; s < S; ++s) {
    if (al[s] == neg_inf<acc_t>() || be[s] == neg_inf<acc_t>()) continue;
    const int64_t v = (s & 1) ? label[s >> 1] : blank;
    g[v] = static_cast<scalar_t>(static_cast<acc_t>(g[v]) - exp(al[s] + be[s] - lp));
  }
}

std::vector<at::Tensor> ctc_loss_fused_cuda(const at::Tensor& logits_in, const at::Tensor& targets_in,
                                            const at::Tensor& input_lengths_in, const at::Tensor& target_lengths_in,
                                            int64_t blank, bool zero_infinity) {
  TORCH_CHECK(logits_in.is_cuda(), "logits must be a CUDA tensor");
  TORCH_CHECK(logits_in.dim() == 3, "logits must be (T, B, V)");
  TORCH_CHECK(logits_in.scalar_type() == at::kFloat || logits_in.scalar_type() == at::kDouble,
              "logits must be float or double");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto logits = logits_in.contiguous();
  const int64_t T = logits.size(0), B = logits.size(1), V = logits.size(2);
  // Lengths and labels are validated on the host (small), then copied to the device with the offsets.
  const auto args = ds_native::check_ctc_targets(targets_in, input_lengths_in, target_lengths_in, T, B, V, blank);
  const auto &il = args.input_lengths, &tl = args.target_lengths, &targets = args.targets, &offsets = args.offsets;
  const int64_t L_max = args.max_target;
  const auto dev = logits.device();
  const auto il_d = il.to(dev), tl_d = tl.to(dev), off_d = offsets.to(dev);
  const auto tg_d = targets.numel() ? targets.reshape({-1}).to(dev) : at::zeros({1}, il.options().device(dev));
  const int64_t S_max = 2 * L_max + 1;
  auto grad = at::empty_like(logits);
  at::Tensor loss;
  if (T == 0 || B == 0) {
    loss = at::full({B}, zero_infinity ? 0.0 : INFINITY, logits.options());
    return {loss, grad.zero_()};
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "ctc_loss_fused_cuda", [&] {
    using acc_t = double;
    const auto acc_opts = logits.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    auto lse = at::empty({T * B}, acc_opts);
    auto alpha = at::empty({B, T, S_max}, acc_opts);
    auto beta = at::empty({B, T, S_max}, acc_opts);
    auto log_p = at::empty({B}, acc_opts);
    ctc_lse_kernel<scalar_t, acc_t><<<T * B, kThreads, 0, stream>>>(logits.data_ptr<scalar_t>(),
                                                                     lse.data_ptr<acc_t>(), il_d.data_ptr<int64_t>(),
                                                                     B, V);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ctc_alpha_beta_kernel<scalar_t, acc_t><<<B, kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(), tg_d.data_ptr<int64_t>(), off_d.data_ptr<int64_t>(),
        il_d.data_ptr<int64_t>(), tl_d.data_ptr<int64_t>(), B, V, T, S_max, blank, alpha.data_ptr<acc_t>(),
        beta.data_ptr<acc_t>(), log_p.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ctc_grad_kernel<scalar_t, acc_t><<<T * B, kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(), tg_d.data_ptr<int64_t>(), off_d.data_ptr<int64_t>(),
        il_d.data_ptr<int64_t>(), tl_d.data_ptr<int64_t>(), B, V, T, S_max, blank, alpha.data_ptr<acc_t>(),
        beta.data_ptr<acc_t>(), log_p.data_ptr<acc_t>(), zero_infinity, grad.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // -log p is +inf for an infeasible utterance, as F.ctc_loss; zero_infinity makes it 0.
    auto nll = log_p.neg();
    if (zero_infinity) nll = at::where(at::isinf(nll), at::zeros_like(nll), nll);
    loss = nll.to(logits.scalar_type());
  });
  return {loss, grad};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ctc_loss_fused", &ctc_loss_fused_cuda, "fused CTC loss and logit gradient (CUDA)");
}
