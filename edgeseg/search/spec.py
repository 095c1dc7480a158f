"""Search specs: a YAML file -> a frozen, validated :class:`SearchSpec`.

A spec names a base experiment (a preset plus dotted overrides), a search space over any config key
(or over named *bundles* of keys, for ablation axes whose keys must change together), a searcher
(Optuna TPE, grid, random), a scheduler (ASHA or FIFO), trial resources and where results go. All
checking happens here, once; every error names the file and the key. Values that depend on the
machine (storage folder, MLflow store) stay ``None`` until :meth:`SearchSpec.resolved` fills them on
the driver, so a spec validated on a laptop can be submitted to a cluster.

A serialised spec (``to_dict``: the search record ``search.json``, the parent run's ``search.yaml``)
never holds a password: ``edgeseg.secrets.redact_uri`` masks it, and reading such a record back takes
the full URI from ``$MLFLOW_TRACKING_URI`` when that names the same store.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import SplitResult, urlsplit

import yaml

from edgeseg import paths
from edgeseg.config import (
    ConfigError,
    DuplicateKeyError,
    ExperimentConfig,
    apply_overrides,
    load_config,
    load_yaml,
    validate,
)
from edgeseg.search.design import DESIGNS, ESTIMABLE, DesignError, DesignPlan, fractional_plan, full_plan
from edgeseg.secrets import REDACTED, redact_uri

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "int")
SEARCHERS = ("optuna", "grid", "random")
SCHEDULERS = ("asha", "fifo")
EXECUTORS = ("train", "function")
METRICS = (
    "val/miou",
    "val/iou_target",
    "val/iou_other",
    "val/miou_per_roi",
    "val/boundary_f",
    "val/loss",
    "train/loss",
)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Which way a metric improves, by name; a spec whose mode contradicts it would search for the worst trial.
LOWER_IS_BETTER = re.compile(r"loss$")
HIGHER_IS_BETTER = re.compile(r"^val/(miou.*|iou_.*|mask_ap.*|boundary_f|pixel_accuracy)$")
SEED_MAX = 2**32 - 1  # TPESampler and Tune's random generator seed numpy: [0, 2**32)
# Storage is a local path or a pyarrow filesystem URI; those need a bucket (or host).
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")
TRACKING_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQLAlchemy stores


class SpecError(ConfigError):
    """A search spec is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Axis:
    """One dimension of the search space.

    ``name`` is a dotted config key (values are config values) or, for a *bundle* axis, any other
    name whose values are mappings of dotted keys (e.g. ``multiscale: {model.layers: fine,mid,deep}``).
    """

    name: str
    kind: str  # one of DISTRIBUTIONS
    values: tuple[Any, ...] = ()  # choice / grid
    low: float = 0.0  # uniform / loguniform / int (inclusive)
    high: float = 0.0

    @property
    def is_bundle(self) -> bool:
        return self.kind in ("choice", "grid") and bool(self.values) and isinstance(self.values[0], tuple)

    def to_yaml(self) -> dict[str, Any]:
        if self.kind in ("choice", "grid"):
            values = [dict(v) if self.is_bundle else _listify(v) for v in self.values]
            return {self.kind: values}
        low, high = (int(self.low), int(self.high)) if self.kind == "int" else (self.low, self.high)
        return {self.kind: [low, high]}


@dataclass(frozen=True)
class SearcherSpec:
    kind: str = "optuna"
    seed: int = 0


@dataclass(frozen=True)
class SchedulerSpec:
    kind: str = "asha"
    max_t: int = 0  # epochs; 0 = the base config's train.epochs
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class DesignSpec:
    """Which cells of the grid the search trains (``search/design.py``)."""

    kind: str = "full"  # full | fractional
    estimable: str = "main"  # fractional: main | interactions (what the design must keep estimable)
    reduction: int = 0  # fractional: the GSD reduction factor; 0 = the largest that keeps `estimable`
    effects_budget: int = 0  # > 0: the report estimates effects from every trial at this epoch
    max_repeats: int = 0  # > 0: adaptive seeds, from `repeats` per cell up to this many (search/adaptive.py)


@dataclass(frozen=True)
class ResourcesSpec:
    executor: str = "train"  # train: each trial is a Ray Train TorchTrainer run; function: one process
    workers: int = 1  # Ray Train workers per trial (DDP when > 1)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractions let small heads share a GPU


