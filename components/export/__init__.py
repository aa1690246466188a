"""The exported student: ONNX files of the merged encoder, their int8 copies, and the sessions that run them.

- ``onnx_export``: the merged, truncated encoder to ONNX (TorchScript or dynamo), and the int8 engines;
- ``int8_rowwise``: the per-row int8 engine (ONNX Runtime's dynamic int8 MatMul with smoothed activations);
- ``onnx_session``: one place that builds an ONNX Runtime session (threads, options); torch-free, the served
  model imports it.

May import: onnx, onnxruntime, torch (not ``onnx_session``), ``components.student`` (the encoder to export).
"""
