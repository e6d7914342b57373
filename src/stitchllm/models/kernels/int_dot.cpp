// Matmuls with integer weights and integer dot products: y = x W^T for weights stored as 4-bit or 8-bit levels,
// with activations rounded to int8 per group of 32 inputs on the way in (as llama.cpp does).
//
// Why a kernel: PyTorch's own weight-only kernels (aten._weight_int4pack_mm_for_cpu, _weight_int8pack_mm) turn
// every weight back into floats before multiplying; on 2 cores that, not memory, bounds a decode step
// (docs/BENCHMARKS.md). Here weights meet int8 activations in integer dot-product instructions (AVX512-VNNI or
// AVX-VNNI; two AVX2 instructions without them), and floats appear once per group of 32 inputs.
//
// Layout: outputs in blocks of 8, interleaved so that one 256-bit vector holds 4 consecutive inputs of each of the
// block's 8 outputs (byte 4j + t: output j, input t). A dot-product instruction then adds 4 products into each
// output's own int32 lane, against the same 4 activations broadcast to every lane: no horizontal sums, and one
// unpacked vector of weights serves every activation row of a tile. For block b and group g of 32 inputs, the 8
// vectors of inputs 4s..4s+3 (s = 0..7) are stored as
//   - 4 bits: 128 bytes, 4 chunks of 32: chunk p holds vector p in its low nibbles and vector p + 4 in its high;
//   - 8 bits: 256 bytes, the 8 vectors in order, each level stored + 128 (unsigned).
// A weight is w = (level - offset) * scale + zero:
//   - 4 bits: levels 0..15, offset 8, a bf16 scale and zero per output and group ([N/8, K/32, 8] each);
//   - 8 bits: levels -127..127 stored as level + 128 (offset 128), one fp32 scale per output ([N/8 * 8]), no zero.
// An activation is x ~ d * q with q in -127..127 and one d per row and group. Per output and group:
//   sum_i w_i x_i ~ scale * d * (sum_i stored_i q_i - offset * sum_i q_i) + zero * sum_i x_i,
// the last sum exact. Registered as torch.ops.stitchllm_int_dot.int_dot_mm (built by models/cpu_kernels.py).
// Batches of kAmxMinRows rows or more go to AMX tiles instead, where the CPU and the OS have them
// (kernels/int_dot_amx.cpp: the same weights, de-quantised into bf16 tiles in cache).

#include "int_dot.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace stitchllm_int_dot {

namespace {

constexpr int64_t kRowTile = 4;   // activation rows that share one unpacked group of weights
constexpr int64_t kPrefetchBytes = 8192;  // how far ahead of the levels in use to fetch while streaming them
// From this many rows (one tile) a matmul goes to AMX tiles where there are some (kernels/int_dot_amx.cpp): at 16
// rows the tiles win by 10-20% on the family's shapes, at 12 they lose by 7-20% (benchmarks/weight_formats.py,
// session 29).
constexpr int64_t kAmxMinRows = kAmxRows;

// Activations [M, K] rounded to int8 per group: x ~ d * q.
struct Int8Rows {
  std::vector<int8_t> q;       // [M, K]
  std::vector<float> d;        // [M, K / kGroup]
  std::vector<int32_t> qsum;   // [M, K / kGroup]: sum(q), times a weight's offset gives its share
  std::vector<float> sum;      // [M, K / kGroup]: sum(x), exact, for the weights' zeros
};

Int8Rows quantize_rows(const float* x, int64_t M, int64_t K) {
  const int64_t groups = K / kGroup;
  Int8Rows r{std::vector<int8_t>(M * K), std::vector<float>(M * groups), std::vector<int32_t>(M * groups),
             std::vector<float>(M * groups)};
  at::parallel_for(0, M * groups, 64, [&](int64_t begin, int64_t end) {
    for (int64_t mg = begin; mg < end; ++mg) {
      const float* xs = x + mg * kGroup;  // rows are contiguous, so group mg starts at mg * kGroup
      float amax = 0.f, sum = 0.f;
      for (int64_t i = 0; i < kGroup; ++i) {
        amax = std::max(amax, std::fabs(xs[i]));
        sum += xs[i];
      }
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      int32_t qsum = 0;
      for (int64_t i = 0; i < kGroup; ++i) {
        const int32_t q = static_cast<int32_t>(std::nearbyint(xs[i] * inv));
        r.q[mg * kGroup + i] = static_cast<int8_t>(q);
        qsum += q;
      }
      r.d[mg] = amax / 127.f;
      r.qsum[mg] = qsum;
      r.sum[mg] = sum;
    }
  });
  return r;
}

#if defined(__AVX2__)
// acc + per lane the sum of 4 products stored_i * q_i: `w` unsigned, `q` signed (4 activations in every lane).
inline __m256i dot_add(__m256i acc, __m256i w, __m256i q) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, w, q);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, w, q);
#else
  // pairs of u8 x s8 products into int16, then pairs of int16 into int32. At most 2 x 15 x 127 for 4-bit levels;
  // 8-bit ones would saturate (2 x 255 x 127), so rows_times_block hands those over as |level| and sign-moved q.
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, q), _mm256_set1_epi16(1)));
#endif
}

