"""distrm's reward inside verl's own reward code (issue 14, verl part).

verl 0.9.1 is installed from PyPI without its heavy extras (the README's test command lists
the light packages its import chain needs: ray, tensordict, omegaconf, codetiming). The
functions under test are verl's: its custom-reward-function loader
(``verl.trainer.ppo.reward.get_custom_reward_fn`` / ``load_reward_manager``), its
``RLHFDataset`` reading a parquet laid out like verl's own preprocessing scripts, its
``collate_fn`` / ``DataProto``, the ``RewardLoopWorker`` that verl 0.9's trainer runs per
batch (registered ``naive`` manager) with ``assemble_rm_scores``, and the legacy
``NaiveRewardManager`` / ``BatchRewardManager``. Each score must equal distrm's own score
of the same (prompt, response), for the in-process path and through ``distrm serve``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("verl", reason="verl is a test dependency: see the README's test command")

from omegaconf import OmegaConf  # noqa: E402  (verl's config library, installed with it)

import distrm.integrations.verl as dv  # noqa: E402
from distrm.models.qrm import DistributionalRewardModel  # noqa: E402
from distrm.risk import RiskMeasure  # noqa: E402
from distrm.serve.app import ServeConfig  # noqa: E402

from _serve_support import build_model_dir, running_server  # noqa: E402

RISK = "cvar:alpha=0.1"
ROWS = [  # (prompt messages, the response the policy "generated"); texts round-trip through SmolLM2's tokenizer
    ([{"role": "user", "content": "Name a prime number."}], "Seven is a prime number."),
    ([{"role": "system", "content": "Be concise."}, {"role": "user", "content": "Is the earth flat?"}], "No, it is round."),
    ([{"role": "user", "content": "Write a haiku about rain."}], "Soft rain on the roof, the garden drinks in silence."),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("verl_rm"))


@pytest.fixture(scope="module")
def ref(model_dir):
    return DistributionalRewardModel.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def url(model_dir):
    with running_server(model_dir, ServeConfig(max_batch=64, max_wait_ms=5)) as u:
        yield u


@pytest.fixture(scope="module")
def policy_tokenizer_dir():
    from distrm.features.backbones import resolve_model_dir

    return resolve_model_dir("smollm2-135m")


@pytest.fixture(autouse=True)
def _fresh_module_state():
    dv.reset()
    yield
    dv.reset()


def _expected(ref, risk=RISK):
    out = ref.score([p for p, _ in ROWS], [r for _, r in ROWS])
    return RiskMeasure.parse(risk)(out.reward).tolist(), out


@pytest.fixture(scope="module")
def batch(tmp_path_factory, policy_tokenizer_dir):
    """A verl batch after rollout: the parquet as verl's preprocessing writes it (the prompt
    also in extra_info, as distrm's docs ask), read by verl's RLHFDataset, collated by its
    collate_fn, plus the prompt/response token tensors the rollout adds (left-padded
    chat-templated prompts, right-padded responses ending in EOS)."""
    import datasets
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    d = tmp_path_factory.mktemp("verl_data")
    rows = [
        {
            "data_source": "distrm/test",
            "prompt": msgs,
            "ability": "alignment",
            "reward_model": {"style": "model", "ground_truth": ""},
            "extra_info": {"split": "train", "index": i, "prompt": msgs},
        }
        for i, (msgs, _) in enumerate(ROWS)
    ]
    datasets.Dataset.from_list(rows).to_parquet(str(d / "train.parquet"))
    tok = AutoTokenizer.from_pretrained(policy_tokenizer_dir)
    cfg = OmegaConf.create({"max_prompt_length": 256, "cache_dir": str(d / "cache"), "filter_overlong_prompts_workers": 1})
    ds = RLHFDataset(str(d / "train.parquet"), tok, cfg)
    assert len(ds) == len(ROWS)
    data = collate_fn([ds[i] for i in range(len(ds))])

    P, R = 64, 32
    prompts = torch.full((len(ROWS), P), tok.pad_token_id)
    responses = torch.full((len(ROWS), R), tok.pad_token_id)
    mask = torch.zeros(len(ROWS), P + R, dtype=torch.long)
    for i, (msgs, resp) in enumerate(ROWS):
        p = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        r = tok(resp, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert tok.decode(r, skip_special_tokens=True) == resp  # the text verl will hand to compute_score
        prompts[i, P - len(p):] = torch.tensor(p)
        responses[i, : len(r)] = torch.tensor(r)
        mask[i, P - len(p): P] = 1
        mask[i, P: P + len(r)] = 1
    data.update(prompts=prompts, responses=responses, input_ids=torch.cat([prompts, responses], 1), attention_mask=mask)
    return DataProto.from_single_dict(data)


def _config(policy_tokenizer_dir, name="compute_score", manager="naive", path="pkg://distrm.integrations.verl", **reward_kwargs):
    return OmegaConf.create({
        "actor_rollout_ref": {"model": {"path": str(policy_tokenizer_dir), "tokenizer_path": None}},
        "reward": {
            "num_workers": 1,
            "reward_manager": {"source": "register", "name": manager, "module": {"path": None, "name": None}},
            "custom_reward_function": {"path": path, "name": name, "reward_kwargs": reward_kwargs},
            "reward_model": {"enable": False, "model_path": None},
            "sandbox_fusion": {"url": None},
        },
    })  # fmt: skip


def _last_token_scores(rm_scores: torch.Tensor, data) -> list[float]:
    """The reward sits on each response's last valid token; everything else is zero."""
    P = data.batch["prompts"].shape[1]
    n_valid = data.batch["attention_mask"][:, P:].sum(1)
    out = []
    for i in range(rm_scores.shape[0]):
        row = rm_scores[i]
        assert torch.count_nonzero(row[: n_valid[i] - 1]) == 0 and torch.count_nonzero(row[n_valid[i]:]) == 0
        out.append(float(row[n_valid[i] - 1]))
    return out


