"""neuron.ops quant family: GGUF block formats against gguf (bit-exact), ggml's reference
quantizers, and float64 references for qmatmul, on every CPU ISA the build knows (those this
machine cannot run are skipped, saying why: conftest.py)."""

from __future__ import annotations

from importlib.metadata import version

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as G

from neuron import ops
from neuron.ops import _lib
from neuron.ops.quant import (
    BLOCK_BYTES,
    BLOCK_ELEMS,
    GEMV_ISAS,
    GGML_TYPE_IDS,
    QUANTIZABLE_TYPES,
    SCALE_OFFSETS,
    random_quant_tensor,
)

# The types come from the native trait table; gguf names them by the same ggml type id.
GGUF_TYPE = {name: G(type_id) for name, type_id in GGML_TYPE_IDS.items()}

# qmatmul quantizes activations to int8: bound on relative RMS error vs float64 dequantize(W) @ x.
# (Single-block rows of the affine formats reach 2.5%: the min term multiplies the error of the
# block's activation sum, which can be large next to a small product.)
QMATMUL_REL_RMS = 3e-2
# Against float64 dequantize(W) @ x_int8 (the activations as qmatmul quantizes them) only float
# summation and the output's rounding remain: bound per output dtype.
INT8_REF_REL_RMS = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 6e-3}
# Round-trip relative RMS error of ggml's own reference quantizers on N(0, 1) data (measured with
# ggml's quantize_row_*_ref on the 64 x 4096 Gaussian rows of the test below; our quantizers were
# byte-identical to them there). Measured figures, keyed by type: the types themselves come from
# the trait table, and a quantizable type without a figure here fails. A result more than 5% worse
# fails; one far better means the test no longer quantizes.
ROUND_TRIP_REL_RMS = {
    "q4_0": 0.0859,
    "q4_1": 0.0782,
    "q5_0": 0.0428,
    "q5_1": 0.0379,
    "q8_0": 0.00535,
    "q2_k": 0.2972,
    "q3_k": 0.1509,
    "q4_k": 0.0714,
    "q5_k": 0.0361,
    "q6_k": 0.0177,
    "iq4_nl": 0.0787,
    "iq4_xs": 0.0768,
}


