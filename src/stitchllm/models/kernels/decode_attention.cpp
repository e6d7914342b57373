// Decode attention on CPU: every sequence brings one new token and attends over its own cached keys.
//
// Why a kernel: PyTorch's SDPA reads every sequence's keys up to the longest context in the batch (masked) and
// runs tiny per-head matrix products (G query rows of one key head); on 2 cores that took ~2.4 ms a layer at
// 128 sequences. Here each (sequence, key head) reads only its own keys once, for all G query heads that share
// them, with loops the compiler vectorises for the machine it is built on.
//
// Registered as torch.ops.stitchllm.decode_attention (built and loaded by models/decode_kernel.py).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

struct Strides {
  int64_t q_seq, q_head;           // q [N, H, D]
  int64_t slot, kv_head, position;  // caches [slots, KV, max_len, D]
};

// One (sequence, key head): the G query rows at q attend over keys/values k, v ([len, D] rows `position`
// apart); their outputs go to out (G rows of D). scores is scratch of at least G * len floats.
template <int G>
void attend(const float* q, int64_t q_head, const float* k, const float* v, int64_t position, int64_t len,
            int64_t D, float scale, float* scores, float* out, int64_t out_head) {
  // scores[g][l] = q_g . k_l * scale: each key row is loaded once for all G queries
  for (int64_t l = 0; l < len; ++l) {
    const float* key = k + l * position;
    float dot[G] = {};
#pragma omp simd reduction(+ : dot[:G])
    for (int64_t d = 0; d < D; ++d)
      for (int g = 0; g < G; ++g) dot[g] += q[g * q_head + d] * key[d];
    for (int g = 0; g < G; ++g) scores[g * len + l] = dot[g] * scale;
  }
  // softmax over each query's row, normalised after the weighted sum
  float inv_sum[G];
  for (int g = 0; g < G; ++g) {
    float* s = scores + g * len;
    float mx = s[0];  // len >= 1; not -INFINITY, which -ffast-math assumes never occurs
    for (int64_t l = 1; l < len; ++l) mx = std::max(mx, s[l]);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t l = 0; l < len; ++l) {
      s[l] = std::exp(s[l] - mx);
      sum += s[l];
    }
    inv_sum[g] = 1.f / sum;
  }
  // out_g = sum_l p[g][l] v_l: each value row is loaded once for all G queries
  for (int g = 0; g < G; ++g) std::fill(out + g * out_head, out + g * out_head + D, 0.f);
  for (int64_t l = 0; l < len; ++l) {
    const float* value = v + l * position;
    for (int g = 0; g < G; ++g) {
      const float p = scores[g * len + l];
      float* o = out + g * out_head;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] += p * value[d];
    }
  }
  for (int g = 0; g < G; ++g) {
    float* o = out + g * out_head;
    for (int64_t d = 0; d < D; ++d) o[d] *= inv_sum[g];
  }
}

template <int G>
void run(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const int64_t* slots,
         const int64_t* lengths, float scale, at::Tensor& out) {
  const int64_t N = q.size(0), D = q.size(2), KV = k_cache.size(1);
  const Strides s{q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2)};
  const float* qp = q.data_ptr<float>();
  const float* kp = k_cache.data_ptr<float>();
  const float* vp = v_cache.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t max_len = *std::max_element(lengths, lengths + N);
  at::parallel_for(0, N * KV, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(G * max_len);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t n = unit / KV, h = unit % KV;
      const int64_t cache = slots[n] * s.slot + h * s.kv_head;
      attend<G>(qp + n * s.q_seq + h * G * s.q_head, s.q_head, kp + cache, vp + cache, s.position, lengths[n],
                D, scale, scores.data(), op + (n * KV + h) * G * D, D);
    }
  });
}

// q [N, H, D] (last dim contiguous); k_cache, v_cache [slots, KV, max_len, D] with the same strides;
// slots, lengths [N] int64: each sequence's cache slot and context length (its new token included, already
// written to the cache). Returns [N, H, D].
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& slots, const at::Tensor& lengths, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes() &&
                  k_cache.strides() == v_cache.strides(), "decode_attention: bad shapes");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k_cache.scalar_type() == at::kFloat &&
                  v_cache.scalar_type() == at::kFloat, "decode_attention: float32 only");
  TORCH_CHECK(q.stride(2) == 1 && k_cache.stride(3) == 1, "decode_attention: head dim must be contiguous");
  TORCH_CHECK(q.size(1) % k_cache.size(1) == 0 && q.size(2) == k_cache.size(3), "decode_attention: head mismatch");
  const at::Tensor slot_ids = slots.to(at::kLong).contiguous(), lens = lengths.to(at::kLong).contiguous();
  TORCH_CHECK(slot_ids.numel() == q.size(0) && lens.numel() == q.size(0), "decode_attention: one slot per row");
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  if (q.size(0) == 0) return out;
  const int64_t* sp = slot_ids.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  for (int64_t n = 0; n < q.size(0); ++n)
    TORCH_CHECK(sp[n] >= 0 && sp[n] < k_cache.size(0) && lp[n] >= 1 && lp[n] <= k_cache.size(2),
                "decode_attention: slot or length out of range");
  const float sc = static_cast<float>(scale);
  switch (q.size(1) / k_cache.size(1)) {  // query heads per key head, fixed at compile time for the hot loops
    case 1: run<1>(q, k_cache, v_cache, sp, lp, sc, out); break;
    case 2: run<2>(q, k_cache, v_cache, sp, lp, sc, out); break;
    case 3: run<3>(q, k_cache, v_cache, sp, lp, sc, out); break;
    case 4: run<4>(q, k_cache, v_cache, sp, lp, sc, out); break;
    case 5: run<5>(q, k_cache, v_cache, sp, lp, sc, out); break;
    case 6: run<6>(q, k_cache, v_cache, sp, lp, sc, out); break;
    case 7: run<7>(q, k_cache, v_cache, sp, lp, sc, out); break;
    case 8: run<8>(q, k_cache, v_cache, sp, lp, sc, out); break;
    default: TORCH_CHECK(false, "decode_attention: at most 8 query heads per key head");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(stitchllm, m) {
  m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor lengths, float scale)"
        " -> Tensor");
}

TORCH_LIBRARY_IMPL(stitchllm, CPU, m) { m.impl("decode_attention", &decode_attention); }
