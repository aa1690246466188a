"""Models-from-code entry point: MLflow builds the served pyfunc by running this file, so the exported model
holds no pickle (``mlflow.pyfunc.log_model(python_model=<this file's path>)``)."""

from mlflow.models import set_model

from serving.onnx_pyfunc import FlipKDOnnxModel

set_model(FlipKDOnnxModel())
