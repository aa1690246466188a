import shutil

import pytest
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory):
    """An empty tracking store with MLflow's tables made once: creating them takes seconds per store."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_env(tmp_path, monkeypatch, migrated_store):
    """A private tracking store and working folder; MLflow's global state is reset around the test."""
    import mlflow

    shutil.copy(migrated_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("FLIPKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(uri)
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def tiny_model_args(tiny_llama_dir, tiny_bert_dir):
    """Options that point the pipelines at the tiny test models and keep runs short."""
    return ["--student", str(tiny_llama_dir), "--teacher", str(tiny_bert_dir), "--no-progress", "--experiment", "t"]
