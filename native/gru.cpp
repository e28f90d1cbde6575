// Fused GRU layer for the CPU (Cho et al. 2014; the recurrent layers of DS2, section 3.1), in nn.GRU's layout:
// gates stacked (r, z, n) along the 3H rows of W_ih (3H, I) and W_hh (3H, H), and
//     r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
//     z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
//     n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
//     h' = (1 - z) * n + z * h.
// Forward: one GEMM for the input projections of the whole sequence, then per step one recurrent product (B, H) x
// (H, 3H) and the gate arithmetic in registers (no per-gate temporaries). It keeps r, z, n and W_hn h + b_hn per
// step for the backward.
// Backward: per step (last to first) one fused loop gives the pre-activation gate gradients, stored for the whole
// sequence, and one product (B, 3H) x (3H, H) carries the hidden-state gradient back a step; the weight gradients,
// bias gradients and input gradient are then three large GEMMs and two sums over all B * T rows.
// The per-step products: float32 on AVX2 CPUs (T >= 2) run on W_hh packed once per call (native/packed_gemm.h),
// split by hidden units over the threads, each thread also doing its units' gates (forward); otherwise the BLAS,
// which would pack W_hh again at every step.
//
// bf16 (the trainer's bf16 autocast on the CPU): the three large products (all input projections; dx, dW_ih, dW_hh)
// run in bfloat16 with float32 accumulation (oneDNN: AMX or AVX512-BF16 where the CPU has them), results kept in
// float32, as autocast treats a Linear; the per-step recurrence, the gates and every stored tensor stay float32.
// Shapes (batch first, unidirectional, one layer): x (B, T, I), h0 (B, H), outputs (B, T, H),
// workspace (B, T, 4H) = [r, z, n, W_hn h + b_hn].
#include <torch/extension.h>

#include "fast_math.h"
#include "packed_gemm.h"
#include "small_gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// Elements per task. The vectorised gate loop does ~1 ns of work per element, a fork/join of the thread pool costs
// microseconds (far more when the cores are shared), and it runs twice per time step: the tiny and small presets'
// (B, H) grids (16 x 192, 16 x 384) stay on one thread; ds2-sized ones (32 x 1088) split.
constexpr int64_t kGrain = 16384;

using ds_native::exp_fast;

// float: the fast exp (tanh within 2e-7 absolute of the exact value); double (gradient checks): the library's.
__attribute__((always_inline)) inline float sigmoid(float v) { return 1.0f / (1.0f + exp_fast(-v)); }
__attribute__((always_inline)) inline float tanh_(float v) { return 2.0f / (1.0f + exp_fast(-2.0f * v)) - 1.0f; }
inline double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
inline double tanh_(double v) { return std::tanh(v); }

// Runs fn(b, j0, j1) over the rows b and column ranges [j0, j1) that cover the flat range [begin, end) of a (B, H)
// grid, so the inner loops see contiguous columns and vectorise.
template <typename F>
inline void for_rows(int64_t begin, int64_t end, int64_t H, const F& fn) {
  while (begin < end) {
    const int64_t b = begin / H, j0 = begin % H;
    const int64_t j1 = std::min(H, j0 + (end - begin));
    fn(b, j0, j1);
    begin += j1 - j0;
  }
}

void check_weights(const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh,
                   int64_t I, int64_t H) {
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == 3 * H && w_ih.size(1) == I, "w_ih must be (3H, I)");
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 3 * H && w_hh.size(1) == H, "w_hh must be (3H, H)");
  TORCH_CHECK(b_ih.dim() == 1 && b_ih.size(0) == 3 * H, "b_ih must be (3H,)");
  TORCH_CHECK(b_hh.dim() == 1 && b_hh.size(0) == 3 * H, "b_hh must be (3H,)");
}

