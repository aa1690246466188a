"""flipkd components: small, independent building blocks of flipped knowledge distillation.

Each module holds one concept of ``../shared/METHOD.md`` (see its docstring for the section).
Components never import ``pipelines`` and never talk to MLflow.
"""
