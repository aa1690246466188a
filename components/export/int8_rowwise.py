"""Int8 MatMuls with one activation scale per row (token), smoothed from calibration data (no MLflow, no torch).

ONNX Runtime's dynamic quantization gives the whole activation tensor of a batch one int8 scale: one token with a
massive activation (an LLM's first token carries values of thousands where the median is about 1) leaves every
other token of the batch a few int8 levels, and the minimum cosine of the trained student's z falls to 0.81
(0.97 with the MLP ``down_proj`` kept fp32). ``MatMulNBits`` scales per row and block and keeps 0.998, but here
runs at about ONNX fp32's speed. This rewrite keeps ONNX Runtime's fast int8 kernel (``MatMulIntegerToFloat``,
u8 x s8, VNNI/AMX where the CPU has them) and quantizes each activation row with its own scale, computed in the
graph (one ``QuantizeLinear`` per input):

    s_row = max|x_row| / 127,   x_q = round(x / s_row) + 128 (uint8, zero point 128),
    y = (x_q - 128) @ W_q * s_row * s_col,      W_q = round(W / s_col), s_col = max|W[:, col]| / 63 (7 bits).

Channels with outliers across all tokens (a few input channels of RMSNorm outputs) would still flatten a row, so
the activations are first smoothed as in SmoothQuant (Xiao et al., 2023): per input channel ``j`` a factor
``f_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` from calibration batches divides the activation and multiplies the
weight row, which leaves ``X W`` unchanged and moves the outlier into the weights. MatMuls sharing an input share
its quantization (q, k, v; gate, up). ``keep_fp32`` names MatMuls to leave in fp32.

Example:
    >>> quantize_int8_rowwise("model.onnx", "int8.onnx", calibration=[{"input_ids": ..., ...}])  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

PREFIX = "flipkd_rowwise"
# MatMuls left in fp32 by default: the 5 with the largest int8 error on the calibration data. Measured on the demo's
# trained student, smoothed (min cosine, dev pairs of 84 decided differently from torch, texts/s at batch 32): none
# kept 0.9935, 3, 115; every down_proj kept (29) 0.9940, 1, 99; 5 kept 0.9947, 0, 116 (README, Deploy)
KEEP_WORST = 5


def _weight_matmuls(model: onnx.ModelProto, keep_fp32: Iterable[str] = ()) -> list[onnx.NodeProto]:
    """MatMul nodes whose second input is a constant 2-D weight, not named in ``keep_fp32``."""
    keep = set(keep_fp32)
    shapes = {i.name: len(i.dims) for i in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type == "MatMul" and shapes.get(n.input[1]) == 2 and n.name not in keep]


def _activations(model: onnx.ModelProto, calibration: Sequence[dict[str, np.ndarray]],
                 inputs: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
    """Per calibration batch, the values of the tensors named ``inputs``, as 2-D [rows, channels] arrays."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for name in inputs:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for feed in calibration:
        values = session.run(list(inputs), feed)
        yield {name: value.reshape(-1, value.shape[-1]) for name, value in zip(inputs, values, strict=True)}


def channel_absmax(model: onnx.ModelProto, calibration: Sequence[dict[str, np.ndarray]],
                   inputs: Sequence[str]) -> dict[str, np.ndarray]:
    """Per input channel, the largest |value| of each tensor in ``inputs`` over the calibration batches."""
    found: dict[str, np.ndarray] = {}
    for batch in _activations(model, calibration, inputs):
        for name, value in batch.items():
            peak = np.abs(value).max(axis=0)
            found[name] = np.maximum(found.get(name, peak), peak)
    return found


WEIGHT_LEVELS = 63  # 7-bit weights: no int16 saturation on CPUs without VNNI (see _int8_columns)


