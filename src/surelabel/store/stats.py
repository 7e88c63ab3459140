"""Review statistics: items per band, review throughput, model-reviewer agreement."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from surelabel.store.items import BANDS, Items
from surelabel.store.schema import items

# Confidence bins for the agreement table: [0, 0.5), [0.5, 0.6), ..., [0.9, 1.0].
AGREEMENT_EDGES: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DAY = 86400.0


class AgreementStats(Items):
    """The numbers behind the stats page and ``GET /v1/tasks/{task}/stats``."""

    def stats(self, task: str, *, edges: Sequence[float] = AGREEMENT_EDGES) -> dict[str, Any]:
        """Items per band, review throughput, and model-reviewer agreement.

        Agreement is the share of answered items (accept or correct; clarifications have no
        label) where the reviewer's label equals the model's, per confidence bin and per
        decision band: it tells whether the thresholds sit where they should.
        """
        now = self.clock()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    items.c.confidence,
                    items.c.decision,
                    items.c.review_action,
                    items.c.reviewed_at,
                ).where(items.c.task == task, items.c.status == "reviewed")
            ).all()
        bins: list[dict[str, Any]] = [
            {"low": lo, "high": hi, "n": 0, "agree": 0}
            for lo, hi in itertools.pairwise(edges)
        ]
        bands = {b: {"n": 0, "agree": 0} for b in BANDS}
        actions = {"accept": 0, "correct": 0, "clarify": 0}
        times: list[float] = []
        for confidence, decision, action, reviewed_at in rows:
            actions[action] = actions.get(action, 0) + 1
            times.append(reviewed_at)
            if action == "clarify" or confidence is None:
                continue
            agree = int(action == "accept")
            for b in bins:
                last = b is bins[-1]
                if b["low"] <= confidence < b["high"] or (last and confidence >= b["high"]):
                    b["n"] += 1
                    b["agree"] += agree
                    break
            if decision in bands:
                bands[decision]["n"] += 1
                bands[decision]["agree"] += agree
        for entry in (*bins, *bands.values()):
            entry["rate"] = entry["agree"] / entry["n"] if entry["n"] else None
        return {
            "task": task,
            "counts": self.count_items(task),
            "reviews": {
                "total": len(rows),
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
        }
