// y = x @ W^T with W in ggml blocks: quantize the activations to int8 once, then stream the
// weight rows through the ISA's integer dot kernel. Threads split the rows into contiguous
// ranges (each thread streams its own part of W once); inside a range, rows go in L2-sized
// chunks and each chunk meets up to kMaxCols activation columns per pass, so a prefill reuses
// every weight byte it loads.
#include <algorithm>
#include <vector>

#include "common/check.h"
#include "common/cpu_isa.h"
#include "common/thread_pool.h"
#include "quant/kernels.h"
#include "quant/quant.h"
#include "quant/traits.h"

namespace helexa::quant {
namespace {

constexpr int64_t kChunkBytes = 256 * 1024;  // weight bytes per row chunk: stays in L2

struct Kernels {
  GemvFn gemv;
  ActQuantFn quantize;
};

ActQuantFn activation_quantizer(Isa isa) {
  switch (isa) {
#if defined(HELEXA_X86)
    case Isa::avx512_vnni: return avx512::quantize_activation;
    case Isa::avx2: return avx2::quantize_activation;
#endif
    default: return generic::quantize_activation;
  }
}

// The GEMV of the ISA in use, or of the best lesser ISA that has one for this type (the generic
// column is complete: tests/unit/neuron/ops/test_quant.py holds every column to it).
Kernels select_kernels(const QuantTraits& tr) {
  for (int i = static_cast<int>(active_isa()); i >= 0; --i) {
    if (tr.gemv[i] != nullptr) return {tr.gemv[i], activation_quantizer(static_cast<Isa>(i))};
  }
  HELEXA_CHECK(false, tr.name, ": no GEMV kernel was built for this type");
  return {nullptr, nullptr};
}

const QuantTraits& check_shapes(int64_t m, int64_t n, int64_t k, QuantType t) {
  const QuantTraits& tr = quant_traits(t);
  HELEXA_CHECK(m >= 0 && n >= 0 && k >= 0, "sizes must be >= 0, got m=", m, " n=", n, " k=", k);
  HELEXA_CHECK(k % tr.block_elems == 0, tr.name, ": K = ", k, " is not a multiple of the block size ",
               tr.block_elems);
  return tr;
}

}  // namespace

int64_t qmatmul_workspace_bytes(int64_t m, int64_t k, QuantType t) {
  return m * act_column_bytes(k, check_shapes(m, 0, k, t).act_block);
}

void qmatmul_cpu(void* y, const void* x, const uint8_t* w, uint8_t* workspace, int64_t m, int64_t n,
                 int64_t k, QuantType t, DType xt) {
  const QuantTraits& tr = check_shapes(m, n, k, t);
  HELEXA_CHECK(reinterpret_cast<uintptr_t>(workspace) % 64 == 0, "workspace must be 64-byte aligned");
  if (m == 0 || n == 0) return;
  const int64_t col_bytes = act_column_bytes(k, tr.act_block);
  const int esize = dtype_size(xt);
  const Kernels kernels = select_kernels(tr);
  const GemvFn gemv = kernels.gemv;

  parallel_for(m, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      kernels.quantize(static_cast<const uint8_t*>(x) + c * k * esize, xt, k, tr.act_block,
                          workspace + c * col_bytes);
    }
  });
  std::vector<ActView> acts(static_cast<size_t>(m));
  for (int64_t c = 0; c < m; ++c) acts[c] = act_view(workspace + c * col_bytes, k, tr.act_block);

  const int64_t nb = k / tr.block_elems;
  const int64_t row_bytes = nb * tr.block_bytes;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(n, kChunkBytes / std::max<int64_t>(row_bytes, 1)));
  parallel_for(n, 4, [&](int64_t r0, int64_t r1) {
    std::vector<float> staging;
    if (xt != DType::f32) staging.resize(static_cast<size_t>(chunk * kMaxCols));
    for (int64_t r = r0; r < r1; r += chunk) {
      const int64_t rows = std::min(chunk, r1 - r);
      for (int64_t c = 0; c < m; c += kMaxCols) {
        const int nc = static_cast<int>(std::min<int64_t>(kMaxCols, m - c));
        if (xt == DType::f32) {
          gemv(w + r * row_bytes, row_bytes, rows, nb, acts.data() + c, nc, static_cast<float*>(y) + c * n + r, n);
        } else {
          gemv(w + r * row_bytes, row_bytes, rows, nb, acts.data() + c, nc, staging.data(), rows);
          for (int j = 0; j < nc; ++j) {
            store_from_f32(static_cast<uint8_t*>(y) + ((c + j) * n + r) * esize, staging.data() + j * rows, rows, xt);
          }
        }
      }
    }
  });
}

}  // namespace helexa::quant
