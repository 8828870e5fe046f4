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

Both clients pickle (TRL's ``AsyncGRPOTrainer`` sends its reward functions to a spawned
rollout process): the HTTP connection pool is dropped from the pickled state and re-opened
on first use. :class:`AsyncRewardClient` has an ``async def __call__``, which TRL's
``GRPOTrainer`` / ``RLOOTrainer`` detect (``trl.trainer.utils.is_async_callable``) and await
concurrently with the other async reward functions on their own event loop.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any, Iterator, Sequence

import httpx

from distrm.rl.rewards import completion_from_trl, prompt_from_trl

RETRY_STATUS = {429, 500, 502, 503, 504}
_OPEN_LOCK = threading.Lock()  # lazy pool opening from several threads (TRL may call a sync reward in threads)


class RewardClientError(RuntimeError):
    """The server refused the request (4xx) or stayed unavailable through all retries."""


def wait_until_up(url: str, timeout_s: float = 300.0, process: Any = None) -> float:
    """Poll ``GET url/health`` until it answers 200; return the seconds waited. For scripts
    that start ``distrm serve`` themselves (a model load, or Ray starting its replicas,
    takes a while): raises :class:`RewardClientError` when ``process`` (a ``Popen``) exits
    first or ``timeout_s`` passes."""
    t0 = time.monotonic()
    while True:
        try:
            if httpx.get(url.rstrip("/") + "/health", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        if process is not None and process.poll() is not None:
            raise RewardClientError(f"the server process exited with code {process.returncode} before {url} answered /health")
        if time.monotonic() - t0 > timeout_s:
            raise RewardClientError(f"{url} did not answer /health within {timeout_s:g} s")
        time.sleep(0.2)


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
        self.timeout = timeout
        self.retries = retries
        self.batch_size = batch_size
        self.none_on_error = none_on_error
        self.backoff_s = backoff_s
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http: httpx.Client | None = None  # opened on first use (and again after unpickling)
        # TRL logs rewards as rewards/<__name__>/mean
        self.__name__ = name or f"distrm_{risk.split(':', 1)[0]}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, risk={self.risk!r})"

    # -- pickling: everything but the connection pool (its locks and sockets cannot be pickled)
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_http"] = None
        return state

    @property
    def http(self) -> httpx.Client:
        with _OPEN_LOCK:
            if self._http is None or self._http.is_closed:
                self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=self.timeout)
            return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, json: Any = None) -> Any:
        attempts = _Attempts(self, method, path)
        for delay in attempts:
            if delay:
                time.sleep(delay)
            try:
                attempts.settle(self.http.request(method, path, json=json))
            except httpx.TransportError as e:  # connection refused/reset, timeouts
                attempts.settle(e)
        return attempts.result()

    def _backoff(self, attempt: int) -> float:
        return self.backoff_s * 2 ** (attempt - 1) * (1 + 0.25 * random.random())

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def metadata(self) -> dict[str, Any]:
        return self._request("GET", "/metadata")

    def score(
        self, prompts: Sequence[Any], responses: Sequence[str], risks: Sequence[str] = (), strict: bool = False, **options: Any
    ) -> list[dict[str, Any]]:
        """Full per-item results from ``/score`` (quantiles, attributes, risks or error),
        in input order; requests are split into ``batch_size`` chunks."""
        out: list[dict[str, Any]] = []
        for s, body in self._bodies(prompts, responses, risks, strict, options):
            out.extend(_offset(self._request("POST", "/score", body)["results"], s))
        return out

    def _bodies(self, prompts: Sequence[Any], responses: Sequence[str], risks: Sequence[str], strict: bool, options: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        out = []
        for s in range(0, len(prompts), self.batch_size):
            items = [{"prompt": p, "response": r} for p, r in zip(prompts[s : s + self.batch_size], responses[s : s + self.batch_size])]
            out.append((s, {"items": items, "risks": list(risks), "strict": strict, **options}))
        return out

    # ------------------------------------------------------------------ TRL reward function
    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] | None = None, **kwargs: Any) -> list[float | None]:
        """TRL reward function: ``f(prompts=, completions=, **dataset columns) -> rewards``.

        Prompts may be strings or chat message lists, completions strings or
        ``[{"role": "assistant", "content": ...}]``; extra keyword arguments are ignored."""
        ps, cs, keep = _trl_pairs(type(self).__name__, prompts, completions)
        if not keep:
            return [None] * len(cs)
        res = self.score([ps[i] for i in keep], [cs[i] for i in keep], risks=[self.risk])
        return self._rewards(len(cs), keep, res)

    def _rewards(self, n: int, keep: list[int], results: list[dict[str, Any]]) -> list[float | None]:
        rewards: list[float | None] = [None] * n
        for i, r in zip(keep, results):
            if r.get("error"):
                if not self.none_on_error:
                    raise RewardClientError(f"item {i}: {r['error']}")
                continue
            rewards[i] = r["risk"][self.risk]  # None when the measure is not finite (TRL skips it)
        return rewards


