"""Formatting rules of the generated paper: the one place where numbers become text, and where
intervals and p-values become verdict keys (``ci_side``, ``p_side``) for the templates to word.

Every context module (:mod:`darkmatter.paper.context`) formats through these, so a number is
rounded the same way wherever the paper quotes it.
"""

from __future__ import annotations

import contextvars
import math


def tex_escape(text: str) -> str:
    """Plain text (names, file paths) for LaTeX."""
    return text.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("&", "\\&").replace("%", "\\%")


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


#: The level of every verdict the paper words: two-sided, as a p-value or as a (1 − ALPHA) interval that excludes 0.
ALPHA = 0.05


class Family:
    """The paper's family of verdict tests: every p-value a worded verdict rests on, adjusted together.

    The generator renders twice. The first pass *collects*: each verdict function reports its test
    (keyed by the metrics file and key path it was read from, so one test consulted twice counts
    once) and its raw two-sided p. Between the passes :meth:`adjusted` applies Benjamini–Hochberg
    (``scipy.stats.false_discovery_control``: the false-discovery rate of the family at ALPHA), and
    the second pass words every verdict from the adjusted p. A test that the second pass consults
    and the first did not is a bug, and raises.
    """

    method = "Benjamini--Hochberg"

    def __init__(self, adjusted: dict[str, float] | None = None, raw: dict[str, float] | None = None):
        self.raw: dict[str, float] = dict(raw or {})
        self._adjusted = adjusted

    def p(self, test, p_raw: float) -> float:
        """The p-value a verdict reads for ``test`` (a metrics dict read through the paper's recorder)."""
        key = family_key(test)
        if key is None:
            return p_raw
        if self._adjusted is None:
            self.raw[key] = p_raw
            return p_raw
        if key not in self._adjusted:
            raise ValueError(f"verdict test {key} was not in the family collected on the first pass")
        return self._adjusted[key]

    def adjusted(self) -> Family:
        """The second pass's family: every collected p adjusted (Benjamini–Hochberg)."""
        from scipy.stats import false_discovery_control

        keys = sorted(self.raw)
        values = false_discovery_control([self.raw[k] for k in keys], method="bh") if keys else []
        return Family(dict(zip(keys, map(float, values))), self.raw)

    @property
    def complete(self) -> bool:
        """Adjusted (the second pass), not collecting."""
        return self._adjusted is not None

    def members(self) -> list[tuple[str, float, float]]:
        """(test, raw p, adjusted p), most significant first."""
        if self._adjusted is None:
            raise ValueError("the family is still being collected")
        return sorted(((k, self.raw[k], self._adjusted[k]) for k in self.raw), key=lambda m: (m[2], m[1], m[0]))


FAMILY: contextvars.ContextVar[Family | None] = contextvars.ContextVar("paper_verdict_family", default=None)


def family_key(test) -> str | None:
    """``file: key.path`` of a metrics dict read through the recorder (``None`` for a plain dict)."""
    source, path = getattr(test, "_source", None), getattr(test, "_path", None)
    return None if source is None else f"{source}: {'.'.join(map(str, path))}"


def verdict_p(test, p_two_sided: float) -> float:
    """``p_two_sided`` of ``test`` as its verdict reads it: adjusted for the family when one is active."""
    family = FAMILY.get()
    return family.p(test, p_two_sided) if family is not None else p_two_sided


def significant(test, p_two_sided: float) -> bool:
    """The two-sided p of ``test``, adjusted for the paper's family, below :data:`ALPHA`."""
    return verdict_p(test, p_two_sided) < ALPHA


def ci_side(test: dict | None) -> str:
    """Where the interval of a difference lies: ``"above"`` 0, ``"below"`` 0, or ``"neither"`` (or none).

    A test that carries a permutation p-value also needs it significant after the family's adjustment:
    an interval that excludes 0 alone does not survive multiplicity."""
    ci = (test or {}).get("ci")
    if ci is None:
        return "neither"
    p = next((test[key] for key in ("p_permutation", "p_two_sided") if key in test and test[key] is not None), None)
    survives = p is None or significant(test, p)  # consulted whatever the interval says: the family counts it
    return ("above" if ci[0] > 0 else "below" if ci[1] < 0 else "neither") if survives else "neither"


def p_side(test, high: str, low: str, alpha: float = ALPHA) -> str:
    """A test's pair of one-sided p-values ``test[high]``, ``test[low]`` as a two-sided verdict: ``"high"``,
    ``"low"`` or ``"neither"``. The two-sided p is twice the smaller one-sided p (accepting either side
    at alpha would be a two-sided test at 2 alpha), adjusted for the family."""
    p_high, p_low = test[high], test[low]
    side = "high" if p_high <= p_low else "low"
    return side if verdict_p(test, min(1.0, 2 * min(p_high, p_low))) < alpha else "neither"


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

