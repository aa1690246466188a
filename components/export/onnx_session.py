"""An ONNX Runtime CPU session, configured one way for export checks, benchmarks and serving (no torch)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def make_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """``threads`` sets the intra-op thread count (None: ONNX Runtime's default); one inter-op thread."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