def rel_rms(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double(), ref.double()
    return float((got - ref).norm() / ref.norm())


def wild_scales(w: ops.QuantTensor, seed: int) -> ops.QuantTensor:
    """Rewrites every fp16 scale with a random finite bit pattern: any sign, normal or subnormal."""
    rng = np.random.default_rng(seed)
    blocks = w.data.numpy().reshape(-1, BLOCK_BYTES[w.qtype])
    for off in SCALE_OFFSETS[w.qtype]:
        bits = rng.integers(0, 1 << 16, size=blocks.shape[0], dtype=np.uint16)
        special = (bits & 0x7C00) == 0x7C00  # inf / nan: make them the largest finite exponent
        bits[special] ^= np.uint16(0x0400)
        blocks[:, off : off + 2] = bits.view(np.uint8).reshape(-1, 2)
    return w


@pytest.mark.parametrize("qtype", ops.QUANT_TYPES)
def test_block_sizes_match_the_gguf_table(qtype):
    assert (BLOCK_ELEMS[qtype], BLOCK_BYTES[qtype]) == gguf.constants.GGML_QUANT_SIZES[GGUF_TYPE[qtype]]


@pytest.mark.parametrize("qtype", ops.QUANT_TYPES)
def test_type_names_are_ggmls_names(qtype):
    assert GGUF_TYPE[qtype].name.lower() == qtype
    assert getattr(_lib.QuantType, qtype).value == GGML_TYPE_IDS[qtype]


def test_the_trait_table_is_what_python_exports():
    rows = _lib.native.quant_types()
    assert tuple(row["name"] for row in rows) == ops.QUANT_TYPES
    assert len(set(ops.QUANT_TYPES)) == len(ops.QUANT_TYPES)
    assert set(_lib.QuantType.__members__) == set(ops.QUANT_TYPES)
    for row in rows:
        assert row["qtype"] == getattr(_lib.QuantType, row["name"])
        assert row["block_elems"] % 32 == 0 and row["act_block"] in (32, 256)
        assert row["block_elems"] % row["act_block"] == 0
        assert all(0 <= off <= row["block_bytes"] - 2 for off in row["scale_offsets"])


@pytest.mark.parametrize("qtype", ops.QUANT_TYPES)
def test_every_built_isa_has_its_own_gemv(qtype):
    assert GEMV_ISAS[qtype] == _lib.BUILT_CPU_ISAS


@pytest.mark.parametrize("rows", [1, 3, 17])
@pytest.mark.parametrize("qtype", ops.QUANT_TYPES)
def test_dequantize_is_bit_exact_with_gguf(qtype, rows):
    k = BLOCK_ELEMS[qtype] * 5
    w = wild_scales(random_quant_tensor(qtype, (rows, k), generator=torch.Generator().manual_seed(rows)), rows)
    expected = gguf.quants.dequantize(w.data.numpy().reshape(rows, -1), GGUF_TYPE[qtype])
    got = ops.dequantize(w)
    assert got.shape == (rows, k) and got.dtype == torch.float32
    assert np.array_equal(got.numpy().view(np.uint32), expected.view(np.uint32))
    for dtype in (torch.bfloat16, torch.float16):
        low = ops.dequantize(w, dtype)
        assert low.dtype == dtype
        assert torch.equal(low.view(torch.int16), torch.from_numpy(expected).to(dtype).view(torch.int16))


@pytest.mark.parametrize("qtype", ops.QUANT_TYPES)
def test_dequantize_ref_agrees_with_gguf(qtype):
    w = random_quant_tensor(qtype, (9, BLOCK_ELEMS[qtype] * 3), generator=torch.Generator().manual_seed(1))
    expected = torch.from_numpy(gguf.quants.dequantize(w.data.numpy().reshape(9, -1), GGUF_TYPE[qtype]))
    ref = ops.dequantize_ref(w)
    assert ref.dtype == torch.float64
    # gguf rounds each value to float32 once or twice; the float64 reference does not round at all.
    torch.testing.assert_close(ref, expected.double(), rtol=4e-7, atol=1e-12)


def gaussian_rows(rows: int, k: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32)
    x[0] = 0.0  # an all-zero row
    x[1, : k // 2] = 1.0  # constant blocks
    x[2] *= 1e-4  # tiny values
    x[3, ::2] = 0.0  # sparse
    x[4] = np.round(x[4] * 4) / 4  # many exact ties after scaling
    return x


def gguf_can_quantize(qtype: str) -> bool:
    try:
        gguf.quants.quantize(np.zeros((1, BLOCK_ELEMS[qtype]), np.float32), GGUF_TYPE[qtype])
    except NotImplementedError:
        return False
    return True


@pytest.mark.parametrize("qtype", QUANTIZABLE_TYPES)
def test_quantize_is_byte_identical_to_gguf(qtype):
    if not gguf_can_quantize(qtype):
        pytest.skip(f"gguf {version('gguf')} has no {qtype} quantizer (its quantize() raises NotImplementedError)")
    k = BLOCK_ELEMS[qtype] * (9 if BLOCK_ELEMS[qtype] == 32 else 2)
    x = gaussian_rows(13, k, seed=2)
    got = ops.quantize(torch.from_numpy(x), qtype)
    assert isinstance(got, ops.QuantTensor) and got.shape == (13, k) and got.qtype == qtype
    expected = gguf.quants.quantize(x, GGUF_TYPE[qtype])
    assert np.array_equal(got.data.numpy(), expected.reshape(-1))


@pytest.mark.parametrize("qtype", QUANTIZABLE_TYPES)
def test_round_trip_error_is_that_of_ggmls_reference(qtype):
    assert qtype in ROUND_TRIP_REL_RMS, f"no measured ggml round-trip figure for {qtype}"
    x = np.random.default_rng(3).standard_normal((64, 4096)).astype(np.float32)
    q = ops.quantize(torch.from_numpy(x), qtype)
    # Decode with gguf, independently of our own dequantizer.
    back = gguf.quants.dequantize(q.data.numpy().reshape(64, -1), GGUF_TYPE[qtype])
    err = rel_rms(torch.from_numpy(back), torch.from_numpy(x))
    assert 0.9 * ROUND_TRIP_REL_RMS[qtype] < err < 1.05 * ROUND_TRIP_REL_RMS[qtype]


@pytest.mark.parametrize("qtype", QUANTIZABLE_TYPES)
def test_quantize_special_rows_round_trip(qtype):
    k = BLOCK_ELEMS[qtype] * 2
    x = torch.from_numpy(gaussian_rows(6, k, seed=4))
    back = ops.dequantize(ops.quantize(x, qtype))
    assert torch.equal(back[0], torch.zeros(k))  # zero stays exactly zero
    assert torch.isfinite(back).all()
    assert rel_rms(back[5], x[5]) < 2 * ROUND_TRIP_REL_RMS[qtype]


@pytest.mark.parametrize("qtype", QUANTIZABLE_TYPES)
def test_quantize_of_dequantized_blocks_is_stable(qtype):
    # Values already on a quantization grid come back onto a grid: a second round trip moves them
    # much less than the first, and a third not at all more than the second.
    x = torch.from_numpy(np.random.default_rng(6).standard_normal((8, BLOCK_ELEMS[qtype] * 4)).astype(np.float32))
    once = ops.dequantize(ops.quantize(x, qtype))
    twice = ops.dequantize(ops.quantize(once, qtype))
    thrice = ops.dequantize(ops.quantize(twice, qtype))
    assert rel_rms(twice, once) < 0.5 * rel_rms(once, x)
    assert rel_rms(thrice, twice) <= rel_rms(twice, once) + 1e-7


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quantize_accepts_half_precision_input(dtype):
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(5)).to(dtype)
    assert torch.equal(ops.quantize(x, "q4_k").data, ops.quantize(x.float(), "q4_k").data)


def k_for(qtype: str, blocks: int = 0) -> int:
    # Default: K-quants two super-blocks; 32-element types an odd block count (the pair tail).
    if blocks == 0:
        blocks = 2 if BLOCK_ELEMS[qtype] == 256 else 11
    return BLOCK_ELEMS[qtype] * blocks


def int8_activations(x: torch.Tensor, act_block: int) -> torch.Tensor:
    """float64 values of x as qmatmul quantizes it: per act_block, d = amax / 127 in float32 and
    q = x / d rounded half to even (through float32 1 / d), clipped to +-127."""
    xb = x.float().reshape(*x.shape[:-1], -1, act_block)
    scale = xb.abs().amax(dim=-1, keepdim=True) / 127
    inv = torch.where(scale != 0, 1 / scale, torch.zeros_like(scale))
    q = torch.round(xb * inv).clamp(-127, 127)
    return (q.double() * scale.double()).reshape(x.shape)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 3, 64, 300])
