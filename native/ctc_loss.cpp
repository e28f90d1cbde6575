// Fused CTC loss for the CPU (Graves et al. 2006; DS2 section 4 / warp-ctc): from unnormalised logits, one pass
// per utterance computes the log-softmax normaliser, the alpha and beta recursions in log space, the loss and the
// gradient with respect to the logits,
//     d(-log p(l|x)) / d a_tv = softmax(a_t)_v - (1 / p) * sum_{s : l'_s = v} alpha_t(s) beta_t(s),
// so no log-softmax activation is stored and no separate backward runs (the gradient is kept for autograd).
// alpha_t(s) includes the emission at t, beta_t(s) excludes it. Utterances run in parallel (at::parallel_for);
// recursions accumulate in double whatever the input type.
//
// Inputs (the meaning of F.ctc_loss(logits.log_softmax(-1), ...)):
//   logits (T, B, V) float or double; targets (B, S_max) padded or (sum L_b,) concatenated, int64;
//   input_lengths (B,), target_lengths (B,) int64; blank in [0, V).
// Outputs: loss (B,) = -log p per utterance (inf when infeasible, or 0 with zero_infinity), grad (T, B, V).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "ctc_common.h"
#include "fast_math.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// The softmax pass's exp: the branch-free vectorisable one for float (7e-8 relative), the library's for double.
__attribute__((always_inline)) inline float exp_softmax(float x) { return ds_native::exp_fast(x); }
inline double exp_softmax(double x) { return std::exp(x); }

inline double log_add(double a, double b) {
  if (a == kNegInf) return b;
  if (b == kNegInf) return a;
  const double m = std::max(a, b);
  return m + std::log1p(std::exp(-std::fabs(a - b)));
}

template <typename scalar_t>
void ctc_log_space(const scalar_t* logits, scalar_t* grad, int64_t T, int64_t stride_t, int64_t V, const int64_t* label,
             int64_t L, int64_t blank, bool zero_infinity, scalar_t* loss_out) {
  // logits / grad point at (t = 0, b, v = 0); frame t is at offset t * stride_t.
  const int64_t S = 2 * L + 1;
  auto ext = [&](int64_t s) -> int64_t { return (s % 2 == 0) ? blank : label[s / 2]; };
  std::vector<double> lse(T);
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* a = logits + t * stride_t;
    double m = kNegInf;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<double>(a[v]));
    double sum = 0.0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(a[v]) - m);
    lse[t] = m + std::log(sum);
  }
  auto logp = [&](int64_t t, int64_t v) -> double { return static_cast<double>(logits[t * stride_t + v]) - lse[t]; };
  // Feasibility: each repeated pair needs a blank between, so T >= L + repeats.
  int64_t repeats = 0;
  for (int64_t k = 1; k < L; ++k) repeats += (label[k] == label[k - 1]);
  double log_p = kNegInf;
  std::vector<double> alpha, beta;
  if (T > 0 && T >= L + repeats) {
    alpha.assign(T * S, kNegInf);
    beta.assign(T * S, kNegInf);
    alpha[0] = logp(0, blank);
    if (S > 1) alpha[1] = logp(0, ext(1));
    for (int64_t t = 1; t < T; ++t) {
      // Only states that can still reach the end and be reached from the start are live.
      const int64_t lo = std::max<int64_t>(0, S - 2 * (T - t));
      const int64_t hi = std::min<int64_t>(S, 2 * (t + 1));
      const double* prev = &alpha[(t - 1) * S];
      double* cur = &alpha[t * S];
      for (int64_t s = lo; s < hi; ++s) {
        double x = prev[s];
        if (s >= 1) x = log_add(x, prev[s - 1]);
        if (s >= 2 && ext(s) != blank && ext(s) != ext(s - 2)) x = log_add(x, prev[s - 2]);
        if (x != kNegInf) cur[s] = x + logp(t, ext(s));
      }
    }
    log_p = alpha[(T - 1) * S + S - 1];
    if (S > 1) log_p = log_add(log_p, alpha[(T - 1) * S + S - 2]);
  }
  const bool feasible = log_p != kNegInf;
  *loss_out = feasible ? static_cast<scalar_t>(-log_p)
                       : (zero_infinity ? scalar_t(0) : std::numeric_limits<scalar_t>::infinity());
  if (!feasible) {
    // zero_infinity: no gradient. Otherwise the gradient of an infinite loss is undefined: NaN, as F.ctc_loss.
    const scalar_t fill = zero_infinity ? scalar_t(0) : std::numeric_limits<scalar_t>::quiet_NaN();
    for (int64_t t = 0; t < T; ++t) std::fill(grad + t * stride_t, grad + t * stride_t + V, fill);
    return;
  }
  beta[(T - 1) * S + S - 1] = 0.0;
  if (S > 1) beta[(T - 1) * S + S - 2] = 0.0;
  for (int64_t t = T - 2; t >= 0; --t) {
    const int64_t lo = std::max<int64_t>(0, S - 2 * (T - t));
    const int64_t hi = std::min<int64_t>(S, 2 * (t + 1));
    const double* next = &beta[(t + 1) * S];
    double* cur = &beta[t * S];
    for (int64_t s = lo; s < hi; ++s) {
      double x = next[s] == kNegInf ? kNegInf : next[s] + logp(t + 1, ext(s));
      if (s + 1 < S && next[s + 1] != kNegInf) x = log_add(x, next[s + 1] + logp(t + 1, ext(s + 1)));
      if (s + 2 < S && ext(s + 2) != blank && ext(s + 2) != ext(s) && next[s + 2] != kNegInf)
        x = log_add(x, next[s + 2] + logp(t + 1, ext(s + 2)));
      cur[s] = x;
    }
  }
  std::vector<double> occ(V);
  for (int64_t t = 0; t < T; ++t) {
    std::fill(occ.begin(), occ.end(), kNegInf);
    for (int64_t s = 0; s < S; ++s) {
      const double a = alpha[t * S + s], b = beta[t * S + s];
      if (a != kNegInf && b != kNegInf) occ[ext(s)] = log_add(occ[ext(s)], a + b);
    }
    const scalar_t* a = logits + t * stride_t;
    scalar_t* g = grad + t * stride_t;
    for (int64_t v = 0; v < V; ++v) {
      const double y = std::exp(static_cast<double>(a[v]) - lse[t]);
      const double post = occ[v] == kNegInf ? 0.0 : std::exp(occ[v] - log_p);
      g[v] = static_cast<scalar_t>(y - post);
    }
  }
}

