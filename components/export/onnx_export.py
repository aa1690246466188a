"""ONNX export of the merged student encoder, int8 quantization and parity checks (no MLflow).

The exported graph is :meth:`LoraEncoder.merged_encoder`: every LoRA update merged into the backbone,
truncated at the representation layer, the A matrix as the output head. It maps ``input_ids`` and
``attention_mask`` (int64, dynamic batch and sequence axes) to ``pooled``, the L2-normalised z [N, r].
The output is deliberately not called ``embedding``: with the dynamo exporter a graph output named like an
internal value makes a model ONNX Runtime refuses to load (RECIPES.md).

Int8 comes three ways. ``rowwise`` (:mod:`components.export.int8_rowwise`): one activation scale per row, smoothed
from calibration data. ``dynamic``: ONNX Runtime dynamic quantization of the MatMuls, one scale per
activation tensor; the MLP ``down_proj`` MatMuls stay in fp32, their inputs carry the largest activation
outliers (RECIPES.md). Their node names are found in the graph (by name or the exporter's name-scope
metadata, else by weight shape), never hard-coded. ``blockwise``: 8-bit ``MatMulNBits`` with activations
quantized per row and block, slower than ``dynamic`` but within the parity gate on the real student.

Example:
    >>> info = export_onnx(encoder.merged_encoder(), "model.onnx")           # doctest: +SKIP
    >>> quantize_int8("model.onnx", "model.int8.onnx")                       # doctest: +SKIP
    >>> parity(encoder, ort_session("model.onnx"), texts)["max_abs_diff"]    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from components.export.int8_rowwise import KEEP_WORST, quantize_int8_rowwise
from components.export.onnx_session import make_session as ort_session  # noqa: F401  (re-exported)
from components.student.lora_encoder import LoraEncoder
from components.student.merged_encoder import MergedEncoder

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "pooled"
TWO_GIB = 2 * 1024**3
EXPORTERS = {False: "torchscript", True: "dynamo"}
WHY = {
    False: "torch.onnx.export(dynamo=False), the TorchScript exporter: measured here it matches ONNX Runtime to "
           "torch as closely as the dynamo exporter (within 6e-7) and exports many times faster (RECIPES.md); "
           "deprecated upstream, so dynamo=True remains the fallback",
    True: "torch.onnx.export(dynamo=True), the torch.export-based exporter: the upstream default, kept for when the "
          "TorchScript exporter is removed; slower to export, same parity (RECIPES.md)",
}

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- export


def _parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def example_inputs(vocab_size: int, batch: int = 2, length: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Trace inputs: batch >= 2 and sequence >= 2 (size-1 example dimensions get frozen), one padded row."""
    if batch < 2 or length < 2:
        raise ValueError(f"trace with batch >= 2 and sequence >= 2, got batch {batch}, sequence {length}")
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (batch, length), generator=generator, dtype=torch.long)
    attention_mask = torch.ones((batch, length), dtype=torch.long)
    attention_mask[1:, : length // 2] = 0  # left padding on the later rows; the graph does not depend on it
    return input_ids, attention_mask


def export_onnx(merged: MergedEncoder, out_path: str | Path, *, dynamo: bool = False, opset: int | None = None,
                batch: int = 2, length: int = 5) -> dict:
    """Export ``merged`` to ``out_path``; returns what was done (exporter, opset, why, sizes, seconds).

    Weights go to an external data file next to the model (``<name>.data``) when they exceed 2 GiB.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    merged = merged.eval().float()
    vocab = int(merged.embed_tokens.num_embeddings)
    args = example_inputs(vocab, batch, length)
    weight_bytes = _parameter_bytes(merged)
    external = weight_bytes > TWO_GIB
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on shape checks that do not depend on the data
        if dynamo:
            batch_dim = torch.export.Dim("batch", min=1)
            seq_dim = torch.export.Dim("sequence", min=1)
            program = torch.onnx.export(merged, args, dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
                                        output_names=[OUTPUT_NAME], external_data=external, verbose=False,
                                        dynamic_shapes={"input_ids": {0: batch_dim, 1: seq_dim},
                                                        "attention_mask": {0: batch_dim, 1: seq_dim}})
            program.save(str(out_path), external_data=external)
        else:
            torch.onnx.export(merged, args, str(out_path), dynamo=False, opset_version=opset,
                              input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                              dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                            "attention_mask": {0: "batch", 1: "sequence"},
                                            OUTPUT_NAME: {0: "batch"}})
    seconds = time.perf_counter() - start
    proto = onnx.load(str(out_path), load_external_data=False)
    actual_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    files = [p for p in out_path.parent.iterdir() if p.is_file() and p.name.startswith(out_path.name)]
    return {"exporter": EXPORTERS[dynamo], "dynamo": dynamo, "opset": actual_opset, "requested_opset": opset,
            "why": WHY[dynamo], "export_seconds": round(seconds, 3), "external_data": external,
            "weight_bytes": weight_bytes, "file_bytes": sum(p.stat().st_size for p in files),
            "trace_shape": [batch, length], "inputs": list(INPUT_NAMES), "output": OUTPUT_NAME,
            "dimension": int(merged.head.out_features), "path": str(out_path)}


# ----------------------------------------------------------------------------------------------- int8


def _node_scope_text(node: onnx.NodeProto) -> str:
    """The node name plus the exporter's scope metadata (the dynamo graph keeps module paths there)."""
    return " ".join([node.name, *(p.value for p in node.metadata_props if "scope" in p.key or p.key == "namespace")])


def find_down_proj_nodes(model: onnx.ModelProto, module: str = "down_proj") -> list[str]:
    """Names of the MatMul nodes of the MLP ``down_proj`` layers.

    First by the module name in the node name (TorchScript: ``/layers.0/mlp/down_proj/MatMul``) or in the
    name-scope metadata (dynamo: ``layers.0.mlp.down_proj``). Without either, by weight shape: the MatMuls
    whose constant weight is [I, H] while others are [H, I] (the MLP's way back from its inner width).
    """
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    named = [n.name for n in matmuls if module in _node_scope_text(n)]
    if named:
        return named
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    weights = {n.name: shapes.get(n.input[1]) for n in matmuls if len(n.input) > 1}
    weights = {k: v for k, v in weights.items() if v is not None and len(v) == 2}
    ups = {v for v in weights.values() if v[1] > v[0]}
    return [name for name, (rows, cols) in weights.items() if rows > cols and (cols, rows) in ups]


def _needs_external_data(path: Path) -> bool:
    return any(p.name != path.name and p.name.startswith(path.name) for p in path.parent.iterdir()) or \
        path.stat().st_size > TWO_GIB


INT8_METHODS = ("dynamic", "blockwise", "rowwise")


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizers log hints at INFO/WARNING on the root logger on every call; keep errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, exclude_down_proj: bool = True,
                  per_channel: bool = False, method: str = "dynamic", block_size: int = 32,
                  calibration: list[dict] | None = None, asymmetric: bool = False, outlier_channels: int = 0,
                  keep_worst: int = KEEP_WORST) -> dict:
    """Int8 copy of the model's MatMuls.

    ``dynamic``: ONNX Runtime dynamic quantization, one int8 scale per activation tensor (fast; the
    ``down_proj`` MatMuls stay fp32 when asked). ``blockwise``: see :func:`quantize_int8_blockwise`.
    ``rowwise``: one scale (``asymmetric``: and zero point) per activation row, smoothed with ``calibration``
    batches, ``outlier_channels`` per input multiplied apart in fp32 and the ``keep_worst`` MatMuls of largest
    error left fp32 (:mod:`components.export.int8_rowwise`).
    """
    if method not in INT8_METHODS:
        raise ValueError(f"int8 method must be one of {INT8_METHODS}, got {method!r}")
    if method == "blockwise":
        return quantize_int8_blockwise(fp32_path, int8_path, block_size)
    if method == "rowwise":
        return quantize_int8_rowwise(fp32_path, int8_path, calibration=calibration, asymmetric=asymmetric,
                                     outlier_channels=outlier_channels, keep_worst=keep_worst)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    excluded = find_down_proj_nodes(onnx.load(str(fp32_path), load_external_data=False)) if exclude_down_proj else []
    if exclude_down_proj and not excluded:
        logger.warning("no down_proj MatMul found in %s: every MatMul is quantized", fp32_path)
    start = time.perf_counter()
    with _quiet_root_logger():
        # reduce_range: 7-bit weights, as int8_rowwise's (without VNNI the u8 x s8 kernel saturates with 8 bits:
        # per-channel weights gave a min cosine of 0.32 on an AVX2-only CPU)
        quantize_dynamic(str(fp32_path), str(int8_path), op_types_to_quantize=["MatMul"], per_channel=per_channel,
                         reduce_range=True, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                         use_external_data_format=_needs_external_data(fp32_path))
    quantized = onnx.load(str(int8_path), load_external_data=False)
    integer_ops = sum(1 for n in quantized.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul"))
    return {"path": str(int8_path), "weight_type": "int8", "weight_bits": 7, "method": "dynamic",
            "per_channel": per_channel, "excluded_nodes": excluded, "excluded_count": len(excluded),
            "quantized_matmuls": integer_ops,
            "quantize_seconds": round(time.perf_counter() - start, 3), "file_bytes": int8_path.stat().st_size}


def quantize_int8_blockwise(fp32_path: str | Path, int8_path: str | Path, block_size: int = 32) -> dict:
    """Int8 weights in blocks of ``block_size`` input channels (``MatMulNBits``, 8 bits, symmetric), computed with
    int8 activations quantized per row and block (``accuracy_level`` 4).

    One activation scale per row and block instead of per tensor keeps the outliers of one token and one
    channel group from flattening the rest: on the trained SmolLM2 student, minimum cosine 0.9935 against
    0.886 for ``dynamic`` (its ``down_proj`` kept in fp32), at about the speed of ONNX fp32 (README).
    Every MatMul is quantized; accuracy level 4 is required (RECIPES.md: without it ``MatMulNBits`` is 3-4x
    slower at batch 1).
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_path)), bits=8, block_size=block_size, is_symmetric=True,
                                     accuracy_level=4, algo_config=config)
    with _quiet_root_logger():
        quantizer.process()
    quantizer.model.save_model_to_file(str(int8_path), use_external_data_format=_needs_external_data(fp32_path))
    quantized = onnx.load(str(int8_path), load_external_data=False)
    integer_ops = sum(1 for n in quantized.graph.node if n.op_type == "MatMulNBits")
    return {"path": str(int8_path), "weight_type": "int8", "method": "blockwise", "block_size": block_size,
            "accuracy_level": 4, "per_channel": False, "excluded_nodes": [], "excluded_count": 0,
            "quantized_matmuls": integer_ops, "quantize_seconds": round(time.perf_counter() - start, 3),
            "file_bytes": int8_path.stat().st_size}


# ----------------------------------------------------------------------------------------------- running


def run_onnx(session: ort.InferenceSession, input_ids, attention_mask) -> np.ndarray:
    """``pooled`` for one token batch (torch tensors or numpy arrays), float32 [N, r]."""
    feed = {"input_ids": np.asarray(input_ids, dtype=np.int64), "attention_mask": np.asarray(attention_mask,
                                                                                             dtype=np.int64)}
    return session.run([OUTPUT_NAME], feed)[0].astype(np.float32, copy=False)


def encode_onnx(session: ort.InferenceSession, tokenize: Callable[[Sequence[str]], dict], texts: Sequence[str],
                batch_size: int = 32) -> np.ndarray:
    """Embed ``texts`` with ``session``, tokenized by ``tokenize`` (e.g. ``LoraEncoder.tokenize``), in input order."""
    out = np.empty((len(texts), _output_width(session)), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(texts), batch_size):
        index = order[start:start + batch_size]
        batch = tokenize([texts[i] for i in index])
        out[index] = run_onnx(session, batch["input_ids"], batch["attention_mask"])
    return out


def _output_width(session: ort.InferenceSession) -> int:
    width = session.get_outputs()[0].shape[-1]
    if isinstance(width, int):
        return width
    probe = run_onnx(session, np.zeros((2, 2), np.int64), np.ones((2, 2), np.int64))
    return int(probe.shape[-1])


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max absolute difference and min/mean cosine of ``candidate`` rows against ``reference`` rows."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = (reference * candidate).sum(1) / np.maximum(norms, 1e-12)
    return {"max_abs_diff": float(np.abs(reference - candidate).max(initial=0.0)),
            "min_cosine": float(cosine.min(initial=1.0)), "mean_cosine": float(cosine.mean()) if len(cosine) else 1.0,
            "texts": float(len(reference))}


def parity(encoder: LoraEncoder, session: ort.InferenceSession, texts: Sequence[str], batch_size: int = 32,
           reference: np.ndarray | None = None) -> dict[str, float]:
    """ONNX against torch ``encode`` on ``texts`` (same tokenization); ``reference`` skips the torch pass."""
    if reference is None:
        reference = encoder.encode(list(texts), batch_size=batch_size).numpy()
    return compare(reference, encode_onnx(session, encoder.tokenize, texts, batch_size))


def fp32_max_abs_diff(encoder: LoraEncoder, session: ort.InferenceSession, texts: Sequence[str],
                      reference: np.ndarray | None = None) -> float:
    """The fp32 gate: largest absolute difference of any coordinate of z, ONNX vs torch."""
    return parity(encoder, session, texts, reference=reference)["max_abs_diff"]


def int8_min_cosine(encoder: LoraEncoder, session: ort.InferenceSession, texts: Sequence[str],
                    reference: np.ndarray | None = None) -> float:
    """The int8 gate: smallest cosine between the int8 ONNX z and the torch z of the same text."""
    return parity(encoder, session, texts, reference=reference)["min_cosine"]
