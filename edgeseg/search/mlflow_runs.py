"""Small MLflow helpers shared by tracking, control, artifacts and the report: the client, the
experiment, runs found by tags (paged), the best run by a metric.

A SQL store needs its database driver in this Python (``postgresql://`` needs psycopg, from
``pip install 'edgeseg[postgres]'``); :func:`client_for` checks for it first, so a missing driver is one
line naming the module and what to install, not MLflow's traceback from deep inside SQLAlchemy."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from edgeseg.config import ConfigError, ExperimentConfig, apply_overrides
from edgeseg.search.names import EPOCH_KEYS, EPOCH_PREFIXES, EXPERIMENT_KIND_TAG, EXPERIMENT_TAGS
from edgeseg.secrets import redact_uri

# SQLAlchemy's driver name -> (the module it imports, what installs it). A plain postgresql:// URI
# takes SQLAlchemy's default driver: psycopg (3) since SQLAlchemy 2.1, psycopg2 before.
_STORE_DRIVERS = {
    "psycopg": ("psycopg", "pip install 'edgeseg[postgres]'"),
    "psycopg2": ("psycopg2", "pip install 'edgeseg[postgres]'"),
    "pg8000": ("pg8000", "pip install pg8000"),
    "pymysql": ("pymysql", "pip install pymysql"),
    "mysqldb": ("MySQLdb", "pip install mysqlclient"),
    "pymssql": ("pymssql", "pip install pymssql"),
    "pyodbc": ("pyodbc", "pip install pyodbc"),
}
_SQL_SERVERS = {"postgresql": "PostgreSQL", "mysql": "MySQL", "mssql": "SQL Server"}


class StoreDriverError(ConfigError):
    """The database driver of a SQL tracking store is not installed in this Python."""


def store_driver_problem(uri: str) -> str | None:
    """Why the SQL store ``uri`` cannot be opened here for lack of its database driver, or None
    (not a PostgreSQL/MySQL/SQL Server URI, or its driver is importable)."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    server = _SQL_SERVERS.get(scheme.split("+", 1)[0])
    if server is None:
        return None
    from sqlalchemy.engine.url import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        driver = make_url(uri).get_dialect().driver  # the dialect class only; the driver is not imported
    except (ArgumentError, NoSuchModuleError, ValueError):
        return None  # a malformed URI or a driver SQLAlchemy does not know: its own error says more
    module, install = _STORE_DRIVERS.get(driver, ("", ""))
    if not module or importlib.util.find_spec(module) is not None:
        return None
    return (
        f"tracking store {redact_uri(uri)!r} needs the {server} driver module {module!r} "
        f"(SQLAlchemy's {driver} driver for {scheme}://), which is not installed: {install}"
    )


def require_store_driver(uri: str) -> None:
    """Raise :class:`StoreDriverError` when :func:`store_driver_problem` finds one."""
    if problem := store_driver_problem(uri):
        raise StoreDriverError(problem)


def client_for(tracking_uri: str) -> Any:
    require_store_driver(tracking_uri)
    from mlflow.tracking import MlflowClient  # a second of imports: only for the commands that talk to MLflow

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


def epoch_steps(client: Any, run: Any) -> dict[str, int]:
    """The last epoch a run holds for each per-epoch metric (its histories: a driver killed inside
    ``log_batch`` can leave an epoch's points written without the ``last_epoch`` tag)."""
    return {
        key: max((m.step for m in client.get_metric_history(run.info.run_id, key)), default=0)
        for key in run.data.metrics
        if key.startswith(EPOCH_PREFIXES) or key in EPOCH_KEYS
    }


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
