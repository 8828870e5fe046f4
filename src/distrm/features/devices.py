"""Which device a process's backbone runs on, under one process or many.

Launchers (``accelerate launch``, ``torchrun``, multi-node alike) start one process per
device and tell each its place through the environment: ``LOCAL_RANK`` (its index on this
node), ``RANK`` and ``WORLD_SIZE``. A backbone has to land on ``cuda:LOCAL_RANK`` *before*
its weights are loaded: loading on plain ``"cuda"`` means the current device, which is
``cuda:0`` in every fresh process, so without this every rank of a node would share GPU 0
and the others would idle. The decision is a pure function of the requested device string,
the environment and the number of visible GPUs, so it is tested without any GPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessPlace:
    """Where this process stands in a launch: (rank, world size, local rank)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r}: expected a non-negative integer") from None
    if value < 0:
        raise ValueError(f"environment variable {name}={raw!r}: expected a non-negative integer")
    return value


def process_place(env: Mapping[str, str] | None = None) -> ProcessPlace:
    """Rank, world size and local rank from the launcher's environment (one process: 0, 1, 0).
    ``LOCAL_RANK`` missing under several processes (some MPI launchers) falls back to the
    ranks' OpenMPI/MPICH names, then to ``RANK`` (one process per node)."""
    env = os.environ if env is None else env
    world = max(_env_int(env, "WORLD_SIZE", 1), 1)
    rank = _env_int(env, "RANK", 0)
    if rank >= world:
        raise ValueError(f"environment: RANK={rank} but WORLD_SIZE={world}: a rank must be below the world size")
    local = rank
    for name in ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"):
        if env.get(name, "") != "":
            local = _env_int(env, name, 0)
            break
    return ProcessPlace(rank, world, local)


def resolve_device(requested: str | torch.device | None = "auto", env: Mapping[str, str] | None = None,
                   cuda_devices: int | None = None) -> torch.device:
    """The torch device this process's backbone goes on.

    * ``None`` / ``"auto"``: ``cuda:LOCAL_RANK`` when GPUs are visible, else ``cpu``;
    * ``"cuda"`` (no index): ``cuda:LOCAL_RANK``, so every rank of a node takes its own GPU;
    * ``"cuda:N"``: exactly that GPU (several ranks pinned to one GPU are warned about);
    * anything else (``"cpu"``, ``"mps"``, ...) as given.

    ``env`` defaults to ``os.environ`` and ``cuda_devices`` to ``torch.cuda.device_count()``
    (0 without CUDA); both are parameters so the rules are testable on any machine. A
    local rank without a GPU of its own is an error naming both numbers: silently sharing
    a GPU would halve throughput, and silently using the CPU would be far slower."""
    place = process_place(env)
    if cuda_devices is None:
        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    name = "auto" if requested is None else str(requested).strip().lower()
    if name == "auto":
        name = "cuda" if cuda_devices > 0 else "cpu"
    if name == "cuda":
        if cuda_devices == 0:
            raise ValueError("device 'cuda' requested but no CUDA device is visible (use device 'cpu' or 'auto')")
        if place.local_rank >= cuda_devices:
            raise ValueError(f"process with LOCAL_RANK={place.local_rank} has no GPU of its own: {cuda_devices} visible "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); launch at most "
                             f"{cuda_devices} processes per node, or give the device explicitly")
        return torch.device("cuda", place.local_rank)
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {requested!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if dev.index is not None and dev.index >= cuda_devices:
            raise ValueError(f"device {requested!r}: only {cuda_devices} CUDA device(s) visible")
        if place.distributed:
            log.warning("device %s given explicitly: every one of the %d processes uses it (give 'auto' or 'cuda' "
                        "for one GPU per process)", dev, place.world_size)
    return dev
