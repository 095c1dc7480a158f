"""``make demo``: the smoke search end to end on this machine, then what a user looks at next.

Local Ray, SQLite MLflow under ``$EDGESEG_HOME/mlflow``, the synthetic people, the default
EfficientNet-Lite0 backbone. It prints the trial table, a short ablation summary, the path of the
fetched best ONNX and how to open the MLflow UI.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

SMOKE = Path(str(files("edgeseg") / "searches" / "smoke.yaml"))  # package data: works from a wheel


def run_demo(spec_path: str | Path = SMOKE) -> int:
    from edgeseg import paths
    from edgeseg.report.ablation import build_report, completeness_line, effects_markdown, publish
    from edgeseg.report.adaptive import plan_next_round
    from edgeseg.report.html import render_html
    from edgeseg.search.artifacts import fetch_best
    from edgeseg.search.control import format_status, search_status
    from edgeseg.search.spec import expected_trials, load_spec
    from edgeseg.search.tuner import run_search

    spec = load_spec(spec_path).resolved()
    print(f"edgeseg demo: search {spec.name!r} from {spec_path}\n  {spec.description}")
    print(f"  home: {paths.home()}   MLflow: {spec.mlflow.tracking_uri}   storage: {spec.storage}\n")
    outcome = run_search(spec, fresh=True, planner=plan_next_round)
    print(
        f"\nsearch {outcome.name} {outcome.state} in {outcome.wall_s:.0f} s: {outcome.trials} trials, "
        f"{outcome.pruned} pruned by ASHA, {outcome.errored} errored, {outcome.epochs_trained} epochs trained"
    )
    print("\n" + format_status(search_status(spec.name, storage=str(spec.storage))))
    analysis = build_report(spec.experiment_name, str(spec.mlflow.tracking_uri), outcome.search_id,
                            expected=expected_trials(spec))  # fmt: skip
    html = render_html(analysis, paths.subdir("demo") / "report.html")
    publish(analysis, str(spec.mlflow.tracking_uri))
    print(f"\nAblation report: {completeness_line(analysis)}\n{analysis.method}")
    print("\n".join(["", *effects_markdown(analysis), "", f"HTML report: {html}"]))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bar mid-summary
    out = paths.subdir("demo") / "best.onnx"
    best = fetch_best(spec.name, out=out, storage=str(spec.storage))
    print(
        f"\nbest trial {best.trial_id}: {best.metric}={best.value:.4f}, {_fmt(best.gflops, '.4g')} GFLOPs/ROI, "
        f"ONNX Runtime latency {_fmt(best.latency_ms, '.1f')} ms\n  ONNX: {best.onnx_path}\n  sidecar: {best.sidecar_path}"
    )
    print(
        "\nNext:\n"
        "  .venv/bin/edgeseg ui                 # MLflow UI on http://127.0.0.1:5000 (Ctrl-C to stop)\n"
        f"  .venv/bin/edgeseg search status {spec.name}\n"
        f"  .venv/bin/edgeseg report {spec.name}\n"
        "  .venv/bin/edgeseg search run searches/ablation.yaml   # the seed's feature grid (longer)"
    )
    return {"finished": 0, "incomplete": 4}.get(outcome.state, 3)  # the exit codes of `edgeseg search run`


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
