"""``vllm serve --speculative-model self-skip`` end to end on loopback.

A plain server and a self_skip server run side by side (float32, eager). Greedy
completions and chat completions, streamed and not, must match token for token;
/metrics must show the speculative-decoding counters; 64 concurrent streams with a
quarter of the clients disconnecting mid-stream must each match plain vLLM's output and
leave the server healthy.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from integration_tests.helpers import first_difference
from integration_tests.server import ENGINE_STARTED, INFO_LOGS, VllmServer
from vllm_selfspec.tools.prompts import load_prompt_set

pytestmark = pytest.mark.engine

COMMON = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024",
          "--kv-cache-memory-bytes", str(256 << 20), "--seed", "0"]


SELF_SKIP_K4 = ["--speculative-model", "self-skip", "--num-speculative-tokens", "4",
                "--speculative-config", '{"num_speculative_tokens_per_batch_size": [[1, 1, 4]]}']
"""self_skip with K=4 held at every batch size: the shipped profile's schedule, measured on
this CPU, may turn drafting off, and these tests check the drafts themselves."""


@pytest.fixture(scope="module")
def servers(default_model, tmp_path_factory):
    logs = tmp_path_factory.mktemp("server-logs")
    plain = VllmServer(default_model, *COMMON, log_path=logs / "plain.log", env=INFO_LOGS)
    self_skip = VllmServer(default_model, *COMMON, *SELF_SKIP_K4, log_path=logs / "self_skip.log", env=INFO_LOGS)
    try:
        for server in (plain, self_skip):
            server.start()
        for server in (plain, self_skip):
            server.wait_ready()
        yield {"plain": plain, "self_skip": self_skip}
    finally:
        for server in (plain, self_skip):
            server.stop()


def _completion(url: str, model: str, prompt: str, stream: bool) -> tuple[str, str]:
    body = {"model": model, "prompt": prompt, "max_tokens": 64, "temperature": 0.0, "stream": stream}
    if not stream:
        choice = httpx.post(f"{url}/v1/completions", json=body, timeout=300).json()["choices"][0]
        return choice["text"], choice["finish_reason"]
    text, finish = "", None
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line[6:])["choices"][0]
                text += choice["text"]
                finish = choice.get("finish_reason") or finish
    return text, finish


def _chat(url: str, model: str, question: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "max_tokens": 64, "temperature": 0.0}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300).json()["choices"][0]["message"]["content"]


def test_outputs_identical_streamed_and_not(servers, default_model):
    questions = load_prompt_set("chat")[:6]
    for stream in (False, True):
        for question in questions:
            prompt = f"Question: {question}\nAnswer:"
            expected = _completion(servers["plain"].url, default_model, prompt, stream=False)
            assert _completion(servers["self_skip"].url, default_model, prompt, stream) == expected
    for question in questions[:3]:
        assert _chat(servers["self_skip"].url, default_model, question) == _chat(
            servers["plain"].url, default_model, question)


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_metrics_endpoint_counts_self_skip(servers, default_model):
    _completion(servers["self_skip"].url, default_model, "Question: Why is the sky blue?\nAnswer:", False)
    text = httpx.get(f"{servers['self_skip'].url}/metrics", timeout=30).text
    drafts = _metric(text, "vllm:spec_decode_num_drafts_total")
    assert drafts > 0
    # At most K=4 per draft; fewer where the shipped profile's adaptive exit ended a draft early.
    assert 0 < _metric(text, "vllm:spec_decode_num_draft_tokens_total") <= 4 * drafts
    accepted = _metric(text, "vllm:spec_decode_num_accepted_tokens_total")
    positions = re.findall(r'^vllm:spec_decode_num_accepted_tokens_per_pos_total{[^}]*position="(\d)"[^}]*} (\S+)$',
                           text, re.M)
    assert sorted(p for p, _ in positions) == ["0", "1", "2", "3"]
    assert sum(float(v) for _, v in positions) == accepted > 0


async def _stream(client: httpx.AsyncClient, url: str, model: str, prompt: str, abort_after: int | None):
    body = {"model": model, "prompt": prompt, "max_tokens": 48, "temperature": 0.0, "stream": True,
            "ignore_eos": True}
    chunks, finish, text = 0, None, ""
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks += 1
                choice = json.loads(line[6:])["choices"][0]
                text += choice["text"]
                finish = choice.get("finish_reason") or finish
                if abort_after is not None and chunks >= abort_after:
                    return "aborted", chunks, text  # leaving the block closes the connection
    return finish, chunks, text


async def _plain_completion(client: httpx.AsyncClient, url: str, model: str, prompt: str) -> str:
    """Plain vLLM's text for ``_stream``'s request (greedy, 48 tokens, ignore_eos), not streamed."""
    body = {"model": model, "prompt": prompt, "max_tokens": 48, "temperature": 0.0, "ignore_eos": True}
    response = await client.post(f"{url}/v1/completions", json=body)
    return response.json()["choices"][0]["text"]


def test_concurrent_streams_with_disconnects(servers, default_model):
    url = servers["self_skip"].url
    questions = load_prompt_set("chat")
    prompts = [f"Question: {questions[i % len(questions)]}\nAnswer:" for i in range(64)]

    async def main():
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=httpx.Timeout(300), limits=limits) as client:
            jobs = [_stream(client, url, default_model, prompt, abort_after=3 if i % 4 == 0 else None)
                    for i, prompt in enumerate(prompts)]
            results = await asyncio.wait_for(asyncio.gather(*jobs), timeout=600)
            # Plain vLLM's output for every prompt a stream completed (float32 plain is batch-invariant).
            unique = sorted({p for p, r in zip(prompts, results) if r[0] == "length"})
            plain_texts = await asyncio.wait_for(asyncio.gather(
                *(_plain_completion(client, servers["plain"].url, default_model, p) for p in unique)), timeout=600)
            return results, dict(zip(unique, plain_texts))

    results, plain = asyncio.run(main())
    aborted = [r for r in results if r[0] == "aborted"]
    completed = [(p, r) for p, r in zip(prompts, results) if r[0] == "length"]
    assert len(aborted) == 16 and len(completed) == 48, results
    # Every completed stream is token for token plain vLLM's greedy output for its prompt.
    differing = [p for p, (_, _, text) in completed if text != plain[p]]
    assert not differing, f"{len(differing)} of 48 streams differ from plain vLLM, e.g. {differing[0]!r}"
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    text = httpx.get(f"{url}/metrics", timeout=30).text
    assert _metric(text, "vllm:num_requests_running") == 0
    assert _metric(text, "vllm:num_requests_waiting") == 0
    # Still serving, still lossless after the disconnects.
    prompt = "Question: Why is the sky blue?\nAnswer:"
    assert _completion(url, default_model, prompt, False) == _completion(
        servers["plain"].url, default_model, prompt, False)


def test_self_skip_announces_itself_in_the_server_log(servers):
    log = servers["self_skip"].log_path.read_text()
    assert "self_skip proposer on CPUModelRunner (vLLM V1 model runner)" in log
    assert "self_skip proposer" not in servers["plain"].log_path.read_text()


def test_started_engines_log_the_engine_marker(servers):
    """The other side of the refusal tests' guard: a server that started an engine logs its markers."""
    for name, server in servers.items():
        log = server.log_path.read_text()
        assert ENGINE_STARTED in log and "(EngineCore" in log, name


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--speculative-model", "self-skip", "--speculative-config", '{"skip_profile": "/no/such/profile.json"}'],
         ["skip_profile", "/no/such/profile.json", "does not exist"]),
        (["--speculative-model", "self-skip", "--num-speculative-tokens", "0"],
         ["--num-speculative-tokens: must be at least 1"]),
        (["--speculative-model", "self-skip", "--speculative-config", '{"skip_atn": [3]}'],
         ["skip_atn", "skip_attn"]),
    ],
    ids=["missing-profile", "zero-draft-tokens", "misspelt-option"],
)
def test_bad_input_stops_the_server_before_any_worker(default_model, tmp_path, flags, words):
    # INFO, so that an engine that did start would leave ENGINE_STARTED in the log.
    server = VllmServer(default_model, *COMMON, *flags, log_path=tmp_path / "server.log", env=INFO_LOGS).start()
    try:
        assert server.process.wait(timeout=120) != 0
    finally:
        server.stop()
    log = server.log_path.read_text()
    for word in words:
        assert word in log, log[-2000:]
    if "usage: vllm serve" not in log:  # past argument parsing, the INFO log shows it was on
        assert "non-default args" in log, log[-2000:]
    assert ENGINE_STARTED not in log and "EngineCore" not in log  # refused before any engine process


