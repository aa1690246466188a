"""The parity gates of ``export``: each ONNX engine against torch on the dev pairs, through the serving path, and
the engine to serve (the one asked for, or the fastest that passes).

Every engine: the fp32 file within ``fp32_tolerance`` of torch's z and serving token ids equal to the training
tokenizer's. int8 engines, a paired decision test: min cosine, the dev decisions that change at the stored
threshold, and the change of dev AP (:class:`Gates`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.export.onnx_export import compare
from components.metrics import classification_metrics
from components.student.lora_encoder import LoraEncoder
from serving.onnx_pyfunc import OnnxTextEncoder


@dataclass
class Gates:
    """What an engine must keep of torch's output on the dev pairs to be served.

    int8 engines: min cosine of z, the decisions (``score >= threshold``) that differ from torch's (at most
    ``max_flipped_share`` of the pairs or ``min_flipped_pairs``, whichever is larger) and the change of average
    precision. A changed decision counts only when torch's score lies ``decision_margin`` or more from the
    threshold: the threshold is fitted on these dev scores, so pairs sit on it, and on the demo student the pair
    0.0002 from it flipped under every int8 variant tried (see docs/deployment.md).
    """

    fp32_tolerance: float = 1e-4
    int8_min_cosine: float = 0.99
    max_flipped_share: float = 0.01
    min_flipped_pairs: int = 1
    ap_tolerance: float = 0.01
    decision_margin: float = 0.01

    def allowed_flips(self, pairs: int) -> int:
        return max(self.min_flipped_pairs, int(self.max_flipped_share * pairs))


def token_mismatches(encoder: LoraEncoder, served: OnnxTextEncoder, texts: list[str]) -> int:
    """Texts whose serving token ids differ from ``LoraEncoder.tokenize`` (must be 0)."""
    bad = 0
    for start in range(0, len(texts), 64):
        chunk = texts[start:start + 64]
        batch = encoder.tokenize(chunk)
        ours = served.token_ids(chunk)
        for row, ids in enumerate(ours):
            ref = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
            bad += int(ref != ids)
    return bad


def _pair_scores(z: np.ndarray, index: dict[str, int], frame: pd.DataFrame) -> np.ndarray:
    a = z[[index[t] for t in frame["text_a"]]]
    b = z[[index[t] for t in frame["text_b"]]]
    return (a.astype(np.float64) * b).sum(1)


def engine_gate(metrics: dict, engine: str, gates: Gates, pairs: int) -> list[str]:
    """Why ``engine`` may not be served (empty: it may). fp32 and the tokenizer are checked for every engine."""
    failures = []
    if metrics["tokenizer_mismatches"] > 0:
        failures.append(f"the serving tokenizer differs from the torch one on {int(metrics['tokenizer_mismatches'])} "
                        f"texts")
    if not metrics["fp32_max_abs_diff"] <= gates.fp32_tolerance:
        failures.append(f"fp32 max abs diff {metrics['fp32_max_abs_diff']:.3g} > {gates.fp32_tolerance:g}")
    if engine == "fp32":
        return failures
    if not metrics[f"{engine}_min_cosine"] >= gates.int8_min_cosine:
        failures.append(f"{engine} min cosine {metrics[f'{engine}_min_cosine']:.4f} < {gates.int8_min_cosine:g}")
    flips, allowed = int(metrics[f"{engine}_flipped_clear_pairs"]), gates.allowed_flips(pairs)
    if flips > allowed:
        failures.append(f"{engine} changes the decision of {flips} of {pairs} dev pairs scored "
                        f"{gates.decision_margin:g} or more from the threshold (allowed: {allowed})")
    if not abs(metrics[f"{engine}_dev_ap_delta"]) <= gates.ap_tolerance:
        failures.append(f"{engine} dev AP {metrics[f'{engine}_dev_ap']:.4f} vs torch {metrics['torch_dev_ap']:.4f} "
                        f"(tolerance {gates.ap_tolerance:g})")
    return failures


def check_parity(encoder: LoraEncoder, bundles: dict[str, Path], dev: pd.DataFrame, gates: Gates,
                 threads: int | None = None, extra_texts: list[str] | None = None) -> dict:
    """Torch vs the served path of each engine on the dev texts: metrics and, per engine, why it may not serve."""
    texts = list(dict.fromkeys([*dev["text_a"], *dev["text_b"], *(extra_texts or [])]))
    index = {t: i for i, t in enumerate(texts)}
    reference = encoder.encode(texts).numpy()
    threshold = float(encoder.config.threshold)
    labels = dev["match"].to_numpy()
    torch_scores = _pair_scores(reference, index, dev)
    torch_metrics = classification_metrics(torch_scores, labels, threshold)
    clear = np.abs(torch_scores - threshold) >= gates.decision_margin  # pairs not decided by rounding noise
    metrics: dict[str, float] = {"torch_dev_f1": float(torch_metrics["f1"]),
                                 "torch_dev_ap": float(torch_metrics["average_precision"]),
                                 "parity_texts": float(len(texts)), "dev_pairs": float(len(dev)),
                                 "threshold": threshold, "pairs_near_threshold": float((~clear).sum())}
    for engine, folder in bundles.items():
        served = OnnxTextEncoder(folder, threads=threads)
        if engine == "fp32":
            metrics["tokenizer_mismatches"] = float(token_mismatches(encoder, served, texts))
        z = served.encode(texts)
        stats = compare(reference, z)
        scores = _pair_scores(z, index, dev)
        result = classification_metrics(scores, labels, threshold)
        flipped = (scores >= threshold) != (torch_scores >= threshold)
        metrics.update({f"{engine}_max_abs_diff": stats["max_abs_diff"], f"{engine}_min_cosine": stats["min_cosine"],
                        f"{engine}_mean_cosine": stats["mean_cosine"], f"{engine}_dev_f1": float(result["f1"]),
                        f"{engine}_dev_f1_delta": float(result["f1"]) - metrics["torch_dev_f1"],
                        f"{engine}_dev_ap": float(result["average_precision"]),
                        f"{engine}_dev_ap_delta": float(result["average_precision"]) - metrics["torch_dev_ap"],
                        f"{engine}_flipped_pairs": float(flipped.sum()),
                        f"{engine}_flipped_clear_pairs": float((flipped & clear).sum())})
    failures = {engine: engine_gate(metrics, engine, gates, len(dev)) for engine in bundles}
    for engine, why in failures.items():
        metrics[f"{engine}_gate_passed"] = float(not why)
    return {"metrics": metrics, "failures": failures}


def measure_speed(folder: Path, texts: list[str], threads: int | None = None, repeats: int = 3) -> float:
    """Texts/s of the served path (tokenizer + ONNX Runtime) at its batch size, best of ``repeats`` after a warm-up."""
    served = OnnxTextEncoder(folder, threads=threads)
    served.encode(texts[:8])
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        served.encode(texts)
        best = max(best, len(texts) / (time.perf_counter() - start))
    return best


def choose_engine(serve: str, failures: dict[str, list[str]], speeds: dict[str, float]) -> str | None:
    """The engine to serve: the one asked for, or (``auto``) the fastest that passes its gates; None if none may."""
    if serve != "auto":
        return None if failures[serve] else serve
    passing = [e for e in speeds if not failures[e]]
    return max(passing, key=speeds.__getitem__) if passing else None
