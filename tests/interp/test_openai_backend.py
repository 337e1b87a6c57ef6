"""The openai backend through the real ``openai`` client against an OpenAI-compatible server on
127.0.0.1: explanations, Yes/No log-probabilities, the likelihood scorer through echoed
completions, retries, the refusals of servers that lack a feature, and replay from the cache."""

import json

import pytest
from fake_openai import YES_MARK, FakeOpenAI, word_logprob

from darkmatter.config import AutointerpConfig
from darkmatter.errors import UserError
from darkmatter.interp.llm import CachedLLM, ReplayBackend, Request, ResponseCache, request_key
from darkmatter.interp.openai_backend import OpenAIBackend, openai_params, yes_no_logprobs

MODEL = "Qwen/Qwen2.5-7B-Instruct"
EXPLAIN = Request("ica-0", "system prompt", "Excerpts ... What does the unit respond to?", 40)
YES = Request("ica-0/detect0", "detect system", f"Excerpt: {YES_MARK} cat\n\nDoes it? Answer Yes or No.", 3, want_logprobs=True)
NO = Request("ica-0/detect1", "detect system", "Excerpt: dog\n\nDoes it? Answer Yes or No.", 3, want_logprobs=True)
LIKELY = Request("ica-0/detect2", "", "Text: the cat sat.\nThe marked token is", continuation=" fires on cats")


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def backend(server, **kw):
    return OpenAIBackend(MODEL, base_url=server.url, **kw)


def test_explanations_and_yes_no_log_probabilities_come_from_chat_completions(tmp_path):
    with FakeOpenAI() as server:
        llm = CachedLLM(backend(server), ResponseCache(tmp_path), concurrency=2)
        explained, yes, no = llm.run([EXPLAIN, YES, NO])
        assert explained.text.startswith("explanation") and explained.logprobs is None
        assert yes.text == "Yes" and no.text == "No"
        # P(Yes) adds the listed spellings: "Yes" (-0.1) and " yes" (-4.0)
        assert yes.logprobs["yes"] == pytest.approx(-0.1 + __import__("math").log1p(__import__("math").exp(-3.9)))
        assert yes.logprobs["no"] == -2.5 and not yes.logprobs["no_bound"]
        assert no.logprobs["yes"] > no.logprobs["no"] - 10 and no.logprobs["yes"] < no.logprobs["no"]
        sent = {r["body"]["messages"][-1]["content"]: r["body"] for r in server.requests}
        assert sent[YES.prompt]["logprobs"] is True and sent[YES.prompt]["top_logprobs"] == 20
        assert sent[YES.prompt]["max_tokens"] == 1 and "logprobs" not in sent[EXPLAIN.prompt]
        assert all(r["path"] == "/v1/chat/completions" for r in server.requests)
        assert llm.stats["calls"] == 3 and llm.stats["input_tokens"] == 150 and llm.cost_usd() is None


def test_a_word_outside_the_listed_alternatives_gets_their_floor_and_is_marked():
    lp = yes_no_logprobs([{"token": "Yes", "logprob": -0.01}, {"token": "Maybe", "logprob": -6.0}])
    assert lp["no"] == -6.0 and lp["no_bound"] and not lp["yes_bound"]


def test_the_likelihood_scorer_reads_the_echoed_continuation_tokens(tmp_path):
    with FakeOpenAI() as server:
        resp = CachedLLM(backend(server), ResponseCache(tmp_path)).run([LIKELY])[0]
        planted = sum(word_logprob(w) for w in LIKELY.continuation.split()) / 3
        assert resp.logprobs["continuation"] == pytest.approx(planted), "the prompt's and the generated tokens are left out"
        body = server.requests[0]["body"]
        assert server.requests[0]["path"] == "/v1/completions" and body["echo"] is True and body["logprobs"] == 1
        assert body["prompt"] == LIKELY.prompt + LIKELY.continuation and "prompt_chars" not in body


def test_429_then_success_uses_the_clients_retries_and_caches_once(tmp_path):
    with FakeOpenAI(script=[429]) as server:
        llm = CachedLLM(backend(server, max_retries=2), ResponseCache(tmp_path))
        first = llm.run([EXPLAIN])[0]
        assert len(server.requests) == 2 and llm.stats["calls"] == 1
        again = CachedLLM(backend(server), ResponseCache(tmp_path))
        assert again.run([EXPLAIN])[0].text == first.text and len(server.requests) == 2
        assert again.stats["calls"] == 0 and again.stats["cache_hits"] == 1


