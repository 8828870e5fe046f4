"""distrm rewards inside TRL's own trainers (issue 14, TRL part).

Fast tier: the HTTP client pickles (TRL's ``AsyncGRPOTrainer`` pickles its reward functions
into a spawned rollout process) and the unpickled client -- here, in a fresh interpreter --
scores against a real ``distrm serve``; the async client is what TRL's own
``is_async_callable`` detects, scores concurrently, and survives being awaited on several
event loops. Slow tier: real ``GRPOTrainer`` and ``RLOOTrainer`` steps on a tiny
random-weight Llama (SmolLM2's real tokenizer and chat template) with the in-process reward
function, the HTTP client and the async client; every reward TRL recorded for a completion
must equal distrm's own score of that (prompt, completion)."""

from __future__ import annotations

import asyncio
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distrm.models.qrm import DistributionalRewardModel
from distrm.serve.app import ServeConfig
from distrm.serve.client import AsyncRewardClient, RewardClient, RewardClientError

from _serve_support import build_model_dir, running_server

TOKEN = "trl-token"
RISK = "cvar:alpha=0.25"
CHAT = [{"role": "system", "content": "Be concise."}, {"role": "user", "content": "Name a prime number."}]
PROMPTS = [CHAT, "Write a haiku about rain.", [{"role": "user", "content": "Is the earth flat?"}]]
COMPLETIONS = [[{"role": "assistant", "content": "7"}], "Soft rain on the roof", [{"role": "assistant", "content": "No."}]]
TEXTS = ["7", "Soft rain on the roof", "No."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("trl_rm"))


@pytest.fixture(scope="module")
def ref(model_dir):
    return DistributionalRewardModel.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def url(model_dir):
    with running_server(model_dir, ServeConfig(max_batch=64, max_wait_ms=5, token=TOKEN)) as u:
        yield u


def _want(ref, prompts, texts, risk=RISK):
    from distrm.risk import RiskMeasure

    return RiskMeasure.parse(risk)(ref.score(list(prompts), list(texts)).reward).tolist()


def _close(got, want, tol=1e-6):
    return len(got) == len(want) and all(g is not None and abs(g - w) <= tol * max(1.0, abs(w)) for g, w in zip(got, want))


# ---------------------------------------------------------------------- fast: pickling
def test_http_client_pickles_and_the_unpickled_client_scores(url, ref):
    client = RewardClient(url, token=TOKEN, risk=RISK, retries=1)
    want = _want(ref, PROMPTS, TEXTS)
    assert _close(client(prompts=PROMPTS, completions=COMPLETIONS), want)  # connection pool now open
    blob = pickle.dumps(client)
    clone = pickle.loads(blob)
    assert clone._http is None and clone.__name__ == "distrm_cvar"
    assert _close(clone(prompts=PROMPTS, completions=COMPLETIONS, trainer_state=None, answer=[1, 2, 3]), want)
    # the original is untouched by pickling and still scores on its own pool
    assert _close(client(prompts=PROMPTS, completions=COMPLETIONS), want)
    client.close()
    assert _close(client(prompts=PROMPTS[:1], completions=COMPLETIONS[:1]), want[:1])  # reopens after close


