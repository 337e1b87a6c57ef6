"""The paper's family of verdict tests (:class:`darkmatter.paper.format.Family`): its size, how many of its
tests are significant before and after the adjustment, and the table that lists each with both p-values."""

from __future__ import annotations

from darkmatter.paper.format import ALPHA, Family, fmt_count, fmt_p, tex_escape


def macro_numbers(family: Family) -> dict[str, str]:
    members = family.members()
    return {"FamilySize": fmt_count(len(members)), "FamilyMethod": family.method,
            "FamilyRawSignificant": fmt_count(sum(raw < ALPHA for _, raw, _ in members)),
            "FamilySignificant": fmt_count(sum(adjusted < ALPHA for *_, adjusted in members))}


def table(family: Family) -> dict:
    """One row per test, most significant first: the metrics file (its run directory dropped), the key
    path within it, the raw and the adjusted two-sided p, and whether the verdict survives."""
    rows = []
    for key, raw, adjusted in family.members():
        source, path = key.split(": ", 1)
        rows.append({"file": tex_escape(source.rsplit("/", 1)[-1]), "key": tex_escape(path), "raw": fmt_p(raw),
                     "adjusted": fmt_p(adjusted), "survives": adjusted < ALPHA})
    return {"rows": rows, "method": family.method}