#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
constexpr bool kVnni = true;
#else
constexpr bool kVnni = false;
#endif

// 8 bf16 values as fp32 (bf16 is the top half of an fp32).
inline __m256 load_bf16x8(const c10::BFloat16* p) {
  const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}

// Group g of block `w` (its levels start at `w`) as 8 vectors of stored levels, vector s for inputs 4s..4s+3.
template <int Bits>
inline void unpack_group(const uint8_t* w, __m256i v[8]) {
  if constexpr (Bits == 4) {
    const __m256i low = _mm256_set1_epi8(0x0F);
    for (int p = 0; p < 4; ++p) {
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * p));
      v[p] = _mm256_and_si256(c, low);
      v[p + 4] = _mm256_and_si256(_mm256_srli_epi16(c, 4), low);
    }
  } else {
    for (int s = 0; s < 8; ++s) v[s] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * s));
  }
}

// y for the Rows activation rows from m0 and the 8 outputs of block b (n_valid of them real).
template <int Bits, int Rows>
void rows_times_block(const Int8Rows& a, int64_t m0, const Weights& wt, int64_t b, float* y) {
  constexpr int64_t group_bytes = kBlock * kGroup * Bits / 8;  // a block's group
  // without VNNI, 8-bit levels go back to signed (offset 0) for the sign trick
  constexpr int32_t offset = Bits == 4 ? 8 : (kVnni ? 128 : 0);
  const int64_t K = wt.K, groups = K / kGroup;
  const uint8_t* w_block = wt.levels + b * groups * group_bytes;
  __m256 acc[Rows];
  for (int r = 0; r < Rows; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* w = w_block + g * group_bytes;
    if constexpr (Rows == 1) {  // one row streams the weights from memory: fetch ahead of use
      for (int64_t line = 0; line < group_bytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchBytes + line), _MM_HINT_T0);
    }
    __m256i v[8];
    unpack_group<Bits>(w, v);
    if constexpr (Bits == 8 && !kVnni) {
      for (int s = 0; s < 8; ++s) v[s] = _mm256_xor_si256(v[s], _mm256_set1_epi8(static_cast<char>(0x80)));
    }
    // two accumulators per row, so that each waits on its own multiply-adds only
    __m256i dot[Rows][2];
    for (int r = 0; r < Rows; ++r) dot[r][0] = dot[r][1] = _mm256_setzero_si256();
    for (int s = 0; s < 8; ++s) {
      const __m256i w_s = Bits == 8 && !kVnni ? _mm256_sign_epi8(v[s], v[s]) : v[s];  // |level|
      for (int r = 0; r < Rows; ++r) {
        int32_t four;
        std::memcpy(&four, a.q.data() + (m0 + r) * K + g * kGroup + 4 * s, 4);
        __m256i q = _mm256_set1_epi32(four);
        if constexpr (Bits == 8 && !kVnni) q = _mm256_sign_epi8(q, v[s]);  // level * q = |level| * (q, level's sign)
        dot[r][s & 1] = dot_add(dot[r][s & 1], w_s, q);
      }
    }
    // the group's scales and zeros for the block's 8 outputs, read once for every row of the tile
    const int64_t sg = (b * groups + g) * kBlock;
    const __m256 scale = Bits == 4 ? load_bf16x8(wt.scales + sg) : _mm256_setzero_ps();
    const __m256 zero = Bits == 4 ? load_bf16x8(wt.zeros + sg) : _mm256_setzero_ps();
    for (int r = 0; r < Rows; ++r) {
      const int64_t mg = (m0 + r) * groups + g;
      __m256i total = _mm256_add_epi32(dot[r][0], dot[r][1]);
      if constexpr (offset != 0) total = _mm256_sub_epi32(total, _mm256_set1_epi32(offset * a.qsum[mg]));
      const __m256 d = _mm256_set1_ps(a.d[mg]);
      if constexpr (Bits == 4) {
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(scale, d), acc[r]);
        acc[r] = _mm256_fmadd_ps(zero, _mm256_set1_ps(a.sum[mg]), acc[r]);
      } else {
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), d, acc[r]);
      }
    }
  }
  const int64_t n0 = b * kBlock, n_valid = std::min(kBlock, wt.N - n0);
  for (int r = 0; r < Rows; ++r) {
    if constexpr (Bits == 8) acc[r] = _mm256_mul_ps(acc[r], _mm256_loadu_ps(wt.row_scales + n0));
    float out[kBlock];
    _mm256_storeu_ps(out, acc[r]);
    std::memcpy(y + (m0 + r) * wt.N + n0, out, n_valid * sizeof(float));
  }
}
#else
// Without AVX2: the same arithmetic one product at a time (correctness only; `gguf` does not choose it).
template <int Bits, int Rows>
void rows_times_block(const Int8Rows& a, int64_t m0, const Weights& wt, int64_t b, float* y) {
  constexpr int64_t group_bytes = kBlock * kGroup * Bits / 8;  // a block's group
  const int64_t K = wt.K, groups = K / kGroup, n0 = b * kBlock, n_valid = std::min(kBlock, wt.N - n0);
  for (int r = 0; r < Rows; ++r) {
    for (int64_t j = 0; j < n_valid; ++j) {
      float sum = 0.f;
      for (int64_t g = 0; g < groups; ++g) {
        const uint8_t* w = wt.levels + (b * groups + g) * group_bytes;
        const int64_t mg = (m0 + r) * groups + g, sg = (b * groups + g) * kBlock + j;
        int32_t dot = 0;
        for (int64_t i = 0; i < kGroup; ++i) {
          const int64_t s = i / 4, byte = 4 * j + i % 4;
          const int32_t stored = Bits == 4 ? (s < 4 ? w[32 * s + byte] & 15 : w[32 * (s - 4) + byte] >> 4)
                                           : w[32 * s + byte];
          dot += (stored - (Bits == 4 ? 8 : 128)) * a.q[(m0 + r) * K + g * kGroup + i];
        }
        sum += Bits == 4 ? static_cast<float>(wt.scales[sg]) * a.d[mg] * dot +
                               static_cast<float>(wt.zeros[sg]) * a.sum[mg]
                         : a.d[mg] * dot;
      }
      y[(m0 + r) * wt.N + n0 + j] = Bits == 4 ? sum : sum * wt.row_scales[n0 + j];
    }
  }
}
#endif

