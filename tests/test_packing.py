"""The packed (padding-free) path equals a padded batch: same hidden states at the same
positions, with and without fused projections. The CUDA kernel is exercised by
benchmarks/extract.py on a GPU; here the per-segment SDPA definition runs on CPU."""

import numpy as np
import pytest
import torch
from transformers import AutoModel, LlamaConfig

from distrm.features import packing


def _model():
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=200)
    torch.manual_seed(0)
    return AutoModel.from_config(cfg, attn_implementation="sdpa").eval()


def _padded(model, seqs, positions):
    L = max(map(len, seqs))
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    with torch.inference_mode():
        h = model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    return np.stack([h[i, p].numpy() for i, p in enumerate(positions)])


def test_packed_equals_padded_and_fused():
    model = _model()
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 200, n).tolist() for n in (7, 1, 23, 12)]
    positions = [[len(s) - 1, 0] for s in seqs]
    ref = _padded(model, seqs, positions)
    got = packing.packed_hidden(model, seqs, positions)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-4
    assert packing.fuse_projections(model) == 2
    assert np.abs(packing.packed_hidden(model, seqs, positions) - ref).max() < 1e-4


def test_packed_path_is_not_chosen_without_the_gpu_kernel():
    # the full selection rules (device, dtype, architecture, kernel) are in test_extract_devices.py
    if packing.available():
        pytest.skip("GPU kernel present")
    ok, why = packing.packed_support("causal", _model().config, torch.device("cpu"), torch.float32)
    assert not ok and "no CUDA" in why
