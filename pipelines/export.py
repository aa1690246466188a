"""``export``: a trained student -> ONNX (fp32 and int8) -> parity gates -> a deployable MLflow pyfunc model.

Steps: rebuild the trained student (run id, ``runs:/``, ``models:/`` or folder); merge LoRA and truncate at the
representation layer; export it to ONNX (:func:`components.onnx_export.export_onnx`); quantize a copy to int8
with the MLP ``down_proj`` MatMuls kept fp32; check both against torch ``encode`` on the dev texts through the
*serving* path (the tokenizers library, as the deployed model tokenizes):

- fp32: max absolute difference of z <= 1e-4 (``--fp32-tolerance``);
- int8: min cosine >= 0.99 (``--int8-min-cosine``) and dev F1 at the stored threshold within 0.005 of torch
  (``--f1-tolerance``).

The fp32 gate always applies; the int8 gates apply when int8 is the served file (``--serve int8``, the default).
When every applicable gate passes, the run logs a pyfunc model ``model`` (see :mod:`serving.onnx_pyfunc`) and
the tag ``flipkd.deployable=true``. Otherwise no model is logged, the tag is ``false`` with the reason in
``flipkd.not_deployable_reason``, and the command exits with code 2 after saying why.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import click
import mlflow
import numpy as np
import pandas as pd

from components.data import DataError, read_pairs
from components.lora_encoder import LoraEncoder
from components.metrics import classification_metrics
from components.onnx_export import INT8_METHODS, compare, export_onnx, quantize_int8
from pipelines import _mlflow
from pipelines._data import DataArgs, load_splits
from pipelines._options import POSITIVE, UNIT, common_options, option
from pipelines.evaluate import load_trained_encoder
from serving import onnx_pyfunc
from serving.onnx_pyfunc import (
    BUNDLE,
    CONFIG_FILE,
    FAQ_EMBEDDINGS_FILE,
    FAQ_FILE,
    FORMAT,
    MODEL_FILE,
    TOKENIZER_FILE,
    OnnxTextEncoder,
)

MODEL_NAME = "model"
ENGINES = ("int8", "fp32")
PIP_REQUIREMENTS = ["onnxruntime", "tokenizers", "numpy", "pandas"]
GATE_METRICS = ("fp32_max_abs_diff", "int8_min_cosine", "int8_dev_f1_delta", "dev_f1", "torch_dev_f1",
                "fp32_dev_f1", "int8_dev_f1", "tokenizer_mismatches")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Gates:
    fp32_tolerance: float = 1e-4
    int8_min_cosine: float = 0.99
    f1_tolerance: float = 0.005


@dataclass
class Limits:
    top_k: int = 5
    max_rows: int = 256
    max_chars: int = 4000
    on_long_text: str = "reject"


@dataclass
class Faq:
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ inputs


def read_faq(path: str | Path) -> Faq:
    """FAQ entries from a CSV or JSONL file with columns ``faq_id`` and ``text`` (one clear error if not)."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise DataError("no such file", file=name)
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if suffix == ".tsv" else ",")
        elif suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
        else:
            raise DataError(f"unknown format {suffix!r}: use .csv, .tsv or .jsonl", file=name)
    except (ValueError, UnicodeDecodeError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"cannot read the file: {err}", file=name) from None
    missing = [c for c in ("faq_id", "text") if c not in frame.columns]
    if missing:
        raise DataError(f"missing column {missing[0]!r} (found: {', '.join(map(str, frame.columns))})", file=name)
    if frame.empty:
        raise DataError("no FAQ entries", file=name)
    ids, texts = [], []
    for row, (faq_id, text) in enumerate(zip(frame["faq_id"], frame["text"], strict=True), start=1):
        if faq_id is None or (isinstance(faq_id, float) and np.isnan(faq_id)) or not str(faq_id).strip():
            raise DataError("empty faq_id", file=name, row=row, field="faq_id")
        if not isinstance(text, str) or not text.strip():
            raise DataError("empty or non-text FAQ text", file=name, row=row, field="text")
        ids.append(str(faq_id).strip())
        texts.append(text)
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(f"duplicate faq_id {duplicates[0]!r}", file=name, field="faq_id")
    return Faq(ids, texts)


