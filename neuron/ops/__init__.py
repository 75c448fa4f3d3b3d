"""Python face of the native kernels: validated ops over torch tensors, one module per family."""

from neuron.ops._lib import (
    CPU_ISAS,
    CUDA_BUILT,
    build_info,
    cpu_isa,
    has_cuda,
    num_threads,
    pool_spin_us,
    set_cpu_isa,
    set_num_threads,
    set_pool_spin_us,
)
from neuron.ops.attention import paged_decode, paged_decode_ref
from neuron.ops.dense import (
    MATMUL_MAX_ROWS,
    gemv_bf16,
    gemv_bf16_ref,
    matmul_bf16,
    rms_norm_bf16,
    rms_norm_ref,
)
from neuron.ops.gdn import (
    causal_conv1d,
    causal_conv1d_ref,
    gated_delta_rule,
    gated_delta_rule_ref,
    gdn_gating,
    gdn_gating_ref,
)
from neuron.ops.quant import (
    QUANT_TYPES,
    QuantTensor,
    dequantize,
    dequantize_ref,
    qmatmul,
    qmatmul_ref,
    quantize,
)

__all__ = [
    "CPU_ISAS",
    "CUDA_BUILT",
    "HAS_CUDA",
    "MATMUL_MAX_ROWS",
    "QUANT_TYPES",
    "QuantTensor",
    "build_info",
    "causal_conv1d",
    "causal_conv1d_ref",
    "cpu_isa",
    "dequantize",
    "dequantize_ref",
    "gated_delta_rule",
    "gated_delta_rule_ref",
    "gdn_gating",
    "gdn_gating_ref",
    "gemv_bf16",
    "gemv_bf16_ref",
    "has_cuda",
    "matmul_bf16",
    "num_threads",
    "paged_decode",
    "paged_decode_ref",
    "pool_spin_us",
    "qmatmul",
    "qmatmul_ref",
    "quantize",
    "rms_norm_bf16",
    "rms_norm_ref",
    "set_cpu_isa",
    "set_num_threads",
    "set_pool_spin_us",
]


def __getattr__(name: str) -> object:
    if name == "HAS_CUDA":  # asked of the CUDA runtime at first use, not at import (_lib.has_cuda)
        return has_cuda()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
