"""Hostile and unlucky clients against a real server (issue 15, "a bounded server").

* a maximum-size request built for the slowest text path (``--strip`` with responses made
  of repeated special tokens, every text at ``max_text_chars``) while another client polls
  ``/health`` every 50 ms: ``/health`` answers within 1 s throughout;
* a client that sends a large request and hangs up: the server stops scoring its items
  within 1 s (the batcher's ``items_scored`` counter stops), its queued items are dropped,
  and the disconnect is one log line (no traceback);
* an idle keep-alive connection is closed after the idle timeout; a body that never
  finishes arriving gets 408.
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


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("faults_server_model"))


@pytest.fixture(scope="module")
def server(model_dir: Path):
    limits = Limits(max_items=MAX_ITEMS, max_text_chars=MAX_CHARS, max_queue_items=4 * MAX_ITEMS,
                    request_timeout_s=300, idle_timeout_s=IDLE_S, body_timeout_s=BODY_S)
    cfg = ServeConfig(max_batch=4, max_wait_ms=1, limits=limits, strip=("<|im_end|>", "</s>"), warmup=True)
    apps: list = []
    with running_server(model_dir, cfg, app_out=apps) as url:
        yield url, apps[0].state.service.batcher


@pytest.fixture(scope="module")
def big_server(model_dir: Path):
    """Large requests allowed, so one request keeps the model busy for many seconds."""
    limits = Limits(max_items=4096, max_queue_items=8192, request_timeout_s=300)
    cfg = ServeConfig(max_batch=2, max_wait_ms=1, limits=limits)  # a running batch finishes: keep it short
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
    body = {"query": [_worst_query() for _ in range(MAX_ITEMS)]}
    poller = _Poller(url)
    poller.start()
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        r = httpx.post(url + "/get_reward", json=body, timeout=300)
        elapsed = time.monotonic() - t0
        time.sleep(0.3)
    finally:
        poller.stop.set()
        poller.join(15)
    assert r.status_code == 200, r.text[:500]
    assert len(r.json()["rewards"]) == MAX_ITEMS
    worst = max(poller.latencies)
    print(f"\nmax-size /get_reward took {elapsed:.2f} s; /health polled {len(poller.latencies)} times, "
          f"max latency {worst * 1000:.0f} ms")
    assert len(poller.latencies) >= 5
    assert worst < 1.0


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


def test_idle_connection_is_closed(server) -> None:
    url, _ = server
    s = socket.create_connection(_hostport(url))
    s.settimeout(IDLE_S + 5)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    rest = b""
    while True:  # read until the server closes the connection
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    waited = time.monotonic() - t0
    s.close()
    print(f"\nidle keep-alive connection closed after {waited:.2f} s (timeout {IDLE_S} s)")
    assert IDLE_S * 0.5 <= waited < IDLE_S + 2


def test_slow_body_gets_408(server) -> None:
    url, _ = server
    s = socket.create_connection(_hostport(url))
    s.settimeout(BODY_S + 10)
    s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"items\": [")
    t0 = time.monotonic()
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    waited = time.monotonic() - t0
    s.close()
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
