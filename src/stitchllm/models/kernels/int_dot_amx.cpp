// The integer kernel's batches on AMX tiles (Intel AMX-BF16), where the CPU and the OS have them.
//
// Why: with 16 or more activation rows a matmul is bound by multiply-adds, not by reading weights, and one AMX
// instruction (tdpbf16ps) does 16 x 16 x 32 of them where an AVX512-VNNI one does 8 x 4 (docs/BENCHMARKS.md).
// A single decode row stays on the vector kernel (int_dot.cpp): it streams the weights, which tiles do not speed up.
//
// The weights stay 4- or 8-bit in memory, in the vector kernel's layout (one copy). A thread takes a panel of 16
// outputs (two blocks of 8) at a time and de-quantises its levels, group by group, into B tiles of bf16 in its
// cache: 16 rows of 64 bytes, row r = inputs 2r and 2r + 1 of the 16 outputs, side by side (the pairs tdpbf16ps
// reads). The activations are rounded to bf16 once per matmul. Then for up to 4 tiles of 16 rows at a time, the
// products of every group accumulate in fp32 tiles, read out once at the end.
//
// Why bf16 and not AMX-INT8 on the levels themselves (measured, session 29): every group of 32 inputs has its own
// weight scale and activation scale, so int32 tiles have to be read out and scaled after every group. That, not
// the tiles, bounded an int8 version at 1.5x the vector kernel at 64 rows; de-quantising into bf16 tiles lets the
// products of a whole row of weights accumulate in the tiles.
// The price: weights and activations are rounded to bf16 (at most 2^-9 relative each, as with --matmul-dtype
// bfloat16; ~2.4e-3 relative a matmul against fp32, where the vector kernel's int8 activations give ~5e-3).

#include "int_dot.h"

#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <immintrin.h>

#include <algorithm>
#include <vector>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include <sys/syscall.h>
#include <unistd.h>

namespace stitchllm_int_dot {
namespace {

constexpr int64_t kPanel = 2 * kBlock;         // outputs in one tile of results: 16 fp32 a row
constexpr int64_t kTileValues = kGroup * kPanel;  // one group's B tile: 16 rows of 16 pairs of bf16
constexpr int kRowTiles = 4;                   // tiles of activation rows that share one B tile
constexpr int64_t kChunkBytes = 1 << 20;       // bf16 activation rows kept in a core's L2 (2 MB here) at a time

// Linux hands AMX state to a process only on request (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA).
bool request_amx() {
  constexpr int kReqXcompPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
}

// ldtilecfg's 64-byte palette 1. Every tile is 16 rows of 64 bytes: 0-3 accumulate C (16 x 16 fp32) for up to 4
// tiles of rows, 4-5 hold B (two groups in flight), 6-7 A (16 rows x 32 bf16).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.rows[t] = kAmxRows, cfg.bytes_per_row[t] = 64;
  // GCC 12 does not see ldtilecfg read the shapes and drops their stores without this barrier
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// Lanes (j, t) of 4 inputs t of outputs j = first..first + 3: a value per output, repeated for its 4 inputs.
inline __m512 per_output(__m512 eight, int first) {
  const __m512i idx = _mm512_add_epi32(_mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4,
                                                                          3, 2, 1, 0), 2),
                                       _mm512_set1_epi32(first));
  return _mm512_permutexvar_ps(idx, eight);
}

// 32 levels (8 outputs x 4 inputs, byte 4j + t) as bf16 weights level * scale + bias, in the same order.
inline __m512i dequantize_step(__m256i levels, const __m512 scale[2], const __m512 bias[2]) {
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(levels)));
  const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(levels, 1)));
  return reinterpret_cast<__m512i>(
      _mm512_cvtne2ps_pbh(_mm512_fmadd_ps(hi, scale[1], bias[1]), _mm512_fmadd_ps(lo, scale[0], bias[0])));
}

