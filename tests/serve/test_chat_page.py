"""The chat page at GET / of `litgpt_lite serve`, driven in a real headless Chromium over its DevTools protocol.

The browser types into the page and clicks its buttons like a user (Input.insertText, mouse events); the page talks
to a real server on a tiny random-init model (conftest.py). Without Chromium (`apt-get install chromium`) or the
`websocket-client` package, the browser test skips and says why.
"""

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from serve_server import API_KEY

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# ---------------------------------------------------------------- the page over plain HTTP
def test_the_page_is_served_self_contained_and_other_routes_keep_openai_errors(server):
    r = requests.get(f"{server.url}/", timeout=10)  # no API key needed for the page itself
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in r.headers["content-security-policy"]
    page = r.text
    assert "/v1/chat/completions" in page and "/v1/models" in page
    for external in ("<script src", 'rel="stylesheet"', "http://", "https://", "@import", "innerHTML"):
        assert external not in page, f"the page must be self-contained and set text only as text: {external}"
    for method in (requests.post, requests.delete):
        r = method(f"{server.url}/", timeout=10)
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = requests.get(f"{server.url}/index.html", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# ---------------------------------------------------------------- a small DevTools protocol client
class Page:
    """One browser tab over the DevTools protocol: commands, JavaScript, real input events, and the requests it sent."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.requests: list[dict] = []  # Network.requestWillBeSent's `request` of each request the page made

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            if message.get("method") == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"])

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str = "") -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what or expression}")

    def click(self, selector: str) -> None:
        box = self.js(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                      " return [r.x + r.width / 2, r.y + r.height / 2]; })()")  # fmt: skip
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type(self, selector: str, text: str) -> None:
        """Replace the field's text with `text`, typed as the keyboard would insert it."""
        self.js(f"(() => {{ const e = document.querySelector({selector!r}); e.focus(); e.select(); }})()")
        self.send("Input.insertText", text=text)

    def text(self, selector: str) -> str:
        return self.js(f"document.querySelector({selector!r}).textContent")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def browser_page(tmp_path):
    """A headless Chromium tab (skipped, with the reason, where there is no browser or it does not start)."""
    pytest.importorskip("websocket", reason="the websocket-client package drives the browser: pip install it")
    binary = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if binary is None:
        pytest.skip("no Chromium to drive: apt-get install chromium")
    profile = tmp_path / "profile"
    cmd = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
        "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={profile}",
        "--window-size=1000,760", "about:blank",
    ]  # fmt: skip
    log = (tmp_path / "chromium.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        page = Page(_page_target(proc, profile, tmp_path / "chromium.log"))
        yield page
        page.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _page_target(proc: subprocess.Popen, profile: Path, log: Path, timeout: float = 60) -> str:
    """The DevTools WebSocket URL of the browser's tab, once the browser has written its DevToolsActivePort."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"Chromium exited with {proc.returncode} at start: {log.read_text()[-1500:]}")
        if port_file.is_file() and port_file.read_text().strip():
            port = port_file.read_text().split()[0]
            targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        time.sleep(0.1)
    pytest.skip(f"Chromium did not start its DevTools server within {timeout}s: {log.read_text()[-1500:]}")


# ---------------------------------------------------------------- the page in the browser
ANSWER = "#log li.assistant:last-child .text"
BUSY = "!document.querySelector('#stop').disabled"


def test_chat_in_a_browser(browser_page, faulty_server, tiny_checkpoint, tmp_path):
    """Key prompt, a streamed answer, a second turn that carries the first, Stop, and a screenshot.

    The faulty server's worker takes >= 50 ms per decode step (serve_faults.py), so an answer visibly streams.
    """
    page, server = browser_page, faulty_server
    page.send("Network.enable")
    page.send("Page.enable")
    page.send("Page.navigate", url=f"{server.url}/")
    page.wait_for(f"location.href === '{server.url}/' && document.readyState === 'complete'", what="the page to load")

    # the server needs a key: the page asks for one, refuses a wrong one, and shows the model once it has the right one
    page.wait_for("!document.querySelector('#key-form').hidden", what="the API key form")
    page.type("#api-key", "wrong-key")
    page.click("#key-form button")
    page.wait_for("document.querySelector('#key-status').textContent.includes('refused')", what="a refused key")
    page.type("#api-key", API_KEY)
    page.click("#key-form button")
    page.wait_for("document.querySelector('#key-form').hidden", what="the key form to close")
    page.wait_for(f"document.querySelector('#model').textContent === {tiny_checkpoint.name!r}", what="model name")

    # turn 1: the answer streams in (seen growing), as text, and equals the server's own greedy answer
    first = "Hello <b>there</b> & <img src=x onerror=alert(1)>"
    page.type("#max-tokens", "40")
    page.type("#prompt", first)
    page.click("#send")
    page.wait_for(f"{BUSY} && document.querySelector({ANSWER!r}).textContent.length > 0", what="the first delta")
    early = len(page.text(ANSWER))
    page.wait_for(f"!({BUSY})", what="the answer to complete")
    answer = page.text(ANSWER)
    assert len(answer) > early, "the answer did not grow while it streamed"
    assert page.text("#log li.user .text") == first  # shown as text, not parsed as HTML
    assert page.js("document.querySelectorAll('#log b, #log img').length") == 0
    expected = server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": first}], max_tokens=40
    )
    assert answer == expected.choices[0].message.content
    assert page.text("#log li.assistant:last-child .note") == "Stopped at the token limit."

    # turn 2, sampled: the request carries the whole conversation, as the browser sent it
    page.type("#temperature", "1.5")
    page.type("#prompt", "And then?")
    page.send("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter", windowsVirtualKeyCode=13)
    page.wait_for(f"document.querySelectorAll('#log li').length === 4 && !({BUSY})", what="the second answer")
    chats = [json.loads(r["postData"]) for r in page.requests if r["url"].endswith("/v1/chat/completions")]
    assert [len(c["messages"]) for c in chats] == [1, 3]
    assert chats[1]["messages"] == [
        {"role": "user", "content": first},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And then?"},
    ]
    assert chats[1]["stream"] is True and chats[1]["model"] == tiny_checkpoint.name
    assert (chats[1]["temperature"], chats[1]["max_tokens"]) == (1.5, 40) and "temperature" not in chats[0]

    # Stop: a long answer ends at once on the page, and the server cancels its generation
    page.type("#temperature", "0.7")
    page.type("#max-tokens", "200")  # >= 10 s at the worker's 50 ms a step
    page.type("#prompt", "Tell me a long story")
    page.click("#send")
    page.wait_for(f"{BUSY} && document.querySelector({ANSWER!r}).textContent.length > 0", what="the long answer")
    time.sleep(0.5)
    cancelled_before = len(server.log_lines("cancelled (client gone)"))
    started = time.monotonic()
    page.click("#stop")
    page.wait_for(f"!({BUSY})", timeout=5, what="Stop to end the answer")
    assert time.monotonic() - started < 3
    assert page.text("#log li.assistant:last-child .note") == "Stopped."
    stopped_at = page.text(ANSWER)
    time.sleep(1)
    assert page.text(ANSWER) == stopped_at
    deadline = time.monotonic() + 20
    while len(server.log_lines("cancelled (client gone)")) == cancelled_before:
        assert time.monotonic() < deadline, "the server never cancelled the stopped generation"
        time.sleep(0.2)
    assert json.loads(page.requests[-1]["postData"])["temperature"] == 0.7

    page.screenshot(tmp_path / "chat.png")  # the end of the conversation
    page.js("document.querySelector('main').scrollTop = 0")
    page.screenshot(tmp_path / "chat_top.png")  # its start: the first message, its markup shown as text
    print(f"screenshots: {tmp_path / 'chat.png'}, {tmp_path / 'chat_top.png'}")
    assert (tmp_path / "chat.png").stat().st_size > 10_000
    outside = [r["url"] for r in page.requests if not r["url"].startswith(server.url)]
    assert not outside, f"the page fetched from outside its server: {outside}"