@pytest.mark.parametrize("blocks", [1, 0, 3])
@pytest.mark.parametrize("qtype", ops.QUANT_TYPES)
def test_qmatmul_matches_float64_reference(isa, qtype, blocks, m, x_dtype):
    n, k = 67, k_for(qtype, blocks)
    gen = torch.Generator().manual_seed(m * 7 + n)
    w = random_quant_tensor(qtype, (n, k), generator=gen)
    x = torch.randn(m, k, generator=gen).to(x_dtype)
    out = torch.full((m, n), float("nan"), dtype=x_dtype)
    y = ops.qmatmul(x, w, out=out)
    assert y is out and y.dtype == x_dtype
    assert torch.isfinite(y).all()
    assert rel_rms(y, ops.qmatmul_ref(x, w)) < QMATMUL_REL_RMS
    exact = int8_activations(x, ops.quant.ACT_BLOCK[qtype]) @ ops.dequantize_ref(w).T
    assert rel_rms(y, exact) < INT8_REF_REL_RMS[x_dtype]


@pytest.mark.parametrize("qtype", ops.QUANT_TYPES)
def test_qmatmul_on_a_model_shape(isa, qtype):
    n, k = 257, 2048
    gen = torch.Generator().manual_seed(11)
    w = random_quant_tensor(qtype, (n, k), generator=gen)
    x = torch.randn(2, k, generator=gen)
    assert rel_rms(ops.qmatmul(x, w), ops.qmatmul_ref(x, w)) < QMATMUL_REL_RMS