// Panel p's weights (its two blocks; the second may lie past N: zeros, whose outputs are never stored) as bf16 B
// tiles [groups][16 rows][16 outputs][2 inputs] in `b`.
template <int Bits>
void dequantize_panel(const Weights& wt, int64_t p, std::vector<uint16_t>& b) {
  constexpr int64_t group_bytes = kBlock * kGroup * Bits / 8;
  const int64_t groups = wt.K / kGroup, blocks = (wt.N + kBlock - 1) / kBlock;
  b.resize(groups * kTileValues);  // every value is written below
  // a step's 32 bf16 as 16 dwords (j, pair): pair 0 (inputs 4s, 4s + 1) of output j in dword 2j, pair 1 in 2j + 1
  const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
  const __m256i low = _mm256_set1_epi8(0x0F);
  for (int64_t g = 0; g < groups; ++g) {
    __m512i steps[2][8];  // [block][step]: the step's 32 weights in bf16
    for (int64_t half = 0; half < 2; ++half) {
      const int64_t block = 2 * p + half;
      if (block >= blocks) {
        for (auto& s : steps[half]) s = _mm512_setzero_si512();
        continue;
      }
      const uint8_t* w = wt.levels + (block * groups + g) * group_bytes;
      __m512 eight_scales, eight_bias;  // per output of the block: w = level * scale + bias
      if constexpr (Bits == 4) {
        const int64_t sg = (block * groups + g) * kBlock;
        auto bf16x8 = [](const c10::BFloat16* v) {
          const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v));
          return _mm512_castps256_ps512(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16)));
        };
        eight_scales = bf16x8(wt.scales + sg);
        eight_bias = _mm512_fnmadd_ps(eight_scales, _mm512_set1_ps(8.f), bf16x8(wt.zeros + sg));  // zero - 8 scale
      } else {
        eight_scales = _mm512_castps256_ps512(_mm256_loadu_ps(wt.row_scales + block * kBlock));
        eight_bias = _mm512_mul_ps(eight_scales, _mm512_set1_ps(-128.f));  // stored level + 128
      }
      const __m512 scale[2] = {per_output(eight_scales, 0), per_output(eight_scales, 4)};
      const __m512 bias[2] = {per_output(eight_bias, 0), per_output(eight_bias, 4)};
      for (int s = 0; s < 8; ++s) {
        __m256i levels;
        if constexpr (Bits == 4) {  // chunk c: step c in the low nibbles, step c + 4 in the high
          const __m256i chunk = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * (s & 3)));
          levels = _mm256_and_si256(s < 4 ? chunk : _mm256_srli_epi16(chunk, 4), low);
        } else {
          levels = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * s));
        }
        steps[half][s] = dequantize_step(levels, scale, bias);
      }
    }
    uint16_t* tile = b.data() + g * kTileValues;  // row r at tile + 32 r
    for (int s = 0; s < 8; ++s) {
      _mm512_storeu_si512(tile + 32 * (2 * s), _mm512_permutex2var_epi32(steps[0][s], evens, steps[1][s]));
      _mm512_storeu_si512(tile + 32 * (2 * s + 1), _mm512_permutex2var_epi32(steps[0][s], odds, steps[1][s]));
    }
  }
}

// One group's products for Tiles tiles of rows: B into tile 4 (or 5 for SecondB), A alternating between tiles 6
// and 7. GCC pastes a tile's number into the instruction, so it has to be a literal: hence the branches.
template <int Tiles, bool SecondB>
inline void group_products(const uint16_t* a, int64_t K, const uint16_t* b) {
#define STITCHLLM_TILE_DOT(C, A) \
  if constexpr (SecondB) _tile_dpbf16ps(C, A, 5); else _tile_dpbf16ps(C, A, 4)
  if constexpr (SecondB) _tile_loadd(5, b, 64); else _tile_loadd(4, b, 64);
  _tile_loadd(6, a, 2 * K);
  STITCHLLM_TILE_DOT(0, 6);
  if constexpr (Tiles > 1) {
    _tile_loadd(7, a + kAmxRows * K, 2 * K);
    STITCHLLM_TILE_DOT(1, 7);
  }
  if constexpr (Tiles > 2) {
    _tile_loadd(6, a + 2 * kAmxRows * K, 2 * K);
    STITCHLLM_TILE_DOT(2, 6);
  }
  if constexpr (Tiles > 3) {
    _tile_loadd(7, a + 3 * kAmxRows * K, 2 * K);
    STITCHLLM_TILE_DOT(3, 7);
  }
#undef STITCHLLM_TILE_DOT
}

// c [Tiles * 16, 16] = the Tiles * 16 activation rows from `a` (bf16 [., K]) times a panel's B tiles.
template <int Tiles>
void rows_times_panel(const uint16_t* a, int64_t K, const uint16_t* b, float* c) {
  const int64_t groups = K / kGroup;
  _tile_zero(0);
  if constexpr (Tiles > 1) _tile_zero(1);
  if constexpr (Tiles > 2) _tile_zero(2);
  if constexpr (Tiles > 3) _tile_zero(3);
  int64_t g = 0;
  for (; g + 1 < groups; g += 2) {  // two groups at a time: their B tiles load while the other one multiplies
    group_products<Tiles, false>(a + g * kGroup, K, b + g * kTileValues);
    group_products<Tiles, true>(a + (g + 1) * kGroup, K, b + (g + 1) * kTileValues);
  }
  if (g < groups) group_products<Tiles, false>(a + g * kGroup, K, b + g * kTileValues);
  constexpr int64_t stride = kPanel * sizeof(float);
  _tile_stored(0, c, stride);
  if constexpr (Tiles > 1) _tile_stored(1, c + kAmxRows * kPanel, stride);
  if constexpr (Tiles > 2) _tile_stored(2, c + 2 * kAmxRows * kPanel, stride);
  if constexpr (Tiles > 3) _tile_stored(3, c + 3 * kAmxRows * kPanel, stride);
  asm volatile("" : : "r"(c) : "memory");  // the tiles wrote c behind the compiler's back
}

