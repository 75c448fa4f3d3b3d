// Element types of tensors crossing the native boundary, and exact conversions between them.
// fp16 and bf16 values travel as uint16_t bit patterns; every float -> half conversion rounds to
// nearest even, as torch and numpy do, so results compare bit for bit. The scalar conversions are
// HELEXA_HD: CUDA kernels use these same functions, so both devices round alike.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/hd.h"

namespace helexa {

enum class DType : int32_t { f32 = 0, f16 = 1, bf16 = 2 };

static inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
  }
  return "?";
}

HELEXA_HD static inline int dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }

HELEXA_HD static inline uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

HELEXA_HD static inline float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// IEEE binary16 -> binary32, exact for every input (subnormals, inf, nan included).
HELEXA_HD static inline float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal half: normalise the mantissa into a binary32 normal number.
    int e = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (static_cast<uint32_t>(e) << 23) | ((mant & 0x3ffu) << 13);
  }
  return bits_float(bits);
}

// binary32 -> binary16, round to nearest even; overflow goes to inf, nan stays nan.
HELEXA_HD static inline uint16_t fp32_to_fp16(float f) {
  uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  if (u >= 0x47800000u) {  // |f| >= 65536, inf or nan
    return static_cast<uint16_t>(sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u));
  }
  if (u < 0x38800000u) {  // result is subnormal or zero: let the FPU round the shifted value
    const float magic = bits_float(0x3f000000u);  // 0.5 = 2^-1: aligns 2^-24 to the last bit
    const uint32_t r = float_bits(bits_float(u) + magic) - 0x3f000000u;
    return static_cast<uint16_t>(sign | r);
  }
  const uint32_t odd = (u >> 13) & 1u;
  u += 0xc8000fffu + odd;  // rebias exponent (-112 << 23) and add the rounding increment
  return static_cast<uint16_t>(sign | (u >> 13));
}

HELEXA_HD static inline float bf16_to_fp32(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

HELEXA_HD static inline uint16_t fp32_to_bf16(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Loads element i of a float tensor of type t as binary32.
static inline float load_as_f32(const void* base, int64_t i, DType t) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(base)[i];
    case DType::f16: return fp16_to_fp32(static_cast<const uint16_t*>(base)[i]);
    case DType::bf16: return bf16_to_fp32(static_cast<const uint16_t*>(base)[i]);
  }
  return 0.0f;
}

// Stores n binary32 values into a tensor of type t starting at element 0 of dst.
static inline void store_from_f32(void* dst, const float* src, int64_t n, DType t) {
  switch (t) {
    case DType::f32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::f16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_fp16(src[i]);
      return;
    }
    case DType::bf16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = fp32_to_bf16(src[i]);
      return;
    }
  }
}

}  // namespace helexa
