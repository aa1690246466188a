"""flipkd pipelines: one module per MLproject entry point (options -> components -> MLflow)."""
