"""The reward server end to end: a real saved model on the real MiniLM backbone behind a real
uvicorn server on loopback. Scores must equal ``DistributionalRewardModel.score``; the
OpenRLHF endpoint, auth, limits, per-item errors, dynamic batching and the client
(as a TRL reward function) are checked over HTTP."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import torch

from distrm.serve.client import RewardClient, RewardClientError
from distrm.distribution import RewardDistribution
from distrm.models.qrm import DistributionalRewardModel
from distrm.serve.app import ServeConfig
from distrm.serve.batching import DynamicBatcher, ItemFailed, Overloaded
from distrm.serve.limits import Limits

from _serve_support import build_model_dir, running_server

TOKEN = "s3cret-token"
PAIRS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Write a haiku about rain.", "Soft rain on the roof\nthe garden drinks in silence\nclouds move on at dusk"),
    ("Explain recursion briefly.", "A function that calls itself on a smaller input until a base case."),
    ("Is the earth flat?", "No."),
]
CHAT_PROMPT = [{"role": "system", "content": "Be concise."}, {"role": "user", "content": "Name a prime number."}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("serve_model"))


@pytest.fixture(scope="module")
def ref(model_dir):
    """An independent copy of the model, scored in-process: the ground truth."""
    return DistributionalRewardModel.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def url(model_dir):
    with running_server(model_dir, ServeConfig(max_batch=64, max_wait_ms=20)) as u:
        yield u


@pytest.fixture(scope="module")
def strict_url(model_dir):
    """Token, small limits, reject over-long texts, a fallback reward, strip tokens."""
    limits = Limits(max_body_bytes=4000, max_items=4, max_text_chars=200, on_too_long="reject")
    cfg = ServeConfig(
        max_batch=8, limits=limits, token=TOKEN, error_reward=-10.0, strip=("<eos>",), reward_risk="cvar:alpha=0.25", warmup=False
    )
    with running_server(model_dir, cfg) as u:
        yield u


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=1e-6)


# ---------------------------------------------------------------------- /score
def test_score_equals_model_score(url, ref):
    prompts = [p for p, _ in PAIRS] + [CHAT_PROMPT]
    responses = [r for _, r in PAIRS] + ["7"]
    risks = ["cvar:alpha=0.1", "exp_utility:lam=2", "quantile:tau=0.5", "mean_minus_std:c=1"]
    items = [{"prompt": p, "response": r} for p, r in zip(prompts[:-1], responses[:-1])]
    items.append({"messages": CHAT_PROMPT + [{"role": "assistant", "content": "7"}]})  # chat form
    r = httpx.post(f"{url}/score", json={"items": items, "risks": risks}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n_ok"] == len(items) and body["n_errors"] == 0
    want = ref.score(prompts, responses).to_dict(risks)
    for got, exp in zip(body["results"], want):
        assert _close(got["mean"], exp["mean"])
        assert _close(got["quantiles"], exp["quantiles"])
        assert got["levels"] == exp["levels"]
        assert got["mix"] == "quantile_average" and got["truncated"] is False
        for spec in risks:
            assert _close(got["risk"][spec], exp["risk"][spec])
        for name, a in exp["attributes"].items():
            assert _close(got["attributes"][name]["quantiles"], a["quantiles"])
            assert _close(got["attributes"][name]["weight"], a["weight"])
            assert _close(got["attributes"][name]["mean"], a["mean"])


def test_score_probability_mixture_and_no_attributes(url, ref):
    p, resp = PAIRS[0]
    r = httpx.post(f"{url}/score", json={"items": [{"prompt": p, "response": resp}], "mix": "probability", "include_attributes": False})
    got = r.json()["results"][0]
    out = ref.score([p], [resp])
    want = RewardDistribution.mix(out.attributes, out.weights, method="probability")
    assert got["mix"] == "probability" and "attributes" not in got
    assert _close(got["quantiles"], want.values[0].tolist(), tol=1e-4)
    assert _close(got["mean"], float(want.mean()[0]), tol=1e-4)


def test_one_bad_item_does_not_fail_the_others_unless_strict(url, ref):
    items = [
        {"prompt": PAIRS[0][0], "response": PAIRS[0][1]},
        {"prompt": 5, "response": "x"},
        {"messages": [{"role": "user", "content": "no answer"}]},
        "not an object",
        {"prompt": PAIRS[1][0], "response": PAIRS[1][1]},
    ]
    body = httpx.post(f"{url}/score", json={"items": items}, timeout=60).json()
    assert body["n_ok"] == 2 and body["n_errors"] == 3
    res = body["results"]
    assert [("error" in x) for x in res] == [False, True, True, True, False]
    assert all(res[i]["error"]["status"] == 422 and res[i]["error"]["detail"] for i in (1, 2, 3))
    want = ref.score([PAIRS[0][0], PAIRS[1][0]], [PAIRS[0][1], PAIRS[1][1]]).mean.tolist()
    assert _close([res[0]["mean"], res[4]["mean"]], want)
    r = httpx.post(f"{url}/score", json={"items": items, "strict": True})
    assert r.status_code == 422
    assert [e["index"] for e in r.json()["detail"]] == [1, 2, 3]


@pytest.mark.parametrize(
    "body,status",
    [
        (b"", 400),
        (b"{not json", 400),
        (b'{"items": [{"prompt": "\xff", "response": "x"}]}', 400),  # bad UTF-8
        (b"NaN", 400),
        (b"[1, 2]", 422),
        (b'{"items": 3}', 422),
        (b'{"itemz": []}', 422),
        (b'{"items": [], "risks": ["var:alpha=0.1"]}', 422),
        (b'{"items": [], "risks": ["cvar:alpha=0"]}', 422),
        (b'{"items": [], "risks": ["cvar:beta=1"]}', 422),
        (b'{"items": [], "mix": "geometric"}', 422),
        (b"[" * 50000, 400),
    ],
)
def test_bad_requests_get_4xx_with_a_message(url, body, status):
    r = httpx.post(f"{url}/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_lone_surrogate_and_empty_texts(url):
    items = [{"prompt": "\ud800", "response": "x"}, {"prompt": "", "response": ""}]
    import json

    body = json.dumps({"items": items})  # ascii-escaped, so the surrogate survives transport
    res = httpx.post(f"{url}/score", content=body, timeout=60).json()["results"]
    assert res[0]["error"]["status"] == 422 and "surrogate" in res[0]["error"]["detail"]
    assert isinstance(res[1]["mean"], float)


def test_long_text_is_truncated_by_default(url, ref):
    long = "word " * 8000  # 40000 chars > 32768
    res = httpx.post(f"{url}/score", json={"items": [{"prompt": "Say a lot.", "response": long}]}, timeout=60).json()["results"][0]
    assert res["truncated"] is True
    assert _close(res["mean"], float(ref.score(["Say a lot."], [long[:32768]]).mean[0]))


# ---------------------------------------------------------------------- /get_reward (OpenRLHF)
def test_get_reward_splits_query_with_prompts(url, ref):
    prompts = [p for p, _ in PAIRS]
    queries = [p + r for p, r in PAIRS]
    body = httpx.post(f"{url}/get_reward", json={"query": queries, "prompts": prompts, "labels": [""] * 4}, timeout=60).json()
    out = ref.score(prompts, [r for _, r in PAIRS])
    assert _close(body["rewards"], out.mean.tolist())  # default reward = mean
    assert body["scores"] == body["rewards"]
    assert _close(body["extra_logs"]["distrm_std"], out.reward.std().tolist())
    assert all(len(v) == 4 for v in body["extra_logs"].values())
    # without prompts the whole query is the response to an empty prompt
    body = httpx.post(f"{url}/get_reward", json={"query": queries[:2]}, timeout=60).json()
    assert _close(body["rewards"], ref.score(["", ""], queries[:2]).mean.tolist())
    # a per-request risk measure
    body = httpx.post(f"{url}/get_reward", json={"query": queries[:2], "prompts": prompts[:2], "risk": "cvar:alpha=0.1"}).json()
    assert _close(body["rewards"], ref.score(prompts[:2], [r for _, r in PAIRS[:2]]).reward.cvar(0.1).tolist())


def test_get_reward_item_errors(url, strict_url, ref):
    q = {"query": ["Hi there! Hello.", "unrelated"], "prompts": ["Hi there!", "Question?"]}
    body = httpx.post(f"{url}/get_reward", json=q, timeout=60).json()
    # never null: the default --error-reward 0.0 in every list, counted in extra_logs
    assert body["rewards"][1] == 0.0 and body["errors"][0]["index"] == 1
    assert body["extra_logs"]["distrm_error"] == [0.0, 1.0] and body["extra_logs"]["distrm_mean"][1] == 0.0
    assert isinstance(body["rewards"][0], float)
    r = httpx.post(f"{url}/get_reward", json={**q, "strict": True})
    assert r.status_code == 422
    # configured fallback reward, server-side risk measure, strip tokens
    body = httpx.post(f"{strict_url}/get_reward", json={"query": ["Hi there! Hello.<eos>", "unrelated"], "prompts": q["prompts"]}, headers=AUTH).json()
    assert body["rewards"][1] == -10.0
    assert _close(body["rewards"][0], float(ref.score(["Hi there!"], [" Hello."]).reward.cvar(0.25)[0]))
    assert "distrm_cvar" in body["extra_logs"]
    r = httpx.post(f"{url}/get_reward", json={"query": ["a"], "prompts": ["a", "b"]})
    assert r.status_code == 422


# ---------------------------------------------------------------------- auth, limits, metadata
def test_auth(strict_url):
    assert httpx.get(f"{strict_url}/health").status_code == 200  # probes need no token
    for path in ("/metadata",):
        assert httpx.get(f"{strict_url}{path}").status_code == 401
        assert httpx.get(f"{strict_url}{path}", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{strict_url}{path}", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    r = httpx.post(f"{strict_url}/score", json={"items": []})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.post(f"{strict_url}/get_reward", json={"query": []}).status_code == 401
    assert httpx.post(f"{strict_url}/score", json={"items": []}, headers=AUTH).status_code == 200


def test_limits(strict_url):
    item = {"prompt": "p", "response": "r"}
    r = httpx.post(f"{strict_url}/score", json={"items": [item] * 5}, headers=AUTH)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = httpx.post(f"{strict_url}/get_reward", json={"query": ["q"] * 5}, headers=AUTH)
    assert r.status_code == 413
    big = {"items": [{"prompt": "p", "response": "x" * 5000}]}
    assert httpx.post(f"{strict_url}/score", json=big, headers=AUTH).status_code == 413  # Content-Length
    chunks = iter([b'{"items": [{"prompt": "p", "response": "', b"x" * 3000, b"x" * 3000, b'"}]}'])
    r = httpx.post(f"{strict_url}/score", content=chunks, headers=AUTH)  # chunked, no Content-Length
    assert r.status_code == 413
    # over-long text with on_too_long=reject: a per-item 413, or the whole request in strict mode
    body = {"items": [item, {"prompt": "p", "response": "y" * 300}]}
    res = httpx.post(f"{strict_url}/score", json=body, headers=AUTH, timeout=60).json()["results"]
    assert "error" not in res[0] and res[1]["error"]["status"] == 413
    r = httpx.post(f"{strict_url}/score", json={**body, "strict": True}, headers=AUTH)
    assert r.status_code == 413
    assert httpx.get(f"{strict_url}/health").json()["status"] == "ok"


def test_metadata_and_openapi(url, ref):
    md = httpx.get(f"{url}/metadata").json()
    assert md["backbone"] == "minilm" and md["attributes"] == ref.config.attributes
    assert md["levels"] == ref.config.levels and md["feature_dim"] == ref.config.feature_dim
    assert md["version"] and md["reward_risk"] == "mean" and md["batching"]["max_batch"] == 64
    spec = httpx.get(f"{url}/openapi.json").json()
    assert {"/score", "/get_reward", "/health", "/metadata"} <= set(spec["paths"])
    assert {"ScoreRequest", "RewardRequest", "ScoreResponse", "RewardResponse"} <= set(spec["components"]["schemas"])
    ref_ = spec["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref_.endswith("/ScoreRequest")


# ---------------------------------------------------------------------- batching
def test_concurrent_requests_are_batched_and_exact(url, ref):
    """16 single-item requests at once: they share backbone calls, and each still gets
    exactly its own score."""
    texts = [(f"Question number {i}?", f"Answer {i}: " + "fine " * (i % 5)) for i in range(16)]
    before = httpx.get(f"{url}/health").json()

    async def go():
        async with httpx.AsyncClient(timeout=60) as c:
            rs = await asyncio.gather(*[c.post(f"{url}/score", json={"items": [{"prompt": p, "response": r}]}) for p, r in texts])
        return [x.json()["results"][0]["mean"] for x in rs]

    got = asyncio.run(go())
    after = httpx.get(f"{url}/health").json()
    assert after["items_scored"] - before["items_scored"] == 16
    assert after["batches"] - before["batches"] < 16  # at least two requests shared a batch
    assert _close(got, ref.score([p for p, _ in texts], [r for _, r in texts]).mean.tolist())


def test_batcher_isolates_failures_drops_cancelled_and_bounds_queue():
    """The batcher on a plain function: a poisonous item fails alone, cancelled requests are
    not computed, and a full queue refuses new work."""
    calls: list[list[str]] = []
    gate = threading.Event()

    def fn(items):
        gate.wait(5)
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("boom")
        return [s.upper() for s in items]

    b = DynamicBatcher(fn, max_batch=8, max_wait_s=0.05, max_queue_items=6)
    b.start()

    async def go():
        gate.set()
        res = await b.submit(["a", "bad", "c"])
        assert res[0] == "A" and res[2] == "C" and isinstance(res[1], ItemFailed)
        gate.clear()
        blocker = asyncio.create_task(b.submit(["x"]))  # worker now blocks inside fn
        await asyncio.sleep(0.2)
        slow = asyncio.create_task(b.submit(["dropped"]))
        await asyncio.sleep(0.05)
        slow.cancel()
        with pytest.raises(Overloaded):
            await b.submit(["q"] * 6)
        gate.set()
        assert await blocker == ["X"]
        assert await b.submit(["z"]) == ["Z"]

    asyncio.run(go())
    b.stop()
    assert not any("dropped" in c for c in calls)


def test_batcher_time_slices_a_batch_and_stops_abandoned_work():
    """A slow model (50 ms per item) and a 120 ms slice: a 32-item batch runs as calls of
    about two items, and once its request is cancelled the worker stops within one slice
    instead of finishing the batch."""
    calls: list[int] = []

    def fn(items):
        time.sleep(0.05 * len(items))
        calls.append(len(items))
        return list(items)

    b = DynamicBatcher(fn, max_batch=32, max_wait_s=0.0, slice_s=0.12)
    b.start()

    async def go():
        assert await b.submit(["warm"]) == ["warm"]  # measures the time per item
        task = asyncio.create_task(b.submit([str(i) for i in range(32)]))
        await asyncio.sleep(0.4)
        task.cancel()
        t_cancel = time.monotonic()
        n_at_cancel = b.items_scored
        await asyncio.sleep(0.5)
        return t_cancel, n_at_cancel

    _, n_at_cancel = asyncio.run(go())
    b.stop()
    assert max(calls[1:]) <= 3, calls  # sliced, not one 32-item call (1.6 s)
    assert b.items_scored - n_at_cancel <= 3  # at most the slice that was running
    assert b.items_scored < 1 + 32 and b.items_dropped > 0
    # slice_s=None: one call per batch, as before
    calls.clear()
    b = DynamicBatcher(lambda xs: calls.append(len(xs)) or list(xs), max_batch=32, max_wait_s=0.05, slice_s=None)
    b.start()

    async def many():
        return await asyncio.gather(*[b.submit([i]) for i in range(8)])

    assert asyncio.run(many()) == [[i] for i in range(8)]
    b.stop()
    assert max(calls) > 1


# ---------------------------------------------------------------------- client
def test_client_is_a_trl_reward_function(url, ref):
    client = RewardClient(url, risk="cvar:alpha=0.1", retries=0)
    assert client.__name__ == "distrm_cvar"
    prompts = [PAIRS[0][0], CHAT_PROMPT]
    completions = [PAIRS[0][1], [{"role": "assistant", "content": "7"}]]
    got = client(prompts=prompts, completions=completions, completion_ids=[[1], [2]], answer=["x", "y"], trainer_state=None)
    want = ref.score([PAIRS[0][0], CHAT_PROMPT], [PAIRS[0][1], "7"]).reward.cvar(0.1).tolist()
    assert _close(got, want)
    assert client.metadata()["attributes"] == ref.config.attributes
    with pytest.raises(RewardClientError, match="422"):
        RewardClient(url, risk="cvar:alpha=7", retries=0)(prompts=["p"], completions=["c"])


def test_client_auth_and_retries(strict_url):
    assert RewardClient(strict_url, token=TOKEN)(prompts=["p"], completions=["c"])[0] is not None
    with pytest.raises(RewardClientError, match="401"):
        RewardClient(strict_url, retries=3)(prompts=["p"], completions=["c"])  # 4xx: no retry
    dead = RewardClient("http://127.0.0.1:9", retries=2, backoff_s=0.01, timeout=2)
    with pytest.raises(RewardClientError, match="3 attempts"):
        dead(prompts=["p"], completions=["c"])


def test_cli_defaults_bind_loopback():
    import argparse

    from distrm.cli import serve as serve_cli
    from distrm.config import config_from_args
    from distrm.serve.config import ServeCommandConfig

    p = argparse.ArgumentParser()
    serve_cli.register(p.add_subparsers())
    a = p.parse_args(["serve", "some/model"])
    c = config_from_args(ServeCommandConfig, a)
    assert c.host == "127.0.0.1" and c.server.max_batch == 64 and c.server.limits.on_too_long == "truncate"
    assert a.func is serve_cli.run and c.model == "some/model"
    a = p.parse_args(["serve", "m", "--max-batch", "1", "--on-too-long", "reject", "--strip", "</s>", "--strip", "<pad>",
                      "--timeout", "5", "--set", "server.limits.max_items=3"])
    c = config_from_args(ServeCommandConfig, a)
    assert c.server.max_batch == 1 and c.server.limits.on_too_long == "reject" and c.server.strip == ("</s>", "<pad>")
    assert c.server.limits.request_timeout_s == 5.0 and c.server.limits.max_items == 3
