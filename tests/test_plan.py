"""The cost plan: every ladder row fits the machine the README sizes it for, the terms follow the
shapes they count, and bad input is one line."""

import dataclasses

import pytest
from conftest import REPO

from darkmatter import plan
from darkmatter.config import load_params

PARAMS = REPO / "params.yaml"
GEMM = 150e9  # a fixed CPU rate, so the tests do not time anything


def costs(run, device="cpu", **sizes):
    r = load_params(PARAMS).run(run, check_chunks=False)
    for section, values in sizes.items():
        r = dataclasses.replace(r, **{section: dataclasses.replace(getattr(r, section), **values)})
    rates = plan.Rates.gpu("bfloat16", None) if device == "cuda" else plan.Rates.cpu(GEMM)
    return {c.stage: c for c in plan.plan(r, device, rates)}


def test_every_ladder_row_fits_one_80_gb_gpu_and_a_64_gb_host():
    params = load_params(PARAMS)
    for name, definition in params.run_definitions.items():
        if definition.sae.source != "pretrained" or definition.planned:
            continue
        result = plan.plan_run(PARAMS, name, "cuda", startup_seconds=10.0)
        assert plan.fits(result, "cuda") == [], name


def test_a_row_that_does_not_fit_says_which_stage_and_why():
    r = load_params(PARAMS).run("gemma-3-12b-262k", check_chunks=False)
    r = dataclasses.replace(r, subject=dataclasses.replace(r.subject, dtype="float32"))
    problems = plan.fits(plan.plan(r, "cuda", plan.Rates.gpu("float32", None)), "cuda")
    # 12B in float32: TransformerLens's load holds ~2x 54 GB of weights on the host
    hosts = [p for p in problems if "host" in p]
    assert {p.split(":")[0] for p in hosts} == {"activations", "eval_sae", "causal", "probes"}
    assert all("> 64 GiB" in p for p in hosts)
    # and 48 GB of float32 weights on the GPU leave no room for SAELens's cross-check at width 262k
    assert [p.split(":")[0] for p in problems if "GPU" in p] == ["eval_sae"]


def test_widths_come_from_the_sae_ids():
    params = load_params(PARAMS)
    assert plan.sae_width(params.run("gemma-3-1b-262k", check_chunks=False)) == 262144
    assert plan.sae_width(params.run("gemma-3-270m-gs2-16k", check_chunks=False)) == 16384
    assert plan.sae_width(params.run("gpt2-small", check_chunks=False)) == 24576
    assert plan.sae_width(params.run("gemma-2-2b-l20", check_chunks=False)) == 16384
    assert plan.sae_width(params.run("gemma-3-270m-l9", check_chunks=False)) == params.sae.width


def test_the_terms_scale_with_what_they_count():
    base = costs("gemma-3-1b-262k")
    double = costs("gemma-3-1b-262k", activations={"n_tokens": 2 * 1048576})
    # the cache's bytes and the forward's time (beyond loading the weights) are linear in tokens;
    # the model's memory is not
    assert double["activations"].disk_bytes == pytest.approx(2 * base["activations"].disk_bytes, rel=0.01)
    load = plan.model_shape("google/gemma-3-1b-pt").weight_count() * plan.MODEL_LOAD_SECONDS_PER_WEIGHT
    assert double["activations"].seconds - load == pytest.approx(2 * (base["activations"].seconds - load), rel=1e-6)
    assert double["activations"].host_bytes == pytest.approx(base["activations"].host_bytes)
    # compare's cosines are linear in the directions it compares (k + n_random + n_rotations·k)
    more = costs("gemma-3-1b-262k", compare={"n_rotations": 2000})
    k, n_random, n_rot = 128, 10000, 1000
    load_sae = base["sae"].disk_bytes / plan.LOAD_BYTES_PER_S
    ratio = (k + n_random + 2 * n_rot * k) / (k + n_random + n_rot * k)
    assert more["compare"].seconds - load_sae == pytest.approx(ratio * (base["compare"].seconds - load_sae), rel=1e-3)


def test_bfloat16_on_cuda_halves_the_model_on_the_device():
    cpu, cuda = costs("gemma-3-1b-262k"), costs("gemma-3-1b-262k", "cuda")
    weights = plan.model_shape("google/gemma-3-1b-pt").weight_count()
    assert cpu["activations"].gpu_bytes == 0
    assert cuda["activations"].gpu_bytes > weights * 2 and cuda["activations"].gpu_bytes < weights * 4


def test_unknown_run_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        plan.main(["no-such-run", "--device", "cuda"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no-such-run" in err and "gemma-3-1b-262k" in err