def _close(got, want, tol=1e-5):
    return len(got) == len(want) and all(abs(g - w) <= tol * max(1.0, abs(w)) for g, w in zip(got, want))


# ---------------------------------------------------------------------- verl's loader + reward loop
@pytest.mark.parametrize("where", ["in_process", "http"])
@pytest.mark.parametrize("name", ["compute_score", "compute_score_async"])
def test_verl_reward_loop_worker_with_distrm(where, name, batch, ref, model_dir, url, policy_tokenizer_dir):
    """verl 0.9's trainer path: RewardLoopWorker -> load_reward_manager -> get_custom_reward_fn
    -> the registered 'naive' manager's run_single per rollout -> assemble_rm_scores."""
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    target = {"model": str(model_dir)} if where == "in_process" else {"url": url}
    config = _config(policy_tokenizer_dir, name=name, risk=RISK, **target)
    worker = RewardLoopWorker(config, reward_router_address=None)
    assert worker.reward_manager.is_async_reward_score == (name == "compute_score_async")
    outputs = worker.loop.run_until_complete(worker.compute_score_batch(batch))

    want, out = _expected(ref)
    scores = [o["reward_score"] for o in outputs]
    assert _close(scores, want)
    rm_scores = resolve_reward_manager_cls(config).assemble_rm_scores(batch, scores)
    assert _close(_last_token_scores(rm_scores, batch), want)
    # the distribution summary rides along as reward_extra_info, the same scalar keys for every rollout
    infos = [o["reward_extra_info"] for o in outputs]
    assert all(tuple(i) == dv.SUMMARY_KEYS for i in infos)
    assert _close([i["dist_mean"] for i in infos], out.mean.tolist())
    assert _close([i["dist_std"] for i in infos], out.std.tolist())
    q05 = out.reward.quantile(torch.tensor([0.05], dtype=out.reward.values.dtype))[:, 0].tolist()
    assert _close([i["dist_q0.05"] for i in infos], q05)
    assert all(i["dist_q0.05"] <= i["dist_q0.50"] <= i["dist_q0.95"] for i in infos)
    assert all(i["score"] <= i["dist_mean"] + 1e-9 for i in infos)  # CVaR never exceeds the mean
    # what RewardLoopManager then stacks per key: plain float arrays
    assert np.array([i["dist_mean"] for i in infos]).dtype == np.float64