template <int Bits>
void panels_times_rows(const uint16_t* a, int64_t M, const Weights& wt, int64_t p0, int64_t p1, float* y) {
  configure_tiles();  // the tile configuration is per thread
  const int64_t K = wt.K, padded = (M + kAmxRows - 1) / kAmxRows * kAmxRows;
  std::vector<uint16_t> b;
  alignas(64) float c[kRowTiles * kAmxRows * kPanel];
  for (int64_t p = p0; p < p1; ++p) {
    dequantize_panel<Bits>(wt, p, b);  // once, then from cache for every tile of rows
    asm volatile("" : : "r"(b.data()) : "memory");  // ... by tile loads, which the compiler does not see read it
    const int64_t n0 = p * kPanel, n_valid = std::min(kPanel, wt.N - n0);
    const __mmask16 valid = static_cast<__mmask16>((1u << n_valid) - 1);
    for (int64_t m0 = 0; m0 < padded; m0 += kRowTiles * kAmxRows) {
      const uint16_t* rows = a + m0 * K;
      switch (std::min<int64_t>(kRowTiles, (padded - m0) / kAmxRows)) {
        case 1: rows_times_panel<1>(rows, K, b.data(), c); break;
        case 2: rows_times_panel<2>(rows, K, b.data(), c); break;
        case 3: rows_times_panel<3>(rows, K, b.data(), c); break;
        default: rows_times_panel<4>(rows, K, b.data(), c); break;
      }
      for (int64_t r = 0; r < std::min(kRowTiles * kAmxRows, M - m0); ++r)
        _mm512_mask_storeu_ps(y + (m0 + r) * wt.N + n0, valid, _mm512_load_ps(c + r * kPanel));
    }
  }
  _tile_release();
}

}  // namespace

bool amx_ready() {
  static const bool ready = request_amx();
  return ready;
}

void amx_matmul(const at::Tensor& x, const Weights& wt, int64_t bits, float* y) {
  TORCH_CHECK(amx_ready(), "int_dot_mm: AMX tiles are not available here");
  const int64_t M = x.size(0), padded = (M + kAmxRows - 1) / kAmxRows * kAmxRows;
  at::Tensor a = at::zeros({padded, wt.K}, x.options().dtype(at::kBFloat16));  // rows past M stay zero
  a.narrow(0, 0, M).copy_(x);
  const uint16_t* rows = reinterpret_cast<const uint16_t*>(a.data_ptr<at::BFloat16>());
  const int64_t blocks = (wt.N + kBlock - 1) / kBlock, panels = (blocks + 1) / 2;
  // Rows in chunks whose bf16 activations stay in a core's L2 while every panel of the weight passes over them
  // (each chunk de-quantises the weight again): unchunked, ffn down's 8,960 inputs were re-read from L3 for every
  // 16 outputs, and 512 rows ran at 719 GFLOP/s against 851 for 64.
  const int64_t chunk = std::clamp<int64_t>(kChunkBytes / (2 * wt.K) / 64 * 64, 64, 512);
  for (int64_t m0 = 0; m0 < M; m0 += chunk) {
    const int64_t m = std::min(chunk, M - m0);
    // panels of outputs split across threads: every thread de-quantises and reads only its own part of the weight
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      if (bits == 4)
        panels_times_rows<4>(rows + m0 * wt.K, m, wt, p0, p1, y + m0 * wt.N);
      else
        panels_times_rows<8>(rows + m0 * wt.K, m, wt, p0, p1, y + m0 * wt.N);
    });
  }
}

}  // namespace stitchllm_int_dot

#else  // built without AMX-BF16: the vector kernel serves every batch

namespace stitchllm_int_dot {

bool amx_ready() { return false; }

void amx_matmul(const at::Tensor&, const Weights&, int64_t, float*) {
  TORCH_CHECK(false, "int_dot_mm: this build has no AMX tiles");
}

}  // namespace stitchllm_int_dot

#endif
