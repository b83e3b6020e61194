"""`litgpt_lite serve`: a real server in a subprocess, driven by the official `openai` client (and raw HTTP for
malformed bodies). Two servers in all: a tiny random model for the API behaviour, SmolLM2 for one real answer."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import psutil
import pytest
import requests
import torch

from litgpt_lite.checkpoint import save_checkpoint
from litgpt_lite.config import Config
from litgpt_lite.model import GPT
from litgpt_lite.serve import FAULT_ENV
from litgpt_lite.tokenizer import Tokenizer

API_KEY = "test-key-123"
FAULT_WORD = "KABOOM"
BLOCK_SIZE = 256


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, checkpoint: Path, log: Path, *args: str, env: dict | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "litgpt_lite", "serve", str(checkpoint), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"the server was not healthy after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def client(self, api_key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120)

    def stop(self) -> None:
        """SIGTERM to the server process only; kill the whole group if anything is left (a failed test)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def tiny_checkpoint(smollm2_hf, tmp_path_factory) -> Path:
    """A random 2-layer model with SmolLM2's tokenizer (and so its chat template)."""
    torch.manual_seed(0)
    config = Config(
        name="tiny-serve", block_size=BLOCK_SIZE, vocab_size=49152, padding_multiple=64, n_layer=2, n_embd=32,
        n_head=4, n_query_groups=2, intermediate_size=64, norm_class="RMSNorm", mlp_class="LLaMAMLP",
        tie_embeddings=True,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("serve") / "tiny"
    return save_checkpoint(GPT(config), config, out, tokenizer_dir=smollm2_hf)


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    args = ["--api_key", API_KEY, "--temperature", "0", "--max_batch_size", "8", "--batch_timeout", "0.2"]
    srv = Server(tiny_checkpoint, log, *args, env={FAULT_ENV: FAULT_WORD})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint) -> Tokenizer:
    return Tokenizer(tiny_checkpoint)


def _chat(client, content: str, **kwargs):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kwargs)


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
    batch_sizes = [int(line.split("batch of ")[1].split()[0]) for line in _log_lines(server, "batch of ")]
    assert max(batch_sizes) > 1, "concurrent requests were not batched together"


def _log_lines(server: Server, needle: str) -> list[str]:
    return [line for line in server.log.read_text().splitlines() if needle in line]


# ---------------------------------------------------------------- errors
def _post(server: Server, path: str, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}{path}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60, **kwargs)


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


def test_error_mid_stream_ends_with_an_error_event(server):
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


# ---------------------------------------------------------------- the real model, and shutdown
def _stream_in_background(client, started: threading.Event) -> threading.Thread:
    def consume():
        try:
            for _ in _chat(client, "Tell me a very long story about a dragon.", max_tokens=200, stream=True):
                started.set()
        except openai.APIError:  # the server goes away mid-answer
            pass

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    return thread


def test_smollm2_answers_and_sigterm_stops_every_process(smollm2_lit, tmp_path):
    srv = Server(smollm2_lit, tmp_path / "smollm2.log", "--max_batch_size", "2")
    try:
        client = srv.client(api_key="unused")
        r = _chat(client, "What is the capital of France?", max_tokens=20, temperature=0)
        assert "Paris" in r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop"  # the model ended its turn (<|im_end|>) before 20 tokens
        short = r.usage.completion_tokens
        r = _chat(
            client, "What is the capital of France?", max_tokens=20, temperature=0, extra_body={"ignore_eos": True}
        )
        assert (r.choices[0].finish_reason, r.usage.completion_tokens) == ("length", 20)  # vLLM's ignore_eos
        assert short < 20
        children = psutil.Process(srv.proc.pid).children(recursive=True)
        assert children, "LitServe should run workers in child processes"
        started = threading.Event()
        _stream_in_background(client, started)
        assert started.wait(60), "the streaming request never started"
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)  # the server process only, not its group, with a request in flight
        assert srv.proc.wait(30) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"processes left running after SIGTERM: {alive}"
        assert time.monotonic() - t0 < 25
    finally:
        srv.stop()


def test_ctrl_c_stops_every_process(tiny_checkpoint, tmp_path):
    srv = Server(tiny_checkpoint, tmp_path / "ctrl_c.log")
    try:
        children = psutil.Process(srv.proc.pid).children(recursive=True)
        os.killpg(srv.proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: the whole foreground group
        srv.proc.wait(30)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"processes left running after Ctrl-C: {alive}"
        assert "Traceback" not in srv.log.read_text()
    finally:
        srv.stop()