// One step of the gates. xp: (B, 3H) rows at stride sx (input projection with b_ih); hp: (B, 3H) contiguous
// (recurrent projection with b_hh); h: (B, H) rows at stride sh; writes h' rows at stride so and, when ws is not
// null, [r, z, n, hn] rows at stride sw.
// kSave is a template argument so the loop has no branch (a conditional store keeps gcc from vectorising it).
template <typename scalar_t, bool kSave>
void gates_forward(const scalar_t* xp, int64_t sx, const scalar_t* hp, const scalar_t* h, int64_t sh, scalar_t* out,
                   int64_t so, scalar_t* ws, int64_t sw, int64_t B, int64_t H) {
  at::parallel_for(0, B * H, kGrain, [&](int64_t begin, int64_t end) {
    for_rows(begin, end, H, [&](int64_t b, int64_t j0, int64_t j1) {
      const scalar_t* x = xp + b * sx;
      const scalar_t* g = hp + b * 3 * H;
      const scalar_t* hb = h + b * sh;
      scalar_t* o = out + b * so;
      scalar_t* w = kSave ? ws + b * sw : nullptr;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) {
        const scalar_t r = sigmoid(x[j] + g[j]);
        const scalar_t z = sigmoid(x[H + j] + g[H + j]);
        const scalar_t hn = g[2 * H + j];
        const scalar_t n = tanh_(x[2 * H + j] + r * hn);
        o[j] = (scalar_t(1) - z) * n + z * hb[j];
        if constexpr (kSave) {
          w[j] = r;
          w[H + j] = z;
          w[2 * H + j] = n;
          w[3 * H + j] = hn;
        }
      }
    });
  });
}

// The packed products (native/packed_gemm.h, float32, AVX2): a thread owns hidden units [k chunk, (k + 1) chunk), in
// whole panels of 16 and at least kMinUnits, for all three gates, and runs its products and gates in one fork.
// kMinRows: the BLAS path's split of the 3H projection rows (gru_step).
constexpr int64_t kMinUnits = 32, kMinRows = 192;

struct UnitSplit {
  int64_t threads, chunk;
};

inline UnitSplit unit_split(int64_t H) {
  const int64_t panels = (H + ds_native::kPanel - 1) / ds_native::kPanel;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), H / kMinUnits));
  return {threads, (panels + threads - 1) / threads * ds_native::kPanel};
}

// W (3H, K) -> (3, packed_floats(H, K)): each gate's H rows in panels (pack_panels).
at::Tensor pack_gates(const at::Tensor& w, int64_t H) {
  const int64_t K = w.size(1), per_gate = ds_native::packed_floats(H, K);
  auto out = at::empty({3, per_gate}, w.options());
  const float* src = w.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, 3, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) ds_native::pack_panels(src + g * H * K, K, H, K, dst + g * per_gate);
  });
  return out;
}

// The packed path pays one packing of W_hh per call (about one BLAS product), which the T steps repay.
inline bool use_packed(const at::Tensor& x, int64_t T) {
  return ds_native::kHavePackedGemm && x.scalar_type() == at::kFloat && T >= 2;
}

// Gates of units [j0, j0 + n) for all B rows, as gates_forward, from one thread's recurrent products: x the input
// projection (b_ih included) at unit j0, rows at stride sx, gates H apart; q the three products (B, n), gates qs
// apart; bh the recurrent biases at unit j0, gates H apart; h, out, ws at unit j0, rows at strides sh, so, sw.
void gates_units(const float* x, int64_t sx, const float* q, int64_t qs, const float* bh, const float* h, int64_t sh,
                 float* out, int64_t so, float* ws, int64_t sw, int64_t B, int64_t H, int64_t n) {
  for (int64_t b = 0; b < B; ++b) {
    const float *xb = x + b * sx, *qb = q + b * n, *hb = h + b * sh;
    float *o = out + b * so, *w = ws + b * sw;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float r = sigmoid(xb[j] + qb[j] + bh[j]);
      const float z = sigmoid(xb[H + j] + qb[qs + j] + bh[H + j]);
      const float hn = qb[2 * qs + j] + bh[2 * H + j];
      const float g = tanh_(xb[2 * H + j] + r * hn);
      o[j] = (1.0f - z) * g + z * hb[j];
      w[j] = r;
      w[H + j] = z;
      w[2 * H + j] = g;
      w[3 * H + j] = hn;
    }
  }
}

// a (M, K) x b (K, N) -> (M, N) float32: in bfloat16 when `bf16` and the operands are float32 (see above).
at::Tensor mm_bf16_if(const at::Tensor& a, const at::Tensor& b, bool bf16) {
  if (!bf16 || a.scalar_type() != at::kFloat) return at::mm(a, b);
  return at::mm(a.to(at::kBFloat16), b.to(at::kBFloat16)).to(at::kFloat);
}

