"""The losses of METHOD.md, "Losses": one loss a module, and the composite that weighs them.

- ``sup_loss``: L_sup, the supervised loss on the gold labels (cosine, generative "yes"/"no", or both);
- ``distill_loss``: L_dist, the student's similarities pulled towards the teacher's scores;
- ``mcl_loss``: L_MCL, the margin-aware contrastive loss in angular space;
- ``cosent_loss``: CoSENT, the ranking loss the teacher is fine-tuned with;
- ``composite_loss``: ``FlipKDLoss``, L = w_sup L_sup + w_dist L_dist + w_MCL L_MCL, and its ``LossConfig``.

May import: torch, ``components.similarity`` (the one cosine matrix and angle every loss reads) and
``components.teacher.noise_filter`` (the false-negative rule of the contrastive denominator). No model loading.
"""