def test_verl_legacy_naive_and_batch_managers(batch, ref, model_dir, policy_tokenizer_dir):
    """The older managers still shipped in verl.workers.reward_manager (their __call__ gives
    the token-level reward tensor and reward_extra_info lists)."""
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.workers.reward_manager import BatchRewardManager, NaiveRewardManager

    from transformers import AutoTokenizer

    want, out = _expected(ref, "mean")
    # loaded by its file path (verl runs it as an anonymous module): configure() on the package
    # module still applies, so the two copies share settings and the model cache
    dv.configure(model=str(model_dir))  # risk defaults to the mean
    fn = get_custom_reward_fn(_config(policy_tokenizer_dir, path=dv.__file__))
    tok = AutoTokenizer.from_pretrained(policy_tokenizer_dir)
    res = NaiveRewardManager(tok, num_examine=0, compute_score=fn)(batch, return_dict=True)
    assert _close(_last_token_scores(res["reward_tensor"], batch), want)
    assert _close(res["reward_extra_info"]["dist_mean"], out.mean.tolist())
    assert len(dv._batchers) == 1  # one model load, in the package module

    fn_batch = get_custom_reward_fn(_config(policy_tokenizer_dir, name="compute_score_batch", model=str(model_dir), risk=RISK))
    res = BatchRewardManager(tok, num_examine=0, compute_score=fn_batch)(batch, return_dict=True)
    assert _close(_last_token_scores(res["reward_tensor"], batch), _expected(ref)[0])


# ---------------------------------------------------------------------- settings and prompts
def test_settings_precedence_env_configure_kwargs(monkeypatch, ref, model_dir, url):
    msgs, resp = ROWS[0]
    want_mean = float(ref.score([msgs], [resp]).reward.mean()[0])
    want_cvar = float(ref.score([msgs], [resp]).reward.cvar(0.1)[0])
    with pytest.raises(ValueError, match="needs a model"):
        dv.compute_score("s", resp, None, {"prompt": msgs})
    monkeypatch.setenv(dv.ENV_MODEL, str(model_dir))
    assert math.isclose(dv.compute_score("s", resp, None, {"prompt": msgs})["score"], want_mean, rel_tol=1e-9)
    monkeypatch.setenv(dv.ENV_RISK, RISK)
    assert math.isclose(dv.compute_score("s", resp, None, {"prompt": msgs})["score"], want_cvar, rel_tol=1e-9)
    dv.configure(url=url, risk="mean")  # configure() beats the environment: over HTTP now
    got = dv.compute_score("s", resp, None, {"prompt": msgs})
    assert math.isclose(got["score"], want_mean, rel_tol=1e-6) and dv._clients
    # the call's own keyword arguments (verl's reward_kwargs) beat both
    got = dv.compute_score("s", resp, None, {"prompt": msgs}, model=str(model_dir), risk=RISK)
    assert math.isclose(got["score"], want_cvar, rel_tol=1e-9)
    with pytest.raises(ValueError, match="not both"):
        dv.compute_score("s", resp, None, {"prompt": msgs}, model=str(model_dir), url=url)
    with pytest.raises(ValueError):
        dv.configure(risk="cvar:alpha=7")
    # a loaded model object works too
    dv.reset()
    dv.configure(model=ref, risk=RISK)
    monkeypatch.delenv(dv.ENV_MODEL)
    assert math.isclose(dv.compute_score("s", resp, None, {"prompt": msgs})["score"], want_cvar, rel_tol=1e-9)


def test_prompt_lookup_in_extra_info(ref, model_dir):
    msgs, resp = ROWS[1]
    want = float(ref.score([msgs], [resp]).reward.mean()[0])
    as_numpy = {"prompt": np.array(msgs, dtype=object)}  # how pandas hands back a parquet list column
    assert math.isclose(dv.compute_score("s", resp, None, as_numpy, model=str(model_dir))["score"], want, rel_tol=1e-9)
    assert math.isclose(dv.compute_score("s", resp, None, {"raw_prompt": msgs}, model=str(model_dir))["score"], want, rel_tol=1e-9)
    # features are computed afresh on every call (RewardModel.score keeps no cache), so two float32
    # backbone forwards of the same text may differ in the last bits: compare at float32 precision
    plain = float(ref.score(["Is the earth flat?"], [resp]).reward.mean()[0])
    got = dv.compute_score("s", resp, None, {"question": "Is the earth flat?"}, model=str(model_dir))["score"]
    assert math.isclose(got, plain, rel_tol=1e-5)
    got = dv.compute_score("s", resp, None, {"q": "Is the earth flat?", "prompt": msgs}, model=str(model_dir), prompt_key="q")["score"]
    assert math.isclose(got, plain, rel_tol=1e-5)
    with pytest.raises(KeyError, match="extra_info\\['prompt'\\]"):
        dv.compute_score("s", resp, None, {"split": "train", "index": 0}, model=str(model_dir))
    with pytest.raises(KeyError, match="no prompt"):
        dv.compute_score("s", resp, None, None, model=str(model_dir))