// Forward over a sequence: returns {outputs (B, T, H), workspace (B, T, 4H)}.
std::vector<at::Tensor> gru_forward(const at::Tensor& x_in, const at::Tensor& h0_in, const at::Tensor& w_ih_in,
                                    const at::Tensor& w_hh_in, const at::Tensor& b_ih, const at::Tensor& b_hh,
                                    bool bf16) {
  TORCH_CHECK(x_in.dim() == 3, "x must be (B, T, I)");
  TORCH_CHECK(x_in.device().is_cpu(), "gru_forward is the CPU kernel");
  const auto x = x_in.contiguous();
  const auto w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const int64_t B = x.size(0), T = x.size(1), I = x.size(2), H = w_hh.size(1);
  check_weights(w_ih, w_hh, b_ih, b_hh, I, H);
  TORCH_CHECK(h0_in.dim() == 2 && h0_in.size(0) == B && h0_in.size(1) == H, "h0 must be (B, H)");
  const auto h0 = h0_in.contiguous();
  auto out = at::empty({B, T, H}, x.options());
  auto ws = at::empty({B, T, 4 * H}, x.options());
  if (B == 0 || T == 0) return {out, ws};
  // All input projections at once: (B*T, I) x (I, 3H) + b_ih.
  const auto xp = bf16 && x.scalar_type() == at::kFloat ? mm_bf16_if(x.view({B * T, I}), w_ih.t(), true).add_(b_ih)
                                                        : at::addmm(b_ih, x.view({B * T, I}), w_ih.t());
  if (use_packed(x, T)) {  // per step, per thread: its units' three recurrent products, then their gates
    const auto p_hh = pack_gates(w_hh, H);
    const auto split = unit_split(H);
    auto buf = at::empty({split.threads, 3, B * split.chunk}, x.options());
    const auto b_hh_c = b_hh.contiguous();
    const float *xpp = xp.data_ptr<float>(), *ph = p_hh.data_ptr<float>(), *bh = b_hh_c.data_ptr<float>();
    const float* h0p = h0.data_ptr<float>();
    float *op = out.data_ptr<float>(), *wp = ws.data_ptr<float>(), *bufp = buf.data_ptr<float>();
    const int64_t gh = p_hh.size(1), qs = B * split.chunk;
    for (int64_t t = 0; t < T; ++t) {
      const float* hp = t == 0 ? h0p : op + (t - 1) * H;
      const int64_t sh = t == 0 ? H : T * H;
      at::parallel_for(0, split.threads, 1, [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t j0 = k * split.chunk, n = std::min(H, j0 + split.chunk) - j0;
          if (n <= 0) continue;
          float* q = bufp + k * 3 * qs;
          for (int64_t g = 0; g < 3; ++g) ds_native::gemm_packed(hp, sh, ph + g * gh + j0 * H, n, H, q + g * qs, n, B);
          gates_units(xpp + t * 3 * H + j0, T * 3 * H, q, qs, bh + j0, hp + j0, sh, op + t * H + j0, T * H,
                      wp + t * 4 * H + j0, T * 4 * H, B, H, n);
        }
      });
    }
    return {out, ws};
  }
  auto hp = at::empty({B, 3 * H}, x.options());
  const auto w_hh_t = w_hh.t().contiguous();  // (H, 3H) once: the T small GEMMs run ~10% faster than on a view
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_forward", [&] {
    const scalar_t* xpp = xp.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* wp = ws.data_ptr<scalar_t>();
    for (int64_t t = 0; t < T; ++t) {
      const at::Tensor h = t == 0 ? h0 : out.select(1, t - 1);  // (B, H), rows T*H apart after step 0
      at::addmm_out(hp, b_hh, h, w_hh_t);
      const scalar_t* hptr = t == 0 ? h0.data_ptr<scalar_t>() : op + (t - 1) * H;
      const int64_t sh = t == 0 ? H : T * H;
      gates_forward<scalar_t, true>(xpp + t * 3 * H, T * 3 * H, hp.data_ptr<scalar_t>(), hptr, sh, op + t * H, T * H,
                              wp + t * 4 * H, T * 4 * H, B, H);
    }
  });
  return {out, ws};
}

