"""``distrm convert``: released QRM / ArmoRM checkpoints -> distrm folders, and back.

Tiny random-weight checkpoints (Llama, hidden 64, 2 layers, a byte-level BPE tokenizer with a
Llama-3-style chat template, built here in well under a second) are written in the released
layouts. The QRM reference is the real released modeling code: ``rewardbench/models/qrm.py``
from the installed ``rewardbench`` package (``pip install --no-deps rewardbench``; its pinned
transformers 4.51 is not needed), loaded from its file so that rewardbench's heavy package
imports are skipped; the only shims are the removed ``LLAMA_INPUTS_DOCSTRING`` constant and its
hard-coded Llama-3 gating token ids, replaced by this tokenizer's ids of the same text.
ArmoRM's modeling code is not in any installed package (it lives in the Hub repo), so its
reference below is a short re-statement of the published forward (see the docstring there).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from distrm.models.convert import export_qrm, import_released

GATING_TEXT = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "What is the capital of France? Paris is the capital.",
    "Write a haiku about autumn leaves falling slowly.", "I cannot help with that request, sorry.",
    "Two plus two equals four, and three times three is nine.", "Explain recursion simply: a function calls itself.",
]
PROMPTS = ["What is the capital of France?", "Write a haiku about autumn.",
           [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Explain recursion."}]]
RESPONSES = ["Paris.", "Leaves fall slowly, the quick brown fox jumps over them all day long.",
             "A function that calls itself on a smaller input until it reaches a base case."]
M = K = 19  # the released QRM: 19 attributes x 19 quantiles (its reward_quantiles code needs K == M)
D, GATE_HIDDEN = 64, 32


# ------------------------------------------------------------------------------------ builders
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tokenizer folder, tokenizer, tiny LlamaModel) shared by the tests of this module."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|pad|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    # the header's role name and blank line as single tokens, as in Llama 3 ("assistant", "\n\n")
    tk.add_tokens([AddedToken("assistant", normalized=False), AddedToken("\n\n", normalized=False)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                  pad_token="<|pad|>")
    tok.chat_template = CHAT_TEMPLATE
    tdir = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(tdir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=D, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=False)
    llama = LlamaModel(cfg).eval()
    with torch.no_grad():  # livelier than the 0.02 init, so hidden states differ between texts
        for p in llama.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    return tdir, tok, llama


def _ids(tok, prompt, response) -> torch.Tensor:
    msgs = ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt))
    text = tok.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
    return tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def _last_hidden(tok, llama) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([llama(input_ids=_ids(tok, p, r)).last_hidden_state[:, -1] for p, r in zip(PROMPTS, RESPONSES)])


def _gate_tensors(g: torch.Generator, M: int, style: str) -> dict[str, torch.Tensor]:
    """Released gate weights: QRM [Linear(no bias), ReLU, BatchNorm] x 3 -> Linear (layers 0..9);
    ArmoRM [Linear(bias), ReLU] x 3 -> Linear (layers 0..3)."""
    t: dict[str, torch.Tensor] = {}
    d = D
    for i in range(3):
        if style == "qrm":
            t[f"gating.layers.{3 * i}.weight"] = torch.randn(GATE_HIDDEN, d, generator=g) * 0.3
            bn = f"gating.layers.{3 * i + 2}"
            t[f"{bn}.weight"] = 1 + 0.2 * torch.randn(GATE_HIDDEN, generator=g)
            t[f"{bn}.bias"] = 0.2 * torch.randn(GATE_HIDDEN, generator=g)
            t[f"{bn}.running_mean"] = 0.3 * torch.rand(GATE_HIDDEN, generator=g)
            t[f"{bn}.running_var"] = 0.5 + torch.rand(GATE_HIDDEN, generator=g)
            t[f"{bn}.num_batches_tracked"] = torch.tensor(7)
        else:
            t[f"gating.layers.{i}.weight"] = torch.randn(GATE_HIDDEN, d, generator=g) * 0.3
            t[f"gating.layers.{i}.bias"] = torch.randn(GATE_HIDDEN, generator=g) * 0.3
        d = GATE_HIDDEN
    last = 9 if style == "qrm" else 3
    t[f"gating.layers.{last}.weight"] = torch.randn(M, GATE_HIDDEN, generator=g)
    t[f"gating.layers.{last}.bias"] = torch.randn(M, generator=g)
    t["gating.logit_scale"] = torch.tensor([1.7])  # != 1 on purpose: it is folded into the heads
    return t


def _verbosity_T(g: torch.Generator, M: int, v: int = 4) -> torch.Tensor:
    """ArmoRM's debias shape: the identity with row v replaced by -p (p_v = 1)."""
    T = torch.eye(M)
    T[v] = -0.5 * torch.rand(M, generator=g)
    T[v, v] = 0.0
    return T


