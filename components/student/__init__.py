"""The student: a decoder-only LLM read as an encoder through LoRA (METHOD.md, "The student as an encoder-decoder").

- ``lora_encoder``: ``LoraEncoder`` (z = A x at one LoRA module, pooled, L2-normalised), its ``EncoderConfig``
  and the saved adapter folder;
- ``merged_encoder``: ``MergedEncoder``, LoRA merged in and the model cut after the readout block: what the ONNX
  export traces;
- ``lora_dropout``: the LoRA dropout sites and the cheap, layout-independent masks;
- ``packing``: several short texts in one row with a block-diagonal causal mask;
- ``prefix_cache``: the frozen bottom blocks' states, computed once per text and cached (METHOD.md, "LoRA depth");
- ``cascade``: the retrieval cascade, a cosine shortlist then joint scoring (METHOD.md, "Inference");
- ``reading_mix``: ``ReadingMix``, one score from both readings of a student trained both ways (``sup_mode both``).

May import: torch, peft, transformers, ``components.models`` (model records and fingerprints),
``components.pooling``, ``components.checksums`` and ``components.teacher.embedding_cache`` (its shard writer,
which the prefix cache's disk store shares). Never the losses, the trainer or the export.
"""
