"""The student read as an encoder-decoder through LoRA (METHOD.md, "The student as an encoder-decoder").

In a LoRA layer h = W0 x + (alpha / r) B A x. The A matrix (r x d) is the encoder: z = A x is an
r-dimensional representation of the text; B decodes it back into the model. :class:`LoraEncoder`
wraps a causal LM with peft LoRA on every linear layer and reads z at one chosen LoRA module
(default ``q_proj`` of the last block), pooled over the sequence (last non-padding token, or mean),
then L2-normalised.

Contract:
- ``encode(texts) -> Tensor[N, r]``: identical under left and right padding (position ids come from
  the attention mask; pooling is :mod:`components.pooling`), and the layers after the representation
  module are never run: a forward hook on that module's A matrix captures z and stops the forward.
- ``save(folder)`` writes the adapter in PEFT format (``PeftModel.from_pretrained`` loads it),
  ``flipkd_encoder.json`` (layer, module, pooling, max length, decision threshold, ...) and
  ``flipkd_checksums.json`` (sha256 of those files). ``load`` refuses, naming the file, an adapter whose
  safetensors file is damaged or truncated, or whose files do not match their sha256 (a folder saved before
  checksums were written gets only the safetensors check).
- ``merged_encoder()`` is a plain torch module (every LoRA update merged into the backbone, truncated
  at the representation layer, the one A matrix kept as an output head) whose output equals
  ``encode`` within 1e-5. It is what the ONNX export traces.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from components.checksums import CHECKSUM_FILE, verify_checksums, write_checksums  # noqa: F401
from components.models import base_model_record
from components.pooling import POOLING_MODES, pool_normalized
from components.student.lora_dropout import DROPOUT_SITES, install_lora_dropout, masks_by_token
from components.student.merged_encoder import MergedEncoder, _input_norm
from components.student.packing import pack, padded_token_index
from components.student.prefix_cache import FrozenPrefix, PrefixStore

ENCODER_FILE = "flipkd_encoder.json"
ADAPTER_NAME = "default"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CHECKSUMMED = (ADAPTER_WEIGHTS, "adapter_config.json", ENCODER_FILE)


# Named representation prompts, as EncoderConfig fields. "prompteol" is PromptEOL (Jiang et al., 2023,
# "Scaling Sentence Embeddings with Large Language Models"): the last token must sum the text up in one word.
PROMPTS: dict[str, dict[str, str | bool]] = {
    "none": {"instruction": "", "suffix": "", "append_eos": True},
    "prompteol": {"instruction": 'This sentence : "', "suffix": '" means in one word:"', "append_eos": False},
}
DEFAULT_PROMPT = "prompteol"
READOUTS = ("lora_a", "hidden")


@dataclass
class EncoderConfig:
    """LoRA and representation settings; defaults from METHOD.md (OURS parts are options)."""

    rank: int = 32
    alpha: float = 64.0
    # rank of the readout module alone (PEFT rank_pattern; 0: ``rank``): z has this many dimensions. The paper's
    # rank 256 at 0.5B makes a 256-d z; a small rank everywhere else keeps the other updates cheap. Its alpha scales
    # with it, so alpha / r stays the same.
    readout_rank: int = 0
    # "lora_a": z = A x at the readout module (METHOD.md); "hidden": z = x itself, the readout module's input (the
    # block's normed hidden state, as wide as the model), an option beside the A-encoder reading
    readout: str = "lora_a"
    # 0.05 learned better on the demo than 0 (README, "Defaults"); its masks are drawn cheaply
    # (components.student.lora_dropout)
    dropout: float = 0.05
    # "input": PEFT's place, a mask over each module's input x (hidden size wide) before A;
    # "bottleneck": the mask is applied to A x (rank wide) instead.
    dropout_site: str = "input"
    target_modules: str | list[str] = "all-linear"
    # LoRA only in the top ``lora_layers`` blocks ending at the representation block (0: every block, METHOD.md's
    # reading). The blocks below are then frozen and their output is cached per text (components.student.prefix_cache).
    # 4: about 10x the training pairs/s of every block on a warm cache, and on dev (banking77, STS-B, 3 seeds each)
    # F1 within one seed std of every block or above it (benchmarks/RESULTS.md, throughput; docs/defaults.md).
    lora_layers: int = 4
    layer: int = -1
    module: str = "q_proj"
    pooling: str = "last"
    max_length: int = 64
    # text = instruction + text + suffix (+ EOS); only the text is truncated. Default PromptEOL (see PROMPTS):
    # on STS-B dev the untrained student's last token scores Spearman 0.720 with it, 0.256 without (README).
    append_eos: bool = bool(PROMPTS[DEFAULT_PROMPT]["append_eos"])
    instruction: str = str(PROMPTS[DEFAULT_PROMPT]["instruction"])
    suffix: str = str(PROMPTS[DEFAULT_PROMPT]["suffix"])
    threshold: float = 0.5
    pair_prompt: str = ("Do these two texts ask for the same thing?\nText 1: {text_a}\nText 2: {text_b}\n"
                        "Answer yes or no:")
    label_words: tuple[str, str] = (" no", " yes")
    joint_threshold: float = 0.5
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dropout_site not in DROPOUT_SITES:
            raise ValueError(f"dropout_site must be one of {DROPOUT_SITES}, got {self.dropout_site!r}")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.readout_rank < 0:
            raise ValueError(f"readout_rank must be >= 0 (0: the LoRA rank), got {self.readout_rank}")
        if self.lora_layers < 0:
            raise ValueError(f"lora_layers must be >= 0 (0: every block), got {self.lora_layers}")
        self.label_words = tuple(self.label_words)
        if "{text_a}" not in self.pair_prompt or "{text_b}" not in self.pair_prompt:
            raise ValueError("pair_prompt must contain {text_a} and {text_b}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["label_words"] = list(self.label_words)
        return out


class _StopForward(Exception):
    """Raised by the capture hook once z is known: later layers are not needed."""


_LAYER_PATTERN = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")


def _lora_modules(model: nn.Module, module: str) -> dict[int, nn.Module]:
    """LoRA-wrapped modules named ``module`` by layer index (``...layers.<i>....<module>``)."""
    found: dict[int, nn.Module] = {}
    for name, sub in model.named_modules():
        match = _LAYER_PATTERN.search(name)
        if match and match.group(2).split(".")[-1] == module and hasattr(sub, "lora_A"):
            found[int(match.group(1))] = sub
    return found


def _readout_name(model: nn.Module, layer: int, module: str) -> str:
    """Full name of the linear module ``module`` in block ``layer`` (a PEFT rank_pattern key for it alone)."""
    for name, sub in model.named_modules():
        match = _LAYER_PATTERN.search(name)
        if match and int(match.group(1)) == layer and name.rsplit(".", 1)[-1] == module and isinstance(sub, nn.Linear):
            return name
    raise ValueError(f"no linear module {module!r} in layer {layer}")


def _block_linear_names(model: nn.Module) -> list[str]:
    """Names of the linear modules inside the transformer blocks (what "all-linear" wraps there)."""
    return sorted({name.rsplit(".", 1)[-1] for name, sub in model.named_modules()
                   if isinstance(sub, nn.Linear) and _LAYER_PATTERN.search(name)})


def _num_layers(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)


class LoraEncoder(nn.Module):
    """A causal LM with LoRA, read as a text encoder through one A matrix.

    Example:
        >>> encoder = LoraEncoder(causal_lm, tokenizer, EncoderConfig(rank=8))  # doctest: +SKIP
        >>> encoder.encode(["How do I reset my PIN?"]).shape                      # doctest: +SKIP
        torch.Size([1, 8])
    """

    def __init__(self, model: nn.Module, tokenizer, config: EncoderConfig | None = None,
                 peft_model: PeftModel | None = None) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        base = peft_model.get_base_model() if peft_model is not None else model
        n_layers = _num_layers(base)
        layer = self.config.layer if self.config.layer >= 0 else n_layers + self.config.layer
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {self.config.layer} is out of range: the model has {n_layers} layers "
                             f"(use 0..{n_layers - 1}, or -1 for the last)")
        # the first block with LoRA; the blocks below it are frozen (a cacheable prefix) when it is > 0
        self.prefix_start = max(0, layer + 1 - self.config.lora_layers) if self.config.lora_layers else 0
        if peft_model is None:
            targets, blocks = self.config.target_modules, None
            if self.prefix_start:  # PEFT takes a block list only with named targets
                blocks = list(range(self.prefix_start, layer + 1))
                targets = _block_linear_names(base) if targets == "all-linear" else targets
            ranks, alphas = {}, {}
            if self.config.readout_rank and self.config.readout_rank != self.config.rank:
                readout = _readout_name(base, layer, self.config.module)
                ranks = {readout: self.config.readout_rank}
                alphas = {readout: self.config.alpha * self.config.readout_rank / self.config.rank}
            lora = LoraConfig(r=self.config.rank, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
                              target_modules=targets, bias="none", task_type="CAUSAL_LM", layers_to_transform=blocks,
                              rank_pattern=ranks, alpha_pattern=alphas)
            peft_model = get_peft_model(model, lora)
        self.model = peft_model
        modules = _lora_modules(self.model, self.config.module)
        if layer not in modules:
            raise ValueError(f"no LoRA module {self.config.module!r} in layer {layer}; LoRA targets "
                             f"{self.config.target_modules!r} (pick a module LoRA wraps, e.g. q_proj)")
        self.layer_index = layer
        self._target = modules[layer]
        self._captured: torch.Tensor | None = None
        self._stop_early = True
        self.computed_tokens = 0  # token positions (real and padding) the last forward computed
        # a closure, not a bound method: deep copies of the model (merged_encoder) must not copy the encoder
        if self.config.readout == "hidden":  # the module's input, before its LoRA dropout
            self._target.register_forward_pre_hook(lambda m, i: self._capture(m, i, i[0]))
        else:
            self._target.lora_A[ADAPTER_NAME].register_forward_hook(lambda m, i, o: self._capture(m, i, o))
        # after the capture hook: at the bottleneck site z itself is never dropped out
        install_lora_dropout(self.model, self.config.dropout_site, ADAPTER_NAME)
        # memory only until a pipeline attaches a disk store (use_prefix_store)
        self.prefix = (FrozenPrefix(self.model, self.prefix_start, PrefixStore(None, "memory"))
                       if self.prefix_start else None)

    # ----------------------------------------------------------------- representation
    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._captured = output
        if self._stop_early:
            raise _StopForward

    @property
    def dimension(self) -> int:
        """Size of z: the readout module's rank (or its input width, for the hidden-state readout)."""
        if self.config.readout == "hidden":
            return int(self._target.in_features)
        return int(self._target.lora_A[ADAPTER_NAME].weight.shape[0])

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids with EOS appended (the last-token pooling point), dynamically padded."""
        cfg = self.config
        tail = self.tokenizer(cfg.suffix, add_special_tokens=False)["input_ids"] if cfg.suffix else []
        if cfg.append_eos:
            tail = [*tail, self.tokenizer.eos_token_id]
        room = cfg.max_length - len(tail)
        if room < 1:
            raise ValueError(f"max_length {cfg.max_length} leaves no room for text after the suffix and EOS "
                             f"({len(tail)} tokens)")
        ids = self.tokenizer([cfg.instruction + t for t in texts], add_special_tokens=True, truncation=True,
                             max_length=room)["input_ids"]
        ids = [row + tail for row in ids]
        width = max(len(row) for row in ids)
        pad, left = self.tokenizer.pad_token_id, self.tokenizer.padding_side == "left"
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            input_ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def use_prefix_store(self, store: PrefixStore) -> None:
        """Keep the frozen prefix's states in ``store`` (e.g. on disk, shared across runs)."""
        if self.prefix is None:
            raise ValueError("this encoder has LoRA in every block (lora_layers 0): there is no frozen prefix")
        self.prefix.store = store

    def fill_prefix(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> None:
        """Compute (or find) and store the frozen prefix's states of ``texts``; nothing to do without a prefix."""
        if self.prefix is None:
            return
        unique = sorted(set(texts), key=len)
        batches = (self.tokenize(unique[i:i + batch_size]) for i in range(0, len(unique), batch_size))
        self.prefix.fill(batches, len(unique), show_progress)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pack_capacity: int = 0,
                use_prefix: bool = True) -> torch.Tensor:
        """z [N, r], L2-normalised; differentiable. Runs the model only up to the representation module.

        ``pack_capacity > 0``: the texts are packed into rows of about that many tokens
        (:mod:`components.student.packing`) instead of padded; same z, less padding computed. In training, LoRA
        dropout masks are drawn per real token, so padded and packed layouts train the same model
        (:func:`components.student.lora_dropout.masks_by_token`). With a frozen prefix (``lora_layers``) and
        ``use_prefix``, only the blocks from the first tuned one run, from the prefix's cached states.
        """
        self._captured = None
        packed = None
        if pack_capacity > 0:
            packed = pack(input_ids, attention_mask, pack_capacity, pad_token_id=self.tokenizer.pad_token_id)
            inputs = {"input_ids": packed.input_ids, "attention_mask": packed.attention_bias,
                      "position_ids": packed.position_ids}
        else:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                      "position_ids": (attention_mask.long().cumsum(-1) - 1).clamp_min(0)}
        self.computed_tokens = inputs["input_ids"].numel()
        top_only = contextlib.nullcontext()
        if self.prefix is not None and use_prefix:
            layout = inputs.pop("input_ids")
            inputs["inputs_embeds"] = self.prefix.inputs_embeds(
                input_ids, attention_mask, layout.shape, None if packed is None else (packed.rows, packed.cols))
            top_only = self.prefix.top_only()
        masks = contextlib.nullcontext()
        if self.training and self.config.dropout > 0:  # no masks to draw at inference
            token_index = packed.token_index() if packed is not None else padded_token_index(attention_mask)
            masks = masks_by_token(token_index, int(attention_mask.sum()))
        try:
            with masks, top_only:
                self.model(**inputs, use_cache=False)
        except _StopForward:
            pass
        if self._captured is None:
            raise RuntimeError("the representation hook did not fire: is the LoRA adapter merged or disabled?")
        z, self._captured = self._captured, None
        if packed is not None:
            z = packed.unpack(z)
        return pool_normalized(z, attention_mask, self.config.pooling)

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        return self(**self.tokenize(texts))

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> torch.Tensor:
        """Float32 [N, r] on CPU, in input order (batches are formed by length for speed)."""
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.dimension)
        try:
            for start in tqdm(range(0, len(texts), batch_size), desc="student encode", disable=not show_progress,
                              unit="batch"):
                index = order[start:start + batch_size]
                out[index] = self.encode_batch([texts[i] for i in index]).float().cpu()
        finally:
            self.train(was_training)
        return out

    def score_pairs(self, text_a: Sequence[str], text_b: Sequence[str], batch_size: int = 32,
                    show_progress: bool = False) -> torch.Tensor:
        """s = cos(z_a, z_b) per pair; each distinct text is encoded once."""
        texts = list(dict.fromkeys([*text_a, *text_b]))
        z = self.encode(texts, batch_size=batch_size, show_progress=show_progress)
        index = {t: i for i, t in enumerate(texts)}
        return (z[[index[t] for t in text_a]] * z[[index[t] for t in text_b]]).sum(-1)

    # ----------------------------------------------------------------- joint scoring (decoder path)
    def label_token_ids(self) -> list[int]:
        """Token ids of the ("no", "yes") label words: each must be a single token."""
        ids = []
        for word in self.config.label_words:
            tokens = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(tokens) != 1:
                raise ValueError(f"label word {word!r} is {len(tokens)} tokens for this tokenizer; pick one-token "
                                 "words (e.g. ' yes' / ' no')")
            ids.append(tokens[0])
        return ids

    def tokenize_pairs(self, text_a: Sequence[str], text_b: Sequence[str]) -> dict[str, torch.Tensor]:
        """The fixed pair prompt, each text truncated to ``max_length`` tokens, left-padded (answer position last)."""
        cfg = self.config
        head, rest = cfg.pair_prompt.split("{text_a}")
        middle, tail = rest.split("{text_b}")
        parts = [self.tokenizer(list(x), add_special_tokens=False, truncation=True, max_length=cfg.max_length)
                 ["input_ids"] for x in (text_a, text_b)]
        fixed = [self.tokenizer(x, add_special_tokens=False)["input_ids"] for x in (head, middle, tail)]
        rows = [fixed[0] + a + fixed[1] + b + fixed[2] for a, b in zip(*parts, strict=True)]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def label_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       use_prefix: bool = True) -> torch.Tensor:
        """[N, 2] = (log p(no), log p(yes)) over the full vocabulary at the answer position; differentiable.

        With a frozen prefix and ``use_prefix``, the blocks below the first tuned one are read from the prefix's
        cache, keyed by each pair prompt's token ids: a pair's bottom runs once per run (and per cache folder),
        not once per epoch and evaluation."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "position_ids": (attention_mask.long().cumsum(-1) - 1).clamp_min(0)}
        top_only = contextlib.nullcontext()
        if self.prefix is not None and use_prefix:
            inputs["inputs_embeds"] = self.prefix.inputs_embeds(inputs.pop("input_ids"), attention_mask)
            top_only = self.prefix.top_only()
        self._stop_early = False
        try:
            with top_only:
                logits = self.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1].float()
        finally:
            self._stop_early, self._captured = True, None
        return torch.log_softmax(logits, dim=-1)[:, self.label_token_ids()]

    @torch.inference_mode()
    def joint_scores(self, text_a: Sequence[str], text_b: Sequence[str], batch_size: int = 16,
                     show_progress: bool = False) -> torch.Tensor:
        """P("yes" | pair prompt), renormalised over the two label words: the two texts read jointly.

        In input order; batches are formed by length (less padding computed)."""
        was_training = self.training
        self.eval()
        out = torch.empty(len(text_a))
        order = sorted(range(len(text_a)), key=lambda i: len(text_a[i]) + len(text_b[i]))
        try:
            for start in tqdm(range(0, len(text_a), batch_size), desc="joint scoring", disable=not show_progress,
                              unit="batch"):
                index = order[start:start + batch_size]
                logp = self.label_logprobs(**self.tokenize_pairs([text_a[i] for i in index],
                                                                 [text_b[i] for i in index]))
                out[index] = torch.softmax(logp, dim=-1)[:, 1]
        finally:
            self.train(was_training)
        return out

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.model.parameters() if p.requires_grad)

    # ----------------------------------------------------------------- persistence
    def save(self, folder: str | Path) -> Path:
        """Adapter in PEFT format plus ``flipkd_encoder.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder), safe_serialization=True)
        source = str(getattr(self.model.get_base_model().config, "_name_or_path", ""))
        meta = {"config": self.config.to_dict(), "layer_index": self.layer_index,
                "base_model": base_model_record(source, self.config.extra.get("student"))}
        (folder / ENCODER_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        write_checksums(folder, CHECKSUMMED)
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: nn.Module, tokenizer, is_trainable: bool = False) -> LoraEncoder:
        """Rebuild from :meth:`save` output on top of the same base ``model``."""
        folder = Path(folder)
        meta_path = folder / ENCODER_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} is missing: not a flipkd encoder folder")
        verify_adapter(folder)
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        config = EncoderConfig(**meta["config"])
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=is_trainable)
        return cls(model, tokenizer, config, peft_model=peft_model)

    # ----------------------------------------------------------------- deployment
    def merged_encoder(self) -> MergedEncoder:
        """Plain module: LoRA merged, truncated at the representation layer, A as the output head."""
        head = nn.Linear(self._target.in_features, self.dimension, bias=False)
        if self.config.readout == "hidden":
            head.weight.data.copy_(torch.eye(self.dimension))
        else:
            head.weight.data.copy_(self._target.lora_A[ADAPTER_NAME].weight.data.float())
        merged = copy.deepcopy(self.model).merge_and_unload()
        backbone = merged.get_decoder() if hasattr(merged, "get_decoder") else merged.model
        layers = list(backbone.layers[: self.layer_index + 1])
        return MergedEncoder(backbone.embed_tokens, nn.ModuleList(layers[:-1]), _input_norm(layers[-1],
                             self.config.module), head, backbone.rotary_emb, self.config.pooling).eval().float()


def verify_adapter(folder: str | Path) -> None:
    """Refuse a damaged adapter folder with a ``ValueError`` naming the file.

    The safetensors file must parse (a truncated file does not) and, when ``flipkd_checksums.json`` is there,
    every listed file must match its sha256 (a flipped byte in the tensor data parses but does not match).
    """
    folder = Path(folder)
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ValueError(f"{weights} is missing: a flipkd adapter is saved as safetensors (no other format is "
                         f"loaded)")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            handle.keys()
    except Exception as err:  # SafetensorError (a bad header, a truncated file) or an OSError
        raise ValueError(f"{weights} is not a valid safetensors file, truncated or damaged ({err}): retrain or "
                         f"restore it") from None
    verify_checksums(folder, "retrain or restore it")
