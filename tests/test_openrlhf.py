"""OpenRLHF against a real ``distrm serve``, through OpenRLHF's own client code.

* OpenRLHF 0.11.2 (installed from PyPI, ``pip install --no-deps openrlhf==0.11.2 aiohttp``):
  its prompts are built by its own ``preprocess_data`` with SmolLM2's real chat template, and
  the reward is fetched by its own ``SingleTurnAgentExecutor.execute`` (which tokenizes the
  prompt, cuts it from the left when it is too long, decodes prompt + response with special
  tokens kept and posts ``{"query", "prompts", "labels"}`` with aiohttp). Only the vLLM engine
  is a stand-in (it "generates" a fixed response as token ids).
* OpenRLHF 0.8.11's whole-rollout request (``remote_rm_utils.request_api_wrapper``, one
  request for the whole rollout, prompts cut from the right), when that release is installed
  with ``pip install --no-deps --target .cache/test-deps/openrlhf-0.8.11 openrlhf==0.8.11``
  (or ``$DISTRM_OPENRLHF_LEGACY`` names such a folder); skipped otherwise.

Missing third-party modules that the imported OpenRLHF modules import but the functions under
test never call (``pylatexenc`` for its math grader, ``ray`` for its remote decorator) are
stubbed in ``sys.modules``; the functions called are OpenRLHF's own.

The fast tier (no model) checks template detection and parsing for ChatML, Llama-3 and
Gemma strings, a template learned from a tokenizer, every left-cut position, right cuts,
and that stripping and overlap search stay linear on hostile input.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import sys
import time
import types
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path

import httpx
import pytest
import torch

from distrm.serve.templates import (
    CHATML,
    GEMMA,
    LLAMA3,
    PolicyTemplate,
    Recoverer,
    RecoverError,
    common_prefix,
    detect_format,
    left_overlap,
    parse_turns,
    strip_tokens,
)

ROOT = Path(__file__).resolve().parents[1]
LEGACY = Path(os.environ.get("DISTRM_OPENRLHF_LEGACY", ROOT / ".cache" / "test-deps" / "openrlhf-0.8.11"))

CONV = [
    {"role": "system", "content": "You are a careful assistant. Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]
CONV_MULTI = [
    {"role": "system", "content": "Be concise."},
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "7"},
    {"role": "user", "content": "And an even one?"},
]
RESPONSE = "Paris is the capital of France."


@pytest.fixture(scope="module")
def smollm2_dir():
    from distrm.features.backbones import resolve_model_dir

    return resolve_model_dir("smollm2-135m")


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def _msgs(rec):
    return [(m["role"], m["content"]) for m in rec.prompt] if isinstance(rec.prompt, list) else rec.prompt


# ---------------------------------------------------------------------- fast tier: templates
def test_chatml_smollm2_real_template(tok):
    p = tok.apply_chat_template(CONV_MULTI, tokenize=False, add_generation_prompt=True)
    assert detect_format(p) is CHATML
    rec = Recoverer().recover(p + RESPONSE + tok.eos_token, p)
    assert rec.prompt == CONV_MULTI and rec.response == RESPONSE and not rec.prompt_truncated and rec.template == "chatml"
    # without prompts: the query alone is the conversation + the last assistant turn
    rec = Recoverer().recover(p + RESPONSE + tok.eos_token, None)
    assert rec.prompt == CONV_MULTI and rec.response == RESPONSE


def test_chatml_qwen_style_and_tool_role():
    p = ("<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n"
         "<|im_start|>assistant\nCalling.<|im_end|>\n<|im_start|>tool\n{\"t\": 20}<|im_end|>\n<|im_start|>assistant\n")
    rec = Recoverer().recover(p + "It is 20 C.<|im_end|><|endoftext|><|endoftext|>", p)
    assert _msgs(rec) == [("system", "You are Qwen."), ("user", "Weather?"), ("assistant", "Calling."), ("tool", '{"t": 20}')]
    assert rec.response == "It is 20 C."


def test_llama3_header_turns():
    p = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert detect_format(p) is LLAMA3
    rec = Recoverer().recover(p + "Hello! How can I help?<|eot_id|>", p)
    assert _msgs(rec) == [("system", "Be brief."), ("user", "Hi there")] and rec.response == "Hello! How can I help?"
    assert rec.template == "llama3" and not rec.prompt_truncated


def test_gemma_turns():
    p = ("<bos><start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\nBlue.<end_of_turn>\n"
         "<start_of_turn>user\nAnother?<end_of_turn>\n<start_of_turn>model\n")
    assert detect_format(p) is GEMMA
    rec = Recoverer().recover(p + "Green.<end_of_turn>\n<eos>", p)
    assert _msgs(rec) == [("user", "Name a colour."), ("assistant", "Blue."), ("user", "Another?")]
    assert rec.response == "Green."


def test_plain_text_prompts_unchanged():
    assert detect_format("Human: hi\nAssistant:") is None
    rec = Recoverer(strip=("</s>",)).recover("Human: hi\nAssistant: hello</s>", "Human: hi\nAssistant:")
    assert rec.prompt == "Human: hi\nAssistant:" and rec.response == " hello" and not rec.prompt_truncated
    assert Recoverer().recover("just text", None).prompt == ""
    with pytest.raises(RecoverError):
        Recoverer().recover("unrelated", "Question?")


def test_policy_tokenizer_drops_its_default_system(tok):
    only_user = [{"role": "user", "content": "Hi"}]
    p = tok.apply_chat_template(only_user, tokenize=False, add_generation_prompt=True)
    pol = PolicyTemplate.from_tokenizer(tok)
    assert pol.fmt is CHATML and pol.default_system and pol.default_system in p and "<|im_end|>" in pol.specials
    assert Recoverer(policy=pol).recover(p + "Hello<|im_end|>", p).prompt == only_user
    # detected without the tokenizer, the template's default system message is kept
    assert Recoverer().recover(p + "Hello<|im_end|>", p).prompt == [{"role": "system", "content": pol.default_system}] + only_user


def test_template_of_no_known_family_is_learned(tok):
    t = deepcopy(tok)
    t.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>{{ m['content'] }}<</SYS>>"
        "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %} {{ m['content'] }}{{ eos_token }}"
        "{% endif %}{% endfor %}"
    )
    pol = PolicyTemplate.from_tokenizer(t)
    assert pol.fmt.name == "policy"
    p = t.apply_chat_template(CONV_MULTI, tokenize=False, add_generation_prompt=True)
    rec = Recoverer(policy=pol).recover(p + " Two." + t.eos_token, p)
    assert rec.prompt == CONV_MULTI and rec.response == " Two."


def test_every_left_cut_position(tok):
    """OpenRLHF >= 0.9 cuts the prompt's tokens from the left and decodes the rest with the
    response, but sends the whole prompt: the response is always recovered exactly, the
    messages are the visible tail of the conversation, flagged."""
    p = tok.apply_chat_template(CONV_MULTI, tokenize=False, add_generation_prompt=True)
    pids = tok(p, add_special_tokens=False)["input_ids"]
    rids = tok(RESPONSE, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    rec = Recoverer()
    full = [m["content"] for m in CONV_MULTI]
    for cut in range(1, len(pids)):
        q = tok.decode(pids[cut:] + rids, skip_special_tokens=False)
        r = rec.recover(q, p)
        assert r.response == RESPONSE and r.prompt_truncated, cut
        got = [m["content"] for m in r.prompt] if r.prompt else []
        if got:  # a tail of the conversation, its first message possibly cut
            assert full[len(full) - len(got):][1:] == got[1:] and full[len(full) - len(got)].endswith(got[0]), (cut, got)
            assert [m["role"] for m in r.prompt] == [m["role"] for m in CONV_MULTI][len(full) - len(got):]


def test_right_cut_prompt(tok):
    """OpenRLHF <= 0.8 cut too-long prompts from the right (tokenizer truncation)."""
    p = tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    pids = tok(p, add_special_tokens=False, max_length=20, truncation=True)["input_ids"]
    q = tok.decode(pids + tok(" and more", add_special_tokens=False)["input_ids"] + [tok.eos_token_id], skip_special_tokens=False)
    r = Recoverer().recover(q, p)
    assert r.prompt_truncated and r.response.endswith("and more") and r.prompt[0]["role"] == "system"
    assert p.startswith(tok.decode(pids))


def test_linear_on_hostile_input():
    n = 1_000_000
    t0 = time.perf_counter()
    assert strip_tokens("x" + "<|im_end|> \n" * (n // 12), ["<|im_end|>", "<|endoftext|>"]) == "x"
    assert strip_tokens(" \n" * n + "y", ["<eos>"]) == " \n" * n + "y"
    # repetitive prompt and query: bounded candidate checks, no quadratic search
    a = "a" * n
    assert left_overlap("a" * (n // 2) + "b", a + "c") is None
    assert common_prefix(a + "x", a + "y") == n
    assert time.perf_counter() - t0 < 5
    # many headers: one regex scan
    t0 = time.perf_counter()
    turns = parse_turns("<|im_start|>user\nx<|im_end|>\n" * 20_000, CHATML)
    assert len(turns) == 20_000 and time.perf_counter() - t0 < 2
    # the prompt window is cut to the bound before parsing, or rejected
    p = "<|im_start|>user\n" + "z" * 50_000 + "<|im_end|>\n<|im_start|>assistant\n"
    r = Recoverer(max_chars=1000).recover(p + "ok<|im_end|>", p)
    assert r.prompt_truncated and r.response == "ok" and len(r.prompt[0]["content"]) <= 2 * 1000 + 4096
    with pytest.raises(RecoverError) as e:
        Recoverer(max_chars=1000, reject=True).recover(p + "ok", p)
    assert e.value.status == 413


def test_strip_tokens_semantics():
    assert strip_tokens("  <eos>Hi.\n<eos> \n<pad>\n", ["<eos>", "<pad>"]) == "Hi.\n"
    assert strip_tokens("Hello <eos>", ["<eos>"]) == "Hello "
    assert strip_tokens("<eos>", ["<eos>"]) == "" and strip_tokens("", ["<eos>"]) == ""


# ---------------------------------------------------------------------- server tier: OpenRLHF's code
@contextmanager
def _stub_missing(name: str, **attrs):
    """Stand in for a third-party module that is not installed (never for one that is),
    while OpenRLHF's modules are imported; removed again afterwards, so that no other test
    sees the stand-in."""
    try:
        importlib.import_module(name)
        yield
        return
    except ImportError:
        pass
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod
    try:
        yield
    finally:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def openrlhf():
    pytest.importorskip("aiohttp")
    pytest.importorskip("openrlhf")
    with _stub_missing("pylatexenc", latex2text=types.ModuleType("pylatexenc.latex2text")):
        agent = importlib.import_module("openrlhf.utils.agent")
        prompts_dataset = importlib.import_module("openrlhf.datasets.prompts_dataset")
    return agent, prompts_dataset


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from _serve_support import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("openrlhf_model"))


@pytest.fixture(scope="module")
def ref(model_dir):
    from distrm.models.auto import AutoRewardModel

    return AutoRewardModel.from_pretrained(model_dir)


RISK = "cvar:alpha=0.25"


@pytest.fixture(scope="module")
def url(model_dir):
    from _serve_support import running_server

    from distrm.serve.config import ServeConfig

    with running_server(model_dir, ServeConfig(reward_risk=RISK, warmup=False)) as u:
        yield u


@pytest.fixture(scope="module")
def policy_url(model_dir, smollm2_dir):
    from _serve_support import running_server

    from distrm.serve.config import ServeConfig

    with running_server(model_dir, ServeConfig(reward_risk=RISK, policy_tokenizer=smollm2_dir, warmup=False)) as u:
        yield u


class _Engine:
    """The vLLM engine's stand-in: 'generates' a fixed response as token ids, stopping at eos."""

    def __init__(self, tok, response: str) -> None:
        self.ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        out = types.SimpleNamespace(token_ids=list(self.ids), text="", finish_reason="stop", logprobs=None)
        return types.SimpleNamespace(outputs=[out])


