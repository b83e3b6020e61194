"""The life of a `litgpt_lite serve` process: SIGTERM and Ctrl-C stop every process, a corrupt checkpoint is one
line and exit code 2, and where the API key comes from."""

import os
import signal
import subprocess
import sys
import threading
import time

import openai
import psutil
import pytest
import requests
from serve_server import API_KEY, Server, chat, free_port


def _stream_in_background(client, started: threading.Event) -> threading.Thread:
    def consume():
        try:
            for _ in chat(client, "Tell me a very long story about a dragon.", max_tokens=200, stream=True):
                started.set()
        except openai.APIError:  # the server goes away mid-answer
            pass

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    return thread


def test_smollm2_answers_and_sigterm_stops_every_process(smollm2_lit, tmp_path):
    srv = Server.cli(smollm2_lit, tmp_path / "smollm2.log", "--max_batch_size", "2")
    try:
        client = srv.client(api_key="unused")
        r = chat(client, "What is the capital of France?", max_tokens=20, temperature=0)
        assert "Paris" in r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop"  # the model ended its turn (<|im_end|>) before 20 tokens
        short = r.usage.completion_tokens
        question = "What is the capital of France?"
        r = chat(client, question, max_tokens=20, temperature=0, extra_body={"ignore_eos": True})
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


def test_ctrl_c_stops_every_process_and_the_key_flag_beats_the_environment(tiny_checkpoint, tmp_path):
    env = {"LITGPT_LITE_API_KEY": "from-the-environment"}
    srv = Server.cli(tiny_checkpoint, tmp_path / "ctrl_c.log", "--api_key", "from-the-flag", env=env)
    try:
        models = f"{srv.url}/v1/models"
        assert requests.get(models, headers={"Authorization": "Bearer from-the-flag"}).status_code == 200
        assert requests.get(models, headers={"Authorization": "Bearer from-the-environment"}).status_code == 401
        assert "requests need the API key from --api_key" in srv.log.read_text()
        children = psutil.Process(srv.proc.pid).children(recursive=True)
        os.killpg(srv.proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: the whole foreground group
        srv.proc.wait(30)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"processes left running after Ctrl-C: {alive}"
        assert "Traceback" not in srv.log.read_text()
    finally:
        srv.stop()


def test_api_key_from_the_environment(faulty_server):
    """The faulty server got its key only from LITGPT_LITE_API_KEY (nothing on its command line)."""
    assert "requests need the API key from LITGPT_LITE_API_KEY" in faulty_server.log.read_text()
    with pytest.raises(openai.AuthenticationError):
        faulty_server.client(api_key="wrong").models.list()
    assert requests.get(f"{faulty_server.url}/v1/models").status_code == 401
    assert [m.id for m in faulty_server.client(API_KEY).models.list().data] == ["tiny"]


def test_corrupt_checkpoint_is_one_line_and_exit_code_2(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "lit_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a truncated download
    cmd = [sys.executable, "-m", "litgpt_lite", "serve", str(broken), "--port", str(free_port())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(broken) in lines[0], done.stderr
