"""What the web pages share: templates, the page filter, and the charts' geometry."""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import HTTPException
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from surelabel.server.answers import parse_confidence_band
from surelabel.store import ItemFilter
from surelabel.store.stats import AGREEMENT_EDGES

HERE = Path(__file__).parent
#: Queue states a reviewer can filter by, and the statuses each one means.
STATES: dict[str, str | None] = {
    "waiting": "open,disputed", "open": "open", "disputed": "disputed",
    "reviewed": "reviewed", "auto": "auto", "error": "error", "all": None,
}
BAND_CHOICES = [f"{lo:.1f}-{hi:.1f}" for lo, hi in itertools.pairwise(AGREEMENT_EDGES)]


def _when(t: float | None) -> str:
    if t is None:
        return "–"
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _num(x: Any, fmt: str = "{:.3f}") -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "–"
    return fmt.format(x)


@functools.cache
def _env() -> Environment:
    """The templates (loaded on first use; one environment serves every app)."""
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"], default=True),
    )
    env.filters["pct"] = lambda p: _num(p, "{:.0%}") if p is not None else "–"
    env.filters["prob"] = lambda p: _num(p)
    env.filters["num"] = _num
    env.filters["when"] = _when
    env.filters["label"] = lambda v: ", ".join(v) if isinstance(v, (list, tuple)) else (
        "–" if v is None else str(v))
    return env


def render(name: str, status: int = 200, headers: Mapping[str, str] | None = None,
           **context: Any) -> HTMLResponse:
    return HTMLResponse(_env().get_template(name).render(**context), status_code=status,
                        headers=dict(headers or {}))


class PageFilter:
    """The queue page's search and filters, from the query string (bad values: 422)."""

    FIELDS = ("q", "label", "decision", "band", "state", "audit")

    def __init__(self, query: Mapping[str, str], labels: Sequence[str]) -> None:
        get = {k: (query.get(k) or "").strip()[:500] for k in self.FIELDS}
        if get["label"] and get["label"] not in labels:
            raise HTTPException(422, f"unknown label {get['label']!r}")
        if get["decision"] not in ("", "accept", "review", "clarify"):
            raise HTTPException(422, f"unknown decision {get['decision']!r}")
        if get["state"] not in ("", *STATES):
            raise HTTPException(422, f"unknown state {get['state']!r}")
        if get["audit"] not in ("", "yes", "no"):
            raise HTTPException(422, "audit: expected yes or no")
        self.values = get
        lo, hi = parse_confidence_band(get["band"])
        self.base = ItemFilter(
            q=get["q"] or None, label=get["label"] or None, decision=get["decision"] or None,
            audit=None if not get["audit"] else get["audit"] == "yes",
            min_confidence=lo, max_confidence=hi,
        )

    @property
    def listing(self) -> ItemFilter:
        """The filter of the listed items (the state chooses statuses; default: waiting)."""
        status = STATES[self.values["state"] or "waiting"]
        return ItemFilter(**{**self.base.__dict__, "status": status})

    @property
    def query(self) -> str:
        """The query string that keeps these filters (empty values left out)."""
        return urlencode({k: v for k, v in self.values.items() if v})


def bar_chart(rows: Sequence[Mapping[str, Any]], *, width: int = 560, height: int = 240
              ) -> dict[str, Any]:
    """Geometry of a bar chart of rates in [0, 1] per bin (inline SVG), with the 95 %
    interval as a whisker where a row has one."""
    left, bottom, top = 48, 36, 16
    slot = (width - left - 8) / max(1, len(rows))
    plot_h = height - bottom - top

    def y(rate: float) -> float:
        return round(top + plot_h * (1 - rate), 1)

    bars = []
    for i, b in enumerate(rows):
        rate = b.get("rate")
        h = 0.0 if rate is None else plot_h * rate
        low, high = b.get("ci_low"), b.get("ci_high")
        bars.append({
            "x": round(left + i * slot + slot * 0.15, 1),
            "w": round(slot * 0.7, 1),
            "y": round(top + plot_h - h, 1),
            "h": round(h, 1),
            "cx": round(left + i * slot + slot / 2, 1),
            "label": f"{b['low']:.1f}–{b['high']:.1f}",
            "rate": rate,
            "n": b["n"],
            "whisker": None if low is None or high is None else {"y1": y(high), "y2": y(low)},
        })
    return {"width": width, "height": height, "left": left, "top": top, "bottom": bottom,
            "plot_h": plot_h, "bars": bars, "ticks": _ticks(top, plot_h),
            "axis_y": top + plot_h}


def _ticks(top: float, plot_h: float) -> list[dict[str, Any]]:
    return [{"y": round(top + plot_h * (1 - t), 1), "label": f"{int(t * 100)}%"}
            for t in (0.0, 0.25, 0.5, 0.75, 1.0)]


def history_chart(days: Sequence[Mapping[str, Any]], *, width: int = 560, height: int = 220
                  ) -> dict[str, Any]:
    """Geometry of the agreement-over-time chart: one point per day with reviews, for all
    settled items and for the audit sample."""
    left, bottom, top = 48, 36, 16
    plot_h = height - bottom - top
    span = max([d["days_ago"] for d in days], default=0) + 1
    step = (width - left - 16) / max(1, span - 1) if span > 1 else 0

    def point(d: Mapping[str, Any], rate: float) -> dict[str, Any]:
        x = left + 8 + (span - 1 - d["days_ago"]) * step
        return {"x": round(x, 1), "y": round(top + plot_h * (1 - rate), 1), "n": d["n"],
                "rate": rate, "when": _when(d["start"] + 86400)[:10]}

    series = []
    for key, css in (("all", "line-all"), ("audit", "line-audit")):
        points = []
        for d in days:
            entry = d if key == "all" else d["audit"]
            if entry["rate"] is not None:
                points.append({**point(d, entry["rate"]), "n": entry["n"]})
        series.append({"name": key, "css": css, "points": points,
                       "path": " ".join(f"{p['x']},{p['y']}" for p in points)})
    return {"width": width, "height": height, "left": left, "axis_y": top + plot_h,
            "ticks": _ticks(top, plot_h), "series": series,
            "first": days[0] if days else None, "last": days[-1] if days else None}