def dev_frame(dev: str | None, work: Path, seed: int) -> pd.DataFrame:
    """The pairs of ``--dev``, or the embedded demo's dev split."""
    if dev:
        return read_pairs(dev)
    args = DataArgs(None, None, None, None, "text_a", "text_b", "label", (0.0, 1.0), None, 0.15, 0.15)
    return load_splits(args, work, seed)["dev"]


def source_run_id(model: str) -> str | None:
    """The training run behind ``--model`` when it names one (run id, runs:/ or models:/ URI)."""
    if RUN_ID.match(model):
        return model
    if model.startswith("runs:/"):
        return model[len("runs:/"):].split("/")[0]
    if model.startswith("models:/"):
        ref = model[len("models:/"):].split("/")
        client = mlflow.MlflowClient()
        try:
            if "@" in ref[0]:
                name, alias = ref[0].split("@", 1)
                return client.get_model_version_by_alias(name, alias).run_id
            return client.get_model_version(ref[0], ref[1]).run_id if len(ref) > 1 else None
        except mlflow.exceptions.MlflowException:
            return None
    return None


# ------------------------------------------------------------------------------------------ building


def export_engines(encoder: LoraEncoder, work: Path, *, dynamo: bool = False, opset: int | None = None,
                   per_channel: bool = False, int8_method: str = "blockwise", block_size: int = 32) -> dict:
    """``work/fp32/model.onnx`` and ``work/int8/model.onnx``; returns the exporter and quantizer reports."""
    merged = encoder.merged_encoder()
    info = export_onnx(merged, work / "fp32" / MODEL_FILE, dynamo=dynamo, opset=opset)
    del merged
    quant = quantize_int8(work / "fp32" / MODEL_FILE, work / "int8" / MODEL_FILE, exclude_down_proj=True,
                          per_channel=per_channel, method=int8_method, block_size=block_size)
    return {"export": info, "quantize": quant}


def serving_config(encoder: LoraEncoder, engine: str, limits: Limits, faq: Faq | None = None) -> dict:
    cfg, tok = encoder.config, encoder.tokenizer
    return {
        "format": FORMAT, "model_file": MODEL_FILE, "tokenizer_file": TOKENIZER_FILE, "engine": engine,
        "max_length": cfg.max_length, "append_eos": cfg.append_eos, "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id, "padding_side": tok.padding_side,
        "truncation_side": getattr(tok, "truncation_side", "right"), "instruction": cfg.instruction,
        "suffix": cfg.suffix,
        "threshold": float(cfg.threshold), "dimension": encoder.dimension, "pooling": cfg.pooling,
        "max_rows": limits.max_rows, "max_chars": limits.max_chars, "on_long_text": limits.on_long_text,
        "encode_batch_size": 32, "threads": None, "top_k": limits.top_k,
        "faq_file": FAQ_FILE if faq and faq.ids else None,
        "faq_embeddings_file": FAQ_EMBEDDINGS_FILE if faq and faq.ids else None,
        "student": cfg.extra.get("student"),
    }


