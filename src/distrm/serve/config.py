"""The server's configuration: what ``distrm serve`` fills from YAML, ``--set`` and flags.

Kept apart from :mod:`distrm.serve.app` so that the command line can build and check the
whole config (risk spec, limits, ranges) without importing FastAPI or torch: a bad value is
one line and exit code 2 before the model loads, not a traceback after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from distrm.risk import parse_risk
from distrm.serve.limits import Limits


@dataclass
class ServeConfig:
    """How the server batches and what it answers.

    Attributes:
        max_batch: most items per backbone call (1 = batching off).
        max_wait_ms: longest an item waits for batch-mates.
        slice_ms: longest one model call should run: a batch is scored in calls sized from the
            measured time per item, and the items of requests whose client hung up are
            dropped between calls, so abandoned work stops within about this long (0 = one
            call per batch).
        limits: request limits (:class:`Limits`).
        token: bearer token required on every endpoint but /health (None = no auth; default
            $DISTRM_SERVE_TOKEN).
        reward_risk: the scalar ``/get_reward`` returns (a risk spec, default the mean).
        error_reward: what ``/get_reward`` puts in every list for an item that could not be
            scored (unsplittable query, over a limit in reject mode, non-finite reward) in
            non-strict mode; the item is counted in ``extra_logs["distrm_error"]``. Must be
            finite: OpenRLHF cannot take null. 0.0 is neutral for rewards centred on 0; set it
            below your reward range to penalise such rollouts.
        strip: strings removed from the ends of OpenRLHF responses, on top of the policy's
            special tokens (eos / pad / end of turn), which are stripped anyway.
        policy_tokenizer: the policy's tokenizer (local folder or Hub id): its chat template
            tells how OpenRLHF's templated prompts split into messages (any template; its
            default system message is dropped) and which special tokens end a response.
            None = detect the template per item (ChatML as in SmolLM2 / Qwen, Llama-3,
            Gemma; a default system message is then kept as part of the conversation).
        no_token: serve without a bearer token even when $DISTRM_SERVE_TOKEN is set: the
            mode for OpenRLHF, which sends no Authorization header. Safe on the default bind
            address 127.0.0.1 (only this machine can connect); not with --host 0.0.0.0.
        threads: torch intra-op threads for the model (None = torch's default).
        warmup: score one pair at start so the first request does not pay for loading.
    """

    max_batch: int = 64
    max_wait_ms: float = 5.0
    slice_ms: float = 250.0
    limits: Limits = field(default_factory=Limits)
    token: str | None = field(default=None, metadata={"secret": True})
    reward_risk: str = "mean"
    error_reward: float = 0.0
    strip: tuple[str, ...] = ()
    policy_tokenizer: str | None = None
    no_token: bool = False
    threads: int | None = None
    warmup: bool = field(default=True, metadata={"flag": None})

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if not 0 <= self.slice_ms < math.inf:
            raise ValueError(f"slice_ms must be a finite number >= 0, got {self.slice_ms}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        self.strip = tuple(self.strip)
        if self.error_reward is None or not math.isfinite(self.error_reward):
            raise ValueError(f"error_reward must be a finite number (OpenRLHF cannot take null), got {self.error_reward}")
        if self.no_token and self.token is not None:
            raise ValueError("no_token and token both set: pick one")
        parse_risk(self.reward_risk)  # the risk vocabulary: a bad spec fails here, before the model loads


@dataclass
class ServeCommandConfig:
    """``distrm serve``: which model, where to listen, and the server config."""

    model: str = field(default="", metadata={"positional": True})  # model folder written by distrm, or a Hugging Face Hub id
    revision: str | None = None  # Hub branch, tag or commit (with a Hub id)
    host: str = "127.0.0.1"  # bind address (127.0.0.1: loopback only; set a token before binding anything else)
    port: int = 8000
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # server processes behind one address: 1 = the single-process server; more = that many
    # replicas of it on Ray Serve (each with its own model, batcher and limits), across the
    # GPUs and nodes of the Ray cluster; `pip install distrm[ray]`
    replicas: int = 1
    ray: bool = False  # run on Ray Serve even with one replica (implied by --replicas > 1 or --ray-address)
    ray_address: str | None = None  # Ray cluster to join ("auto": the one `ray start` began here, or HOST:PORT); null = a private local Ray, stopped on exit
    replica_cpus: float = 1.0  # CPUs Ray reserves per replica; on CPU also its torch threads (int part, at least 1) unless --threads is set
    replica_gpus: float = 0.0  # GPUs per replica (fractions share a GPU); 0 = CPU replicas
    ray_object_store_mb: int | None = None  # object store of the private local Ray (null = Ray's default, 30% of RAM); replicas pass only request bodies through it
    server: ServeConfig = field(default_factory=ServeConfig)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("serve: give the model (a folder or a Hub id)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if not 0 < self.replica_cpus < math.inf or not 0 <= self.replica_gpus < math.inf:
            raise ValueError(f"replica_cpus must be > 0 and replica_gpus >= 0, got {self.replica_cpus} and {self.replica_gpus}")
        if self.ray_object_store_mb is not None and self.ray_object_store_mb < 75:
            raise ValueError(f"ray_object_store_mb must be >= 75 (Ray's minimum), got {self.ray_object_store_mb}")

    @property
    def on_ray(self) -> bool:
        """Whether this config runs on Ray Serve rather than the single-process server."""
        return self.ray or self.replicas > 1 or self.ray_address is not None
