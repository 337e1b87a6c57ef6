"""Calibration units: units whose meaning is known by construction, scored next to the real ones.

A judge at chance on every group says nothing about the groups; a judge that cannot find a unit
that fires on digits cannot be trusted to find anything in the dark matter. Each calibration unit
is a token class of the corpus (a word, a word family, punctuation, or a word in a given
context), read off the cached token ids alone: its activation is exactly 1 on the tokens of the
class and 0 on every other analysed token. It goes through the same examples (top contexts from
train rows, detection contexts from held-out rows) and the same judge as the ICA components,
three times: explained by the judge (the whole chain), given its true explanation (detection
alone: the ceiling of what this judge can see), and given the next unit's true explanation (does
the judge read the explanation at all?).

The classes are decided on the decoded token text, so they hold for any tokenizer. A class with
no token in the train rows or in the detection pool is left out of the examples (and named in
their meta) rather than scored on nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BE = {"is", "are", "was", "were", "be", "been", "being", "am"}
PRONOUNS = {"he", "she", "they", "him", "her", "them", "his", "their", "hers", "theirs"}
CONTRACTION_ENDINGS = {"t", "s", "re", "ll", "ve", "d", "m"}
APOSTROPHES = {"'", "\u2019"}


@dataclass(frozen=True)
class CalibrationUnit:
    """A token class: ``current`` tests the token's text, ``previous`` (if set) the token before
    it in the same row; the unit fires where both hold."""

    name: str
    #: What the paper calls the class (LaTeX).
    label: str
    explanation: str
    current: Callable[[str], bool]
    previous: Callable[[str], bool] | None = None


#: In this order, each unit's "wrong explanation" control (the next unit's true one, cyclically)
#: describes an unrelated class.
UNITS = (
    CalibrationUnit("digits", "digits", "tokens made of digits (parts of numbers)", lambda t: t.strip().isdigit()),
    CalibrationUnit("closing_bracket", "closing brackets", "closing brackets: ), ] or }",
                    lambda t: t.strip()[:1] in {")", "]", "}"}),
    CalibrationUnit("the", "the word \\emph{the}", "the word the", lambda t: t.strip().lower() == "the"),
    CalibrationUnit("contraction", "contraction endings",
                    "the ending of a contraction after an apostrophe, like t in don't or s in it's",
                    lambda t: t.strip().lower() in CONTRACTION_ENDINGS, lambda p: p.strip() in APOSTROPHES),
    CalibrationUnit("period", "full stops", "full stops (periods)", lambda t: t.strip() == "."),
    CalibrationUnit("be", "forms of \\emph{to be}", "forms of the verb to be: is, are, was, were, be, been",
                    lambda t: t.strip().lower() in BE),
    CalibrationUnit("after_of", "the word after \\emph{of}", "the word right after the word of",
                    lambda t: True, lambda p: p.strip().lower() == "of"),
    CalibrationUnit("pronoun", "third-person pronouns", "third-person pronouns: he, she, they, him, her, them, his, their",
                    lambda t: t.strip().lower() in PRONOUNS),
    CalibrationUnit("comma", "commas", "commas", lambda t: t.strip() == ","),
    CalibrationUnit("ing", "\\emph{-ing} words", "words ending in -ing, like using or running",
                    lambda t: len(t.strip()) > 4 and t.strip().isalpha() and t.strip().lower().endswith("ing")),
    CalibrationUnit("after_the", "the word after \\emph{the}", "the word right after the word the",
                    lambda t: True, lambda p: p.strip().lower() == "the"),
    CalibrationUnit("capitalised", "capitalised words", "words that start with a capital letter",
                    lambda t: len(t.strip()) > 1 and t.strip().isalpha() and t.strip()[0].isupper()),
)


def vocabulary_mask(ids: np.ndarray, test: Callable[[str], bool], text: dict[int, str]) -> np.ndarray:
    """``test`` of each id's decoded ``text``, evaluated once per distinct id."""
    unique, inverse = np.unique(ids, return_inverse=True)
    return np.array([bool(test(text[int(i)])) for i in unique], dtype=bool)[inverse].reshape(ids.shape)


def activations(tokens: np.ndarray, positions: np.ndarray, index: np.ndarray, decode: Callable[[int], str],
                units: tuple[CalibrationUnit, ...] = UNITS) -> np.ndarray:
    """[N, units] float32: 1 where the unit's class holds, 0 on the other tokens of ``index``, NaN
    elsewhere. ``positions`` is each token's position in its row (the previous token of position 0
    is none, so a ``previous`` class never holds there). Each distinct id is decoded once."""
    tokens, positions = np.asarray(tokens), np.asarray(positions)
    out = np.full((len(tokens), len(units)), np.nan, dtype=np.float32)
    has_previous = positions[index] > 0
    current_ids, previous_ids = tokens[index], tokens[np.maximum(index - 1, 0)]
    text = {int(i): decode(int(i)) for i in np.unique(np.concatenate([current_ids, previous_ids]))}
    for col, unit in enumerate(units):
        fires = vocabulary_mask(current_ids, unit.current, text)
        if unit.previous is not None:
            fires &= has_previous & vocabulary_mask(previous_ids, unit.previous, text)
        out[index, col] = fires
    return out
