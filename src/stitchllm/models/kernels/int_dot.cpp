// Matmuls with integer weights and integer dot products: y = x W^T for weights stored as 4-bit or 8-bit levels in
// groups of 32 inputs, with activations rounded to int8 per group of 32 on the way in (as llama.cpp does).
//
// Why a kernel: PyTorch's own weight-only kernels (aten._weight_int4pack_mm_for_cpu, _weight_int8pack_mm) turn
// every weight back into floats before multiplying; on 2 cores that, not memory, bounds a decode step
// (docs/BENCHMARKS.md: 13 GB/s). Here a group of 32 weights meets 32 int8 activations in one integer dot-product
// instruction (AVX512-VNNI or AVX-VNNI; two AVX2 instructions without them), and floats appear once per group.
//
// A weight is w = (level - offset) * scale + zero, with one scale and zero per row and group of 32:
//   - 4 bits: levels 0..15, offset 8; a group is 16 bytes, byte j holding level j (low nibble) and j + 16 (high);
//   - 8 bits: signed levels -127..127, offset 0; a group is 32 bytes in order.
// An activation is x ~ d * q with q in -127..127 and one d per row and group. Per output and group:
//   sum_i w_i x_i ~ scale * d * (sum_i level_i q_i - offset * sum_i q_i) + zero * sum_i x_i,
// the last sum exact. Registered as torch.ops.stitchllm_int_dot.int_dot_mm (built by models/cpu_kernels.py).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace {

constexpr int64_t kGroup = 32;
constexpr int64_t kRowTile = 4;  // activation rows that share one unpacked group of weights

// Activations [M, K] rounded to int8 per group: x ~ d * q.
struct Int8Rows {
  std::vector<int8_t> q;         // [M, K]
  std::vector<float> d;          // [M, K / kGroup]
  std::vector<float> level_sum;  // [M, K / kGroup]: d * sum(q), times a weight's offset gives its share
  std::vector<float> sum;        // [M, K / kGroup]: sum(x), exact, for the weights' zeros
};

Int8Rows quantize_rows(const float* x, int64_t M, int64_t K) {
  const int64_t groups = K / kGroup;
  Int8Rows r{std::vector<int8_t>(M * K), std::vector<float>(M * groups), std::vector<float>(M * groups),
             std::vector<float>(M * groups)};
  at::parallel_for(0, M * groups, 64, [&](int64_t begin, int64_t end) {
    for (int64_t mg = begin; mg < end; ++mg) {
      const float* xs = x + mg * kGroup;  // rows are contiguous, so group mg starts at mg * kGroup
      float amax = 0.f, sum = 0.f;
      for (int64_t i = 0; i < kGroup; ++i) {
        amax = std::max(amax, std::fabs(xs[i]));
        sum += xs[i];
      }
      const float d = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
      int32_t qsum = 0;
      for (int64_t i = 0; i < kGroup; ++i) {
        const int32_t q = static_cast<int32_t>(std::nearbyint(xs[i] * inv));
        r.q[mg * kGroup + i] = static_cast<int8_t>(q);
        qsum += q;
      }
      r.d[mg] = d;
      r.level_sum[mg] = d * static_cast<float>(qsum);
      r.sum[mg] = sum;
    }
  });
  return r;
}

#if defined(__AVX2__)
// 8 int32 partial sums of level_i * q_i over one group: `w` unsigned levels (4-bit) or `w` signed (8-bit, after the
// sign trick below moved the signs onto q), `q` signed activations.
inline __m256i dot_u8_s8(__m256i w, __m256i q) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, q);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, q);
#else
  // pairs of u8 x s8 products into int16 (at most 2 x 15 x 127 for 4-bit levels, 2 x 127 x 127 for 8-bit ones
  // after the sign trick: no saturation), then pairs of int16 into int32
  return _mm256_madd_epi16(_mm256_maddubs_epi16(w, q), _mm256_set1_epi16(1));
#endif
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 bf16 values as fp32 (bf16 is the top half of an fp32).
inline __m256 load_bf16x8(const c10::BFloat16* p) {
  const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}

// One group of weights as 32 bytes for dot_u8_s8, and the activations it meets (for 8-bit, signs moved over).
template <int Bits>
inline __m256i load_levels(const uint8_t* p) {
  if constexpr (Bits == 4) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);  // high lane: levels 16..31
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
  } else {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
}
#endif

