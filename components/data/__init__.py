"""Text-pair data: the contract every input file meets, the embedded demo, and teacher-labelled extra pairs.

- ``contract``: reading pair files (CSV, TSV, JSONL, Parquet) into the canonical columns, with one clear
  ``DataError`` naming file, row and field;
- ``writing``: writing a pair table atomically, and its fingerprint;
- ``splitting``: the grouped train/dev/test split (no text on two sides) and the leakage check;
- ``demo``: the embedded demo FAQ data set;
- ``augment``: unlabelled in-domain pairs for the teacher to label (METHOD.md, "Teacher signal");
- ``visible_text``: whether a text shows anything (standard library only: the serving code imports it).

May import: numpy, pandas and the standard library; no torch, no models.
"""