def _rollout(agent, url, prompt, tok, response, max_length=2048, max_tokens=None):
    """One rollout through OpenRLHF 0.11.2's own executor: its tokenisation, prompt cut,
    decode and HTTP request."""
    executor = agent.SingleTurnAgentExecutor(url + "/get_reward")
    params = types.SimpleNamespace(max_tokens=max_tokens, logprobs=None)
    return asyncio.run(executor.execute(prompt, "", params, max_length, tok, _Engine(tok, response)))


def _risk():
    from distrm.risk import parse_risk

    name, params = parse_risk(RISK)
    return name, params


def _risk_value(out):
    name, params = _risk()
    return out.reward.risk(name, **params).tolist()


def test_openrlhf_0112_reward_equals_distrm_score(openrlhf, url, policy_url, tok, ref):
    agent, prompts_dataset = openrlhf
    for conv in (CONV, CONV_MULTI):
        # the prompt exactly as OpenRLHF builds it (--data.apply_chat_template)
        prompt, label = prompts_dataset.preprocess_data({"input": conv}, input_key="input", apply_chat_template=tok.apply_chat_template)
        assert prompt.endswith("<|im_start|>assistant\n") and label == ""
        want = _risk_value(ref.score([conv], [RESPONSE]))[0]
        for u in (url, policy_url):
            out = _rollout(agent, u, prompt, tok, RESPONSE)
            assert out["reward"] is not None, "OpenRLHF got no reward"
            assert abs(out["reward"][0] - want) < 1e-5 and abs(out["scores"][0] - want) < 1e-5
            logs = out["extra_logs"]
            assert logs["distrm_prompt_truncated"] == [0.0] and logs["distrm_error"] == [0.0]
            assert all(v is not None and math.isfinite(v) for vs in logs.values() for v in vs)
            # and the same as the server's own /score on the conversation as messages
            body = httpx.post(f"{u}/score", json={"items": [{"messages": conv + [{"role": "assistant", "content": RESPONSE}]}],
                                                  "risks": [RISK]}, timeout=60).json()
            assert abs(body["results"][0]["risk"][RISK] - want) < 1e-5


