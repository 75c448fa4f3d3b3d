// The trait table of the quant family (ggml's type_traits): the one place a block type is listed.
// Each row holds what the rest of the code needs to know about one type: its name and sizes, the
// activation block its dot product uses, the fp16 scale fields, its row dequantizer and reference
// quantizer, and one GEMV kernel per ISA. The GEMV columns are filled in by the ISA translation
// units themselves (gemv_kernels() in each ISA namespace), so adding a kernel never touches a
// central switch. Python reads the table through _C.quant_types().
#pragma once

#include <cstdint>

#include "quant/blocks.h"
#include "quant/kernels.h"

namespace helexa::quant {

// float32 y[nblocks * block_elems] = the values of `nblocks` consecutive blocks.
using DequantizeRowFn = void (*)(const uint8_t* blocks, float* y, int64_t nblocks);
// `nblocks` blocks from float32 x[nblocks * block_elems] (ggml's reference algorithm).
using QuantizeRowFn = void (*)(const float* x, uint8_t* blocks, int64_t nblocks);

constexpr int kIsaColumns = 3;      // one per common/cpu_isa.h Isa value: generic, avx2, avx512_vnni
constexpr int kMaxScaleFields = 2;  // fp16 fields per block (d, and dmin / m for affine formats)

struct QuantTraits {
  QuantType type;
  const char* name;
  int block_elems;
  int block_bytes;
  int act_block;                      // elements per int8 activation scale of this type's dot product
  int scale_fields;                   // how many fp16 scale fields a block has
  int scale_offsets[kMaxScaleFields];  // their byte offsets (offsetof into the block struct)
  DequantizeRowFn dequantize_row;
  QuantizeRowFn quantize_row;  // nullptr where ggml has no reference quantizer
  GemvFn gemv[kIsaColumns];    // nullptr where that ISA has no kernel (or was not built)
};

int quant_type_count();
const QuantTraits& quant_traits_at(int index);  // 0 <= index < quant_type_count()
const QuantTraits* find_quant_traits(QuantType t);  // nullptr for a type the table does not hold
const QuantTraits& quant_traits(QuantType t);  // throws std::invalid_argument for an unknown type

}  // namespace helexa::quant
