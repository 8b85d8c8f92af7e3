"""Churn reasons as short texts for the manager: the strongest signals first.

Texts are built per chunk of customer rows from plain Python lists, one list per signal
and rank, only for the rows where that signal is shown at that rank — indexing numpy
arrays one element at a time costs more than the formatting itself.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from operator import is_not

import numpy as np
import numpy.typing as npt

from rules.churn import ChurnSignals
from rules.config import ChurnConfig

__all__ = ["churn_reason_column", "churn_reasons"]

_Texts = Callable[[ChurnSignals, npt.NDArray[np.int64]], list[str]]


def _overdue_texts(s: ChurnSignals, rows: npt.NDArray[np.int64]) -> list[str]:
    # np.rint rounds half to even, exactly like round() on a float
    rhythms = np.rint(s.rhythm[rows]).astype(np.int64).tolist()
    return [f"{days - rhythm} days overdue vs usual {rhythm}-day rhythm" if own
            else f"{days} days since the only purchase day (expected within {rhythm})"
            for days, rhythm, own in zip(s.since_last[rows].tolist(), rhythms,
                                         s.own_rhythm[rows].tolist(), strict=True)]


def _frequency_texts(s: ChurnSignals, rows: npt.NDArray[np.int64]) -> list[str]:
    out = []
    for recent, usual, span in zip(s.recent_visits[rows].tolist(),
                                   s.usual_visits[rows].tolist(),
                                   s.window_span[rows].tolist(), strict=True):
        said = (f"{recent} purchase day" if recent == 1 else f"{recent} purchase days"
                if recent else "no purchase")
        out.append(f"{said} in the last {span} days"
                   + (f" (usually {usual})" if usual > 0 else ""))
    return out


def _check_texts(s: ChurnSignals, rows: npt.NDArray[np.int64]) -> list[str]:
    return [f"average check fell {1 - recent / previous:.0%} ({recent:,.0f} vs {previous:,.0f})"
            for recent, previous in zip(s.recent_avg[rows].tolist(),
                                        s.previous_avg[rows].tolist(), strict=True)]


def _feedback_texts(s: ChurnSignals, rows: npt.NDArray[np.int64]) -> list[str]:
    return [s.feedback_text.get(row, "negative feedback") for row in rows.tolist()]


def _ignored_texts(s: ChurnSignals, rows: npt.NDArray[np.int64]) -> list[str]:
    return [s.ignored_text.get(row, "communications ignored") for row in rows.tolist()]


# In signal order: equal contributions keep this order (the ranking below is stable).
_TEXTS: tuple[_Texts, ...] = (_overdue_texts, _frequency_texts, _check_texts,
                              _feedback_texts, _ignored_texts)


def _contributions(s: ChurnSignals, rows: slice, cfg: ChurnConfig) -> npt.NDArray[np.float64]:
    return np.stack([cfg.weight_overdue * s.overdue[rows],
                     cfg.weight_frequency * s.frequency[rows],
                     cfg.weight_check * s.check[rows], cfg.weight_feedback * s.feedback[rows],
                     cfg.weight_ignored * s.ignored[rows]], axis=1)


def _model_texts(p_alive: npt.NDArray[np.float64]) -> list[str]:
    return [f"model: {p:.0%} chance still active" for p in p_alive.tolist()]


def _ranked_texts(signals: ChurnSignals, lo: int, order: npt.NDArray[np.int64],
                  shown: npt.NDArray[np.bool_]) -> list[list[str | None]]:
    """One column per rank: the text of the signal shown at that rank, or None."""
    columns = []
    for rank in range(order.shape[1]):
        column = np.full(len(order), None, dtype=object)
        for signal, make in enumerate(_TEXTS):
            rows = np.flatnonzero(shown[:, rank] & (order[:, rank] == signal))
            if len(rows):
                column[rows] = make(signals, rows + lo)
        columns.append(column.tolist())
    return columns


def churn_reason_column(signals: ChurnSignals, lo: int, hi: int, cfg: ChurnConfig,
                        buyer: npt.NDArray[np.bool_], p_alive: npt.NDArray[np.float64]
                        ) -> list[tuple[str, ...]]:
    """Up to ``max_reasons`` texts per row lo:hi, strongest contribution first.

    ``buyer`` and ``p_alive`` (NaN where there is none) are aligned with rows lo:hi.
    Non-buyers get ``()``; a P(alive) below one half adds the model's view when there is
    room left.
    """
    weights = _contributions(signals, slice(lo, hi), cfg)
    order = np.argsort(-weights, axis=1, kind="stable")[:, : cfg.max_reasons]
    shown = (np.take_along_axis(weights, order, axis=1) > 0) & buyer[:, None]
    columns = _ranked_texts(signals, lo, order, shown)
    model = np.full(hi - lo, None, dtype=object)
    # NaN < 0.5 is False: no model view without a fitted P(alive)
    room = buyer & (p_alive < 0.5) & (shown.sum(axis=1) < cfg.max_reasons)
    model[room] = _model_texts(p_alive[room])
    columns.append(model.tolist())
    # The Nones dropped per row in C, where a generator per row cost more than the texts
    # (a million rows per run).
    present = partial(filter, partial(is_not, None))
    return list(map(tuple, map(present, zip(*columns, strict=True))))


def churn_reasons(signals: ChurnSignals, row: int, cfg: ChurnConfig,
                  p_alive: float | None = None) -> tuple[str, ...]:
    """``churn_reason_column`` for one (buying) customer row."""
    alive = np.array([np.nan if p_alive is None else p_alive], dtype=np.float64)
    return churn_reason_column(signals, row, row + 1, cfg, np.ones(1, dtype=np.bool_),
                               alive)[0]
