// GGUF / ggml block formats, defined once and shared by the CPU and CUDA code.
// Fields are little-endian; fp16 scales are stored as uint16_t and read with load_half(), which
// also copes with the 2-byte alignment of 18-, 34- and 210-byte blocks.
// Byte layouts: ggml-common.h (see bench/README.md for the anchors).
//
// Functions in the shared headers are `static`: every ISA translation unit (compiled with its own
// -m flags) keeps a private copy, so the linker can never hand generic code an AVX-512 build of
// an inline helper. They are also HELEXA_HD (common/hd.h): kernels/*.cu include this header and
// read blocks with the very same helpers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "common/dtype.h"
#include "common/hd.h"

namespace helexa::quant {

// Values are ggml's type ids, so a GGUF tensor's type maps to ours without a table. Which types
// are supported, and everything known about each, is the trait table's business (quant/traits.h).
enum class QuantType : int32_t {
  q4_0 = 2,
  q4_1 = 3,
  q5_0 = 6,
  q5_1 = 7,
  q8_0 = 8,
  q2_k = 10,
  q3_k = 11,
  q4_k = 12,
  q5_k = 13,
  q6_k = 14,
  iq4_nl = 20,
  iq4_xs = 23,
};

constexpr int kQK = 256;  // elements of a K-quant super-block

struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[16];  // element j: low nibble of qs[j]; element j+16: high nibble
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block must be 18 bytes");

struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;      // value = d * q + m
  uint8_t qs[16];  // as Q4_0
};
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block must be 20 bytes");

struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];   // bit j of the little-endian word is the fifth bit of element j
  uint8_t qs[16];  // low four bits, as Q4_0; value = d * (q - 16)
};
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block must be 22 bytes");

struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;      // value = d * q + m
  uint8_t qh[4];   // as Q5_0
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block must be 24 bytes");

struct BlockIQ4_NL {
  uint16_t d;
  uint8_t qs[16];  // nibbles as Q4_0, each an index into kIq4nlValues; value = d * kIq4nlValues[q]
};
static_assert(sizeof(BlockIQ4_NL) == 18, "IQ4_NL block must be 18 bytes");

struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[32];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block must be 34 bytes");

struct BlockQ2_K {
  uint8_t scales[16];  // per 16 elements: low nibble scale, high nibble min
  uint8_t qs[64];      // 128-element half h, quadrant s: element 128h + 32s + l at bits 2s of qs[32h + l]
  uint16_t d;
  uint16_t dmin;  // value = d * scale * q - dmin * min, q in 0..3
};
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K block must be 84 bytes");

struct BlockQ3_K {
  uint8_t hmask[32];   // element 128h + 32s + l: bit 4h + s of hmask[l] set means q has no -4 offset
  uint8_t qs[64];      // low two bits, as Q2_K
  uint8_t scales[12];  // sixteen 6-bit scales (offset 32), packed: unpack_q3k_scales
  uint16_t d;
};
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K block must be 110 bytes");

struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];  // 8 six-bit scales and 8 six-bit mins, packed
  uint8_t qs[128];     // 64-element group g: qs[32g + l], low nibble = element l, high = l + 32
};
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block must be 144 bytes");

struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[32];   // bit e/32 of qh[e % 32] is the fifth bit of element e
  uint8_t qs[128];  // low four bits, as Q4_K
};
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block must be 176 bytes");

struct BlockQ6_K {
  uint8_t ql[128];    // low four bits
  uint8_t qh[64];     // high two bits
  int8_t scales[16];  // one signed scale per 16 elements
  uint16_t d;
};
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block must be 210 bytes");

struct BlockIQ4_XS {
  uint16_t d;
  uint16_t scales_h;   // bits 2j, 2j+1: high two bits of the 6-bit scale of sub-block j (offset 32)
  uint8_t scales_l[4];  // low four bits of those scales, two sub-blocks per byte (low nibble first)
  uint8_t qs[128];     // 32-element sub-block j: qs[16j + l], as IQ4_NL
};
static_assert(sizeof(BlockIQ4_XS) == 136, "IQ4_XS block must be 136 bytes");

