"""Fractional differencing, the operator of the ``fracdiff`` package's ``fdiff``.

``fracdiff`` pins Python < 3.10, so the article's ``add_diff`` needs this copy
of its mathematics: for an integer order it is ``numpy.diff``; otherwise a
convolution with the truncated binomial series (-1)^k C(d, k), k < window.
"""

from __future__ import annotations

import numpy as np


def fdiff_coef(d: float, window: int) -> np.ndarray:
    """(-1)^k * binom(d, k) for k < window, by the exact product recurrence."""
    coef = np.empty(window, dtype=np.float64)
    coef[0] = 1.0
    for k in range(1, window):
        coef[k] = -coef[k - 1] * (d - k + 1) / k
    return coef


def fdiff(a, n: float = 1.0, window: int = 10, mode: str = "full") -> np.ndarray:
    """The n-th (possibly fractional) difference of a 1-D series."""
    values = np.asarray(a, dtype=np.float64)
    if float(n).is_integer():
        return np.diff(values, n=int(n))
    if mode == "valid":
        return np.convolve(values, fdiff_coef(n, window), mode="valid")
    if mode == "full":
        return np.convolve(values, fdiff_coef(n, window), mode="full")[: len(values)]
    raise ValueError(f"invalid mode {mode!r}: use 'full' or 'valid'")
