"""How well the untrained student's hidden states match pairs, by prompt, pooling and layer (dev only).

    python -m benchmarks.representation_probe [--datasets stsbenchmark,banking77] [--max-dev 256]

Where the representation is read (``--layer``, ``--pooling``, ``--prompt``) is a choice METHOD.md leaves
open; training starts from it. This probe scores every choice before any training: each dev text is
tokenized exactly as ``LoraEncoder.tokenize`` does for that prompt, the packaged student (LoRA B is zero,
so the LLM is unchanged) returns its hidden states, and the pair cosine of each layer's pooled state is
scored against the dev labels: average precision, best F1 over thresholds (chosen on the same pairs, so
optimistic) and, for graded datasets, Spearman's rho. Layer k is the input of block k (k = 0: embeddings;
the last is the final norm's output). Writes ``benchmarks/results/representation_probe.json`` and its
section of ``benchmarks/RESULTS.md``. Test splits are never read.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from benchmarks._results import write_section
from benchmarks.datasets import DATASETS, DEFAULT_DATA_ROOT, build
from components.metrics import average_precision, best_f1
from components.models import load_student, resolve_student
from components.pooling import POOLING_MODES, pool_normalized
from components.student.lora_encoder import PROMPTS, EncoderConfig, LoraEncoder
from components.teacher.scorer import TeacherScorer

RESULTS = Path(__file__).resolve().parent / "results" / "representation_probe.json"


@torch.inference_mode()
def pooled_states(encoder: LoraEncoder, texts: list[str], batch_size: int = 32) -> dict[str, torch.Tensor]:
    """``{pooling: [layers, N, hidden]}`` L2-normalised, for every hidden state of the plain LLM (LoRA off)."""
    out: dict[str, list[torch.Tensor]] = {mode: [] for mode in POOLING_MODES}
    for start in tqdm(range(0, len(texts), batch_size), desc="probe", unit="batch", leave=False):
        batch = encoder.tokenize(texts[start:start + batch_size])
        mask = batch["attention_mask"]
        with encoder.model.disable_adapter():
            states = encoder.model(**batch, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                                   output_hidden_states=True, use_cache=False).hidden_states
        for mode in POOLING_MODES:
            out[mode].append(torch.stack([pool_normalized(h.float(), mask, mode) for h in states]))
    return {mode: torch.cat(chunks, dim=1) for mode, chunks in out.items()}


def score_layers(states: torch.Tensor, index_a: list[int], index_b: list[int], match: np.ndarray,
                 graded: np.ndarray | None) -> list[dict]:
    rows = []
    for layer, z in enumerate(states):
        cosine = (z[index_a] * z[index_b]).sum(-1).numpy()
        row = {"layer": layer, "ap": average_precision(cosine, match), "f1": best_f1(cosine, match)}
        if graded is not None:
            row["spearman"] = float(spearmanr(cosine, graded).statistic)
        rows.append(row)
    return rows


def _cell(row: dict) -> str:
    return f"{row['ap']:.3f} / {row['f1']:.3f}" + (f" / {row['spearman']:.3f}" if "spearman" in row else "")


@click.command()
@click.option("--datasets", default="stsbenchmark,banking77", show_default=True,
              help=f"Comma list of {', '.join(DATASETS)}.")
@click.option("--prompts", default=",".join(PROMPTS), show_default=True, help="Comma list of representation prompts.")
@click.option("--max-dev", type=click.IntRange(min=2), default=256, show_default=True, help="Dev pairs per dataset.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA_ROOT,
              show_default=True)
@click.option("--max-length", type=click.IntRange(min=2), default=EncoderConfig.max_length, show_default=True)
def main(datasets: str, prompts: str, max_dev: int, data_root: Path, max_length: int) -> None:
    """Score the untrained student's hidden states on dev pairs, per prompt, pooling and layer."""
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    chosen = [p.strip() for p in prompts.split(",") if p.strip()]
    for value, known, what in ((names, DATASETS, "dataset"), (chosen, PROMPTS, "prompt")):
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise click.BadParameter(f"unknown {what}(s) {unknown}; choose from {', '.join(known)}")
    torch.manual_seed(0)
    scorer = TeacherScorer("all-minilm-l6-v2", cache=None, show_progress=False)  # banking77's hard negatives
    results: dict[str, dict] = {}
    lines = ["Command: `python -m benchmarks.representation_probe"
             + (f" --datasets {datasets}" if datasets != "stsbenchmark,banking77" else "")
             + (f" --max-dev {max_dev}" if max_dev != 256 else "") + "` (packaged SmolLM2-135M, untrained; "
             "dev pairs only, data seed 0 as in the quality benchmark; F1 at the best threshold on the same pairs).",
             "", "| dataset | prompt | pooling | final layer: AP / F1 (/ Spearman) "
             "| best layer by AP: AP / F1 (/ Spearman) |",
             "|---|---|---|---|---|"]
    for name in names:
        dev = build(name, data_root, max_train=8, max_dev=max_dev, max_test=8, seed=0, embed=scorer.encode)["dev"]
        texts = list(dict.fromkeys([*dev["text_a"], *dev["text_b"]]))
        index = {t: i for i, t in enumerate(texts)}
        index_a, index_b = [index[t] for t in dev["text_a"]], [index[t] for t in dev["text_b"]]
        match = dev["match"].to_numpy()
        graded = dev["label"].to_numpy(np.float64) if name == "stsbenchmark" else None
        results[name] = {"pairs": len(dev)}
        for prompt in chosen:
            model, tokenizer = load_student(resolve_student())  # fresh: LoraEncoder wraps the model in place
            config = EncoderConfig(max_length=max_length, dropout=0.0, **PROMPTS[prompt])
            encoder = LoraEncoder(model, tokenizer, config)
            states = pooled_states(encoder.eval(), texts)
            results[name][prompt] = {}
            for mode, stacked in states.items():
                rows = score_layers(stacked, index_a, index_b, match, graded)
                results[name][prompt][mode] = rows
                last, best = rows[-1], max(rows, key=lambda r: r["ap"])
                lines.append(f"| {name} | {prompt} | {mode} | {_cell(last)} | layer {best['layer']}: {_cell(best)} |")
                print(lines[-1], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_section("representation_probe", "\n".join(lines))


if __name__ == "__main__":
    main()
