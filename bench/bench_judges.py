"""Autointerp judges: what each local judge can see on the run's calibration units, and its cost.

    python bench/bench_judges.py [--run gemma-3-270m-l9] [--judges smollm2-135m qwen2.5-coder-1.5b]
                                 [--scorers likelihood yes_no] [--numerics float32 bfloat16 int8 ct2-int8 ct2-float32] [--title T]

For each local judge (prepared into ``data/scratch/judges/<name>`` unless the ``judge_model`` stage
built it; the Qwen judge needs its 22 PyPI parts, see the README), on the calibration units of
the run's examples (``dvc repro examples@<run>`` first), with no response cache (every request
is computed and timed):

- for each scorer (``autointerp.scorer``): ``likelihood``, the judge's mean log-probability of
  the explanation after the marked excerpt, and ``yes_no``, log P(Yes) − log P(No) of its answer;
- **ceiling**: each unit's held-out detection contexts scored against its true explanation; AUC
  per unit, mean with a bootstrap CI over units;
- **mismatched control**: the same contexts scored against the *next* unit's true explanation (as
  the stage's ``calibration_shuffled`` group does), and the paired difference with its sign-flip
  permutation p. A judge that reads the explanation falls to chance here; one that scores the
  excerpt alone (a marked digit looks "active" whatever the question) keeps its AUC;
- **cost**: load time, seconds per detection and per explanation (one per unit, generated),
  seconds per unit (one explanation and ``detect_positives + detect_negatives`` detections),
  and the autointerp stage's judge time projected to the params' unit counts;
- ``--numerics``: the arithmetic each judge runs in (default float32, the stage's):
  - ``int8``: its transformer's linear layers dynamically quantised to int8
    (``torch.ao.quantization.quantize_dynamic``, per-channel weights; the unembedding stays float32),
    the cheapest speed-up on a CPU without bf16 kernels;
  - ``bfloat16``: the whole model in torch bfloat16, fast only on CPUs with bf16 units (AMX,
    avx512_bf16: the flags are recorded with the table);
  - ``ct2-int8``, ``ct2-float32``: the same weights converted to CTranslate2 (once, into
    ``data/scratch/ct2/``; ``pip install ctranslate2``, not a dependency of the pipeline), scored with
    ``Generator.score_batch`` (per-token log-probabilities: a continuation's mean; P(Yes) and P(No)
    as the last token of two scored sequences, so twice the tokens) and explained with
    ``generate_batch``. CTranslate2 has no bfloat16 on CPU (``get_supported_compute_types``).
  What each costs in AUC, beside what it saves in time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def judge_weights(name: str) -> Path:
    from darkmatter.data.models import prepare_weights

    built = REPO / "data/models/judges" / name
    if (built / "model.safetensors").exists():
        return built
    out = REPO / "data/scratch/judges" / name
    if not (out / "model.safetensors").exists():
        prepare_weights(name, out, REPO / "data/scratch/gguf")
    return out


NUMERICS = ("float32", "bfloat16", "int8", "ct2-int8", "ct2-float32")


class CT2Judge:
    """A local judge's requests through CTranslate2, answered as :class:`LocalBackend` answers them."""

    def __init__(self, model: str, weights: Path, compute_type: str):
        import ctranslate2

        from darkmatter.interp.llm import LocalPrompts

        converted = REPO / "data/scratch/ct2" / weights.name
        if not (converted / "model.bin").exists():
            ctranslate2.converters.TransformersConverter(str(weights)).convert(str(converted), force=True)
        self.model, self.prompts = model, LocalPrompts(weights)
        self.tokenizer = self.prompts.tokenizer
        self.generator = ctranslate2.Generator(str(converted), device="cpu", compute_type=compute_type)

    def _tokens(self, text: str) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def complete_batch(self, reqs):
        from darkmatter.interp.llm import Response

        out = []
        for req in reqs:  # the generator batches internally; one request's sequences at a time keeps it simple
            if req.continuation is not None:
                prompt, cont = self._tokens(req.prompt), self._tokens(req.continuation)
                logp = self.generator.score_batch([prompt + cont])[0].log_probs  # every token after the first
                out.append(Response("", {"continuation": sum(logp[-len(cont):]) / len(cont)},
                                    {"input_tokens": len(prompt) + len(cont)}))
            elif req.want_logprobs:
                text = self._tokens(self.prompts.text(req))
                yes, no = self.tokenizer.convert_ids_to_tokens(list(self.prompts.answer_ids))
                scored = self.generator.score_batch([text + [yes], text + [no]])
                lp = {"yes": scored[0].log_probs[-1], "no": scored[1].log_probs[-1]}
                out.append(Response("Yes" if lp["yes"] > lp["no"] else "No", lp, {"input_tokens": 2 * len(text)}))
            else:
                text = self._tokens(self.prompts.text(req))
                result = self.generator.generate_batch([text], max_length=req.max_tokens, sampling_topk=1,
                                                       include_prompt_in_result=False)[0]
                out.append(Response(self.tokenizer.decode(result.sequences_ids[0], skip_special_tokens=True).strip(),
                                    None, {"input_tokens": len(text)}))
        return out