def write_bundle(encoder: LoraEncoder, onnx_dir: Path, bundle: Path, *, engine: str, limits: Limits) -> Path:
    """The served folder: the ONNX file(s) of ``engine`` (moved there), ``tokenizer.json`` and the config."""
    bundle.mkdir(parents=True, exist_ok=True)
    for path in onnx_dir.iterdir():  # the model and, over 2 GiB, its external data file
        shutil.move(str(path), str(bundle / path.name))
    encoder.tokenizer.backend_tokenizer.save(str(bundle / TOKENIZER_FILE))
    config = serving_config(encoder, engine, limits, None)
    (bundle / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return bundle


def add_faq(bundle: Path, faq: Faq, threads: int | None = None) -> np.ndarray:
    """Embed the FAQ once with the bundle's own ONNX file and store entries and embeddings in the bundle."""
    embeddings = OnnxTextEncoder(bundle, threads=threads).encode(faq.texts).astype(np.float32)
    (bundle / FAQ_FILE).write_text(json.dumps({"faq_id": faq.ids, "text": faq.texts}, ensure_ascii=False),
                                   encoding="utf-8")
    np.save(bundle / FAQ_EMBEDDINGS_FILE, embeddings, allow_pickle=False)
    config = json.loads((bundle / CONFIG_FILE).read_text(encoding="utf-8"))
    config.update(faq_file=FAQ_FILE, faq_embeddings_file=FAQ_EMBEDDINGS_FILE, faq_entries=len(faq.ids))
    (bundle / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return embeddings


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


def _f1(scores: np.ndarray, frame: pd.DataFrame, threshold: float) -> float:
    return float(classification_metrics(scores, frame["match"].to_numpy(), threshold)["f1"])


def _pair_scores(z: np.ndarray, index: dict[str, int], frame: pd.DataFrame) -> np.ndarray:
    a = z[[index[t] for t in frame["text_a"]]]
    b = z[[index[t] for t in frame["text_b"]]]
    return (a.astype(np.float64) * b).sum(1)


def check_parity(encoder: LoraEncoder, bundles: dict[str, Path], dev: pd.DataFrame, gates: Gates,
                 serve: str, threads: int | None = None, extra_texts: list[str] | None = None) -> dict:
    """Torch vs the served path of each engine on the dev texts; metrics, gate results and the verdict."""
    texts = list(dict.fromkeys([*dev["text_a"], *dev["text_b"], *(extra_texts or [])]))
    index = {t: i for i, t in enumerate(texts)}
    reference = encoder.encode(texts).numpy()
    threshold = float(encoder.config.threshold)
    torch_f1 = _f1(_pair_scores(reference, index, dev), dev, threshold)
    metrics: dict[str, float] = {"torch_dev_f1": torch_f1, "parity_texts": float(len(texts)),
                                 "threshold": threshold}
    for engine, folder in bundles.items():
        served = OnnxTextEncoder(folder, threads=threads)
        if engine == "fp32":
            metrics["tokenizer_mismatches"] = float(token_mismatches(encoder, served, texts))
        z = served.encode(texts)
        stats = compare(reference, z)
        f1 = _f1(_pair_scores(z, index, dev), dev, threshold)
        metrics.update({f"{engine}_max_abs_diff": stats["max_abs_diff"], f"{engine}_min_cosine": stats["min_cosine"],
                        f"{engine}_mean_cosine": stats["mean_cosine"], f"{engine}_dev_f1": f1,
                        f"{engine}_dev_f1_delta": f1 - torch_f1})
    metrics["dev_f1"] = metrics[f"{serve}_dev_f1"]
    failures = []
    if metrics["tokenizer_mismatches"] > 0:
        failures.append(f"the serving tokenizer differs from the torch one on {int(metrics['tokenizer_mismatches'])} "
                        f"texts")
    if not metrics["fp32_max_abs_diff"] <= gates.fp32_tolerance:
        failures.append(f"fp32 max abs diff {metrics['fp32_max_abs_diff']:.3g} > {gates.fp32_tolerance:g}")
    int8_failures = []
    if not metrics["int8_min_cosine"] >= gates.int8_min_cosine:
        int8_failures.append(f"int8 min cosine {metrics['int8_min_cosine']:.4f} < {gates.int8_min_cosine:g}")
    if not abs(metrics["int8_dev_f1_delta"]) <= gates.f1_tolerance:
        int8_failures.append(f"int8 dev F1 {metrics['int8_dev_f1']:.4f} vs torch {torch_f1:.4f} "
                             f"(delta {metrics['int8_dev_f1_delta']:+.4f}, tolerance {gates.f1_tolerance:g})")
    if serve == "int8":
        failures += int8_failures
    metrics["fp32_gate_passed"] = float(not any(f.startswith(("fp32", "the serving")) for f in failures))
    metrics["int8_gate_passed"] = float(not int8_failures)
    return {"metrics": metrics, "failures": failures, "int8_failures": int8_failures, "deployable": not failures}


# ------------------------------------------------------------------------------------------ MLflow model


def model_signature(top_k: int):
    """Written by hand: four optional text columns (one input form per request) and the ``top_k`` param."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    inputs = Schema([ColSpec("string", name, required=False) for name in ("text_a", "text_b", "text", "query")])
    answer = Object([Property("faq_id", "string"), Property("faq_text", "string"), Property("score", "double"),
                     Property("match", "boolean")])
    outputs = Schema([ColSpec("double", "score", required=False), ColSpec("boolean", "match", required=False),
                      ColSpec(Array("float"), "embedding", required=False),
                      ColSpec("string", "faq_id", required=False), ColSpec("string", "faq_text", required=False),
                      ColSpec(Array(answer), "answers", required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("top_k", "long", top_k)]))


def pyfunc_arguments(bundle: Path, top_k: int, example: pd.DataFrame) -> dict:
    """Keyword arguments shared by ``mlflow.pyfunc.log_model`` and ``save_model``."""
    # models from code: the pyfunc is rebuilt from serving/model_code.py at load, never unpickled
    return {"python_model": str(Path(onnx_pyfunc.__file__).parent / "model_code.py"),
            "artifacts": {BUNDLE: str(bundle)},
            "signature": model_signature(top_k), "input_example": example, "pip_requirements": PIP_REQUIREMENTS,
            # serving/ and the torch-free component modules it imports (checksums, onnx_session)
            "code_paths": [str(Path(onnx_pyfunc.__file__).parent), str(Path(onnx_pyfunc.__file__).parent.parent
                                                                        / "components")]}


def example_pairs(dev: pd.DataFrame, n: int = 2) -> pd.DataFrame:
    return pd.DataFrame({"text_a": list(dev["text_a"][:n]), "text_b": list(dev["text_b"][:n])})


# ------------------------------------------------------------------------------------------ command


def _positive_or_none(ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"must be >= 1, got {value}")
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@option("--model", required=True, help="Trained student: a run id, runs:/RUN/student, models:/NAME@ALIAS or a folder.")
@option("--student", default=None, help="Override the student base model recorded with the adapter.")
@option("--faq", type=click.Path(dir_okay=False), default=None,
        help="FAQ file (CSV/TSV/JSONL with columns faq_id, text), embedded once and stored with the model.")
@option("--top-k", type=click.IntRange(1, onnx_pyfunc.TOP_K_MAX), default=5, help="FAQ entries per query.")
@option("--dev", type=click.Path(dir_okay=False), default=None,
        help="Pair file (text_a, text_b, label) for the parity checks (default: the demo dev split).")
@option("--serve", type=click.Choice(ENGINES), default="int8",
        help="The ONNX file the model serves; its gates decide deployability (fp32 gates always apply).")
@option("--dynamo/--no-dynamo", default=False,
        help="Exporter: torch.export-based (dynamo) or TorchScript (default; much faster to export, same parity).")
@option("--int8-method", type=click.Choice(INT8_METHODS), default="blockwise",
        help="blockwise: 8-bit weights and activations in blocks of --int8-block-size (within the parity gates on "
             "the real student, about ONNX fp32 speed, 1/4 of its size); dynamic: one activation scale per tensor, "
             "about 2x faster than fp32 but outside the gates on the real student (README, Export).")
@option("--int8-block-size", type=click.Choice(["16", "32", "64", "128"]), default="32",
        help="blockwise: input channels per int8 block (larger: faster, less exact).")
@option("--int8-per-channel/--no-int8-per-channel", default=False,
        help="dynamic: int8 weight scales per output channel instead of per tensor.")
@option("--opset", type=int, default=None, callback=_positive_or_none, help="ONNX opset (default: the exporter's).")
@option("--fp32-tolerance", type=POSITIVE, default=1e-4, help="Gate: max abs diff of z, ONNX fp32 vs torch.")
@option("--int8-min-cosine", type=UNIT, default=0.99, help="Gate: min cosine of z, ONNX int8 vs torch.")
@option("--f1-tolerance", type=click.FloatRange(min=0), default=0.005,
        help="Gate: |int8 dev F1 - torch dev F1| at the stored threshold.")
@option("--max-rows", type=click.IntRange(min=1), default=256, help="Serving: rows per request.")
@option("--max-chars", type=click.IntRange(min=1), default=4000, help="Serving: characters per text.")
@option("--on-long-text", type=click.Choice(["reject", "truncate"]), default="reject",
        help="Serving: a text over --max-chars is a 400 error, or cut (with a `truncated` output column).")
@option("--threads", type=int, default=None, callback=_positive_or_none,
        help="ONNX Runtime threads for the checks (serving: $FLIPKD_ONNX_THREADS or ONNX Runtime's default).")
@common_options
@_mlflow.clean_errors
def cli(**o) -> dict:
    """Export a trained student to ONNX, check parity with torch and log a deployable MLflow model."""
    faq = read_faq(o["faq"]) if o["faq"] else None
    if o["dev"] and not Path(o["dev"]).is_file():
        raise DataError("no such file", file=o["dev"])
    gates = Gates(o["fp32_tolerance"], o["int8_min_cosine"], o["f1_tolerance"])
    limits = Limits(o["top_k"], o["max_rows"], o["max_chars"], o["on_long_text"])
    with _mlflow.run("export", o["experiment"]) as active, _mlflow.scratch_dir() as work:
        dev = dev_frame(o["dev"], work, o["seed"])
        encoder = load_trained_encoder(o["model"], o["student"], o["cache_dir"])
        source = source_run_id(o["model"])
        if source:
            mlflow.set_tag("flipkd.source_run", source)
        built = export_engines(encoder, work, dynamo=o["dynamo"], opset=o["opset"],
                               per_channel=o["int8_per_channel"], int8_method=o["int8_method"],
                               block_size=int(o["int8_block_size"]))
        info = built["export"]
        quant = built["quantize"]
        _mlflow.log_params({"model": o["model"], "source_run": source or "", "serve": o["serve"],
                            "exporter": info["exporter"], "opset": info["opset"], "exporter_why": info["why"],
                            "external_data": info["external_data"], "int8_excluded_nodes": quant["excluded_count"],
                            "int8_quantized_matmuls": quant["quantized_matmuls"],
                            "int8_per_channel": o["int8_per_channel"], "int8_method": o["int8_method"],
                            "int8_block_size": int(o["int8_block_size"]), "threshold": encoder.config.threshold,
                            "faq_entries": len(faq.ids) if faq else 0, "gates": gates.__dict__,
                            "serving": limits.__dict__, "dev": dev.attrs.get("source", o["dev"] or "demo dev")})
        bundles = {engine: write_bundle(encoder, work / engine, work / f"bundle_{engine}", engine=engine,
                                        limits=limits) for engine in ENGINES}
        report = check_parity(encoder, bundles, dev, gates, o["serve"], threads=o["threads"],
                              extra_texts=faq.texts if faq else None)
        metrics = report["metrics"]
        _mlflow.log_metrics({**metrics, "export_seconds": info["export_seconds"],
                             "quantize_seconds": quant["quantize_seconds"], "onnx_fp32_bytes": info["file_bytes"],
                             "onnx_int8_bytes": quant["file_bytes"]})
        _mlflow.log_json({**built, "parity": report, "gates": gates.__dict__}, "export_report.json")
        mlflow.set_tag("flipkd.served_engine", o["serve"])
        click.echo(f"exported with {info['exporter']} (opset {info['opset']}); int8 {quant['method']}"
                   + (f", {quant['excluded_count']} down_proj MatMuls kept in fp32" if quant["excluded_count"] else
                      f", blocks of {quant['block_size']}" if quant["method"] == "blockwise" else ""))
        click.echo(f"fp32: max abs diff {metrics['fp32_max_abs_diff']:.2e}  dev F1 {metrics['fp32_dev_f1']:.4f}   "
                   f"int8: min cosine {metrics['int8_min_cosine']:.4f}  dev F1 {metrics['int8_dev_f1']:.4f} "
                   f"(delta {metrics['int8_dev_f1_delta']:+.4f})   torch dev F1 {metrics['torch_dev_f1']:.4f} "
                   f"at threshold {metrics['threshold']:.3f}   [{int(metrics['parity_texts'])} texts]")
        if report["int8_failures"] and o["serve"] == "fp32":
            click.echo("note: int8 would not pass its gates (" + "; ".join(report["int8_failures"]) + "); "
                       "serving fp32")
        if not report["deployable"]:
            reason = "; ".join(report["failures"])
            mlflow.set_tags({"flipkd.deployable": "false", "flipkd.not_deployable_reason": reason[:5000]})
            run_id = active.info.run_id
        else:
            served = bundles[o["serve"]]
            if faq:
                add_faq(served, faq, o["threads"])
            onnx_pyfunc.write_checksums(served)  # last: load_context refuses a bundle changed after this
            mlflow.pyfunc.log_model(name=MODEL_NAME, **pyfunc_arguments(served, limits.top_k, example_pairs(dev)))
            mlflow.set_tag("flipkd.deployable", "true")
            run_id = active.info.run_id
    if not report["deployable"]:
        click.echo(f"not deployable: {reason}. No model was logged (run {run_id}, tag flipkd.deployable=false).",
                   err=True)
        raise SystemExit(2)
    click.echo(f"deployable: model runs:/{run_id}/{MODEL_NAME} serves {o['serve']}"
               f"{f' with {len(faq.ids)} FAQ entries' if faq else ''}. "
               f"Next: python -m pipelines.promote --run-id {run_id}")
    return {"run_id": run_id, **metrics}


if __name__ == "__main__":
    cli()
