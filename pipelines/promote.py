"""``promote``: register an exported model and move the ``champion`` alias when it is better.

The candidate is the ``model`` of an ``export`` run (``--run-id``) or any model URI (``--model-uri``). It is
registered under ``--name`` (a run already registered there is not registered twice), its gate metrics are
copied to model-version tags, and it is compared on ``--metric`` (default ``dev_f1``) with the version that
holds the alias ``champion``:

- it becomes ``champion`` when its parity checks passed (``flipkd.deployable=true`` on its run) and there is
  no champion yet, or it beats the champion by more than ``--margin``;
- otherwise it gets the alias ``challenger`` and the champion stays.

Aliases only (``set_registered_model_alias``), never the deprecated stages. A refusal is a decision: exit
code 0 either way. Bad input (no such run, a run without a model, a missing metric) is exit code 2.
"""

from __future__ import annotations

import re

import click
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines import _mlflow
from pipelines._options import option
from pipelines.export import GATE_METRICS, MODEL_NAME

CHAMPION, CHALLENGER = "champion", "challenger"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def _bad(message: str):
    raise _mlflow.UsageError(message)


def _candidate_uri(run_id: str | None, model_uri: str | None, client: MlflowClient) -> str:
    if bool(run_id) == bool(model_uri):
        _bad("give exactly one of --run-id (an export run) or --model-uri")
    if model_uri:
        if not model_uri.startswith(("runs:/", "models:/")):
            _bad(f"--model-uri {model_uri!r} is not a runs:/ or models:/ URI")
        return model_uri
    if not RUN_ID.match(run_id):
        _bad(f"--run-id {run_id!r} is not a run id (32 hex characters)")
    try:
        run = client.get_run(run_id)
    except MlflowException:
        _bad(f"no run {run_id} in {mlflow.get_tracking_uri()}")
    if run.data.tags.get("flipkd.deployable") == "false":
        reason = run.data.tags.get("flipkd.not_deployable_reason", "its parity checks failed")
        _bad(f"run {run_id} logged no deployable model ({reason}); nothing to register")
    return f"runs:/{run_id}/{MODEL_NAME}"


def _register(uri: str, name: str, client: MlflowClient):
    """The model version for ``uri``: an existing version of the same run under ``name``, or a new one."""
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].split("/")[0]
        try:
            existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        except MlflowException:
            existing = []
        if existing:
            return max(existing, key=lambda v: int(v.version)), False
    try:
        return mlflow.register_model(uri, name), True
    except MlflowException as err:
        _bad(f"cannot register {uri} as {name!r}: {err.message.splitlines()[0]}")


def _metric(version, metric: str, client: MlflowClient) -> float | None:
    tags = version.tags or {}
    if metric in tags:
        try:
            return float(tags[metric])
        except ValueError:
            pass
    if version.run_id:
        try:
            return client.get_run(version.run_id).data.metrics.get(metric)
        except MlflowException:
            return None
    return None


def _deployable(version, client: MlflowClient) -> bool | None:
    try:
        tag = client.get_run(version.run_id).data.tags.get("flipkd.deployable") if version.run_id else None
    except MlflowException:
        tag = None
    return None if tag is None else tag == "true"


def decide(candidate: float, champion: float | None, margin: float, deployable: bool | None) -> tuple[str, str]:
    """(alias, why): the rule of the module docstring."""
    if deployable is not True:
        why = "its parity checks failed" if deployable is False else "it has no record of passing the parity checks"
        return CHALLENGER, f"refused: {why}"
    if champion is None:
        return CHAMPION, "no champion yet"
    if candidate > champion + margin:
        return CHAMPION, f"better than the champion by {candidate - champion:+.4f} > margin {margin:g}"
    return CHALLENGER, f"refused: {candidate - champion:+.4f} against the champion is not more than margin {margin:g}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@option("--run-id", default=None, help="An export run whose `model` is the candidate.")
@option("--model-uri", default=None, help="Or any model URI (runs:/RUN/model, models:/NAME/VERSION).")
@option("--name", default="flipkd", help="Registered model name.")
@option("--metric", default="dev_f1", help="Run metric compared with the champion's (higher is better).")
@option("--margin", type=click.FloatRange(min=0), default=0.0, help="The candidate must beat the champion by more.")
@_mlflow.clean_errors
def cli(run_id: str | None, model_uri: str | None, name: str, metric: str, margin: float) -> dict:
    """Register an exported model; make it champion if it beats the current one, else challenger."""
    _mlflow.setup_tracking(None)
    client = MlflowClient()
    uri = _candidate_uri(run_id, model_uri, client)
    version, created = _register(uri, name, client)
    version = client.get_model_version(name, version.version)
    value = _metric(version, metric, client)
    if value is None:
        _bad(f"the candidate (version {version.version}, run {version.run_id}) has no metric {metric!r}")
    run_metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    deployable = _deployable(version, client)
    tags = {k: str(run_metrics[k]) for k in (*GATE_METRICS, metric) if k in run_metrics}
    tags["flipkd.deployable"] = "unknown" if deployable is None else str(deployable).lower()
    for key, tag in tags.items():
        client.set_model_version_tag(name, version.version, key, tag)

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is not None and champion.version == version.version:
        click.echo(f"{name} version {version.version} is already the champion ({metric} {value:.4f}); nothing to do")
        return {"decision": CHAMPION, "version": int(version.version), "candidate": value, "champion": value}
    champion_value = _metric(champion, metric, client) if champion is not None else None
    if champion is not None and champion_value is None:
        click.echo(f"warning: champion version {champion.version} has no {metric!r}: the candidate is compared "
                   f"with nothing and only its parity decides", err=True)
    alias, why = decide(value, champion_value, margin, deployable)
    client.set_registered_model_alias(name, alias, version.version)
    if alias == CHAMPION:
        try:
            if client.get_model_version_by_alias(name, CHALLENGER).version == version.version:
                client.delete_registered_model_alias(name, CHALLENGER)
        except MlflowException:
            pass
    client.set_model_version_tag(name, version.version, "flipkd.promotion", f"{alias}: {why}")
    registered = "registered" if created else "already registered as"
    champ_text = (f"champion version {champion.version} {metric} {champion_value:.4f}"
                  if champion is not None and champion_value is not None else "no champion before")
    click.echo(f"{registered} {name} version {version.version} ({uri}); {metric} {value:.4f} vs {champ_text}")
    click.echo(f"decision: version {version.version} -> @{alias} ({why})")
    if alias == CHAMPION:
        click.echo(f"serve: mlflow models serve -m models:/{name}@{CHAMPION} --env-manager local -h 127.0.0.1 -p 5001")
    return {"decision": alias, "version": int(version.version), "candidate": value, "champion": champion_value,
            "why": why}


if __name__ == "__main__":
    cli()