@pytest.mark.parametrize("qtype", ops.QUANT_TYPES)
def test_every_isa_computes_the_same_integer_sums(simd_isa, qtype):
    gen = torch.Generator().manual_seed(12)
    w = random_quant_tensor(qtype, (45, k_for(qtype)), generator=gen)
    x = torch.randn(5, k_for(qtype), generator=gen)
    ops.set_cpu_isa("generic")
    generic = ops.qmatmul(x, w)
    ops.set_cpu_isa(simd_isa)
    assert ops.cpu_isa() == simd_isa
    y = ops.qmatmul(x, w)
    # Identical int8 activations and integer block sums; only float summation order differs.
    torch.testing.assert_close(y, generic, rtol=1e-5, atol=1e-5 * float(generic.abs().max()))


def test_qmatmul_keeps_leading_dimensions():
    w = random_quant_tensor("q8_0", (19, 64), generator=torch.Generator().manual_seed(13))
    x = torch.randn(2, 3, 64)
    y = ops.qmatmul(x, w)
    assert y.shape == (2, 3, 19)
    torch.testing.assert_close(y, ops.qmatmul(x.reshape(6, 64), w).reshape(2, 3, 19))
    assert ops.qmatmul(torch.randn(64), w).shape == (19,)
    assert ops.qmatmul(torch.randn(0, 64), w).shape == (0, 19)


def test_qmatmul_of_quantized_weights_approximates_the_float_product():
    gen = torch.Generator().manual_seed(14)
    weight = torch.randn(96, 512, generator=gen)
    x = torch.randn(4, 512, generator=gen)
    y = ops.qmatmul(x, ops.quantize(weight, "q8_0"))
    assert rel_rms(y, x.double() @ weight.double().T) < 1.5e-2


# --- bad input ------------------------------------------------------------------------------


def test_quant_tensor_rejects_inconsistent_parts():
    data = torch.zeros(144, dtype=torch.uint8)
    assert ops.QuantTensor(data, "q4_k", (1, 256)).row_bytes == 144
    with pytest.raises(ValueError, match="'q9_k' is not supported"):
        ops.QuantTensor(data, "q9_k", (1, 256))
    with pytest.raises(TypeError, match="dtype int8: expected uint8"):
        ops.QuantTensor(data.view(torch.int8), "q4_k", (1, 256))
    with pytest.raises(ValueError, match="K = 250 is not a multiple of the q4_k block size 256"):
        ops.QuantTensor(data, "q4_k", (1, 250))
    with pytest.raises(ValueError, match=r"holds 144 bytes but .* needs 288"):
        ops.QuantTensor(data, "q4_k", (2, 256))
    with pytest.raises(ValueError, match="contiguous"):
        ops.QuantTensor(torch.zeros(288, dtype=torch.uint8)[::2], "q4_k", (1, 256))
    with pytest.raises(ValueError, match="shape must be"):
        ops.QuantTensor(data, "q4_k", (256,))


def test_quantize_rejects_bad_input():
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        ops.quantize(np.zeros((2, 32), np.float32), "q8_0")
    with pytest.raises(TypeError, match="dtype float64: expected float32, float16, bfloat16"):
        ops.quantize(torch.zeros(2, 32, dtype=torch.float64), "q8_0")
    with pytest.raises(ValueError, match="must be 2-D"):
        ops.quantize(torch.zeros(32), "q8_0")
    with pytest.raises(ValueError, match="K = 48 is not a multiple of the q8_0 block size 32"):
        ops.quantize(torch.zeros(2, 48), "q8_0")
    with pytest.raises(ValueError, match="contiguous"):
        ops.quantize(torch.zeros(32, 2).T, "q8_0")
    with pytest.raises(ValueError, match="is on meta"):
        ops.quantize(torch.zeros(2, 32, device="meta"), "q8_0")
    with pytest.raises(ValueError, match="'int4' is not supported"):
        ops.quantize(torch.zeros(2, 32), "int4")


def test_dequantize_rejects_bad_input():
    w = random_quant_tensor("q4_0", (2, 32))
    with pytest.raises(TypeError, match="must be a QuantTensor"):
        ops.dequantize(w.data)
    with pytest.raises(TypeError, match="not supported: expected float32"):
        ops.dequantize(w, torch.int32)