template <int Bits>
void rows_times_blocks(const Int8Rows& a, int64_t M, const Weights& wt, int64_t b0, int64_t b1, float* y) {
  // block by block, every row tile in turn: a block's levels are read from memory once, then from cache
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t m0 = 0; m0 < M; m0 += kRowTile) {
      switch (std::min(kRowTile, M - m0)) {
        case 1: rows_times_block<Bits, 1>(a, m0, wt, b, y); break;
        case 2: rows_times_block<Bits, 2>(a, m0, wt, b, y); break;
        case 3: rows_times_block<Bits, 3>(a, m0, wt, b, y); break;
        default: rows_times_block<Bits, 4>(a, m0, wt, b, y); break;
      }
    }
  }
}

at::Tensor int_dot_mm(const at::Tensor& x, const at::Tensor& levels, const at::Tensor& scales,
                      const at::Tensor& zeros, int64_t bits, int64_t n, bool amx) {
  TORCH_CHECK(bits == 4 || bits == 8, "int_dot_mm: bits must be 4 or 8");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "int_dot_mm: x must be [M, K] fp32");
  const int64_t M = x.size(0), K = x.size(1), blocks = (n + kBlock - 1) / kBlock;
  TORCH_CHECK(K % kGroup == 0 && K > 0, "int_dot_mm: in_features must be a positive multiple of 32");
  TORCH_CHECK(levels.scalar_type() == at::kByte && levels.is_contiguous() && levels.dim() == 2 &&
                  levels.size(0) == blocks && levels.size(1) == K * bits,
              "int_dot_mm: levels must be [ceil(N / 8), K * bits] uint8");
  if (bits == 4) {
    TORCH_CHECK(scales.scalar_type() == at::kBFloat16 && zeros.scalar_type() == at::kBFloat16 &&
                    scales.is_contiguous() && zeros.is_contiguous() && scales.numel() == blocks * K / kGroup * kBlock &&
                    zeros.numel() == scales.numel(),
                "int_dot_mm: 4-bit scales and zeros must be [ceil(N / 8), K / 32, 8] bf16");
  } else {
    TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() == blocks * kBlock,
                "int_dot_mm: 8-bit scales must be [ceil(N / 8) * 8] fp32");
  }
  at::Tensor y = at::empty({M, n}, x.options());
  Weights wt{levels.data_ptr<uint8_t>(), nullptr, nullptr, nullptr, K, n};
  if (bits == 4) {
    wt.scales = scales.data_ptr<c10::BFloat16>();
    wt.zeros = zeros.data_ptr<c10::BFloat16>();
  } else {
    wt.row_scales = scales.data_ptr<float>();
  }
  float* out = y.data_ptr<float>();
  if (amx && M >= kAmxMinRows && amx_ready()) {
    amx_matmul(x, wt, bits, out);
    return y;
  }
  const Int8Rows a = quantize_rows(x.data_ptr<float>(), M, K);
  // blocks of outputs split across threads: every thread reads only its own part of the weight, once
  at::parallel_for(0, blocks, 4, [&](int64_t b0, int64_t b1) {
    if (bits == 4)
      rows_times_blocks<4>(a, M, wt, b0, b1, out);
    else
      rows_times_blocks<8>(a, M, wt, b0, b1, out);
  });
  return y;
}

// Which dot product this build uses: how `auto` knows whether the kernel is worth choosing on this CPU.
std::string int_dot_isa() {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return "avx512-vnni";
#elif defined(__AVXVNNI__)
  return "avx-vnni";
#elif defined(__AVX2__)
  return "avx2";
#else
  return "scalar";
#endif
}

}  // namespace
}  // namespace stitchllm_int_dot

TORCH_LIBRARY(stitchllm_int_dot, m) {
  // amx=False keeps a batch on the vector kernel, to compare the two
  m.def("int_dot_mm(Tensor x, Tensor levels, Tensor scales, Tensor zeros, int bits, int n, bool amx=True) -> Tensor");
  // no tensor to dispatch on: one kernel for every backend
  m.def("int_dot_isa() -> str", &stitchllm_int_dot::int_dot_isa);
  m.def("int_dot_amx() -> bool", &stitchllm_int_dot::amx_ready);
}

TORCH_LIBRARY_IMPL(stitchllm_int_dot, CPU, m) { m.impl("int_dot_mm", stitchllm_int_dot::int_dot_mm); }
