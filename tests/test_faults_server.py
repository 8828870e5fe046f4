"""Hostile and unlucky clients against a real server (issue 15, "a bounded server").

* a maximum-size request built for the slowest text path (``--strip`` with responses made
  of repeated special tokens, every text at ``max_text_chars``) while another client polls
  ``/health`` every 50 ms: ``/health`` answers within 1 s throughout;
* a client that sends a large request and hangs up: the server stops scoring its items
  within 1 s (the batcher's ``items_scored`` counter stops), its queued items are dropped,
  and the disconnect is one log line (no traceback);
* an idle keep-alive connection is closed after the idle timeout; so is a connection that
  never sends a request, or trickles its request head a byte at a time (a deadline, not an
  idle timer); a body that never finishes arriving gets 408.
* ``/score`` never answers a silent ``null`` for a non-finite value; the OpenAPI document
  asks for auth only when a token is set and describes the risk grammar.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from _serve_support import build_model_dir, running_server
from distrm.models.auto import AutoRewardModel
from distrm.serve.app import RISK_PATTERN, create_app
from distrm.serve.config import ServeConfig
from distrm.serve.limits import Limits

MAX_ITEMS = 64
MAX_CHARS = 32_768
IDLE_S = 1.0
BODY_S = 1.0
HEAD_S = 1.5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("faults_server_model"))


@pytest.fixture(scope="module")
def server(model_dir: Path):
    limits = Limits(max_items=MAX_ITEMS, max_text_chars=MAX_CHARS, max_queue_items=4 * MAX_ITEMS,
                    request_timeout_s=300, idle_timeout_s=IDLE_S, body_timeout_s=BODY_S, header_timeout_s=HEAD_S)
    cfg = ServeConfig(max_batch=4, max_wait_ms=1, limits=limits, strip=("<|im_end|>", "</s>"), warmup=True)
    apps: list = []
    with running_server(model_dir, cfg, app_out=apps) as url:
        yield url, apps[0].state.service.batcher


@pytest.fixture(scope="module")
def big_server(model_dir: Path):
    """Large requests allowed, so one request keeps the model busy for many seconds; the
    default batch size: the batcher's time slices, not a small batch, bound abandoned work."""
    limits = Limits(max_items=4096, max_queue_items=8192, request_timeout_s=300)
    cfg = ServeConfig(max_wait_ms=1, limits=limits)
    assert cfg.max_batch >= 32
    apps: list = []
    with running_server(model_dir, cfg, app_out=apps) as url:
        yield url, apps[0].state.service.batcher


def _hostport(url: str) -> tuple[str, int]:
    u = urlparse(url)
    return u.hostname, u.port  # type: ignore[return-value]


def _raw_post(url: str, path: str, body: bytes) -> socket.socket:
    s = socket.create_connection(_hostport(url))
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