// The sixteen non-linear levels of IQ4_NL and IQ4_XS (ggml's kvalues_iq4nl), written once here.
// Host code indexes kIq4nlValues (the SIMD kernels load it as a vector); device code cannot index a
// namespace-scope host array, so nvcc's device pass gets a __constant__ copy of the same list, and
// iq4nl_value() reads whichever one the code being compiled can see.
#define HELEXA_IQ4NL_LEVELS {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}
alignas(16) static const int8_t kIq4nlValues[16] = HELEXA_IQ4NL_LEVELS;
#if defined(__CUDACC__)
static __constant__ int8_t kIq4nlValuesDevice[16] = HELEXA_IQ4NL_LEVELS;
#endif

// The IQ4_NL level of nibble q (0..15).
HELEXA_HD static inline int8_t iq4nl_value(int q) {
#if defined(__CUDA_ARCH__)
  return kIq4nlValuesDevice[q];
#else
  return kIq4nlValues[q];
#endif
}

HELEXA_HD static inline float load_half(const void* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_fp32(h);
}

HELEXA_HD static inline void store_half(void* p, float f) {
  const uint16_t h = fp32_to_fp16(f);
  std::memcpy(p, &h, 2);
}

// Unpacks the eight 6-bit scales and mins of a Q4_K / Q5_K block into bytes.
// Bytes 0-3 hold scales 0-3 in their low six bits and the top bits of scales 4-7; bytes 4-7 the
// same for the mins; bytes 8-11 hold the low nibbles of scales 4-7 (low) and mins 4-7 (high).
HELEXA_HD static inline void unpack_k4_scales(const uint8_t* packed, uint8_t sc[8], uint8_t mn[8]) {
  uint32_t w0, w1, w2;
  std::memcpy(&w0, packed, 4);
  std::memcpy(&w1, packed + 4, 4);
  std::memcpy(&w2, packed + 8, 4);
  const uint32_t sc_lo = w0 & 0x3f3f3f3fu;
  const uint32_t mn_lo = w1 & 0x3f3f3f3fu;
  const uint32_t sc_hi = (w2 & 0x0f0f0f0fu) | (((w0 >> 6) & 0x03030303u) << 4);
  const uint32_t mn_hi = ((w2 >> 4) & 0x0f0f0f0fu) | (((w1 >> 6) & 0x03030303u) << 4);
  std::memcpy(sc, &sc_lo, 4);
  std::memcpy(sc + 4, &sc_hi, 4);
  std::memcpy(mn, &mn_lo, 4);
  std::memcpy(mn + 4, &mn_hi, 4);
}

// Unpacks the sixteen 6-bit scales of a Q3_K block as signed values (stored value - 32).
// Bytes 0-7 hold the low nibbles (scale j in byte j % 8, low nibble for j < 8, high for j >= 8);
// byte 8 + j % 4 holds the high two bits of scale j at bit 2 * (j / 4).
HELEXA_HD static inline void unpack_q3k_scales(const uint8_t* packed, int8_t out[16]) {
  for (int j = 0; j < 16; ++j) {
    const int lo = j < 8 ? packed[j] & 0xF : packed[j - 8] >> 4;
    const int hi = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
    out[j] = static_cast<int8_t>((lo | (hi << 4)) - 32);
  }
}

// The 6-bit scale of IQ4_XS sub-block j, as a signed value (stored value - 32).
HELEXA_HD static inline int iq4xs_scale(const uint8_t* scales_l, uint16_t scales_h, int j) {
  return (((scales_l[j / 2] >> (4 * (j % 2))) & 0xF) | (((scales_h >> (2 * j)) & 3) << 4)) - 32;
}

}  // namespace helexa::quant
