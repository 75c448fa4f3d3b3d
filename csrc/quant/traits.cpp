// The trait table (quant/traits.h). The rows below are the only list of supported types; the GEMV
// columns come from the ISA translation units, each registering the kernels it has.
#include "quant/traits.h"

#include <cstddef>

#include "common/check.h"
#include "common/cpu_isa.h"
#include "quant/rows.h"

namespace helexa::quant {
namespace {

static_assert(static_cast<int>(Isa::avx512_vnni) + 1 == kIsaColumns, "one GEMV column per Isa value");

// name, block elements, block bytes, activation block, fp16 fields, dequantize, quantize.
const QuantTraits kRows[] = {
    {QuantType::q4_0, "q4_0", 32, sizeof(BlockQ4_0), 32, 1, {offsetof(BlockQ4_0, d)},
     dequantize_row_q4_0, quantize_row_q4_0, {}},
    {QuantType::q4_1, "q4_1", 32, sizeof(BlockQ4_1), 32, 2, {offsetof(BlockQ4_1, d), offsetof(BlockQ4_1, m)},
     dequantize_row_q4_1, quantize_row_q4_1, {}},
    {QuantType::q5_0, "q5_0", 32, sizeof(BlockQ5_0), 32, 1, {offsetof(BlockQ5_0, d)},
     dequantize_row_q5_0, quantize_row_q5_0, {}},
    {QuantType::q5_1, "q5_1", 32, sizeof(BlockQ5_1), 32, 2, {offsetof(BlockQ5_1, d), offsetof(BlockQ5_1, m)},
     dequantize_row_q5_1, quantize_row_q5_1, {}},
    {QuantType::q8_0, "q8_0", 32, sizeof(BlockQ8_0), 32, 1, {offsetof(BlockQ8_0, d)},
     dequantize_row_q8_0, quantize_row_q8_0, {}},
    {QuantType::q2_k, "q2_k", kQK, sizeof(BlockQ2_K), kQK, 2, {offsetof(BlockQ2_K, d), offsetof(BlockQ2_K, dmin)},
     dequantize_row_q2_k, quantize_row_q2_k, {}},
    {QuantType::q3_k, "q3_k", kQK, sizeof(BlockQ3_K), kQK, 1, {offsetof(BlockQ3_K, d)},
     dequantize_row_q3_k, quantize_row_q3_k, {}},
    {QuantType::q4_k, "q4_k", kQK, sizeof(BlockQ4_K), kQK, 2,
     {offsetof(BlockQ4_K, d), offsetof(BlockQ4_K, dmin)}, dequantize_row_q4_k, quantize_row_q4_k, {}},
    {QuantType::q5_k, "q5_k", kQK, sizeof(BlockQ5_K), kQK, 2,
     {offsetof(BlockQ5_K, d), offsetof(BlockQ5_K, dmin)}, dequantize_row_q5_k, quantize_row_q5_k, {}},
    {QuantType::q6_k, "q6_k", kQK, sizeof(BlockQ6_K), kQK, 1, {offsetof(BlockQ6_K, d)},
     dequantize_row_q6_k, quantize_row_q6_k, {}},
    {QuantType::iq4_nl, "iq4_nl", 32, sizeof(BlockIQ4_NL), 32, 1, {offsetof(BlockIQ4_NL, d)},
     dequantize_row_iq4_nl, quantize_row_iq4_nl, {}},
    {QuantType::iq4_xs, "iq4_xs", kQK, sizeof(BlockIQ4_XS), kQK, 1, {offsetof(BlockIQ4_XS, d)},
     dequantize_row_iq4_xs, quantize_row_iq4_xs, {}},
};
constexpr int kCount = static_cast<int>(sizeof(kRows) / sizeof(kRows[0]));

struct Table {
  QuantTraits rows[kCount];
};

void fill_column(Table& t, Isa isa, GemvColumn column) {
  for (int i = 0; i < column.count; ++i) {
    const GemvKernel& k = column.kernels[i];
    bool found = false;
    for (QuantTraits& row : t.rows) {
      if (row.type == k.type) {
        row.gemv[static_cast<int>(isa)] = k.gemv;
        found = true;
      }
    }
    // A kernel for a type the table lacks is a build error in spirit; fail loudly at first use.
    HELEXA_CHECK(found, isa_name(isa), " registers a GEMV for quant type ", static_cast<int>(k.type),
                 " which the trait table does not hold");
  }
}

Table build_table() {
  Table t;
  for (int i = 0; i < kCount; ++i) t.rows[i] = kRows[i];
  fill_column(t, Isa::generic, generic::gemv_kernels());
#if defined(HELEXA_X86)
  fill_column(t, Isa::avx2, avx2::gemv_kernels());
  fill_column(t, Isa::avx512_vnni, avx512::gemv_kernels());
#endif
  return t;
}

const Table& table() {
  static const Table t = build_table();
  return t;
}

}  // namespace

int quant_type_count() { return kCount; }

const QuantTraits& quant_traits_at(int index) {
  HELEXA_CHECK(index >= 0 && index < kCount, "quant type index ", index, " is out of range [0, ", kCount, ")");
  return table().rows[index];
}

const QuantTraits* find_quant_traits(QuantType t) {
  for (const QuantTraits& row : table().rows) {
    if (row.type == t) return &row;
  }
  return nullptr;
}

const QuantTraits& quant_traits(QuantType t) {
  const QuantTraits* row = find_quant_traits(t);
  HELEXA_CHECK(row != nullptr, "unknown quant type ", static_cast<int>(t));
  return *row;
}

}  // namespace helexa::quant