@dataclass(frozen=True, repr=False)
class MlflowSpec:
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI or SQLite under $EDGESEG_HOME/mlflow
    experiment: str | None = None  # None: the search name
    artifact_location: str | None = None  # None: $EDGESEG_HOME/mlflow/artifacts/<experiment> (local stores)
    # at the search's end, how long to wait for MLflow to take the writes kept during an outage
    flush_timeout_s: float = 300.0

    def redacted(self) -> MlflowSpec:
        """The same store with any password masked (what is written to files and logs)."""
        uris = (self.tracking_uri, self.artifact_location)
        tracking, artifacts = (None if u is None else redact_uri(u) for u in uris)
        return MlflowSpec(tracking, self.experiment, artifacts, self.flush_timeout_s)

    def __repr__(self) -> str:  # tracebacks and logs print specs
        shown = dataclasses.asdict(self.redacted())
        return f"MlflowSpec({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


@dataclass(frozen=True)
class SearchSpec:
    name: str
    preset: str
    overrides: tuple[tuple[str, Any], ...] = ()
    space: tuple[Axis, ...] = ()
    description: str = ""
    searcher: SearcherSpec = field(default_factory=SearcherSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    design: DesignSpec = field(default_factory=DesignSpec)
    metric: str = "val/miou"
    mode: str = "max"
    num_samples: int = 1
    repeats: int = 1
    skip_invalid: bool = False
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    max_concurrent_trials: int = 2
    max_failures: int = 1
    keep_checkpoints: int = 2
    storage: str | None = None  # None: $EDGESEG_HOME/searches; a path (local, NFS) or s3://bucket/prefix
    home: str | None = None  # EDGESEG_HOME for the trials; None: the driver's
    mlflow: MlflowSpec = field(default_factory=MlflowSpec)
    export_onnx: bool = True
    source: str = "<spec>"

    # ------------------------------------------------------------------------------------------
    def base_overrides(self) -> dict[str, Any]:
        return {k: _listify(v) for k, v in self.overrides}

    def base_config(self) -> ExperimentConfig:
        return load_config(self.preset, overrides=self.base_overrides())

    @property
    def max_epochs(self) -> int:
        """The epoch budget of one trial (ASHA's max_t)."""
        return self.scheduler.max_t or self.base_config().train.epochs

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment or self.name

    def resolved(self) -> SearchSpec:
        """Machine-dependent defaults filled in (called on the driver).

        The tracking URI keeps its password in memory (the driver and the trials connect with it);
        :meth:`to_dict` masks it.
        """
        # The environment's store (the spec's own was checked when it was read), before any folder is made.
        tracking = self.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        if not self.mlflow.tracking_uri and tracking and (problem := tracking_problem(tracking)):
            raise SpecError(
                f"$MLFLOW_TRACKING_URI {redact_uri(tracking)!r} {problem} "
                f"(search spec {self.source} sets no mlflow.tracking_uri)"
            )
        home = Path(self.home).expanduser().resolve() if self.home else paths.home()
        storage = self.storage or str(home / "searches")
        if "://" not in storage:
            storage = str(Path(storage).expanduser().resolve())
        if not tracking:
            (home / "mlflow").mkdir(parents=True, exist_ok=True)
            tracking = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
        artifacts = self.mlflow.artifact_location
        if artifacts is None and not tracking.startswith(("http://", "https://", "databricks")):
            artifacts = (home / "mlflow" / "artifacts" / self.experiment_name).as_uri()
        mlflow = MlflowSpec(tracking, self.experiment_name, artifacts, self.mlflow.flush_timeout_s)
        return dataclasses.replace(self, storage=storage, home=str(home), mlflow=mlflow)

    def to_dict(self) -> dict[str, Any]:
        """The YAML schema again, without passwords (``spec_from_mapping(spec.to_dict())`` round-trips)."""
        return {
            "name": self.name,
            "description": self.description,
            "base": {"preset": self.preset, "overrides": self.base_overrides()},
            "space": {axis.name: axis.to_yaml() for axis in self.space},
            "searcher": dataclasses.asdict(self.searcher),
            "scheduler": dataclasses.asdict(self.scheduler),
            "design": dataclasses.asdict(self.design),
            "metric": self.metric,
            "mode": self.mode,
            "num_samples": self.num_samples,
            "repeats": self.repeats,
            "skip_invalid": self.skip_invalid,
            "resources": dataclasses.asdict(self.resources),
            "max_concurrent_trials": self.max_concurrent_trials,
            "max_failures": self.max_failures,
            "keep_checkpoints": self.keep_checkpoints,
            "storage": self.storage,
            "home": self.home,
            "mlflow": dataclasses.asdict(self.mlflow.redacted()),
            "export_onnx": self.export_onnx,
        }


def _listify(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def metric_mode(metric: str) -> str | None:
    """``min`` for losses, ``max`` for the known higher-is-better metrics, None when the name says nothing."""
    if LOWER_IS_BETTER.search(metric):
        return "min"
    if HIGHER_IS_BETTER.match(metric):
        return "max"
    return None


# ----------------------------------------------------------------------------------------------
# Locations: storage folders and MLflow stores, checked by form (nothing is contacted).
# ----------------------------------------------------------------------------------------------


def restore_credentials(uri: str) -> str:
    """A redacted tracking URI read back from a record: ``$MLFLOW_TRACKING_URI`` when it names the same store."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if REDACTED in uri and env and env != uri and redact_uri(env) == uri:
        return env
    return uri


def _scheme(uri: str) -> str:
    """The URI scheme, lower case and without a ``+driver``; "" for a path (``C:\\x`` included)."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    if not match or len(match.group(1)) == 1:
        return ""
    return match.group(1).split("+", 1)[0].lower()


def _port_problem(parts: SplitResult) -> str | None:
    try:
        parts.port  # noqa: B018 (parsing it is the check)
    except ValueError as exc:
        return f"has a bad port ({exc})"
    return None


def storage_problem(uri: str) -> str | None:
    """Why ``uri`` is not a storage folder (a local path, file://, s3://bucket/prefix, ...), or None."""
    if not uri.strip():
        return "is empty"
    if "://" not in uri:  # a local or NFS path, as StorageFolder and Tune read it
        return None
    scheme, parts = _scheme(uri), urlsplit(uri)
    if scheme == "file":
        return None if parts.path.strip("/") else "needs a folder: file:///abs/path"
    if scheme not in STORAGE_SCHEMES:
        return f"has an unknown scheme {scheme!r}; use a local path, file:///path or s3://bucket/prefix"
    if not parts.hostname:
        return f"needs a bucket: {scheme}://bucket/prefix"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials (they would be written to search.json); use the AWS_* variables"
    return _port_problem(parts)


def tracking_problem(uri: str) -> str | None:
    """Why ``uri`` is not an MLflow tracking URI edgeseg can use, or None."""
    if not uri.strip():
        return "is empty"
    scheme, parts = _scheme(uri), urlsplit(uri)
    if scheme == "":  # a local folder: MLflow's file store
        return None
    if scheme == "file":
        return None if parts.path.strip("/") else "needs a folder: file:///abs/path"
    if scheme in ("http", "https"):
        return _port_problem(parts) if parts.hostname else f"needs a host: {scheme}://host[:port]"
    if scheme in ("databricks", "databricks-uc"):
        return None if uri.lower() == scheme or parts.netloc else f"is {scheme} or {scheme}://profile"
    if scheme == "sqlite":
        path = uri.partition("://")[2]
        if not path.startswith("/") or not path.strip("/"):
            return "needs a database file: sqlite:///abs/path.db"
        return None
    if scheme in TRACKING_DATABASES:
        if not uri.partition("://")[2].strip("/"):
            return f"needs a server and a database: {scheme}://user@host[:port]/database"
        return _port_problem(parts)
    return (
        f"has an unknown scheme {scheme!r}; use a local path, file:///path, http(s)://host[:port], "
        "sqlite:///path, postgresql://, mysql://, mssql:// or databricks"
    )


# ----------------------------------------------------------------------------------------------
# Loading.
# ----------------------------------------------------------------------------------------------

_TOP_KEYS = {
    "name", "description", "base", "space", "searcher", "scheduler", "metric", "mode", "num_samples",
    "repeats", "skip_invalid", "resources", "max_concurrent_trials", "max_failures", "keep_checkpoints",
    "storage", "home", "mlflow", "export_onnx", "design",
}  # fmt: skip


def load_spec(path: str | Path) -> SearchSpec:
    """Read and validate a search spec YAML file."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text())
    except FileNotFoundError as exc:
        raise SpecError(f"search spec {path} does not exist") from exc
    except DuplicateKeyError as exc:
        raise SpecError(f"search spec {path}: key {exc.key!r}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"search spec {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise SpecError(f"search spec {path}: the top level must be a mapping (name, base, space, ...)")
    return spec_from_mapping(data, source=str(path))


def spec_from_mapping(data: Mapping[str, Any], source: str = "<spec>") -> SearchSpec:
    """Validate a parsed spec; every error names ``source`` and the offending key."""
    r = _Reader(source)
    unknown = set(data) - _TOP_KEYS
    if unknown:
        r.fail(sorted(unknown)[0], f"unknown key; allowed: {', '.join(sorted(_TOP_KEYS))}")
    name = r.string(data, "name", required=True)
    if not NAME_PATTERN.match(name):
        r.fail("name", f"{name!r} must be 1-64 characters of letters, digits, '_', '.', '-' (used in paths)")

    base = r.section(data, "base", {"preset", "overrides"}, required=True)
    preset = r.string(base, "preset", key="base.preset", default="baseline")
    overrides_raw = r.section(base, "overrides", None, key="base.overrides")
    overrides = {str(k): v for k, v in overrides_raw.items()}
    try:
        base_config = load_config(
            preset, overrides=overrides, overrides_source=f"search spec {source}: base.overrides"
        )
    except ConfigError as exc:
        if str(exc).startswith("search spec"):
            raise SpecError(str(exc)) from exc
        raise SpecError(f"search spec {source}: base: {exc}") from exc

    searcher, scheduler = _read_searcher(r, data), _read_scheduler(r, data)
    resources, mlflow = _read_resources(r, data), _read_mlflow(r, data)
    space = _read_space(r, data.get("space") or {}, base_config)
    metric = r.choice(data, "metric", METRICS, default="val/miou")

    spec = SearchSpec(
        name=name,
        preset=preset,
        overrides=tuple((k, _tuplify(v)) for k, v in overrides.items()),
        space=space,
        description=r.string(data, "description", default=""),
        searcher=searcher,
        scheduler=scheduler,
        design=_read_design(r, data),
        metric=metric,
        mode=r.choice(data, "mode", ("max", "min"), default=metric_mode(metric) or "max"),
        num_samples=r.integer(data, "num_samples", default=1, minimum=1),
        repeats=r.integer(data, "repeats", default=1, minimum=1),
        skip_invalid=r.boolean(data, "skip_invalid", default=False),
        resources=resources,
        max_concurrent_trials=r.integer(data, "max_concurrent_trials", default=2, minimum=1),
        max_failures=r.integer(data, "max_failures", default=1, minimum=0),
        keep_checkpoints=r.integer(data, "keep_checkpoints", default=2, minimum=1),
        storage=r.location(data, "storage", storage_problem),
        home=r.string(data, "home", default=None),
        mlflow=mlflow,
        export_onnx=r.boolean(data, "export_onnx", default=True),
        source=source,
    )
    _check_combinations(r, spec, base_config)
    return spec


def _read_searcher(r: _Reader, data: Mapping[str, Any]) -> SearcherSpec:
    searcher_raw = r.section(data, "searcher", {"kind", "seed"})
    return SearcherSpec(
        kind=r.choice(searcher_raw, "kind", SEARCHERS, key="searcher.kind", default="optuna"),
        seed=r.integer(searcher_raw, "seed", key="searcher.seed", default=0, minimum=0, maximum=SEED_MAX),
    )


def _read_scheduler(r: _Reader, data: Mapping[str, Any]) -> SchedulerSpec:
    scheduler_raw = r.section(data, "scheduler", {"kind", "max_t", "grace_period", "reduction_factor"})
    return SchedulerSpec(
        kind=r.choice(scheduler_raw, "kind", SCHEDULERS, key="scheduler.kind", default="asha"),
        max_t=r.integer(scheduler_raw, "max_t", key="scheduler.max_t", default=0, minimum=0),
        grace_period=r.integer(
            scheduler_raw, "grace_period", key="scheduler.grace_period", default=1, minimum=1
        ),
        reduction_factor=r.number(
            scheduler_raw, "reduction_factor", key="scheduler.reduction_factor", default=2.0
        ),
    )


def _read_design(r: _Reader, data: Mapping[str, Any]) -> DesignSpec:
    raw = r.section(data, "design", {"kind", "estimable", "reduction", "effects_budget", "max_repeats"})
    return DesignSpec(
        kind=r.choice(raw, "kind", DESIGNS, key="design.kind", default="full"),
        estimable=r.choice(raw, "estimable", ESTIMABLE, key="design.estimable", default="main"),
        reduction=r.integer(raw, "reduction", key="design.reduction", default=0, minimum=0),
        effects_budget=r.integer(raw, "effects_budget", key="design.effects_budget", default=0, minimum=0),
        max_repeats=r.integer(raw, "max_repeats", key="design.max_repeats", default=0, minimum=0),
    )


def _read_resources(r: _Reader, data: Mapping[str, Any]) -> ResourcesSpec:
    resources_raw = r.section(
        data, "resources", {"executor", "workers", "cpus_per_worker", "gpus_per_worker"}
    )
    return ResourcesSpec(
        executor=r.choice(resources_raw, "executor", EXECUTORS, key="resources.executor", default="train"),
        workers=r.integer(resources_raw, "workers", key="resources.workers", default=1, minimum=1),
        cpus_per_worker=r.number(
            resources_raw, "cpus_per_worker", key="resources.cpus_per_worker", default=1.0
        ),
        gpus_per_worker=r.number(
            resources_raw, "gpus_per_worker", key="resources.gpus_per_worker", default=0.0
        ),
    )


def _read_mlflow(r: _Reader, data: Mapping[str, Any]) -> MlflowSpec:
    mlflow_raw = r.section(
        data, "mlflow", {"tracking_uri", "experiment", "artifact_location", "flush_timeout_s"}
    )
    tracking_uri = r.location(mlflow_raw, "tracking_uri", tracking_problem, key="mlflow.tracking_uri")
    flush_timeout = r.number(mlflow_raw, "flush_timeout_s", key="mlflow.flush_timeout_s", default=300.0)
    if flush_timeout < 0:
        r.fail("mlflow.flush_timeout_s", f"must be >= 0 seconds, got {flush_timeout!r}")
    return MlflowSpec(
        tracking_uri=None if tracking_uri is None else restore_credentials(tracking_uri),
        experiment=r.string(mlflow_raw, "experiment", key="mlflow.experiment", default=None),
        artifact_location=r.string(
            mlflow_raw, "artifact_location", key="mlflow.artifact_location", default=None
        ),
        flush_timeout_s=flush_timeout,
    )


def _read_space(r: _Reader, raw: Any, base: ExperimentConfig) -> tuple[Axis, ...]:
    if not isinstance(raw, Mapping):
        r.fail("space", "must be a mapping of axis -> {choice|grid|uniform|loguniform|int: ...}")
    axes = []
    for name, dist in raw.items():
        key = f"space.{name}"
        if not isinstance(dist, Mapping) or len(dist) != 1:
            r.fail(key, f"must be a mapping with exactly one of {', '.join(DISTRIBUTIONS)}, got {dist!r}")
        ((kind, args),) = dist.items()
        if kind not in DISTRIBUTIONS:
            r.fail(key, f"unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
        is_config_key = "." in str(name)
        if kind in ("choice", "grid"):
            if not isinstance(args, list) or not args:
                r.fail(f"{key}.{kind}", f"needs a non-empty list of values, got {args!r}")
            bundles = [isinstance(v, Mapping) for v in args]
            if any(bundles) and not all(bundles):
                r.fail(f"{key}.{kind}", "mixes mappings (bundles of overrides) and plain values")
            if all(bundles):
                if is_config_key:
                    r.fail(key, "a bundle axis (values are mappings of config keys) needs a name without '.'")
                values = []
                for i, bundle in enumerate(args):
                    _check_overrides(r, f"{key}.{kind}[{i}]", base, {str(k): v for k, v in bundle.items()})
                    values.append(tuple((str(k), _tuplify(v)) for k, v in bundle.items()))
                axes.append(Axis(str(name), kind, values=tuple(values)))
                continue
            if not is_config_key:
                r.fail(
                    key, "is not a config key (section.key, e.g. train.lr); a named axis needs mapping values"
                )
            for i, value in enumerate(args):
                _check_overrides(r, f"{key}.{kind}[{i}]", base, {str(name): value})
            axes.append(Axis(str(name), kind, values=tuple(_tuplify(v) for v in args)))
            continue
        if not is_config_key:
            r.fail(key, "is not a config key (section.key, e.g. train.lr)")
        if not isinstance(args, list) or len(args) != 2 or not all(is_finite_number(v) for v in args):
            r.fail(f"{key}.{kind}", f"needs [low, high] finite numbers, got {args!r}")
        low, high = float(args[0]), float(args[1])
        if kind == "int":
            if not all(float(v).is_integer() for v in args) or low > high:
                r.fail(f"{key}.int", f"needs integers low <= high (both inclusive), got {args!r}")
            ends: list[Any] = [int(low), int(high)]
        else:
            if not low < high:
                r.fail(f"{key}.{kind}", f"needs low < high, got {args!r}")
            if kind == "loguniform" and low <= 0:
                r.fail(f"{key}.loguniform", f"needs 0 < low < high, got {args!r}")
            ends = [low, high]
        for value in ends:
            _check_overrides(r, f"{key}.{kind}", base, {str(name): value}, ranges=True)
        axes.append(Axis(str(name), kind, low=low, high=high))
    return tuple(axes)


def _check_overrides(
    r: _Reader, key: str, base: ExperimentConfig, overrides: Mapping[str, Any], ranges: bool = False
) -> None:
    """The keys exist and the values have the right types; with ``ranges``, they are in range too.

    Ranges are checked for the ends of continuous axes only: a choice that is invalid just with
    the base (roi_sizes for 3 layers on a 1-layer base) may be valid with another axis's value, so
    those are checked per grid cell (here) or per trial (Optuna, random).
    """
    try:
        config = apply_overrides(base, overrides, source=f"search spec {r.source}: {key}")
    except ConfigError as exc:
        if "search spec" in str(exc):
            raise SpecError(str(exc)) from exc
        raise SpecError(f"search spec {r.source}: {key}: {exc}") from exc
    if not ranges:
        return
    try:
        validate(config)
    except ConfigError as exc:
        if any(f"config key {k!r}" in str(exc) for k in overrides):
            raise SpecError(f"search spec {r.source}: {key}: {exc}") from exc


def _check_combinations(r: _Reader, spec: SearchSpec, base: ExperimentConfig) -> None:
    """Checks across keys: axes, metric and mode, searcher, scheduler, resources."""
    keys = _check_axis_keys(r, spec)
    expected_mode = metric_mode(spec.metric)
    if expected_mode is not None and spec.mode != expected_mode:
        better = "lower" if expected_mode == "min" else "higher"
        r.fail(
            "mode",
            f"{spec.mode!r} contradicts metric {spec.metric!r} ({better} is better; use mode: {expected_mode})",
        )
    _check_searcher(r, spec)
    if spec.repeats > 1 and "train.seed" in keys:
        r.fail("repeats", "repeats set train.seed; do not also search over train.seed")
    if "train.eval_every" in keys or base.train.eval_every != 1:
        r.fail("base.overrides.train.eval_every", "searches need validation metrics every epoch; keep it 1")
    _check_scheduler(r, spec, base, keys)
    _check_resources(r, spec)
    _check_design(r, spec)
    if spec.searcher.kind == "grid":
        try:
            grid_variants(spec, base)
        except ConfigError as exc:
            raise SpecError(f"search spec {r.source}: {exc}") from exc


def _check_design(r: _Reader, spec: SearchSpec) -> None:
    budget = spec.design.effects_budget
    if budget and budget > spec.max_epochs:
        r.fail("design.effects_budget", f"{budget} exceeds the trials' {spec.max_epochs} epochs")
    if budget and spec.scheduler.kind == "asha" and budget > spec.scheduler.grace_period:
        r.fail(
            "design.effects_budget",
            f"{budget} exceeds scheduler.grace_period={spec.scheduler.grace_period}: ASHA may stop trials "
            "before it, so the cells would not all be compared at the same budget",
        )
    if spec.design.max_repeats:
        if spec.searcher.kind != "grid":
            r.fail(
                "design.max_repeats",
                f"adaptive seeds repeat grid cells; they need searcher.kind grid, not {spec.searcher.kind!r}",
            )
        if spec.design.max_repeats < spec.repeats:
            r.fail(
                "design.max_repeats",
                f"{spec.design.max_repeats} is below repeats={spec.repeats} (the first round's seeds)",
            )
    if spec.design.kind == "full":
        if spec.design.reduction:
            r.fail("design.reduction", "only applies to design.kind fractional")
        return
    if spec.searcher.kind != "grid":
        r.fail(
            "design.kind",
            f"a fractional design picks grid cells; it needs searcher.kind grid, not {spec.searcher.kind!r}",
        )
    if sum(axis.kind == "grid" for axis in spec.space) < 2:
        r.fail("design.kind", "a fractional design needs at least two grid axes")


def _check_axis_keys(r: _Reader, spec: SearchSpec) -> set[str]:
    """The config keys the axes set; two axes setting one key are refused."""
    setters: dict[str, str] = {}
    for axis in spec.space:
        for config_key in axis_keys(axis):
            if config_key in setters:
                r.fail(
                    f"space.{axis.name}",
                    f"sets {config_key!r}, which axis {setters[config_key]!r} sets too; one would silently win",
                )
            setters[config_key] = axis.name
    return set(setters)


def _check_searcher(r: _Reader, spec: SearchSpec) -> None:
    if spec.searcher.kind == "optuna":
        for axis in spec.space:
            if axis.kind == "grid":
                r.fail(
                    f"space.{axis.name}",
                    "grid axes need searcher.kind grid or random; Optuna samples (use choice)",
                )
            if axis.is_bundle:
                r.fail(
                    f"space.{axis.name}",
                    "bundle axes need searcher.kind grid or random (Optuna takes scalars)",
                )
            if axis.kind == "choice" and not all(
                isinstance(v, str | int | float | bool) for v in axis.values
            ):
                r.fail(f"space.{axis.name}.choice", "Optuna choices must be scalars (write lists as 'a,b')")
        if spec.repeats > 1:
            r.fail(
                "repeats",
                "repeats need searcher.kind grid or random (Optuna would treat seeds as a parameter)",
            )
        if not spec.space:
            r.fail("space", "searcher optuna needs at least one axis")
    if spec.searcher.kind == "grid":
        for axis in spec.space:
            if axis.kind != "grid":
                r.fail(f"space.{axis.name}", f"searcher.kind grid takes only grid axes, not {axis.kind}")
        if spec.num_samples != 1:
            r.fail("num_samples", "must be 1 with searcher.kind grid (the grid defines the trials)")


def _check_scheduler(r: _Reader, spec: SearchSpec, base: ExperimentConfig, keys: set[str]) -> None:
    if spec.scheduler.kind == "asha":
        if "train.epochs" in keys and not spec.scheduler.max_t:
            r.fail("scheduler.max_t", "is required when train.epochs is searched")
        max_t = spec.scheduler.max_t or base.train.epochs
        if "train.epochs" not in keys and max_t > base.train.epochs:
            r.fail(
                "scheduler.max_t",
                f"{max_t} exceeds train.epochs={base.train.epochs}; trials would never reach it",
            )
        if spec.scheduler.grace_period > max_t:
            r.fail("scheduler.grace_period", f"{spec.scheduler.grace_period} exceeds max_t={max_t}")
        if spec.scheduler.reduction_factor <= 1:
            r.fail("scheduler.reduction_factor", "must be > 1")
    elif spec.scheduler.max_t:
        r.fail("scheduler.max_t", "only applies to scheduler.kind asha")


def _check_resources(r: _Reader, spec: SearchSpec) -> None:
    res = spec.resources
    if res.cpus_per_worker <= 0:
        r.fail("resources.cpus_per_worker", "must be > 0")
    if res.gpus_per_worker < 0 or (res.gpus_per_worker > 1 and not float(res.gpus_per_worker).is_integer()):
        r.fail("resources.gpus_per_worker", "must be a fraction in [0, 1] or a whole number of GPUs")
    if res.executor == "function" and res.workers != 1:
        r.fail(
            "resources.workers", "the function executor runs one process; use executor: train for workers > 1"
        )


def is_number(value: Any) -> TypeGuard[int | float]:
    """A real number (bool excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_number(value: Any) -> TypeGuard[int | float]:
    """A value that can rank trials and checkpoints: a real number, not NaN or infinite."""
    return is_number(value) and math.isfinite(value)


def improves(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing yet) in the direction of ``mode``."""
    return best is None or (value > best if mode == "max" else value < best)


class _Reader:
    """Typed access to spec values with errors that name the file and the dotted key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> Any:
        raise SpecError(f"search spec {self.source}: key {key!r}: {message}")

    def section(
        self, data: Mapping[str, Any], name: str, allowed: set[str] | None, *, key: str | None = None,
        required: bool = False,
    ) -> Mapping[str, Any]:  # fmt: skip
        key = key or name
        value = data.get(name)
        if value is None:
            if required:
                self.fail(key, "is required")
            return {}
        if not isinstance(value, Mapping):
            self.fail(key, f"must be a mapping, got {value!r}")
        if allowed is not None:
            unknown = set(value) - allowed
            if unknown:
                self.fail(
                    f"{key}.{sorted(unknown)[0]}", f"unknown key; allowed: {', '.join(sorted(allowed))}"
                )
        return value

    def string(
        self, data: Mapping[str, Any], name: str, *, key: str | None = None, default: Any = "",
        required: bool = False,
    ) -> Any:  # fmt: skip
        key = key or name
        if data.get(name) is None:
            if required:
                self.fail(key, "is required")
            return default
        value = data[name]
        if not isinstance(value, str):
            self.fail(key, f"must be a string, got {value!r}")
        return value

    def choice(
        self, data: Mapping[str, Any], name: str, allowed: tuple[str, ...], *, key: str | None = None,
        default: str,
    ) -> str:  # fmt: skip
        value = self.string(data, name, key=key, default=default)
        if value not in allowed:
            self.fail(key or name, f"{value!r} is not one of {', '.join(allowed)}")
        return value

    def integer(
        self,
        data: Mapping[str, Any],
        name: str,
        *,
        key: str | None = None,
        default: int,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        key = key or name
        value = data.get(name, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
            self.fail(key, f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            self.fail(key, f"must be >= {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            self.fail(key, f"must be <= {maximum}, got {value!r}")
        return int(value)

    def number(self, data: Mapping[str, Any], name: str, *, key: str | None = None, default: float) -> float:
        key = key or name
        value = data.get(name, default)
        if value is None:
            value = default
        if not is_finite_number(value):
            self.fail(key, f"must be a finite number, got {value!r}")
        return float(value)

    def location(
        self,
        data: Mapping[str, Any],
        name: str,
        problem: Callable[[str], str | None],
        *,
        key: str | None = None,
    ) -> str | None:
        """A storage folder or store URI (None when absent); the error shows it without its password."""
        value = self.string(data, name, key=key, default=None)
        if value is not None and (why := problem(value)) is not None:
            self.fail(key or name, f"{redact_uri(value)!r} {why}")
        return value

    def boolean(self, data: Mapping[str, Any], name: str, *, key: str | None = None, default: bool) -> bool:
        value = data.get(name, default)
        if not isinstance(value, bool):
            self.fail(key or name, f"must be true or false, got {value!r}")
        return value


def trial_config(spec: SearchSpec, overrides: Mapping[str, Any], repeat: int = 0) -> ExperimentConfig:
    """Base + a trial's sampled overrides (+ the repeat's seed), validated."""
    merged = spec.base_overrides()
    merged.update({k: _listify(v) for k, v in overrides.items()})
    base = spec.base_config()
    if repeat:
        merged["train.seed"] = base.train.seed + repeat
    config = apply_overrides(base, merged, source=f"trial of search {spec.name}")
    validate(config)
    return config


def axis_keys(axis: Axis) -> list[str]:
    """The dotted config keys an axis sets."""
    if axis.is_bundle:
        return sorted({k for bundle in axis.values for k, _ in bundle})
    return [axis.name]


def tune_value(axis: Axis, value: Any) -> Any:
    """A Tune-side value: bundles become plain dicts, tuples become lists (YAML/JSON-friendly)."""
    if axis.is_bundle:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in value}
    return list(value) if isinstance(value, tuple) else value


def trial_overrides(trial_config: Mapping[str, Any]) -> dict[str, Any]:
    """A Tune trial config -> flat dotted overrides (bundles merged in)."""
    out: dict[str, Any] = {}
    for name, value in (trial_config.get("overrides") or {}).items():
        if isinstance(value, Mapping):
            out.update(value)
        else:
            out[name] = value
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def grid_variants(
    spec: SearchSpec, base: ExperimentConfig | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The cells the spec's design trains, as Tune ``overrides`` dicts, and descriptions of the
    skipped (invalid) combinations of the full grid."""
    plan, variants, skipped = _design(spec, base)
    chosen = set(plan.cells)
    return [entry for cell, entry in variants if cell in chosen], skipped


def design_plan(spec: SearchSpec, base: ExperimentConfig | None = None) -> DesignPlan:
    """The spec's design over its valid grid cells (what ``grid_variants`` trains, and why)."""
    return _design(spec, base)[0]


def _design(
    spec: SearchSpec, base: ExperimentConfig | None
) -> tuple[DesignPlan, list[tuple[tuple[int, ...], dict[str, Any]]], list[str]]:
    base = base or spec.base_config()
    axes = [axis for axis in spec.space if axis.kind == "grid"]
    variants: list[tuple[tuple[int, ...], dict[str, Any]]] = []
    skipped: list[str] = []
    for cell in itertools.product(*(range(len(axis.values)) for axis in axes)):
        entry = {axis.name: tune_value(axis, axis.values[i]) for axis, i in zip(axes, cell, strict=True)}
        try:
            validate(apply_overrides(base, trial_overrides({"overrides": entry}), source="grid"))
        except ConfigError as exc:
            label = ", ".join(f"{k}={_fmt(v)}" for k, v in entry.items())
            if not spec.skip_invalid:
                raise ConfigError(
                    f"grid combination {{{label}}} is invalid: {exc} (set skip_invalid: true to drop such cells)"
                ) from exc
            skipped.append(f"{{{label}}}: {exc}")
            continue
        variants.append((cell, entry))
    if not variants:
        raise ConfigError(f"search {spec.name}: every grid combination is invalid: {skipped[:3]}")
    valid = [cell for cell, _ in variants]
    if spec.design.kind == "full":
        return full_plan(valid), variants, skipped
    try:
        plan = fractional_plan(valid, [axis.name for axis in axes], reduction=spec.design.reduction,
                               estimable=spec.design.estimable)  # fmt: skip
    except DesignError as exc:
        raise ConfigError(f"design: {exc}") from exc
    return plan, variants, skipped


def expected_trials(spec: SearchSpec) -> int:
    """How many trials the search runs in total (with adaptive seeds: its first round, the least)."""
    if spec.searcher.kind == "grid":
        return len(grid_variants(spec)[0]) * spec.repeats
    grid_cells = 1
    for axis in spec.space:
        if axis.kind == "grid":
            grid_cells *= len(axis.values)
    repeats = spec.repeats if spec.searcher.kind == "random" else 1
    return spec.num_samples * grid_cells * repeats