// Backward over a sequence: grads {dx (B, T, I), dh0 (B, H), dW_ih, dW_hh, db_ih, db_hh}. grad_out (B, T, H) is
// the gradient of the outputs (the final hidden state is the last output, so its gradient arrives there).
std::vector<at::Tensor> gru_backward(const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& h0_in,
                                     const at::Tensor& w_ih_in, const at::Tensor& w_hh_in, const at::Tensor& out_in,
                                     const at::Tensor& ws_in, bool bf16) {
  const auto x = x_in.contiguous(), h0 = h0_in.contiguous(), out = out_in.contiguous(), ws = ws_in.contiguous();
  const auto go = grad_out_in.contiguous();
  const auto w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const int64_t B = x.size(0), T = x.size(1), I = x.size(2), H = w_hh.size(1);
  TORCH_CHECK(go.sizes() == out.sizes() && out.size(0) == B && out.size(1) == T && out.size(2) == H,
              "grad_out and outputs must be (B, T, H)");
  TORCH_CHECK(ws.size(0) == B && ws.size(1) == T && ws.size(2) == 4 * H, "workspace must be (B, T, 4H)");
  // Pre-activation gradients: dgi for the input projection [da_r, da_z, da_n], dgh for the recurrent one
  // [da_r, da_z, r * da_n].
  auto dgi = at::empty({B, T, 3 * H}, x.options());
  auto dgh = at::empty({B, T, 3 * H}, x.options());
  auto carry = at::zeros({B, H}, x.options());  // gradient of the hidden state entering the current step
  // The packed path: W_hh's columns in panels (pack_panels_t), so that carry += dgh_t W_hh runs split by units.
  const bool packed = use_packed(x, T);
  at::Tensor p_t;
  UnitSplit split{1, H};
  if (packed) {
    p_t = at::empty({ds_native::packed_floats(H, 3 * H)}, x.options());
    ds_native::pack_panels_t(w_hh.data_ptr<float>(), H, H, 3 * H, p_t.data_ptr<float>());
    split = unit_split(H);
  }
  const float* pt = packed ? p_t.data_ptr<float>() : nullptr;
  const float* dgh_f = packed ? dgh.data_ptr<float>() : nullptr;
  float* carry_f = packed ? carry.data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_backward", [&] {
    const scalar_t* gop = go.data_ptr<scalar_t>();
    const scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t* wp = ws.data_ptr<scalar_t>();
    const scalar_t* h0p = h0.data_ptr<scalar_t>();
    scalar_t* dip = dgi.data_ptr<scalar_t>();
    scalar_t* dhp = dgh.data_ptr<scalar_t>();
    scalar_t* cp = carry.data_ptr<scalar_t>();
    for (int64_t t = T - 1; t >= 0; --t) {
      at::parallel_for(0, B * H, kGrain, [&](int64_t begin, int64_t end) {
        for_rows(begin, end, H, [&](int64_t b, int64_t j0, int64_t j1) {
          const int64_t row = b * T + t;
          const scalar_t* g = gop + row * H;
          const scalar_t* w = wp + row * 4 * H;
          const scalar_t* hprev = t == 0 ? h0p + b * H : op + (row - 1) * H;
          scalar_t* di = dip + row * 3 * H;
          scalar_t* dh = dhp + row * 3 * H;
          scalar_t* c = cp + b * H;
          _Pragma("omp simd")  // a macro argument: #pragma cannot appear here
          for (int64_t j = j0; j < j1; ++j) {
            const scalar_t d = g[j] + c[j];
            const scalar_t r = w[j], z = w[H + j], n = w[2 * H + j], hn = w[3 * H + j];
            const scalar_t da_n = d * (scalar_t(1) - z) * (scalar_t(1) - n * n);
            const scalar_t da_r = da_n * hn * r * (scalar_t(1) - r);
            const scalar_t da_z = d * (hprev[j] - n) * z * (scalar_t(1) - z);
            di[j] = da_r;
            di[H + j] = da_z;
            di[2 * H + j] = da_n;
            dh[j] = da_r;
            dh[H + j] = da_z;
            dh[2 * H + j] = da_n * r;
            c[j] = d * z;  // the direct path h -> h'; the recurrent GEMM adds the gate paths below
          }
        });
      });
      if (packed) {  // float32 only (use_packed)
        at::parallel_for(0, split.threads, 1, [&](int64_t k0, int64_t k1) {
          for (int64_t k = k0; k < k1; ++k) {
            const int64_t j0 = k * split.chunk, n = std::min(H, j0 + split.chunk) - j0;
            if (n > 0)
              ds_native::gemm_packed(dgh_f + t * 3 * H, T * 3 * H, pt + j0 * 3 * H, n, 3 * H, carry_f + j0, H, B, true);
          }
        });
        continue;
      }
      carry.addmm_(dgh.select(1, t), w_hh);  // (B, 3H) x (3H, H)
    }
  });
  const auto dgi2 = dgi.view({B * T, 3 * H}), dgh2 = dgh.view({B * T, 3 * H});
  // h_{t-1} for every step: h0, then the outputs shifted by one.
  const auto hprev = T > 0 ? at::cat({h0.unsqueeze(1), out.narrow(1, 0, T - 1)}, 1).view({B * T, H})
                           : at::empty({0, H}, x.options());
  auto dx = mm_bf16_if(dgi2, w_ih, bf16).view({B, T, I});
  auto dw_ih = mm_bf16_if(dgi2.t(), x.view({B * T, I}), bf16);
  auto dw_hh = mm_bf16_if(dgh2.t(), hprev, bf16);
  auto db_ih = dgi2.sum(0);
  auto db_hh = dgh2.sum(0);
  return {dx, carry, dw_ih, dw_hh, db_ih, db_hh};
}

