"""Features that stream (issue 16): float16/bfloat16 stores, memory-mapped views, and the
heads and gate trained from them in blocks with the in-memory path's results."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distrm.config import GateConfig
from distrm.features import FeatureStore, StoredFeatures, extract, text_key
from distrm.heads.gate import GatingNetwork
from distrm.heads.quantile import QuantileHeads, QuantileHeadsCV
from distrm.training.gate import train_gate

PROMPTS = [f"Question {i}: what is {i} times three?" for i in range(10)]
RESPONSES = [f"It is {3 * i}." for i in range(10)]


def _store(root: Path, X: np.ndarray, P: np.ndarray, dtype: str = "float32", shard: int = 64) -> list[bytes]:
    """Rows X (reward) and P (prompt) written as shards of ``shard`` rows; their keys, in order."""
    fs = FeatureStore(root, "test-identity", dtype)
    keys = [text_key(f"prompt {i}", f"response {i}") for i in range(len(X))]
    for s in range(0, len(X), shard):
        fs.write_shard(keys[s : s + shard], X[s : s + shard], P[s : s + shard])
    return keys


def _view(root: Path, keys: list[bytes], dtype: str = "float32", order=None) -> tuple[StoredFeatures, StoredFeatures]:
    fs = FeatureStore(root, "test-identity", dtype)
    keys = keys if order is None else [keys[i] for i in order]
    return fs.gather(keys, fs.index(), stream=True)


def test_float32_store_key_is_unchanged():
    """Recorded before storage dtypes existed: older float32 stores are found where they are."""
    fs = FeatureStore(Path("/tmp/distrm-test-key-check"), "hf:fixed-backbone|rev=abc|dtype=float32|max_length=128")
    assert fs.dir.name == "d732c520e2b4de3c0a003953"
    assert text_key("What is 2+2?", "Four.").hex() == "9847e5f31eab53bfaa7080cef03630bc4b022dd868e5ec3b091f7f96097184c5"


def test_key_differs_by_storage_dtype(tmp_path):
    dirs = {d: FeatureStore(tmp_path, "backbone-x", d).dir for d in ("float32", "float16", "bfloat16")}
    assert len(set(dirs.values())) == 3
    assert dirs["float32"] == FeatureStore(tmp_path, "backbone-x").dir
    assert "store_dtype=bfloat16" in (dirs["bfloat16"] / "IDENTITY").read_text()
    with pytest.raises(ValueError, match=r"store_dtype must be one of \['bfloat16', 'float16', 'float32'\], got 'fp8'"):
        FeatureStore(tmp_path, "backbone-x", "fp8")


@pytest.mark.parametrize("dtype,rel", [("float16", 2**-11), ("bfloat16", 2**-8)])
def test_half_precision_round_trip_within_dtype_rounding(tmp_path, dtype, rel):
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((150, 24)) * np.exp(rng.uniform(-3, 3, (150, 24)))).astype(np.float32)
    P = rng.standard_normal((150, 24)).astype(np.float32)
    keys = _store(tmp_path, X, P, dtype)
    fs = FeatureStore(tmp_path, "test-identity", dtype)
    stem = sorted(fs.index().values())[0][0]
    on_disk = np.load(fs.dir / f"{stem}.reward.npy")
    assert on_disk.dtype == (np.uint16 if dtype == "bfloat16" else np.float16)
    assert json.loads((fs.dir / f"{stem}.sums.json").read_text())["dtype"] == dtype
    reward, prompt = fs.gather(keys, fs.index())
    assert reward.dtype == np.float32 and reward.shape == X.shape
    sub = 2.0**-25  # half the float16 subnormal spacing
    assert np.all(np.abs(reward - X) <= rel * np.abs(X) + sub), "round to nearest: half an ulp of the dtype"
    assert np.all(np.abs(prompt - P) <= rel * np.abs(P) + sub)
    ref = torch.from_numpy(X).to(getattr(torch, dtype)).float().numpy()
    np.testing.assert_array_equal(reward, ref)  # exactly torch's rounding


def test_extract_in_bfloat16_matches_float32_features(tmp_path, minilm_backbone):
    f32 = extract(minilm_backbone, PROMPTS, RESPONSES, store=tmp_path, progress=False)
    bf = extract(minilm_backbone, PROMPTS, RESPONSES, store=tmp_path, store_dtype="bfloat16", progress=False)
    assert bf.n_computed == 10 and bf.n_cached == 0, "a float32 store does not serve a bfloat16 request"
    again = extract(minilm_backbone, PROMPTS, RESPONSES, store=tmp_path, store_dtype="bfloat16", progress=False)
    assert again.n_computed == 0 and np.array_equal(again.reward, bf.reward)
    assert np.all(np.abs(bf.reward - f32.reward) <= 2**-8 * np.abs(f32.reward) + 1e-6)
    streamed = extract(minilm_backbone, PROMPTS, RESPONSES, store=tmp_path, store_dtype="bfloat16", progress=False, stream=True)
    assert isinstance(streamed.reward, StoredFeatures) and np.array_equal(np.asarray(streamed.prompt), bf.prompt)


def test_stream_view_reads_rows_on_demand_and_unmaps(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 16)).astype(np.float32)
    keys = _store(tmp_path, X, -X, shard=64)
    order = rng.permutation(200)[:150]
    reward, prompt = _view(tmp_path, keys, order=order)
    assert not isinstance(reward, np.ndarray) and reward.shape == (150, 16) and len(reward) == 150
    fs = FeatureStore(tmp_path, "test-identity")
    stem = next(iter(fs.index().values()))[0]
    assert isinstance(fs.open(stem, "reward"), np.memmap)
    np.testing.assert_array_equal(np.asarray(reward), X[order])
    np.testing.assert_array_equal(prompt[[5, 0, 5, 149]], -X[order[[5, 0, 5, 149]]])
    np.testing.assert_array_equal(reward[10:20], X[order[10:20]])
    np.testing.assert_array_equal(reward[-1], X[order[-1]])
    np.testing.assert_array_equal(reward[torch.tensor([3, 1])], X[order[[3, 1]]])
    blocks = list(reward.blocks(64))
    assert [s for s, _ in blocks] == [0, 64, 128] and np.array_equal(np.concatenate([b for _, b in blocks]), X[order])
    maps = Path("/proc/self/maps")
    if maps.exists():  # nothing of the store stays mapped (resident) after the reads
        assert str(fs.dir) not in maps.read_text()
    with pytest.raises(IndexError, match="out of range"):
        reward[[0, 150]]


def test_old_float32_shards_without_dtype_record_still_read(tmp_path, minilm_backbone):
    ref = extract(minilm_backbone, PROMPTS, RESPONSES, store=tmp_path, progress=False)
    d = FeatureStore(tmp_path, minilm_backbone.identity).dir
    for f in d.glob("shard-*.sums.json"):  # what versions before storage dtypes wrote
        sums = json.loads(f.read_text())
        del sums["dtype"]
        f.write_text(json.dumps(sums))
    again = extract(minilm_backbone, PROMPTS, RESPONSES, store=tmp_path, progress=False)
    assert again.n_computed == 0 and np.array_equal(again.reward, ref.reward)


def _rated(n=240, d=12, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * rng.uniform(0.2, 3, d) + 1).astype(np.float32)
    Y = np.stack([X[:, 0] - 0.5 * X[:, 1] + rng.standard_normal(n), np.round(X[:, 2] + rng.standard_normal(n))], 1)
    Y[rng.random(Y.shape) < 0.2] = np.nan
    return X, Y


@pytest.mark.parametrize("solver", ["admm", "ipm"])
def test_heads_fit_from_the_store_in_blocks_equals_in_memory(tmp_path, solver):
    X, Y = _rated()
    keys = _store(tmp_path, X, X, shard=50)
    view, _ = _view(tmp_path, keys)
    kw = dict(alpha=0.01, levels=[0.1, 0.5, 0.9], solver=solver)
    if solver == "admm":
        kw.update(dtype=torch.float64, max_iter=3000, tol=5e-3)
    mem = QuantileHeads(**kw).fit(torch.from_numpy(X), Y)
    blk = QuantileHeads(block_rows=37, **kw).fit(view, Y)
    assert blk.coef_.abs().sum() > 0, "a non-trivial fit"
    for a in ("coef_", "intercept_", "objective_", "feature_mean_", "feature_scale_"):
        torch.testing.assert_close(getattr(blk, a), getattr(mem, a), rtol=0, atol=1e-8, msg=a)
    assert blk.n_iter_.tolist() == mem.n_iter_.tolist()


def test_heads_cv_on_a_memmap_equals_in_memory(tmp_path):
    X, Y = _rated(seed=1)
    np.save(tmp_path / "x.npy", X)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    mem = QuantileHeadsCV(n_alphas=3, levels=[0.25, 0.75]).fit(torch.from_numpy(X), Y)
    blk = QuantileHeadsCV(n_alphas=3, levels=[0.25, 0.75], block_rows=64).fit(mm, Y)
    torch.testing.assert_close(blk.alpha_, mem.alpha_, rtol=1e-12, atol=0)
    torch.testing.assert_close(blk.coef_, mem.coef_, rtol=0, atol=1e-8)


def test_heads_in_blocks_leave_a_tensor_input_untouched():
    X, Y = _rated(n=90, d=5)
    Xt = torch.from_numpy(X).double()
    before = Xt.clone()
    blk = QuantileHeads(alpha=0.01, levels=[0.5], block_rows=20).fit(Xt, Y)  # blocks are worked on in place
    assert torch.equal(Xt, before)
    torch.testing.assert_close(blk.coef_, QuantileHeads(alpha=0.01, levels=[0.5]).fit(Xt, Y).coef_, rtol=0, atol=1e-8)


def test_heads_in_blocks_name_bad_features(tmp_path):
    X, Y = _rated()
    X[100, 3] = np.nan
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(ValueError, match=r"NaN or inf \(rows 96\.\.127\)"):
        QuantileHeads(block_rows=32).fit(np.load(tmp_path / "x.npy", mmap_mode="r"), Y)


def test_gate_trained_from_the_store_in_blocks_matches_in_memory(tmp_path):
    rng = np.random.default_rng(2)
    n, d, M = 500, 24, 3
    P = (rng.standard_normal((n, d)) * 2 + 0.5).astype(np.float32)
    keys = _store(tmp_path, P, P, shard=128)
    _, view = _view(tmp_path, keys)
    mc, mr = torch.from_numpy(rng.random((n, M))), torch.from_numpy(rng.random((n, M)))
    cfg = GateConfig(hidden=16, n_hidden=2, epochs=3, batch_size=64)
    nets, logs = [], []
    for src in (torch.from_numpy(P), view):
        torch.manual_seed(0)
        net = GatingNetwork(d, M, 16, 2)
        logs.append(train_gate(net, src, mc, mr, cfg, seed=0, progress=False, block_rows=90))
        nets.append(net)
    assert abs(logs[0][-1]["loss"] - logs[1][-1]["loss"]) < 1e-5
    assert logs[0][-1]["train_accuracy"] == logs[1][-1]["train_accuracy"]
    with torch.no_grad():
        x = torch.from_numpy(P[:100])
        torch.testing.assert_close(nets[1](x), nets[0](x), rtol=0, atol=1e-4)
        # the standardiser fitted over blocks (float64 sums) is the in-memory one up to float32 rounding
        torch.testing.assert_close(nets[1].input_mean, nets[0].input_mean, rtol=1e-5, atol=1e-6)