class AsyncRewardClient(RewardClient):
    """:class:`RewardClient` with ``async`` methods: ``await client(prompts=, completions=)``.

    TRL's ``GRPOTrainer`` / ``RLOOTrainer`` (and ``AsyncGRPOTrainer``) recognise an instance
    as an async reward function and run it concurrently with the other async ones; within one
    call, the ``batch_size`` chunks are sent concurrently too (at most ``max_concurrency`` in
    flight). Same arguments, retries, errors and pickling as :class:`RewardClient`.

    An ``httpx.AsyncClient`` belongs to the event loop it was first used on, and TRL awaits
    reward functions on a loop of its own (a daemon thread's, or a spawned process's): the
    client opens its connection pool lazily on the running loop, and a fresh one when it is
    called from another loop."""

    def __init__(self, url: str, *args: Any, max_concurrency: int = 4, **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.max_concurrency = max_concurrency
        self._ahttp: httpx.AsyncClient | None = None
        self._ahttp_loop: asyncio.AbstractEventLoop | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_ahttp"] = None
        state["_ahttp_loop"] = None
        return state

    def _async_http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._ahttp is None or self._ahttp.is_closed or self._ahttp_loop is not loop:
            # a client of another (maybe closed) loop is dropped, not closed: its loop owns its sockets
            self._ahttp = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=self.timeout)
            self._ahttp_loop = loop
        return self._ahttp

    async def aclose(self) -> None:
        if self._ahttp is not None and self._ahttp_loop is asyncio.get_running_loop():
            await self._ahttp.aclose()
        self._ahttp = None
        self._ahttp_loop = None
        self.close()

    async def __aenter__(self) -> "AsyncRewardClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _arequest(self, method: str, path: str, json: Any = None) -> Any:
        attempts = _Attempts(self, method, path)
        for delay in attempts:
            if delay:
                await asyncio.sleep(delay)
            try:
                attempts.settle(await self._async_http().request(method, path, json=json))
            except httpx.TransportError as e:
                attempts.settle(e)
        return attempts.result()

    async def ahealth(self) -> dict[str, Any]:
        return await self._arequest("GET", "/health")

    async def ametadata(self) -> dict[str, Any]:
        return await self._arequest("GET", "/metadata")

    async def ascore(
        self, prompts: Sequence[Any], responses: Sequence[str], risks: Sequence[str] = (), strict: bool = False, **options: Any
    ) -> list[dict[str, Any]]:
        """Async :meth:`RewardClient.score`: the chunks go out concurrently."""
        sem = asyncio.Semaphore(self.max_concurrency)

        async def one(s: int, body: dict[str, Any]) -> list[dict[str, Any]]:
            async with sem:
                return _offset((await self._arequest("POST", "/score", body))["results"], s)

        parts = await asyncio.gather(*(one(s, b) for s, b in self._bodies(prompts, responses, risks, strict, options)))
        return [r for part in parts for r in part]

    async def __call__(  # type: ignore[override]
        self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] | None = None, **kwargs: Any
    ) -> list[float | None]:
        """Async TRL reward function, same contract as :meth:`RewardClient.__call__`."""
        ps, cs, keep = _trl_pairs(type(self).__name__, prompts, completions)
        if not keep:
            return [None] * len(cs)
        res = await self.ascore([ps[i] for i in keep], [cs[i] for i in keep], risks=[self.risk])
        return self._rewards(len(cs), keep, res)


class _Attempts:
    """One request's retry policy, the same for both clients (they differ only in how they
    wait and send): iterating gives the delay before each attempt (0 before the first) and
    stops after the first final response; ``settle`` takes each attempt's response or
    transport error (connection errors, 429 and 5xx are retried, nothing else); ``result``
    is the final response's JSON, or RewardClientError for a 4xx/5xx or when every attempt
    failed."""

    def __init__(self, client: RewardClient, method: str, path: str) -> None:
        self.client, self.method, self.path = client, method, path
        self.last = ""
        self.final: httpx.Response | None = None

    def __iter__(self) -> Iterator[float]:
        for attempt in range(self.client.retries + 1):
            if self.final is not None:
                return
            yield self.client._backoff(attempt) if attempt else 0.0

    def settle(self, outcome: httpx.Response | httpx.TransportError) -> None:
        if isinstance(outcome, httpx.TransportError):
            self.last = f"{type(outcome).__name__}: {outcome}"
        elif outcome.status_code in RETRY_STATUS:
            self.last = f"HTTP {outcome.status_code}: {outcome.text[:300]}"
        else:
            self.final = outcome

    def result(self) -> Any:
        if self.final is None:
            raise RewardClientError(f"{self.method} {self.path}: failed after {self.client.retries + 1} attempts; last: {self.last}")
        return _result(self.final, self.method, self.path)


def _trl_pairs(who: str, prompts: Sequence[Any] | None, completions: Sequence[Any] | None) -> tuple[list[Any], list[str | None], list[int]]:
    """TRL prompts/completions (text or chat messages) -> distrm prompts, response texts and
    the indices of the scorable pairs (neither side None)."""
    if prompts is None or completions is None:
        raise TypeError(f"{who} needs prompts= and completions=")
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    ps = [prompt_from_trl(p) for p in prompts]
    cs = [completion_from_trl(c) for c in completions]
    keep = [i for i, (p, c) in enumerate(zip(ps, cs)) if p is not None and c is not None]
    return ps, cs, keep


def _offset(results: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    for r in results:
        r["index"] += start
    return results


def _result(r: httpx.Response, method: str, path: str) -> Any:
    """A non-retryable response: its JSON, or RewardClientError for a 4xx/5xx."""
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text[:300]
        raise RewardClientError(f"{method} {path}: HTTP {r.status_code}: {detail}")
    return r.json()
