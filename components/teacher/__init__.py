"""The teacher: the small expert encoder and the signal it gives the student (METHOD.md, "Teacher signal and the
dual-threshold noise filter").

- ``scorer``: ``TeacherScorer``, embeddings and cosines of the (fine-tuned) MiniLM teacher;
- ``finetune``: fine-tuning the teacher on the training split with CoSENT;
- ``calibration``: Platt scaling of the teacher cosine into t = P(match);
- ``signal``: the teacher's signal for a data set (embeddings, calibrated scores, the filter's verdict);
- ``embedding_cache``: the persistent cache of teacher embeddings (safetensors shards);
- ``noise_filter``: the dual-threshold noise filter and the in-batch false-negative mask.

May import: torch, transformers, ``components.models`` (resolving and loading the teacher), ``components.model_cache``
(the atomic folder a fine-tuned teacher is written to), ``components.pooling`` and ``components.losses.cosent_loss``
(the fine-tuning loss). Never the student, the trainer or the export.
"""
