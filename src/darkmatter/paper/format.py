"""Formatting rules of the generated paper: the one place where numbers become text, and where
intervals and p-values become verdict keys (``ci_side``, ``p_side``) for the templates to word.

Every context module (:mod:`darkmatter.paper.context`) formats through these, so a number is
rounded the same way wherever the paper quotes it.
"""

from __future__ import annotations

import math


def fmt_fixed(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def fmt_sig(x: float, digits: int = 3) -> str:
    """``digits`` significant digits, no exponent for ordinary magnitudes."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else "n/a"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return f"{x:.{decimals}f}"


def fmt_pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}\\%"


def fmt_count(n: int) -> str:
    return f"{int(n):,}".replace(",", "{,}")


def fmt_about(n: int) -> str:
    """A count to 2 significant digits, for numbers that are not reproducible to the unit.

    ICA iteration counts follow the optimiser's path: a 1e-12 change of the residual moved them by
    1 (measured with ``darkmatter.paper.diff``), so the paper states them as roughly N.
    """
    return fmt_count(round(int(n), min(0, 2 - len(str(abs(int(n)))))))


def fmt_sci(x: float) -> str:
    """Small positive numbers as m×10^e in ``\\ensuremath`` (text or math); mantissa 1 dropped."""
    exponent = int(math.floor(math.log10(x)))
    mantissa = round(x / 10**exponent, 1)
    if mantissa >= 10:  # 9.99e-4 rounds to 1.0e-3, not to 10.0e-4
        exponent, mantissa = exponent + 1, mantissa / 10
    if abs(mantissa - 1) < 0.05:
        return f"\\ensuremath{{10^{{{exponent}}}}}"
    return f"\\ensuremath{{{mantissa:.1f}\\times10^{{{exponent}}}}}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    if p == 0:
        return "\\ensuremath{<10^{-300}}"
    return f"{p:.3f}" if p >= 0.001 else fmt_sci(p)


def fmt_ci(ci: list[float] | None, digits: int = 2) -> str:
    return f"[{fmt_fixed(ci[0], digits)}, {fmt_fixed(ci[1], digits)}]" if ci else "(too few values for an interval)"


def ci_side(test: dict | None) -> str:
    """Where the interval of a difference lies: ``"above"`` 0, ``"below"`` 0, or ``"neither"`` (or none)."""
    ci = (test or {}).get("ci")
    if ci is None:
        return "neither"
    return "above" if ci[0] > 0 else "below" if ci[1] < 0 else "neither"


#: The level of every verdict the paper words: two-sided, as a p-value or as a (1 − ALPHA) interval that excludes 0.
ALPHA = 0.05


def significant(p_two_sided: float) -> bool:
    """A two-sided p-value below :data:`ALPHA`."""
    return p_two_sided < ALPHA


def p_side(p_high: float, p_low: float, alpha: float = ALPHA) -> str:
    """A pair of one-sided p-values as a two-sided verdict at ``alpha``: ``"high"``, ``"low"`` or
    ``"neither"``. The two-sided p is twice the smaller one-sided p, so each side is tested at alpha/2
    (accepting either side at alpha would be a two-sided test at 2 alpha)."""
    side = "high" if p_high <= p_low else "low"
    return side if 2 * min(p_high, p_low) < alpha else "neither"


def mean_ci(entry: dict | None, digits: int = 3, no_ci: str = "") -> str:
    """``mean [lo, hi]`` of a ``mean_with_ci`` entry (``no_ci`` in place of a missing interval);
    ``--`` when the entry or its mean is missing."""
    if not entry or entry.get("mean") is None:
        return "--"
    return f"{fmt_fixed(entry['mean'], digits)} {fmt_ci(entry['ci'], digits) if entry['ci'] else no_ci}".strip()


def difference(test: dict, digits: int = 3) -> dict:
    """A two-group test for a template: its verdict key, difference, interval and permutation p."""
    return {"side": ci_side(test), "difference": fmt_fixed(test["difference"], digits), "ci": fmt_ci(test.get("ci"), digits),
            "p": fmt_p(test.get("p_permutation"))}