// One step for streaming inference (no autograd): h' (B, H) from x (B, I), or from its input projection
// x_proj (B, 3H) with b_ih already added when `projected`, on the weights as they lie. For float32 on AVX2 CPUs
// deepspeech.native.gru calls gru_step_packed instead, on weights it packed once (below; 1.2-2.3x faster than
// this at batch 8-32, bench/README.md B2); this path serves float64, inference-mode weights and other CPUs.
//
// Small batches (batch x input size <= kSmallGemmFloats, float, AVX2): the step is split by hidden units. Thread k
// owns units [j0, j1) and computes, single-threaded, the six small products that feed them (x W_i{r,z,n}[j0:j1]^T
// and h W_h{r,z,n}[j0:j1]^T, contiguous weight row blocks) with native/small_gemm.h's kernel, on the weights as they
// lie, and then their gates while the data are in its cache: one fork/join per step. At batch 1 a step is a
// matrix-vector product bound by reading the weights, and the BLAS spent more on packing and per-call set-up.
// Larger batches (and float64, and CPUs without AVX2) use the BLAS: the 3H projection rows are split into one
// contiguous range per thread (at least kMinRows each), each thread runs its two products single-threaded inside
// the one fork, then one fused gate loop; with fewer rows, two GEMMs threaded inside.
// Measured in the step, 2 threads, the variants alternating in one process (bench/README.md, B2):
// - kernel against BLAS products: batch 1 / 4 at the small preset (I 656, H 384) 86-107 / 283-292 us against
//   227-267 / 382-422 us, batch 8 at the tiny preset (I 328, H 192) 164-182 against 182-205 us; beyond batch x input
//   size of about 3k floats the BLAS wins (batch 12 tiny 145-220 against 227-239 us, batch 8 / 32 small 344-461 /
//   1006-1039 against 501-524 / 2211-2299 us), although alone, with its weights in L2, the kernel keeps up with it to
//   batch 32: streaming the weights from L3 is what it does worse than the BLAS's packed panels;
// - BLAS by rows (two products of 3H / 2 rows per thread) against by units (six of H / 2): batch 8 / 32 at the
//   small preset 330-390 / 788-858 us against 420-450 / 860-939 us; the tiny preset's batch 16-32 are even.
constexpr int64_t kSmallGemmFloats = 3072;

