"""A task's review settings: the ``review:`` section of its task file.

::

    review:
      reviews_per_item: 2     # answers from different reviewers before an item is settled
      audit: 0.1              # share of all items (accepted ones too) drawn into the audit sample
      refit_every: 50         # refit the calibration after this many newly settled items (0: never)
      refit_method: auto      # calibration method of a refit (as `surelabel calibrate --method`)
      target_error: 0.05      # also fit an accept threshold with this guaranteed error ...
      delta: 0.1              # ... that holds with probability 1 - delta
      folds: 5                # cross-validation folds of a refit
      dedupe: true            # store an item without an id once per exact text
      quota: 300              # answers per reviewer per 24 hours (a task role's own quota wins)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from surelabel.calibration import CALIBRATORS
from surelabel.errors import TaskError
from surelabel.task import Task


@dataclasses.dataclass(frozen=True)
class ReviewSettings:
    """How the review service treats one task (see the module docstring)."""

    reviews_per_item: int = 1
    audit: float = 0.1
    refit_every: int = 50
    refit_method: str = "auto"
    target_error: float | None = None
    delta: float = 0.1
    folds: int = 5
    dedupe: bool = False
    quota: int | None = None

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> TaskError:
            return TaskError(f"review.{key}: {why}, got {getattr(self, key)!r}")

        for key in ("reviews_per_item", "refit_every", "folds"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise bad(key, "must be a whole number")
        if not 1 <= self.reviews_per_item <= 10:
            raise bad("reviews_per_item", "must be between 1 and 10")
        if self.refit_every < 0:
            raise bad("refit_every", "must be 0 (never) or more")
        if self.folds < 2:
            raise bad("folds", "must be at least 2")
        if not isinstance(self.audit, (int, float)) or isinstance(self.audit, bool) \
                or not 0.0 <= self.audit <= 1.0:
            raise bad("audit", "must be a share between 0 and 1")
        for key in ("target_error", "delta"):
            value = getattr(self, key)
            if value is None and key == "target_error":
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not 0.0 < value < 1.0:
                raise bad(key, "must be between 0 and 1")
        if self.refit_method not in ("auto", *CALIBRATORS):
            raise bad("refit_method", f"must be auto or one of {', '.join(CALIBRATORS)}")
        if not isinstance(self.dedupe, bool):
            raise bad("dedupe", "must be true or false")
        if self.quota is not None and (not isinstance(self.quota, int)
                                       or isinstance(self.quota, bool) or self.quota < 1):
            raise bad("quota", "must be a whole number of at least 1")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ReviewSettings:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise TaskError(f"review.{unknown[0]}: unknown setting; expected some of "
                            f"{', '.join(names)}")
        return cls(**dict(data))

    @classmethod
    def of(cls, task: Task) -> ReviewSettings:
        """The settings of a task's ``review:`` section (defaults where it has none)."""
        try:
            return cls.from_mapping(task.review)
        except TaskError as exc:
            raise TaskError(f"task {task.name!r}: {exc}") from exc