// The fast path: alpha and beta in probability space, each frame rescaled to sum to one (Rabiner's scaling; the
// scale factors cancel in the state posteriors, and log p is the sum of their logs). One exp per logit: the
// log-softmax pass leaves exp(a - max) in the gradient buffer, which becomes the softmax. Returns false (and
// writes nothing final) when a frame's scaled mass underflows to zero although the alignment is feasible
// (extreme logits); the caller then runs the log-space path.
template <typename scalar_t>
bool ctc_scaled(const scalar_t* logits, scalar_t* grad, int64_t T, int64_t stride_t, int64_t V, const int64_t* label,
                int64_t L, int64_t blank, scalar_t* loss_out) {
  const int64_t S = 2 * L + 1;
  int64_t repeats = 0;
  for (int64_t k = 1; k < L; ++k) repeats += (label[k] == label[k - 1]);
  if (T == 0 || T < L + repeats) return false;  // infeasible: the log-space path reports it
  std::vector<int64_t> ext(S);
  std::vector<char> skip(S, 0);  // may s be entered from s - 2
  for (int64_t s = 0; s < S; ++s) ext[s] = (s % 2 == 0) ? blank : label[s / 2];
  for (int64_t s = 2; s < S; ++s) skip[s] = ext[s] != blank && ext[s] != ext[s - 2];
  std::vector<double> inv_sum(T), y(T * S);
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* a = logits + t * stride_t;
    scalar_t* g = grad + t * stride_t;
    scalar_t m = a[0];
#pragma omp simd reduction(max : m)
    for (int64_t v = 1; v < V; ++v) m = a[v] > m ? a[v] : m;
    scalar_t sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t v = 0; v < V; ++v) {
      const scalar_t e = exp_softmax(a[v] - m);
      g[v] = e;
      sum += e;
    }
    inv_sum[t] = 1.0 / static_cast<double>(sum);
    // Label emissions in double straight from the logits: a float32 exp(a - max) underflows below 1e-38, which
    // confident models reach; double keeps the fast path down to 1e-308.
    const double lse = static_cast<double>(m) + std::log(static_cast<double>(sum));
    for (int64_t s = 0; s < S; ++s) y[t * S + s] = std::exp(static_cast<double>(a[ext[s]]) - lse);
  }
  std::vector<double> alpha(T * S, 0.0), beta(T * S, 0.0);
  double log_p = 0.0;
  alpha[0] = y[0];
  if (S > 1) alpha[1] = y[1];
  for (int64_t t = 0; t < T; ++t) {
    double* cur = &alpha[t * S];
    if (t > 0) {
      const double* prev = &alpha[(t - 1) * S];
      const double* yt = &y[t * S];
      const int64_t lo = std::max<int64_t>(0, S - 2 * (T - t));
      const int64_t hi = std::min<int64_t>(S, 2 * (t + 1));
      for (int64_t s = lo; s < hi; ++s) {
        double x = prev[s];
        if (s >= 1) x += prev[s - 1];
        if (skip[s]) x += prev[s - 2];
        cur[s] = x * yt[s];
      }
    }
    double c = 0.0;
    for (int64_t s = 0; s < S; ++s) c += cur[s];
    if (!(c > 0.0) || !std::isfinite(c)) return false;
    const double ic = 1.0 / c;
    for (int64_t s = 0; s < S; ++s) cur[s] *= ic;
    log_p += std::log(c);
  }
  double end = alpha[(T - 1) * S + S - 1] + (S > 1 ? alpha[(T - 1) * S + S - 2] : 0.0);
  if (!(end > 0.0)) return false;
  log_p += std::log(end);
  beta[(T - 1) * S + S - 1] = 1.0;
  if (S > 1) beta[(T - 1) * S + S - 2] = 1.0;
  for (int64_t t = T - 2; t >= 0; --t) {
    const double* next = &beta[(t + 1) * S];
    const double* yn = &y[(t + 1) * S];
    double* cur = &beta[t * S];
    const int64_t lo = std::max<int64_t>(0, S - 2 * (T - t));
    const int64_t hi = std::min<int64_t>(S, 2 * (t + 1));
    double d = 0.0;
    for (int64_t s = lo; s < hi; ++s) {
      double x = next[s] * yn[s];
      if (s + 1 < S) x += next[s + 1] * yn[s + 1];
      if (s + 2 < S && skip[s + 2]) x += next[s + 2] * yn[s + 2];
      cur[s] = x;
      d += x;
    }
    if (!(d > 0.0) || !std::isfinite(d)) return false;
    const double id = 1.0 / d;
    for (int64_t s = lo; s < hi; ++s) cur[s] *= id;
  }
  *loss_out = static_cast<scalar_t>(-log_p);
  std::vector<double> occ(S);
  for (int64_t t = 0; t < T; ++t) {
    double z = 0.0;
    for (int64_t s = 0; s < S; ++s) {
      occ[s] = alpha[t * S + s] * beta[t * S + s];
      z += occ[s];
    }
    scalar_t* g = grad + t * stride_t;
    const scalar_t is = static_cast<scalar_t>(inv_sum[t]);
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) g[v] *= is;
    const double iz = 1.0 / z;
    for (int64_t s = 0; s < S; ++s) g[ext[s]] -= static_cast<scalar_t>(occ[s] * iz);
  }
  return true;
}

