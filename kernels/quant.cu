// CUDA kernels of the quant family. The block formats (quant/blocks.h) and their per-block math
// (quant/block_math.h) are the CPU's own headers compiled for the device, so the two devices agree
// bit for bit; CMakeLists.txt compiles this file with -fmad=false to keep products unfused.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/check.h"
#include "common/cuda_check.h"
#include "common/dtype.h"
#include "quant/block_math.h"
#include "quant/quant_cuda.h"
#include "quant/traits.h"

namespace helexa::quant {
namespace {

constexpr int kDequantizeThreads = 128;

// One thread per block: block b of the flattened [rows, cols / block_elems] grid of blocks holds
// output elements [b * E, (b + 1) * E), because rows of blocks and rows of values are both dense.
template <class Block, DType OutT>
__global__ void dequantize_kernel(void* out, const uint8_t* w, int64_t nblocks) {
  constexpr int E = kBlockElems<Block>;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= nblocks) return;
  const auto* blk = reinterpret_cast<const Block*>(w + b * static_cast<int64_t>(sizeof(Block)));
  if constexpr (OutT == DType::f32) {
    dequantize_block(blk, static_cast<float*>(out) + b * E);
  } else {
    float y[E];
    dequantize_block(blk, y);
    uint16_t* dst = static_cast<uint16_t*>(out) + b * E;
    for (int i = 0; i < E; ++i) dst[i] = OutT == DType::f16 ? fp32_to_fp16(y[i]) : fp32_to_bf16(y[i]);
  }
}

// Calls f(Block{}) for the block struct of type t: the one switch from the run-time QuantType to
// the compile-time block type that the kernel templates need.
template <class F>
void with_block_type(QuantType t, F&& f) {
  switch (t) {
    case QuantType::q4_0: return f(BlockQ4_0{});
    case QuantType::q4_1: return f(BlockQ4_1{});
    case QuantType::q5_0: return f(BlockQ5_0{});
    case QuantType::q5_1: return f(BlockQ5_1{});
    case QuantType::q8_0: return f(BlockQ8_0{});
    case QuantType::q2_k: return f(BlockQ2_K{});
    case QuantType::q3_k: return f(BlockQ3_K{});
    case QuantType::q4_k: return f(BlockQ4_K{});
    case QuantType::q5_k: return f(BlockQ5_K{});
    case QuantType::q6_k: return f(BlockQ6_K{});
    case QuantType::iq4_nl: return f(BlockIQ4_NL{});
    case QuantType::iq4_xs: return f(BlockIQ4_XS{});
  }
  fail_argument("dequantize_cuda: no CUDA kernel for quant type ", static_cast<int>(t));
}

}  // namespace

void dequantize_cuda(void* out, const uint8_t* w, int64_t rows, int64_t cols, QuantType t, DType out_t,
                     cudaStream_t stream) {
  const QuantTraits& tr = quant_traits(t);
  HELEXA_CHECK(rows >= 0 && cols >= 0, "rows and cols must be >= 0, got ", rows, " x ", cols);
  HELEXA_CHECK(cols % tr.block_elems == 0, tr.name, ": row length ", cols,
               " is not a multiple of the block size ", tr.block_elems);
  HELEXA_CHECK(out_t == DType::f32 || out_t == DType::f16 || out_t == DType::bf16, "unknown output dtype ",
               static_cast<int>(out_t));
  // Block structs hold uint16_t fields (alignof 2) and every block size is even: the device reads
  // them as such, so the first block must sit on an even address (an odd byte offset would fault).
  HELEXA_CHECK(reinterpret_cast<uintptr_t>(w) % 2 == 0, "dequantize_cuda: w must be 2-byte aligned, got address ",
               static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(w)));
  const int64_t nblocks = rows * (cols / tr.block_elems);
  if (nblocks == 0) return;
  const int64_t grid = (nblocks + kDequantizeThreads - 1) / kDequantizeThreads;
  HELEXA_CHECK(grid <= 0x7fffffff, "dequantize_cuda: ", nblocks, " blocks are too many for one launch");
  with_block_type(t, [&](auto block) {
    using Block = decltype(block);
    const dim3 g(static_cast<unsigned>(grid)), b(kDequantizeThreads);
    switch (out_t) {
      case DType::f32: dequantize_kernel<Block, DType::f32><<<g, b, 0, stream>>>(out, w, nblocks); break;
      case DType::f16: dequantize_kernel<Block, DType::f16><<<g, b, 0, stream>>>(out, w, nblocks); break;
      case DType::bf16: dequantize_kernel<Block, DType::bf16><<<g, b, 0, stream>>>(out, w, nblocks); break;
    }
  });
  check_launch("dequantize_kernel");
}

}  // namespace helexa::quant
