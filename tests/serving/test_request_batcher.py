"""Concurrent requests share encoder runs, each gets its own rows back, and an error reaches every request."""

import threading
import time

import numpy as np
import pytest

from serving.request_batcher import RequestBatcher


class SlowEncoder:
    """A stand-in encoder: each text -> [len(text), first char code]; every call takes ``delay`` seconds."""

    def __init__(self, delay: float = 0.05, fail_on: str | None = None) -> None:
        self.delay, self.fail_on, self.calls = delay, fail_on, []

    def __call__(self, texts):
        self.calls.append(list(texts))
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError(f"cannot encode {self.fail_on!r}")
        return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)


def expected(texts):
    return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)


def run_concurrently(batcher, requests):
    results, errors = [None] * len(requests), [None] * len(requests)
    start = threading.Barrier(len(requests))

    def worker(i):
        start.wait()
        try:
            results[i] = batcher.encode(requests[i])
        except RuntimeError as err:
            errors[i] = err

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    return results, errors


# (id, requests, max_texts)
CASES = [
    ("eight_requests_shared", [[f"t{i}-{j}" for j in range(1 + i % 3)] for i in range(8)], 256),
    ("duplicates_across_requests", [["same", f"x{i}", "same"] for i in range(6)], 256),
    ("cap_splits_runs", [[f"r{i}-{j}" for j in range(4)] for i in range(8)], 8),
]


@pytest.mark.parametrize("requests,max_texts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_request_gets_its_rows_in_fewer_runs(requests, max_texts):
    encoder = SlowEncoder()
    batcher = RequestBatcher(encoder, max_texts=max_texts)
    results, errors = run_concurrently(batcher, requests)
    assert errors == [None] * len(requests)
    for texts, got in zip(requests, results, strict=True):
        np.testing.assert_array_equal(got, expected(texts))
    assert batcher.runs == len(encoder.calls) < len(requests)  # requests that waited were run together
    assert all(len(call) == len(set(call)) <= max(max_texts, 3) for call in encoder.calls)  # no text twice in a run


def test_a_lone_request_runs_at_once():
    encoder = SlowEncoder(delay=0.0)
    batcher = RequestBatcher(encoder)
    np.testing.assert_array_equal(batcher.encode(["a", "bc"]), expected(["a", "bc"]))
    assert encoder.calls == [["a", "bc"]]


def test_an_error_reaches_every_request_of_its_run_and_the_batcher_recovers():
    encoder = SlowEncoder(fail_on="bad")
    batcher = RequestBatcher(encoder)
    requests = [["bad"], *[[f"ok{i}"] for i in range(5)]]
    results, errors = run_concurrently(batcher, requests)
    failed_runs = [call for call in encoder.calls if "bad" in call]
    failed = {text for call in failed_runs for text in call}
    for texts, got, err in zip(requests, results, errors, strict=True):
        if texts[0] in failed:
            assert got is None and "cannot encode 'bad'" in str(err)
        else:
            np.testing.assert_array_equal(got, expected(texts))
    assert errors[0] is not None
    np.testing.assert_array_equal(batcher.encode(["fine"]), expected(["fine"]))  # not left busy
