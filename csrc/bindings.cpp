// The one pybind11 module, neuron._C. Only neuron/ops/_lib.py imports it. Every op takes raw
// addresses (uintptr_t) of memory the caller owns and checked; long-running ops release the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "attention/attention.h"
#include "common/cpu_isa.h"
#include "common/dtype.h"
#include "common/thread_pool.h"
#include "dense/dense.h"
#include "gdn/gdn.h"
#include "nccl/nccl.h"
#include "quant/quant.h"
#include "quant/traits.h"
#ifdef HELEXA_WITH_CUDA
#include <cuda_runtime_api.h>

#include "quant/quant_cuda.h"
#endif

#ifndef HELEXA_VERSION
#define HELEXA_VERSION "0+unknown"
#endif
#ifndef HELEXA_CUDA_ARCHS
#define HELEXA_CUDA_ARCHS ""
#endif

namespace py = pybind11;
using helexa::DType;
using helexa::quant::QuantType;

namespace {

template <class T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// Every CPU kernel variant the sources define (common/cpu_isa.h: Isa ends at avx512_vnni), least
// capable first.
std::vector<std::string> known_isa_names() {
  std::vector<std::string> out;
  for (int i = 0; i <= static_cast<int>(helexa::Isa::avx512_vnni); ++i) {
    out.emplace_back(helexa::isa_name(static_cast<helexa::Isa>(i)));
  }
  return out;
}

// The variants compiled into this module: the SIMD ones only in an x86-64 build (CMakeLists.txt).
std::vector<std::string> built_isa_names() {
#if defined(HELEXA_X86)
  return known_isa_names();
#else
  return {helexa::isa_name(helexa::Isa::generic)};
#endif
}

bool cuda_built() {
#ifdef HELEXA_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// Whether CUDA kernels can run here: built with them, and the runtime finds a driver and at least
// one device. Asked when called, never at import (a CUDA build imports on hosts with no driver).
bool has_cuda() {
#ifdef HELEXA_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" / "no device" error for later calls
    return false;
  }
  return count >= 1;
#else
  return false;
#endif
}

// HELEXA_CUDA_ARCHS as CMake passed it ("86,89,90,120"), split; empty in a CPU-only build.
std::vector<std::string> cuda_archs() {
  std::vector<std::string> out;
  std::string arch;
  for (const char* c = HELEXA_CUDA_ARCHS;; ++c) {
    if (*c == ',' || *c == '\0') {
      if (!arch.empty()) out.push_back(arch);
      arch.clear();
      if (*c == '\0') break;
    } else {
      arch += *c;
    }
  }
  return out;
}

// The trait table as Python sees it: one dict per type, in table order (quant/traits.h).
py::list quant_types() {
  py::list out;
  for (int i = 0; i < helexa::quant::quant_type_count(); ++i) {
    const helexa::quant::QuantTraits& t = helexa::quant::quant_traits_at(i);
    py::dict row;
    row["name"] = t.name;
    row["qtype"] = t.type;
    row["ggml_type"] = static_cast<int>(t.type);
    row["block_elems"] = t.block_elems;
    row["block_bytes"] = t.block_bytes;
    row["act_block"] = t.act_block;
    row["can_quantize"] = t.quantize_row != nullptr;
    py::list offsets;
    for (int j = 0; j < t.scale_fields; ++j) offsets.append(t.scale_offsets[j]);
    row["scale_offsets"] = py::tuple(offsets);
    py::list isas;
    for (int j = 0; j < helexa::quant::kIsaColumns; ++j) {
      if (t.gemv[j] != nullptr) isas.append(helexa::isa_name(static_cast<helexa::Isa>(j)));
    }
    row["gemv_isas"] = py::tuple(isas);
    out.append(row);
  }
  return out;
}

py::dict build_info() {
  py::dict info;
  info["version"] = HELEXA_VERSION;
  info["cuda"] = has_cuda();          // usable now: built with CUDA and a device is present
  info["cuda_built"] = cuda_built();  // CUDA kernels compiled into this module
  info["cuda_archs"] = cuda_archs();  // the architectures they were compiled for
  info["compiler"] = std::string(__VERSION__);
  info["cpu_isas"] = helexa::usable_isa_names();
  info["native_kernels"] = std::vector<std::string>{"quant", "dense", "attention", "gdn", "nccl"};
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "helexa native kernels (CPU C++, CUDA when built with it)";

  // One member per row of the trait table, named as the row (its value is the ggml type id).
  py::enum_<QuantType> quant_type(m, "QuantType");
  for (int i = 0; i < helexa::quant::quant_type_count(); ++i) {
    const helexa::quant::QuantTraits& t = helexa::quant::quant_traits_at(i);
    quant_type.value(t.name, t.type);
  }
  py::enum_<DType>(m, "DType").value("f32", DType::f32).value("f16", DType::f16).value("bf16", DType::bf16);

  m.def("has_cuda", &has_cuda,
        "True when this module has CUDA kernels and the CUDA runtime finds at least one device now");
  m.def("cuda_built", &cuda_built, "True when CUDA kernels were compiled into this module");
  m.def("build_info", &build_info, "What this module was built with");
  m.def("known_cpu_isas", &known_isa_names, "Every CPU kernel variant the sources define, least capable first");
  m.def("built_cpu_isas", &built_isa_names, "CPU kernel variants compiled into this module, least capable first");
  m.def("cpu_isas", &helexa::usable_isa_names, "CPU kernel variants this machine can run, least capable first");
  m.def("cpu_isa", [] { return std::string(helexa::isa_name(helexa::active_isa())); },
        "The CPU kernel variant in use");
  m.def("set_cpu_isa", [](const std::string& name) { helexa::set_isa_cap(helexa::isa_from_name(name)); },
        py::arg("name"), "Cap the CPU kernel variant (for tests and benchmarks)");
  m.def("num_threads", &helexa::num_threads, "Threads of the kernel thread pool");
  m.def("set_num_threads", &helexa::set_num_threads, py::arg("n"));
  m.def("pool_spin_us", &helexa::spin_us, "How long idle pool threads spin before sleeping (microseconds)");
  m.def("set_pool_spin_us", &helexa::set_spin_us, py::arg("us"));

  m.def("quant_types", &quant_types,
        "The quant trait table: name, qtype, ggml_type, block_elems, block_bytes, act_block, can_quantize, "
        "scale_offsets (fp16 fields), gemv_isas");
  m.def("block_elems", [](QuantType t) { return helexa::quant::quant_traits(t).block_elems; }, py::arg("qtype"));
  m.def("block_bytes", [](QuantType t) { return helexa::quant::quant_traits(t).block_bytes; }, py::arg("qtype"));

  m.def(
      "dequantize_cpu",
      [](uintptr_t out, uintptr_t w, int64_t rows, int64_t cols, QuantType t, DType out_t) {
        helexa::quant::dequantize_cpu(ptr<void>(out), ptr<const uint8_t>(w), rows, cols, t, out_t);
      },
      py::arg("out"), py::arg("w"), py::arg("rows"), py::arg("cols"), py::arg("qtype"), py::arg("out_dtype"),
      py::call_guard<py::gil_scoped_release>());
#ifdef HELEXA_WITH_CUDA
  m.def(
      "dequantize_cuda",
      [](uintptr_t out, uintptr_t w, int64_t rows, int64_t cols, QuantType t, DType out_t, uintptr_t stream) {
        helexa::quant::dequantize_cuda(ptr<void>(out), ptr<const uint8_t>(w), rows, cols, t, out_t,
                                       reinterpret_cast<cudaStream_t>(stream));
      },
      py::arg("out"), py::arg("w"), py::arg("rows"), py::arg("cols"), py::arg("qtype"), py::arg("out_dtype"),
      py::arg("stream"), py::call_guard<py::gil_scoped_release>());
#endif
  m.def(
      "quantize_cpu",
      [](uintptr_t out, uintptr_t x, int64_t rows, int64_t cols, QuantType t) {
        helexa::quant::quantize_cpu(ptr<uint8_t>(out), ptr<const float>(x), rows, cols, t);
      },
      py::arg("out"), py::arg("x"), py::arg("rows"), py::arg("cols"), py::arg("qtype"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "gemv_bf16_cpu",
      [](uintptr_t y, uintptr_t x, uintptr_t w, int64_t n, int64_t k, DType y_t) {
        helexa::dense::gemv_bf16_cpu(ptr<void>(y), ptr<const uint16_t>(x), ptr<const uint16_t>(w), n, k, y_t);
      },
      py::arg("y"), py::arg("x"), py::arg("w"), py::arg("n"), py::arg("k"), py::arg("y_dtype"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "matmul_bf16_cpu",
      [](uintptr_t y, uintptr_t x, uintptr_t w, int64_t m, int64_t n, int64_t k, DType y_t) {
        helexa::dense::matmul_bf16_cpu(ptr<void>(y), ptr<const uint16_t>(x), ptr<const uint16_t>(w), m, n, k, y_t);
      },
      py::arg("y"), py::arg("x"), py::arg("w"), py::arg("m"), py::arg("n"), py::arg("k"), py::arg("y_dtype"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "rms_norm_bf16_cpu",
      [](uintptr_t out, uintptr_t x, uintptr_t w, int64_t outer, int64_t inner, int64_t dim, int64_t outer_stride,
         int64_t inner_stride, float eps) {
        helexa::dense::rms_norm_bf16_cpu(ptr<uint16_t>(out), ptr<const uint16_t>(x), ptr<const uint16_t>(w), outer,
                                         inner, dim, outer_stride, inner_stride, eps);
      },
      py::arg("out"), py::arg("x"), py::arg("w"), py::arg("outer"), py::arg("inner"), py::arg("dim"),
      py::arg("outer_stride"), py::arg("inner_stride"), py::arg("eps"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "paged_decode_cpu",
      [](uintptr_t out, uintptr_t q, uintptr_t k_pool, uintptr_t v_pool, uintptr_t block_tables,
         uintptr_t context_lens, int64_t seqs, int64_t heads, int64_t kv_heads, int64_t head_dim,
         int64_t block_tokens, int64_t max_blocks, float scale, DType dtype) {
        helexa::attention::paged_decode_cpu(ptr<void>(out), ptr<const void>(q), ptr<const void>(k_pool),
                                             ptr<const void>(v_pool), ptr<const int64_t>(block_tables),
                                             ptr<const int64_t>(context_lens), seqs, heads, kv_heads, head_dim,
                                             block_tokens, max_blocks, scale, dtype);
      },
      py::arg("out"), py::arg("q"), py::arg("k_pool"), py::arg("v_pool"), py::arg("block_tables"),
      py::arg("context_lens"), py::arg("seqs"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"),
      py::arg("block_tokens"), py::arg("max_blocks"), py::arg("scale"), py::arg("dtype"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "gdn_gating_cpu",
      [](uintptr_t g, uintptr_t beta, uintptr_t a, uintptr_t b, uintptr_t a_log, uintptr_t dt_bias, int64_t rows,
         int64_t heads, DType dtype) {
        helexa::gdn::gdn_gating_cpu(ptr<float>(g), ptr<float>(beta), ptr<const void>(a), ptr<const void>(b),
                                    ptr<const float>(a_log), ptr<const float>(dt_bias), rows, heads, dtype);
      },
      py::arg("g"), py::arg("beta"), py::arg("a"), py::arg("b"), py::arg("a_log"), py::arg("dt_bias"),
      py::arg("rows"), py::arg("heads"), py::arg("dtype"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "causal_conv1d_cpu",
      [](uintptr_t y, uintptr_t conv_states, uintptr_t x, uintptr_t weight, uintptr_t query_starts, uintptr_t slots,
         uintptr_t fresh, int64_t seqs, int64_t rows, int64_t channels, int64_t kernel, int64_t num_slots,
         DType x_dtype, DType w_dtype) {
        helexa::gdn::causal_conv1d_cpu(ptr<void>(y), ptr<float>(conv_states), ptr<const void>(x),
                                       ptr<const void>(weight), ptr<const int64_t>(query_starts),
                                       ptr<const int64_t>(slots), ptr<const uint8_t>(fresh), seqs, rows, channels,
                                       kernel, num_slots, x_dtype, w_dtype);
      },
      py::arg("y"), py::arg("conv_states"), py::arg("x"), py::arg("weight"), py::arg("query_starts"),
      py::arg("slots"), py::arg("fresh"), py::arg("seqs"), py::arg("rows"), py::arg("channels"), py::arg("kernel"),
      py::arg("num_slots"), py::arg("x_dtype"), py::arg("w_dtype"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "gated_delta_rule_cpu",
      [](uintptr_t out, uintptr_t states, uintptr_t qkv, uintptr_t g, uintptr_t beta, uintptr_t query_starts,
         uintptr_t slots, uintptr_t fresh, int64_t seqs, int64_t rows, int64_t key_heads, int64_t value_heads,
         int64_t key_dim, int64_t value_dim, int64_t num_slots, float scale, int64_t chunked_min_len, DType dtype,
         bool value_heads_tiled) {
        helexa::gdn::gated_delta_rule_cpu(ptr<void>(out), ptr<float>(states), ptr<const void>(qkv),
                                          ptr<const float>(g), ptr<const float>(beta),
                                          ptr<const int64_t>(query_starts), ptr<const int64_t>(slots),
                                          ptr<const uint8_t>(fresh), seqs, rows, key_heads, value_heads, key_dim,
                                          value_dim, num_slots, scale, chunked_min_len, dtype, value_heads_tiled);
      },
      py::arg("out"), py::arg("states"), py::arg("qkv"), py::arg("g"), py::arg("beta"), py::arg("query_starts"),
      py::arg("slots"), py::arg("fresh"), py::arg("seqs"), py::arg("rows"), py::arg("key_heads"),
      py::arg("value_heads"), py::arg("key_dim"), py::arg("value_dim"), py::arg("num_slots"), py::arg("scale"),
      py::arg("chunked_min_len"), py::arg("dtype"), py::arg("value_heads_tiled") = false,
      py::call_guard<py::gil_scoped_release>());
  m.def("nccl_open_library", &helexa::nccl::open_library, py::arg("candidates"));
  m.def("nccl_library_open", &helexa::nccl::library_open);
  m.def("nccl_version", &helexa::nccl::version);
  m.def("nccl_unique_id", []() {
    const std::vector<uint8_t> id = helexa::nccl::unique_id();
    return py::bytes(reinterpret_cast<const char*>(id.data()), id.size());
  });
  m.def(
      "nccl_comm_init",
      [](const py::bytes& id, int world, int rank) {
        const std::string raw = id;
        const std::vector<uint8_t> bytes(raw.begin(), raw.end());
        py::gil_scoped_release release;  // blocks until every rank joins
        return helexa::nccl::comm_init(bytes, world, rank);
      },
      py::arg("unique_id"), py::arg("world"), py::arg("rank"));
  m.def("nccl_comm_destroy", &helexa::nccl::comm_destroy, py::arg("comm"), py::call_guard<py::gil_scoped_release>());
  m.def("nccl_all_reduce", &helexa::nccl::all_reduce, py::arg("comm"), py::arg("buf"), py::arg("count"),
        py::arg("dtype"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  m.def("nccl_broadcast", &helexa::nccl::broadcast, py::arg("comm"), py::arg("buf"), py::arg("count"),
        py::arg("dtype"), py::arg("root"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  m.def("nccl_all_gather", &helexa::nccl::all_gather, py::arg("comm"), py::arg("send"), py::arg("recv"),
        py::arg("count"), py::arg("dtype"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  m.def("qmatmul_workspace_bytes", &helexa::quant::qmatmul_workspace_bytes, py::arg("m"), py::arg("k"),
        py::arg("qtype"));
  m.def(
      "qmatmul_cpu",
      [](uintptr_t y, uintptr_t x, uintptr_t w, uintptr_t workspace, int64_t m, int64_t n, int64_t k, QuantType t,
         DType xt) {
        helexa::quant::qmatmul_cpu(ptr<void>(y), ptr<const void>(x), ptr<const uint8_t>(w), ptr<uint8_t>(workspace), m,
                                   n, k, t, xt);
      },
      py::arg("y"), py::arg("x"), py::arg("w"), py::arg("workspace"), py::arg("m"), py::arg("n"), py::arg("k"),
      py::arg("qtype"), py::arg("x_dtype"), py::call_guard<py::gil_scoped_release>());
}