def load(name: str, units: list[dict], cfg, numerics: str = "float32"):
    """The judge in ``numerics``, its load time, and its seconds per explanation (one per unit, generated)."""
    import torch

    from darkmatter.config import LOCAL_JUDGES
    from darkmatter.interp.autointerp import explain_request
    from darkmatter.interp.llm import LocalBackend

    start = time.perf_counter()
    if numerics.startswith("ct2-"):
        judge = CT2Judge(LOCAL_JUDGES[name], judge_weights(name), numerics.removeprefix("ct2-"))
    else:  # bfloat16 as the stage runs it (autointerp.local_numerics)
        judge = LocalBackend(LOCAL_JUDGES[name], judge_weights(name), numerics="bfloat16" if numerics == "bfloat16" else "float32")
    if numerics == "int8":
        import warnings

        with warnings.catch_warnings():  # torch.ao.quantization is deprecated; torch is pinned at 2.13
            warnings.simplefilter("ignore")
            judge.lm.model = torch.ao.quantization.quantize_dynamic(
                judge.lm.model, {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig})
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    judge.complete_batch([explain_request(u, cfg.explain_top) for u in units])
    return judge, load_s, (time.perf_counter() - start) / len(units)


def measure(judge, scorer: str, units: list[dict], cfg) -> dict:
    from sklearn.metrics import roc_auc_score

    from darkmatter.interp.autointerp import detect_request, detection_set
    from darkmatter.stats import mean_with_ci, paired_difference

    sets = [detection_set(u, cfg.calibration_contexts, cfg.calibration_contexts) for u in units]  # as the stage's ceiling
    out = {}
    detect_s, n_detect, n_tokens = 0.0, 0, 0
    aucs_by = {}
    for label, shift in (("ceiling", 0), ("mismatched", 1)):
        requests = [detect_request(f"{u['id']}/{label}", units[(j + shift) % len(units)]["explanation"], ctx, i, scorer)
                    for j, u in enumerate(units) for i, (ctx, _) in enumerate(sets[j])]
        start = time.perf_counter()
        answers = judge.complete_batch(requests)
        detect_s += time.perf_counter() - start
        n_detect += len(requests)
        n_tokens += sum(a.usage["input_tokens"] for a in answers)
        aucs, at = [], 0
        for s in sets:
            scores = [a.logprobs["continuation"] if scorer == "likelihood" else a.logprobs["yes"] - a.logprobs["no"]
                      for a in answers[at : at + len(s)]]
            aucs.append(roc_auc_score([lab for _, lab in s], scores))
            at += len(s)
        out[label] = mean_with_ci(aucs, 2000, np.random.default_rng(0))
        aucs_by[label] = np.array(aucs)
    out["reads"] = paired_difference(aucs_by["ceiling"], aucs_by["mismatched"], 2000, np.random.default_rng(0))
    out["detect_s"] = detect_s / n_detect
    out["prompt_tok_s"] = n_tokens / detect_s
    return out


