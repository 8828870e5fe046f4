"""A distrm reward model as a verl custom reward function.

verl (0.9.x) loads a reward function from a file path and a name
(``reward.custom_reward_function.path`` / ``.name``) and its reward managers call it once per
rollout as ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)``, plus
the ``reward.custom_reward_function.reward_kwargs`` of the config. A result that is a dict
must hold ``"score"`` (the reward) and may hold more keys, which verl keeps per rollout as
``reward_extra_info`` and logs. So::

    reward.custom_reward_function.path=pkg://distrm.integrations.verl
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.model=runs/qrm-minilm        # or .url=http://127.0.0.1:8000
    +reward.custom_reward_function.reward_kwargs.risk=cvar:alpha=0.1

and the reward is the chosen risk measure of the model's reward distribution, with its
summary beside it (``dist_mean``, ``dist_std``, ``dist_q0.05`` ... ``dist_q0.95``).
(``pkg://`` makes verl import the installed module; the file's own path works too: verl
then executes it as a second, anonymous module, which hands every call to this one so
that :func:`configure` and the model cache are shared.)

**The prompt.** verl passes the decoded *response* only: the prompt the policy answered is
not among the arguments (the reward managers hand over the dataset's ``extra_info`` column,
which verl's own preprocessing scripts fill with ``split``/``index`` and, for some sets, a
``question``). A reward model scores a response *to a prompt*, so put the prompt into
``extra_info`` when you build the parquet: ``extra_info["prompt"]`` = the same chat
messages as the dataset's ``prompt`` column (or a plain string). Looked up, in order:
``extra_info[prompt_key]`` when ``prompt_key`` is set, else ``prompt``, ``raw_prompt``,
``messages``, ``question``. A row without any of them is an error, not a silent
prompt-less score.

**Where the model runs** (first match wins for each setting: the call's keyword arguments,
i.e. verl's ``reward_kwargs``; then :func:`configure`; then environment variables):

* in process: ``model`` / ``DISTRM_VERL_MODEL`` -- a saved distrm model folder or Hub id
  (loaded once per process and cached; every type :class:`~distrm.models.auto.AutoRewardModel`
  loads), or an already loaded model passed to :func:`configure`. Concurrent calls (verl
  scores the rollouts of a batch concurrently, in threads or as coroutines) are batched into
  one model call by the same dynamic batcher as ``distrm serve``.
* over HTTP: ``url`` / ``DISTRM_VERL_URL`` -- a running ``distrm serve`` (token:
  ``token`` / ``DISTRM_VERL_TOKEN`` / ``DISTRM_SERVE_TOKEN``); the server batches across
  verl's reward workers.

``risk`` / ``DISTRM_VERL_RISK`` picks the reward (default ``"mean"``; any
:mod:`distrm.risk` spec: ``cvar:alpha=0.1``, ``exp_utility:lam=2``, ``mean_minus_std:c=1``...).

:func:`compute_score_async` is the same function as a coroutine (verl's reward-loop
managers await it instead of using a thread), and :func:`compute_score_batch` has the
signature of verl's ``batch`` reward manager.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from typing import Any, NamedTuple, Sequence

import torch

from distrm.distribution import RewardDistribution
from distrm.risk import RiskMeasure

ENV_MODEL = "DISTRM_VERL_MODEL"
ENV_URL = "DISTRM_VERL_URL"
ENV_TOKEN = "DISTRM_VERL_TOKEN"
ENV_RISK = "DISTRM_VERL_RISK"
ENV_PROMPT_KEY = "DISTRM_VERL_PROMPT_KEY"

PROMPT_KEYS: tuple[str, ...] = ("prompt", "raw_prompt", "messages", "question")
# quantile levels reported beside the score (the tails matter for risk-aware RL)
SUMMARY_LEVELS: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
SUMMARY_KEYS: tuple[str, ...] = ("score", "dist_mean", "dist_std") + tuple(f"dist_q{t:.2f}" for t in SUMMARY_LEVELS)

_SETTINGS = ("model", "url", "token", "risk", "prompt_key", "batch_size")
_configured: dict[str, Any] = {}
_lock = threading.Lock()
_batchers: dict[Any, Any] = {}  # model key -> started DynamicBatcher
_clients: dict[tuple[str, str | None, bool], Any] = {}  # (url, token, async) -> client


def configure(
    model: Any = None,
    url: str | None = None,
    token: str | None = None,
    risk: "str | dict[str, Any] | RiskMeasure | None" = None,
    prompt_key: str | None = None,
    batch_size: int | None = None,
) -> None:
    """Set this process's defaults (``None`` leaves a setting as it is). ``model`` may be a
    folder / Hub id or a loaded distrm model. Call keyword arguments still take precedence."""
    if risk is not None:
        risk = RiskMeasure.parse(risk).spec  # validate now, not at the first rollout
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError("batch_size must be >= 1")
    with _lock:
        for k, v in dict(model=model, url=url, token=token, risk=risk, prompt_key=prompt_key, batch_size=batch_size).items():
            if v is not None:
                _configured[k] = v


def reset() -> None:
    """Forget :func:`configure` settings, stop the in-process batchers and close the HTTP
    clients (the next call loads / connects again)."""
    with _lock:
        _configured.clear()
        batchers, clients = list(_batchers.values()), list(_clients.values())
        _batchers.clear()
        _clients.clear()
    for b in batchers:
        b.stop()
    for c in clients:
        c.close()


class _Options(NamedTuple):
    model: Any
    url: str | None
    token: str | None
    risk: RiskMeasure
    prompt_key: str | None
    batch_size: int


def _options(kwargs: dict[str, Any]) -> _Options:
    env = {
        "model": os.environ.get(ENV_MODEL) or None,
        "url": os.environ.get(ENV_URL) or None,
        "token": os.environ.get(ENV_TOKEN) or os.environ.get("DISTRM_SERVE_TOKEN") or None,
        "risk": os.environ.get(ENV_RISK) or None,
        "prompt_key": os.environ.get(ENV_PROMPT_KEY) or None,
    }
    with _lock:
        conf = dict(_configured)

    def pick(name: str) -> Any:
        for source in (kwargs, conf, env):
            if source.get(name) is not None:
                return source[name]
        return None

    # the most specific source decides between in-process and HTTP: a call's own model= beats a
    # configured url= and vice versa
    model = url = None
    for source in (kwargs, conf, env):
        if source.get("model") is not None or source.get("url") is not None:
            model, url = source.get("model"), source.get("url")
            break
    if model is not None and url is not None:
        raise ValueError("give distrm's verl reward either a model (in process) or a url (distrm serve), not both")
    if model is None and url is None:
        raise ValueError(
            f"distrm's verl reward needs a model: reward_kwargs.model=PATH (in process) or reward_kwargs.url=URL "
            f"(distrm serve), distrm.integrations.verl.configure(...), or ${ENV_MODEL} / ${ENV_URL}"
        )
    bs = pick("batch_size")
    return _Options(
        model=model,
        url=str(url).rstrip("/") if url is not None else None,
        token=pick("token"),
        risk=RiskMeasure.parse(pick("risk") or "mean"),
        prompt_key=pick("prompt_key"),
        batch_size=int(bs) if bs is not None else 32,
    )


# ---------------------------------------------------------------------- prompts
def _plain(x: Any) -> Any:
    """numpy arrays / scalars (parquet columns come back as them) -> lists / Python values."""
    tolist = getattr(x, "tolist", None)
    if tolist is not None and not isinstance(x, (str, bytes)):
        x = tolist()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def prompt_from_extra_info(extra_info: Any, prompt_key: str | None = None) -> Any:
    """The prompt of one rollout from verl's ``extra_info``: a string, or chat messages
    (``[{"role", "content"}, ...]``; numpy arrays from parquet are accepted)."""
    from distrm.rl.rewards import prompt_from_trl

    info = extra_info if isinstance(extra_info, dict) else {}
    keys = (prompt_key,) if prompt_key else PROMPT_KEYS
    for k in keys:
        if info.get(k) is not None:
            p = _plain(info[k])
            if isinstance(p, str):
                return p
            if isinstance(p, (list, dict)):
                return prompt_from_trl(p)
            raise TypeError(f"extra_info[{k!r}] must be a string or chat messages, got {type(p).__name__}")
    have = sorted(str(k) for k in info) if info else []
    raise KeyError(
        f"no prompt in extra_info (looked for {list(keys)}; it has {have}): verl passes only the response to "
        "compute_score, so put the prompt into the dataset's extra_info, e.g. extra_info['prompt'] = the same "
        "messages as the 'prompt' column"
    )


# ---------------------------------------------------------------------- results
def summarize(dist: RewardDistribution, risk_values: torch.Tensor) -> list[dict[str, float]]:
    """Per item: ``score`` (the risk measure) and the distribution's mean, std and
    quantiles at :data:`SUMMARY_LEVELS` -- scalars only, the same keys for every item (verl
    stacks each key across the batch and averages it in its metrics)."""
    levels = torch.tensor(SUMMARY_LEVELS, dtype=dist.values.dtype, device=dist.values.device)
    qs = dist.quantile(levels).tolist()
    means, stds = dist.mean().tolist(), dist.std().tolist()
    out = []
    for i, r in enumerate(risk_values.tolist()):
        row = {"score": float(r), "dist_mean": float(means[i]), "dist_std": float(stds[i])}
        row.update({f"dist_q{t:.2f}": float(q) for t, q in zip(SUMMARY_LEVELS, qs[i])})
        out.append(row)
    return out


def _check_finite(rows: list[dict[str, float]], risk: RiskMeasure) -> list[dict[str, float]]:
    for r in rows:
        if not math.isfinite(r["score"]):
            raise ValueError(
                f"risk measure {risk.spec!r} is not finite for a rollout (a large lam overflows exp_utility); "
                "pick a smaller parameter or another measure"
            )
    return rows


# ---------------------------------------------------------------------- in process
def _load(model: Any) -> Any:
    if isinstance(model, (str, os.PathLike)):
        from distrm.models.auto import AutoRewardModel

        return AutoRewardModel.from_pretrained(str(model))
    if not callable(getattr(model, "score", None)):
        raise TypeError(f"model must be a distrm model folder / Hub id or a loaded model, got {type(model).__name__}")
    return model


def _batcher(opts: _Options) -> Any:
    """One started dynamic batcher per model (the model is loaded in its worker thread, once)."""
    from distrm.serve.batching import DynamicBatcher

    key = (str(opts.model) if isinstance(opts.model, (str, os.PathLike)) else id(opts.model), opts.batch_size)
    with _lock:
        b = _batchers.get(key)
        if b is not None:
            return b
        state: dict[str, Any] = {}

        def on_start() -> None:
            state["model"] = _load(opts.model)

        def score(items: list[tuple[Any, str, str]]) -> list[dict[str, float]]:
            m = state["model"]
            out = m.score([p for p, _, _ in items], [r for _, r, _ in items], batch_size=max(1, len(items)))
            dist = out.reward
            rows: list[dict[str, float] | None] = [None] * len(items)
            for spec in {s for _, _, s in items}:
                idx = [i for i, (_, _, s) in enumerate(items) if s == spec]
                sub = dist[torch.tensor(idx)]
                for i, row in zip(idx, summarize(sub, RiskMeasure.parse(spec)(sub))):
                    rows[i] = row
            return rows  # type: ignore[return-value]

        b = DynamicBatcher(score, max_batch=opts.batch_size, max_wait_s=0.005, max_queue_items=1 << 20, on_start=on_start)
        b.start()
        _batchers[key] = b
        return b


async def _score_local_async(opts: _Options, prompts: Sequence[Any], responses: Sequence[str]) -> list[dict[str, float]]:
    from distrm.serve.batching import ItemFailed

    rows = await _batcher(opts).submit([(p, r, opts.risk.spec) for p, r in zip(prompts, responses)])
    for r in rows:
        if isinstance(r, ItemFailed):
            raise RuntimeError(f"distrm could not score a rollout: {r}")
    return _check_finite(rows, opts.risk)


# ---------------------------------------------------------------------- over HTTP
def _client(opts: _Options, asynchronous: bool) -> Any:
    from distrm.serve.client import AsyncRewardClient, RewardClient

    key = (opts.url, opts.token, asynchronous)
    with _lock:
        c = _clients.get(key)
        if c is None:
            cls = AsyncRewardClient if asynchronous else RewardClient
            c = _clients[key] = cls(opts.url, token=opts.token, batch_size=opts.batch_size)
        return c


def _from_results(results: list[dict[str, Any]], risk: RiskMeasure) -> list[dict[str, float]]:
    from distrm.serve.client import RewardClientError

    rows = []
    for r in results:
        if r.get("error"):
            raise RewardClientError(f"distrm serve could not score a rollout: {r['error']}")
        if r.get("quantiles") is not None:
            dist = RewardDistribution(
                values=torch.tensor([r["quantiles"]], dtype=torch.float64), levels=torch.tensor(r["levels"], dtype=torch.float64)
            )
        else:
            dist = RewardDistribution.from_members(torch.tensor([r["members"]], dtype=torch.float64))
        value = r["risk"][risk.spec]  # the server's own value of the measure (null = not finite)
        rows.append(summarize(dist, torch.tensor([math.nan if value is None else value], dtype=torch.float64))[0])
    return _check_finite(rows, risk)


# ---------------------------------------------------------------------- verl's entry points
def _score(opts: _Options, prompts: list[Any], responses: list[str]) -> list[dict[str, float]]:
    if opts.url is not None:
        res = _client(opts, False).score(prompts, responses, risks=[opts.risk.spec], include_attributes=False)
        return _from_results(res, opts.risk)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_score_local_async(opts, prompts, responses))
    raise RuntimeError("compute_score called from a running event loop: await compute_score_async instead")


def compute_score(
    data_source: Any = None, solution_str: str = "", ground_truth: Any = None, extra_info: dict[str, Any] | None = None, **kwargs: Any
) -> dict[str, float]:
    """verl's custom reward function: the reward of ``solution_str`` as the answer to the
    prompt in ``extra_info`` (see the module docstring). ``data_source`` and
    ``ground_truth`` are not used (a reward model needs no reference); other verl keyword
    arguments (``reward_router_address``, ...) are ignored.

    Returns ``{"score": <risk measure>, "dist_mean", "dist_std", "dist_q0.05", ...}``."""
    opts = _options(kwargs)
    return _score(opts, [prompt_from_extra_info(extra_info, opts.prompt_key)], [str(solution_str)])[0]


async def compute_score_async(
    data_source: Any = None, solution_str: str = "", ground_truth: Any = None, extra_info: dict[str, Any] | None = None, **kwargs: Any
) -> dict[str, float]:
    """:func:`compute_score` as a coroutine: verl's reward-loop managers await it, and the
    concurrent rollouts of a batch share model calls (in process) or connections (HTTP)."""
    opts = _options(kwargs)
    prompt = prompt_from_extra_info(extra_info, opts.prompt_key)
    if opts.url is not None:
        res = await _client(opts, True).ascore([prompt], [str(solution_str)], risks=[opts.risk.spec], include_attributes=False)
        return _from_results(res, opts.risk)[0]
    return (await _score_local_async(opts, [prompt], [str(solution_str)]))[0]


def compute_score_batch(
    data_sources: Sequence[Any] = (),
    solution_strs: Sequence[str] = (),
    ground_truths: Sequence[Any] = (),
    extra_infos: Sequence[dict[str, Any] | None] = (),
    **kwargs: Any,
) -> list[dict[str, float]]:
    """The same reward for verl's ``batch`` reward manager (one call per batch)."""
    opts = _options(kwargs)
    if len(extra_infos) != len(solution_strs):
        raise ValueError(f"{len(extra_infos)} extra_infos for {len(solution_strs)} solutions")
    prompts = [prompt_from_extra_info(e, opts.prompt_key) for e in extra_infos]
    return _score(opts, prompts, [str(s) for s in solution_strs])


if __name__ != "distrm.integrations.verl":
    # verl's loader executed this file by its path, under a generated module name: use the
    # package module's functions so that configure() and the caches are one, not two
    from distrm.integrations import verl as _package

    configure, reset = _package.configure, _package.reset
    compute_score, compute_score_async, compute_score_batch = (
        _package.compute_score,
        _package.compute_score_async,
        _package.compute_score_batch,
    )