@pytest.mark.slow
def test_verl_reward_loop_manager_under_ray(batch, ref, model_dir, policy_tokenizer_dir):
    """The whole of verl 0.9's reward step as its trainer runs it: RewardLoopManager starts the
    reward-loop worker as a Ray actor (a separate process importing distrm through the
    ``pkg://`` path), compute_rm_score gathers the scores into ``rm_scores`` and the summary
    into ``reward_extra_keys``, and verl's extract_reward reads them back."""
    import shutil
    import tempfile

    import ray
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager
    from verl.trainer.ppo.reward import extract_reward

    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 << 20, _temp_dir=tmp)
    try:
        manager = RewardLoopManager(_config(policy_tokenizer_dir, model=str(model_dir), risk=RISK))
        rm_scores, extra = extract_reward(manager.compute_rm_score(batch))
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    want, out = _expected(ref)
    assert _close(_last_token_scores(rm_scores, batch), want)
    assert tuple(extra) == dv.SUMMARY_KEYS
    assert _close(list(extra["dist_mean"]), out.mean.tolist()) and _close(list(extra["score"]), want)


# ---------------------------------------------------------------------- verl's reward-model HTTP path
@pytest.fixture(scope="module")
def classify_url(model_dir, policy_tokenizer_dir):
    """distrm serve told the template verl renders with (the 'reward model tokenizer' below is
    SmolLM2's, whose template adds a default system message that is not part of the chat)."""
    cfg = ServeConfig(max_batch=64, max_wait_ms=5, reward_risk=RISK, policy_tokenizer=str(policy_tokenizer_dir))
    with running_server(model_dir, cfg) as u:
        yield u


def test_verl_discriminative_rm_path_posts_to_distrm_classify(batch, ref, classify_url, policy_tokenizer_dir):
    """verl's own disrm client code (RewardLoopWorker.compute_score_disrm: renders raw_prompt +
    response with the reward model's chat template, POSTs vLLM's /classify through aiohttp,
    reads data[-1].probs[-1]) pointed at distrm serve. verl 0.9.1 normally aims it at the
    vLLM server it launches itself for reward.reward_model.model_path; the address is set by
    hand here (verl has no setting for an external reward-model URL)."""
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    config = _config(policy_tokenizer_dir, path=None)
    config.reward.reward_model = {"enable": True, "model_path": str(policy_tokenizer_dir), "rollout": {"name": "vllm"}}
    worker = RewardLoopWorker(config, reward_router_address=classify_url.removeprefix("http://"))
    outputs = worker.loop.run_until_complete(worker.compute_score_batch(batch))
    assert _close([o["reward_score"] for o in outputs], _expected(ref)[0])


def test_classify_route_shape(classify_url, ref, policy_tokenizer_dir):
    import httpx
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_tokenizer_dir)
    texts = [tok.apply_chat_template(m + [{"role": "assistant", "content": r}], tokenize=False) for m, r in ROWS]
    want = _expected(ref)[0]
    body = httpx.post(f"{classify_url}/classify", json={"model": "rm", "input": texts, "use_activation": False}, timeout=60).json()
    assert body["object"] == "list" and body["model"] == "rm" and [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["num_classes"] == 1 and d["error"] == 0.0 for d in body["data"])
    assert _close([d["probs"][-1] for d in body["data"]], want)
    # vLLM's default applies the activation (sigmoid for one class); the risk can be chosen per request
    body = httpx.post(f"{classify_url}/classify", json={"input": texts[0], "risk": "mean"}, timeout=60).json()
    mean0 = float(ref.score([ROWS[0][0]], [ROWS[0][1]]).reward.mean()[0])
    assert math.isclose(body["data"][0]["probs"][0], 1 / (1 + math.exp(-mean0)), rel_tol=1e-6)
    # an input with no response turn: the fallback reward and a flag, never null, not a 4xx for the batch
    body = httpx.post(f"{classify_url}/classify", json={"input": [texts[0], "<|im_start|>user\nhi<|im_end|>\n"],
                                                        "use_activation": False}, timeout=60).json()  # fmt: skip
    assert body["data"][1]["error"] == 1.0 and body["data"][1]["probs"] == [0.0] and body["errors"][0]["index"] == 1
    assert math.isclose(body["data"][0]["probs"][0], want[0], rel_tol=1e-6)
    r = httpx.post(f"{classify_url}/classify", json={"input": []}, timeout=60)
    assert r.status_code == 422
