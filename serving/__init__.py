"""flipkd serving: what a deployed model needs at run time (onnxruntime, tokenizers, numpy, pandas; never torch)."""