template <typename scalar_t, bool kBiasX>
void step_gates(const scalar_t* xr, const scalar_t* xz, const scalar_t* xn, int64_t sx, const scalar_t* bx,
                const scalar_t* hr, const scalar_t* hz, const scalar_t* hn, const scalar_t* bh, const scalar_t* h,
                scalar_t* out, int64_t B, int64_t H, int64_t n) {
  // x*: (B, n) rows at stride sx; bx: the three (n,) input biases at stride H (read when kBiasX);
  // h*: (B, n) contiguous; bh: the three recurrent biases at stride H; h, out: (B, H) rows, first unit j0.
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t *pr = xr + b * sx, *pz = xz + b * sx, *pn = xn + b * sx;
    const scalar_t *qr = hr + b * n, *qz = hz + b * n, *qn = hn + b * n, *hb = h + b * H;
    scalar_t* o = out + b * H;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t cr = kBiasX ? bx[j] : scalar_t(0), cz = kBiasX ? bx[H + j] : scalar_t(0);
      const scalar_t cn = kBiasX ? bx[2 * H + j] : scalar_t(0);
      const scalar_t r = sigmoid(pr[j] + cr + qr[j] + bh[j]);
      const scalar_t z = sigmoid(pz[j] + cz + qz[j] + bh[H + j]);
      const scalar_t g = tanh_(pn[j] + cn + r * (qn[j] + bh[2 * H + j]));
      o[j] = (scalar_t(1) - z) * g + z * hb[j];
    }
  }
}

// The gates of units [j0, j0 + n) after a thread's products: bp holds the six (B, n) parts [x_r, x_z, x_n, h_r, h_z,
// h_n] at stride `stride` (the x parts unused when `projected`: then x (B, 3H) is the projection, b_ih included).
void unit_gates(const float* xd, bool projected, const float* bp, int64_t stride, const at::Tensor& b_ih,
                const at::Tensor& b_hh, const float* hd, at::Tensor& out, int64_t B, int64_t H, int64_t j0, int64_t n) {
  const float* xs = projected ? xd + j0 : bp;
  const int64_t sx = projected ? 3 * H : n, gx = projected ? H : stride;  // row stride, gate stride
  const float *bx = b_ih.data_ptr<float>() + j0, *bh = b_hh.data_ptr<float>() + j0;
  const float* hs = hd + j0;
  float* os = out.data_ptr<float>() + j0;
  if (projected)
    step_gates<float, false>(xs, xs + gx, xs + 2 * gx, sx, bx, bp + 3 * stride, bp + 4 * stride, bp + 5 * stride, bh,
                             hs, os, B, H, n);
  else
    step_gates<float, true>(xs, xs + gx, xs + 2 * gx, sx, bx, bp + 3 * stride, bp + 4 * stride, bp + 5 * stride, bh,
                            hs, os, B, H, n);
}

// One step split by hidden units over `threads`: thread k owns units [k chunk, (k + 1) chunk) and runs
// products(g, j0, n, x part, h part) for the gates g = r, z, n (each part (B, n)), then those units' gates.
template <typename Products>
void step_by_units(const float* xd, const float* hd, bool projected, const at::Tensor& b_ih, const at::Tensor& b_hh,
                   at::Tensor& out, int64_t B, int64_t H, int64_t threads, int64_t chunk, const Products& products) {
  auto buf = at::empty({threads, 6, B * chunk}, out.options());  // per thread [x_r, x_z, x_n, h_r, h_z, h_n]
  at::parallel_for(0, threads, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t j0 = k * chunk, n = std::min(H, j0 + chunk) - j0;
      if (n <= 0) continue;
      float* bp = buf.select(0, k).data_ptr<float>();
      const int64_t stride = B * chunk;
      for (int64_t g = 0; g < 3; ++g) products(g, j0, n, bp + g * stride, bp + (3 + g) * stride);
      unit_gates(xd, projected, bp, stride, b_ih, b_hh, hd, out, B, H, j0, n);
    }
  });
}

