"""Calibration units fire exactly on their token class, and the examples stage carries them."""

import numpy as np

from darkmatter.interp import calibration
from darkmatter.interp.examples import calibration_columns

VOCAB = ["<bos>", " The", " 1997", "7", ")", ").", " don", "'", "t", "s", " is", " Were", " he", " Their",
         " running", " ring", ",", " of", " the", "\n", "."]


def decode(i: int) -> str:
    return VOCAB[i]


def _rows(*texts):
    """Token ids of rows given as lists of vocabulary strings, and each token's position."""
    tokens = np.array([VOCAB.index(t) for row in texts for t in row])
    positions = np.concatenate([np.arange(len(row)) for row in texts])
    return tokens, positions


def test_each_unit_is_one_exactly_on_its_class_and_zero_elsewhere():
    row1 = ["<bos>", " The", " 1997", "7", ")", ").", " don", "'", "t", " is", " Were", " he", " Their"]
    row2 = ["s", " running", " ring", ",", " of", " the", " of", "\n", "'", "s", "."]  # 's' opens the row: no apostrophe before it
    tokens, positions = _rows(row1, row2)
    index = np.flatnonzero(tokens != 0)  # the analysed tokens: everything but <bos>
    acts = calibration.activations(tokens, positions, index, decode)
    names = [u.name for u in calibration.UNITS]
    fires = {name: {(VOCAB[tokens[i]], int(i)) for i in np.flatnonzero(acts[:, j] == 1)} for j, name in enumerate(names)}
    assert fires["digits"] == {(" 1997", 2), ("7", 3)}
    assert fires["closing_bracket"] == {(")", 4), (").", 5)}
    assert fires["contraction"] == {("t", 8), ("s", 22)}, "the row-opening 's' has no apostrophe before it"
    assert fires["be"] == {(" is", 9), (" Were", 10)}
    assert fires["pronoun"] == {(" he", 11), (" Their", 12)}
    assert fires["ing"] == {(" running", 14)}, "' ring' is too short to be an -ing word"
    assert fires["comma"] == {(",", 16)}
    assert fires["after_of"] == {(" the", 18), ("\n", 20)}
    assert fires["the"] == {(" The", 1), (" the", 18)} and fires["period"] == {(".", 23)}
    assert fires["after_the"] == {(" 1997", 2), (" of", 19)}, "the token after 'the', whatever it is"
    assert fires["capitalised"] == {(" The", 1), (" Were", 10), (" Their", 12)}
    assert np.isnan(acts[0]).all(), "not analysed: NaN, neither 0 nor 1"
    analysed = acts[index]
    assert set(np.unique(analysed)) == {0.0, 1.0} and acts.dtype == np.float32


def test_a_class_the_corpus_lacks_is_dropped_and_named():
    class Cache:
        tokens = np.array([VOCAB.index(t) for t in [" The", " 1997", ",", " of", " the", " 1997", ",", " of", " the"]])

        def array(self, name):
            assert name == "positions"
            return np.arange(len(self.tokens))

    train, detect = np.arange(0, 5), np.arange(5, 9)
    acts, units, dropped = calibration_columns(Cache(), train, detect, np.arange(9), decode)
    assert [u["id"] for u in units] == ["digits", "the", "after_of", "comma", "after_the"]
    assert dropped == ["closing_bracket", "contraction", "period", "be", "pronoun", "ing", "capitalised"], \
        "' The' occurs in the train rows only"
    assert acts.shape == (9, 5) and acts[:, 0].tolist() == [0, 1, 0, 0, 0, 1, 0, 0, 0]
    assert units[0]["explanation"] == calibration.UNITS[0].explanation
