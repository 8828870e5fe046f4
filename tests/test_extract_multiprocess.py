"""``distrm extract`` on two processes (CPU, gloo) through the real launchers: each rank
logs its device, both write shards that record who wrote them, a run killed with SIGKILL
resumes under the other launcher without recomputing what was finished, and the merged
features equal the single-process run's."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from distrm.data import registry
from distrm.features import FeatureStore, extract

N, SHARD = 40, 2  # a few dozen real pairs; small shards so the kill lands between two of them
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1",
       "PYTHONUNBUFFERED": "1"}


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _extract_args(store: Path) -> list[str]:
    return ["-m", "distrm", "extract", "--backbone", "minilm", "--data", "hh-rlhf", "--kind", "pairs", "--limit", str(N),
            "--max-length", "64", "--batch-size", "4", "--shard-size", str(SHARD), "--store", str(store), "--no-progress"]


def _accelerate(store: Path) -> list[str]:
    # --multi_gpu picks accelerate's torch.distributed launcher; without a GPU the store runs gloo
    # (accelerate without it finds no GPU and starts a single process)
    return ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", _port(), *_extract_args(store)]


def _torchrun(store: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _port(),
            *_extract_args(store)]


def _shards(store: Path) -> list[Path]:
    return sorted(store.glob("*/shard-*.sums.json"))


def _finished_rows(store: Path) -> int:
    return sum(json.loads(p.read_text())["rows"] for p in _shards(store)
               if p.with_name(p.name.replace(".sums.json", ".keys.npy")).exists())


@pytest.mark.slow
def test_two_processes_resume_after_sigkill_and_match_single_process(tmp_path, minilm_backbone):
    single, multi = tmp_path / "single", tmp_path / "multi"
    one = subprocess.run([sys.executable, *_extract_args(single)], env=ENV, capture_output=True, text=True, timeout=400)
    assert one.returncode == 0, one.stderr[-2000:]
    assert "rank 0/1 (local 0): backbone minilm on cpu" in one.stderr

    # a 2-process run, killed (launcher and workers) once some shards are finished
    proc = subprocess.Popen(_accelerate(multi), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not _shards(multi) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    # the launcher and every worker (torch's elastic agent starts workers in sessions of their own)
    tree = [proc, *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    proc.wait()
    psutil.wait_procs([p for p in tree[1:]], timeout=30)
    killed_rows = _finished_rows(multi)
    assert 0 < killed_rows < 2 * N, f"the kill must land halfway (rows finished: {killed_rows})"

    # resumed under torchrun: what was finished is not computed again
    out = subprocess.run(_torchrun(multi), env=ENV, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    for rank in (0, 1):  # each rank logs where its backbone runs
        assert re.search(rf"rank {rank}/2 \(local {rank}\): backbone minilm on cpu", out.stderr), out.stderr[-3000:]
    cached = sum(int(m) for m in re.findall(r"(\d+) from cache", out.stdout))
    assert cached == killed_rows, out.stdout

    writers = [json.loads(p.read_text())["writer"] for p in _shards(multi)]
    assert {w["rank"] for w in writers} == {0, 1} and {w["world_size"] for w in writers} == {2}
    assert {w["device"] for w in writers} == {"cpu"}
    assert all(p.name.startswith(f"shard-{w['rank']:03d}-") for p, w in zip(_shards(multi), writers))

    # the merged store holds the single-process features (read back without computing anything)
    pairs = registry.load_pairs("hh-rlhf").records[:N]
    for side in ("chosen", "rejected"):
        P, R = [p.prompt for p in pairs], [getattr(p, side) for p in pairs]
        a = extract(minilm_backbone, P, R, store=single, progress=False)
        b = extract(minilm_backbone, P, R, store=multi, progress=False)
        assert a.n_computed == b.n_computed == 0
        assert np.abs(a.reward - b.reward).max() < 1e-6 and np.abs(a.prompt - b.prompt).max() < 1e-6
    assert FeatureStore(multi, minilm_backbone.identity).dir.name == FeatureStore(single, minilm_backbone.identity).dir.name