at::Tensor gru_step(const at::Tensor& x_in, const at::Tensor& h_in, const at::Tensor& w_ih_in,
                    const at::Tensor& w_hh_in, const at::Tensor& b_ih_in, const at::Tensor& b_hh_in, bool projected) {
  TORCH_CHECK(x_in.dim() == 2 && h_in.dim() == 2 && x_in.size(0) == h_in.size(0), "x (B, I) and h (B, H)");
  TORCH_CHECK(x_in.device().is_cpu() && h_in.device().is_cpu(), "gru_step is the CPU kernel");
  // Detached: the products below write into buffers (out= ops), which autograd refuses for parameters.
  const auto h = h_in.detach().contiguous(), x = x_in.detach().contiguous();
  const auto w_ih = w_ih_in.detach().contiguous(), w_hh = w_hh_in.detach().contiguous();
  const auto b_ih = b_ih_in.detach().contiguous(), b_hh = b_hh_in.detach().contiguous();
  const int64_t B = h.size(0), H = h.size(1), I = w_ih.size(1);
  check_weights(w_ih, w_hh, b_ih, b_hh, I, H);
  TORCH_CHECK(x.size(1) == (projected ? 3 * H : I), projected ? "a projected x must be (B, 3H)" : "x must be (B, I)");
  auto out = at::empty({B, H}, h.options());
  if (B == 0 || H == 0) return out;
  const bool small_gemm = ds_native::kHaveSmallGemm && h.scalar_type() == at::kFloat &&
                          B * std::max(projected ? 0 : I, H) <= kSmallGemmFloats;
  const int64_t threads = small_gemm ? std::min<int64_t>(at::get_num_threads(), H / kMinUnits) : 1;
  if (threads < 2) {  // the BLAS products (split by rows over the threads, or threaded inside), then the gates
    const int64_t row_threads = std::min<int64_t>(at::get_num_threads(), 3 * H / kMinRows);
    at::Tensor xp = x, hp;
    if (row_threads < 2) {
      if (!projected) xp = at::addmm(b_ih, x, w_ih.t());
      hp = at::addmm(b_hh, h, w_hh.t());
    } else {
      if (!projected) xp = at::empty({B, 3 * H}, h.options());
      hp = at::empty({B, 3 * H}, h.options());
      const int64_t rows = (3 * H + row_threads - 1) / row_threads;
      at::parallel_for(0, row_threads, 1, [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t r0 = k * rows, n = std::min(3 * H, r0 + rows) - r0;
          if (n <= 0) continue;
          if (!projected) {
            auto xo = xp.narrow(1, r0, n);
            at::addmm_out(xo, b_ih.narrow(0, r0, n), x, w_ih.narrow(0, r0, n).t());
          }
          auto ho = hp.narrow(1, r0, n);
          at::addmm_out(ho, b_hh.narrow(0, r0, n), h, w_hh.narrow(0, r0, n).t());
        }
      });
    }
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "gru_step", [&] {
      gates_forward<scalar_t, false>(xp.data_ptr<scalar_t>(), 3 * H, hp.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                                     H, out.data_ptr<scalar_t>(), H, nullptr, 0, B, H);
    });
    return out;
  }
  // float only from here (small_gemm): split by hidden units, the kernel's products, then the gates.
  const int64_t chunk = (H + threads - 1) / threads;
  const float *xd = x.data_ptr<float>(), *hd = h.data_ptr<float>();
  const float *wi = w_ih.data_ptr<float>(), *wh = w_hh.data_ptr<float>();
  // part (B, n) = a (B, K) times weight rows [g H + j0, + n) transposed
  step_by_units(xd, hd, projected, b_ih, b_hh, out, B, H, threads, chunk,
                [&](int64_t g, int64_t j0, int64_t n, float* xpart, float* hpart) {
                  if (!projected) ds_native::gemm_nt(xd, I, wi + (g * H + j0) * I, I, xpart, n, B, n, I);
                  ds_native::gemm_nt(hd, H, wh + (g * H + j0) * H, H, hpart, n, B, n, H);
                });
  return out;
}

// Weights packed for gru_step_packed: W (3H, K) float32 -> (3, packed_floats(H, K)), each gate's H rows in panels of
// 16 rows (native/packed_gemm.h), so a thread that owns units [j0, j1) (j0 a multiple of 16) reads whole panels.
// Packing costs about as much as one BLAS product; callers keep the result while the weights stay the same
// (deepspeech.native.gru caches it per weight tensor and version).
at::Tensor gru_pack(const at::Tensor& w_in, int64_t H) {
  TORCH_CHECK(ds_native::kHavePackedGemm, "gru_pack needs a CPU with AVX2 and FMA");
  TORCH_CHECK(w_in.dim() == 2 && w_in.size(0) == 3 * H && w_in.scalar_type() == at::kFloat && w_in.is_cpu(),
              "gru_pack takes a float32 CPU weight (3H, K)");
  return pack_gates(w_in.detach().contiguous(), H);
}

