// Checks of CUDA runtime calls and kernel launches in host code (kernels/*.cu, bindings.cpp). A
// failure throws std::runtime_error (RuntimeError in Python) naming what failed and CUDA's reason.
// Only compiled into a CUDA build (HELEXA_WITH_CUDA).
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace helexa {

static inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
  }
}

// After a <<<...>>> launch: a bad configuration shows up here, not at the launch itself.
static inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

}  // namespace helexa
