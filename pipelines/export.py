"""``export``: a trained student -> ONNX engines -> parity gates -> the fastest passing engine as an MLflow pyfunc.

Steps: rebuild the trained student (run id, ``runs:/``, ``models:/`` or folder); merge LoRA and truncate at the
representation layer; export it to ONNX (:func:`components.export.onnx_export.export_onnx`); make the int8 copies of
:data:`ENGINES` (``rowwise``: per-row activation scales, smoothed from calibration texts held out from the dev
pairs: ``--calibration``, by default the demo's train split;
``rowwise_asym``: the same with a zero point per row; ``rowwise_outliers``: the 16 input channels of largest
calibration peak multiplied apart in fp32; ``blockwise``: ``MatMulNBits``; ``dynamic``: one scale per
tensor, ``down_proj`` fp32); check each against torch ``encode`` on the dev pairs through the *serving* path (the
tokenizers library, as the deployed model tokenizes; :mod:`pipelines._export_gates`):

- every engine: the fp32 file's max absolute difference of z <= 1e-4 (``--fp32-tolerance``) and serving token
  ids equal to the training tokenizer's;
- int8 engines, a paired decision test: min cosine >= 0.99 (``--int8-min-cosine``), at most 1% of the dev pairs
  (``--max-flipped-share``) or 1 pair (``--min-flipped-pairs``), whichever is larger, decided differently from
  torch at the stored threshold among the pairs torch scores 0.01 or more from it (``--decision-margin``), and
  dev AP within 0.01 of torch's (``--ap-tolerance``).

``--serve auto`` (the default) times every engine that passes on ``--speed-texts`` dev texts and serves the
fastest, so the choice fits the CPU the export runs on (int8 is fast only with VNNI/AMX); ``--serve ENGINE``
forces one. The figures, the choice and its reasons are logged (metrics ``<engine>_tps``, ``<engine>_*``,
``served_*``; tag ``flipkd.served_engine``; ``export_report.json``). The logged pyfunc model ``model`` carries
only the served ONNX file and the serving code (see :mod:`serving.onnx_pyfunc`); the tag
``flipkd.deployable=true``. When the engine asked for fails its gates, no model is logged, the tag is ``false``
with the reason in ``flipkd.not_deployable_reason``, and the command exits with code 2 naming the options that
give a deployable model.
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

from components.data.contract import DataError, read_pairs
from components.data.visible_text import is_blank
from components.export.onnx_export import export_onnx, quantize_int8
from components.student.lora_encoder import LoraEncoder
from pipelines import _mlflow
from pipelines._data import DataArgs, load_splits
from pipelines._export_gates import Gates, check_parity, choose_engine, measure_speed
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
# engine -> quantize_int8 keyword arguments (fp32: the exported file itself); the export serves the fastest that
# passes its gates (``--serve auto``) or the one named
ENGINES: dict[str, dict] = {
    "fp32": {},
    "int8_rowwise": {"method": "rowwise"},
    "int8_rowwise_asym": {"method": "rowwise", "asymmetric": True},
    "int8_rowwise_outliers": {"method": "rowwise", "outlier_channels": 16, "keep_worst": 0},
    "int8_blockwise": {"method": "blockwise", "block_size": 32},
    "int8_dynamic": {"method": "dynamic", "exclude_down_proj": True},
}
SERVE_CHOICES = ("auto", "int8", *ENGINES)  # int8: the int8 engine of --int8-method
PIP_REQUIREMENTS = ["onnxruntime", "tokenizers", "numpy", "pandas"]
GATE_METRICS = ("fp32_max_abs_diff", "served_min_cosine", "served_flipped_pairs", "served_flipped_clear_pairs",
                "served_dev_ap_delta", "served_dev_f1_delta", "served_b32_tps", "dev_f1", "torch_dev_f1",
                "tokenizer_mismatches")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


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
        if not isinstance(text, str) or is_blank(text):
            raise DataError("empty or non-text FAQ text", file=name, row=row, field="text")
        ids.append(str(faq_id).strip())
        texts.append(text)
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(f"duplicate faq_id {duplicates[0]!r}", file=name, field="faq_id")
    return Faq(ids, texts)


CALIBRATION_TEXTS = 256


def demo_splits(work: Path, seed: int) -> dict[str, pd.DataFrame]:
    """The embedded demo's splits: its dev split is the default ``--dev``, its train split the default calibration."""
    args = DataArgs(None, None, None, None, "text_a", "text_b", "label", (0.0, 1.0), None, 0.15, 0.15)
    return load_splits(args, work, seed)


