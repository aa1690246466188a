"""Request batching inside one server process: concurrent requests share ONNX Runtime runs.

MLflow's scoring server has no batching of its own: it runs every request's ``predict`` in a thread of its own
(``asyncio.to_thread``), so under load several requests of 1-8 texts each wait in the same process. Run one by one,
each pays a whole ONNX Runtime call for a few rows. Here the first thread to find the engine idle becomes the
leader: it takes the texts of every request queued at that moment (its own included), encodes them together in
batches of ``encode_batch_size`` and hands each request its rows; requests that arrive meanwhile queue for the
next run. Nothing waits for a batch to fill, so a lone request is not delayed.

Example:
    >>> batcher = RequestBatcher(encoder.encode)          # doctest: +SKIP
    >>> z = batcher.encode(["card lost", "refund please"])   # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Job:
    texts: list[str]
    result: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False
    rows: list[int] = field(default_factory=list)


class RequestBatcher:
    """Wraps ``encode(texts) -> float32 [N, r]``; :meth:`encode` may be called from many threads at once.

    ``max_texts`` bounds one shared run (the queued requests beyond it wait for the next run).
    ``runs`` and ``batched_texts`` count what was done (for tests and logs).
    """

    def __init__(self, encode: Callable[[Sequence[str]], np.ndarray], max_texts: int = 256) -> None:
        self._encode = encode
        self._max_texts = max_texts
        self._queue: list[_Job] = []
        self._busy = False
        self._changed = threading.Condition()
        self.runs = 0
        self.batched_texts = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        job = _Job(list(texts))
        with self._changed:
            self._queue.append(job)
        while True:
            with self._changed:
                while self._busy and not job.done:
                    self._changed.wait()
                if job.done:
                    return self._result(job)
                taken = self._take()  # the oldest queued jobs; this thread's own may have to wait for the next run
                self._busy = True
            try:
                self._run(taken)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()

    def _take(self) -> list[_Job]:
        """The queued jobs, oldest first, up to ``max_texts`` texts (always at least one job)."""
        taken, count = [], 0
        while self._queue and (not taken or count + len(self._queue[0].texts) <= self._max_texts):
            job = self._queue.pop(0)
            taken.append(job)
            count += len(job.texts)
        return taken

    def _run(self, jobs: list[_Job]) -> None:
        unique: dict[str, int] = {}
        for job in jobs:
            job.rows = [unique.setdefault(text, len(unique)) for text in job.texts]
        try:
            z = self._encode(list(unique))
        except Exception as err:  # each request of the run gets the error (raised in its own thread), not a hang
            for job in jobs:
                job.error, job.done = err, True
            return
        for job in jobs:
            job.result, job.done = z[job.rows], True
        self.runs += 1
        self.batched_texts += len(unique)

    @staticmethod
    def _result(job: _Job) -> np.ndarray:
        if job.error is not None:
            raise job.error
        return job.result
