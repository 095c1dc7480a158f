"""One self-contained HTML page for an ablation search, drawn from an :class:`AblationAnalysis`.

The page opens with no network: plotly's JavaScript is inlined once (with the first figure drawn) and
every other figure reuses it; the styles are inline and use the system fonts. Top to bottom it shows
the search, its completeness (an INCOMPLETE warning when it stopped early), the estimation method and
notes, the verdict table of the effects, the plots (``plot-effects``, ``plot-interactions``,
``plot-pareto``, ``plot-curves``, ``plot-parallel``, ``plot-variance``), the configuration table and
the trials grouped by state. Every piece of text is HTML-escaped, including what goes into the
figures (plotly draws its labels from pseudo-HTML). A table or a plot with nothing to show becomes a
short sentence, never an empty or broken figure.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from edgeseg.report.analysis import AblationAnalysis, Completeness

PLOT_IDS = (
    "plot-effects",
    "plot-interactions",
    "plot-pareto",
    "plot-curves",
    "plot-parallel",
    "plot-variance",
)
VERDICT_COLOURS = {
    "better": "#1a9641",
    "worse": "#d7191c",
    "equivalent": "#2b83ba",
    "undecided": "#f0a30a",
}
COST_LABELS = {"gflops_per_roi": "GFLOPs per ROI", "latency_ms": "latency per ROI (ms)"}
TRIAL_STATES = ("finished", "pruned", "errored", "running")
PALETTE = qualitative.Plotly + qualitative.Dark24
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
DASH = "—"

Row = Mapping[str, Any]


# --------------------------------------------------------------------------- text and numbers


def _esc(value: Any) -> str:
    """HTML-escaped text of ``value`` (for the page itself)."""
    return html.escape(str(value))


def _lbl(value: Any) -> str:
    """Escaped text for a plotly label (plotly decodes ``&lt;`` ``&gt;`` ``&amp;`` and draws them as text)."""
    return html.escape(str(value), quote=False)


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _num(value: Any, fmt: str) -> str:
    if _missing(value):
        return DASH
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return str(value)


def _int(value: Any) -> str:
    return DASH if _missing(value) else f"{int(float(value)):,}"


def _text(value: Any) -> str:
    return DASH if _missing(value) or value == "" else str(value)


def _ci(row: Row, fmt: str = ".4f") -> str:
    low, high = row.get("ci_low"), row.get("ci_high")
    if _missing(low) and _missing(high):
        return DASH
    return f"[{_num(low, fmt)}, {_num(high, fmt)}]"


def _flag(value: Any) -> str:
    if _missing(value):
        return DASH
    if isinstance(value, bool) or str(value).lower() in ("true", "false"):
        return "yes" if str(value).lower() == "true" else "no"
    return str(value)


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class _Col:
    header: str
    cell: Callable[[Row], str]  # plain text; escaped when written
    numeric: bool = False
    css: Callable[[Row], str] | None = None  # extra class of the cell


def _field(key: str, fmt: Callable[[Any], str] = _text) -> Callable[[Row], str]:
    return lambda row: fmt(row.get(key))


def _table(frame: pd.DataFrame, columns: Sequence[_Col], empty: str) -> str:
    """An HTML table of ``frame`` (one row per record) or the sentence ``empty`` when it has no row."""
    if frame is None or frame.empty:
        return f'<p class="empty">{_esc(empty)}</p>'
    head = "".join(f'<th class="{"num" if c.numeric else ""}">{_esc(c.header)}</th>' for c in columns)
    body = []
    for row in frame.to_dict("records"):
        cells = []
        for col in columns:
            classes = ["num"] if col.numeric else []
            if col.css is not None:
                classes.append(col.css(row))
            cells.append(f'<td class="{_esc(" ".join(classes))}">{_esc(col.cell(row))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _effects_table(analysis: AblationAnalysis) -> str:
    columns = [
        _Col("factor", _field("factor")),
        _Col("level vs reference", lambda r: f"{_text(r.get('level'))} vs {_text(r.get('reference'))}"),
        _Col("estimate", _field("estimate", lambda v: _num(v, "+.4f")), numeric=True),
        _Col("95 % CI", lambda r: _ci(r, "+.4f"), numeric=True),
        _Col("verdict", _field("verdict"), css=lambda r: f"verdict v-{r.get('verdict')}"),
        _Col("more seeds needed", _field("more_seeds", _flag)),
        _Col("Δ GFLOPs/ROI", _field("delta_gflops_per_roi", lambda v: _num(v, "+.4f")), numeric=True),
        _Col("Δ latency (ms)", _field("delta_latency_ms", lambda v: _num(v, "+.3f")), numeric=True),
    ]
    return _table(analysis.effects, columns, "No effect estimable (too few finished configurations).")


def _sorted_configs(analysis: AblationAnalysis) -> pd.DataFrame:
    configs = analysis.configs
    if configs is None or configs.empty or "mean" not in configs:
        return configs
    return configs.sort_values("mean", ascending=analysis.mode == "min", na_position="last")


def _configs_table(analysis: AblationAnalysis) -> str:
    columns = [_Col("configuration", _field("config"))]
    columns += [_Col(f, _field(f)) for f in analysis.factors]
    columns += [
        _Col("n", _field("n", _int), numeric=True),
        _Col(f"mean {analysis.metric}", _field("mean", lambda v: _num(v, ".4f")), numeric=True),
        _Col("std", _field("std", lambda v: _num(v, ".4f")), numeric=True),
        _Col("95 % CI", _ci, numeric=True),
        _Col("params", _field("params_count", _int), numeric=True),
        _Col("GFLOPs/ROI", _field("gflops_per_roi", lambda v: _num(v, ".4f")), numeric=True),
        _Col("latency (ms)", _field("latency_ms", lambda v: _num(v, ".3f")), numeric=True),
        _Col("best trial", _field("best_trial")),
        _Col("ONNX URI", _field("onnx_uri"), css=lambda r: "uri"),
    ]
    return _table(_sorted_configs(analysis), columns, "No configuration has a finished trial.")


def _trials_tables(analysis: AblationAnalysis) -> str:
    columns = [
        _Col("trial", _field("trial")),
        _Col("configuration", _field("config")),
        _Col("seed", _field("seed", _int), numeric=True),
        _Col("epochs", _field("epochs", _int), numeric=True),
        _Col(f"best {analysis.metric}", _field("score", lambda v: _num(v, ".4f")), numeric=True),
        _Col("GFLOPs/ROI", _field("gflops_per_roi", lambda v: _num(v, ".4f")), numeric=True),
        _Col("latency (ms)", _field("latency_ms", lambda v: _num(v, ".3f")), numeric=True),
        _Col("MLflow run", _field("run_id")),
        _Col("ONNX URI", _field("onnx_uri"), css=lambda r: "uri"),
    ]
    trials = analysis.trials
    parts = []
    for state in TRIAL_STATES:
        subset = trials[trials["state"] == state] if trials is not None and "state" in trials else None
        if state == "running" and (subset is None or subset.empty):
            continue
        count = 0 if subset is None else len(subset)
        table = _table(subset if subset is not None else pd.DataFrame(), columns, f"No {state} trial.")
        parts.append(f'<h3 id="trials-{state}">{_esc(state.capitalize())} ({count})</h3>{table}')
    return "".join(parts)


# --------------------------------------------------------------------------- header


def _completeness_line(c: Completeness) -> str:
    done = f"{c.done} of {c.expected} trials done" if c.expected is not None else f"{c.done} trials done"
    return f"{done} — {c.state}" + ("" if c.complete else ", INCOMPLETE")


def _header(analysis: AblationAnalysis) -> str:
    c = analysis.completeness
    box = "complete" if c.complete else "warning incomplete"
    counts = f"finished {c.finished} · pruned {c.pruned} · errored {c.errored}"
    if c.running:
        counts += f" · running {c.running}"
    incomplete_hint = (
        ""
        if c.complete
        else "<br>The effects below use only the trials that finished; they may change when the "
        "search is resumed."
    )
    notes = "".join(f"<li>{_esc(note)}</li>" for note in analysis.notes)
    notes_html = f'<div class="notes"><strong>Notes</strong><ul>{notes}</ul></div>' if notes else ""
    method = _esc(analysis.method) if analysis.method else "not stated"
    return (
        f"<header><h1>Ablation report: {_esc(analysis.search)}</h1>"
        f'<p class="meta">metric <code>{_esc(analysis.metric)}</code> '
        f"({_esc('higher' if analysis.mode == 'max' else 'lower')} is better, mode "
        f"<code>{_esc(analysis.mode)}</code>) · factors: {_esc(', '.join(analysis.factors) or DASH)} · "
        f"ROPE ±{_esc(_num(analysis.rope, 'g'))}</p>"
        f'<div id="completeness" class="box {box}"><strong>{_esc(_completeness_line(c))}</strong>'
        f"<br>{_esc(counts)}{incomplete_hint}</div>"
        f'<p class="method"><strong>Method:</strong> {method}</p>{notes_html}</header>'
    )


# --------------------------------------------------------------------------- figures


def _labels(frame: pd.DataFrame, columns: Sequence[str]) -> list[list[str]]:
    """Escaped text of ``columns``, one list per row (plotly ``customdata``); a missing value is a dash."""
    return [[_lbl(_text(row[c])) for c in columns] for row in frame.to_dict("records")]


def _layout(fig: go.Figure, height: int, **kwargs: Any) -> go.Figure:
    kwargs.setdefault("margin", {"l": 10, "r": 10, "t": 40, "b": 10})
    fig.update_layout(
        template="plotly_white",
        height=height,
        font={"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", "size": 13},
        hoverlabel={"align": "left"},
        **kwargs,
    )
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def _effects_figure(analysis: AblationAnalysis) -> go.Figure | None:
    effects = analysis.effects
    if effects is None or effects.empty:
        return None
    effects = effects.assign(
        label=[_lbl(f"{r['factor']}: {r['level']} vs {r['reference']}") for r in effects.to_dict("records")],
        ci_text=[_ci(r, "+.4f") for r in effects.to_dict("records")],
    )
    fig = go.Figure()
    rope = float(analysis.rope or 0.0)
    if rope > 0:
        fig.add_vrect(x0=-rope, x1=rope, fillcolor="#9ecae1", opacity=0.35, line_width=0, layer="below")
        fig.add_annotation(x=0, y=1, yref="paper", yanchor="bottom", text=f"ROPE ±{rope:g}", showarrow=False)
    fig.add_vline(x=0, line={"color": "#555", "width": 1, "dash": "dot"})
    for verdict, group in effects.groupby("verdict", sort=False):
        fig.add_trace(
            go.Scatter(
                x=group["estimate"],
                y=group["label"],
                mode="markers",
                name=_lbl(verdict),
                marker={"size": 12, "color": VERDICT_COLOURS.get(str(verdict), "#7f7f7f")},
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": group["ci_high"] - group["estimate"],
                    "arrayminus": group["estimate"] - group["ci_low"],
                    "thickness": 2,
                    "width": 6,
                },
                customdata=_labels(group, ("ci_text", "verdict")),
                hovertemplate="<b>%{y}</b><br>estimate %{x:+.4f}<br>95 % CI %{customdata[0]}"
                "<br>verdict %{customdata[1]}<extra></extra>",
            )
        )
    fig.update_yaxes(categoryorder="array", categoryarray=list(effects["label"]), autorange="reversed")
    fig.update_xaxes(title_text=_lbl(f"effect on {analysis.metric} (95 % CI)"), zeroline=False)
    return _layout(fig, 140 + 44 * len(effects), legend_title_text="verdict")


def _interactions_figure(analysis: AblationAnalysis) -> go.Figure | None:
    inter = analysis.interactions
    if inter is None or inter.empty:
        return None
    records = inter.to_dict("records")
    rows = list(dict.fromkeys(_lbl(f"{r['factor_a']}={r['level_a']}") for r in records))
    cols = list(dict.fromkeys(_lbl(f"{r['factor_b']}={r['level_b']}") for r in records))
    z: list[list[float | None]] = [[None] * len(cols) for _ in rows]
    hover: list[list[str]] = [[""] * len(cols) for _ in rows]
    for r in records:
        i = rows.index(_lbl(f"{r['factor_a']}={r['level_a']}"))
        j = cols.index(_lbl(f"{r['factor_b']}={r['level_b']}"))
        z[i][j] = None if _missing(r["estimate"]) else float(r["estimate"])
        hover[i][j] = (
            f"<b>{rows[i]} × {cols[j]}</b><br>interaction {_num(r['estimate'], '+.4f')}"
            f"<br>95 % CI {_ci(r, '+.4f')}<br>std error {_num(r.get('std_error'), '.4f')}"
        )
    # The colour scale spans at least the ROPE, so an interaction inside it looks pale.
    largest = max((abs(v) for row in z for v in row if v is not None), default=0.0)
    bound = max(largest, float(analysis.rope or 0.0)) or 1.0
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=cols,
            y=rows,
            text=hover,
            texttemplate="%{z:+.4f}",
            hovertemplate="%{text}<extra></extra>",
            colorscale="RdBu",
            zmid=0,
            zmin=-bound,
            zmax=bound,
            colorbar={"title": {"text": "estimate"}},
        )
    )
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, 140 + 56 * len(rows))


def _pareto_figure(analysis: AblationAnalysis) -> go.Figure | None:
    pareto = analysis.pareto
    if pareto is None or pareto.empty:
        return None
    pareto = pareto.dropna(subset=["cost_value", "mean"])
    costs = [c for c in dict.fromkeys(pareto["cost"]) if not pareto[pareto["cost"] == c].empty]
    if not costs:
        return None
    titles = [_lbl(f"{analysis.metric} vs {COST_LABELS.get(c, c)}") for c in costs]
    fig = make_subplots(rows=1, cols=len(costs), subplot_titles=titles, horizontal_spacing=0.08)
    in_legend: set[bool] = set()
    for k, cost in enumerate(costs, start=1):
        sub = pareto[pareto["cost"] == cost].sort_values("cost_value")
        front = sub["on_front"].fillna(False).astype(bool)
        for part, on in ((sub[~front], False), (sub[front], True)):
            if part.empty:
                continue
            fig.add_trace(_pareto_trace(part, on, first=on not in in_legend), row=1, col=k)
            in_legend.add(on)
        fig.update_xaxes(title_text=_lbl(COST_LABELS.get(cost, cost)), row=1, col=k)
    fig.update_yaxes(title_text=_lbl(f"mean {analysis.metric}"), row=1, col=1)
    margin = {"l": 10, "r": 10, "t": 60, "b": 10}
    return _layout(fig, 480, margin=margin, legend={"orientation": "h", "y": -0.22})


def _pareto_trace(part: pd.DataFrame, on_front: bool, first: bool) -> go.Scatter:
    custom = _labels(part, ("config", "best_trial", "onnx_uri"))
    return go.Scatter(
        x=part["cost_value"],
        y=part["mean"],
        mode="lines+markers" if on_front else "markers",
        name="Pareto front" if on_front else "other configurations",
        legendgroup="front" if on_front else "other",
        showlegend=first,
        marker={
            "size": 13 if on_front else 9,
            "color": "#d95f02" if on_front else "#9e9e9e",
            "symbol": "diamond" if on_front else "circle",
            "line": {"width": 1, "color": "#333"},
        },
        line={"color": "#d95f02", "width": 2},
        customdata=custom,
        hovertemplate="<b>%{customdata[0]}</b><br>mean %{y:.4f}<br>cost %{x:.4g}"
        "<br>best trial %{customdata[1]}<br>ONNX %{customdata[2]}<extra></extra>",
    )


def _curves_figure(analysis: AblationAnalysis) -> go.Figure | None:
    curves = analysis.curves
    if curves is None or curves.empty:
        return None
    curves = curves.dropna(subset=["epoch", "value"])
    if curves.empty:
        return None
    fig = go.Figure()
    for i, (config, group) in enumerate(curves.groupby("config", sort=True)):
        colour, name = PALETTE[i % len(PALETTE)], _lbl(config)
        for trial, one in group.groupby("trial", sort=True):
            one = one.sort_values("epoch")
            fig.add_trace(
                go.Scatter(
                    x=one["epoch"],
                    y=one["value"],
                    mode="lines",
                    line={"color": colour, "width": 1},
                    opacity=0.35,
                    legendgroup=name,
                    showlegend=False,
                    name=_lbl(trial),
                    hovertemplate=f"{name}<br>trial {_lbl(trial)}<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>",
                )
            )
        mean = group.groupby("epoch", sort=True)["value"].agg(["mean", "count"]).reset_index()
        fig.add_trace(
            go.Scatter(
                x=mean["epoch"],
                y=mean["mean"],
                mode="lines+markers",
                line={"color": colour, "width": 3},
                marker={"size": 5},
                name=name,
                legendgroup=name,
                customdata=mean[["count"]].to_numpy(),
                hovertemplate=f"<b>{name}</b><br>epoch %{{x}}: mean %{{y:.4f}} over %{{customdata[0]}} "
                "trials<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="epoch", dtick=1 if curves["epoch"].max() <= 20 else None)
    fig.update_yaxes(title_text=_lbl(analysis.metric))
    return _layout(fig, 480, legend={"title": {"text": "configuration (mean)"}})


def _parallel_dimension(name: str, values: pd.Series) -> dict[str, Any]:
    """A parcoords axis; string (and boolean) levels become integer positions labelled with the level."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return {"label": _lbl(name), "values": values.astype(float).tolist()}
    text = values.astype(str)
    levels = sorted(text.unique())
    codes = text.map({level: i for i, level in enumerate(levels)})
    span = [0, len(levels) - 1] if len(levels) > 1 else [-1, 1]
    return {
        "label": _lbl(name),
        "values": codes.astype(int).tolist(),
        "tickvals": list(range(len(levels))),
        "ticktext": [_lbl(level) for level in levels],
        "range": span,
    }


