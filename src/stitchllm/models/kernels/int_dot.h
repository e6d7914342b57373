// What kernels/int_dot.cpp (the vector dot-product kernel) and kernels/int_dot_amx.cpp (AMX tiles for batches)
// share: the weights as both read them (layout: see int_dot.cpp) and the AMX entry points.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>

#include <cstdint>

namespace stitchllm_int_dot {

constexpr int64_t kGroup = 32;  // inputs that share one activation scale, and one weight scale and zero (4 bits)
constexpr int64_t kBlock = 8;   // outputs interleaved in one 256-bit vector

// The weights and output of one matmul, as the kernels read them.
struct Weights {
  const uint8_t* levels;        // [N/8, K/32, 32 * bits]
  const c10::BFloat16* scales;  // 4 bits: [N/8, K/32, 8]
  const c10::BFloat16* zeros;   // 4 bits: [N/8, K/32, 8]
  const float* row_scales;      // 8 bits: [N/8 * 8]
  int64_t K, N;
};

// AMX tiles (kernels/int_dot_amx.cpp): whether this build has them and the OS lets this process use them.
bool amx_ready();
constexpr int64_t kAmxRows = 16;  // activation rows in one tile
// y [M, N] = x W^T for x [M, K] fp32 on AMX tiles; only where amx_ready().
void amx_matmul(const at::Tensor& x, const Weights& wt, int64_t bits, float* y);

}  // namespace stitchllm_int_dot
