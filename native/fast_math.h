// Shared float math for the native kernels (header-only, included by the .cpp sources beside it).
#pragma once

#include <cstdint>

namespace ds_native {

// exp for float without branches, so the gate loops vectorise (std::exp does not without -ffast-math):
// 2^k * p(r) with r = x - k ln 2 in [-ln2 / 2, ln2 / 2] (ln 2 split in two for an exact product) and p the
// degree-7 Taylor polynomial; at most 7e-8 relative error over [-87, 88], where the input is clamped (beyond it
// sigmoid and tanh are 0, 1 or -1 to float precision anyway). Needs -fno-trapping-math to if-convert the clamps.
__attribute__((always_inline)) inline float exp_fast(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23 trick)
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * __builtin_bit_cast(float, (static_cast<int32_t>(k) + 127) << 23);
}

}  // namespace ds_native
