"""`render_html` in a real browser: the ablation report is one self-contained page that draws every plot.

A small :class:`AblationAnalysis` is built by hand (two factors, four configurations, three seeds each,
learning curves, one pruned and one errored trial, an incomplete search) and rendered to a file. The
file must need no network; Debian's headless Chromium then opens it from ``file://`` and the tests
assert what was drawn: a plotly SVG in every plot div, the factor names in the SVG text, no console
error, and a non-blank screenshot (also copied to /tmp/report_screenshot.png for a human to look at).
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import CHROMIUM, CHROMIUM_FLAGS, needs_chromium
from PIL import Image

from edgeseg.report.analysis import (
    CONFIG_COLUMNS,
    CURVE_COLUMNS,
    EFFECT_COLUMNS,
    INTERACTION_COLUMNS,
    PARETO_COLUMNS,
    TRIAL_COLUMNS,
    VARIANCE_COLUMNS,
    AblationAnalysis,
    Completeness,
)
from edgeseg.report.html import PLOT_IDS, render_html

pytestmark = pytest.mark.integration

# software WebGL for the parallel-coordinates plot (a local, trusted page)
REPORT_FLAGS = [*CHROMIUM_FLAGS, "--enable-unsafe-swiftshader"]
WINDOW = (1400, 3000)
WEBGL_DIAGNOSTIC = re.compile(r'\] "\[\.WebGL-[0-9a-fx]+\]GL Driver Message')
SCREENSHOT_COPY = Path("/tmp/report_screenshot.png")
FACTORS = ("cascade", "decoder")
LEVELS = {"cascade": ("false", "true"), "decoder": ("plain", "fpn")}
# Mean metric per configuration: cascade helps, the decoder does not matter much.
MEANS = {("false", "plain"): 0.600, ("false", "fpn"): 0.605, ("true", "plain"): 0.640, ("true", "fpn"): 0.652}
GFLOPS = {("false", "plain"): 0.21, ("false", "fpn"): 0.29, ("true", "plain"): 0.34, ("true", "fpn"): 0.45}
LATENCY = {("false", "plain"): 1.9, ("false", "fpn"): 2.6, ("true", "plain"): 2.4, ("true", "fpn"): 3.5}
SEEDS = (0, 1, 2)
EPOCHS = 6


def _label(levels: tuple[str, str], suffix: str = "") -> str:
    return f"cascade={levels[0]},decoder={levels[1]}{suffix}"


def _trials(suffix: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, curves = [], []
    rng = np.random.default_rng(7)
    for k, (levels, mean) in enumerate(MEANS.items()):
        for seed in SEEDS:
            name = f"t{k}{seed}"
            score = mean + rng.normal(0, 0.004)
            rows.append(
                {
                    "trial": name,
                    "run_id": f"run{k}{seed:02d}abcdef",
                    "state": "finished",
                    "epochs": EPOCHS,
                    "seed": seed,
                    "config": _label(levels, suffix),
                    "score": score,
                    "params_count": 100_000 + 25_000 * k,
                    "gflops_per_roi": GFLOPS[levels],
                    "latency_ms": LATENCY[levels],
                    "onnx_uri": f"mlflow-artifacts:/1/run{k}{seed:02d}abcdef/artifacts/model.onnx",
                    "cascade": levels[0],
                    "decoder": levels[1],
                }
            )
            for epoch in range(1, EPOCHS + 1):
                value = score * (1 - 0.5 * np.exp(-epoch / 1.8)) + rng.normal(0, 0.003)
                curves.append(
                    {"config": _label(levels, suffix), "trial": name, "epoch": epoch, "value": value}
                )
    extra = {"epochs": 2, "seed": 3, "params_count": 100_000, "gflops_per_roi": 0.21, "latency_ms": 1.9}
    for name, state, score in (("tpruned", "pruned", 0.41), ("terrored", "errored", float("nan"))):
        rows.append(
            {
                **extra,
                "trial": name,
                "run_id": f"{name}-run",
                "state": state,
                "config": _label(("false", "plain"), suffix),
                "score": score,
                "onnx_uri": "",
                "cascade": "false",
                "decoder": "plain",
            }
        )
    for epoch in (1, 2):
        curves.append(
            {
                "config": _label(("false", "plain"), suffix),
                "trial": "tpruned",
                "epoch": epoch,
                "value": 0.3 + 0.1 * epoch,
            }
        )
    trials = pd.DataFrame(rows, columns=[*TRIAL_COLUMNS, *FACTORS])
    return trials, pd.DataFrame(curves, columns=list(CURVE_COLUMNS))


def _configs(trials: pd.DataFrame) -> pd.DataFrame:
    done = trials[trials["state"] == "finished"]
    rows = []
    for config, group in done.groupby("config"):
        best = group.loc[group["score"].idxmax()]
        mean, std = group["score"].mean(), group["score"].std()
        half = 4.303 * std / np.sqrt(len(group))
        rows.append(
            {
                "config": config,
                "cascade": best["cascade"],
                "decoder": best["decoder"],
                "n": len(group),
                "mean": mean,
                "std": std,
                "ci_low": mean - half,
                "ci_high": mean + half,
                "params_count": best["params_count"],
                "gflops_per_roi": best["gflops_per_roi"],
                "latency_ms": best["latency_ms"],
                "best_trial": best["trial"],
                "onnx_uri": best["onnx_uri"],
            }
        )
    return pd.DataFrame(rows, columns=["config", *FACTORS, *CONFIG_COLUMNS[1:]])


def _pareto(configs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for cost in ("gflops_per_roi", "latency_ms"):
        best_so_far = -np.inf
        for row in configs.sort_values(cost).to_dict("records"):
            on_front = row["mean"] > best_so_far
            best_so_far = max(best_so_far, row["mean"])
            rows.append(
                {
                    "cost": cost,
                    "config": row["config"],
                    "mean": row["mean"],
                    "cost_value": row[cost],
                    "best_trial": row["best_trial"],
                    "onnx_uri": row["onnx_uri"],
                    "on_front": on_front,
                }
            )
    return pd.DataFrame(rows, columns=list(PARETO_COLUMNS))


def make_analysis(*, complete: bool = False, suffix: str = "") -> AblationAnalysis:
    """A hand-made 2x2 ablation with 3 seeds; ``suffix`` is appended to every config label."""
    trials, curves = _trials(suffix)
    configs = _configs(trials)
    effects = pd.DataFrame(
        [
            ["cascade", "true", "false", 0.0435, 0.004, 0.0351, 0.0519, "better", False, 0.145, 0.70],
            ["decoder", "fpn", "plain", 0.0085, 0.004, -0.0001, 0.0171, "undecided", True, 0.095, 0.90],
        ],
        columns=list(EFFECT_COLUMNS),
    )
    interactions = pd.DataFrame(
        [["cascade", "true", "decoder", "fpn", 0.0035, 0.006, -0.0090, 0.0160]],
        columns=list(INTERACTION_COLUMNS),
    )
    variance = pd.DataFrame(
        [["cascade", 0.82], ["decoder", 0.09], ["cascade:decoder", 0.02], ["residual", 0.07]],
        columns=list(VARIANCE_COLUMNS),
    )
    state = "finished" if complete else "stopped"
    completeness = Completeness(
        expected=14 if complete else 16, finished=12, pruned=1, errored=1, running=0, state=state
    )
    return AblationAnalysis(
        search="ablation-2x2",
        metric="val/miou",
        mode="max",
        factors=FACTORS,
        trials=trials,
        configs=configs,
        effects=effects,
        interactions=interactions,
        variance=variance,
        pareto=_pareto(configs),
        curves=curves,
        completeness=completeness,
        rope=0.01,
        method="two-way ANOVA on finished trials; 95 % t intervals over seeds",
        notes=("pruned trials are left out of the effects", "one trial errored: see the trials table"),
    )


def outside_scripts(text: str) -> str:
    return re.sub(r"<script\b.*?</script>", " ", text, flags=re.S | re.I)


class SubtreeParser(HTMLParser):
    """Collects the classes and the text inside the element with id ``target`` (and its descendants)."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target, self.depth, self.found = target, 0, False
        self.classes: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if self.depth == 0 and values.get("id") == self.target:
            self.found, self.depth = True, 1
        elif self.depth > 0 and tag not in self.VOID:
            self.depth += 1
        if self.depth > 0:
            self.classes.extend((values.get("class") or "").split())

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.depth > 0:
            self.classes.extend((dict(attrs).get("class") or "").split())

    def handle_endtag(self, tag: str) -> None:
        if self.depth > 0 and tag not in self.VOID:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth > 0:
            self.text.append(data)


