"""``distrm serve --replicas 2``: two replicas on a real local Ray Serve, in a real
subprocess, answer exactly as the single-process server does (same endpoints, limits and
auth), and SIGTERM stops the replicas and the private Ray with no process left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from distrm.serve.app import ServeConfig
from distrm.serve.client import RewardClientError, wait_until_up
from distrm.serve.config import ServeCommandConfig
from distrm.serve.limits import Limits
from distrm.serve.replicas import replica_server_config

from _serve_support import _free_port, running_server

TOKEN = "replica-token"
MAX_ITEMS = 4
MAX_BODY = 20_000
PAIRS = [
    {"prompt": "What is the capital of France?", "response": "Paris is the capital of France."},
    {"prompt": [{"role": "user", "content": "Name a prime number."}], "response": "Seven."},
    {"prompt": "Is the earth flat?", "response": "No."},
]
SCORE = {"items": PAIRS, "risks": ["cvar:alpha=0.25", "mean_minus_std"]}
REWARD = {"query": ["<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>",
                    "plain text answer"]}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _approx(a, b, path="") -> None:
    """Equal JSON, floats to float rounding (the replicas use one torch thread each)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _approx(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _approx(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def _answers(url: str) -> dict[str, tuple[int, object]]:
    """What both servers are asked, and their (status, body) per question."""
    with httpx.Client(base_url=url, timeout=120) as c:
        calls = {
            "health": c.get("/health"),
            "metadata": c.get("/metadata", headers=AUTH),
            "metadata_no_token": c.get("/metadata"),
            "score": c.post("/score", json=SCORE, headers=AUTH),
            "score_wrong_token": c.post("/score", json=SCORE, headers={"Authorization": "Bearer nope"}),
            "get_reward": c.post("/get_reward", json=REWARD, headers=AUTH),
            "too_many_items": c.post("/score", json={"items": PAIRS * 2}, headers=AUTH),
            "not_json": c.post("/score", content=b"{", headers={**AUTH, "content-type": "application/json"}),
            "body_too_large": c.post("/score", json={"items": [{"prompt": "p", "response": "x" * 2 * MAX_BODY}]}, headers=AUTH),
        }
    return {k: (r.status_code, r.json()) for k, r in calls.items()}


@pytest.mark.slow
def test_two_ray_replicas_answer_as_the_single_process_server(trained_ensemble, tmp_path):
    limits = Limits(max_items=MAX_ITEMS, max_body_bytes=MAX_BODY)
    with running_server(Path(trained_ensemble), ServeConfig(token=TOKEN, limits=limits, threads=1)) as url:
        want = _answers(url)
    assert want["score"][0] == 200 and want["metadata_no_token"][0] == 401 and want["too_many_items"][0] == 413
    assert want["body_too_large"][0] == 413

    port = _free_port()
    env = {**os.environ, "DISTRM_SERVE_TOKEN": TOKEN}  # the token through the environment, as a user would
    cmd = [sys.executable, "-c", "import sys; from distrm.cli import main; sys.exit(main())", "serve", str(trained_ensemble),
           "--replicas", "2", "--replica-cpus", "1", "--ray-object-store-mb", "100", "--port", str(port),
           "--max-items", str(MAX_ITEMS), "--max-body-bytes", str(MAX_BODY), "--log-level", "warning"]
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_up(base, 300, proc)
        except RewardClientError as e:
            raise AssertionError(f"{e}\n{(tmp_path / 'serve.log').read_text()[-3000:]}") from None
        # every process of the deployment: the private Ray (GCS, raylet), its workers, the replicas
        tree = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in tree if p.is_running())
        assert names.count("ServeReplica") == 2, names

        got = _answers(base)
        for k, (status, body) in want.items():
            assert got[k][0] == status, (k, got[k])
            if k == "health":  # counters are per replica; the shape is the same
                assert body.keys() == got[k][1].keys() and got[k][1]["status"] == "ok"
            else:
                _approx(got[k][1], body, k)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        log.close()
    assert rc == 0, (tmp_path / "serve.log").read_text()[-3000:]
    gone, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, [" ".join(p.cmdline()[:3]) for p in alive]


def test_replica_options_are_checked_before_ray_starts():
    assert not ServeCommandConfig(model="m").on_ray  # the single-process server stays the default
    assert ServeCommandConfig(model="m", replicas=2).on_ray
    assert ServeCommandConfig(model="m", ray=True).on_ray and ServeCommandConfig(model="m", ray_address="auto").on_ray
    for bad, field in [({"replicas": 0}, "replicas"), ({"replica_cpus": 0}, "replica_cpus"),
                       ({"replica_gpus": -1}, "replica_gpus"), ({"ray_object_store_mb": 10}, "ray_object_store_mb")]:
        with pytest.raises(ValueError, match=field):
            ServeCommandConfig(model="m", **bad)


def test_cpu_replicas_get_their_share_of_threads():
    """A CPU replica runs int(replica_cpus) torch threads unless --threads says otherwise;
    a GPU replica keeps torch's default."""
    assert replica_server_config(ServeCommandConfig(model="m", replicas=2)).threads == 1
    assert replica_server_config(ServeCommandConfig(model="m", replicas=2, replica_cpus=3.5)).threads == 3
    assert replica_server_config(ServeCommandConfig(model="m", replicas=2, replica_cpus=0.5)).threads == 1
    explicit = ServeCommandConfig(model="m", replicas=2, server=ServeConfig(threads=2))
    assert replica_server_config(explicit).threads == 2
    assert replica_server_config(ServeCommandConfig(model="m", replicas=2, replica_gpus=1)).threads is None


@pytest.mark.slow
def test_replicas_that_cannot_load_the_model_fail_the_start_with_the_cause(tmp_path):
    """One failed start, not Ray's 20 constructor retries; the replicas' own error is shown,
    and the private Ray is stopped."""
    bad = tmp_path / "model"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    cmd = [sys.executable, "-c", "import sys; from distrm.cli import main; sys.exit(main())", "serve", str(bad),
           "--replicas", "2", "--ray-object-store-mb", "100", "--port", str(_free_port()), "--log-level", "warning"]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        seen: dict[int, psutil.Process] = {}  # every process the command started, while it ran
        t0 = time.monotonic()
        try:
            while proc.poll() is None and time.monotonic() - t0 < 240:
                with contextlib.suppress(psutil.Error):
                    seen.update((p.pid, p) for p in psutil.Process(proc.pid).children(recursive=True))
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    err = log.read_text()
    assert proc.returncode != 0
    assert "model.safetensors missing" in err, err[-3000:]
    assert seen, "no Ray process was seen: the leftover check below would check nothing"
    _, alive = psutil.wait_procs(list(seen.values()), timeout=30)
    assert not alive, [" ".join(p.cmdline()[:3]) for p in alive]