def test_openrlhf_0112_default_system_with_policy_tokenizer(openrlhf, url, policy_url, tok, ref):
    """SmolLM2's template adds a default system message; with --policy-tokenizer it is
    recognised as the template's and dropped, without it it is scored as part of the prompt."""
    agent, prompts_dataset = openrlhf
    conv = [{"role": "user", "content": "Write one word about the sea."}]
    prompt, _ = prompts_dataset.preprocess_data({"input": conv}, input_key="input", apply_chat_template=tok.apply_chat_template)
    default = PolicyTemplate.from_tokenizer(tok).default_system
    out = _rollout(agent, policy_url, prompt, tok, "Waves.")
    assert abs(out["reward"][0] - _risk_value(ref.score([conv], ["Waves."]))[0]) < 1e-5
    out = _rollout(agent, url, prompt, tok, "Waves.")
    with_default = [{"role": "system", "content": default}] + conv
    assert abs(out["reward"][0] - _risk_value(ref.score([with_default], ["Waves."]))[0]) < 1e-5


def test_openrlhf_0112_left_truncated_prompt(openrlhf, url, tok, ref):
    """A prompt longer than max_length - max_tokens: OpenRLHF cuts its tokens from the left,
    decodes the rest with the response, and posts the *whole* prompt. Finite reward, flagged."""
    agent, prompts_dataset = openrlhf
    prompt, _ = prompts_dataset.preprocess_data({"input": CONV_MULTI}, input_key="input", apply_chat_template=tok.apply_chat_template)
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])
    for keep in (n - 3, 20, 3):  # cut in the system header, inside a message, inside the generation header
        out = _rollout(agent, url, prompt, tok, RESPONSE, max_length=keep + 16, max_tokens=16)
        assert out["reward"] is not None and math.isfinite(out["reward"][0]), keep
        assert out["extra_logs"]["distrm_prompt_truncated"] == [1.0] and out["extra_logs"]["distrm_error"] == [0.0]
    # the one cut inside a message is scored on what the policy saw: the visible tail
    out = _rollout(agent, url, prompt, tok, RESPONSE, max_length=20 + 16, max_tokens=16)
    q = tok.decode(tok(prompt, add_special_tokens=False)["input_ids"][-20:], skip_special_tokens=False)
    rec = Recoverer().recover(q + RESPONSE, prompt)
    assert rec.prompt[-1] == CONV_MULTI[-1] and rec.response == RESPONSE
    assert abs(out["reward"][0] - _risk_value(ref.score([rec.prompt], [RESPONSE]))[0]) < 1e-5


