"""Fetch the best trial of a search from MLflow: its ONNX model and sidecar, optionally registered.

Trials are ranked by ``best/<metric>``: the metric of the checkpoint that was actually exported
(for a pruned trial that is its best epoch, not its last), so the downloaded file is the one the
number describes. Constraints filter on the run's counted ``gflops`` and measured ``latency_ms``.
With ``alias``, the chosen ONNX folder becomes a version of the registered model
``edgeseg-<search>`` and the alias points to it, so ``models:/edgeseg-<search>@<alias>`` resolves.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.search import control
from edgeseg.search.mlflow_runs import best_run, client_for, search_runs
from edgeseg.search.names import ROLE_TRIAL
from edgeseg.search.spec import SpecError, expected_trials, metric_mode
from edgeseg.secrets import redact_uri


class NoQualifyingTrialError(SpecError):
    """No trial of the search satisfies the constraints (the message lists the nearest misses)."""


@dataclass(frozen=True)
class FetchedModel:
    run_id: str
    trial_id: str
    metric: str
    value: float
    gflops: float | None
    latency_ms: float | None
    onnx_path: Path
    sidecar_path: Path
    registered_model: str = ""
    version: str = ""


def search_expected_trials(name: str, storage: str | None) -> int | None:
    """How many trials the search's spec asks for, from its storage record (None when not reachable)."""
    try:
        return expected_trials(control.read_record(name, storage).spec)
    except (control.SearchNotFoundError, OSError):
        return None


def fetch_best(
    name: str,
    metric: str = "val/miou",
    max_gflops: float | None = None,
    max_latency_ms: float | None = None,
    out: str | Path = "best.onnx",
    alias: str | None = None,
    *,
    mode: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    model_name: str | None = None,
) -> FetchedModel:
    """Download ``onnx/model.onnx`` (to ``out``) and its sidecar (``out`` with ``.json``) of the best qualifying trial."""
    from mlflow.artifacts import download_artifacts

    mode = mode or metric_mode(metric) or "max"
    if mode not in ("max", "min"):
        raise SpecError(f"mode {mode!r} is not max or min")
    location = control.locate_tracking(name, storage, tracking_uri)
    search_id = location.search_id
    if not location.experiment_id:
        raise SpecError(
            f"search {name!r}: MLflow experiment {location.experiment_name!r} does not exist at "
            f"{redact_uri(location.tracking_uri)}"
        )
    client = client_for(location.tracking_uri)
    runs = search_runs(client, location.experiment_id, {"search_id": search_id, "role": ROLE_TRIAL})
    key = f"best/{metric}"
    exported = [r for r in runs if r.data.tags.get("onnx") == "exported"]
    if not exported:
        raise NoQualifyingTrialError(
            f"search {name!r} ({search_id}) has no trial with an exported ONNX model yet"
        )
    scored = [r for r in exported if key in r.data.metrics]
    if not scored:
        known = sorted(k[5:] for k in exported[0].data.metrics if k.startswith("best/"))
        raise SpecError(f"metric {metric!r} was not logged for search {name!r}; known: {', '.join(known)}")

    def misses(run: Any) -> list[str]:
        m = run.data.metrics
        out_of_bounds = []
        if max_gflops is not None and not m.get("gflops", float("inf")) <= max_gflops:
            out_of_bounds.append(f"gflops {m.get('gflops')} > {max_gflops}")
        if max_latency_ms is not None and not m.get("latency_ms", float("inf")) <= max_latency_ms:
            out_of_bounds.append(f"latency_ms {m.get('latency_ms')} > {max_latency_ms}")
        return out_of_bounds

    qualifying = [r for r in scored if not misses(r)]
    if not qualifying:
        examples = "; ".join(f"{r.data.tags.get('ray_trial_id')}: {', '.join(misses(r))}" for r in scored[:5])
        raise NoQualifyingTrialError(
            f"no trial of search {name!r} satisfies max_gflops={max_gflops}, max_latency_ms={max_latency_ms} "
            f"({len(scored)} exported trials; e.g. {examples})"
        )
    best = best_run(qualifying, key, mode)  # NaN and inf never win
    if best is None:
        raise NoQualifyingTrialError(f"no trial of search {name!r} has a finite {key}")
    run_id = best.info.run_id

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(
            download_artifacts(
                run_id=run_id, artifact_path="onnx", dst_path=tmp, tracking_uri=location.tracking_uri
            )
        )
        shutil.copy(folder / "model.onnx", out)
        shutil.copy(folder / "model.json", out.with_suffix(".json"))

    registered, version = "", ""
    if alias:
        registered = model_name or f"edgeseg-{name}"
        version = _register(client, registered, best, alias, search_id)
    m = best.data.metrics
    return FetchedModel(
        run_id, best.data.tags.get("ray_trial_id", ""), metric, float(m[key]), m.get("gflops"), m.get("latency_ms"),
        out, out.with_suffix(".json"), registered, version,
    )  # fmt: skip


def _register(client: Any, name: str, run: Any, alias: str, search_id: str) -> str:
    """A model version whose source is the run's ``onnx`` folder, and ``alias`` pointing to it."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="edgeseg ROI segmentation heads (ONNX + sidecar)")
    for existing in client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'"):
        version = str(existing.version)
        break
    else:
        created = client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/onnx",
            run_id=run.info.run_id,
            tags={"search_id": search_id, "ray_trial_id": run.data.tags.get("ray_trial_id", "")},
        )
        version = str(created.version)
    client.set_registered_model_alias(name, alias, version)
    return version