def _write_released(folder: Path, tok, llama, heads: dict[str, torch.Tensor], extra_cfg: dict) -> Path:
    folder.mkdir(parents=True)
    state = {f"model.{k}": v.detach().clone() for k, v in llama.state_dict().items()}
    save_file({**state, **heads}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    llama.config.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(extra_cfg)
    (folder / "config.json").write_text(json.dumps(cfg))
    tok.save_pretrained(folder)
    return folder


def _qrm_heads(tok, llama, monotone: bool, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if monotone:
        # W[j, k] = A_j + t_k u with u . h = 1 on the test inputs: quantiles increase along k (no
        # crossing), also after T (its column sums are >= 0), so distrm's sorting changes nothing
        H = _last_hidden(tok, llama).double()
        u = (torch.linalg.pinv(H) @ torch.ones(H.shape[0], dtype=torch.float64)).float()
        A = torch.randn(M, 1, D, generator=g) * 0.3
        t = torch.linspace(-0.5, 0.5, K)[None, :, None]
        W = (A + t * u[None, None, :]).reshape(M * K, D)
        T = _verbosity_T(g, M)
    else:  # crossing quantiles and a dense transform
        W = torch.randn(M * K, D, generator=g) * 0.3
        T = torch.eye(M) + 0.2 * torch.randn(M, M, generator=g)
    return {"regression_layer.weight": W, "reward_transform_matrix": T, **_gate_tensors(g, M, "qrm")}


QRM_CONFIG = {"architectures": ["LlamaForRewardModelWithGating31"], "num_objectives": M, "num_quantiles": K,
              "gating_temperature": 5, "gating_hidden_dim": GATE_HIDDEN, "gating_n_hidden": 3}


def _rewardbench_qrm(tok, required: bool = True):
    """The released QRM modeling module from the installed rewardbench package (not imported as
    a package: rewardbench/__init__ pulls in fastchat, wandb, ...). Not installed: skip the
    test (``required``) or None."""
    spec = importlib.util.find_spec("rewardbench")
    if spec is None or not spec.submodule_search_locations:
        if not required:
            return None
        pytest.skip("rewardbench is not installed (pip install --no-deps rewardbench): no reference QRM code")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "qrm.py"
    import transformers.models.llama.modeling_llama as ml

    if not hasattr(ml, "LLAMA_INPUTS_DOCSTRING"):  # removed from transformers 5; only a docstring
        ml.LLAMA_INPUTS_DOCSTRING = ""
    mspec = importlib.util.spec_from_file_location("_rewardbench_qrm", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    mod.token_pattern = tok.encode(GATING_TEXT, add_special_tokens=False)  # its Llama-3 ids, for this tokenizer
    return mod


def _load_reference(mod, folder: Path):
    """The released class on the folder's weights (strict: every tensor name must fit)."""
    from transformers import LlamaConfig

    ref = mod.LlamaForRewardModelWithGating31(LlamaConfig.from_pretrained(folder))
    ref.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return ref.float().eval()


def _ref_outputs(ref, tok) -> dict[str, torch.Tensor]:
    outs: dict[str, list] = {}
    with torch.no_grad():
        for p, r in zip(PROMPTS, RESPONSES):
            o = ref(input_ids=_ids(tok, p, r))
            for k in ("score", "reward_quantiles", "rewards", "gating_output"):
                outs.setdefault(k, []).append(o[k].double())
    return {k: torch.cat(v) for k, v in outs.items()}


def _score(folder: Path):
    from distrm import AutoRewardModel

    model = AutoRewardModel.from_pretrained(folder)
    return model, model.score(PROMPTS, RESPONSES, batch_size=2)  # batches of 2: padding is exercised


# ------------------------------------------------------------------------------------ QRM
@pytest.mark.parametrize("monotone", [True, False], ids=["non-crossing", "crossing"])
def test_import_qrm_scores_like_released_code(tiny, tmp_path, monkeypatch, monotone):
    monkeypatch.chdir(tmp_path)  # the feature cache of score() lands here
    tdir, tok, llama = tiny
    mod = _rewardbench_qrm(tok)
    src = _write_released(tmp_path / "released", tok, llama, _qrm_heads(tok, llama, monotone), QRM_CONFIG)
    ref = _ref_outputs(_load_reference(mod, src), tok)

    out = import_released(src, tmp_path / "distrm")
    model, so = _score(out)
    assert model.config.backbone_prompt_token == "before_header" and model.config.head == "quantile"
    assert model.config.levels == pytest.approx(torch.linspace(0, 1, 21)[1:-1].tolist())
    s = 1.7  # logit_scale: in the released gate output, in distrm's heads
    # the released score is the plain average of the K gate-mixed quantiles
    assert torch.allclose(so.reward.values.mean(-1), ref["score"][:, 0], atol=1e-5, rtol=1e-5)
    assert torch.allclose(so.weights * s, ref["gating_output"], atol=1e-6)
    assert torch.allclose(so.attributes.values.mean(-1), ref["rewards"] * s, atol=1e-5, rtol=1e-5)
    if monotone:  # no crossing: the quantiles themselves agree
        assert torch.allclose(so.reward.values, ref["reward_quantiles"], atol=1e-5, rtol=1e-5)
        # distrm's mean (piecewise-linear quantile function, flat tails) is another estimator
        q = so.reward.values
        expect = (q.sum(-1) + (q[:, 0] + q[:, -1]) / 2) / (K + 1)
        assert torch.allclose(so.mean, expect, atol=1e-12)
    else:  # crossing: distrm sorts, the released code does not; level averages still agree
        assert not torch.allclose(so.reward.values, ref["reward_quantiles"], atol=1e-3)


def test_export_qrm_round_trip(tiny, tmp_path, monkeypatch):
    from distrm.cli import main

    monkeypatch.chdir(tmp_path)
    tdir, tok, llama = tiny
    src = _write_released(tmp_path / "released", tok, llama, _qrm_heads(tok, llama, True), QRM_CONFIG)
    a_dir, e_dir, b_dir = tmp_path / "a", tmp_path / "exported", tmp_path / "b"
    assert main(["convert", "import", str(src), str(a_dir)]) == 0
    assert main(["convert", "export-qrm", str(a_dir), str(e_dir)]) == 0
    assert main(["convert", "import", str(e_dir), str(b_dir)]) == 0

    a, sa = _score(a_dir)
    b, sb = _score(b_dir)
    ta, tb = a.state_tensors(), b.state_tensors()
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert a.config == b.config  # backbone identity included: the bundled backbone is bit-identical
    assert torch.equal(sa.reward.values, sb.reward.values) and torch.equal(sa.weights, sb.weights)
    # the exported folder runs in the released code with the same score
    mod = _rewardbench_qrm(tok, required=False)
    if mod is None:
        return
    ref = _ref_outputs(_load_reference(mod, e_dir), tok)
    assert torch.allclose(sa.reward.values.mean(-1), ref["score"][:, 0], atol=1e-5, rtol=1e-5)
    assert torch.allclose(sa.reward.values, ref["reward_quantiles"], atol=1e-5, rtol=1e-5)


def test_export_refuses_what_the_layout_cannot_hold(tiny, tmp_path, monkeypatch):
    from distrm import AutoRewardModel

    monkeypatch.chdir(tmp_path)
    tdir, tok, llama = tiny
    src = _write_released(tmp_path / "released", tok, llama, _qrm_heads(tok, llama, False), QRM_CONFIG)
    a = AutoRewardModel.from_pretrained(import_released(src, tmp_path / "a"))
    a.intercept += 0.5
    a.config.backbone_prompt_token = "after_header"
    a.save_pretrained(tmp_path / "a2")
    with pytest.raises(ValueError, match="intercepts") as e:
        export_qrm(tmp_path / "a2", tmp_path / "x")
    assert "before it" in str(e.value)


# ------------------------------------------------------------------------------------ ArmoRM
def _armorm_reference(folder: Path, tok) -> dict[str, torch.Tensor]:
    """ArmoRM's released forward (RLHFlow/ArmoRM-Llama3-8B-v0.1, modeling_custom.py), restated:
    rewards = regression_layer(h_last) (bias-free, one value per objective); the gate runs on
    the hidden state at the first token of the last "<|eot_id|><|start_header_id|>assistant
    <|end_header_id|>\\n\\n": 3 x [Linear(bias) -> ReLU] -> Linear -> softmax(x / T) * logit_scale;
    score = sum(gate * (rewards @ reward_transform_matrix))."""
    from transformers import LlamaModel

    sd = load_file(str(folder / "model.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    llama = LlamaModel.from_pretrained(folder, dtype=torch.float32).eval()
    pattern = tok.encode(GATING_TEXT, add_special_tokens=False)
    rows = {"score": [], "rewards": [], "gating_output": []}
    with torch.no_grad():
        for p, r in zip(PROMPTS, RESPONSES):
            ids = _ids(tok, p, r)
            hs = llama(input_ids=ids).last_hidden_state[0]
            lst = ids[0].tolist()
            j = max(i for i in range(len(lst) - len(pattern) + 1) if lst[i:i + len(pattern)] == pattern)
            x = hs[j]
            for i in range(3):
                x = torch.relu(x @ sd[f"gating.layers.{i}.weight"].T + sd[f"gating.layers.{i}.bias"])
            x = x @ sd["gating.layers.3.weight"].T + sd["gating.layers.3.bias"]
            gate = torch.softmax(x / cfg.get("gating_temperature", 10), dim=-1) * sd["gating.logit_scale"][0]
            rewards = hs[-1] @ sd["regression_layer.weight"].T
            rows["score"].append(float((gate * (rewards @ sd["reward_transform_matrix"])).sum()))
            rows["rewards"].append(rewards)
            rows["gating_output"].append(gate)
    return {"score": torch.tensor(rows["score"], dtype=torch.float64),
            "rewards": torch.stack(rows["rewards"]).double(), "gating_output": torch.stack(rows["gating_output"]).double()}


@pytest.mark.parametrize("transform", ["verbosity", "dense"])
def test_import_armorm_scores_like_released_forward(tiny, tmp_path, monkeypatch, transform):
    monkeypatch.chdir(tmp_path)
    tdir, tok, llama = tiny
    g = torch.Generator().manual_seed(3)
    heads = {"regression_layer.weight": torch.randn(M, D, generator=g) * 0.3, **_gate_tensors(g, M, "armorm"),
             "reward_transform_matrix": _verbosity_T(g, M) if transform == "verbosity"
             else torch.eye(M) + 0.2 * torch.randn(M, M, generator=g)}
    src = _write_released(tmp_path / "released", tok, llama, heads,
                          {"architectures": ["LlamaForRewardModelWithGating"], "num_objectives": M})
    ref = _armorm_reference(src, tok)
    model, so = _score(import_released(src, tmp_path / "distrm", layout="armorm"))
    s = 1.7
    assert model.config.head == "ridge" and not model.config.gate_batch_norm and model.config.gate_hidden_bias
    assert model.attribute_names[4] == "helpsteer-verbosity"
    assert torch.allclose(so.mean, ref["score"], atol=1e-5, rtol=1e-5)  # K = 1: the mean is the score
    assert torch.allclose(so.weights * s, ref["gating_output"], atol=1e-6)
    if transform == "verbosity":  # kept as distrm's debias: the raw objectives stay visible
        assert model.config.debias_source == "helpsteer-verbosity"
        feats = torch.as_tensor(model.backbone.embed(PROMPTS, RESPONSES).reward)
        raw = model.attribute_distribution(feats, RESPONSES, debias=False).values[..., 0]
        assert torch.allclose(raw, ref["rewards"] * s, atol=1e-5, rtol=1e-5)
    else:
        assert model.config.debias_source is None


# ------------------------------------------------------------------------------------ errors
def test_pickle_only_source_is_refused(tmp_path):
    src = tmp_path / "pickled"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "num_objectives": 19}))
    (src / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(ValueError, match="pickle"):
        import_released(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_layout_mismatch_and_nonempty_out(tiny, tmp_path):
    tdir, tok, llama = tiny
    src = _write_released(tmp_path / "released", tok, llama, _qrm_heads(tok, llama, False), QRM_CONFIG)
    with pytest.raises(ValueError, match="'qrm' checkpoint"):
        import_released(src, tmp_path / "out", layout="armorm")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="not an empty folder"):
        import_released(src, tmp_path / "full")


# ------------------------------------------------------------------------------------ prompt token
def test_before_header_prompt_token(tiny, tmp_path):
    """The released gating token is the <|eot_id|> before the assistant header; a truncated row
    gets it from the prompt-only pass, so the feature does not depend on the response."""
    from distrm.features.backbones import Backbone

    tdir, tok, llama = tiny
    folder = tmp_path / "bb"
    llama.save_pretrained(folder)
    tok.save_pretrained(folder)
    full = Backbone.from_pretrained(str(folder), device="cpu", max_length=512, prompt_token="before_header")
    ids, pos, _ = full._causal_ids(PROMPTS[2], "ok")
    assert tok.convert_ids_to_tokens(ids[pos: pos + 3]) == ["<|eot_id|>", "<|start_header_id|>", "assistant"]
    assert ids[pos:pos + 5] == tok.encode(GATING_TEXT, add_special_tokens=False)
    assert ids.index(tok.convert_tokens_to_ids("<|start_header_id|>"), pos) == pos + 1
    default = Backbone.from_pretrained(str(folder), device="cpu", max_length=512)
    assert default._causal_ids(PROMPTS[2], "ok")[1] == pos + 4 and default.identity != full.identity

    long = " ".join(["the quick brown fox"] * 40)
    cut = Backbone.from_pretrained(str(folder), device="cpu", max_length=48, prompt_token="before_header")
    with pytest.warns(UserWarning, match="truncated"):
        e_cut = cut.embed(PROMPTS[:2], [long, "ok"])
    e_full = full.embed(PROMPTS[:2], [long, "ok"])
    assert e_cut.n_truncated == 1
    assert torch.allclose(torch.as_tensor(e_cut.prompt), torch.as_tensor(e_full.prompt), atol=1e-5)


def test_sharded_checkpoint(tiny, tmp_path, monkeypatch):
    """A sharded source (model-0000i-of-0000n.safetensors + index) converts shard by shard."""
    monkeypatch.chdir(tmp_path)
    tdir, tok, llama = tiny
    src = _write_released(tmp_path / "released", tok, llama, _qrm_heads(tok, llama, True), QRM_CONFIG)
    state = load_file(str(src / "model.safetensors"))
    (src / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, str(src / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))

    a_dir = import_released(src, tmp_path / "a")
    assert (a_dir / "backbone" / "model.safetensors.index.json").is_file()
    e_dir = export_qrm(a_dir, tmp_path / "e")
    assert len(json.loads((e_dir / "model.safetensors.index.json").read_text())["weight_map"]) == len(state)
    b_dir = import_released(e_dir, tmp_path / "b")
    (a, sa), (b, sb) = _score(a_dir), _score(b_dir)
    assert all(torch.equal(v, b.state_tensors()[k]) for k, v in a.state_tensors().items())
    assert torch.equal(sa.reward.values, sb.reward.values)
