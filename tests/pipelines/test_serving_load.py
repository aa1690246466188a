"""A short, bounded load test of the real `mlflow models serve` (the CI version of benchmarks/serving_load.py).

300 mixed requests (pairs, embeddings, FAQ queries) from 8 client threads against one served tiny model: zero
errors, every answer a 200 with one prediction per row. Throughput, p50/p99 latency and the server's RSS before
and after are printed (``pytest -s``) and attached to the test report as user properties.
"""

import math

from benchmarks.serving_load import measure, payload_mix, server_rss_mb, summary
from tests.pipelines.test_deploy import FAQ
from tests.pipelines.test_serving_abuse import deployed  # noqa: F401 - the module-scoped served model fixture
from tests.tiny_models import random_texts

REQUESTS, CONCURRENCY, BUDGET_S = 300, 8, 60


def test_concurrent_mixed_load_has_no_errors(deployed, record_property):  # noqa: F811 - the imported fixture
    assert server_rss_mb(deployed.port) > 0, "the server process tree was not found"
    texts = random_texts(40, seed=31) + [t for _, t in FAQ]
    mix = payload_mix(texts, queries=True, seed=1)
    figures = measure(deployed.port, mix, REQUESTS, CONCURRENCY, BUDGET_S)
    print("\nserving load (CI):", summary(figures))
    for key in ("throughput_rps", "p50_ms", "p99_ms", "rss_before_mb", "rss_after_mb", "rss_peak_mb", "seconds"):
        record_property(key, round(figures[key], 2))
    assert figures["errors"] == 0, figures["error_samples"]
    assert figures["ok"] == REQUESTS and set(figures["mix"]) == {"pairs", "texts", "query"}
    assert figures["seconds"] < BUDGET_S
    assert math.isfinite(figures["p99_ms"]) and figures["p50_ms"] <= figures["p99_ms"]
    # a tiny model: the server must not grow by hundreds of MB under 300 small requests
    assert figures["rss_after_mb"] - figures["rss_before_mb"] < 300, summary(figures)
