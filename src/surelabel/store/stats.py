"""Review statistics: items per band, throughput, model-reviewer agreement, agreement
between annotators (per label, per reviewer), the audit sample's accuracy, drift."""

from __future__ import annotations

import itertools
import json
import statistics
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

from sqlalchemy import func, select

from surelabel.store.agreement import (
    cohen_kappa,
    krippendorff_alpha,
    observed_agreement,
    wilson_interval,
)
from surelabel.store.items import BANDS, Items
from surelabel.store.schema import items, reviews

# Confidence bins for the agreement table: [0, 0.5), [0.5, 0.6), ..., [0.9, 1.0].
AGREEMENT_EDGES: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DAY = 86400.0
#: Days of the agreement history (drift) chart.
HISTORY_DAYS = 30


def _value(label_json: str | None) -> Hashable:
    """A stored label as a hashable value (a multilabel list becomes a tuple)."""
    if label_json is None:
        return None
    v = json.loads(label_json)
    return tuple(v) if isinstance(v, list) else v


def _has(value: Hashable, label: str) -> bool:
    return label in value if isinstance(value, tuple) else value == label


def _bin_of(confidence: float, edges: Sequence[float]) -> int:
    for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
        last = i == len(edges) - 2
        if lo <= confidence < hi or (last and confidence >= hi):
            return i
    return 0


def _rate(k: int, n: int) -> dict[str, Any]:
    ci = wilson_interval(k, n)
    return {"n": n, "agree": k, "rate": k / n if n else None,
            "ci_low": None if ci is None else ci[0], "ci_high": None if ci is None else ci[1]}


