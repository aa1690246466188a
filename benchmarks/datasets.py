"""Real text-pair benchmarks as canonical train/dev/test frames (``components.data.contract``'s contract).

Each builder reads one folder of ``../shared/data`` (see its README) and returns ``{"train", "dev", "test"}``
frames with the columns ``text_a, text_b, label, match, pair_id`` (plus ``kind`` for banking77) and
``attrs["graded"]`` / ``attrs["source"]``, so they go straight into ``pipelines.train.train_student``.

Common rules:

- texts are whitespace-normalised and cut to ``max_chars`` characters;
- duplicate pairs are dropped (the first is kept);
- no text is on two sides of a split boundary: a train pair that shares a text with dev or test, or a dev pair
  that shares one with test, is dropped (test is the reference and is never reduced by this);
  ``attrs["dropped_cross_split"]`` says how many;
- ``max_train`` / ``max_dev`` / ``max_test`` subsample the pairs deterministically with ``seed``, keeping the
  share of matches (stratified on ``match``) and the file order.

Builders:

- :func:`build_banking77`: utterances with one of 77 intents; pairs are built inside each split. Dev is a
  held-out part of the train file, split per intent (every intent on both sides, no utterance on both).
  Positives: two utterances of the same intent. Negatives: half an utterance of another intent at random, half
  the most similar utterance of another intent by the ``embed`` function (the base teacher's embeddings).
- :func:`build_mediqa2019_rqe`: the three XML files as given (Training = train, Validation = dev,
  TestSet-wLabels = test); ``value="true"`` is a match.
- :func:`build_stsbenchmark`: tab-split lines, column 4 the 0-5 score, 5 and 6 the sentences;
  ``label`` = score / 5 (graded), ``match`` = score >= 4.0.
"""

from __future__ import annotations

import csv
import logging
import math
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.contract import CANONICAL_COLUMNS, SPLITS, pair_id

logger = logging.getLogger(__name__)

DATASETS = ("banking77", "mediqa2019_rqe", "stsbenchmark")
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
MAX_CHARS = 1000  # longer texts are cut (MEDIQA's longest question is ~1,200 characters)
STS_MATCH = 4.0
BANKING_DEV_FRACTION = 0.2  # share of each intent's train-file utterances held out as dev
BANKING_POOL_FACTOR = 8  # utterances drawn per split = factor x pairs wanted (the hard-negative search space)
MEDIQA_FILES = {"train": "MEDIQA2019-Task2-RQE-TrainingSet-AMIA2016.xml",
                "dev": "MEDIQA2019-Task2-RQE-ValidationSet-AMIA2016.xml",
                "test": "MEDIQA2019-Task2-RQE-TestSet-wLabels.xml"}
MEDIQA_VALIDATION_PAIRS = 295  # usable pairs of the validation file (duplicates dropped)
STS_FILES = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}
BANKING_FILES = {"train": "train.csv", "test": "test.csv"}

Embed = Callable[[Sequence[str]], np.ndarray]
Splits = dict[str, pd.DataFrame]


class DatasetError(ValueError):
    """A dataset folder that is missing or not in the expected format."""


# ----------------------------------------------------------------------------------------------- helpers


def clean_text(text: str | None, max_chars: int = MAX_CHARS) -> str:
    """Whitespace runs to one space, stripped, cut to ``max_chars`` characters."""
    return " ".join((text or "").split())[:max_chars].strip()