def _parallel_figure(analysis: AblationAnalysis) -> go.Figure | None:
    trials = analysis.trials
    if trials is None or trials.empty or not analysis.factors:
        return None
    done = trials[(trials["state"] == "finished") & trials["score"].notna()]
    factors = [f for f in analysis.factors if f in done]
    if done.empty or not factors:
        return None
    dims = [_parallel_dimension(f, done[f]) for f in factors]
    scores = done["score"].astype(float).tolist()
    dims.append({"label": _lbl(analysis.metric), "values": scores, "tickformat": ".3f"})
    scale = "Viridis" if analysis.mode == "max" else "Viridis_r"
    fig = go.Figure(
        go.Parcoords(
            dimensions=dims,
            line={
                "color": done["score"].astype(float).tolist(),
                "colorscale": scale,
                "showscale": True,
                "colorbar": {"title": {"text": _lbl(analysis.metric)}, "tickformat": ".3f"},
            },
            labelangle=0,
            labelside="top",
            labelfont={"size": 14},
            tickfont={"size": 12},
            rangefont={"size": 10, "color": "#777"},
        )
    )
    return _layout(fig, 420, margin={"l": 60, "r": 40, "t": 70, "b": 30})


def _variance_figure(analysis: AblationAnalysis) -> go.Figure | None:
    variance = analysis.variance
    if variance is None or variance.empty:
        return None
    variance = variance.dropna(subset=["share"]).sort_values("share", ascending=True)
    if variance.empty:
        return None
    colours = ["#9e9e9e" if t == "residual" else "#2b83ba" for t in variance["term"]]
    fig = go.Figure(
        go.Bar(
            x=variance["share"],
            y=[_lbl(t) for t in variance["term"]],
            orientation="h",
            marker={"color": colours},
            text=[f"{s:.1%}" for s in variance["share"]],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{y}: %{x:.1%} of the variance<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="share of the variance", tickformat=".0%", rangemode="tozero")
    return _layout(fig, 120 + 36 * len(variance), showlegend=False)


# --------------------------------------------------------------------------- page


class _Plots:
    """Writes figures as ``<div id=...>``; plotly's JavaScript is inlined with the first one only."""

    def __init__(self) -> None:
        self.js_written = False

    def div(self, div_id: str, figure: go.Figure | None, empty: str) -> str:
        if figure is None:
            return (
                f'<div id="{_esc(div_id)}" class="plot plot-empty"><p class="empty">{_esc(empty)}</p></div>'
            )
        height = int(figure.layout.height or 450)
        snippet = figure.to_html(
            full_html=False,
            include_plotlyjs=not self.js_written,
            include_mathjax=False,
            div_id=div_id,
            config=PLOTLY_CONFIG,
            default_width="100%",
            default_height=f"{height}px",
        )
        self.js_written = True
        return f'<div class="plot">{snippet}</div>'


def _section(section_id: str, title: str, body: str, caption: str = "") -> str:
    note = f'<p class="caption">{_esc(caption)}</p>' if caption else ""
    return f'<section id="{_esc(section_id)}"><h2>{_esc(title)}</h2>{note}{body}</section>'


def _plot_sections(analysis: AblationAnalysis) -> list[str]:
    plots, m = _Plots(), analysis.metric
    return [
        _section(
            "effects-plot",
            "Main effects",
            plots.div("plot-effects", _effects_figure(analysis), "No effect estimable."),
            f"Estimate of each level against its reference with its 95 % CI; the shaded band is the "
            f"region of practical equivalence (±{analysis.rope:g} {m}).",
        ),
        _section(
            "interactions",
            "Interactions",
            plots.div("plot-interactions", _interactions_figure(analysis), "No interaction estimable."),
            "Two-factor interaction estimates; hover a cell for its 95 % CI.",
        ),
        _section(
            "pareto",
            "Cost against quality",
            plots.div("plot-pareto", _pareto_figure(analysis), "No Pareto front: no finished configuration."),
            "Mean metric per configuration against its cost; the Pareto front is highlighted and connected. "
            "Hover a point for its best trial and ONNX URI.",
        ),
        _section(
            "curves",
            "Learning curves",
            plots.div("plot-curves", _curves_figure(analysis), "No learning curve recorded."),
            f"{m} per epoch: thin lines are trials, thick lines the mean per configuration over the "
            "trials that reached that epoch (pruned trials stop early).",
        ),
        _section(
            "parallel",
            "Parallel coordinates",
            plots.div("plot-parallel", _parallel_figure(analysis), "No finished trial."),
            "Finished trials over the factors and the metric; drag along an axis to filter.",
        ),
        _section(
            "variance",
            "Variance shares",
            plots.div("plot-variance", _variance_figure(analysis), "No variance decomposition estimable."),
            "Share of the variance of the metric explained by each term; residual is seed noise.",
        ),
    ]


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
margin:0;background:#f6f7f9;color:#1d2330;line-height:1.45}
main{max-width:1320px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:1.7em;margin:0 0 6px}h2{font-size:1.3em;margin:0 0 6px}h3{font-size:1.05em;margin:18px 0 6px}
section,header{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:16px 20px;margin:0 0 18px}
nav{margin:0 0 18px;font-size:.92em}nav a{margin-right:14px;color:#2b5fab;text-decoration:none}
code{background:#eef1f5;padding:1px 5px;border-radius:4px}
.meta{color:#4a5261;margin:0 0 10px}.caption{color:#5a6270;margin:0 0 8px;font-size:.92em}
.box{border-radius:6px;padding:10px 14px;margin:10px 0}
.box.complete{background:#e8f5e9;border:1px solid #a5d6a7}
.box.warning{background:#fff3e0;border:2px solid #f57c00;color:#7a3c00}
.box.warning strong{font-size:1.15em}
.notes{background:#fffde7;border:1px solid #e6d96b;border-radius:6px;padding:8px 14px}
.notes ul{margin:4px 0 0;padding-left:20px}.method{margin:8px 0}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{border-bottom:1px solid #e3e6eb;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;position:sticky;top:0}tbody tr:nth-child(even){background:#fafbfc}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.uri{min-width:18em;word-break:break-all;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em}
.verdict{font-weight:600}.v-better{color:#1a7a36}.v-worse{color:#c0171a}
.v-equivalent{color:#1f6c9e}.v-undecided{color:#a86d00}
.empty{color:#6b7280;font-style:italic;margin:6px 0}.plot{width:100%}
"""


def _page(analysis: AblationAnalysis) -> str:
    nav = "".join(
        f'<a href="#{a}">{_esc(t)}</a>'
        for a, t in (
            ("verdicts", "Verdicts"),
            ("effects-plot", "Effects"),
            ("interactions", "Interactions"),
            ("pareto", "Pareto"),
            ("curves", "Curves"),
            ("parallel", "Parallel"),
            ("variance", "Variance"),
            ("configurations", "Configurations"),
            ("trials", "Trials"),
        )
    )
    body = [
        _header(analysis),
        f"<nav>{nav}</nav>",
        _section(
            "verdicts",
            "Verdicts",
            _effects_table(analysis),
            f"Each level against its reference; the verdict compares the 95 % CI with the region of "
            f"practical equivalence (±{analysis.rope:g}). Costs are per ROI.",
        ),
        *_plot_sections(analysis),
        _section("configurations", "Configurations", _configs_table(analysis), "Finished trials only."),
        _section("trials", "Trials", _trials_tables(analysis)),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Ablation report: {_esc(analysis.search)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def render_html(analysis: AblationAnalysis, path: str | Path) -> Path:
    """Write the self-contained HTML report of ``analysis`` to ``path`` and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_page(analysis), encoding="utf-8")
    return out