def test_qmatmul_rejects_bad_input():
    w = random_quant_tensor("q4_k", (8, 256))
    x = torch.randn(3, 256)
    with pytest.raises(TypeError, match="w must be a QuantTensor"):
        ops.qmatmul(x, torch.zeros(8, 256))
    with pytest.raises(TypeError, match="x has dtype float64"):
        ops.qmatmul(x.double(), w)
    with pytest.raises(TypeError, match="x has dtype int32"):
        ops.qmatmul(x.int(), w)
    with pytest.raises(ValueError, match=r"x has shape \(3, 128\): its last dimension must be K = 256"):
        ops.qmatmul(torch.randn(3, 128), w)
    with pytest.raises(ValueError, match="x must be contiguous"):
        ops.qmatmul(torch.randn(512, 3)[::2].T, w)
    with pytest.raises(ValueError, match="x is on meta"):
        ops.qmatmul(torch.randn(3, 256, device="meta"), w)
    with pytest.raises(TypeError, match="out has dtype bfloat16"):
        ops.qmatmul(x, w, out=torch.empty(3, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"out has shape \(3, 9\): expected \(3, 8\)"):
        ops.qmatmul(x, w, out=torch.empty(3, 9))


def test_native_layer_checks_its_arguments_too():
    native, qt = _lib.native, _lib.QuantType.q4_k
    with pytest.raises(ValueError, match="K = 100 is not a multiple of the block size 256"):
        native.qmatmul_workspace_bytes(1, 100, qt)
    with pytest.raises(ValueError, match="row length 100 is not a multiple"):
        native.dequantize_cpu(0, 0, 1, 100, qt, _lib.DType.f32)
    with pytest.raises(ValueError, match="64-byte aligned"):
        native.qmatmul_cpu(0, 0, 0, 8, 1, 1, 256, qt, _lib.DType.f32)


# --- CUDA: the same block math (quant/block_math.h) compiled for the device --------------------


def cuda_skip_reason() -> str | None:
    """Why the CUDA dequantize cannot be tested here; None when it can."""
    if not _lib.CUDA_BUILT:
        return "this build of neuron._C has no CUDA kernels (no nvcc at build time, or HELEXA_CUDA=OFF)"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device (CPU build of torch, or no GPU / driver)"
    if not ops.has_cuda():
        return "neuron._C's CUDA runtime finds no usable device (driver older than the CUDA it was built with?)"
    return None


needs_cuda = pytest.mark.skipif(cuda_skip_reason() is not None, reason=cuda_skip_reason() or "")


@needs_cuda
@pytest.mark.parametrize("shape_blocks", [(1, 1), (3, 5), (17, 5), (301, 7)])
@pytest.mark.parametrize("qtype", ops.QUANT_TYPES)
def test_cuda_dequantize_is_bit_exact_with_the_cpu(qtype, shape_blocks):
    rows, blocks = shape_blocks
    k = BLOCK_ELEMS[qtype] * blocks
    w = wild_scales(random_quant_tensor(qtype, (rows, k), generator=torch.Generator().manual_seed(rows)), rows)
    wd = w.to("cuda")
    for dtype, bits in ((torch.float32, torch.int32), (torch.bfloat16, torch.int16), (torch.float16, torch.int16)):
        got = ops.dequantize(wd, dtype)
        assert got.device == wd.device and got.dtype == dtype and got.shape == (rows, k)
        assert torch.equal(got.cpu().view(bits), ops.dequantize(w, dtype).view(bits)), f"{qtype} {dtype}"


@needs_cuda
def test_cuda_dequantize_runs_on_torchs_current_stream():
    w = random_quant_tensor("q4_k", (64, 1024), generator=torch.Generator().manual_seed(7))
    wd = w.to("cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = ops.dequantize(wd)
    side.synchronize()
    assert torch.equal(got.cpu(), ops.dequantize(w))


def test_a_cpu_only_build_refuses_cuda_tensors_by_name():
    if _lib.CUDA_BUILT:
        pytest.skip("this build of neuron._C has CUDA kernels")
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} sees no CUDA device to put a tensor on")
    with pytest.raises(ValueError, match="no CUDA kernels"):
        ops.dequantize(random_quant_tensor("q8_0", (2, 32)).to("cuda"))
