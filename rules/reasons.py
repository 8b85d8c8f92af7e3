"""Churn reasons as short texts for the manager: the strongest signals first.

Texts are built per chunk of customer rows from plain Python lists, one list per signal
and only for the rows where that signal is among the reasons shown — indexing numpy
arrays one element at a time costs more than the formatting itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def _model_text(p_alive: float | None, shown: int, cfg: ChurnConfig) -> tuple[str, ...]:
    if p_alive is not None and p_alive < 0.5 and shown < cfg.max_reasons:
        return (f"model: {p_alive:.0%} chance still active",)
    return ()


def churn_reason_column(signals: ChurnSignals, lo: int, hi: int, cfg: ChurnConfig,
                        buyer: Sequence[bool], p_alive: Sequence[float | None]
                        ) -> list[tuple[str, ...]]:
    """Up to ``max_reasons`` texts per row lo:hi, strongest contribution first.

    Non-buyers get ``()``; a P(alive) below one half adds the model's view when there is
    room left.
    """
    weights = _contributions(signals, slice(lo, hi), cfg)
    order = np.argsort(-weights, axis=1, kind="stable")[:, : cfg.max_reasons]
    shown = (np.take_along_axis(weights, order, axis=1) > 0) & np.asarray(
        buyer, dtype=np.bool_)[:, None]
    texts: list[dict[int, str]] = []
    for signal, make in enumerate(_TEXTS):
        rows = np.flatnonzero((shown & (order == signal)).any(axis=1))
        texts.append(dict(zip(rows.tolist(), make(signals, rows + lo), strict=True)))
    out: list[tuple[str, ...]] = []
    for k, (picks, keep) in enumerate(zip(order.tolist(), shown.tolist(), strict=True)):
        if not buyer[k]:
            out.append(())
            continue
        chosen = tuple(texts[i][k] for i, ok in zip(picks, keep, strict=True) if ok)
        out.append(chosen + _model_text(p_alive[k], len(chosen), cfg))
    return out


def churn_reasons(signals: ChurnSignals, row: int, cfg: ChurnConfig,
                  p_alive: float | None = None) -> tuple[str, ...]:
    """``churn_reason_column`` for one (buying) customer row."""
    return churn_reason_column(signals, row, row + 1, cfg, [True], [p_alive])[0]
