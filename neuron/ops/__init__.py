"""Python face of the native kernels: validated ops over torch tensors, one module per family."""

from neuron.ops._lib import (
    CPU_ISAS,
    HAS_CUDA,
    build_info,
    cpu_isa,
    num_threads,
    set_cpu_isa,
    set_num_threads,
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
    "HAS_CUDA",
    "QUANT_TYPES",
    "QuantTensor",
    "build_info",
    "cpu_isa",
    "dequantize",
    "dequantize_ref",
    "num_threads",
    "qmatmul",
    "qmatmul_ref",
    "quantize",
    "set_cpu_isa",
    "set_num_threads",
]
