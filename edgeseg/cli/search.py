"""``edgeseg search run|submit|status|resume|stop`` and ``edgeseg fetch-best``: thin CLI handlers.

Each handler is one call into a public function of ``edgeseg.search`` and returns an exit code.
``run`` and ``resume``: 0 finished; 3 stopped before its end (``search stop``, Ctrl+C or SIGTERM;
resumable); 4 incomplete (every trial ended but some errored; ``resume`` retries them); 2 an invalid
spec, or another driver of the search is alive (the message names its pid, host and start time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

STOPPED_EXIT = 3
INCOMPLETE_EXIT = 4
EXIT_CODES = (
    "exit codes: 0 finished; 3 stopped (search stop, Ctrl+C or SIGTERM), resumable; 4 incomplete: every "
    "trial ended but some errored, `search resume` retries them; 2 invalid spec, or the search already "
    "has a live driver"
)


def _outcome_code(outcome: Any) -> int:
    return {"finished": 0, "incomplete": INCOMPLETE_EXIT}.get(outcome.state, STOPPED_EXIT)


def cmd_run(args: argparse.Namespace) -> int:
    from edgeseg.report.adaptive import plan_next_round
    from edgeseg.search.tuner import run_search

    return _outcome_code(
        run_search(
            args.spec,
            fresh=args.fresh,
            address=args.address,
            num_cpus=args.num_cpus,
            progress=not args.quiet,
            planner=plan_next_round,
        )  # fmt: skip
    )


def cmd_resume(args: argparse.Namespace) -> int:
    from edgeseg.search.tuner import resume_search

    return _outcome_code(
        resume_search(
            args.name,
            storage=args.storage,
            address=args.address,
            num_cpus=args.num_cpus,
            retry_failed=args.retry_failed,
        )  # fmt: skip
    )


def cmd_submit(args: argparse.Namespace) -> int:
    from edgeseg.search.submit import submit_search

    dependencies = None if args.no_deps else (args.requirements or "pyproject")
    submission = submit_search(
        args.spec, args.address, follow=args.follow, working_dir=args.working_dir, dependencies=dependencies,
        python=args.python,
    )  # fmt: skip
    print(f"job: {submission.job_id}  status: {submission.status}")
    return 0 if submission.status in ("SUCCEEDED", "PENDING", "RUNNING") else 1


def cmd_status(args: argparse.Namespace) -> int:
    from edgeseg.search.control import format_status, search_status

    status = search_status(args.name, storage=args.storage, tracking_uri=args.tracking_uri)
    print(json.dumps(dataclasses.asdict(status), indent=2) if args.json else format_status(status))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from edgeseg.search.control import request_stop

    print(request_stop(args.name, trial_id=args.trial, storage=args.storage))
    return 0


def cmd_fetch_best(args: argparse.Namespace) -> int:
    from edgeseg.search.artifacts import fetch_best

    fetched = fetch_best(
        args.name, metric=args.metric, max_gflops=args.max_gflops, max_latency_ms=args.max_latency_ms, out=args.out,
        alias=args.alias, storage=args.storage, tracking_uri=args.tracking_uri,
    )  # fmt: skip
    print(
        f"trial {fetched.trial_id} (MLflow run {fetched.run_id}): {fetched.metric}={fetched.value:.4f} "
        f"gflops={fetched.gflops} latency_ms={fetched.latency_ms}\nonnx: {fetched.onnx_path}\nsidecar: {fetched.sidecar_path}"
    )
    if fetched.registered_model:
        print(f"registered: models:/{fetched.registered_model}@{args.alias} (version {fetched.version})")
    return 0


def register(subparsers: Any) -> None:
    """Add ``search`` (run, submit, status, resume, stop) and ``fetch-best`` to the ``edgeseg`` CLI."""
    search = subparsers.add_parser(
        "search", help="hyperparameter searches and ablations on Ray Tune + MLflow"
    )
    sub = search.add_subparsers(dest="search_command", required=True)

    p = sub.add_parser("run", help="run a search spec on local Ray (or --address)", description=EXIT_CODES)
    p.add_argument("spec", help="a search spec YAML, e.g. searches/smoke.yaml")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="discard an earlier search of the same name and start over (refused while its driver lives)",
    )
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--quiet", action="store_true", help="no live progress table")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="submit a search to a Ray cluster through the Jobs API")
    p.add_argument("spec")
    p.add_argument("--address", required=True, help="dashboard URL, e.g. http://127.0.0.1:8265")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p.add_argument(
        "--working-dir", default=None, help="folder shipped to the cluster (default: the project root)"
    )
    p.add_argument(
        "--requirements", default=None, help="pip requirements file (default: pyproject dependencies)"
    )
    p.add_argument("--no-deps", action="store_true", help="ship no dependencies (the cluster image has them)")
    p.add_argument("--python", default="python", help="python executable on the cluster")
    p.set_defaults(func=cmd_submit)

    for name, helptext, func, description in (
        ("status", "trials, states, epochs, best metric, pruned or not", cmd_status, None),
        ("resume", "continue a stopped or crashed search", cmd_resume, EXIT_CODES),
        (
            "stop",
            "stop one trial (--trial) or the whole search (resumable); needs only --storage",
            cmd_stop,
            None,
        ),
    ):
        p = sub.add_parser(name, help=helptext, description=description)
        p.add_argument("name", help="the search name (the spec's name)")
        p.add_argument(
            "--storage", default=None, help="storage path the search used (default: $EDGESEG_HOME/searches)"
        )
        if name == "status":
            p.add_argument("--json", action="store_true")
            p.add_argument(
                "--tracking-uri",
                default=None,
                help="MLflow tracking URI as seen from here (default: the one the driver recorded)",
            )
        if name == "resume":
            p.add_argument("--address", default=None)
            p.add_argument("--num-cpus", type=int, default=None)
            p.add_argument(
                "--retry-failed",
                action="store_true",
                help="train the trials that failed deterministically (non-finite loss, invalid config) "
                "again, e.g. after a fix; by default resume ends them at once",
            )
        if name == "stop":
            p.add_argument("--trial", default=None, help="a trial id from `edgeseg search status`")
        p.set_defaults(func=func)

    p = subparsers.add_parser("fetch-best", help="download the best trial's ONNX + sidecar from MLflow")
    p.add_argument("name", help="the search name")
    p.add_argument("--metric", default="val/miou")
    p.add_argument("--max-gflops", type=float, default=None)
    p.add_argument("--max-latency-ms", type=float, default=None)
    p.add_argument("-o", "--out", default="best.onnx")
    p.add_argument("--alias", default=None, help="register the model and point this alias at it")
    p.add_argument("--storage", default=None)
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=cmd_fetch_best)
