"""The reward server: FastAPI app around one distrm reward model (any type: the server sees
only the model protocol of :mod:`distrm.models.base`).

Endpoints (all JSON; see ``/openapi.json`` for the full schemas):

* ``POST /score`` -- ``{"items": [{"prompt", "response"} | {"messages"}], "risks": [...],
  "strict": false, "mix": null, "include_attributes": true}`` -> per item: mixture
  quantiles and levels, mean, per-attribute weight / mean / quantiles, requested risk
  measures, or an error. The native endpoint: nothing about the distribution is lost.
* ``POST /get_reward`` -- OpenRLHF's remote reward format, ``{"query": [...],
  "prompts": [...]?, "labels": [...]?}`` -> ``{"rewards", "scores", "extra_logs"}``; the
  policy's templated text is turned back into messages (:mod:`distrm.serve.templates`).
* ``POST /classify`` -- vLLM's classification API, which verl's reward loop posts to for a
  discriminative reward model: ``{"model", "input": <chat-templated conversation> | [...],
  "use_activation": false}`` -> ``{"data": [{"index", "label", "probs": [reward],
  "num_classes": 1}], ...}`` (verl reads ``data[-1].probs[-1]``).
* ``GET /health`` (no auth, for probes), ``GET /metadata``.

Why the handlers parse bodies themselves instead of declaring a pydantic body: a typed
body makes FastAPI reject the *whole* request when one item is malformed, and the server
promises per-item errors (one bad rollout must not cost the other 63 their rewards). The
documented schemas (:class:`ScoreRequest`, :class:`RewardRequest`) are still what the
OpenAPI document shows; the handler validates the envelope with pydantic and each item on
its own.

Error contract: a malformed request is always a 4xx with ``{"detail": ...}`` -- 400 for a
body that is not JSON (or not UTF-8), 401 for a missing/wrong token, 413 for size limits,
422 for schema violations. 503 (with Retry-After) means the server is busy or a request
waited longer than the timeout: not the client's fault, retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Callable, Literal, Sequence, TypeVar, Union

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from distrm import __version__
from distrm.distribution import RewardDistribution
from distrm.risk import ALIASES as RISK_ALIASES
from distrm.risk import RISK_MEASURES, parse_risk
from distrm.risk import describe as risk_vocabulary
from distrm.models.base import RewardModel, ScoreOutput
from distrm.serve import jsonbody
from distrm.serve.batching import DynamicBatcher, ItemFailed, Overloaded
from distrm.serve.config import ServeConfig
from distrm.serve.limits import BodySizeLimit, Limits
from distrm.serve.templates import PolicyTemplate, RecoverError, Recoverer, detect_format

log = logging.getLogger("distrm.serve")

MAX_RISK_SPEC_CHARS = 200
DISCONNECT_POLL_S = 0.1  # how often a waiting request checks that its client is still there

# the risk grammar as a regular expression, for the OpenAPI document: per measure, its
# parameter with the range distrm.risk enforces (plain decimals), so a string matching it is accepted
_UNIT_OPEN = r"(0?\.[0-9]*[1-9][0-9]*|0*1(\.0*)?)"  # (0, 1]
_UNIT = r"(0*\.[0-9]+|0+\.?|0*1(\.0*)?)"  # [0, 1]
_LAM = r"-?(0*700(\.0*)?|0*[1-6][0-9]{2}(\.[0-9]*)?|0*[1-9][0-9]?(\.[0-9]*)?|0*\.[0-9]*[1-9][0-9]*)"  # != 0, |lam| <= 700
_REAL = r"-?[0-9]{1,30}(\.[0-9]{0,30})?"
RISK_PATTERN = (
    rf"^(mean|expectation|(exp_utility|exp|certainty_equivalent|ce):lam={_LAM}|cvar(:alpha={_UNIT_OPEN})?"
    rf"|(quantile|lower_quantile):tau={_UNIT}|mean_minus_std(:c={_REAL})?|mean_minus_variance(:beta={_REAL})?)$"
)
RISK_GRAMMAR = (
    "a risk measure: 'name' or 'name:key=value[,key=value]'. Measures (parameters, ranges): "
    + risk_vocabulary()
    + ". Aliases: " + ", ".join(f"{a} = {n}" for a, n in RISK_ALIASES.items())
    + f". At most {MAX_RISK_SPEC_CHARS} characters; an unknown measure or parameter, a missing required "
    "parameter or a value out of range is a 422."
)
_RISK_DOC: dict[str, Any] = {"description": RISK_GRAMMAR, "json_schema_extra": {"pattern": RISK_PATTERN, "maxLength": MAX_RISK_SPEC_CHARS}}


# ---------------------------------------------------------------------- schemas
class Message(BaseModel):
    """One chat message. Extra keys (``name``, ``tool_calls``, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")
    role: str = Field(min_length=1, max_length=64)
    content: str


class PairItem(BaseModel):
    """A prompt (text or chat messages) and the response to score."""

    model_config = ConfigDict(extra="forbid")
    prompt: Union[str, list[Message]]
    response: str


class ChatItem(BaseModel):
    """A whole conversation: the last message must be the assistant's response; the
    messages before it are the prompt."""

    model_config = ConfigDict(extra="forbid")
    messages: list[Message] = Field(min_length=1)


class ScoreRequest(BaseModel):
    """Body of ``POST /score``."""

    model_config = ConfigDict(extra="forbid")
    items: list[Union[PairItem, ChatItem]] = Field(description="pairs to score, at most max_items")
    risks: list[Annotated[str, Field(**_RISK_DOC)]] = Field(
        default_factory=list, description='risk measures, e.g. ["cvar:alpha=0.1", "exp_utility:lam=2"]; at most max_risks'
    )
    strict: bool = Field(False, description="fail the whole request (4xx) if any item is invalid, instead of per-item errors")
    mix: Literal["quantile_average", "probability"] | None = Field(
        None,
        description="how attribute distributions are combined: 'quantile_average' (QRM's, averages quantiles) or "
        "'probability' (quantiles of the probability mixture); null = the model's own setting",
    )
    include_attributes: bool = Field(True, description="include per-attribute weights, means and quantiles")


class _ScoreEnvelope(BaseModel):
    """What the handler validates up front; items are validated one by one afterwards."""

    model_config = ConfigDict(extra="forbid")
    items: list[Any]
    risks: list[str] = Field(default_factory=list)
    strict: bool = False
    mix: Literal["quantile_average", "probability"] | None = None
    include_attributes: bool = True


class RewardRequest(BaseModel):
    """Body of ``POST /get_reward`` (OpenRLHF remote reward model).

    ``query[i]`` is the policy's templated prompt + response as one string (special tokens
    kept), ``prompts[i]`` the templated prompt. The response is the query after its prompt
    (a prompt cut from the left or right is found in the query, scored on what is there and
    flagged in ``extra_logs["distrm_prompt_truncated"]``); a templated prompt (the
    ``--policy-tokenizer``'s template, else ChatML / Llama-3 / Gemma detected) is split back
    into messages and the policy's special tokens are stripped from the response, so the
    model scores it with its own template. Without ``prompts``, a templated query is split
    into messages + the last assistant turn; plain text is scored as the response to an
    empty prompt. ``labels`` is accepted and ignored (a reward model has no reference
    answers). See :mod:`distrm.serve.templates`."""

    model_config = ConfigDict(extra="allow")
    query: list[Any]
    prompts: list[Any] | None = None
    labels: list[Any] | None = None
    risk: Annotated[str, Field(**_RISK_DOC)] | None = Field(None, description="risk measure for 'rewards' (default: the server's --reward-risk)")
    strict: bool = False


class ItemError(BaseModel):
    status: int = Field(description="HTTP status this item would have got on its own (413 too long, 422 invalid)")
    detail: str


class AttributeScore(BaseModel):
    weight: float
    mean: float
    quantiles: list[float]


class ItemResult(BaseModel):
    index: int
    mean: float | None = None
    quantiles: list[float] | None = Field(None, description="quantiles of the reward (the mixture) at 'levels'")
    levels: list[float] | None = Field(None, description="quantile levels; null for ensemble / point heads")
    mix: str | None = None
    attributes: dict[str, AttributeScore] | None = None
    risk: dict[str, float] | None = Field(
        None, description="requested risk measures; an item whose reward, distribution or risk values are not finite "
        "is an item error (422), never a null"
    )
    truncated: bool = False
    error: ItemError | None = None


class ScoreResponse(BaseModel):
    results: list[ItemResult]
    n_ok: int
    n_errors: int


class RewardResponse(BaseModel):
    rewards: list[float] = Field(description="the reward risk measure per query (--error-reward on item errors; never null)")
    scores: list[float] = Field(description="same as rewards (OpenRLHF uses it for dynamic filtering)")
    extra_logs: dict[str, list[float]] = Field(
        description="per-query lists: distrm_mean, distrm_std, distrm_<risk>, distrm_prompt_truncated (1 = the prompt "
        "was cut), distrm_truncated (1 = a text was cut to max_text_chars), distrm_error (1 = not scored, "
        "--error-reward used)"
    )
    errors: list[dict[str, Any]] = Field(default_factory=list, description="[{index, status, detail}] for failed items")


class ClassifyRequest(BaseModel):
    """Body of ``POST /classify`` (vLLM's classification API, as verl's reward loop sends it).

    ``input`` is a whole conversation rendered with a chat template, the response as the
    last assistant turn (verl renders ``raw_prompt + [response]`` with the reward model's
    tokenizer); it is split back into messages like ``/get_reward`` does (the template is
    detected per item, or ``--policy-tokenizer``'s). Plain text is scored as the response to
    an empty prompt."""

    model_config = ConfigDict(extra="allow")
    input: Union[str, list[str]]
    model: str | None = None
    use_activation: bool | None = Field(
        None, description="sigmoid of the reward when true or absent (vLLM's default); the raw reward when false (verl sends false)"
    )
    risk: Annotated[str, Field(**_RISK_DOC)] | None = Field(
        None, description="distrm extension: risk measure for 'probs' (default: the server's --reward-risk)"
    )


class ClassifyResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[dict[str, Any]] = Field(
        description="per input: {index, label: 'reward', probs: [reward], num_classes: 1, prompt_truncated, error}; "
        "items that could not be scored carry --error-reward and error = 1"
    )
    errors: list[dict[str, Any]] = Field(default_factory=list, description="[{index, status, detail}] for failed items")


class ErrorResponse(BaseModel):
    detail: Any


Pair = tuple[Any, str]  # (prompt: str | list[message dicts], response)
Row = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # attribute values [M, K], weights [M], reward values [K]
_Body = TypeVar("_Body", bound=BaseModel)
_Item = TypeVar("_Item")


class ClientGone(Exception):
    """The client disconnected while its request waited: its work is dropped, nobody to answer."""


class BadRequest(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


# ---------------------------------------------------------------------- the service
class RewardService:
    """The model behind the batcher, plus request validation and response assembly.

    Kept apart from the FastAPI wiring so the benchmark and tests can reason about the
    scoring path alone."""

    def __init__(self, model: RewardModel, config: ServeConfig) -> None:
        self.model = model
        self.config = config
        self.limits = config.limits
        self.kind = model.kind
        self.levels = model.levels
        self.reward_risk = self.check_risk(config.reward_risk)
        # OpenRLHF's templated prompts -> messages (the policy's template, or detected per item)
        policy = PolicyTemplate.from_pretrained(config.policy_tokenizer) if config.policy_tokenizer else None
        self.recoverer = Recoverer(policy=policy, strip=tuple(config.strip), max_chars=self.limits.max_text_chars,
                                   max_messages=self.limits.max_messages, reject=self.limits.on_too_long == "reject")
        self.batcher: DynamicBatcher[Pair, Row] = DynamicBatcher(
            self._score_batch,
            max_batch=config.max_batch,
            max_wait_s=config.max_wait_ms / 1000.0,
            max_queue_items=self.limits.max_queue_items,
            on_start=self._on_start,
            slice_s=config.slice_ms / 1000.0 or None,
        )

    # -- worker thread
    def _on_start(self) -> None:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        if self.config.warmup:
            self.model.score(["Hello"], ["Hi, how can I help?"])

    def _score_batch(self, pairs: list[Pair]) -> list[Row]:
        out = self.model.score([p for p, _ in pairs], [r for _, r in pairs], batch_size=max(1, len(pairs)))
        return [(out.attributes.values[i], out.weights[i], out.reward.values[i]) for i in range(len(pairs))]

    # -- validation
    def check_risk(self, spec: Any) -> str:
        """Parse a risk spec and try it on a dummy distribution of the model's kind, so a
        bad name or parameter (``cvar:beta=1``, ``cvar:alpha=0``) is a 422 up front instead
        of an exception inside the response assembly."""
        if not isinstance(spec, str):
            raise BadRequest(422, f"risk measure must be a string, got {type(spec).__name__}")
        if len(spec) > MAX_RISK_SPEC_CHARS:
            raise BadRequest(422, f"risk measure spec longer than {MAX_RISK_SPEC_CHARS} characters")
        try:
            name, params = parse_risk(spec)
            k = 1 if self.levels is None else len(self.levels)
            dummy = RewardDistribution(values=torch.zeros(1, k, dtype=torch.float64), levels=self.levels, kind=self.kind)
            dummy.risk(name, **params)
        except (ValueError, TypeError) as e:
            raise BadRequest(422, f"bad risk measure {spec!r}: {e}") from None
        return spec

    def _text(self, s: str, what: str, keep: Literal["head", "tail"]) -> tuple[str, bool]:
        """Check one text: valid Unicode, length within the limit (truncate or reject)."""
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(422, f"{what} is not valid Unicode (lone surrogate)") from None
        n = self.limits.max_text_chars
        if len(s) <= n:
            return s, False
        if self.limits.on_too_long == "reject":
            raise BadRequest(413, f"{what} has {len(s)} characters; the limit is {n}")
        return (s[:n] if keep == "head" else s[-n:]), True

    def _prompt(self, prompt: Union[str, list[Message]], what: str) -> tuple[Any, bool]:
        """Prompts keep their end when truncated (the turns nearest the response matter
        most); message prompts drop whole early messages first."""
        if isinstance(prompt, str):
            return self._text(prompt, what, "tail")
        if len(prompt) > self.limits.max_messages:
            raise BadRequest(413, f"{what} has {len(prompt)} messages; the limit is {self.limits.max_messages}")
        msgs = [{"role": m.role, "content": m.content} for m in prompt]
        for j, m in enumerate(msgs):
            self._text(m["role"], f"{what}[{j}].role", "head")
            try:
                m["content"].encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(422, f"{what}[{j}].content is not valid Unicode (lone surrogate)") from None
        total = sum(len(m["content"]) for m in msgs)
        n = self.limits.max_text_chars
        if total <= n:
            return msgs, False
        if self.limits.on_too_long == "reject":
            raise BadRequest(413, f"{what} has {total} characters in its messages; the limit is {n}")
        kept: list[dict[str, str]] = []
        budget = n
        for m in reversed(msgs):
            if budget <= 0:
                break
            c = m["content"]
            kept.append({"role": m["role"], "content": c if len(c) <= budget else c[-budget:]})
            budget -= len(c)
        return kept[::-1], True

    def parse_item(self, raw: Any, index: int) -> tuple[Pair, bool]:
        """One /score item -> ((prompt, response), truncated); raises BadRequest."""
        where = f"items[{index}]"
        if not isinstance(raw, dict):
            raise BadRequest(422, f"{where}: expected an object with 'prompt' and 'response', or 'messages'")
        try:
            item = ChatItem.model_validate(raw) if "messages" in raw else PairItem.model_validate(raw)
        except ValidationError as e:
            raise BadRequest(422, _validation_detail(e, where)) from None
        if isinstance(item, ChatItem):
            last = item.messages[-1]
            if last.role != "assistant":
                raise BadRequest(422, f"{where}.messages: the last message must have role 'assistant' (the response), got {last.role!r}")
            prompt: Any = item.messages[:-1] if len(item.messages) > 1 else ""
            response = last.content
        else:
            prompt, response = item.prompt, item.response
        p, tp = self._prompt(prompt, f"{where}.prompt") if prompt != "" else ("", False)
        r, tr = self._text(response, f"{where}.response", "head")
        return (p, r), tp or tr

    def recover_item(self, text: str, prompt: str | None, index: int, where: str) -> tuple[Pair, bool, bool]:
        """A policy-templated text (/get_reward's query, /classify's input) -> ((prompt,
        response), prompt cut, text cut): the conversation recovered from its template, then
        checked like a /score item; raises BadRequest (``where`` names the item)."""
        try:
            rec = self.recoverer.recover(text, prompt)
        except RecoverError as e:
            raise BadRequest(e.status, f"{where}: {e.detail}") from None
        pair, trunc = self.parse_item({"prompt": rec.prompt, "response": rec.response}, index)
        return pair, rec.prompt_truncated, trunc

    def reward_spec(self, risk: Any) -> tuple[str, str, dict[str, Any]]:
        """(spec, name, params) of a request's reward risk measure (None: the server's)."""
        spec = self.check_risk(risk) if risk is not None else self.reward_risk
        return (spec, *parse_risk(spec))

    # -- scoring
    async def run(self, pairs: list[Pair], request: Request | None = None) -> list[Row | ItemFailed]:
        """The batcher's results for ``pairs``; 503 on overload or timeout. While waiting, the
        client is checked every ``DISCONNECT_POLL_S``: if it is gone, its queued items leave
        the batcher (items already in a running batch finish) and :class:`ClientGone` is raised."""
        if request is not None and await request.is_disconnected():
            raise ClientGone("before scoring")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.request_timeout_s
        task = asyncio.ensure_future(self.batcher.submit(pairs))
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise BadRequest(503, f"timed out after {self.limits.request_timeout_s:g} s waiting for the model; retry later")
                done, _ = await asyncio.wait({task}, timeout=min(DISCONNECT_POLL_S, left) if request is not None else left)
                if done:
                    return task.result()
                if request is not None and await request.is_disconnected():
                    raise ClientGone(f"while {len(pairs)} items waited for the model")
        except Overloaded as e:
            raise BadRequest(503, f"server busy: {e}; retry later") from None
        finally:
            if not task.done():
                task.cancel()  # submit() drops the job's queued items
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def run_items(self, pairs: list[Pair], slots: list[int], request: Request | None = None
                        ) -> tuple[list[tuple[int, Row]], list[dict[str, Any]]]:
        """Score the parsed items (``slots``: their request indices): (index, row) of those
        scored, and an error (``{index, status, detail}``) for each whose scoring failed."""
        rows = await self.run(pairs, request)
        good = [(s, r) for s, r in zip(slots, rows) if not isinstance(r, ItemFailed)]
        failed = [{"index": s, "status": 422, "detail": f"could not score: {r}"} for s, r in zip(slots, rows) if isinstance(r, ItemFailed)]
        return good, failed

    def assemble(self, rows: Sequence[Row], mix: str | None) -> ScoreOutput:
        """Stack per-item rows back into a :class:`ScoreOutput` (the same object
        ``model.score`` returns, so the response is built by the same ``to_dict``)."""
        attrs = RewardDistribution(values=torch.stack([r[0] for r in rows]), levels=self.levels, kind=self.kind)
        weights = torch.stack([r[1] for r in rows])
        if mix is None or mix == self.model.default_mix:
            reward = RewardDistribution(values=torch.stack([r[2] for r in rows]), levels=self.levels, kind=self.kind)
        else:
            reward = RewardDistribution.mix(attrs, weights, method=mix)  # type: ignore[arg-type]
        return ScoreOutput(attributes=attrs, weights=weights, reward=reward, attribute_names=self.model.attribute_names)

    def metadata(self) -> dict[str, Any]:
        return {
            "name": "distrm",
            "version": __version__,
            **self.model.describe(),
            "reward_risk": self.reward_risk,
            "error_reward": self.config.error_reward,
            "policy_template": self.recoverer.policy.fmt.name if self.recoverer.policy is not None else "detect",
            "risk_measures": list(RISK_MEASURES),
            "batching": {"max_batch": self.config.max_batch, "max_wait_ms": self.config.max_wait_ms},
            "limits": asdict(self.limits),
        }


# ---------------------------------------------------------------------- helpers
def _validation_detail(e: ValidationError, where: str = "") -> str:
    """Pydantic errors as one short line each, without echoing the input (it may be huge
    or not encodable)."""
    parts = []
    for err in e.errors(include_url=False, include_input=False, include_context=False)[:10]:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        loc = f"{where}.{loc}" if where and loc else (where or loc)
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    more = len(e.errors()) - 10
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def _restore_first_header(text: str, recoverer: Recoverer) -> str:
    """Put back a first turn marker that was stripped as a BOS token.

    verl removes the reward tokenizer's ``bos_token`` from the front of the conversation it
    renders; where the BOS *is* the turn marker (SmolLM2's is ``<|im_start|>``) that cuts the
    first header to ``"system\n..."``. A text that does not start with a header but does once
    the format's marker is put in front gets the marker back."""
    fmt = recoverer.policy.fmt if recoverer.policy is not None else detect_format(text)
    if fmt is None or not fmt.marker or text.startswith(fmt.marker):
        return text
    return fmt.marker + text if fmt.header.match(fmt.marker + text) else text


def _sigmoid(x: float) -> float:
    """Logistic function without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _finite(x: Any) -> Any:
    """Non-finite floats -> None, recursively (JSON has no inf/NaN; Starlette would 500)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if not body:
        raise BadRequest(400, "empty request body; expected JSON")
    try:
        return await jsonbody.parse(body)
    except jsonbody.BadJSON as e:
        raise BadRequest(400, str(e)) from None
    except RuntimeError as e:  # the decoder process could not run (out of memory, ...)
        raise BadRequest(503, f"{e}; retry later") from None


async def _parse_body(request: Request, model: type[_Body], fields: str) -> _Body:
    """The request's JSON body validated as ``model`` (``fields`` names what it must hold):
    400 for a body that is not JSON, 422 for one of the wrong shape."""
    raw = await _json_body(request)
    if not isinstance(raw, dict):
        raise BadRequest(422, f"body must be a JSON object with {fields}")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise BadRequest(422, _validation_detail(e)) from None


def _parse_items(n: int, parse: Callable[[int], _Item], stop: threading.Event | None = None
                 ) -> tuple[list[int], list[_Item], list[dict[str, Any]]]:
    """``parse(i)`` for each of ``n`` items, one failing item not costing the others:
    (indices parsed, what they parsed to, an error ``{index, status, detail}`` per failure).
    Stops early (the result is then discarded) once ``stop`` is set."""
    slots: list[int] = []
    parsed: list[_Item] = []
    errors: list[dict[str, Any]] = []
    for i in range(n):
        if stop is not None and stop.is_set():
            break
        try:
            parsed.append(parse(i))
        except BadRequest as e:
            errors.append({"index": i, "status": e.status, "detail": e.detail})
            continue
        slots.append(i)
    return slots, parsed, errors


async def _parse_off_loop(request: Request, n: int, parse: Callable[[int], _Item]
                          ) -> tuple[list[int], list[_Item], list[dict[str, Any]]]:
    """:func:`_parse_items` in a worker thread (text work never runs on the event loop),
    stopped between items when the client disconnects (then :class:`ClientGone`)."""
    stop = threading.Event()
    task = asyncio.ensure_future(asyncio.to_thread(_parse_items, n, parse, stop))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone(f"while its {n} texts were parsed")
    finally:
        stop.set()


def _nonfinite(x: Any, path: str = "") -> list[str]:
    """Paths of the non-finite floats in a JSON-ready value."""
    if isinstance(x, float):
        return [] if math.isfinite(x) else [path or "value"]
    if isinstance(x, dict):
        return [p for k, v in x.items() for p in _nonfinite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(x, list):
        bad = [p for v in x for p in _nonfinite(v, f"{path}[]")]
        return bad[:1]
    return []


def _refuse_if_strict(errors: list[dict[str, Any]], strict: bool) -> None:
    """A strict request with any bad item fails whole: 413 when every error is a size limit."""
    if errors and strict:
        raise BadRequest(413 if all(e["status"] == 413 for e in errors) else 422, errors)


def _error(status: int, detail: Any) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else ({"WWW-Authenticate": "Bearer"} if status == 401 else None)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


# ---------------------------------------------------------------------- app
def create_app(model: RewardModel, config: ServeConfig | None = None) -> FastAPI:
    """Build the app for ``model``. The batcher starts with the app's lifespan (uvicorn
    runs it), so creating the app is cheap and side-effect free."""
    config = config or ServeConfig()
    service = RewardService(model, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.get_running_loop().run_in_executor(None, service.batcher.start)
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.batcher.stop)

    app = FastAPI(
        title="distrm reward server",
        version=__version__,
        description="Distributional reward model scoring with dynamic batching. OpenRLHF-compatible /get_reward.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=config.limits.max_body_bytes, timeout_s=config.limits.body_timeout_s)
    bearer = HTTPBearer(auto_error=False, description="set when the server was started with --token / DISTRM_SERVE_TOKEN")

    async def auth(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.token is None:
            return
        given = creds.credentials if creds is not None else ""
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), config.token.encode("utf-8")):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return _error(exc.status, exc.detail)

    @app.exception_handler(ClientGone)
    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: Exception) -> Response:
        """One log line, no traceback: a client that hangs up is routine (a trainer restarting)."""
        client = f"{request.client.host}:{request.client.port}" if request.client else "client"
        log.info("%s disconnected from %s %s %s; its queued work was dropped", client, request.method, request.url.path,
                 str(exc) or "while sending the body")
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", "invalid"), "type": e.get("type", "")} for e in exc.errors()[:10]
        ]
        return _error(422, errs)

    err_responses: dict[int | str, dict[str, Any]] = {
        s: {"model": ErrorResponse} for s in (400, 401, 413, 422, 503)
    }

    def post(path: str, summary: str, response: type[BaseModel], request: type[BaseModel]) -> Callable[[Any], Any]:
        """A POST route whose handler parses its own body (see the module docstring), documented
        as taking ``request`` and answering ``response`` or an error."""
        body_schema = {"schema": {"$ref": f"#/components/schemas/{request.__name__}"}}
        return app.post(path, summary=summary, dependencies=[Depends(auth)], response_model=None,
                        responses={200: {"model": response}, **err_responses},
                        openapi_extra={"requestBody": {"required": True, "content": {"application/json": body_schema}}})

    @app.get("/health", summary="liveness and queue state (no auth)")
    async def health() -> dict[str, Any]:
        b = service.batcher
        return {
            "status": "ok",
            "queue_items": b.queue_items,
            "batches": b.batches,
            "items_scored": b.items_scored,
            "largest_batch": b.largest_batch,
            "item_failures": b.item_failures,
            "items_dropped": b.items_dropped,
        }

    @app.get("/metadata", summary="model and server settings", dependencies=[Depends(auth)], responses={401: {"model": ErrorResponse}})
    async def metadata() -> dict[str, Any]:
        return service.metadata()

    @post("/score", "score prompt/response pairs or conversations: full reward distributions", ScoreResponse, ScoreRequest)
    async def score(request: Request) -> JSONResponse:
        env = await _parse_body(request, _ScoreEnvelope, "'items'")
        lim = config.limits
        if len(env.items) > lim.max_items:
            raise BadRequest(413, f"{len(env.items)} items; the limit is {lim.max_items} per request")
        if len(env.risks) > lim.max_risks:
            raise BadRequest(413, f"{len(env.risks)} risk measures; the limit is {lim.max_risks}")
        risks = [service.check_risk(r) for r in env.risks]
        if env.mix is not None and service.kind != "quantile":
            raise BadRequest(422, "'mix' applies to quantile heads only; this model has point/ensemble heads")

        results: list[dict[str, Any]] = [{"index": i} for i in range(len(env.items))]
        slots, parsed, errors = _parse_items(len(env.items), lambda i: service.parse_item(env.items[i], i))
        _refuse_if_strict(errors, env.strict)
        ok, failed = await service.run_items([pair for pair, _ in parsed], slots, request)
        if failed and env.strict:
            raise BadRequest(422, failed)
        if ok:
            truncated = {slot: trunc for slot, (_, trunc) in zip(slots, parsed)}
            out = service.assemble([r for _, r in ok], env.mix)
            mix_name = env.mix or model.default_mix if service.kind == "quantile" else None
            for (slot, _), d in zip(ok, out.to_dict(risks)):
                bad = _nonfinite(d)
                if bad:  # an item error like /get_reward's, never a silent null
                    failed.append({"index": slot, "status": 422, "detail": "non-finite reward: " + ", ".join(bad[:8])})
                    continue
                if not env.include_attributes:
                    d.pop("attributes", None)
                d["mix"] = mix_name
                d["truncated"] = truncated[slot]
                results[slot].update(d)
            if failed and env.strict:
                raise BadRequest(422, sorted(failed, key=lambda e: e["index"]))
        for e in errors + failed:
            results[e["index"]]["error"] = {"status": e["status"], "detail": e["detail"]}
        n_err = sum(1 for r in results if "error" in r)
        return JSONResponse({"results": results, "n_ok": len(results) - n_err, "n_errors": n_err})

    @post("/get_reward", "OpenRLHF remote reward model: query = prompt + response", RewardResponse, RewardRequest)
    async def get_reward(request: Request) -> JSONResponse:
        req = await _parse_body(request, RewardRequest, "'query'")
        lim = config.limits
        n = len(req.query)
        if n > lim.max_items:
            raise BadRequest(413, f"{n} queries; the limit is {lim.max_items} per request")
        if req.prompts is not None and len(req.prompts) != n:
            raise BadRequest(422, f"{len(req.prompts)} prompts for {n} queries")
        spec, name, params = service.reward_spec(req.risk)

        def parse(i: int) -> tuple[Pair, bool, bool]:
            """Recover (messages, response) of one query: linear text work, off the event loop."""
            q = req.query[i]
            if not isinstance(q, str):
                raise BadRequest(422, f"query[{i}] must be a string, got {type(q).__name__}")
            p = None
            if req.prompts is not None:
                p = req.prompts[i]
                if not isinstance(p, str):
                    raise BadRequest(422, f"prompts[{i}] must be a string, got {type(p).__name__}")
            return service.recover_item(q, p, i, f"query[{i}]")

        slots, parsed, errors = await _parse_off_loop(request, n, parse)
        _refuse_if_strict(errors, req.strict)
        prompt_cut = [0.0] * n  # the prompt was cut (by OpenRLHF, or to the limits)
        text_cut = [0.0] * n  # a text was truncated to max_text_chars
        for s, (_, p_cut, t_cut) in zip(slots, parsed):
            prompt_cut[s], text_cut[s] = float(p_cut), float(t_cut)

        good, unscored = await service.run_items([pair for pair, _, _ in parsed], slots, request)
        errors += unscored
        if errors and req.strict:
            raise BadRequest(422, errors)
        fill = float(config.error_reward)
        # failed items carry the fallback in every list: never null, OpenRLHF makes tensors of them
        rewards = [fill] * n
        means = [fill] * n
        stds = [fill] * n
        if good:
            out = service.assemble([r for _, r in good], None)
            rv = out.reward.risk(name, **params).tolist()
            mv, sv = out.mean.tolist(), out.reward.std().tolist()
            for k, (s, _) in enumerate(good):
                if not all(math.isfinite(x) for x in (rv[k], mv[k], sv[k])):
                    errors.append({"index": s, "status": 422, "detail": f"non-finite reward ({spec}: {rv[k]}, mean {mv[k]}, std {sv[k]})"})
                    continue
                rewards[s], means[s], stds[s] = rv[k], mv[k], sv[k]
            if errors and req.strict:
                raise BadRequest(422, sorted(errors, key=lambda e: e["index"]))
        failed = [0.0] * n
        for e in errors:
            failed[e["index"]] = 1.0
        body = {
            "rewards": rewards,
            "scores": list(rewards),
            "extra_logs": {
                "distrm_mean": means,
                "distrm_std": stds,
                f"distrm_{name}": list(rewards),
                "distrm_prompt_truncated": prompt_cut,
                "distrm_truncated": text_cut,
                "distrm_error": failed,
            },
            "errors": sorted(errors, key=lambda e: e["index"]),
        }
        return JSONResponse(body)

    @post("/classify", "vLLM classification API (verl's discriminative reward model path): input = templated conversation",
          ClassifyResponse, ClassifyRequest)
    async def classify(request: Request) -> JSONResponse:
        req = await _parse_body(request, ClassifyRequest, "'input'")
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        n = len(texts)
        if n == 0:
            raise BadRequest(422, "'input' is empty")
        if n > config.limits.max_items:
            raise BadRequest(413, f"{n} inputs; the limit is {config.limits.max_items} per request")
        spec, name, params = service.reward_spec(req.risk)

        def parse(i: int) -> tuple[Pair, bool, bool]:
            """The conversation back from its template (as for /get_reward without prompts)."""
            return service.recover_item(_restore_first_header(texts[i], service.recoverer), None, i, f"input[{i}]")

        slots, parsed, errors = await _parse_off_loop(request, n, parse)
        prompt_cut = [0.0] * n
        for s, (_, p_cut, t_cut) in zip(slots, parsed):
            prompt_cut[s] = float(p_cut or t_cut)
        good, unscored = await service.run_items([pair for pair, _, _ in parsed], slots, request)
        errors += unscored
        values = [float(config.error_reward)] * n  # never null: verl makes a tensor of these
        if good:
            rv = service.assemble([r for _, r in good], None).reward.risk(name, **params).tolist()
            for (s, _), v in zip(good, rv):
                if math.isfinite(v):
                    values[s] = v
                else:
                    errors.append({"index": s, "status": 422, "detail": f"non-finite reward ({spec}: {v})"})
        failed = {e["index"] for e in errors}
        activate = req.use_activation is not False  # vLLM applies the activation unless told not to
        data = [
            {"index": i, "label": "reward", "probs": [_sigmoid(v) if activate else v], "num_classes": 1,
             "prompt_truncated": prompt_cut[i], "error": float(i in failed)}
            for i, v in enumerate(values)
        ]  # fmt: skip
        return JSONResponse({
            "id": f"classify-{os.urandom(8).hex()}", "object": "list", "created": int(time.time()),
            "model": req.model or "distrm", "data": data, "errors": sorted(errors, key=lambda e: e["index"]),
        })  # fmt: skip

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus the request models the handlers validate by hand."""
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _, defs = models_json_schema(
            [(ScoreRequest, "validation"), (RewardRequest, "validation"), (ClassifyRequest, "validation")],
            ref_template="#/components/schemas/{model}",
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        comps = schema["components"]["schemas"]
        comps["ScoreRequest"]["properties"]["risks"]["maxItems"] = config.limits.max_risks
        comps["ScoreRequest"]["properties"]["items"]["maxItems"] = config.limits.max_items
        for branch in comps["ClassifyRequest"]["properties"]["input"].get("anyOf", []):
            if branch.get("type") == "array":
                branch["minItems"] = 1
        if config.token is None:
            # no token, no auth: the document must not ask clients for one, nor promise a 401
            schema["components"].pop("securitySchemes", None)
            for ops in schema.get("paths", {}).values():
                for op in ops.values():
                    if isinstance(op, dict):
                        op.pop("security", None)
                        op.get("responses", {}).pop("401", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def load_app(model_dir: str, config: ServeConfig | None = None, revision: str | None = None) -> FastAPI:
    """``create_app`` for a saved model folder or Hub id (any model type)."""
    from distrm.models.auto import AutoRewardModel

    return create_app(AutoRewardModel.from_pretrained(model_dir, revision=revision), config)


def token_from_env() -> str | None:
    return os.environ.get("DISTRM_SERVE_TOKEN") or None
