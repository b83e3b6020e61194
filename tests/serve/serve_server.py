"""A real `litgpt_lite serve` in a subprocess, for the tests: started from the command line, or through the Python
API with a worker subclass from serve_faults.py."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import requests

API_KEY = "test-key-123"
HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, cmd: list[str], port: int, log: Path, env: dict | None = None) -> None:
        self.port, self.log = port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            cmd,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self._wait_ready()

    @classmethod
    def cli(cls, checkpoint: Path, log: Path, *args: str, env: dict | None = None) -> "Server":
        """`litgpt_lite serve CHECKPOINT --port P ARGS`."""
        port = free_port()
        cmd = [sys.executable, "-m", "litgpt_lite", "serve", str(checkpoint), "--port", str(port), *args]
        return cls(cmd, port, log, env)

    @classmethod
    def faulty(cls, checkpoint: Path, log: Path, env: dict | None = None, **settings) -> "Server":
        """`litgpt_lite.serve.run(ServeSettings(...), api_class=FaultyGenerationAPI)` in a launcher process."""
        port = free_port()
        settings = json.dumps({"checkpoint_dir": str(checkpoint), "port": port, **settings})
        code = "import sys, serve_faults; serve_faults.main(sys.argv[1])"
        path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
        return cls([sys.executable, "-c", code, settings], port, log, {**(env or {}), "PYTHONPATH": path})

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

    def post(self, path: str, api_key: str = API_KEY, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {api_key}", **kwargs.pop("headers", {})}
        return requests.post(f"{self.url}{path}", headers=headers, timeout=60, **kwargs)

    def log_lines(self, needle: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if needle in line]

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


def chat(client: openai.OpenAI, content: str, **kwargs):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kwargs)
