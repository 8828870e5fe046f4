"""The packed (padding-free) path gives the features of the naive Hugging Face forward
(one sequence at a time, no padding, no mask) on every architecture it is enabled for, and
a packed backbone keeps the padded one's feature identity (store keys stay valid).

On CPU the packed attention runs its per-segment reference (the definition the CUDA varlen
kernel must match), in fp32: bound 1e-4. The CUDA kernel itself, in bf16, is checked by
benchmarks/gpu_check.py when a GPU is lent (its tolerance is stated there)."""

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModel, Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from distrm.features import packing
from distrm.features.backbones import Backbone

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
             vocab_size=200)
CONFIGS = {
    "llama": LlamaConfig(**SMALL),
    "mistral": MistralConfig(**SMALL, sliding_window=None),
    "qwen2": Qwen2Config(**SMALL),  # biased q/k/v: fused with their bias
    "qwen3": Qwen3Config(**SMALL, head_dim=16),  # q/k norms: packed, not fused
    # a 5-token window on the local layers: packing must not let a segment see past it
    "gemma3_text": Gemma3TextConfig(**SMALL, head_dim=16, sliding_window=5, layer_types=["sliding_attention", "full_attention"]),
}


@torch.inference_mode()
def naive(model, seqs, positions):
    """The definition: each sequence alone through the plain HF forward."""
    out = []
    for s, p in zip(seqs, positions):
        h = model(input_ids=torch.tensor([s]), use_cache=False).last_hidden_state[0]
        out.append(h[p].numpy())
    return np.stack(out)


def test_packed_architectures_are_exactly_those_checked_here():
    assert set(CONFIGS) == set(packing.PACKED_ARCHS)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_packed_matches_naive_forward_fp32(arch):
    torch.manual_seed(0)
    model = AutoModel.from_config(CONFIGS[arch], attn_implementation="sdpa").eval()
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 200, n).tolist() for n in (9, 1, 17, 12, 3)]
    positions = [[len(s) - 1, len(s) // 2] for s in seqs]
    ref = naive(model, seqs, positions)
    fast = copy.deepcopy(model)
    fused = packing.enable_packing(fast)
    assert fused == (2 if arch in ("llama", "mistral", "qwen2") else 0)  # q/k-norm layers stay unfused
    got = packing.packed_hidden(fast, seqs, positions)
    assert got.shape == ref.shape == (5, 2, 64)
    assert np.abs(got - ref).max() < 1e-4, np.abs(got - ref).max()


@pytest.mark.slow
def test_packed_backbone_matches_naive_forward_on_real_text():
    """SmolLM2-135M (real weights, Llama architecture) on real chats: the backbone's packed
    batches vs the naive forward of the same token ids, reward and prompt features."""
    from distrm.data import registry

    pairs = sorted(registry.load_pairs("hh-rlhf").records[:40], key=lambda p: len(str(p.prompt)) + len(p.chosen))[:4]
    P, R = [p.prompt for p in pairs], [p.chosen for p in pairs]  # the shortest chats: a quick test that keeps prompts
    packed = Backbone.from_pretrained("smollm2-135m", device="cpu", dtype="float32", max_length=128, packed=True)
    padded = Backbone.from_pretrained("smollm2-135m", device="cpu", dtype="float32", max_length=128, packed=False)
    assert packed.packed and not padded.packed and packed.describe()["packed"] is True
    assert packed.identity == padded.identity  # the path is not part of the feature identity
    got = packed.embed(P, R, batch_size=4)
    ids = [packed._causal_ids(p, r) for p, r in zip(P, R)]
    rows = [i for i, (_, q, _) in enumerate(ids) if q >= 0]  # prompts not cut (those use a prompt-only pass)
    assert rows, "some rows must keep their prompt"
    ref = naive(padded.model, [ids[i][0] for i in rows], [[len(ids[i][0]) - 1, ids[i][1]] for i in rows])
    assert np.abs(got.reward[rows] - ref[:, 0]).max() < 1e-4
    assert np.abs(got.prompt[rows] - ref[:, 1]).max() < 1e-4
    base = padded.embed(P, R, batch_size=4)
    assert np.abs(got.reward - base.reward).max() < 1e-4 and np.abs(got.prompt - base.prompt).max() < 1e-4


@pytest.mark.slow
def test_gpu_check_script_runs_its_smoke_mode(tmp_path):
    """benchmarks/gpu_check.py can only really run where a GPU is lent; its smoke mode (tiny
    architecture, CPU, fp32) runs every step of it here, so the script does not rot."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out),
                        "--work", str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    report = json.loads(out.read_text())
    steps = report["archs"]["tiny"]
    assert report["ok"] and [s for s in steps] == ["build", "cli_packed", "cli_padded", "compare"]
    assert steps["compare"]["same_identity"] and steps["compare"]["max_abs_vs_naive"] < 1e-4
    assert "rank 0/1 (local 0)" in steps["cli_packed"]["log"] and steps["cli_padded"]["packed"] is False
    assert report["solver"]["paper"]["max_certified_gap"] < 1e-2