def test_a_server_error_is_one_line_and_caches_nothing(tmp_path):
    with FakeOpenAI(script=[500] * 5) as server:
        with pytest.raises(UserError, match=r"refused unit ica-0's chat request after retries: 500") as err:
            CachedLLM(backend(server, max_retries=1), ResponseCache(tmp_path)).run([EXPLAIN])
        assert "\n" not in str(err.value) and len(server.requests) == 2
    assert not list(tmp_path.rglob("*.json"))


def test_an_unreachable_server_is_one_line_and_caches_nothing(tmp_path):
    with FakeOpenAI() as server:
        url = server.url
    with pytest.raises(UserError, match="cannot reach http://127.0.0.1:.*start the server or fix autointerp.base_url"):
        CachedLLM(OpenAIBackend(MODEL, base_url=url, max_retries=0), ResponseCache(tmp_path)).run([EXPLAIN])
    assert not list(tmp_path.rglob("*.json"))


def test_a_server_without_echo_or_logprobs_fails_the_likelihood_scorer_with_the_fix(tmp_path):
    with FakeOpenAI(echo=False) as server:  # llama.cpp's server
        with pytest.raises(UserError, match="400 'echo' is not supported"):
            CachedLLM(backend(server, max_retries=0), ResponseCache(tmp_path)).run([LIKELY])
    with FakeOpenAI(logprobs=False) as server:
        with pytest.raises(UserError, match="no log-probabilities of the echoed prompt.*use autointerp.scorer: yes_no"):
            CachedLLM(backend(server), ResponseCache(tmp_path)).run([LIKELY])
    assert not list(tmp_path.rglob("*.json"))


def test_a_yes_no_answer_without_log_probabilities_is_the_answer_alone(tmp_path):
    with FakeOpenAI(logprobs=False) as server:
        resp = CachedLLM(backend(server), ResponseCache(tmp_path)).run([YES])[0]
    assert resp.text == "Yes" and resp.logprobs is None


def test_replay_serves_the_openai_cache_with_no_request(tmp_path):
    with FakeOpenAI() as server:
        live = CachedLLM(backend(server), ResponseCache(tmp_path)).run([EXPLAIN, YES, LIKELY])
    replay = CachedLLM(ReplayBackend(MODEL, "openai", lambda req: openai_params(MODEL, req)), ResponseCache(tmp_path))
    again = replay.run([EXPLAIN, YES, LIKELY])
    assert [(r.text, r.logprobs) for r in again] == [(r.text, r.logprobs) for r in live]
    assert replay.stats["calls"] == 0 and replay.stats["cache_hits"] == 3
    # the key is the exact request: another model, or another question, is another entry
    key = request_key(OpenAIBackend(MODEL, base_url="http://127.0.0.1:9/v1"), YES)
    assert key != request_key(OpenAIBackend("other", base_url="http://127.0.0.1:9/v1"), YES)
    assert (tmp_path / key[:2] / f"{key}.json").exists()


def test_the_key_is_read_from_the_environment_and_never_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-42")
    with FakeOpenAI() as server:
        CachedLLM(backend(server), ResponseCache(tmp_path)).run([EXPLAIN])
        headers = {k.lower(): v for k, v in server.requests[0]["headers"].items()}
        assert headers["authorization"] == "Bearer sk-test-SECRET-42"
    assert all("SECRET" not in p.read_text() for p in tmp_path.rglob("*.json"))


def test_without_a_server_or_a_key_it_says_what_to_set():
    with pytest.raises(UserError, match="OPENAI_API_KEY is not set.*autointerp.base_url"):
        OpenAIBackend(MODEL)


def test_config_accepts_openai_with_either_scorer_and_its_replay():
    for scorer in ("likelihood", "yes_no"):
        AutointerpConfig(backend="openai", model=MODEL, base_url="http://127.0.0.1:8000/v1", scorer=scorer)
    AutointerpConfig(backend="replay", replay_of="openai", model=MODEL)
    assert json.dumps(openai_params(MODEL, YES))  # the key's payload is plain JSON