class AgreementStats(Items):
    """The numbers behind the stats page and ``GET /v1/tasks/{task}/stats``."""

    def answers_per_task(self) -> dict[str, int]:
        """Answers given so far, per task."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(reviews.c.task, func.count()).group_by(reviews.c.task))
            return {task: int(n) for task, n in rows}

    def stats(self, task: str, *, edges: Sequence[float] = AGREEMENT_EDGES,
              labels: Sequence[str] = ()) -> dict[str, Any]:
        """Everything the stats page shows for a task.

        - ``agreement_by_confidence`` / ``_by_band``: share of settled items (with a label)
          whose settled label is the model's, per confidence bin and decision band;
        - ``audit``: the same for the audit sample only (a random share of all items, so
          an unbiased estimate of accuracy per confidence band), with 95 % Wilson intervals;
        - ``annotators``: agreement between reviewers (Krippendorff's alpha, pairwise
          Cohen's kappa), overall and per label (``labels``: the task's), and model vs
          consensus per label;
        - ``reviewers``: per reviewer throughput and agreement;
        - ``history``: model-vs-settled agreement per day (drift).
        """
        now = self.clock()
        with self.engine.connect() as conn:
            settled = conn.execute(
                select(items.c.id, items.c.confidence, items.c.decision, items.c.label,
                       items.c.review_action, items.c.review_label, items.c.reviewed_at,
                       items.c.audit, items.c.settled_by)
                .where(items.c.task == task, items.c.status == "reviewed")
            ).all()
            answers = conn.execute(
                select(reviews.c.item_id, reviews.c.reviewer, reviews.c.role,
                       reviews.c.action, reviews.c.label, reviews.c.started_at,
                       reviews.c.created_at)
                .where(reviews.c.task == task).order_by(reviews.c.id)
            ).all()
            model_labels = dict(conn.execute(
                select(items.c.id, items.c.label).where(
                    items.c.task == task,
                    items.c.id.in_(select(reviews.c.item_id).where(reviews.c.task == task)))
            ).all())
        bins: list[dict[str, Any]] = [{"low": lo, "high": hi, "n": 0, "agree": 0}
                                      for lo, hi in itertools.pairwise(edges)]
        bands: dict[str, dict[str, Any]] = {b: {"n": 0, "agree": 0} for b in BANDS}
        audit_bins = [[0, 0] for _ in bins]
        audit_bands = {b: [0, 0] for b in BANDS}
        actions = {"accept": 0, "correct": 0, "clarify": 0}
        days: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        final: dict[int, Hashable] = {}
        for row in settled:
            actions[row.review_action] = actions.get(row.review_action, 0) + 1
            if row.review_action == "clarify" or row.confidence is None:
                continue
            final[row.id] = _value(row.review_label)
            agree = int(row.review_action == "accept")
            b = _bin_of(row.confidence, edges)
            bins[b]["n"] += 1
            bins[b]["agree"] += agree
            if row.decision in bands:
                bands[row.decision]["n"] += 1
                bands[row.decision]["agree"] += agree
            day = days[int((now - row.reviewed_at) // DAY)]
            day[0] += 1
            day[1] += agree
            if row.audit:
                audit_bins[b][0] += 1
                audit_bins[b][1] += agree
                if row.decision in audit_bands:
                    audit_bands[row.decision][0] += 1
                    audit_bands[row.decision][1] += agree
                day[2] += 1
                day[3] += agree
        for entry in (*bins, *bands.values()):
            entry["rate"] = entry["agree"] / entry["n"] if entry["n"] else None
        audit_n = sum(n for n, _ in audit_bins)
        audit_k = sum(k for _, k in audit_bins)
        times = [a.created_at for a in answers]
        return {
            "task": task,
            "counts": self.count_items(task),
            "reviews": {
                "total": len(settled),
                "answers": len(answers),
                "actions": actions,
                "last_hour": sum(t > now - 3600 for t in times),
                "last_day": sum(t > now - DAY for t in times),
                "per_day": [
                    sum(now - (d + 1) * DAY < t <= now - d * DAY for t in times)
                    for d in range(7)
                ],
            },
            "agreement_by_confidence": bins,
            "agreement_by_band": bands,
            "audit": {
                **_rate(audit_k, audit_n),
                "bins": [{"low": b["low"], "high": b["high"], **_rate(k, n)}
                         for b, (n, k) in zip(bins, audit_bins)],
                "bands": {band: _rate(k, n) for band, (n, k) in audit_bands.items()},
            },
            "history": [
                {"days_ago": d, "start": now - (d + 1) * DAY, **_rate(v[1], v[0]),
                 "audit": _rate(v[3], v[2])}
                for d, v in sorted(days.items(), reverse=True) if d < HISTORY_DAYS
            ],
            **_annotators(answers, final, model_labels, labels, now),
        }


def _annotators(answers: Sequence[Any], final: dict[int, Hashable],
                model_labels: dict[int, str | None], labels: Sequence[str],
                now: float) -> dict[str, Any]:
    """Agreement between reviewers, per label, and per reviewer (reviews, not
    adjudications; a clarification is no label and counts as a missing rating)."""
    by_item: dict[int, dict[str, Hashable]] = defaultdict(dict)
    for a in answers:
        if a.role == "review" and a.action != "clarify":
            by_item[a.item_id][a.reviewer] = _value(a.label)
    multi = {i: r for i, r in by_item.items() if len(r) >= 2}
    units = [list(r.values()) for r in multi.values()]
    names = sorted({name for r in by_item.values() for name in r})
    pairs: list[dict[str, Any]] = []
    for x, y in itertools.combinations(names, 2):
        shared = [(r[x], r[y]) for r in multi.values() if x in r and y in r]
        if shared:
            pairs.append({"a": x, "b": y, "n": len(shared),
                          "kappa": cohen_kappa([s[0] for s in shared], [s[1] for s in shared]),
                          "agree": sum(s[0] == s[1] for s in shared) / len(shared)})
    per_label = []
    for label in labels:
        consensus = {i: _has(v, label) for i, v in final.items()}
        model = {i: _has(_value(model_labels.get(i)), label) for i in consensus}
        yes = [i for i, v in consensus.items() if v]
        per_label.append({
            "label": label,
            "alpha": krippendorff_alpha([[_has(v, label) for v in u] for u in units]),
            "consensus": len(yes),
            "model_yes": sum(model[i] for i in yes),
            "model_kappa": cohen_kappa(list(model.values()), list(consensus.values()))
            if consensus else None,
        })
    reviewers = []
    for name in sorted({a.reviewer for a in answers}):
        mine = [a for a in answers if a.reviewer == name]
        labelled = [a for a in mine if a.action != "clarify"]
        durations = [a.created_at - a.started_at for a in mine
                     if a.started_at is not None and a.created_at >= a.started_at]
        with_final = [a for a in labelled if a.item_id in final and a.item_id in multi]
        kappas = [float(p["kappa"]) for p in pairs if name in (p["a"], p["b"])
                  and p["kappa"] is not None]
        reviewers.append({
            "reviewer": name,
            "answers": len(mine),
            "adjudications": sum(a.role == "adjudication" for a in mine),
            "last_hour": sum(a.created_at > now - 3600 for a in mine),
            "last_day": sum(a.created_at > now - DAY for a in mine),
            "median_seconds": statistics.median(durations) if durations else None,
            "with_consensus": _rate(
                sum(_value(a.label) == final[a.item_id] for a in with_final), len(with_final)),
            "with_model": _rate(
                sum(_value(a.label) == _value(model_labels.get(a.item_id)) for a in labelled),
                len(labelled)),
            "kappa_mean": statistics.fmean(kappas) if kappas else None,
        })
    return {
        "annotators": {
            "items": len(multi),
            "alpha": krippendorff_alpha(units),
            "observed": observed_agreement(units),
            "pairs": pairs,
            "per_label": per_label,
        },
        "reviewers": reviewers,
    }
