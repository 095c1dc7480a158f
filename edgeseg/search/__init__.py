"""The search service: specs, Ray Tune/Train trials, MLflow tracking, control and artifacts.

Public entry points (each behind one CLI command)::

    load_spec(path) -> SearchSpec                          # searches/*.yaml, validated
    run_search(spec_or_path, fresh=False) -> SearchOutcome  # edgeseg search run
    resume_search(name) -> SearchOutcome                   # edgeseg search resume
    submit_search(spec_path, address, follow=False)        # edgeseg search submit
    search_status(name) -> SearchStatus                    # edgeseg search status
    request_stop(name, trial_id=None)                      # edgeseg search stop
    fetch_best(name, metric, max_gflops, max_latency_ms, out, alias)  # edgeseg fetch-best

Imports are lazy so ``import edgeseg.search`` stays cheap (no Ray, no MLflow).
"""

from __future__ import annotations

from typing import Any

from edgeseg.search.spec import SearchSpec, SpecError, load_spec, spec_from_mapping

__all__ = [
    "SearchSpec",
    "SpecError",
    "fetch_best",
    "load_spec",
    "request_stop",
    "resume_search",
    "run_search",
    "search_status",
    "spec_from_mapping",
    "submit_search",
]

_LAZY = {
    "run_search": "edgeseg.search.tuner",
    "resume_search": "edgeseg.search.tuner",
    "submit_search": "edgeseg.search.submit",
    "search_status": "edgeseg.search.control",
    "request_stop": "edgeseg.search.control",
    "fetch_best": "edgeseg.search.artifacts",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgeseg.search' has no attribute {name!r}")