NEAR_TIE_EPSILON = 0.5
"""The core issue's bfloat16 rule (see test_lossless.py): a divergence must sit at a plain-model
top-two logprob gap below this many nats."""


def _token_ids_and_top2(url: str, model: str, prompt: str, stream: bool) -> tuple[list[str], list[dict]]:
    body = {"model": model, "prompt": prompt, "max_tokens": 64, "temperature": 0.0, "stream": stream,
            "logprobs": 2, "return_tokens_as_token_ids": True}
    if not stream:
        logprobs = httpx.post(f"{url}/v1/completions", json=body, timeout=300).json()["choices"][0]["logprobs"]
        return logprobs["tokens"], logprobs["top_logprobs"]
    tokens, tops = [], []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                logprobs = json.loads(line[6:])["choices"][0]["logprobs"] or {}
                tokens += logprobs.get("tokens") or []
                tops += logprobs.get("top_logprobs") or []
    return tokens, tops


def test_bfloat16_server_divergences_are_near_ties(default_model, tmp_path):
    args = ["--dtype", "bfloat16", *COMMON[2:]]
    plain = VllmServer(default_model, *args, log_path=tmp_path / "plain.log")
    self_skip = VllmServer(default_model, *args, *SELF_SKIP_K4, log_path=tmp_path / "self_skip.log")
    try:
        for server in (plain, self_skip):
            server.start()
        for server in (plain, self_skip):
            server.wait_ready()
        diverged = 0
        questions = load_prompt_set("chat")[:8]
        for question in questions:
            prompt = f"Question: {question}\nAnswer:"
            expected, tops = _token_ids_and_top2(plain.url, default_model, prompt, stream=False)
            for stream in (False, True):
                got, _ = _token_ids_and_top2(self_skip.url, default_model, prompt, stream)
                at = first_difference(expected, got)
                if at is None:
                    continue
                diverged += 1
                assert at < len(expected) and at < len(got), f"{question!r}: lengths differ without a token flip"
                best, second = sorted(tops[at].values(), reverse=True)[:2]
                assert best - second < NEAR_TIE_EPSILON, f"{question!r} (stream={stream}) diverges at token {at}"
        assert diverged <= len(questions)  # at most half of the 16 comparisons
        # The comparisons measured drafts: the self_skip server drafted (K=4 held), plain did not.
        assert _metric(httpx.get(f"{self_skip.url}/metrics", timeout=30).text,
                       "vllm:spec_decode_num_drafts_total") > 0
        assert _metric(httpx.get(f"{plain.url}/metrics", timeout=30).text, "vllm:spec_decode_num_drafts_total") == 0
    finally:
        for server in (plain, self_skip):
            server.stop()