def row(judge: str, scorer: str, m: dict, per_unit_detections: int, n_explain: int, n_detect: int) -> str:
    """A table row, with the autointerp stage projected to the params' unit counts."""
    stage = m["load_s"] + n_explain * m["explain_s"] + n_detect * m["detect_s"]
    reads = m["reads"]
    return (f"| {judge} | {scorer} | {m['ceiling']['mean']:.2f} [{m['ceiling']['ci'][0]:.2f}, "
            f"{m['ceiling']['ci'][1]:.2f}] | {m['mismatched']['mean']:.2f} [{m['mismatched']['ci'][0]:.2f}, "
            f"{m['mismatched']['ci'][1]:.2f}] | {reads['difference']:+.2f}, p = {reads['p_permutation']:.3f} | "
            f"{m['load_s']:.0f} s | {m['detect_s']:.2f} s ({m['prompt_tok_s']:.0f} prompt tok/s) | {m['explain_s']:.1f} s | "
            f"{m['explain_s'] + per_unit_detections * m['detect_s']:.1f} s | {stage / 60:.0f} min |")


def main() -> None:
    import json

    from darkmatter.config import LOCAL_JUDGES, load_params

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="gemma-3-270m-l9")
    parser.add_argument("--judges", nargs="+", default=list(LOCAL_JUDGES), choices=list(LOCAL_JUDGES))
    parser.add_argument("--scorers", nargs="+", default=["likelihood", "yes_no"], choices=["likelihood", "yes_no"])
    parser.add_argument("--numerics", nargs="+", default=["float32"], choices=NUMERICS,
                        help="the arithmetic of each judge (module docstring)")
    parser.add_argument("--title", default="Autointerp judges", help="the bench/RESULTS.md section written")
    args = parser.parse_args()
    cfg = load_params(REPO / "params.yaml").run(args.run).autointerp
    examples = json.loads((REPO / f"data/runs/{args.run}/examples/examples.json").read_text())
    units = [u for u in examples["units"] if u["kind"] == "calibration"]
    per_unit_detections = cfg.detect_positives + cfg.detect_negatives
    n_explain = 2 * cfg.n_ica_units + cfg.n_random_units + len(units)
    ceiling_detections = 2 * cfg.calibration_contexts
    n_detect = n_explain * per_unit_detections + 2 * len(units) * ceiling_detections
    rows = []
    for name in args.judges:
        for numerics in args.numerics:
            judge, load_s, explain_s = load(name, units, cfg, numerics)
            for scorer in args.scorers:
                m = measure(judge, scorer, units, cfg) | {"load_s": load_s, "explain_s": explain_s}
                label = LOCAL_JUDGES[name] + ("" if numerics == "float32" else f" ({numerics})")
                rows.append(row(label, scorer, m, per_unit_detections, n_explain, n_detect))
                print(rows[-1], flush=True)
            del judge  # one judge in memory at a time (the 1.5B one needs ~9 GB)
    body = f"""
Run {args.run}: its {len(units)} calibration units (token classes of known meaning), up to {ceiling_detections} held-out
detection contexts each (`autointerp.calibration_contexts` per class, as the stage's ceiling), every request computed (no cache). Scorers: *likelihood*, the judge's mean log-probability
of the explanation after the marked excerpt; *yes_no*, log P(Yes) − log P(No) of its answer. AUC per unit, mean
with a 95% bootstrap CI over units. *Mismatched*: the same contexts scored against the next unit's true explanation;
a judge that reads the explanation falls to 0.5 there (paired difference, sign-flip permutation p). Projected stage
time: load, {n_explain} explanations and {n_detect} detections (the params' unit counts and context counts, calibration
units detected three times).

| judge | scorer | AUC, true explanation (ceiling) | AUC, mismatched explanation | ceiling − mismatched | load | per detection | per explanation | per unit | projected autointerp stage |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
    write_section(args.title, body)
    print(body)


if __name__ == "__main__":
    main()