def held_out_texts(texts: list[str], dev_texts: list[str], seed: int, limit: int = CALIBRATION_TEXTS) -> list[str]:
    """At most ``limit`` distinct ``texts`` that are not dev texts, drawn with ``seed``, in their first order."""
    seen = set(dev_texts)
    kept = [t for t in dict.fromkeys(texts) if t not in seen]
    order = np.random.default_rng(seed).permutation(len(kept))[:limit]
    return [kept[i] for i in sorted(order)]


def calibration_texts(calibration: str | None, demo_train: pd.DataFrame | None, dev_texts: list[str], seed: int,
                      limit: int) -> tuple[list[str], str]:
    """Texts the int8 engines are calibrated on (smoothing, outlier channels, worst MatMuls) and where they came from.

    Held out from the gates' dev texts where there is anything to hold out: a gate measured on the quantizer's own
    calibration texts flatters it (a demo student's ``int8_rowwise`` on the same 134 dev pairs: min cosine 0.9918
    calibrated on their texts, 0.9883 calibrated on the demo train split). ``--calibration`` (a pair file, such as
    the training file), else the demo's train split (``demo_train``, given when ``--dev`` is the demo's), else, as a
    last resort, ``--dev``'s own texts (in-sample)."""
    if calibration:
        frame, source = read_pairs(calibration), calibration
    elif demo_train is not None:
        frame, source = demo_train, "demo train split"
    else:
        return dev_texts[:limit], "dev (in-sample)"
    texts = held_out_texts([*frame["text_a"], *frame["text_b"]], dev_texts, seed, limit)
    if not texts:
        raise DataError("no text that is not also a --dev text: the int8 gates need calibration texts they do not "
                        "measure", file=source)
    return texts, source


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


def export_engines(encoder: LoraEncoder, work: Path, engines: list[str], limits: Limits, *, dynamo: bool = False,
                   opset: int | None = None, per_channel: bool = False, block_size: int = 32,
                   calibration_texts: list[str] | None = None) -> dict:
    """One served folder per engine (``work/bundle_<engine>``: its ONNX file, tokenizer, config); the fp32 export
    first, the int8 copies quantized from it. Returns the folders and the exporter and quantizer reports."""
    merged = encoder.merged_encoder()
    info = export_onnx(merged, work / "fp32" / MODEL_FILE, dynamo=dynamo, opset=opset)
    del merged
    bundles = {"fp32": write_bundle(encoder, work / "fp32", work / "bundle_fp32", engine="fp32", limits=limits)}
    fp32_file = bundles["fp32"] / MODEL_FILE
    calibration = None
    if calibration_texts and any(ENGINES[e].get("method") == "rowwise" for e in engines):
        calibration = OnnxTextEncoder(bundles["fp32"]).token_batches(calibration_texts)
    quant = {}
    for engine in engines:
        if engine == "fp32":
            continue
        settings = dict(ENGINES[engine])
        if settings["method"] == "blockwise":
            settings["block_size"] = block_size
        elif settings["method"] == "dynamic":
            settings["per_channel"] = per_channel
        elif settings["method"] == "rowwise":
            settings["calibration"] = calibration
        quant[engine] = quantize_int8(fp32_file, work / engine / MODEL_FILE, **settings)
        bundles[engine] = write_bundle(encoder, work / engine, work / f"bundle_{engine}", engine=engine,
                                       limits=limits)
    return {"bundles": bundles, "export": info, "quantize": quant}


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


# ------------------------------------------------------------------------------------------ MLflow model


