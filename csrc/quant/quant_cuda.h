// CUDA entry points of the quant family (kernels/quant.cu), declared for bindings.cpp. Like the CPU
// ones (quant/quant.h) they take raw device addresses of caller-owned memory, never allocate, and
// throw std::invalid_argument for bad arguments; they enqueue work on `stream` and return without
// waiting for it. Only part of a CUDA build (HELEXA_WITH_CUDA).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"
#include "quant/blocks.h"

namespace helexa::quant {

// out[rows, cols] (type out_t, on the device) = the values of `rows` rows of ggml blocks at w (on
// the device), bit for bit what dequantize_cpu writes.
void dequantize_cuda(void* out, const uint8_t* w, int64_t rows, int64_t cols, QuantType t, DType out_t,
                     cudaStream_t stream);

}  // namespace helexa::quant
