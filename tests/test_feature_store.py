"""Feature store: cache hits, resume after SIGKILL, accelerate data parallel."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distrm.features.backbones import Backbone
from distrm.data import registry
from distrm.features import FeatureStore, extract

WORKER = str(Path(__file__).parent / "scripts" / "extract_worker.py")
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def minilm():
    return Backbone.from_pretrained("minilm", device="cpu", max_length=128)


@pytest.fixture(scope="module")
def pairs():
    return registry.load_pairs("hh-rlhf").records[:120]


def test_second_extraction_served_from_cache_20x_faster(tmp_path, minilm, pairs):
    P, R = [p.prompt for p in pairs], [p.chosen for p in pairs]
    t0 = time.perf_counter()
    a = extract(minilm, P, R, store=tmp_path, batch_size=16, progress=False)
    t1 = time.perf_counter()
    b = extract(minilm, P, R, store=tmp_path, batch_size=16, progress=False)
    t2 = time.perf_counter()
    assert a.n_computed == len(set(zip(map(str, P), R))) and b.n_computed == 0 and b.n_cached == a.n_computed
    assert np.array_equal(a.reward, b.reward) and np.array_equal(a.prompt, b.prompt)
    assert (t1 - t0) / (t2 - t1) >= 20


def test_duplicates_computed_once_and_order_kept(tmp_path, minilm):
    P = ["q1", "q2", "q1", "q3"]
    R = ["a", "b", "a", "c"]
    f = extract(minilm, P, R, store=tmp_path, progress=False)
    assert f.n_computed == 3
    assert np.array_equal(f.reward[0], f.reward[2]) and not np.array_equal(f.reward[0], f.reward[1])
    g = extract(minilm, ["q3", "q1"], ["c", "a"], store=tmp_path, progress=False)
    assert g.n_computed == 0 and np.array_equal(g.reward, f.reward[[3, 0]])


def test_unfinished_shard_is_ignored(tmp_path, minilm):
    fs = FeatureStore(tmp_path, minilm.identity)
    (fs.dir / "shard-000-dead.reward.npy").write_bytes(b"partial")  # no keys file: unfinished
    f = extract(minilm, ["q"], ["a"], store=tmp_path, progress=False)
    assert f.n_computed == 1


@pytest.mark.slow
def test_sigkill_halfway_resumes_with_identical_features(tmp_path):
    store, ref = tmp_path / "store", tmp_path / "ref.npy"
    n, shard = 96, 8
    proc = subprocess.Popen([sys.executable, WORKER, str(store), str(n), str(shard), "-"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    done = lambda: len(list(store.glob("*/shard-*.keys.npy")))  # noqa: E731
    while done() < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = done()
    assert 0 < finished < n // shard, f"kill must land halfway (finished shards: {finished})"
    out = subprocess.run([sys.executable, WORKER, str(store), str(n), str(shard), str(tmp_path / "resumed.npy")],
                         env=ENV, capture_output=True, text=True, timeout=300, check=True)
    cached = int(out.stdout.split("cached=")[1].split()[0])
    assert cached == finished * shard  # nothing finished was recomputed
    subprocess.run([sys.executable, WORKER, str(tmp_path / "fresh"), str(n), str(shard), str(ref)],
                   env=ENV, capture_output=True, timeout=300, check=True)
    assert np.abs(np.load(tmp_path / "resumed.npy") - np.load(ref)).max() < 1e-5


@pytest.mark.slow
def test_accelerate_two_processes_match_single(tmp_path):
    n = 40
    # --multi_gpu selects accelerate's torch.distributed launcher; on a CPU-only machine the
    # store's PartialState(cpu=True) then runs gloo (accelerate's --cpu starts one process)
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", WORKER, str(tmp_path / "dp"), str(n), "8", str(tmp_path / "dp.npy")]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    ranks = {p.name.split("-")[1] for p in (tmp_path / "dp").glob("*/shard-*.keys.npy")}
    assert ranks == {"000", "001"}, "both processes must have written shards"
    subprocess.run([sys.executable, WORKER, str(tmp_path / "single"), str(n), "8", str(tmp_path / "one.npy")],
                   env=ENV, capture_output=True, timeout=300, check=True)
    assert np.abs(np.load(tmp_path / "dp.npy") - np.load(tmp_path / "one.npy")).max() < 1e-5
