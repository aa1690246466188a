"""Splitting pairs into train/dev/test with no text on two sides, and counting the texts that leak across splits.

A text seen in training and again in dev inflates dev scores; :func:`split_grouped` keeps the splits apart by
whole groups of connected texts, :func:`check_leakage` counts what user-given splits share.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable

import numpy as np
import pandas as pd

from components.data.contract import SPLITS

logger = logging.getLogger(__name__)

HUB_MIN_PAIRS = 4  # split_grouped fallback: a shared "hub" text is in at least this many pairs ...
HUB_MAX_FRACTION = 0.05  # ... and hubs are at most this fraction of all texts


def split_grouped(df: pd.DataFrame, dev_fraction: float = 0.1, test_fraction: float = 0.1,
                  seed: int = 0) -> dict[str, pd.DataFrame]:
    """Split into train/dev/test so that no text appears in two splits.

    A text seen in training and again in dev inflates dev scores, so splits are made of whole connected
    components of the graph whose nodes are texts and whose edges are pairs. Components are shuffled with
    ``seed`` and dealt greedily into dev and test up to their fractions of pairs; the rest is train.

    When one giant component leaves dev or test below half its target, two fallbacks follow, each with a
    warning:

    1. Hubs. Typical of FAQ data: every user query is paired with one of a few FAQ answers, which link
       everything. The most frequent texts (at most 5% of the texts, each in at least 4 pairs) are treated
       as a shared pool, like the candidate answers of a retrieval system, and the graph is split without
       them: those few texts may then appear in several splits (:func:`check_leakage` counts them), all
       other texts do not, and no pair is lost.
    2. Carving. When there are no such hubs (a dense or chain-like graph), dev and test are grown as regions
       of connected texts inside the giant component and the pairs joining a region to the rest are dropped,
       so no text is shared at the price of the dropped pairs (their number is in the warning).
    """
    if not (0 <= dev_fraction < 1 and 0 <= test_fraction < 1 and dev_fraction + test_fraction < 1):
        raise ValueError(f"need 0 <= dev_fraction, test_fraction and a sum < 1, got {dev_fraction}, {test_fraction}")
    n = len(df)
    targets = {"dev": round(dev_fraction * n), "test": round(test_fraction * n)}
    a_ids, b_ids = _text_ids(df)
    components = _components(a_ids, b_ids)
    assignment = _deal(components, n, targets, seed)
    short = _shortfall(assignment, targets)
    if short:
        giant = max(components, key=len)
        hubs = _split_around_hubs(a_ids, b_ids, targets, seed)
        if hubs is not None:
            assignment, shared, threshold = hubs
            logger.warning("split_grouped: one group of connected texts holds %d of %d pairs, too many to fill "
                           "dev/test with whole groups; split it by sharing the %d most frequent texts (each in %d "
                           "or more pairs, like a common pool of FAQ answers): they may appear in several splits",
                           len(giant), n, shared, threshold)
        else:
            dropped = _carve(giant, a_ids, b_ids, short, assignment, np.random.default_rng([seed, 1]))
            logger.warning("split_grouped: one group of connected texts holds %d of %d pairs, too many to fill "
                           "dev/test with whole groups; carved %s out of it and dropped %d pairs that would have "
                           "put a text in two splits", len(giant), n, "/".join(short), dropped)
    return {split: df.loc[assignment == split].reset_index(drop=True) for split in SPLITS}


def _deal(components: list[np.ndarray], n: int, targets: dict[str, int], seed: int) -> np.ndarray:
    """Deal whole components, in a seeded random order, into dev then test while they fit; the rest is train."""
    assignment = np.full(n, "train", dtype=object)
    filled = {"dev": 0, "test": 0}
    for k in np.random.default_rng(seed).permutation(len(components)):
        members = components[k]
        for split in ("dev", "test"):
            if filled[split] + len(members) <= targets[split]:
                assignment[members] = split
                filled[split] += len(members)
                break
    return assignment


def _shortfall(assignment: np.ndarray, targets: dict[str, int]) -> dict[str, int]:
    """The pairs missing from dev/test, for the splits that got less than half their target."""
    counts = {split: int((assignment == split).sum()) for split in targets}
    return {split: targets[split] - counts[split] for split in targets if counts[split] < targets[split] / 2}


def _split_around_hubs(a_ids: np.ndarray, b_ids: np.ndarray, targets: dict[str, int],
                       seed: int) -> tuple[np.ndarray, int, int] | None:
    """Retry the deal with ever more frequent texts left out of the graph; None when no few hubs suffice."""
    degree = np.bincount(np.concatenate([a_ids, b_ids]))
    if not degree.size:
        return None
    threshold = int(degree.max()) // 2
    while threshold >= HUB_MIN_PAIRS:
        hubs = degree >= threshold
        if hubs.sum() > HUB_MAX_FRACTION * degree.size:
            return None
        assignment = _deal(_components(a_ids, b_ids, hubs), len(a_ids), targets, seed)
        if not _shortfall(assignment, targets):
            return assignment, int(hubs.sum()), threshold
        threshold //= 2
    return None


def _text_ids(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Integer node ids shared by both sides: a text is one node whether it appears as text_a or text_b."""
    codes, _ = pd.factorize(pd.concat([df["text_a"], df["text_b"]], ignore_index=True))
    return codes[: len(df)], codes[len(df):]