class _Poller(threading.Thread):
    """GET /health every 50 ms; records each answer's latency (a failure counts as inf)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.latencies = url, threading.Event(), []

    def run(self) -> None:
        with httpx.Client(timeout=10) as c:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    ok = c.get(self.url + "/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.monotonic() - t0 if ok else float("inf"))
                time.sleep(0.05)


def _worst_query() -> str:
    """ChatML conversation whose response is special tokens to strip, then filler, every
    text at the character limit."""
    head = "<|im_start|>user\n" + "q" * 100 + "<|im_end|>\n<|im_start|>assistant\n"
    tail = "<|im_end|>" * ((MAX_CHARS - 1) // len("<|im_end|>"))
    return head + "a " * 50 + tail


def test_health_stays_responsive_under_max_request(server) -> None:
    url, batcher = server
    body = json.dumps({"query": [_worst_query() for _ in range(MAX_ITEMS)]}).encode()
    r, latencies = _post_while_polling(url, "/get_reward", body, "max-size")
    assert r.status_code == 200, r.text[:500]
    assert len(r.json()["rewards"]) == MAX_ITEMS
    assert len(latencies) >= 5 and max(latencies) < 1.0


def _post_while_polling(url: str, path: str, body: bytes, what: str) -> tuple[httpx.Response, list[float]]:
    """POST ``body`` while :class:`_Poller` polls /health; the response and the /health latencies."""
    poller = _Poller(url)
    poller.start()
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        r = httpx.post(url + path, content=body, headers={"Content-Type": "application/json"}, timeout=600)
        elapsed = time.monotonic() - t0
        time.sleep(0.3)
    finally:
        poller.stop.set()
        poller.join(15)
    print(f"\n{what} {path} ({len(body) / 2**20:.1f} MiB) took {elapsed:.2f} s; /health polled "
          f"{len(poller.latencies)} times, max latency {max(poller.latencies) * 1000:.0f} ms")
    return r, poller.latencies


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not any(r is record for r in self.records):  # seen once per logger it propagates through
            self.records.append(record)


def test_abandoned_request_stops_consuming_cpu(big_server) -> None:
    url, batcher = big_server
    MAX_ITEMS = 4096
    items = [{"prompt": f"question {i} " * 50, "response": "word " * 600} for i in range(MAX_ITEMS)]
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("distrm.serve", "uvicorn", "uvicorn.error", "")]
    old = logging.getLogger("distrm.serve").level
    logging.getLogger("distrm.serve").setLevel(logging.INFO)
    for lg in loggers:
        lg.addHandler(handler)
    try:
        start = batcher.items_scored
        dropped0 = batcher.items_dropped
        s = _raw_post(url, "/score", json.dumps({"items": items}).encode())
        t0 = time.monotonic()
        while batcher.items_scored < start + 64:  # scoring is well under way
            assert time.monotonic() - t0 < 120, "the request was never scored"
            time.sleep(0.01)
        s.close()
        t_close = time.monotonic()
        last_change, seen = t_close, batcher.items_scored
        while time.monotonic() - t_close < 3.0:
            n = batcher.items_scored
            if n != seen:
                seen, last_change = n, time.monotonic()
            time.sleep(0.005)
        stop_s = last_change - t_close
        scored = seen - start
        time.sleep(0.2)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        logging.getLogger("distrm.serve").setLevel(old)
    print(f"\nabandoned request: scoring stopped {stop_s * 1000:.0f} ms after the client hung up; "
          f"{scored} of {MAX_ITEMS} items scored, {batcher.items_dropped - dropped0} dropped from the queue")
    assert stop_s < 1.0
    assert scored < MAX_ITEMS
    assert batcher.items_dropped - dropped0 > 0
    assert batcher.queue_items == 0
    # one log line for the disconnect, no traceback anywhere
    lines = [r for r in handler.records if "disconnect" in r.getMessage().lower()]
    assert len(lines) == 1, [r.getMessage() for r in handler.records]
    assert "\n" not in lines[0].getMessage()
    assert not [r for r in handler.records if r.exc_info or "Traceback" in r.getMessage() or r.levelno >= logging.ERROR]
    # the server is fine afterwards
    r = httpx.post(url + "/score", json={"items": [{"prompt": "hi", "response": "hello"}]}, timeout=60)
    assert r.status_code == 200 and r.json()["n_ok"] == 1


def _read_until_closed(s: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends on ``s`` until it closes the connection, and how long that took; closes ``s``."""
    t0 = time.monotonic()
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    waited = time.monotonic() - t0
    s.close()
    return data, waited


def test_idle_connection_is_closed(server) -> None:
    url, _ = server
    s = socket.create_connection(_hostport(url))
    s.settimeout(IDLE_S + 5)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 200")
    _, waited = _read_until_closed(s)
    print(f"\nidle keep-alive connection closed after {waited:.2f} s (timeout {IDLE_S} s)")
    assert IDLE_S * 0.5 <= waited < IDLE_S + 2


