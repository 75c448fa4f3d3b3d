// HELEXA_HD marks a function that compiles as host and device code: __host__ __device__ under nvcc,
// nothing for the host compiler. Headers that define block formats and their per-block math use it,
// so the CPU and CUDA kernels share one definition (quant/blocks.h, quant/block_math.h).
#pragma once

#if defined(__CUDACC__)
#define HELEXA_HD __host__ __device__
#else
#define HELEXA_HD
#endif
