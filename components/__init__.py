"""flipkd components: the library of flipped knowledge distillation, one concept a module, grouped by what it is about.

Each module holds one concept of ``../shared/METHOD.md`` (see its docstring for the section). Components never
import ``pipelines`` or ``serving`` and never talk to MLflow or click. The packages (each ``__init__`` says what
lives there and what it may import):

- ``data/``: the data contract (reading, writing, the grouped split), the demo data set, teacher-labelled extra pairs,
  and the visible-text rule the served model shares;
- ``teacher/``: the teacher scorer, its fine-tuning, Platt calibration, the teacher signal, the embedding cache and
  the dual-threshold noise filter;
- ``student/``: the LoRA encoder and its merged export copy, LoRA dropout, packing, the prefix cache and the
  retrieval cascade;
- ``losses/``: L_sup, L_dist, L_MCL, CoSENT and the composite loss;
- ``training/``: the trainer, checkpoints, data-parallel training and the divergence guard;
- ``export/``: ONNX export, the int8 engines and ONNX Runtime sessions.

What several packages share sits here, at the top: ``models`` (resolving, converting and loading the teacher and
student), ``model_cache`` (the cache folder and its atomic, checksummed folders), ``pooling`` (sequence pooling of
teacher and student), ``similarity`` (the cosine matrix and angle of the losses), ``metrics`` (pair classification
metrics) and ``checksums`` (sha256 listings, standard library only: the served model ships it).
"""