constexpr int64_t kMaxGroups = 1024;  // K up to 32,768 inputs
constexpr int64_t kPrefetchBytes = 8192;  // how far ahead of the levels in use to fetch (128 cache lines)
constexpr int64_t kPrefetchRows = 4;  // and of the scales and zeros (a row's are 96 bytes for K = 1,536)

// y[m, n] for the Rows activation rows from m0 and the outputs [n0, n1).
//
// Per output, the terms that do not need the levels (zeros, offsets) are plain dot products over the groups,
// taken first; the loop over groups then carries only the integer dot products, into Unroll independent
// accumulators per row: with one, each group would wait for the previous group's multiply-add (a latency chain
// that ran the first version of this kernel at a third of PyTorch's speed on one row).
template <int Bits, int Rows>
void rows_times_weights(const Int8Rows& a, int64_t m0, const uint8_t* levels, const c10::BFloat16* scales,
                        const c10::BFloat16* zeros, int64_t K, int64_t n0, int64_t n1, float* y, int64_t N) {
  constexpr float offset = Bits == 4 ? 8.f : 0.f;
  constexpr int64_t group_bytes = kGroup * Bits / 8;
  constexpr int Unroll = Rows == 1 ? 4 : 2;
  const int64_t groups = K / kGroup;
  float s[kMaxGroups];
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w_row = levels + n * groups * group_bytes;
    const c10::BFloat16* s_row = scales + n * groups;
    const c10::BFloat16* z_row = zeros + n * groups;
    _mm_prefetch(reinterpret_cast<const char*>(s_row + kPrefetchRows * groups), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(z_row + kPrefetchRows * groups), _MM_HINT_T0);
    // exact[r] = sum_g zero_g * sum(x)_rg - offset * sum_g scale_g * d_rg * sum(q)_rg; the scales kept as fp32 in s
    float exact[Rows] = {};
    int64_t first = 0;  // groups from here on are taken one by one
#if defined(__AVX2__)
    __m256 zs[Rows], so[Rows];
    for (int r = 0; r < Rows; ++r) zs[r] = so[r] = _mm256_setzero_ps();
    for (; first + 8 <= groups; first += 8) {
      const __m256 sv = load_bf16x8(s_row + first), zv = load_bf16x8(z_row + first);
      _mm256_storeu_ps(s + first, sv);
      for (int r = 0; r < Rows; ++r) {
        const int64_t row = (m0 + r) * groups + first;
        zs[r] = _mm256_fmadd_ps(zv, _mm256_loadu_ps(a.sum.data() + row), zs[r]);
        so[r] = _mm256_fmadd_ps(sv, _mm256_loadu_ps(a.level_sum.data() + row), so[r]);
      }
    }
    for (int r = 0; r < Rows; ++r) exact[r] = hsum(zs[r]) - offset * hsum(so[r]);
#endif
    for (int64_t g = first; g < groups; ++g) {
      s[g] = static_cast<float>(s_row[g]);
      const float z = static_cast<float>(z_row[g]);
      for (int r = 0; r < Rows; ++r) {
        const int64_t row = (m0 + r) * groups + g;
        exact[r] += z * a.sum[row] - offset * s[g] * a.level_sum[row];
      }
    }
#if defined(__AVX2__)
    __m256 acc[Rows][Unroll];
    for (int r = 0; r < Rows; ++r)
      for (int u = 0; u < Unroll; ++u) acc[r][u] = _mm256_setzero_ps();
    // group g's levels . q for every row, scaled, into accumulator u of each row
    auto add_group = [&](int64_t g, int u) {
      const __m256i w = load_levels<Bits>(w_row + g * group_bytes);
      const __m256i w_abs = Bits == 8 ? _mm256_sign_epi8(w, w) : w;
      for (int r = 0; r < Rows; ++r) {
        const int64_t mg = (m0 + r) * groups + g;
        __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q.data() + mg * kGroup));
        if constexpr (Bits == 8) q = _mm256_sign_epi8(q, w);  // level * q = |level| * (q with level's sign)
        const __m256 dot = _mm256_cvtepi32_ps(dot_u8_s8(w_abs, q));
        acc[r][u] = _mm256_fmadd_ps(dot, _mm256_set1_ps(s[g] * a.d[mg]), acc[r][u]);
      }
    };
    int64_t g = 0;
    for (; g + Unroll <= groups; g += Unroll) {
      for (int u = 0; u < Unroll; ++u) {
        // the weights stream from memory once: ask for each cache line ahead of use, or it waits for its own trip
        if ((g + u) * group_bytes % 64 == 0)
          _mm_prefetch(reinterpret_cast<const char*>(w_row + (g + u) * group_bytes + kPrefetchBytes), _MM_HINT_T0);
        add_group(g + u, u);
      }
    }
    for (; g < groups; ++g) add_group(g, 0);  // the groups left over from the unrolled loop
    for (int r = 0; r < Rows; ++r) {
      __m256 total = acc[r][0];
      for (int u = 1; u < Unroll; ++u) total = _mm256_add_ps(total, acc[r][u]);
      y[(m0 + r) * N + n] = hsum(total) + exact[r];
    }
