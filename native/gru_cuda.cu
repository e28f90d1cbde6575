// Fused GRU layer forward and single step for CUDA (inference; training on a GPU uses cuDNN through nn.GRU).
// Same equations and layout as native/gru.cpp (nn.GRU's: gates (r, z, n) stacked along the 3H rows):
//     r = sigmoid(W_ir x + b_ir + W_hr h + b_hr),  z = sigmoid(W_iz x + b_iz + W_hz h + b_hz),
//     n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h.
// GEMMs go to cuBLAS through at::addmm (one for all input projections of the sequence, one per step for the
// recurrence); one kernel per step does all the gate arithmetic, one thread per (b, j) element, in float (or
// double) whatever the storage type, with no per-gate temporaries in global memory.
//
// Shapes (batch first): x (B, T, I), h0 (B, H), w_ih (3H, I), w_hh (3H, H), b_ih / b_hh (3H,) -> out (B, T, H).
#include <torch/extension.h>

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

namespace {

constexpr int kThreads = 256;

template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid_(acc_t v) {
  return acc_t(1) / (acc_t(1) + exp(-v));
}

// One step of the gates for all (b, j). xp: rows of 3H at stride sx (input projection, b_ih included); hp: (B, 3H)
// contiguous (recurrent projection, b_hh included); h: rows at stride sh; out: rows at stride so.
template <typename scalar_t>
__global__ void gru_gates_kernel(const scalar_t* __restrict__ xp, int64_t sx, const scalar_t* __restrict__ hp,
                                 const scalar_t* h, int64_t sh, scalar_t* out, int64_t so, int64_t B, int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_el = B * H;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n_el;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / H, j = i - b * H;
    const scalar_t* x = xp + b * sx;
    const scalar_t* g = hp + b * 3 * H;
    const acc_t r = sigmoid_<acc_t>(static_cast<acc_t>(x[j]) + static_cast<acc_t>(g[j]));
    const acc_t z = sigmoid_<acc_t>(static_cast<acc_t>(x[H + j]) + static_cast<acc_t>(g[H + j]));
    const acc_t n = tanh(static_cast<acc_t>(x[2 * H + j]) + r * static_cast<acc_t>(g[2 * H + j]));
    const acc_t hv = static_cast<acc_t>(h[b * sh + j]);
    out[b * so + j] = static_cast<scalar_t>((acc_t(1) - z) * n + z * hv);
  }
}

template <typename scalar_t>
void launch_gates(const scalar_t* xp, int64_t sx, const scalar_t* hp, const scalar_t* h, int64_t sh, scalar_t* out,
                  int64_t so, int64_t B, int64_t H, cudaStream_t stream) {
  const int64_t n_el = B * H;
  if (n_el == 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>((n_el + kThreads - 1) / kThreads, 65535));
  gru_gates_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(xp, sx, hp, h, sh, out, so, B, H);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_inputs(const at::Tensor& h, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih,
                  const at::Tensor& b_hh, int64_t I) {
  const int64_t H = w_hh.size(1);
  TORCH_CHECK(h.is_cuda() && w_ih.is_cuda() && w_hh.is_cuda() && b_ih.is_cuda() && b_hh.is_cuda(),
              "gru_cuda: all tensors must be on the GPU");
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == 3 * H && w_ih.size(1) == I, "w_ih must be (3H, I)");
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 3 * H, "w_hh must be (3H, H)");
  TORCH_CHECK(b_ih.numel() == 3 * H && b_hh.numel() == 3 * H, "biases must be (3H,)");
  TORCH_CHECK(h.dim() == 2 && h.size(1) == H, "h must be (B, H)");
}

// Forward over a sequence, no autograd: out (B, T, H).
at::Tensor gru_forward(const at::Tensor& x_in, const at::Tensor& h0_in, const at::Tensor& w_ih, const at::Tensor& w_hh,
                       const at::Tensor& b_ih, const at::Tensor& b_hh) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() == 3, "x must be a (B, T, I) CUDA tensor");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous(), h0 = h0_in.contiguous();
  const int64_t B = x.size(0), T = x.size(1), I = x.size(2), H = w_hh.size(1);
  check_inputs(h0, w_ih, w_hh, b_ih, b_hh, I);
  TORCH_CHECK(h0.size(0) == B, "h0 must be (B, H)");
  auto out = at::empty({B, T, H}, x.options());
  if (B == 0 || T == 0) return out;
  const auto xp = at::addmm(b_ih, x.view({B * T, I}), w_ih.t());  // (B*T, 3H): all input projections at once
  auto hp = at::empty({B, 3 * H}, x.options());
  const auto w_hh_t = w_hh.t();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gru_forward_cuda", [&] {
    const scalar_t* xpp = xp.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for (int64_t t = 0; t < T; ++t) {
      const at::Tensor h = t == 0 ? h0 : out.select(1, t - 1);  // rows T*H apart after the first step
      at::addmm_out(hp, b_hh, h, w_hh_t);                       // same stream: ordered before the kernel
      launch_gates<scalar_t>(xpp + t * 3 * H, T * 3 * H, hp.data_ptr<scalar_t>(),
                             t == 0 ? h0.data_ptr<scalar_t>() : op + (t - 1) * H, t == 0 ? H : T * H, op + t * H,
                             T * H, B, H, stream);
    }
  });
  return out;
}

// One step: h' (B, H) from x (B, I), or from its input projection (B, 3H) with b_ih included when `projected`.
at::Tensor gru_step(const at::Tensor& x_in, const at::Tensor& h_in, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const at::Tensor& b_ih, const at::Tensor& b_hh, bool projected) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() == 2, "x must be a (B, I) CUDA tensor");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto h = h_in.contiguous();
  const int64_t B = h.size(0), H = w_hh.size(1);
  check_inputs(h, w_ih, w_hh, b_ih, b_hh, w_ih.size(1));
  TORCH_CHECK(x_in.size(0) == B, "x and h need the same batch");
  at::Tensor xp;
  if (projected) {
    TORCH_CHECK(x_in.size(1) == 3 * H, "a projected x must be (B, 3H)");
    xp = x_in.contiguous();
  } else {
    TORCH_CHECK(x_in.size(1) == w_ih.size(1), "x must be (B, I)");
    xp = at::addmm(b_ih, x_in, w_ih.t());
  }
  const auto hp = at::addmm(b_hh, h, w_hh.t());
  auto out = at::empty({B, H}, h.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "gru_step_cuda", [&] {
    launch_gates<scalar_t>(xp.data_ptr<scalar_t>(), 3 * H, hp.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), H,
                           out.data_ptr<scalar_t>(), H, B, H, stream);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gru_forward", &gru_forward, "fused GRU layer forward (CUDA, no autograd): outputs (B, T, H)");
  m.def("gru_step", &gru_step, "fused GRU single step (CUDA, no autograd)");
}
