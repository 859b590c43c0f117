"""Plotly figures rendered server-side to an HTML fragment; plotly.js itself is served locally."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recotem.experiments.reports import TimelinePoint
from pathlib import Path

import plotly
from django.http import FileResponse, HttpRequest
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


@require_GET
@cache_control(max_age=86400, public=True)
def plotly_js(request: HttpRequest) -> FileResponse:
    """The plotly.js bundled with the Python package: no CDN, no network, same version as the figures."""
    return FileResponse(open(PLOTLY_JS, "rb"), content_type="text/javascript")


def _html(fig: object, div_id: str) -> str:
    import plotly.io as pio

    fig.update_layout(  # type: ignore[attr-defined]
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
        height=340,
        template="plotly_white",
        font={"family": "system-ui, sans-serif", "size": 12},
    )
    html: str = pio.to_html(  # plotly ships no type hints
        fig,
        include_plotlyjs=False,
        full_html=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )
    return html


def optimization_history_html(trials: Sequence[tuple[int, float | None, str]], metric: str) -> str:
    """Optuna's optimisation-history figure for (number, score, algorithm) trial rows.

    The job's trials are replayed into an in-memory study (maximising the score), so the plot is
    Optuna's own and works whatever storage the tuning worker used.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for number, score, algorithm in trials:
        if score is None:
            continue
        study.add_trial(
            optuna.trial.create_trial(
                value=score, user_attrs={"algorithm": algorithm, "number": number}
            )
        )
    if not study.trials:
        return ""
    fig = optuna.visualization.plot_optimization_history(study, target_name=metric)
    return _html(fig, "optimization-history")


def metric_per_run_html(points: Sequence[tuple[datetime, float, int]], metric: str) -> str:
    """A line of the evaluation metric of each completed retraining run (time, value, run id)."""
    if not points:
        return ""
    import plotly.graph_objects as go

    # Runs on a categorical axis: evenly spaced whether they are minutes or weeks apart.
    fig = go.Figure(
        go.Scatter(
            x=[f"#{p[2]}" for p in points],
            y=[p[1] for p in points],
            mode="lines+markers",
            text=[f"{p[0]:%Y-%m-%d %H:%M} UTC" for p in points],
            hovertemplate="run %{x}<br>%{text}<br>" + metric + " %{y:.4f}<extra></extra>",
        )
    )
    fig.update_layout(title=f"{metric} per completed run", yaxis_title=metric, xaxis_title="run")
    fig.update_xaxes(type="category")
    return _html(fig, "metric-chart")


def events_per_day_html(days: Sequence[date], counts: dict[str, list[int]]) -> str:
    """Stacked bars of events per day (UTC), one colour per event type."""
    if not any(any(c) for c in counts.values()):
        return ""
    import plotly.graph_objects as go

    fig = go.Figure(
        [go.Bar(name=event_type, x=list(days), y=values) for event_type, values in counts.items()]
    )
    fig.update_layout(
        title="Events per day (UTC)", barmode="stack", yaxis_title="events", xaxis_title="day"
    )
    return _html(fig, "events-chart")


def experiment_timeline_html(points: Sequence[TimelinePoint]) -> str:
    """The difference in rate (variant - control) per day with its always-valid interval, and
    the relative lift on hover: the band may be read every day without inflating errors."""
    shown = [p for p in points if p.difference is not None]
    if not shown:
        return ""
    import plotly.graph_objects as go

    days = [p.day for p in shown]
    fig = go.Figure(
        [
            go.Scatter(
                x=days + days[::-1],
                y=[p.ci_high for p in shown] + [p.ci_low for p in shown][::-1],
                fill="toself",
                fillcolor="rgba(37, 99, 235, 0.15)",
                line={"width": 0},
                hoverinfo="skip",
                name="always-valid interval",
            ),
            go.Scatter(
                x=days,
                y=[p.difference for p in shown],
                mode="lines+markers",
                name="difference",
                customdata=[
                    [
                        "—" if p.lift is None else f"{100 * p.lift:+.1f} %",
                        p.control_users,
                        p.variant_users,
                        p.p_value,
                    ]
                    for p in shown
                ],
                hovertemplate=(
                    "%{x}<br>difference %{y:.4f}<br>lift %{customdata[0]}<br>users "
                    "%{customdata[1]} / %{customdata[2]}<br>p %{customdata[3]:.3g}<extra></extra>"
                ),
            ),
        ]
    )
    fig.add_hline(y=0, line_dash="dot", line_color="gray")
    fig.update_layout(
        title="Variant − control rate, with its always-valid interval",
        yaxis_title="difference in rate",
        xaxis_title="day (UTC)",
    )
    return _html(fig, "lift-chart")