#else
    for (int r = 0; r < Rows; ++r) {
      float sum = exact[r];
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t mg = (m0 + r) * groups + g;
        const uint8_t* w = w_row + g * group_bytes;
        const int8_t* q = a.q.data() + mg * kGroup;
        int32_t dot = 0;
        for (int64_t i = 0; i < kGroup; ++i) {
          const int32_t level = Bits == 4 ? (i < 16 ? w[i] & 15 : w[i - 16] >> 4) : static_cast<int8_t>(w[i]);
          dot += level * q[i];
        }
        sum += s[g] * a.d[mg] * static_cast<float>(dot);
      }
      y[(m0 + r) * N + n] = sum;
    }
#endif
  }
}

template <int Bits>
void tile(const Int8Rows& a, int64_t m0, int64_t rows, const uint8_t* w, const c10::BFloat16* s,
          const c10::BFloat16* z, int64_t K, int64_t n0, int64_t n1, float* y, int64_t N) {
  switch (rows) {
    case 1: return rows_times_weights<Bits, 1>(a, m0, w, s, z, K, n0, n1, y, N);
    case 2: return rows_times_weights<Bits, 2>(a, m0, w, s, z, K, n0, n1, y, N);
    case 3: return rows_times_weights<Bits, 3>(a, m0, w, s, z, K, n0, n1, y, N);
    default: return rows_times_weights<Bits, 4>(a, m0, w, s, z, K, n0, n1, y, N);
  }
}

at::Tensor int_dot_mm(const at::Tensor& x, const at::Tensor& levels, const at::Tensor& scales,
                      const at::Tensor& zeros, int64_t bits) {
  TORCH_CHECK(bits == 4 || bits == 8, "int_dot_mm: bits must be 4 or 8");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "int_dot_mm: x must be [M, K] fp32");
  const int64_t M = x.size(0), K = x.size(1), N = levels.size(0);
  TORCH_CHECK(K % kGroup == 0 && K <= kGroup * kMaxGroups, "int_dot_mm: in_features must be a multiple of 32 "
              "(at most 32,768)");
  TORCH_CHECK(levels.scalar_type() == at::kByte && levels.is_contiguous() && levels.size(1) == K * bits / 8,
              "int_dot_mm: levels must be [N, K * bits / 8] uint8");
  TORCH_CHECK(scales.scalar_type() == at::kBFloat16 && zeros.scalar_type() == at::kBFloat16 &&
                  scales.is_contiguous() && zeros.is_contiguous() && scales.numel() == N * K / kGroup &&
                  zeros.numel() == N * K / kGroup,
              "int_dot_mm: scales and zeros must be [N, K / 32] bf16");
  at::Tensor y = at::empty({M, N}, x.options());
  const Int8Rows a = quantize_rows(x.data_ptr<float>(), M, K);
  const uint8_t* w = levels.data_ptr<uint8_t>();
  const auto* s = scales.data_ptr<c10::BFloat16>();
  const auto* z = zeros.data_ptr<c10::BFloat16>();
  float* out = y.data_ptr<float>();
  // outputs split across threads; every thread reads only its own rows of the weight, once per tile of activations
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < M; m0 += kRowTile) {
      const int64_t rows = std::min(kRowTile, M - m0);
      if (bits == 4)
        tile<4>(a, m0, rows, w, s, z, K, n0, n1, out, N);
      else
        tile<8>(a, m0, rows, w, s, z, K, n0, n1, out, N);
    }
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

TORCH_LIBRARY(stitchllm_int_dot, m) {
  m.def("int_dot_mm(Tensor x, Tensor levels, Tensor scales, Tensor zeros, int bits) -> Tensor");
  m.def("int_dot_isa() -> str", &int_dot_isa);  // no tensor to dispatch on: one kernel for every backend
}

TORCH_LIBRARY_IMPL(stitchllm_int_dot, CPU, m) { m.impl("int_dot_mm", int_dot_mm); }