def _wait_closed(s: socket.socket, trickle: bytes = b"", every_s: float = 0.2) -> float:
    """Seconds until the server closes ``s``, sending ``trickle`` one byte per ``every_s``
    meanwhile (then waiting silently)."""
    t0 = time.monotonic()
    s.settimeout(every_s)
    sent = 0
    while time.monotonic() - t0 < 30:
        try:
            if not s.recv(65536):
                return time.monotonic() - t0
        except socket.timeout:
            pass
        except ConnectionResetError:
            return time.monotonic() - t0
        if sent < len(trickle):
            try:
                s.sendall(trickle[sent:sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - t0
            sent += 1
    return float("inf")


def test_silent_connection_is_closed(server) -> None:
    """A connection that never sends a byte is closed after the request-head deadline."""
    url, _ = server
    with socket.create_connection(_hostport(url)) as s:
        waited = _wait_closed(s)
    print(f"\nsilent connection closed after {waited:.2f} s (head deadline {HEAD_S} s)")
    assert HEAD_S * 0.8 <= waited < HEAD_S + 2


def test_trickled_request_head_is_closed(server) -> None:
    """Request-line and header bytes sent one every 0.2 s (a slowloris) do not extend the
    deadline: the connection is closed HEAD_S after it opened, and the server stays healthy."""
    url, _ = server
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"
    with socket.create_connection(_hostport(url)) as s:
        waited = _wait_closed(s, trickle=head)
    print(f"\ntrickled request head closed after {waited:.2f} s (head deadline {HEAD_S} s)")
    assert HEAD_S * 0.8 <= waited < HEAD_S + 2
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    # a well-behaved keep-alive client is unaffected: two requests on one connection
    with httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health").status_code == 200


def test_slow_body_gets_408(server) -> None:
    url, _ = server
    s = socket.create_connection(_hostport(url))
    s.settimeout(BODY_S + 10)
    s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"items\": [")
    data, waited = _read_until_closed(s)
    status_line = data.split(b"\r\n", 1)[0]
    print(f"\nstalled body answered after {waited:.2f} s: {status_line!r}")
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert waited < BODY_S + 3


def test_score_never_answers_null(server) -> None:
    url, _ = server
    items = [{"prompt": "hi", "response": "x" * (i * 37 % 500)} for i in range(8)]
    risks = ["exp_utility:lam=700", "exp_utility:lam=-700", "certainty_equivalent:lam=700", "cvar:alpha=0.1"]
    r = httpx.post(url + "/score", json={"items": items, "risks": risks}, timeout=60)
    assert r.status_code == 200, r.text
    for res in r.json()["results"]:
        if res.get("error"):
            assert res["error"]["status"] == 422 and "non-finite" in res["error"]["detail"]
            continue
        assert all(isinstance(v, float) for v in res["risk"].values()), res["risk"]
        assert res["mean"] is not None and None not in res["quantiles"]


def test_openapi_auth_only_with_token(model_dir: Path) -> None:
    model = AutoRewardModel.from_pretrained(model_dir)
    open_doc = create_app(model, ServeConfig(warmup=False)).openapi()
    assert "securitySchemes" not in open_doc.get("components", {})
    for ops in open_doc["paths"].values():
        for op in ops.values():
            assert "security" not in op and "401" not in op["responses"]
    locked = create_app(model, ServeConfig(warmup=False, token="s3cret")).openapi()
    assert "securitySchemes" in locked["components"]
    assert locked["paths"]["/score"]["post"]["security"]
    assert "401" in locked["paths"]["/score"]["post"]["responses"]
    assert "security" not in locked["paths"]["/health"]["get"]
    # the risk grammar is in the schema
    risks = open_doc["components"]["schemas"]["ScoreRequest"]["properties"]["risks"]["items"]
    assert risks["pattern"] == RISK_PATTERN and "cvar" in risks["description"]


def test_scoring_keeps_no_features_on_disk(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the server (and an RL reward function) scores is computed in memory and not
    cached in a feature store: the disk does not grow with traffic and users' texts are not
    kept. Evaluation caches explicitly (``store=``)."""
    monkeypatch.chdir(tmp_path)
    model = AutoRewardModel.from_pretrained(model_dir)
    model.score(["a prompt"], ["a response"])
    assert not any(tmp_path.rglob("*")), sorted(tmp_path.rglob("*"))
    model.score(["a prompt"], ["a response"], store=tmp_path / "store")
    assert any((tmp_path / "store").rglob("*.npy"))


@pytest.mark.slow
def test_health_stays_responsive_under_a_body_at_the_default_size_limit(model_dir: Path) -> None:
    """The default limits (a 128 MiB body): a /get_reward body just under the limit, made of
    texts at the character limit full of JSON escapes (the slowest thing to decode), while
    /health is polled. No query contains its prompt, so none can be split into prompt and
    response and no model time is spent: what is measured is the decode and text path the
    event loop must not carry."""
    cfg = ServeConfig(max_wait_ms=1, warmup=False)
    lim = cfg.limits
    text = "x\n" * (lim.max_text_chars // 2)  # every char of the second half an escape in JSON
    one = len(json.dumps(text)) + 2 + len('"q",')
    n = min(lim.max_items, (lim.max_body_bytes - 64) // one)
    body = json.dumps({"query": [text] * n, "prompts": ["q"] * n}).encode()
    assert lim.max_body_bytes * 0.95 < len(body) <= lim.max_body_bytes
    with running_server(model_dir, cfg) as url:
        r, latencies = _post_while_polling(url, "/get_reward", body, "default-limit")
    assert r.status_code == 200, r.text[:300]
    got = r.json()
    assert len(got["rewards"]) == n and got["extra_logs"]["distrm_error"] == [1.0] * n
    assert len(latencies) > 5 and max(latencies) < 1.0
