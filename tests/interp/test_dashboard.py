"""The dashboard is well-formed, escapes token text, and shows what a researcher needs."""

from html.parser import HTMLParser

from darkmatter.interp.dashboard import histogram_svg, render


def _ctx(tokens, acts, focus):
    return {"tokens": tokens, "activations": acts, "focus": focus, "activation": acts[focus]}


def _unit(kind, uid, **extra):
    return {"kind": kind, "id": uid, "threshold": 2.0, "active_fraction": 0.01, "kurtosis": 5.0, "max_activation": 9.0,
            "histogram": {"counts": [0, 3, 10, 2], "edges": [-1, 0, 1, 2, 3]},
            "top": [_ctx(["<script>", "alert(1)", "\n"], [None, 9.0, 0.5], 1)],
            "quantiles": [_ctx(["a", "b"], [2.5, 0.1], 0)], "non_activating": [_ctx(["c"], [0.0], 0)], **extra}


def _inputs():
    examples = {"meta": {"hook_name": "blocks.9.hook_resid_post", "model": "gemma-3-270m"}, "units": [
        _unit("ica", 0, stable=True, variance_share=0.01, max_cos_sae=0.12, nearest_sae_feature=7, matched_sae_feature=42),
        _unit("ica", 1, stable=False, variance_share=0.02, max_cos_sae=0.9, nearest_sae_feature=3, matched_sae_feature=43),
        _unit("sae", 42, frequency_train=0.003, matched_to_ica=0), _unit("random", 0)]}
    q = {"0.5": 0.3}
    residual = {"hook_name": "blocks.9.hook_resid_post", "dark_matter_fraction": 0.127, "dark_matter_fraction_with_special": 0.215,
                "dark_matter_fraction_with_outliers": 0.131, "dark_matter_fraction_without_outliers": 0.127,
                "tokens": {"classes": {"counts": {"outlier": 83}}, "outliers_excluded": True},
                "linear_predictability": {"r2_heldout": 0.61},
                "kurtosis": {k: {"quantiles": q} for k in ("x", "r", "r_random_directions")}}
    ica = {"n_components": 2, "target": "residual", "backend": "picard", "n_stable": 1, "stable_fraction": 0.5,
           "stability": {"measured": True}, "all_converged": True}
    bins = {"novel": 1, "n": 2}
    compare = {"thresholds": {"novel_below": 0.3}, "ica": bins, "random": bins,
               "rotation_null": {"novel_fraction": {"null_mean": 0.25, "p_two_sided": 0.04}},
               "kurtosis_gap": {"like_for_like": {"difference": 0.4, "ci": [0.1, 0.7]}}}
    return examples, residual, ica, compare


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.sections = [], [], []
        self.voids = {"meta", "br", "rect"}

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "section":
            self.sections.append(dict(attrs)["id"])
        if tag not in self.voids:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.voids:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def test_dashboard_is_well_formed_and_escapes_tokens():
    page = render(*_inputs())
    parser = Tags()
    parser.feed(page)
    assert parser.stack == [], "every tag is closed"
    assert "script" not in parser.tags, "token text is escaped, never markup"
    assert "&lt;script&gt;" in page
    assert parser.sections == ["ica-0", "ica-1", "sae-42", "random-0"]


def test_dashboard_shows_the_numbers_a_researcher_needs():
    page = render(*_inputs())
    for needle in ("0.1270 / 0.1310 / 0.1270 / 0.2150", "max |cos| to SAE 0.120 (novel)", "nearest feature #7", "unstable",
                   "stable across restarts and resamples", "matched SAE feature #42", "kurtosis 5.00 (held-out)",
                   "firing frequency 0.300% (train rows)", "↵", "83 tokens (excluded)", "1 of 2 / 25% / 1 of 2",
                   "0.4 [0.1, 0.7]", "top activations (train rows"):
        assert needle in page, needle
    assert page.count('class="tok focus"') == 4 * 3  # top + quantile + non-activating context per unit


def test_histogram_svg_has_one_bar_per_bin():
    svg = histogram_svg([1, 0, 100], [0.0, 1.0, 2.0, 3.0])
    assert svg.count("<rect") == 3 and "0 … 3" in svg


def test_dashboard_shows_steering_runs_escaped():
    steering = [{"unit": "ica-3", "paired_with": "ica-3", "vector_norm": 2.5,
                 "logit_lens": {"plus": ["<b>", " the"], "minus": [" of"]}, "prompt": "a <prompt>",
                 "alphas": [{"alpha": -8.0, "continuation": "x < y", "top_next_tokens": [{"token": " and", "logprob": -1.0}],
                             "activation_on_continuation": 0.25},
                            {"alpha": 8.0, "continuation": "z", "top_next_tokens": [], "activation_on_continuation": None}]}]
    page = render(*_inputs(), steering)
    assert "<h2>Steering" in page and "ica-3" in page and "x &lt; y" in page and "a &lt;prompt&gt;" in page
    assert "&lt;b&gt;" in page and "<b>" not in page.split("<h2>Steering")[1].split("logit lens")[1].split("</p>")[0]
    assert "+8" in page and "-8" in page and "0.25" in page
    assert "<h2>Steering" not in render(*_inputs())