def test_no_null_anywhere(url):
    """Items that cannot be scored get --error-reward (default 0.0) in every list, counted in
    extra_logs; a bad risk parameter is a 422 up front, never a null."""
    body = {"query": ["no prompt in here", 5, "<|im_start|>user\nonly a prompt<|im_end|>\n"], "prompts": ["Question?", "x", None]}
    r = httpx.post(f"{url}/get_reward", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["rewards"] == [0.0, 0.0, 0.0] and out["extra_logs"]["distrm_error"] == [1.0, 1.0, 1.0]
    assert [e["index"] for e in out["errors"]] == [0, 1, 2]
    assert "null" not in r.text


def test_non_finite_reward_is_an_error_not_null(ref):
    """A model output that is not finite: --error-reward and distrm_error, never null."""
    from fastapi.testclient import TestClient

    from distrm.serve.app import create_app
    from distrm.serve.config import ServeConfig

    class Broken:
        def __init__(self, model):
            self._m = model

        def __getattr__(self, name):
            return getattr(self._m, name)

        def score(self, prompts, responses, **kw):
            out = self._m.score(prompts, responses, **kw)
            for i, r in enumerate(responses):
                if r == "BROKEN":
                    out.reward.values[i] = float("nan")
            return out

    app = create_app(Broken(ref), ServeConfig(error_reward=-3.0, warmup=False))
    with TestClient(app) as c:
        r = c.post("/get_reward", json={"query": ["Q: hi A: fine", "Q: hi A: BROKEN"], "prompts": ["Q: hi A: ", "Q: hi A: "]})
    assert r.status_code == 200 and "null" not in r.text and "NaN" not in r.text
    out = r.json()
    assert math.isfinite(out["rewards"][0]) and out["rewards"][1] == -3.0 and out["extra_logs"]["distrm_mean"][1] == -3.0
    assert out["extra_logs"]["distrm_error"] == [0.0, 1.0] and out["errors"][0]["index"] == 1
    assert "non-finite" in out["errors"][0]["detail"]


# ---------------------------------------------------------------------- OpenRLHF <= 0.8: the whole rollout in one request
@pytest.fixture(scope="module")
def legacy_rm_utils():
    path = LEGACY / "openrlhf" / "utils" / "remote_rm_utils.py"
    if not path.is_file():
        pytest.skip(f"OpenRLHF 0.8.11 not installed at {LEGACY} (pip install --no-deps --target {LEGACY} openrlhf==0.8.11)")

    def remote(f=None, **_):  # ray.remote as a plain decorator: only request_api_wrapper is called
        return f if f is not None else (lambda g: g)

    spec = importlib.util.spec_from_file_location("openrlhf_0_8_11_remote_rm_utils", path)
    mod = importlib.util.module_from_spec(spec)
    with _stub_missing("ray", remote=remote, get=lambda x: x):
        spec.loader.exec_module(mod)
    return mod


def test_openrlhf_0811_whole_rollout_in_one_request(legacy_rm_utils, url, tok, ref):
    """0.8.11 posts every query of the rollout at once (``RemoteRewardModel.get_rewards`` ->
    ``remote_rm_fn_ray`` -> ``request_api_wrapper``); prompts are cut from the right by its
    tokenizer call (``max_length=prompt_max_len, truncation=True``). 300 queries (over the old
    default limit of 256), one prompt cut."""
    convs = [CONV, CONV_MULTI, [{"role": "user", "content": "Tell me a long story about " + "a very old lighthouse " * 30}]]
    responses = [RESPONSE, "Two is even.", "Once upon a time."]
    prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    prompt_max_len = 100
    ids = tok(prompts, add_special_tokens=False, max_length=prompt_max_len, truncation=True)["input_ids"]  # as its tokenize_fn
    queries = [tok.decode(i + tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id], skip_special_tokens=False)
               for i, r in zip(ids, responses)]
    k = 100
    out = legacy_rm_utils.request_api_wrapper(url + "/get_reward", {"query": queries * k, "prompts": prompts * k, "labels": [""] * 3 * k})
    assert len(out["rewards"]) == 3 * k and "null" not in json.dumps(out)
    want = _risk_value(ref.score(convs[:2], responses[:2]))
    for j in range(k):
        assert abs(out["rewards"][3 * j] - want[0]) < 1e-5 and abs(out["rewards"][3 * j + 1] - want[1]) < 1e-5
    assert out["extra_logs"]["distrm_prompt_truncated"][:3] == [0.0, 0.0, 1.0]
    assert all(math.isfinite(x) for x in out["rewards"]) and sum(out["extra_logs"]["distrm_error"]) == 0


def test_serve_flags_for_openrlhf(monkeypatch):
    import argparse

    from distrm.cli import serve as serve_cli
    from distrm.config import config_from_args
    from distrm.serve.config import ServeCommandConfig, ServeConfig
    from distrm.serve.limits import Limits

    p = argparse.ArgumentParser()
    serve_cli.register(p.add_subparsers())
    a = p.parse_args(["serve", "m", "--policy-tokenizer", "HuggingFaceTB/SmolLM2-135M-Instruct", "--no-token", "--error-reward", "-1"])
    c = config_from_args(ServeCommandConfig, a)
    assert c.host == "127.0.0.1" and c.server.no_token and c.server.token is None
    assert c.server.policy_tokenizer == "HuggingFaceTB/SmolLM2-135M-Instruct" and c.server.error_reward == -1.0
    d = ServeConfig()
    assert d.error_reward == 0.0 and d.limits.max_items >= 8192 and d.limits.max_body_bytes >= 128 * 1024 * 1024
    with pytest.raises(ValueError):
        ServeConfig(error_reward=float("nan"))
    with pytest.raises(ValueError):
        ServeConfig(no_token=True, token="t")
    with pytest.raises(ValueError):
        Limits(max_items=100, max_queue_items=50)