def _int8_columns(w: np.ndarray, outliers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column: (int8 weights, float32 scale per column). The rows of ``outliers`` are
    multiplied in fp32 instead: zero here, so they take none of a column's range. Weights use 7 bits (+-63), as
    ONNX Runtime's ``reduce_range``: without AVX-512 VNNI its u8 x s8 kernel adds pairs of products in int16, which
    saturates past 255 * 63 * 2 (on an AVX2-only CPU, 8-bit weights gave cosines to fp32 of 0.2 in the tests)."""
    if outliers is not None and len(outliers):
        w = w.copy()
        w[outliers] = 0.0
    scale = (np.maximum(np.abs(w).max(axis=0), 1e-12) / WEIGHT_LEVELS).astype(np.float32)
    return np.clip(np.round(w / scale), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8), scale


def _rowwise_product(x: np.ndarray, w_int8: np.ndarray, w_scale: np.ndarray, asymmetric: bool = False,
                     outliers: np.ndarray | None = None, w: np.ndarray | None = None) -> np.ndarray:
    """What the rewritten graph computes for one MatMul, in numpy (x already smoothed). ``outliers``: input
    channels multiplied in fp32 with the rows of ``w`` (smoothed weights), left out of the int8 product."""
    if outliers is not None and len(outliers):
        inliers = x.copy()
        inliers[:, outliers] = 0.0
        return _rowwise_product(inliers, w_int8, w_scale, asymmetric) + x[:, outliers] @ w[outliers]
    if asymmetric:
        low = x.min(axis=1, keepdims=True)
        scale = np.maximum((x.max(axis=1, keepdims=True) - low) / 255, 1e-12)
        zero = np.round(-low / scale)
        x_q = np.clip(np.round(x / scale) + zero, 0, 255)
        return (x_q @ w_int8.astype(np.float32) - zero * w_int8.sum(axis=0, dtype=np.float32)) * scale * w_scale
    scale = np.maximum(np.abs(x).max(axis=1, keepdims=True) / 127, 1e-12)
    return (np.clip(np.round(x / scale), -127, 127) @ w_int8.astype(np.float32)) * scale * w_scale


def matmul_errors(model: onnx.ModelProto, calibration: Sequence[dict[str, np.ndarray]],
                  matmuls: Sequence[onnx.NodeProto], factors: dict[str, np.ndarray],
                  asymmetric: bool = False, outliers: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Per MatMul, ||rowwise int8 output - fp32 output||^2 / ||fp32 output||^2 over the calibration batches."""
    weights = {i.name: i for i in model.graph.initializer}
    outliers = outliers or {}
    prepared = {}
    for node in matmuls:
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        factor = factors.get(node.input[0])
        smoothed = w if factor is None else w * factor[:, None]
        prepared[node.name] = (w, *_int8_columns(smoothed, outliers.get(node.input[0])), smoothed)
    error = dict.fromkeys(prepared, 0.0)
    norm = dict.fromkeys(prepared, 0.0)
    for batch in _activations(model, calibration, list(dict.fromkeys(n.input[0] for n in matmuls))):
        for node in matmuls:
            x = batch[node.input[0]]
            w, w_int8, w_scale, smoothed = prepared[node.name]
            exact = x @ w
            factor = factors.get(node.input[0])
            approx = _rowwise_product(x if factor is None else x / factor, w_int8, w_scale, asymmetric,
                                      outliers.get(node.input[0]), smoothed)
            error[node.name] += float(((approx - exact) ** 2).sum())
            norm[node.name] += float((exact ** 2).sum())
    return {name: error[name] / max(norm[name], 1e-30) for name in error}


def _constant(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def quantize_int8_rowwise(fp32_path: str | Path, int8_path: str | Path,
                          calibration: Sequence[dict[str, np.ndarray]] | None = None, alpha: float = 0.5,
                          keep_fp32: Iterable[str] = (), keep_worst: int = KEEP_WORST,
                          asymmetric: bool = False, outlier_channels: int = 0, fused: bool = True) -> dict:
    """Rewrite every constant-weight MatMul of ``fp32_path`` as per-row int8 (see the module docstring).

    ``calibration``: model inputs (``input_ids``, ``attention_mask`` batches) to smooth with and to measure each
    MatMul's int8 error on; None or empty: no smoothing, nothing measured. ``alpha``: how much of an outlier
    moves into the weights (0: none, 1: all). ``keep_fp32``: MatMul names left in fp32; with calibration, also the
    ``keep_worst`` MatMuls whose int8 output is furthest from fp32 (:func:`matmul_errors`). ``asymmetric``: each
    row spans its own [min, max] in 256 levels (a zero point per row) instead of [-max|x|, max|x|] in 255;
    ONNX Runtime's ``MatMulInteger`` takes one zero point per tensor, so the row's is subtracted from the int32
    product as ``zero_row * colsum(W_q)``. ``outlier_channels``: per MatMul input, the channels of largest
    calibration peak (after smoothing) that are multiplied in fp32 apart from the int8 product, as in LLM.int8()
    (Dettmers et al., 2022), so that they no longer set every row's scale; needs calibration. ``fused``: the int8
    product, its cast to float and the column scales in one ONNX Runtime kernel (``com.microsoft``
    ``MatMulIntegerToFloat``) and, for symmetric rows of a model at opset 18 or later, each row's quantization in
    one ``QuantizeLinear`` (opset 21, a scale per block of a whole row; the model moves to opset 21); False keeps
    to the ops of the model's opset (``Div``, ``Round``, ``Clip``, ``Cast``, ``MatMulInteger``, ``Mul``).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if outlier_channels < 0 or (outlier_channels and not calibration):
        raise ValueError(f"outlier_channels must be >= 0 and needs calibration data, got {outlier_channels}")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = onnx.load(str(fp32_path))
    graph = model.graph
    keep = list(keep_fp32)
    matmuls = _weight_matmuls(model, keep)
    weights = {i.name: i for i in graph.initializer}
    inputs = list(dict.fromkeys(n.input[0] for n in matmuls))
    factors: dict[str, np.ndarray] = {}
    outliers: dict[str, np.ndarray] = {}
    errors: dict[str, float] = {}
    if calibration:
        peaks = channel_absmax(model, calibration, inputs)
        weight_peak: dict[str, np.ndarray] = {}
        for node in matmuls:
            row_peak = np.abs(numpy_helper.to_array(weights[node.input[1]])).max(axis=1)
            weight_peak[node.input[0]] = np.maximum(weight_peak.get(node.input[0], row_peak), row_peak)
        for name in inputs:
            factor = np.maximum(peaks[name], 1e-5) ** alpha / np.maximum(weight_peak[name], 1e-5) ** (1 - alpha)
            factors[name] = np.clip(factor, 1e-2, 1e3).astype(np.float32)
            if outlier_channels:
                smoothed_peak = peaks[name] / factors[name]
                outliers[name] = np.sort(np.argsort(-smoothed_peak)[:outlier_channels]).astype(np.int64)
        if keep_worst > 0:
            errors = matmul_errors(model, calibration, matmuls, factors, asymmetric, outliers)
            worst = sorted(errors, key=errors.__getitem__, reverse=True)[:keep_worst]
            keep += worst
            matmuls = [n for n in matmuls if n.name not in set(worst)]

    shared = [_constant(f"{PREFIX}/zero_point", np.uint8(128)), _constant(f"{PREFIX}/inv127", np.float32(1 / 127)),
              _constant(f"{PREFIX}/eps", np.float32(1e-12)), _constant(f"{PREFIX}/one", np.float32(1)),
              _constant(f"{PREFIX}/inv255", np.float32(1 / 255)), _constant(f"{PREFIX}/offset", np.float32(128)),
              _constant(f"{PREFIX}/low", np.float32(0)), _constant(f"{PREFIX}/high", np.float32(255)),
              _constant(f"{PREFIX}/last_axis", np.array([-1], dtype=np.int64))]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)

    def reduce(op: str, source: str, target: str) -> onnx.NodeProto:  # axes became an input in opset 18
        if opset >= 18:
            return helper.make_node(op, [source, f"{PREFIX}/last_axis"], [target], keepdims=1)
        return helper.make_node(op, [source], [target], axes=[-1], keepdims=1)

    # opset 21's QuantizeLinear takes a scale per block, here per row: symmetric rows, fused graphs, and a model
    # whose reductions already take their axes as an input (opset >= 18); of the ops whose meaning changed from
    # 18 to 21, GroupNormalization is the one a transformer could hold, so a graph with it keeps its opset
    quantize_linear = (fused and not asymmetric and opset >= 18
                       and not any(n.op_type == "GroupNormalization" for n in graph.node))
    channels = {n.input[0]: int(weights[n.input[1]].dims[0]) for n in matmuls}
    new_initializers, quantized_inputs, replaced = list(shared), {}, {}
    rewritten = {n.name for n in matmuls}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name not in rewritten:
            nodes.append(node)
            continue
        x = node.input[0]
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        if x in factors:
            w = w * factors[x][:, None]
        if x not in quantized_inputs:  # once per input: q/k/v and gate/up share theirs
            p = f"{PREFIX}/x{len(quantized_inputs)}"
            source = x
            if x in factors:
                new_initializers.append(_constant(f"{p}/inverse_factor", (1 / factors[x]).astype(np.float32)))
                nodes.append(helper.make_node("Mul", [x, f"{p}/inverse_factor"], [f"{p}/smoothed"]))
                source = f"{p}/smoothed"
            outlier_values = None
            if x in outliers:  # the outlier channels go apart in fp32; the rest, with zeros there, to int8
                mask = np.ones(channels[x], dtype=np.float32)
                mask[outliers[x]] = 0.0
                outlier_values = f"{p}/outlier_values"
                new_initializers += [_constant(f"{p}/inlier_mask", mask), _constant(f"{p}/outlier_index", outliers[x])]
                nodes += [helper.make_node("Gather", [source, f"{p}/outlier_index"], [outlier_values], axis=-1),
                          helper.make_node("Mul", [source, f"{p}/inlier_mask"], [f"{p}/inliers"])]
                source = f"{p}/inliers"
            if asymmetric:  # the row's [min, max] in 256 levels
                nodes += [reduce("ReduceMax", source, f"{p}/high"), reduce("ReduceMin", source, f"{p}/low"),
                          helper.make_node("Sub", [f"{p}/high", f"{p}/low"], [f"{p}/span"]),
                          helper.make_node("Mul", [f"{p}/span", f"{PREFIX}/inv255"], [f"{p}/raw_scale"])]
            else:  # [-max|x|, max|x|] in 255 levels
                nodes += [helper.make_node("Abs", [source], [f"{p}/abs"]),
                          reduce("ReduceMax", f"{p}/abs", f"{p}/peak"),
                          helper.make_node("Mul", [f"{p}/peak", f"{PREFIX}/inv127"], [f"{p}/raw_scale"])]
            nodes.append(helper.make_node("Max", [f"{p}/raw_scale", f"{PREFIX}/eps"], [f"{p}/scale"]))
            zero, row_zero = f"{PREFIX}/offset", None
            if asymmetric:  # the row's zero point, where its min lands; and how far it is from the graph's 128
                zero, row_zero = f"{p}/zero", f"{p}/row_zero"
                nodes += [helper.make_node("Div", [f"{p}/low", f"{p}/scale"], [f"{p}/low_scaled"]),
                          helper.make_node("Round", [f"{p}/low_scaled"], [f"{p}/low_rounded"]),
                          helper.make_node("Neg", [f"{p}/low_rounded"], [zero]),
                          helper.make_node("Sub", [zero, f"{PREFIX}/offset"], [row_zero])]
            if quantize_linear:  # one kernel: opset 21's QuantizeLinear, a scale and zero point per row (block)
                nodes += [helper.make_node("Shape", [f"{p}/scale"], [f"{p}/row_shape"]),
                          helper.make_node("ConstantOfShape", [f"{p}/row_shape"], [f"{p}/zero_u8"],
                                           value=numpy_helper.from_array(np.array([128], dtype=np.uint8))),
                          helper.make_node("QuantizeLinear", [source, f"{p}/scale", f"{p}/zero_u8"], [f"{p}/uint8"],
                                           axis=-1, block_size=channels[x])]
            else:
                nodes += [helper.make_node("Div", [source, f"{p}/scale"], [f"{p}/scaled"]),
                          helper.make_node("Round", [f"{p}/scaled"], [f"{p}/rounded"]),
                          helper.make_node("Add", [f"{p}/rounded", zero], [f"{p}/shifted"]),
                          helper.make_node("Clip", [f"{p}/shifted", f"{PREFIX}/low", f"{PREFIX}/high"],
                                           [f"{p}/clipped"]),
                          helper.make_node("Cast", [f"{p}/clipped"], [f"{p}/uint8"], to=TensorProto.UINT8)]
            quantized_inputs[x] = (f"{p}/uint8", f"{p}/scale", row_zero, outlier_values)
        x_q, x_scale, row_zero, outlier_values = quantized_inputs[x]
        w_int8, column_scale = _int8_columns(w, outliers.get(x))
        q = f"{PREFIX}/w{len(replaced)}"
        new_initializers += [_constant(f"{q}/int8", w_int8), _constant(f"{q}/scale", column_scale)]
        if fused:  # one kernel for the int8 product, its cast and the column scales
            nodes.append(helper.make_node("MatMulIntegerToFloat", [x_q, f"{q}/int8", f"{PREFIX}/one", f"{q}/scale",
                                                                   f"{PREFIX}/zero_point"], [f"{q}/product"],
                                          domain="com.microsoft"))
        else:
            nodes += [helper.make_node("MatMulInteger", [x_q, f"{q}/int8", f"{PREFIX}/zero_point"], [f"{q}/int32"]),
                      helper.make_node("Cast", [f"{q}/int32"], [f"{q}/float"], to=TensorProto.FLOAT),
                      helper.make_node("Mul", [f"{q}/float", f"{q}/scale"], [f"{q}/product"])]
        product = f"{q}/product"
        if row_zero is not None:  # the int8 product subtracted 128 from every value; the row's own zero point instead
            new_initializers.append(_constant(f"{q}/colsum", w_int8.sum(axis=0, dtype=np.float32) * column_scale))
            nodes += [helper.make_node("Mul", [row_zero, f"{q}/colsum"], [f"{q}/correction"]),
                      helper.make_node("Sub", [product, f"{q}/correction"], [f"{q}/centred"])]
            product = f"{q}/centred"
        if outlier_values is None:
            nodes.append(helper.make_node("Mul", [product, x_scale], [node.output[0]], name=node.name))
        else:
            new_initializers.append(_constant(f"{q}/outlier_weight", w[outliers[x]]))
            nodes += [helper.make_node("Mul", [product, x_scale], [f"{q}/int8_part"]),
                      helper.make_node("MatMul", [outlier_values, f"{q}/outlier_weight"], [f"{q}/outlier_part"]),
                      helper.make_node("Add", [f"{q}/int8_part", f"{q}/outlier_part"], [node.output[0]],
                                       name=node.name)]
        replaced[node.name] = node.input[1]
    still_used = {i for n in nodes for i in n.input}
    kept = [i for i in graph.initializer if i.name not in set(replaced.values()) or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_initializers)
    del graph.node[:]
    graph.node.extend(nodes)
    if fused and replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    if quantize_linear and replaced and opset < 21:
        next(o for o in model.opset_import if o.domain in ("", "ai.onnx")).version = 21
    onnx.save(model, str(int8_path))
    return {"path": str(int8_path), "weight_type": "int8", "method": "rowwise", "per_channel": True,
            "smoothing_alpha": alpha if calibration else None, "asymmetric": asymmetric,
            "outlier_channels": outlier_channels, "fused": fused, "calibration_batches": len(calibration or []),
            "excluded_nodes": keep, "excluded_count": len(keep),
            "largest_errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:10]),
            "quantized_matmuls": len(replaced), "quantize_seconds": round(time.perf_counter() - start, 3),
            "file_bytes": int8_path.stat().st_size}