// gru_step on packed weights (gru_pack): split by hidden units in multiples of 16 (at least kMinUnits per thread),
// each thread runs its six products with gemm_packed and then its gates, one fork/join per step. Float32, AVX2.
// Measured in the step, 2 threads, small preset (I 656, H 384): see bench/README.md, B2.
at::Tensor gru_step_packed(const at::Tensor& x_in, const at::Tensor& h_in, const at::Tensor& p_ih,
                           const at::Tensor& p_hh, const at::Tensor& b_ih_in, const at::Tensor& b_hh_in,
                           bool projected) {
  TORCH_CHECK(ds_native::kHavePackedGemm, "gru_step_packed needs a CPU with AVX2 and FMA");
  TORCH_CHECK(x_in.dim() == 2 && h_in.dim() == 2 && x_in.size(0) == h_in.size(0), "x (B, I) and h (B, H)");
  const auto h = h_in.detach().contiguous(), x = x_in.detach().contiguous();
  const auto b_ih = b_ih_in.detach().contiguous(), b_hh = b_hh_in.detach().contiguous();
  TORCH_CHECK(h.scalar_type() == at::kFloat && x.scalar_type() == at::kFloat && p_ih.scalar_type() == at::kFloat &&
                  p_hh.scalar_type() == at::kFloat && h.is_cpu() && x.is_cpu(),
              "gru_step_packed is float32 on the CPU");
  const int64_t B = h.size(0), H = h.size(1), I = projected ? 0 : x.size(1);
  TORCH_CHECK(b_ih.numel() == 3 * H && b_hh.numel() == 3 * H, "biases must be (3H,)");
  TORCH_CHECK(p_hh.dim() == 2 && p_hh.size(0) == 3 && p_hh.size(1) == ds_native::packed_floats(H, H),
              "p_hh must be gru_pack(w_hh, H)");
  TORCH_CHECK(projected ? x.size(1) == 3 * H
                        : (p_ih.dim() == 2 && p_ih.size(0) == 3 && p_ih.size(1) == ds_native::packed_floats(H, I)),
              projected ? "a projected x must be (B, 3H)" : "p_ih must be gru_pack(w_ih, H) for x (B, I)");
  auto out = at::empty({B, H}, h.options());
  if (B == 0 || H == 0) return out;
  const auto [threads, chunk] = unit_split(H);
  const float *xd = x.data_ptr<float>(), *hd = h.data_ptr<float>();
  const float *pi = projected ? nullptr : p_ih.data_ptr<float>(), *ph = p_hh.data_ptr<float>();
  const int64_t gi = projected ? 0 : p_ih.size(1), gh = p_hh.size(1);  // floats per packed gate
  // part (B, n) = a (B, K) times the packed rows [j0, j0 + n) of gate g
  step_by_units(xd, hd, projected, b_ih, b_hh, out, B, H, threads, chunk,
                [&](int64_t g, int64_t j0, int64_t n, float* xpart, float* hpart) {
                  if (!projected) ds_native::gemm_packed(xd, I, pi + g * gi + j0 * I, n, I, xpart, n, B);
                  ds_native::gemm_packed(hd, H, ph + g * gh + j0 * H, n, H, hpart, n, B);
                });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gru_forward", &gru_forward, "fused GRU layer forward (CPU): outputs, workspace", py::arg("x"), py::arg("h0"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("bf16") = false);
  m.def("gru_backward", &gru_backward, "fused GRU layer backward (CPU): dx, dh0, dW_ih, dW_hh, db_ih, db_hh",
        py::arg("grad_out"), py::arg("x"), py::arg("h0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("out"),
        py::arg("ws"), py::arg("bf16") = false);
  m.def("gru_step", &gru_step, "fused GRU single step (CPU, no autograd)");
  m.def("gru_pack", &gru_pack, "GRU weights (3H, K) packed for gru_step_packed (AVX2 CPUs)");
  m.def("gru_step_packed", &gru_step_packed, "fused GRU single step on packed weights (CPU, float32, no autograd)");
  m.attr("have_packed_gemm") = ds_native::kHavePackedGemm;
}
