"""Which device each launched process takes, and whether its batches run packed: pure
rules, tested with explicit environments and GPU counts (no GPU needed)."""

import logging

import pytest
import torch
from transformers import Gemma2Config, LlamaConfig

from distrm.features import packing
from distrm.features.backbones import _choose_packed
from distrm.features.devices import process_place, resolve_device


def env(rank=None, world=None, local=None):
    e = {}
    for k, v in (("RANK", rank), ("WORLD_SIZE", world), ("LOCAL_RANK", local)):
        if v is not None:
            e[k] = str(v)
    return e


@pytest.mark.parametrize("requested", [None, "auto", "cuda", "AUTO"])
def test_each_rank_takes_its_local_gpu(requested):
    # node 2 of a 2x4 launch: global rank 6 is local rank 2
    assert resolve_device(requested, env(rank=6, world=8, local=2), cuda_devices=4) == torch.device("cuda", 2)
    assert resolve_device(requested, env(), cuda_devices=1) == torch.device("cuda", 0)


def test_without_gpus_auto_is_cpu_and_cuda_is_an_error():
    assert resolve_device("auto", env(rank=1, world=2, local=1), cuda_devices=0) == torch.device("cpu")
    assert resolve_device(None, env(), cuda_devices=0) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda", env(), cuda_devices=0)


def test_cpu_and_explicit_indices_are_kept():
    assert resolve_device("cpu", env(rank=1, world=2, local=1), cuda_devices=8) == torch.device("cpu")
    assert resolve_device("cuda:1", env(), cuda_devices=2) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="only 2 CUDA"):
        resolve_device("cuda:3", env(), cuda_devices=2)


def test_explicit_gpu_under_several_processes_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="distrm.features.devices"):
        assert resolve_device("cuda:1", env(rank=0, world=2, local=0), cuda_devices=2) == torch.device("cuda", 1)
    assert "every one of the 2 processes" in caplog.text


def test_more_local_ranks_than_gpus_is_an_error_naming_both():
    with pytest.raises(ValueError, match="LOCAL_RANK=2 has no GPU of its own: 2 visible"):
        resolve_device("auto", env(rank=2, world=4, local=2), cuda_devices=2)


def test_process_place_reads_the_launcher_environment():
    assert process_place({}) == process_place(env(world=1))
    p = process_place(env(rank=5, world=8, local=1))
    assert (p.rank, p.world_size, p.local_rank, p.distributed) == (5, 8, 1, True)
    assert process_place({"RANK": "3", "WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}).local_rank == 1
    assert process_place(env(rank=1, world=2)).local_rank == 1  # no LOCAL_RANK: one process per node
    with pytest.raises(ValueError, match="WORLD_SIZE=2"):
        process_place(env(rank=2, world=2))
    with pytest.raises(ValueError, match="LOCAL_RANK='x'"):
        process_place({"LOCAL_RANK": "x"})
    with pytest.raises(ValueError, match="expected auto, cpu"):
        resolve_device("tpu-ish", env(), cuda_devices=0)


LLAMA = LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=100)
CUDA, BF16 = torch.device("cuda", 0), torch.bfloat16


def test_packed_support_on_a_gpu_with_the_kernel():
    assert packing.packed_support("causal", LLAMA, CUDA, BF16, kernel=True) == (True, "CUDA varlen attention kernel")
    assert packing.packed_support("causal", LLAMA, CUDA, torch.float16, kernel=True)[0]


@pytest.mark.parametrize("kind, config, device, dtype, kernel, why", [
    ("encoder", LLAMA, CUDA, BF16, True, "encoder backbone"),
    ("causal", Gemma2Config(), CUDA, BF16, True, "architecture 'gemma2' is not one of"),
    ("causal", LLAMA, torch.device("cpu"), BF16, True, "no CUDA"),
    ("causal", LLAMA, CUDA, BF16, False, "no varlen attention kernel"),
    ("causal", LLAMA, CUDA, torch.float32, True, "dtype float32"),
])
def test_packed_support_says_why_not(kind, config, device, dtype, kernel, why):
    ok, reason = packing.packed_support(kind, config, device, dtype, kernel=kernel)
    assert not ok and why in reason


def test_soft_capped_attention_stays_padded():
    cfg = LlamaConfig(**LLAMA.to_dict())
    cfg.attn_logit_softcapping = 50.0
    ok, why = packing.packed_support("causal", cfg, CUDA, BF16, kernel=True)
    assert not ok and "soft-capping" in why


def test_choose_packed_logs_each_fallback_once_and_forcing_checks_the_architecture(caplog):
    from distrm.features import backbones

    backbones._fallbacks_logged.clear()
    with caplog.at_level(logging.INFO, logger="distrm.features.backbones"):
        for _ in range(3):
            assert _choose_packed("auto", "causal", LLAMA, torch.device("cpu"), torch.float32) == (False, "no CUDA (device cpu)")
    assert caplog.text.count("packed path unavailable: no CUDA") == 1
    assert _choose_packed(False, "causal", LLAMA, CUDA, BF16)[0] is False
    ok, why = _choose_packed(True, "causal", LLAMA, torch.device("cpu"), torch.float32)
    assert ok and why.startswith("forced")
    with pytest.raises(ValueError, match="packed=True: encoder"):
        _choose_packed(True, "encoder", LLAMA, CUDA, BF16)
    with pytest.raises(ValueError, match="packed must be"):
        _choose_packed("yes", "causal", LLAMA, CUDA, BF16)