def test_unpickled_clients_score_in_a_fresh_interpreter(url, ref):
    """What AsyncGRPOTrainer does: pickle the reward functions, unpickle them in a new process."""
    blob = pickle.dumps([RewardClient(url, token=TOKEN, risk=RISK), AsyncRewardClient(url, token=TOKEN, risk=RISK, batch_size=1)])
    code = (
        "import asyncio, json, pickle, sys\n"
        "sync, asy = pickle.loads(sys.stdin.buffer.read())\n"
        f"p, c = {PROMPTS!r}, {COMPLETIONS!r}\n"
        "print(json.dumps([sync(prompts=p, completions=c), asyncio.run(asy(prompts=p, completions=c))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    got_sync, got_async = json.loads(out.stdout.decode().strip().splitlines()[-1])
    want = _want(ref, PROMPTS, TEXTS)
    assert _close(got_sync, want) and _close(got_async, want)


def test_pickled_client_keeps_its_token(url):
    clone = pickle.loads(pickle.dumps(RewardClient(url, token=TOKEN, retries=0)))
    assert clone(prompts=["p"], completions=["c"])[0] is not None
    with pytest.raises(RewardClientError, match="401"):
        pickle.loads(pickle.dumps(RewardClient(url, retries=0)))(prompts=["p"], completions=["c"])


# ---------------------------------------------------------------------- fast: async client
def test_async_client_is_an_async_reward_function_for_trl(url, ref):
    from trl.trainer.utils import get_callable_name, is_async_callable

    client = AsyncRewardClient(url, token=TOKEN, risk=RISK, batch_size=1, max_concurrency=3)
    assert is_async_callable(client) and not is_async_callable(RewardClient(url))
    assert get_callable_name(client) == "distrm_cvar"
    want = _want(ref, PROMPTS, TEXTS)
    # batch_size=1: three /score requests in flight at once, results back in input order
    assert _close(asyncio.run(client(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=[[1], [2], [3]])), want)
    # a second event loop (TRL awaits on a loop of its own): a fresh connection pool, same scores
    assert _close(asyncio.run(client(prompts=PROMPTS, completions=COMPLETIONS)), want)
    clone = pickle.loads(pickle.dumps(client))
    assert clone._ahttp is None and clone.max_concurrency == 3
    assert _close(asyncio.run(clone(prompts=PROMPTS, completions=COMPLETIONS)), want)

    async def concurrently():  # as TRL gathers several async reward functions
        a = AsyncRewardClient(url, token=TOKEN, risk="mean")
        async with a:
            return await asyncio.gather(client(prompts=PROMPTS, completions=COMPLETIONS), a(prompts=PROMPTS, completions=COMPLETIONS))

    got_cvar, got_mean = asyncio.run(concurrently())
    assert _close(got_cvar, want) and _close(got_mean, _want(ref, PROMPTS, TEXTS, "mean"))


def test_async_client_errors_and_unscorable_items(url, ref):
    client = AsyncRewardClient(url, token=TOKEN, risk=RISK, retries=0)
    got = asyncio.run(client(prompts=[None, "Say hi"], completions=["x", "Hello!"]))
    assert got[0] is None and _close(got[1:], _want(ref, ["Say hi"], ["Hello!"]))
    with pytest.raises(RewardClientError, match="422"):
        asyncio.run(AsyncRewardClient(url, token=TOKEN, risk="cvar:alpha=7", retries=0)(prompts=["p"], completions=["c"]))
    with pytest.raises(RewardClientError, match="401"):
        asyncio.run(AsyncRewardClient(url, retries=3)(prompts=["p"], completions=["c"]))
    dead = AsyncRewardClient("http://127.0.0.1:9", retries=2, backoff_s=0.01, timeout=2)
    with pytest.raises(RewardClientError, match="3 attempts"):
        asyncio.run(dead(prompts=["p"], completions=["c"]))
    with pytest.raises(TypeError, match="prompts= and completions="):
        asyncio.run(client(completions=["c"]))


# ---------------------------------------------------------------------- slow: TRL trainers
def _tiny_policy(folder: Path) -> str:
    """A random-weight 2-layer Llama (hidden 32) with SmolLM2's real tokenizer and chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from distrm.features.backbones import resolve_model_dir

    tok = AutoTokenizer.from_pretrained(resolve_model_dir("smollm2-135m"))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return _tiny_policy(tmp_path_factory.mktemp("policy"))


TRAIN_CHAT = [[{"role": "user", "content": "Name a prime number."}], [{"role": "user", "content": "Say something kind."}]]
TRAIN_PLAIN = ["The movie was", "My favourite food is"]

RUNS = [  # (trainer, reward, dataset format): each client in each trainer, both formats covered
    ("grpo", "in_process", "chat"), ("grpo", "http", "plain"), ("grpo", "async", "chat"),
    ("rloo", "in_process", "plain"), ("rloo", "http", "chat"), ("rloo", "async", "plain"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("trainer,reward,fmt", RUNS)
def test_trl_trainer_steps_with_distrm_reward(tmp_path, model_dir, ref, url, policy, trainer, reward, fmt):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from distrm.models.auto import AutoRewardModel
    from distrm.rl.rewards import DistributionalRewardFunction, completion_from_trl

    if reward == "in_process":
        rf = DistributionalRewardFunction(AutoRewardModel.from_pretrained(model_dir), RISK)
    elif reward == "http":
        rf = RewardClient(url, token=TOKEN, risk=RISK)
    else:
        rf = AsyncRewardClient(url, token=TOKEN, risk=RISK, batch_size=2)
    Config, Trainer = (GRPOConfig, GRPOTrainer) if trainer == "grpo" else (RLOOConfig, RLOOTrainer)
    args = Config(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=2, max_completion_length=8,
        max_steps=2, learning_rate=1e-3, report_to=[], use_cpu=True, bf16=False, save_strategy="no", seed=0,
        logging_steps=1, activation_checkpointing=False, disable_tqdm=True,
    )
    prompts = TRAIN_CHAT if fmt == "chat" else TRAIN_PLAIN
    tr = Trainer(
        model=policy, reward_funcs=[rf], args=args, train_dataset=Dataset.from_dict({"prompt": prompts * 2}),
        processing_class=AutoTokenizer.from_pretrained(policy),
    )
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.train()
    assert tr.state.global_step == 2
    assert any(not torch.equal(before[n], p.detach()) for n, p in tr.model.named_parameters()), "the policy did not move"

    # the reward TRL recorded for each (prompt, completion) of the last generation batch is
    # distrm's own score of that exact pair
    got = list(tr._logs["rewards"]["distrm_cvar"])
    ps, cs = list(tr._logs["prompt"]), list(tr._logs["completion"])
    assert len(got) == len(ps) == len(cs) == 4
    assert all(isinstance(p, list) for p in ps) == (fmt == "chat")
    want = _want(ref, ps, [completion_from_trl(c) for c in cs])
    assert all(math.isfinite(g) and abs(g - w) <= 1e-5 * max(1.0, abs(w)) for g, w in zip(got, want)), (got, want)
    logged = [h for h in tr.state.log_history if "rewards/distrm_cvar/mean" in h]
    assert len(logged) == 2 and all(math.isfinite(h["rewards/distrm_cvar/mean"]) for h in logged)
    if reward == "in_process":
        assert len(rf.history) == 2 and all(h["n_scored"] == 4 for h in rf.history)
