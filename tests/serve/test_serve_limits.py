"""What careless or hostile clients cannot do to `litgpt_lite serve`: send unbounded bodies, stall the event loop with
huge prompts, keep the model busy for a client that left, ask for unbounded choices, or get a 500 or a non-OpenAI
error body."""

import json
import random
import socket
import threading
import time

import requests
from serve_faults import STEP_SECONDS
from serve_server import API_KEY, Server


def _request_head(server: Server, path: str, length: int | None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\n{size}{extra}\r\n"
    ).encode()


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int(headers[b"content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), json.loads(body[:length])


def _assert_openai_error(body: dict, code: str) -> None:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == code and body["error"]["message"], body


# ---------------------------------------------------------------- request bodies
def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(_request_head(server, "/v1/chat/completions", 5_000_000))  # the body never follows
        status, body = _read_response(sock)
    assert status == 413
    _assert_openai_error(body, "request_too_large")
    assert str(4 * 1024 * 1024) in body["error"]["message"]


def test_a_chunked_body_is_cut_off_at_the_limit(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(_request_head(server, "/v1/chat/completions", None))

        def upload() -> None:  # 5 MB in 64 KB chunks, no Content-Length
            chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
            try:
                for _ in range(80):
                    sock.sendall(chunk)
                sock.sendall(b"0\r\n\r\n")
            except OSError:  # the server answered and stopped reading
                pass

        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        status, body = _read_response(sock)
    assert status == 413
    _assert_openai_error(body, "request_too_large")


def test_an_ordinary_client_gets_the_413(server):
    big = json.dumps({"prompt": "x" * (4 * 1024 * 1024 + 10)})
    r = server.post("/v1/completions", data=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    _assert_openai_error(r.json(), "request_too_large")


def test_health_answers_while_big_prompts_are_tokenized(faulty_server):
    """Two 1.5 MB prompts: tokenizing one takes seconds, which used to stall every other request of the API server for
    as long; now /health keeps answering at once, and both prompts get their 400 (longer than the context)."""
    server = faulty_server
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma"]
    text = " ".join(rng.choice(words) + str(rng.randrange(1000)) for _ in range(190_000))[:1_500_000]
    answers = []

    def ask() -> None:
        r = requests.post(
            f"{server.url}/v1/completions", json={"prompt": text}, headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=600,
        )  # fmt: skip
        answers.append(r)

    big = [threading.Thread(target=ask) for _ in range(2)]
    start = time.monotonic()
    for t in big:
        t.start()
    waits = []
    while any(t.is_alive() for t in big):
        t0 = time.monotonic()
        assert requests.get(f"{server.url}/health", timeout=600).text == "ok"
        waits.append(time.monotonic() - t0)
        time.sleep(0.05)
    elapsed = time.monotonic() - start
    assert [r.status_code for r in answers] == [400, 400]
    assert all(r.json()["error"]["code"] == "context_length_exceeded" for r in answers)
    # tokenizing on the event loop, /health waited for a whole prompt: about half the time both took
    assert max(waits) < max(0.5, elapsed / 5), f"/health waited {max(waits):.2f} s of the prompts' {elapsed:.2f} s"


# ---------------------------------------------------------------- clients that leave
def _send(server: Server, path: str, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(_request_head(server, path, len(data)) + data)
    return sock


def _short_answer_seconds(server: Server) -> float:
    t0 = time.monotonic()
    r = server.client().completions.create(model="tiny", prompt="Hi", max_tokens=2)
    assert r.usage.completion_tokens == 2
    return time.monotonic() - t0


def _cancelled_batch(server: Server, before: int, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = server.log_lines("cancelled (client gone)")
        if len(lines) > before:
            return lines[-1]
        time.sleep(0.2)
    raise AssertionError(f"no batch was cancelled:\n{server.log.read_text()[-2000:]}")


def _tokens_of(log_line: str) -> int:
    return int(log_line.split("request(s): ")[1].split()[0])


LONG = {"prompt": "Once", "max_tokens": 250, "ignore_eos": True}
assert 250 * STEP_SECONDS >= 2 * 5.0  # run to its end, LONG would hold up the next request for far over 5 s


def test_a_dropped_stream_stops_its_generation(faulty_server):
    server = faulty_server
    before = len(server.log_lines("cancelled (client gone)"))
    sock = _send(server, "/v1/completions", {**LONG, "stream": True})
    received = b""
    while received.count(b"data: ") < 2:  # a couple of tokens: the generation is running
        received += sock.recv(65536)
    sock.close()
    assert _short_answer_seconds(server) < 5.0  # it waited behind the abandoned batch for >= 12 s
    line = _cancelled_batch(server, before)
    assert _tokens_of(line) < 100, line


def test_a_dropped_request_stops_its_generation(faulty_server):
    server = faulty_server
    before = len(server.log_lines("cancelled (client gone)"))
    sock = _send(server, "/v1/completions", LONG)
    time.sleep(1.0)  # the generation is running; the client gives up waiting
    sock.close()
    assert _short_answer_seconds(server) < 5.0
    line = _cancelled_batch(server, before)
    assert _tokens_of(line) < 100, line


# ---------------------------------------------------------------- choices, text and error bodies
def test_prompts_times_n_over_the_cap_is_a_400(server):
    r = server.post("/v1/completions", json={"prompt": ["a", "b", "c", "d", "e"], "n": 4, "max_tokens": 1})
    assert r.status_code == 400
    _assert_openai_error(r.json(), "too_many_choices")
    assert "5 prompts x n=4" in r.json()["error"]["message"] and r.json()["error"]["param"] == "prompt"
    r = server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "n": 17})
    assert r.status_code == 400
    _assert_openai_error(r.json(), "too_many_choices")
    ok = server.post("/v1/completions", json={"prompt": ["a", "b", "c", "d"], "n": 4, "max_tokens": 1})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 16


def test_lone_surrogates_are_a_400(server):
    for path, body in [
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}'),
        ("/v1/completions", b'{"prompt": "\\udfff"}'),
    ]:
        r = server.post(path, data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        _assert_openai_error(r.json(), "invalid_unicode")


def test_404_and_405_are_openai_errors(server):
    r = requests.get(f"{server.url}/v1/nothing-here", timeout=10)
    assert r.status_code == 404
    _assert_openai_error(r.json(), "not_found")
    r = requests.get(f"{server.url}/v1/chat/completions", timeout=10)
    assert r.status_code == 405
    _assert_openai_error(r.json(), "method_not_allowed")