def model_signature(top_k: int):
    """Written by hand: four optional text columns (one input form per request) and the ``top_k`` param; ``match``
    only for pairs (FAQ answers carry no ``match``: no FAQ threshold is calibrated)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    inputs = Schema([ColSpec("string", name, required=False) for name in ("text_a", "text_b", "text", "query")])
    answer = Object([Property("faq_id", "string"), Property("faq_text", "string"), Property("score", "double")])
    outputs = Schema([ColSpec("double", "score", required=False), ColSpec("boolean", "match", required=False),
                      ColSpec(Array("float"), "embedding", required=False),
                      ColSpec("string", "faq_id", required=False), ColSpec("string", "faq_text", required=False),
                      ColSpec(Array(answer), "answers", required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("top_k", "long", top_k)]))


def stage_serving_code(folder: Path) -> list[str]:
    """``folder/serving`` and ``folder/components`` holding only the modules the served model imports (the
    ``serving`` package and :data:`serving.onnx_pyfunc.COMPONENT_MODULES`, with the ``__init__`` of each package on
    their way): MLflow ships each code path whole."""
    root = Path(onnx_pyfunc.__file__).resolve().parent.parent
    components = {"__init__.py"}
    for module in onnx_pyfunc.COMPONENT_MODULES:
        parts = module.split(".")
        components.update("/".join([*parts[:depth], "__init__.py"]) for depth in range(1, len(parts)))
        components.add("/".join(parts) + ".py")
    paths = []
    for package, names in (("serving", sorted(p.name for p in (root / "serving").glob("*.py"))),
                           ("components", sorted(components))):
        target = folder / package
        for name in names:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / package / name, target / name)
        paths.append(str(target))
    return paths


def pyfunc_arguments(bundle: Path, top_k: int, example: pd.DataFrame) -> dict:
    """Keyword arguments shared by ``mlflow.pyfunc.log_model`` and ``save_model``: the served bundle alone as the
    artifact, and only the serving code (staged next to the bundle)."""
    # models from code: the pyfunc is rebuilt from serving/model_code.py at load, never unpickled
    return {"python_model": str(Path(onnx_pyfunc.__file__).parent / "model_code.py"),
            "artifacts": {BUNDLE: str(bundle)},
            "signature": model_signature(top_k), "input_example": example, "pip_requirements": PIP_REQUIREMENTS,
            "code_paths": stage_serving_code(bundle.parent / f"{bundle.name}_code")}


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
@option("--calibration", type=click.Path(dir_okay=False), default=None,
        help="Pair file (such as the training file) whose texts calibrate the int8 engines, held out from --dev so "
             "the gates measure texts the quantizer never saw (default: the demo train split when --dev is not "
             "given; with --dev alone, --dev's own texts, in-sample, with a warning).")
@option("--calibration-texts", type=click.IntRange(min=1), default=CALIBRATION_TEXTS,
        help="At most this many distinct calibration texts (drawn with --seed).")
@option("--serve", type=click.Choice(SERVE_CHOICES), default="auto",
        help="auto: measure every engine that passes its gates on --speed-texts dev texts and serve the fastest; "
             "or the engine to serve (int8: the one of --int8-method). fp32 gates always apply.")
@option("--speed-texts", type=click.IntRange(min=8), default=48, help="auto: dev texts each engine is timed on.")
@option("--dynamo/--no-dynamo", default=False,
        help="Exporter: torch.export-based (dynamo) or TorchScript (default; much faster to export, same parity).")
@option("--int8-method", type=click.Choice([e[len("int8_"):] for e in ENGINES if e != "fp32"]), default="rowwise",
        help="The int8 engine --serve int8 means (README, Export).")
@option("--int8-block-size", type=click.Choice(["16", "32", "64", "128"]), default="32",
        help="int8_blockwise: input channels per int8 block (larger: faster, less exact).")
@option("--int8-per-channel/--no-int8-per-channel", default=False,
        help="int8_dynamic: int8 weight scales per output channel instead of per tensor.")
@option("--opset", type=int, default=None, callback=_positive_or_none, help="ONNX opset (default: the exporter's).")
@option("--fp32-tolerance", type=POSITIVE, default=1e-4, help="Gate: max abs diff of z, ONNX fp32 vs torch.")
@option("--int8-min-cosine", type=UNIT, default=0.99, help="Gate: min cosine of z, ONNX int8 vs torch.")
@option("--max-flipped-share", type=UNIT, default=0.01,
        help="Gate: share of dev pairs whose decision may differ from torch's (at least --min-flipped-pairs).")
@option("--min-flipped-pairs", type=click.IntRange(min=0), default=1,
        help="Gate: dev pairs whose decision may differ from torch's however small the dev split.")
@option("--ap-tolerance", type=click.FloatRange(min=0), default=0.01, help="Gate: |int8 dev AP - torch dev AP|.")
@option("--decision-margin", type=click.FloatRange(min=0), default=0.01,
        help="Gate: a changed decision counts only for pairs torch scores at least this far from the threshold "
             "(nearer ones flip under rounding noise alone).")
@option("--max-rows", type=click.IntRange(min=1), default=256, help="Serving: rows per request.")
@option("--max-chars", type=click.IntRange(min=1), default=4000, help="Serving: characters per text.")
@option("--on-long-text", type=click.Choice(["reject", "truncate"]), default="reject",
        help="Serving: a text over --max-chars is a 400 error, or cut (with a `truncated` output column).")
@option("--threads", type=int, default=None, callback=_positive_or_none,
        help="ONNX Runtime threads for the checks and timings (serving: $FLIPKD_ONNX_THREADS or ONNX Runtime's "
             "default).")
@common_options
@_mlflow.clean_errors
def cli(**o) -> dict:
    """Export a trained student to ONNX, check each engine against torch, serve the fastest that passes."""
    faq = read_faq(o["faq"]) if o["faq"] else None
    for name in ("dev", "calibration"):
        if o[name] and not Path(o[name]).is_file():
            raise DataError("no such file", file=o[name])
    serve = f"int8_{o['int8_method']}" if o["serve"] == "int8" else o["serve"]
    engines = list(ENGINES) if serve == "auto" else list(dict.fromkeys(["fp32", serve]))
    gates = Gates(o["fp32_tolerance"], o["int8_min_cosine"], o["max_flipped_share"], o["min_flipped_pairs"],
                  o["ap_tolerance"], o["decision_margin"])
    limits = Limits(o["top_k"], o["max_rows"], o["max_chars"], o["on_long_text"])
    with _mlflow.run("export", o["experiment"]) as active, _mlflow.scratch_dir() as work:
        demo = None if o["dev"] else demo_splits(work, o["seed"])  # the default dev pairs and calibration texts
        dev = demo["dev"] if demo else read_pairs(o["dev"])
        texts = list(dict.fromkeys([*dev["text_a"], *dev["text_b"]]))
        calibration, calibration_source = calibration_texts(o["calibration"], demo["train"] if demo else None, texts,
                                                            o["seed"], o["calibration_texts"])
        if calibration_source == "dev (in-sample)":
            click.echo("warning: the int8 engines are calibrated on the --dev texts their gates measure (in-sample, "
                       "the gates flatter them); pass --calibration with the training file for a held-out check",
                       err=True)
        encoder = load_trained_encoder(o["model"], o["student"], o["cache_dir"])
        source = source_run_id(o["model"])
        if source:
            mlflow.set_tag("flipkd.source_run", source)
        built = export_engines(encoder, work, engines, limits, dynamo=o["dynamo"], opset=o["opset"],
                               per_channel=o["int8_per_channel"], block_size=int(o["int8_block_size"]),
                               calibration_texts=calibration)
        info, quant, bundles = built["export"], built["quantize"], built["bundles"]
        _mlflow.log_params({"model": o["model"], "source_run": source or "", "serve": o["serve"],
                            "engines": ",".join(engines), "exporter": info["exporter"], "opset": info["opset"],
                            "exporter_why": info["why"], "external_data": info["external_data"],
                            "int8_per_channel": o["int8_per_channel"], "int8_block_size": int(o["int8_block_size"]),
                            "threshold": encoder.config.threshold, "faq_entries": len(faq.ids) if faq else 0,
                            "gates": gates.__dict__, "serving": limits.__dict__, "speed_texts": o["speed_texts"],
                            "dev": dev.attrs.get("source", o["dev"] or "demo dev"),
                            "calibration": calibration_source, "calibration_texts": len(calibration)})
        report = check_parity(encoder, bundles, dev, gates, threads=o["threads"],
                              extra_texts=faq.texts if faq else None)
        metrics, failures = report["metrics"], report["failures"]
        timed = [e for e in engines if serve != "auto" or not failures[e]]
        speeds = {e: measure_speed(bundles[e], texts[:o["speed_texts"]], o["threads"]) for e in timed}
        chosen = choose_engine(serve, failures, speeds)
        metrics.update({f"{e}_tps": v for e, v in speeds.items()})
        shown = chosen or (None if serve == "auto" else serve)  # the engine served, or refused when asked for
        if shown:
            metrics.update({"dev_f1": metrics[f"{shown}_dev_f1"], "served_b32_tps": speeds.get(shown, float("nan")),
                            **{f"served_{k}": metrics.get(f"{shown}_{k}", float("nan"))
                               for k in ("min_cosine", "flipped_pairs", "flipped_clear_pairs", "dev_ap_delta",
                                         "dev_f1_delta")}})
        _mlflow.log_metrics({**metrics, "export_seconds": info["export_seconds"],
                             "onnx_fp32_bytes": info["file_bytes"],
                             **{f"{e}_bytes": q["file_bytes"] for e, q in quant.items()},
                             **{f"{e}_quantize_seconds": q["quantize_seconds"] for e, q in quant.items()}})
        choice = {"serve": o["serve"], "chosen": chosen, "texts_per_s": speeds, "failures": failures,
                  "speed_texts": min(o["speed_texts"], len(texts)), "threads": o["threads"]}
        _mlflow.log_json({"export": info, "quantize": quant, "parity": report, "choice": choice,
                          "gates": gates.__dict__}, "export_report.json")
        click.echo(f"exported with {info['exporter']} (opset {info['opset']}); torch dev F1 "
                   f"{metrics['torch_dev_f1']:.4f}, AP {metrics['torch_dev_ap']:.4f} at threshold "
                   f"{metrics['threshold']:.3f} [{int(metrics['parity_texts'])} texts, {len(dev)} pairs]; int8 "
                   f"calibrated on {len(calibration)} texts of {calibration_source}")
        for engine in engines:
            figures = (f"max abs diff {metrics['fp32_max_abs_diff']:.2e}" if engine == "fp32" else
                       f"min cosine {metrics[f'{engine}_min_cosine']:.4f}, "
                       f"{int(metrics[f'{engine}_flipped_pairs'])} decisions changed "
                       f"({int(metrics[f'{engine}_flipped_clear_pairs'])} off the threshold), "
                       f"AP {metrics[f'{engine}_dev_ap_delta']:+.4f}")
            speed = f", {speeds[engine]:.1f} texts/s" if engine in speeds else ""
            verdict = "; ".join(failures[engine]) if failures[engine] else "passes"
            click.echo(f"  {engine:<15} {figures}{speed}: {verdict}")
        mlflow.set_tag("flipkd.served_engine", chosen or "none")
        if chosen is None:
            reason = "; ".join(failures[serve if serve != "auto" else "fp32"])
            mlflow.set_tags({"flipkd.deployable": "false", "flipkd.not_deployable_reason": reason[:5000]})
            run_id = active.info.run_id
        else:
            served = bundles[chosen]
            if faq:
                add_faq(served, faq, o["threads"])
            onnx_pyfunc.write_checksums(served)  # last: load_context refuses a bundle changed after this
            mlflow.pyfunc.log_model(name=MODEL_NAME, **pyfunc_arguments(served, limits.top_k, example_pairs(dev)))
            mlflow.set_tag("flipkd.deployable", "true")
            run_id = active.info.run_id
    if chosen is None:
        hint = ("; to get a deployable model: --serve auto or --serve fp32 (fp32 passed its gates), or a larger --dev "
                "(a few hundred pairs, so that one pair on the threshold is under --max-flipped-share)"
                if not failures["fp32"] else "")
        click.echo(f"not deployable: {reason}{hint}. No model was logged (run {run_id}, tag flipkd.deployable=false).",
                   err=True)
        raise SystemExit(2)
    how = "the fastest engine passing its gates" if serve == "auto" else "as asked"
    click.echo(f"deployable: model runs:/{run_id}/{MODEL_NAME} serves {chosen} ({how}, "
               f"{speeds[chosen]:.1f} texts/s here){f' with {len(faq.ids)} FAQ entries' if faq else ''}. "
               f"Next: python -m pipelines.promote --run-id {run_id}")
    return {"run_id": run_id, "served_engine": chosen, **metrics}


if __name__ == "__main__":
    cli()
