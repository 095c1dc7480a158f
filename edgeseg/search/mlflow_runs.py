"""Small MLflow helpers shared by tracking, control, artifacts and the report: the client, the
experiment, runs found by tags (paged), the best run by a metric."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow.tracking import MlflowClient

from edgeseg.config import ExperimentConfig, apply_overrides
from edgeseg.search.names import EXPERIMENT_KIND_TAG, EXPERIMENT_TAGS


def client_for(tracking_uri: str) -> Any:
    return MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    """The experiment's id; created with the explicit artifact location when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # created by an older edgeseg or by hand
            client.set_experiment_tag(
                experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_TAGS[EXPERIMENT_KIND_TAG]
            )
        return str(experiment.experiment_id)
    # Marked as model training, so MLflow's UI opens it on the runs table, not on the GenAI overview.
    return str(client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_TAGS))


def quote(value: str) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


def search_runs(client: Any, experiment_id: str, tags: Mapping[str, str]) -> list[Any]:
    """All runs whose tags equal ``tags`` (paged)."""
    filter_string = " and ".join(f"tags.{k} = {quote(v)}" for k, v in tags.items())
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def variant_hash(config: ExperimentConfig, base_seed: int) -> str:
    """The config hash with the repeat's seed reset: repeats of one cell share it (error bars)."""
    return apply_overrides(config, {"train.seed": base_seed}).hash()


def batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def stored_finite(value: float) -> bool:
    """False for NaN and for infinities as MLflow stores them (SQL stores +-inf as +-sys.float_info.max)."""
    return math.isfinite(value) and abs(value) < sys.float_info.max


def best_run(runs: Iterable[Any], metric: str, mode: str) -> Any:
    """The run with the best finite ``metric`` (NaN and inf never win), or None."""
    scored = [r for r in runs if metric in r.data.metrics and stored_finite(r.data.metrics[metric])]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r.data.metrics[metric])


def param_value(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return text[:6000]
