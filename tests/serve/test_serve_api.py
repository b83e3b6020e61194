"""The OpenAI API of `litgpt_lite serve`: a real server in a subprocess (conftest.py), driven by the official `openai`
client and raw HTTP for malformed bodies."""

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests
from conftest import BLOCK_SIZE
from serve_faults import FAULT_WORD
from serve_server import API_KEY, Server
from serve_server import chat as _chat


# ---------------------------------------------------------------- the endpoints
def test_health_and_models(server, tiny_checkpoint):
    assert requests.get(f"{server.url}/health").text == "ok"
    models = server.client().models.list()
    assert [m.id for m in models.data] == [tiny_checkpoint.name]


def test_chat_reports_real_usage_and_length(server, tokenizer):
    r = _chat(server.client(), "Say something", max_tokens=5)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say something"}])
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5
    assert r.choices[0].message.content  # greedy text of 5 tokens of a random model: not empty


def test_chat_stream_matches_non_stream(server):
    client = server.client()
    full = _chat(client, "Stream me", max_tokens=6)
    chunks = list(_chat(client, "Stream me", max_tokens=6, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == full.choices[0].message.content
    assert reasons == ["length"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_completions_n2(server):
    r = server.client().completions.create(model="tiny", prompt="Hello world", max_tokens=4, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text == r.choices[1].text  # greedy: both choices agree
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 8


def test_sampling_with_seed_is_reproducible(server):
    client = server.client()
    kwargs = dict(model="tiny", prompt="Once upon", max_tokens=8, temperature=1.5, top_p=0.95, seed=7)
    a = client.completions.create(**kwargs).choices[0].text
    b = client.completions.create(**kwargs).choices[0].text
    assert a == b


def test_stop_string_cuts_and_reports_stop(server):
    client = server.client()
    free = client.completions.create(model="tiny", prompt="The cat", max_tokens=12).choices[0].text
    stop = free[3:6]
    assert len(stop) == 3
    r = client.completions.create(model="tiny", prompt="The cat", max_tokens=12, stop=[stop])
    assert r.choices[0].text == free[: free.find(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt="The cat", max_tokens=12, stop=stop, stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_max_tokens_is_clamped_to_the_context(server, tokenizer):
    prompt = " ".join(["word"] * 240)
    n_prompt = len(tokenizer.encode(prompt))
    r = server.client().completions.create(model="tiny", prompt=prompt, max_tokens=100_000)
    assert r.usage.prompt_tokens == n_prompt
    assert r.usage.completion_tokens == BLOCK_SIZE - n_prompt
    assert r.choices[0].finish_reason == "length"


def test_16_concurrent_clients_get_their_own_answers(server):
    client = server.client()
    prompts = [f"Request number {i}: {word}" for i, word in enumerate("abcdefghijklmnop")]
    expected = [client.completions.create(model="tiny", prompt=p, max_tokens=6).choices[0].text for p in prompts]
    assert len(set(expected)) > 8  # distinct prompts give distinct answers, so a mix-up would show

    def ask(p: str) -> str:
        return client.completions.create(model="tiny", prompt=p, max_tokens=6).choices[0].text

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, prompts))
    assert got == expected
    batch_sizes = [int(line.split("batch of ")[1].split()[0]) for line in server.log_lines("batch of ")]
    assert max(batch_sizes) > 1, "concurrent requests were not batched together"


# ---------------------------------------------------------------- errors
def _post(server: Server, path: str, **kwargs) -> requests.Response:
    return server.post(path, **kwargs)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"model": "tiny"}',  # no messages
        b'{"messages": []}',
        b'{"messages": "hello"}',
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
        b'{"messages": [{"role": "wizard", "content": "hi"}]}',
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
        b"[1, 2]",
        b'{"messages": [{"role": "user", "content": "hi"}], "logprobs": true}',  # unsupported: said, not ignored
    ],
)
def test_bad_requests_get_openai_errors(server, body):
    r = _post(server, "/v1/chat/completions", data=body)
    assert r.status_code in (400, 422)
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error" and error["code"]


def test_too_long_prompt_is_a_400_that_says_so(server):
    with pytest.raises(openai.BadRequestError) as e:
        _chat(server.client(), "hello " * 400)
    assert e.value.status_code == 400
    assert f"the model's context is {BLOCK_SIZE}" in e.value.message
    r = _post(server, "/v1/completions", json={"prompt": "hello " * 400})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_api_key_is_required(server):
    with pytest.raises(openai.AuthenticationError):
        _chat(server.client(api_key="wrong"), "hi", max_tokens=1)
    assert requests.post(f"{server.url}/v1/chat/completions", json={"messages": []}).status_code == 401
    assert requests.get(f"{server.url}/v1/models").status_code == 401
    assert requests.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert requests.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).ok


def test_error_mid_stream_ends_with_an_error_event(faulty_server):
    server = faulty_server  # its worker fails a batch after the first step when a prompt has FAULT_WORD
    client = server.client()
    stream = _chat(client, f"please {FAULT_WORD} now", max_tokens=20, stream=True)
    received = []
    with pytest.raises(openai.APIError, match="Generation failed"):
        for chunk in stream:
            received.append(chunk)
    assert received, "the stream had started before the failure"
    raw = _post(server, "/v1/chat/completions", json={"messages": [{"role": "user", "content": FAULT_WORD}]})
    assert raw.status_code == 500 and "Generation failed" in raw.json()["error"]["message"]
    assert raw.json()["error"]["type"] == "server_error"
    assert _chat(client, "still alive?", max_tokens=2).usage.completion_tokens == 2  # the server survived
