// Host-side argument checks shared by the CPU (ctc_loss.cpp) and CUDA (ctc_cuda.cu) CTC kernels.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cstdint>

namespace ds_native {

// Lengths and labels moved to the CPU as int64, validated, and each utterance's offset into the flat targets.
struct CtcTargets {
  at::Tensor input_lengths;   // (B,) int64, CPU
  at::Tensor target_lengths;  // (B,) int64, CPU
  at::Tensor targets;         // padded (B, S_max) or concatenated (sum L_b,), int64, CPU
  at::Tensor offsets;         // (B,) int64, CPU: where utterance b's labels start in targets' storage
  int64_t max_target = 0;
};

// logits (T, B, V); targets (B, S_max) padded or (sum L_b,) concatenated; lengths (B,). Raises on any
// inconsistency: lengths out of range, labels out of [0, V) or equal to the blank.
inline CtcTargets check_ctc_targets(const at::Tensor& targets_in, const at::Tensor& input_lengths_in,
                                    const at::Tensor& target_lengths_in, int64_t T, int64_t B, int64_t V,
                                    int64_t blank) {
  TORCH_CHECK(blank >= 0 && blank < V, "blank out of range");
  CtcTargets r;
  r.input_lengths = input_lengths_in.to(at::kCPU, at::kLong).contiguous();
  r.target_lengths = target_lengths_in.to(at::kCPU, at::kLong).contiguous();
  r.targets = targets_in.to(at::kCPU, at::kLong).contiguous();
  TORCH_CHECK(r.input_lengths.numel() == B && r.target_lengths.numel() == B, "need B input and target lengths");
  const int64_t* il = r.input_lengths.data_ptr<int64_t>();
  const int64_t* tl = r.target_lengths.data_ptr<int64_t>();
  r.offsets = at::empty({B}, r.input_lengths.options());
  int64_t* off = r.offsets.data_ptr<int64_t>();
  const bool padded = r.targets.dim() == 2;
  int64_t total = 0;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(il[b] >= 0 && il[b] <= T, "input length out of range");
    TORCH_CHECK(tl[b] >= 0, "negative target length");
    off[b] = padded ? b * r.targets.size(1) : total;
    if (padded) TORCH_CHECK(tl[b] <= r.targets.size(1), "target length exceeds padded targets");
    total += tl[b];
    r.max_target = std::max(r.max_target, tl[b]);
  }
  if (!padded) TORCH_CHECK(total <= r.targets.numel(), "concatenated targets shorter than their lengths");
  const int64_t* tg = r.targets.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < tl[b]; ++k) {
      const int64_t c = tg[off[b] + k];
      TORCH_CHECK(c >= 0 && c < V && c != blank, "target label out of range or blank");
    }
  return r;
}

}  // namespace ds_native