def subtree(dom: str, element_id: str) -> SubtreeParser:
    parser = SubtreeParser(element_id)
    parser.feed(outside_scripts(dom))  # plotly.js alone is megabytes of text
    parser.close()
    return parser


def run_chromium(
    url: str, workdir: Path, screenshot: Path | None = None, budget_ms: int = 10_000
) -> tuple[str, str]:
    """Load ``url`` in headless Chromium; return (rendered DOM, stderr with the console messages)."""
    user_data_dir = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
    command = [
        str(CHROMIUM),
        *REPORT_FLAGS,
        f"--user-data-dir={user_data_dir}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--virtual-time-budget={budget_ms}",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
    ]
    if screenshot is not None:
        command.append(f"--screenshot={screenshot}")
    try:
        result = subprocess.run(command + [url], capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(user_data_dir, ignore_errors=True)
    return result.stdout, result.stderr


def console_messages(stderr: str, page: str) -> list[str]:
    """Console lines chromium logged for ``page``: uncaught exceptions and every console.* call.

    Chromium's stderr log gives every console message the same INFO level, so console.error cannot be
    told from console.log there; the report must therefore be silent altogether. Chromium's own WebGL
    driver diagnostics ("GPU stall due to ReadPixels" of the software renderer) are not the page's.
    """
    lines = [line for line in stderr.splitlines() if ":CONSOLE" in line and page in line]
    return [line for line in lines if not WEBGL_DIAGNOSTIC.search(line)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_html(make_analysis(), tmp_path_factory.mktemp("report") / "ablation-2x2.html")


def test_report_is_self_contained_and_has_every_plot(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    markup = outside_scripts(text)  # the page without the inlined JavaScript
    assert not re.search(r"<script\b[^>]*\bsrc\s*=", text, re.I), "a script is loaded, not inlined"
    assert not re.search(r"<link\b", markup, re.I), "the page links an external file"
    assert not re.search(r"\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", markup, re.I), "a network URL"
    assert not re.search(r"@import|url\(", markup), "external CSS or font"
    for plot_id in PLOT_IDS:
        assert f'id="{plot_id}"' in text, f"no div {plot_id}"
    assert text.count("Plotly.newPlot") == len(PLOT_IDS)
    assert text.count("plotly.js v") == 1, "plotly.js must be inlined exactly once"  # the bundle's banner
    assert len(text) > 1_000_000, "plotly.js is not inlined"


def test_incomplete_warning_and_escaping(tmp_path: Path) -> None:
    incomplete = outside_scripts(
        render_html(make_analysis(), tmp_path / "a.html").read_text(encoding="utf-8")
    )
    assert "INCOMPLETE" in incomplete
    assert "14 of 16 trials done — stopped, INCOMPLETE" in incomplete
    assert 'class="box warning incomplete"' in incomplete
    assert "finished 12 · pruned 1 · errored 1" in incomplete
    assert "pruned trials are left out of the effects" in incomplete
    assert "two-way ANOVA" in incomplete

    evil = "<script>alert('x')</script>"
    complete = render_html(make_analysis(complete=True, suffix=evil), tmp_path / "b.html").read_text(
        encoding="utf-8"
    )
    assert "INCOMPLETE" not in outside_scripts(complete)
    assert "14 of 14 trials done — finished" in complete
    assert "<script>alert" not in complete, "a config label reached the page unescaped"
    assert "&lt;script&gt;alert(" in outside_scripts(complete)  # the tables
    assert "&lt;script&gt;alert(" in complete.split("Plotly.newPlot", 1)[1]  # the figures' labels


def test_empty_tables_render_a_sentence(tmp_path: Path) -> None:
    full = make_analysis()
    empty = AblationAnalysis(
        search=full.search,
        metric=full.metric,
        mode="min",
        factors=full.factors,
        trials=pd.DataFrame(columns=[*TRIAL_COLUMNS, *FACTORS]),
        configs=pd.DataFrame(columns=["config", *FACTORS, *CONFIG_COLUMNS[1:]]),
        effects=pd.DataFrame(columns=list(EFFECT_COLUMNS)),
        interactions=pd.DataFrame(columns=list(INTERACTION_COLUMNS)),
        variance=pd.DataFrame(columns=list(VARIANCE_COLUMNS)),
        pareto=pd.DataFrame(columns=list(PARETO_COLUMNS)),
        curves=pd.DataFrame(columns=list(CURVE_COLUMNS)),
        completeness=Completeness(expected=None, finished=0, pruned=0, errored=0, running=0, state="unknown"),
    )
    text = render_html(empty, tmp_path / "empty.html").read_text(encoding="utf-8")
    assert "Plotly.newPlot" not in text and "plotly.js" not in text
    assert "No interaction estimable." in text and "No effect estimable" in text
    assert "0 trials done — unknown, INCOMPLETE" in text
    for plot_id in PLOT_IDS:
        assert f'id="{plot_id}"' in text


@needs_chromium
@pytest.mark.slow
def test_chromium_draws_every_plot(report: Path, tmp_path: Path) -> None:
    screenshot = tmp_path / "report.png"
    dom, stderr = run_chromium(report.as_uri(), tmp_path, screenshot=screenshot)
    for budget_ms in (20_000, 40_000):  # a slow machine: more virtual time for the scripts
        if dom.count('class="main-svg"') >= len(PLOT_IDS):
            break
        dom, stderr = run_chromium(report.as_uri(), tmp_path, screenshot=screenshot, budget_ms=budget_ms)
    if screenshot.is_file():
        shutil.copyfile(screenshot, SCREENSHOT_COPY)  # for a human to look at, even when a check fails

    for plot_id in PLOT_IDS:
        drawn = subtree(dom, plot_id)
        assert drawn.found, f"div {plot_id} missing from the rendered DOM"
        assert "main-svg" in drawn.classes, f"{plot_id}: plotly drew no SVG; chromium said:\n{stderr[-3000:]}"
    effects_text = " ".join(subtree(dom, "plot-effects").text)
    parallel_text = " ".join(subtree(dom, "plot-parallel").text)
    for factor in FACTORS:
        assert factor in effects_text, f"{factor!r} not drawn in the effects plot: {effects_text[:300]}"
        assert factor in parallel_text, f"{factor!r} not an axis of the parallel plot: {parallel_text[:300]}"
    assert "fpn" in parallel_text and "plain" in parallel_text, "string levels not drawn as tick labels"
    assert "INCOMPLETE" in dom

    messages = console_messages(stderr, report.name)
    assert not messages, "the page logged to the console:\n" + "\n".join(messages)

    assert screenshot.is_file(), "chromium wrote no screenshot"
    with Image.open(io.BytesIO(screenshot.read_bytes())) as image:
        assert image.size == WINDOW
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(np.uint32)
    distinct = np.unique(pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2])  # packed: 1-D unique is fast
    assert len(distinct) > 50, f"screenshot has almost no detail ({len(distinct)} colours)"


@needs_chromium
@pytest.mark.slow
def test_console_errors_are_caught(tmp_path: Path) -> None:
    """The console check above is not vacuous: an error thrown by a page shows up in chromium's log."""
    probe = tmp_path / "probe.html"
    probe.write_text(
        '<!DOCTYPE html><html><body><p>probe</p><script>console.error("edgeseg-probe");'
        "throw new Error('edgeseg-uncaught')</script></body></html>",
        encoding="utf-8",
    )
    _, stderr = run_chromium(probe.as_uri(), tmp_path, budget_ms=2_000)
    messages = console_messages(stderr, probe.name)
    assert any('"edgeseg-probe"' in m for m in messages), f"console.error not logged:\n{stderr[-2000:]}"
    assert any("Uncaught Error: edgeseg-uncaught" in m for m in messages), (
        f"uncaught error not logged:\n{stderr[-2000:]}"
    )