def canonical(rows: Sequence[tuple], *, graded: bool, source: str, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Rows ``(text_a, text_b, label, match, *extra)`` -> the canonical frame; duplicate pairs are dropped."""
    columns = ["text_a", "text_b", "label", "match", *extra]
    frame = pd.DataFrame(list(rows), columns=columns)
    if frame.empty:
        frame = pd.DataFrame({c: pd.Series(dtype=object if c.startswith("text") or c in extra else float)
                              for c in columns})
    frame = frame.drop_duplicates(["text_a", "text_b"], keep="first").reset_index(drop=True)
    frame["label"] = frame["label"].astype(np.float64)
    frame["match"] = frame["match"].astype(np.int64)
    frame["pair_id"] = [pair_id(a, b) for a, b in zip(frame["text_a"], frame["text_b"], strict=True)]
    frame = frame[[*CANONICAL_COLUMNS, *extra]]
    frame.attrs.update({"graded": graded, "source": source})
    return frame


def text_components(frame: pd.DataFrame) -> pd.Series:
    """Per pair, the id of its group: pairs that share a text, directly or through other pairs, share a group."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(frame["text_a"], frame["text_b"], strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[ra] = rb
    return pd.Series([root(a) for a in frame["text_a"]], index=frame.index)


def texts_of(frame: pd.DataFrame) -> set[str]:
    return set(frame["text_a"]).union(frame["text_b"])


def remove_cross_split(splits: Splits) -> Splits:
    """Drop train pairs touching a dev/test text and dev pairs touching a test text; counts in attrs."""
    order = [name for name in SPLITS if name in splits]
    out: Splits = {}
    for position, name in enumerate(order):
        frame = splits[name]
        later = set().union(*(texts_of(splits[other]) for other in order[position + 1:]))
        hit = frame["text_a"].isin(later) | frame["text_b"].isin(later)
        kept = frame[~hit].reset_index(drop=True)
        kept.attrs.update({**frame.attrs, "dropped_cross_split": int(hit.sum())})
        if hit.any():
            logger.info("%s: dropped %d %s pairs sharing a text with a later split", frame.attrs.get("source"),
                        int(hit.sum()), name)
        out[name] = kept
    return out


def subsample(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` pairs, stratified on ``match``, chosen with ``seed``, in file order; None keeps all."""
    if n is None or n >= len(frame):
        return frame
    if n < 1:
        raise DatasetError(f"pair counts must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    positives = np.flatnonzero(frame["match"].to_numpy() == 1)
    negatives = np.flatnonzero(frame["match"].to_numpy() == 0)
    n_pos = int(round(n * len(positives) / len(frame)))
    n_pos = min(max(n_pos, 1 if len(positives) and n > 1 else 0), len(positives), n)
    n_neg = min(n - n_pos, len(negatives))
    n_pos = min(len(positives), n - n_neg)
    picked = np.sort(np.r_[rng.choice(positives, n_pos, replace=False), rng.choice(negatives, n_neg, replace=False)])
    out = frame.iloc[picked].reset_index(drop=True)
    out.attrs.update(frame.attrs)
    return out


def finish(splits: Splits, counts: dict[str, int | None], seed: int) -> Splits:
    """Cross-split removal, then deterministic subsampling per split (each split its own seed offset)."""
    splits = remove_cross_split(splits)
    out = {name: subsample(frame, counts.get(name), seed + offset)
           for offset, (name, frame) in enumerate(splits.items())}
    for name, frame in out.items():
        if frame["match"].nunique() < 2:
            raise DatasetError(f"{frame.attrs.get('source')}: the {name} split has only one class "
                               f"({len(frame)} pairs); give it more pairs")
    return out


def describe(splits: Splits) -> dict[str, dict]:
    """Pairs, matches and distinct texts per split (for logs, the dry run and the results file)."""
    out = {}
    for name, frame in splits.items():
        row = {"pairs": len(frame), "matches": int(frame["match"].sum()), "texts": len(texts_of(frame))}
        if "kind" in frame:
            row["kinds"] = {str(k): int(v) for k, v in frame["kind"].value_counts().sort_index().items()}
        if frame.attrs.get("dropped_cross_split"):
            row["dropped_cross_split"] = frame.attrs["dropped_cross_split"]
        out[name] = row
    return out


def _require(folder: Path, names: Sequence[str]) -> None:
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DatasetError(f"{folder}: missing {', '.join(missing)}")


def _counts(max_train: int | None, max_dev: int | None, max_test: int | None) -> dict[str, int | None]:
    return {"train": max_train, "dev": max_dev, "test": max_test}


# ----------------------------------------------------------------------------------------------- banking77


def lexical_embed(texts: Sequence[str], dim: int = 512) -> np.ndarray:
    """Hashed bag of lower-cased words, L2-normalised: a stand-in when no teacher ``embed`` is given."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, zlib.crc32(word.strip("?.,!").encode()) % dim] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms == 0, 1.0, norms)


def read_banking_csv(path: Path, max_chars: int = MAX_CHARS) -> pd.DataFrame:
    """``text,category`` rows -> frame (text, intent); texts seen with two intents are dropped, repeats merged."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"text", "category"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: expected the columns text,category; found {reader.fieldnames}")
        rows = [(clean_text(r["text"], max_chars), (r["category"] or "").strip()) for r in reader]
    frame = pd.DataFrame([r for r in rows if r[0] and r[1]], columns=["text", "intent"]).drop_duplicates()
    ambiguous = frame["text"].duplicated(keep=False)
    if ambiguous.any():
        logger.info("%s: dropped %d utterances filed under two intents", path, int(ambiguous.sum()))
    return frame[~ambiguous].reset_index(drop=True)


def split_utterances(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per intent, a seeded ``fraction`` of its utterances (at least 2 when it has 4+) -> the second frame."""
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for _, rows in frame.groupby("intent", sort=True):
        index = rows.index.to_numpy()
        n = int(round(fraction * len(index)))
        if len(index) >= 4:
            n = min(max(n, 2), len(index) - 2)
        held.extend(rng.choice(index, n, replace=False).tolist() if n > 0 else [])
    mask = frame.index.isin(held)
    return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)


def draw_pool(frame: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """About ``size`` utterances, the same share of every intent (at least 2 each), seeded, in file order."""
    if size >= len(frame):
        return frame
    rng = np.random.default_rng(seed)
    share = size / len(frame)
    picked: list[int] = []
    for _, rows in frame.groupby("intent", sort=True):
        index = rows.index.to_numpy()
        n = min(len(index), max(2, math.ceil(share * len(index))))
        picked.extend(rng.choice(index, n, replace=False).tolist())
    return frame.loc[sorted(picked)].reset_index(drop=True)


def banking_pairs(pool: pd.DataFrame, emb: np.ndarray, n_pairs: int, seed: int, *, positive_fraction: float = 0.5,
                  hard_fraction: float = 0.5, source: str = "banking77") -> pd.DataFrame:
    """Pairs inside one utterance pool: positives (same intent), random and hard negatives (other intents).

    A hard negative is (u, v) with v the pool utterance of another intent whose embedding is closest to u's.
    The ``kind`` column says which rule made each pair; text_a is always the anchor u.
    """
    rng = np.random.default_rng(seed)
    texts, intents = pool["text"].tolist(), pool["intent"].to_numpy()
    n = len(texts)
    n_pos = int(round(n_pairs * positive_fraction))
    n_hard = int(round((n_pairs - n_pos) * hard_fraction))
    n_rand = n_pairs - n_pos - n_hard
    by_intent = {intent: np.flatnonzero(intents == intent) for intent in np.unique(intents)}
    seen: set[frozenset[int]] = set()
    rows: list[tuple] = []

    def add(i: int, j: int, kind: str) -> bool:
        key = frozenset((i, j))
        if i == j or key in seen:
            return False
        seen.add(key)
        match = int(intents[i] == intents[j])
        rows.append((texts[i], texts[j], float(match), match, kind))
        return True

    def draw(count: int, kind: str, partner: Callable[[int], int | None]) -> None:
        made, attempts = 0, 0
        while made < count and attempts < 50 * count + 100:
            attempts += 1
            i = int(rng.integers(n))
            j = partner(i)
            if j is not None and add(i, j, kind):
                made += 1
        if made < count:
            logger.warning("%s: only %d of %d %s pairs could be made from %d utterances", source, made, count,
                           kind, n)

    def same_intent(i: int) -> int | None:
        members = by_intent[intents[i]]
        return int(rng.choice(members)) if len(members) > 1 else None

    def other_intent(i: int) -> int | None:
        others = np.flatnonzero(intents != intents[i])
        return int(rng.choice(others)) if len(others) else None

    draw(n_pos, "positive", same_intent)
    draw(n_rand, "random_negative", other_intent)
    if n_hard:
        emb = np.asarray(emb, dtype=np.float32)
        sim = emb @ emb.T
        sim[intents[:, None] == intents[None, :]] = -np.inf
        nearest = sim.argmax(axis=1)
        made = 0
        for i in rng.permutation(n):
            if made == n_hard:
                break
            if np.isfinite(sim[i, nearest[i]]) and add(int(i), int(nearest[i]), "hard_negative"):
                made += 1
        if made < n_hard:
            logger.warning("%s: only %d of %d hard negatives (one per anchor)", source, made, n_hard)
    order = rng.permutation(len(rows))
    return canonical([rows[k] for k in order], graded=False, source=source, extra=("kind",))


def build_banking77(root: str | Path, *, max_train: int | None = None, max_dev: int | None = None,
                    max_test: int | None = None, seed: int = 0, embed: Embed | None = None,
                    dev_fraction: float = BANKING_DEV_FRACTION, pool_factor: int = BANKING_POOL_FACTOR,
                    positive_fraction: float = 0.5, hard_fraction: float = 0.5,
                    max_chars: int = MAX_CHARS) -> Splits:
    """BANKING77 intent-pair splits (see the module docstring).

    Pair counts default to one pair per utterance of the split. ``embed`` maps texts to L2-normalised rows (the
    base teacher's ``TeacherScorer.encode``); without it a hashed bag of words stands in.
    """
    folder = Path(root) / "banking77"
    _require(folder, list(BANKING_FILES.values()))
    train_file = read_banking_csv(folder / BANKING_FILES["train"], max_chars)
    test_file = read_banking_csv(folder / BANKING_FILES["test"], max_chars)
    train_file = train_file[~train_file["text"].isin(set(test_file["text"]))].reset_index(drop=True)
    train_utt, dev_utt = split_utterances(train_file, dev_fraction, seed)
    utterances = {"train": train_utt, "dev": dev_utt, "test": test_file}
    counts = {name: n if n is not None else len(utterances[name]) for name, n in
              _counts(max_train, max_dev, max_test).items()}
    pools = {name: draw_pool(frame, pool_factor * counts[name], seed + 10 + k)
             for k, (name, frame) in enumerate(utterances.items())}
    everything = [t for pool in pools.values() for t in pool["text"]]
    vectors = np.asarray((embed or lexical_embed)(everything), dtype=np.float32)
    out: Splits = {}
    start = 0
    for k, (name, pool) in enumerate(pools.items()):
        emb = vectors[start:start + len(pool)]
        start += len(pool)
        out[name] = banking_pairs(pool, emb, counts[name], seed + 20 + k, positive_fraction=positive_fraction,
                                  hard_fraction=hard_fraction, source=f"{folder}#{name}")
        out[name].attrs["pool_utterances"] = len(pool)
    return finish(out, {}, seed)


# ----------------------------------------------------------------------------------------------- MEDIQA RQE


def read_mediqa_xml(path: Path, max_chars: int = MAX_CHARS) -> list[tuple]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DatasetError(f"{path}: not valid XML: {err}") from None
    rows = []
    for pair in root.iter("pair"):
        chq, faq, value = pair.find("chq"), pair.find("faq"), (pair.get("value") or "").strip().lower()
        if chq is None or faq is None or value not in ("true", "false"):
            raise DatasetError(f"{path}: pair pid={pair.get('pid')!r} lacks <chq>, <faq> or value=true|false")
        a, b = clean_text("".join(chq.itertext()), max_chars), clean_text("".join(faq.itertext()), max_chars)
        if a and b:
            match = int(value == "true")
            rows.append((a, b, float(match), match))
    if not rows:
        raise DatasetError(f"{path}: no <pair> elements")
    return rows


def build_mediqa2019_rqe(root: str | Path, *, max_train: int | None = None, max_dev: int | None = None,
                         max_test: int | None = None, seed: int = 0, max_chars: int = MAX_CHARS,
                         dev_from_train: int = 0) -> Splits:
    """MEDIQA 2019 RQE: consumer health question (text_a) vs FAQ question (text_b); value="true" matches.

    The validation file has 295 usable pairs; ``dev_from_train`` > 0 adds at least that many training pairs to dev,
    for a dev split large enough to choose settings on. They are whole groups of pairs linked by shared texts
    (:func:`text_components`, drawn with ``seed``), never from the one group that holds most of the training file
    (its FAQ questions recur across thousands of pairs), so no training pair loses a text to dev.
    """
    folder = Path(root) / "mediqa2019_rqe"
    _require(folder, list(MEDIQA_FILES.values()))
    splits = {name: canonical(read_mediqa_xml(folder / file, max_chars), graded=False, source=str(folder / file))
              for name, file in MEDIQA_FILES.items()}
    if dev_from_train > 0:
        train, dev = splits["train"], splits["dev"]
        group = text_components(train)
        counts = group.value_counts()
        small = [g for g in counts.index if g != counts.index[0]]  # the largest holds most texts: never moved
        np.random.default_rng(seed + 7).shuffle(small)
        taken = small[: int(np.searchsorted(np.cumsum(counts[small].to_numpy()), dev_from_train)) + 1]
        moved = group.isin(set(taken)).to_numpy()
        attrs = {**dev.attrs, "source": f"{dev.attrs['source']} + {int(moved.sum())} pairs of {train.attrs['source']}"}
        splits["dev"] = pd.concat([dev, train[moved]], ignore_index=True)
        splits["dev"].attrs.update(attrs)
        splits["train"] = train[~moved].reset_index(drop=True)
        splits["train"].attrs.update(train.attrs)
    return finish(splits, _counts(max_train, max_dev, max_test), seed)


# ----------------------------------------------------------------------------------------------- STS benchmark


def read_sts(path: Path, max_chars: int = MAX_CHARS, match_threshold: float = STS_MATCH) -> list[tuple]:
    """Lines split on tabs (no quoting: sentences hold quote characters); extra trailing fields are ignored."""
    rows, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        cells = line.split("\t")
        try:
            score = float(cells[4])
            a, b = clean_text(cells[5], max_chars), clean_text(cells[6], max_chars)
        except (IndexError, ValueError):
            bad += 1
            continue
        if not (a and b and 0.0 <= score <= 5.0):
            bad += 1
            continue
        rows.append((a, b, score / 5.0, int(score >= match_threshold)))
    if bad:
        logger.warning("%s: skipped %d malformed lines", path, bad)
    if not rows:
        raise DatasetError(f"{path}: no readable lines (expected 7+ tab-separated fields)")
    return rows


def build_stsbenchmark(root: str | Path, *, max_train: int | None = None, max_dev: int | None = None,
                       max_test: int | None = None, seed: int = 0, max_chars: int = MAX_CHARS,
                       match_threshold: float = STS_MATCH) -> Splits:
    """STS benchmark: ``label`` = score / 5 (graded, for Spearman), ``match`` = score >= 4.0."""
    folder = Path(root) / "stsbenchmark"
    _require(folder, list(STS_FILES.values()))
    splits = {name: canonical(read_sts(folder / file, max_chars, match_threshold), graded=True,
                              source=str(folder / file))
              for name, file in STS_FILES.items()}
    return finish(splits, _counts(max_train, max_dev, max_test), seed)


BUILDERS: dict[str, Callable[..., Splits]] = {
    "banking77": build_banking77,
    "mediqa2019_rqe": build_mediqa2019_rqe,
    "stsbenchmark": build_stsbenchmark,
}


def build(name: str, root: str | Path, *, max_train: int | None, max_dev: int | None, max_test: int | None,
          seed: int = 0, embed: Embed | None = None, min_dev: int = 0) -> Splits:
    """One dataset by name; ``embed`` is used by banking77 only. ``min_dev``: MEDIQA's dev is grown from the
    training file to at least this many pairs (the others have larger dev splits)."""
    if name not in BUILDERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    kwargs = {"max_train": max_train, "max_dev": max_dev, "max_test": max_test, "seed": seed}
    if name == "banking77":
        kwargs["embed"] = embed
    if name == "mediqa2019_rqe" and min_dev > MEDIQA_VALIDATION_PAIRS:
        kwargs["dev_from_train"] = min_dev - MEDIQA_VALIDATION_PAIRS
    return BUILDERS[name](root, **kwargs)
