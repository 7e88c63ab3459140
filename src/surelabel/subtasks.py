"""Arrays in subtask shape: the one shape calibration, evaluation and reports work on.

A task is a tuple of :class:`~surelabel.task.Subtask` decisions (one for a binary or
multiclass task, one yes/no per label for a multilabel task). For ``n`` labelled rows:

- label log-probabilities or probabilities are an ``(n, S, K)`` array: ``S`` subtasks of
  ``K`` answers each (``(n, 1, k)`` single-label, ``(n, L, 2)`` multilabel);
- true answers are an ``(n, S)`` array of indices into each subtask's answers (for a
  multilabel label, 0 = "true", it applies; 1 = "false").

The functions here convert the task-shaped arrays users pass (``(n, k)`` and ``(n,)`` label
indices for single-label tasks; ``(n, L, 2)`` and an ``(n, L)`` 0/1 "applies" matrix for
multilabel tasks) to that shape and back, and give the two views every metric is computed
on: one answer per (row, subtask), and one decision per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from surelabel.errors import CalibrationError
from surelabel.task import Task

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def subtask_array(task: Task, x: ArrayLike) -> FloatArray:
    """Label log-probabilities or probabilities as ``(n, S, K)``.

    Accepts ``(n, S, K)`` as it is, and for a single-label task ``(n, k)`` (or one row,
    ``(k,)``).
    """
    arr = np.asarray(x, dtype=np.float64)
    single = len(task.subtasks) == 1
    if single and arr.ndim == 1:
        arr = arr[None, None, :]
    elif single and arr.ndim == 2:
        arr = arr[:, None, :]
    elif not single and arr.ndim == 2 and arr.shape[1] == len(task.subtasks):
        raise ValueError(
            f"expected (n, {len(task.subtasks)}, 2) label log-probabilities for a multilabel "
            "task, got one value per label; use task_probabilities() for P(applies)"
        )
    if arr.ndim != 3 or arr.shape[1] != len(task.subtasks):
        raise ValueError(f"expected an (n, {len(task.subtasks)}, K) array, got {arr.shape}")
    return arr


def task_array(task: Task, x3: FloatArray) -> FloatArray:
    """The task-shaped form of an ``(n, S, K)`` array: ``(n, k)`` single-label, else as is."""
    return x3[:, 0, :] if len(task.subtasks) == 1 else x3


def subtask_targets(task: Task, y: ArrayLike) -> IntArray:
    """True answers as ``(n, S)`` indices (see the module docstring for the inputs)."""
    arr = np.asarray(y)
    if len(task.subtasks) == 1:
        if arr.ndim == 2 and arr.shape[1] == 1:
            return arr.astype(np.int64)
        if arr.ndim != 1:
            raise ValueError(f"expected (n,) label indices, got shape {arr.shape}")
        return arr.astype(np.int64)[:, None]
    if arr.ndim != 2 or arr.shape[1] != len(task.subtasks):
        raise ValueError(f"expected an (n, {len(task.subtasks)}) 0/1 matrix, got {arr.shape}")
    # "applies" (1) is the subtask's first answer, "true" (index 0).
    return np.asarray(1 - arr.astype(np.int64), dtype=np.int64)


def task_targets(task: Task, y2: IntArray) -> NDArray[Any]:
    """The task-shaped form of ``(n, S)`` targets: ``(n,)`` indices, or the 0/1 matrix."""
    return y2[:, 0] if len(task.subtasks) == 1 else 1 - y2


def task_probabilities(task: Task, p3: FloatArray) -> FloatArray:
    """What reports and ``predict_proba`` show: ``(n, k)`` label probabilities, or for a
    multilabel task ``(n, L)`` probabilities that each label applies."""
    return p3[:, 0, :] if len(task.subtasks) == 1 else p3[:, :, 0]


def from_task_probabilities(task: Task, p: ArrayLike) -> FloatArray:
    """``(n, S, K)`` probabilities from :func:`task_probabilities`' form."""
    arr = np.asarray(p, dtype=np.float64)
    if len(task.subtasks) == 1:
        return subtask_array(task, arr)
    if arr.ndim == 2 and arr.shape[1] == len(task.subtasks):
        return np.stack([arr, 1.0 - arr], axis=2)
    return subtask_array(task, arr)


def answer_view(p3: FloatArray, y2: IntArray) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Confidence and correctness of every (row, subtask) answer, flattened: what a
    calibrator calibrates (for a multilabel task, each label's yes/no)."""
    conf = p3.max(axis=2)
    right = p3.argmax(axis=2) == y2
    return np.asarray(conf.ravel(), dtype=np.float64), np.asarray(right.ravel())


def row_view(p3: FloatArray, y2: IntArray) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Confidence and correctness per row, as the classifier decides: the least certain
    subtask's confidence, right only when every subtask is."""
    conf = p3.max(axis=2).min(axis=1)
    right = (p3.argmax(axis=2) == y2).all(axis=1)
    return np.asarray(conf, dtype=np.float64), np.asarray(right)


def label_indices(task: Task, labels: Sequence[Any]) -> NDArray[Any]:
    """True labels (names, or lists of names for multilabel) as the task-shaped targets:
    ``(n,)`` label indices, or an ``(n, L)`` 0/1 matrix (1: the label applies)."""
    names = task.label_names
    index = {name: i for i, name in enumerate(names)}
    if task.kind == "multilabel":
        out = np.zeros((len(labels), len(names)), dtype=np.int64)
        for r, value in enumerate(labels):
            chosen = [value] if isinstance(value, str) else list(value or [])
            for name in chosen:
                if name not in index:
                    raise CalibrationError(f"row {r + 1}: label {name!r} is not one of the "
                                           f"task's labels ({', '.join(names)})")
                out[r, index[name]] = 1
        return out
    idx = []
    for r, value in enumerate(labels):
        key = ("true" if value else "false") if isinstance(value, bool) else value
        if key not in index:
            raise CalibrationError(f"row {r + 1}: label {value!r} is not one of the task's "
                                   f"labels ({', '.join(names)})")
        idx.append(index[key])
    return np.asarray(idx, dtype=np.int64)
