// bf16 GEMV driver: threads split the rows into contiguous ranges (each streams its part of W
// once); the ISA's row kernel computes float32 dots, stored in the output dtype.
#include <algorithm>

#include "common/check.h"
#include "common/cpu_isa.h"
#include "common/thread_pool.h"
#include "dense/dense.h"

namespace helexa::dense {
namespace {

RowsFn select_kernel() {
  switch (active_isa()) {
#if defined(HELEXA_X86)
    case Isa::avx512_vnni: {
      const RowsFn dot = avx512::rows_kernel_bf16dot();
      return dot != nullptr ? dot : avx512::rows_kernel();
    }
    case Isa::avx2: return avx2::rows_kernel();
#endif
    default: return generic::rows_kernel();
  }
}

MultiRowsFn select_multi_kernel() {
#if defined(HELEXA_X86)
  if (active_isa() == Isa::avx512_vnni) return avx512::multi_rows_kernel_bf16dot();
#endif
  return nullptr;
}

DecodeOps select_decode_ops() {
  switch (active_isa()) {
#if defined(HELEXA_X86)
    case Isa::avx512_vnni: return avx512::decode_ops();
    case Isa::avx2: return avx2::decode_ops();
#endif
    default: return generic::decode_ops();
  }
}

}  // namespace

void rms_norm_bf16_cpu(uint16_t* out, const uint16_t* x, const uint16_t* w, int64_t outer, int64_t inner, int64_t dim,
                       int64_t outer_stride, int64_t inner_stride, float eps) {
  HELEXA_CHECK(outer >= 0 && inner > 0 && dim > 0, "bad sizes: outer=", outer, " inner=", inner, " dim=", dim);
  HELEXA_CHECK(inner_stride >= dim && outer_stride >= inner * inner_stride, "rows overlap: outer_stride=",
               outer_stride, " inner_stride=", inner_stride, " dim=", dim);
  // Single-threaded on the caller: even a 512-token prefill is ~0.1 ms of work, and waking the
  // pool would set its threads spinning beside torch's matrix products.
  select_decode_ops().rms_norm(out, x, w, outer, inner, dim, outer_stride, inner_stride, eps);
}

void gemv_bf16_cpu(void* y, const uint16_t* x, const uint16_t* w, int64_t n, int64_t k, DType y_t) {
  HELEXA_CHECK(n >= 0 && k >= 0, "sizes must be >= 0, got n=", n, " k=", k);
  if (n == 0) return;
  const RowsFn kernel = select_kernel();
  constexpr int64_t kChunk = 64;
  parallel_for(n, 16, [&](int64_t r0, int64_t r1) {
    float buf[kChunk];
    for (int64_t r = r0; r < r1; r += kChunk) {
      const int64_t rows = std::min(kChunk, r1 - r);
      if (y_t == DType::f32) {
        kernel(w + r * k, k, rows, x, static_cast<float*>(y) + r);
      } else {
        kernel(w + r * k, k, rows, x, buf);
        store_from_f32(static_cast<uint8_t*>(y) + r * dtype_size(y_t), buf, rows, y_t);
      }
    }
  });
}

}  // namespace helexa::dense

namespace helexa::dense {

void matmul_bf16_cpu(void* y, const uint16_t* x, const uint16_t* w, int64_t m, int64_t n, int64_t k, DType y_t) {
  HELEXA_CHECK(m >= 0 && n >= 0 && k >= 0, "sizes must be >= 0, got m=", m, " n=", n, " k=", k);
  if (m == 0 || n == 0) return;
  const RowsFn kernel = select_kernel();
  const MultiRowsFn multi = select_multi_kernel();
  // Each thread takes a range of W's rows, 64 at a time. With a multi-row kernel every weight
  // vector meets all activation rows in registers; else the chunk comes from memory once, for the
  // first row, and from L2 for the others. Either way M rows cost about one pass over W.
  constexpr int64_t kChunk = 64, kRows = 16;
  const int64_t out_size = dtype_size(y_t);
  parallel_for(n, 16, [&](int64_t r0, int64_t r1) {
    float buf[kRows * kChunk];
    for (int64_t r = r0; r < r1; r += kChunk) {
      const int64_t rows = std::min(kChunk, r1 - r);
      for (int64_t j0 = 0; j0 < m; j0 += kRows) {
        const int64_t mm = std::min(kRows, m - j0);
        if (multi != nullptr) {
          multi(w + r * k, k, rows, x + j0 * k, mm, buf, kChunk);
        } else {
          for (int64_t j = 0; j < mm; ++j) kernel(w + r * k, k, rows, x + (j0 + j) * k, buf + j * kChunk);
        }
        for (int64_t j = 0; j < mm; ++j) {
          store_from_f32(static_cast<uint8_t*>(y) + ((j0 + j) * n + r) * out_size, buf + j * kChunk, rows, y_t);
        }
      }
    }
  });
}

}  // namespace helexa::dense