template <typename scalar_t>
void ctc_one(const scalar_t* logits, scalar_t* grad, int64_t T, int64_t stride_t, int64_t V, const int64_t* label,
             int64_t L, int64_t blank, bool zero_infinity, scalar_t* loss_out) {
  if (!ctc_scaled<scalar_t>(logits, grad, T, stride_t, V, label, L, blank, loss_out))
    ctc_log_space<scalar_t>(logits, grad, T, stride_t, V, label, L, blank, zero_infinity, loss_out);
}

std::vector<at::Tensor> ctc_loss_fused(const at::Tensor& logits_in, const at::Tensor& targets_in,
                                       const at::Tensor& input_lengths_in, const at::Tensor& target_lengths_in,
                                       int64_t blank, bool zero_infinity) {
  TORCH_CHECK(logits_in.dim() == 3, "logits must be (T, B, V)");
  TORCH_CHECK(logits_in.is_floating_point(), "logits must be float or double");
  const auto logits = logits_in.contiguous();
  const int64_t T = logits.size(0), B = logits.size(1), V = logits.size(2);
  const auto args = ds_native::check_ctc_targets(targets_in, input_lengths_in, target_lengths_in, T, B, V, blank);
  const int64_t* il = args.input_lengths.data_ptr<int64_t>();
  const int64_t* tl = args.target_lengths.data_ptr<int64_t>();
  const int64_t* offset = args.offsets.data_ptr<int64_t>();
  const int64_t* tg = args.targets.data_ptr<int64_t>();
  auto loss = at::empty({B}, logits.options());
  // Not zero-filled: every frame t < input_length is written by ctc_one and only the padding frames are zeroed
  // below (a separate zeroing pass over (T, B, V) costs as much as the softmax at a 5,000-symbol alphabet).
  auto grad = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "ctc_loss_fused", [&] {
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* out = loss.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        ctc_one<scalar_t>(lp + b * V, gp + b * V, il[b], B * V, V, tg + offset[b], tl[b], blank, zero_infinity,
                          out + b);
        for (int64_t t = il[b]; t < T; ++t) std::fill(gp + (t * B + b) * V, gp + (t * B + b + 1) * V, scalar_t(0));
      }
    });
  });
  return {loss, grad};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ctc_loss_fused", &ctc_loss_fused, "fused CTC loss and logit gradient (CPU)");
}
