"""``distrm train`` (QRM) from a streamed feature store (``backbone.stream``): the same model as
the in-memory path, and no whole store view ever read into memory. Real MiniLM features of
real shared data, small caps, blocks of 16 rows so every stage really goes block by block."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import _train
from distrm.features.store import StoredFeatures

SMALL = ["--set", "data.rated=[ultrafeedback, newsroom, recipes, convabuse]", "--set", "data.pairs=[hh-rlhf, ultrafeedback, pku-saferlhf]",
         "--set", "heads.n_levels=5", "--set", "heads.drop_uninformative=false", "--set", "heads.tol=1e-10",
         "--set", "gate.batch_size=32", "--set", "gate.val_fraction=0.3", "--set", "backbone.stream_block_rows=16"]  # fmt: skip
HEADS = {
    "quantile": ["--set", "heads.alpha=0.05"],  # QuantileHeads
    "cv": [],  # QuantileHeadsCV at the embedded config's path (on less, every attribute picks its marginal)
    "ridge": ["--set", "heads.kind=ridge"],  # RidgeHeads (reads the rated rows into memory, logged)
}
# Gate: the streamed path standardises the prompt features from float64 block sums, the
# in-memory path in float32 (input_mean / input_scale differ by ~1 float32 ulp); minibatches,
# initial weights and steps are identical. AdamW moves each weight by at most ~lr per step, so
# a weight whose gradient is ~0 can go either way on rounding: the two gates' parameters differ
# by at most 2 x lr x steps (observed: ~1e-6 with quantile heads, more with ridge heads).


def _gate_atol(log):
    steps = sum(math.ceil(log["data"]["gate_pairs"]["train"] / 32) for _ in log["gate"])  # gate.batch_size=32
    return 2 * 3e-4 * steps  # the embedded config's gate.lr


def _run(tmp_path, store, name, stream, heads, monkeypatch):
    out = tmp_path / f"{name}-{stream}"
    if stream:  # a whole view read into memory (np.asarray) is the failure streaming avoids
        def whole(self, dtype=None, copy=None):
            raise AssertionError(f"np.asarray on a whole store view: {self!r}")

        monkeypatch.setattr(StoredFeatures, "__array__", whole)
    _train(out, store, *SMALL, *HEADS[heads], "--set", f"backbone.stream={str(stream).lower()}")
    monkeypatch.undo()
    return load_file(str(out / "model.safetensors")), json.loads((out / "train_log.json").read_text())


@pytest.mark.parametrize("heads", ["quantile", pytest.param("cv", marks=pytest.mark.slow)])
def test_streamed_training_gives_the_in_memory_model(heads, tmp_path, feature_store, monkeypatch):
    mem, log_mem = _run(tmp_path, feature_store, heads, False, heads, monkeypatch)
    st, log_st = _run(tmp_path, feature_store, heads, True, heads, monkeypatch)
    assert log_mem["streamed"] is False and log_st["streamed"] is True
    assert set(mem) == set(st) and mem["heads.coef"].shape[0] >= 2  # several attributes: the gate has work
    # heads: the same convex problems; the standardiser's sums come in another order, and the
    # interior point stops at a 1e-10 certified gap
    scale = mem["heads.coef"].abs().max()
    assert scale > 0  # some attribute beats its marginal: the comparison below is not of zeros
    assert (mem["heads.coef"] - st["heads.coef"]).abs().max() <= 1e-6 * scale
    assert torch.allclose(mem["heads.intercept"], st["heads.intercept"], rtol=0, atol=1e-6)
    assert torch.allclose(mem["debias"], st["debias"], rtol=0, atol=1e-6)
    for k in mem:
        if k.startswith("gate.") and mem[k].is_floating_point():
            assert torch.allclose(mem[k], st[k], rtol=0, atol=_gate_atol(log_mem)), k
    assert log_mem["data"]["gate_pairs"] == log_st["data"]["gate_pairs"] and log_st["data"]["gate_pairs"]["validation"] >= 20
    assert log_st["train_pair_accuracy"] == pytest.approx(log_mem["train_pair_accuracy"], abs=0.02)
    assert log_st["validation"]["n_pairs"] == log_mem["validation"]["n_pairs"]
    assert log_st["validation"]["accuracy"] == pytest.approx(log_mem["validation"]["accuracy"], abs=0.05)
    assert [e["loss"] for e in log_st["gate"]] == pytest.approx([e["loss"] for e in log_mem["gate"]], abs=1e-4)


def test_streamed_ridge_heads_match(tmp_path, feature_store, monkeypatch):
    """RidgeHeads solve in memory: with streaming on, ``fit_heads`` reads the rated rows into
    memory for them (logged; the one whole-view read) and everything after streams as usual."""
    mem, log = _run(tmp_path, feature_store, "ridge", False, "ridge", monkeypatch)
    out = tmp_path / "ridge-stream"
    _train(out, feature_store, *SMALL, *HEADS["ridge"], "--set", "backbone.stream=true")
    st = load_file(str(out / "model.safetensors"))
    assert torch.equal(mem["heads.coef"], st["heads.coef"])  # the same rows, the same solve
    for k in mem:
        if k.startswith("gate.") and mem[k].is_floating_point():
            assert torch.allclose(mem[k], st[k], rtol=0, atol=_gate_atol(log)), k


def test_stream_setting_automatic_and_checked():
    from distrm.config import BackboneConfig
    from distrm.heads.blocks import map_row_blocks, select_rows
    from distrm.training.qrm import STREAM_AUTO_BYTES, should_stream

    class View:  # a row source of the given shape (nothing is read to decide)
        def __init__(self, n, d):
            self.shape = (n, d)

        def blocks(self, block_rows):  # pragma: no cover - never read
            raise AssertionError

    d = 4096
    rows = STREAM_AUTO_BYTES // (8 * d)
    assert not should_stream(None, View(rows, d), 0) and should_stream(None, View(rows + 1, d), 0)
    assert should_stream(None, View(1000, d), (rows - 1000) // 3 + 1)  # pairs count three times
    assert should_stream(True, View(10, 8), 0) and not should_stream(False, View(10**9, d), 0)
    assert not should_stream(True, np.zeros((10, 8)), 0)  # arrays: nothing to stream from
    with pytest.raises(ValueError, match="stream_block_rows must be >= 1"):
        BackboneConfig(stream_block_rows=0)


def test_map_row_blocks_equals_one_call(tmp_path):
    """Row-wise work over blocks of a row subset equals the one call on the rows in memory, and
    each call's row slice lines up with its block (per-row side data, e.g. response texts)."""
    from distrm.heads.blocks import RowSubset, map_row_blocks, select_rows

    X = np.random.default_rng(0).normal(size=(37, 5)).astype(np.float32)
    mm = np.memmap(tmp_path / "x.f32", np.float32, "w+", shape=X.shape)  # a row source
    mm[:] = X
    rows = np.arange(3, 30)
    sub = select_rows(mm, rows)
    assert isinstance(sub, RowSubset) and sub.shape == (27, 5)
    assert torch.equal(select_rows(torch.from_numpy(X), rows), torch.from_numpy(X[rows]))
    texts = [str(i) for i in rows]
    fn = lambda r, b: (b.sum(1), torch.tensor([int(t) for t in texts[r]]))  # noqa: E731
    whole = map_row_blocks(fn, torch.from_numpy(X[rows]))
    blocked = map_row_blocks(fn, sub, block_rows=4)
    assert torch.allclose(blocked[0], whole[0]) and blocked[1].tolist() == whole[1].tolist() == rows.tolist()
    assert [s for s, _ in sub.blocks(10)] == [0, 10, 20]