def _components(a_ids: np.ndarray, b_ids: np.ndarray, shared: np.ndarray | None = None) -> list[np.ndarray]:
    """Pair indices grouped by connected component (union-find with path halving), in order of first pair.

    Texts flagged in ``shared`` do not connect anything: a pair joins the component of its other text, and a
    pair of two shared texts is a group of its own.
    """
    parent = list(range(int(max(a_ids.max(initial=-1), b_ids.max(initial=-1))) + 1))
    is_shared = shared.tolist() if shared is not None else [False] * len(parent)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(a_ids.tolist(), b_ids.tolist(), strict=True):
        if not (is_shared[a] or is_shared[b]):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for index, (a, b) in enumerate(zip(a_ids.tolist(), b_ids.tolist(), strict=True)):
        key = find(b) if is_shared[a] and not is_shared[b] else find(a) if not is_shared[a] else -1 - index
        groups.setdefault(key, []).append(index)
    return [np.array(members, dtype=np.int64) for members in groups.values()]


def _carve(members: np.ndarray, a_ids: np.ndarray, b_ids: np.ndarray, short: dict[str, int],
           assignment: np.ndarray, rng: np.random.Generator) -> int:
    """Grow a breadth-first region of texts per short split inside one component; return the pairs dropped.

    A pair goes to a region's split when both its texts are in that region, stays in train when neither is
    in any region, and is dropped (marked ``"drop"``) when it would join two different splits. Regions start
    from texts in a seeded random order and skip texts whose neighbours all sit in another region already
    (they could only add dropped pairs).
    """
    neighbours: dict[int, list[int]] = {}
    for a, b in zip(a_ids[members].tolist(), b_ids[members].tolist(), strict=True):
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    nodes = list(neighbours)
    order = [nodes[k] for k in rng.permutation(len(nodes))]
    region: dict[int, str] = {}

    def useless(node: int, split: str) -> bool:
        return all(other in region and region[other] != split for other in neighbours[node])

    for split, need in short.items():
        inside, starts, queue = 0, iter(order), deque()
        while inside < need:
            if not queue:
                start = next((n for n in starts if n not in region and not useless(n, split)), None)
                if start is None:
                    break
                queue.append(start)
            node = queue.popleft()
            if node in region or useless(node, split):
                continue
            region[node] = split
            for other in neighbours[node]:
                if region.get(other) == split:
                    inside += 1  # counted once, when its second text joins (a text paired with itself: now)
                elif other not in region:
                    queue.append(other)
    sides_a = [region.get(a, "train") for a in a_ids[members].tolist()]
    sides_b = [region.get(b, "train") for b in b_ids[members].tolist()]
    assignment[members] = [x if x == y else "drop" for x, y in zip(sides_a, sides_b, strict=True)]
    return sum(x != y for x, y in zip(sides_a, sides_b, strict=True))


def check_leakage(splits: dict[str, pd.DataFrame]) -> int:
    """Count distinct texts found in more than one split, warning when there are any (for user-given splits)."""
    seen: dict[str, set[str]] = {}
    for split, frame in splits.items():
        for text in _texts(frame):
            seen.setdefault(text, set()).add(split)
    leaked = [text for text, where in seen.items() if len(where) > 1]
    if leaked:
        logger.warning("check_leakage: %d distinct texts appear in more than one split (e.g. %r); dev/test scores "
                       "may be optimistic", len(leaked), leaked[0][:80])
    return len(leaked)


def _texts(frame: pd.DataFrame) -> Iterable[str]:
    return set(frame["text_a"]).union(frame["text_b"])
