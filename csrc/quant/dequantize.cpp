// Block -> float32 dequantization of whole rows, bit for bit ggml's dequantize_row_* (and therefore
// gguf.quants.dequantize): the per-block math lives in quant/block_math.h, shared with the CUDA
// kernels (kernels/quant.cu); products are never fused (-ffp-contract=off for the whole module).
#include <vector>

#include "common/check.h"
#include "common/thread_pool.h"
#include "quant/block_math.h"
#include "quant/quant.h"
#include "quant/rows.h"
#include "quant/traits.h"

namespace helexa::quant {
namespace {

template <class Block>
void dequantize_row(const uint8_t* src, float* y, int64_t nblocks) {
  for (int64_t b = 0; b < nblocks; ++b, y += kBlockElems<Block>) {
    dequantize_block(reinterpret_cast<const Block*>(src + b * sizeof(Block)), y);
  }
}

}  // namespace

void dequantize_row_q4_0(const uint8_t* src, float* y, int64_t nb) { dequantize_row<BlockQ4_0>(src, y, nb); }
void dequantize_row_q4_1(const uint8_t* src, float* y, int64_t nb) { dequantize_row<BlockQ4_1>(src, y, nb); }
void dequantize_row_q5_0(const uint8_t* src, float* y, int64_t nb) { dequantize_row<BlockQ5_0>(src, y, nb); }
void dequantize_row_q5_1(const uint8_t* src, float* y, int64_t nb) { dequantize_row<BlockQ5_1>(src, y, nb); }
void dequantize_row_q8_0(const uint8_t* src, float* y, int64_t nb) { dequantize_row<BlockQ8_0>(src, y, nb); }
void dequantize_row_q2_k(const uint8_t* src, float* y, int64_t nb) { dequantize_row<BlockQ2_K>(src, y, nb); }
void dequantize_row_q3_k(const uint8_t* src, float* y, int64_t nb) { dequantize_row<BlockQ3_K>(src, y, nb); }
void dequantize_row_q4_k(const uint8_t* src, float* y, int64_t nb) { dequantize_row<BlockQ4_K>(src, y, nb); }
void dequantize_row_q5_k(const uint8_t* src, float* y, int64_t nb) { dequantize_row<BlockQ5_K>(src, y, nb); }
void dequantize_row_q6_k(const uint8_t* src, float* y, int64_t nb) { dequantize_row<BlockQ6_K>(src, y, nb); }
void dequantize_row_iq4_nl(const uint8_t* src, float* y, int64_t nb) { dequantize_row<BlockIQ4_NL>(src, y, nb); }
void dequantize_row_iq4_xs(const uint8_t* src, float* y, int64_t nb) { dequantize_row<BlockIQ4_XS>(src, y, nb); }

void dequantize_cpu(void* out, const uint8_t* w, int64_t rows, int64_t cols, QuantType t, DType out_t) {
  const QuantTraits& tr = quant_traits(t);
  HELEXA_CHECK(rows >= 0 && cols >= 0, "rows and cols must be >= 0, got ", rows, " x ", cols);
  HELEXA_CHECK(cols % tr.block_elems == 0, tr.name, ": row length ", cols,
               " is not a multiple of the block size ", tr.block_elems);
  const int64_t nb = cols / tr.block_elems;
  const int64_t row_bytes = nb * tr.block_bytes;
  const DequantizeRowFn fn = tr.dequantize_row;
  const int esize = dtype_size(out_t);
  parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> row;
    if (out_t != DType::f32) row.resize(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      auto* dst = static_cast<uint8_t*>(out) + r * cols * esize;
      if (out_t == DType::f32) {
        fn(w + r * row_bytes, reinterpret_cast<float*>(dst), nb);
      } else {
        fn(w + r * row_bytes, row.data(), nb);
        store_from_f32(dst, row.data(), cols, out_t);
      }
    }
  });
}

}  // namespace helexa::quant
