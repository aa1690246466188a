"""Training the student: the loop and what keeps a long run safe.

- ``trainer``: ``Trainer`` and ``TrainConfig`` (batches, precision, schedule, early stopping, the fast path);
- ``checkpoint``: atomic, checksummed checkpoints of the whole training state, and resuming from them;
- ``distributed``: data-parallel training over torch.distributed (gloo), one batch split across ranks;
- ``divergence_guard``: watches every loss part and the gradient norm and says when a run goes wrong.

May import: torch, peft, ``components.losses``, ``components.student``. Never MLflow or click.
"""
