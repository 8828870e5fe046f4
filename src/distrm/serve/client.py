"""Client for ``distrm serve``; an instance is a TRL reward function.

    from distrm.serve.client import RewardClient
    reward = RewardClient("http://127.0.0.1:8000", risk="cvar:alpha=0.1")
    trainer = RLOOTrainer(..., reward_funcs=[reward])

Why a client and not just ``requests.post``: TRL calls reward functions with keyword
arguments (``prompts=``, ``completions=``, ``completion_ids=``, dataset columns,
``trainer_state=``...) whose prompts/completions are either strings or chat message
lists, names them by ``__name__`` in its logs, and a training run should survive a server
restart or a busy moment (retries with backoff on connection errors, 429 and 5xx; never on
other 4xx, which a retry cannot fix).
"""

from __future__ import annotations

import random
import time
from typing import Any, Sequence

import httpx

from distrm.rl.rewards import completion_from_trl, prompt_from_trl

RETRY_STATUS = {429, 500, 502, 503, 504}


class RewardClientError(RuntimeError):
    """The server refused the request (4xx) or stayed unavailable through all retries."""


class RewardClient:
    """Score (prompt, completion) pairs on a running ``distrm serve``.

    Args:
        url: server base URL, e.g. ``http://127.0.0.1:8000``.
        token: bearer token (the server's ``--token``).
        risk: the risk measure turned into the scalar reward (``"mean"``,
            ``"cvar:alpha=0.1"``, ...); computed by the server from the full distribution.
        timeout: seconds per HTTP attempt.
        retries: extra attempts after a connection error / 429 / 5xx (exponential backoff).
        batch_size: pairs per request (the server's ``--max-items`` caps it; the server
            re-batches across clients anyway, so this only bounds request size).
        name: ``__name__`` for TRL's logs (default ``distrm_<measure>``).
        none_on_error: return ``None`` for items the server could not score (TRL skips
            ``None`` rewards) instead of raising.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        risk: str = "mean",
        timeout: float = 60.0,
        retries: int = 3,
        batch_size: int = 64,
        name: str | None = None,
        none_on_error: bool = False,
        backoff_s: float = 0.5,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.url = url.rstrip("/")
        self.risk = risk
        self.retries = retries
        self.batch_size = batch_size
        self.none_on_error = none_on_error
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        # TRL logs rewards as rewards/<__name__>/mean
        self.__name__ = name or f"distrm_{risk.split(':', 1)[0]}"

    def __repr__(self) -> str:
        return f"RewardClient(url={self.url!r}, risk={self.risk!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, json: Any = None) -> Any:
        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1) * (1 + 0.25 * random.random()))
            try:
                r = self._http.request(method, path, json=json)
            except httpx.TransportError as e:  # connection refused/reset, timeouts
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code in RETRY_STATUS:
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                continue
            if r.status_code >= 400:
                try:
                    detail = r.json().get("detail")
                except ValueError:
                    detail = r.text[:300]
                raise RewardClientError(f"{method} {path}: HTTP {r.status_code}: {detail}")
            return r.json()
        raise RewardClientError(f"{method} {path}: failed after {self.retries + 1} attempts; last: {last}")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def metadata(self) -> dict[str, Any]:
        return self._request("GET", "/metadata")

    def score(
        self, prompts: Sequence[Any], responses: Sequence[str], risks: Sequence[str] = (), strict: bool = False, **options: Any
    ) -> list[dict[str, Any]]:
        """Full per-item results from ``/score`` (quantiles, attributes, risks or error),
        in input order; requests are split into ``batch_size`` chunks."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        out: list[dict[str, Any]] = []
        for s in range(0, len(prompts), self.batch_size):
            items = [{"prompt": p, "response": r} for p, r in zip(prompts[s : s + self.batch_size], responses[s : s + self.batch_size])]
            body = {"items": items, "risks": list(risks), "strict": strict, **options}
            res = self._request("POST", "/score", body)["results"]
            for r in res:
                r["index"] += s
            out.extend(res)
        return out

    # ------------------------------------------------------------------ TRL reward function
    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] | None = None, **kwargs: Any) -> list[float | None]:
        """TRL reward function: ``f(prompts=, completions=, **dataset columns) -> rewards``.

        Prompts may be strings or chat message lists, completions strings or
        ``[{"role": "assistant", "content": ...}]``; extra keyword arguments are ignored."""
        if prompts is None or completions is None:
            raise TypeError("RewardClient needs prompts= and completions=")
        ps = [prompt_from_trl(p) for p in prompts]
        cs = [completion_from_trl(c) for c in completions]
        rewards: list[float | None] = [None] * len(cs)
        keep = [i for i, (p, c) in enumerate(zip(ps, cs)) if p is not None and c is not None]
        if not keep:
            return rewards
        res = self.score([ps[i] for i in keep], [cs[i] for i in keep], risks=[self.risk])
        for i, r in zip(keep, res):
            if r.get("error"):
                if not self.none_on_error:
                    raise RewardClientError(f"item {i}: {r['error']}")
                continue
            rewards[i] = r["risk"][self.risk]
        return rewards
