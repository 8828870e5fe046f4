"""Turning what OpenRLHF sends to ``/get_reward`` back into a conversation.

OpenRLHF posts ``query[i]`` = the *policy's* chat-templated prompt followed by the generated
response, decoded with special tokens kept, and ``prompts[i]`` = the templated prompt string
(0.9+: one sample per request, the prompt cut from the *left* in token space when it is too
long, while ``prompts[i]`` stays whole; 0.8 and older: the whole rollout in one request, the
prompt cut from the *right*). Scoring that text as one user message would wrap the policy's
template in the reward model's own template. This module recovers ``(messages, response)``
so the model scores it the normal way, with its own template:

* :class:`ChatFormat` -- one chat-template family as a turn-header pattern (ChatML as in
  SmolLM2 / Qwen, Llama-3 header turns, Gemma turns), or one learned from a policy tokenizer
  (:class:`PolicyTemplate`, for ``distrm serve --policy-tokenizer``);
* :func:`detect_format` -- which known family a string uses;
* :func:`parse_turns` -- a templated string -> turns (roles and content spans);
* :func:`strip_tokens` -- special tokens off the ends of a response;
* :class:`Recoverer` -- the whole step for one ``(query, prompt)`` item.

Everything here is linear in the text and bounded before it starts: C-level ``find`` /
``startswith`` / regex scans, loops that consume at least one character per step or run a
fixed number of times, and the prompt window cut to a bound derived from the server's
``max_text_chars`` before it is parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

_ROLE = r"(?P<role>[A-Za-z0-9_.\-]{1,64})"
MAX_SPECIALS = 512  # special tokens kept from a policy tokenizer (longer lists are cut)
MAX_SPECIAL_CHARS = 64
OVERLAP_TAIL = 32  # chars of the prompt's end looked for in a left-cut query
OVERLAP_TRIES = 64  # candidate positions checked (bounds the work on repetitive text)


class RecoverError(ValueError):
    """An item that cannot be recovered; ``status`` as for per-item errors (413 / 422)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class ChatFormat:
    """A chat-template family, as the text it renders.

    Attributes:
        name: short name (``chatml``, ``llama3``, ``gemma``, ``policy``).
        header: pattern matching one turn header. Known families capture the role in the
            group ``role``; a learned format has one named group per literal separator, named
            ``<role>_<n>``.
        marker: a literal that every templated string of the family contains ("" = none:
            the format is never auto-detected).
        ends: end-of-turn suffixes; the first that ends a turn's text is removed from it.
        bos: texts allowed before the first header (beginning-of-sequence tokens).
        roles: template role -> message role (Gemma's ``model`` -> ``assistant``).
        specials: the family's special tokens, stripped from the ends of responses.
    """

    name: str
    header: re.Pattern[str]
    marker: str = ""
    ends: tuple[str, ...] = ()
    bos: tuple[str, ...] = ()
    roles: Mapping[str, str] = field(default_factory=dict)
    specials: tuple[str, ...] = ()

    def role_of(self, m: re.Match[str]) -> str:
        if "role" in self.header.groupindex:
            r = m.group("role")
            return self.roles.get(r, r)
        return (m.lastgroup or "user").rsplit("_", 1)[0]


CHATML = ChatFormat(
    "chatml",
    re.compile(r"<\|im_start\|>" + _ROLE + r"\n"),
    marker="<|im_start|>",
    ends=("<|im_end|>\n", "<|im_end|>"),
    specials=("<|im_end|>", "<|endoftext|>", "<|im_start|>"),
)
LLAMA3 = ChatFormat(
    "llama3",
    re.compile(r"<\|start_header_id\|>" + _ROLE + r"<\|end_header_id\|>\n\n"),
    marker="<|start_header_id|>",
    ends=("<|eot_id|>", "<|eom_id|>"),
    bos=("<|begin_of_text|>",),
    specials=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|begin_of_text|>"),
)
GEMMA = ChatFormat(
    "gemma",
    re.compile(r"<start_of_turn>" + _ROLE + r"\n"),
    marker="<start_of_turn>",
    ends=("<end_of_turn>\n", "<end_of_turn>"),
    bos=("<bos>",),
    roles={"model": "assistant"},
    specials=("<end_of_turn>", "<eos>", "<pad>", "<bos>"),
)
KNOWN_FORMATS: tuple[ChatFormat, ...] = (CHATML, LLAMA3, GEMMA)


def detect_format(text: str) -> ChatFormat | None:
    """The known family whose marker occurs first in ``text`` (None: plain text)."""
    best, at = None, len(text) + 1
    for f in KNOWN_FORMATS:
        i = text.find(f.marker, 0, at)
        if 0 <= i < at:
            best, at = f, i
    return best


# ---------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Turn:
    role: str
    start: int  # content span [start, end) in the parsed text
    end: int
    lead: bool = False  # text before the first header: the tail of a turn cut from the left


def _trim_end(text: str, start: int, end: int, ends: Sequence[str]) -> int:
    for e in ends:
        if end - start >= len(e) and text.endswith(e, start, end):
            return end - len(e)
    return end


def parse_turns(text: str, fmt: ChatFormat) -> list[Turn] | None:
    """The turns of a templated string (None when it has no turn header at all).

    A turn's content runs from its header to the next header, less one end-of-turn suffix;
    the last one to its first end-of-turn marker, or to the end of the text.
    Text before the first header (other than a BOS token) is kept as a ``lead`` turn: the
    string was cut from the left, and that is the end of a turn whose header is gone (its
    role is a guess: ``assistant`` before a user turn in a conversation that has assistant
    turns, ``system`` before a user turn otherwise, ``user`` before anything else)."""
    pos = 0
    for b in fmt.bos:
        if text.startswith(b):
            pos = len(b)
            break
    heads = [(m.start(), m.end(), fmt.role_of(m)) for m in fmt.header.finditer(text, pos)]
    if not heads:
        return None
    turns: list[Turn] = []
    if heads[0][0] > pos:
        nxt = heads[0][2]
        if nxt == "user":
            role = "assistant" if any(r == "assistant" for _, _, r in heads[:-1]) else "system"
        else:
            role = "user"
        turns.append(Turn(role, pos, _trim_end(text, pos, heads[0][0], fmt.ends), lead=True))
    for i, (_, cs, role) in enumerate(heads[:-1]):
        turns.append(Turn(role, cs, _trim_end(text, cs, heads[i + 1][0], fmt.ends)))
    # the last turn is open: it runs to the first end-of-turn marker (in a response, the
    # policy's end of turn; in a prompt cut from the right, the end of the last whole turn)
    cs, end = heads[-1][1], len(text)
    for e in fmt.ends:
        j = text.find(e, cs, end)
        if j >= 0:
            end = j
    turns.append(Turn(heads[-1][2], cs, end))
    return turns


# ---------------------------------------------------------------------- stripping
def strip_tokens(text: str, tokens: Sequence[str]) -> str:
    """Remove any of ``tokens`` from both ends of ``text``, repeatedly, with the whitespace
    between them and the end (``"Hi.\\n<|im_end|>\\n"`` -> ``"Hi.\\n"``; whitespace inside the
    response is kept).

    Linear: it moves two indices and slices once; each step consumes at least one character
    and tries only the tokens ending (starting) with the character at hand."""
    toks = {t for t in tokens if t}
    if not toks or not text:
        return text
    by_last: dict[str, list[str]] = {}
    by_first: dict[str, list[str]] = {}
    for t in sorted(toks, key=len, reverse=True):
        by_last.setdefault(t[-1], []).append(t)
        by_first.setdefault(t[0], []).append(t)
    lo, hi = 0, len(text)
    while True:  # right end
        j = hi
        while j > lo and text[j - 1].isspace():
            j -= 1
        if j == lo:
            break
        t = next((t for t in by_last.get(text[j - 1], ()) if text.endswith(t, lo, j)), None)
        if t is None:
            break
        hi = j - len(t)
    while True:  # left end
        i = lo
        while i < hi and text[i].isspace():
            i += 1
        if i == hi:
            break
        t = next((t for t in by_first.get(text[i], ()) if text.startswith(t, i, hi)), None)
        if t is None:
            break
        lo = i + len(t)
    return text[lo:hi]


# ---------------------------------------------------------------------- splitting
def left_overlap(query: str, prompt: str) -> tuple[int, int] | None:
    """``(s, k)`` with ``query[s:k]`` the longest suffix of ``prompt`` that starts the query
    (s skips the U+FFFD a multi-byte character cut in two decodes to), or None.

    Candidates are the occurrences of the prompt's last :data:`OVERLAP_TAIL` characters in
    the query, right to left, each checked by one C-level comparison, at most
    :data:`OVERLAP_TRIES` of them; then (a left cut that leaves less than that) the shorter
    suffixes, one by one."""
    s = 0
    while s < min(4, len(query)) and query[s] == "\ufffd":
        s += 1
    tail = prompt[-OVERLAP_TAIL:]
    if not tail:
        return None
    hi = min(len(query), s + len(prompt))
    for _ in range(OVERLAP_TRIES if len(tail) == OVERLAP_TAIL else 0):
        i = query.rfind(tail, s, hi)
        if i < 0:
            break
        k = i + len(tail)
        if prompt.endswith(query[s:k]):
            return s, k
        hi = k - 1
    # a visible part shorter than the tail: the longest suffix of it that starts the query
    for k in range(min(OVERLAP_TAIL - 1, len(query) - s, len(prompt)), 0, -1):
        if prompt.endswith(query[s:s + k]):
            return s, s + k
    return None


def common_prefix(a: str, b: str) -> int:
    """Length of the common prefix (binary search on C-level comparisons: O(n))."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # invariant: a[:lo] == b[:lo]
        mid = (lo + hi + 1) // 2
        if a.startswith(b[lo:mid], lo):
            lo = mid
        else:
            hi = mid - 1
    return lo


# ---------------------------------------------------------------------- policy template
_PROBE = ("dIsTrMpRoBeUsEr1", "dIsTrMpRoBeAsSiStAnT1", "dIsTrMpRoBeUsEr2", "dIsTrMpRoBeSyStEm1")


@dataclass(frozen=True)
class PolicyTemplate:
    """What the policy's tokenizer tells about its prompts: the turn format (a known family,
    else one learned from rendering probe conversations), the default system message its
    template adds to a conversation that has none (dropped again: it is not part of the
    conversation), a prefix it puts before every system message (Llama 3.1's dates), and
    its special tokens."""

    fmt: ChatFormat
    default_system: str | None = None
    system_prefix: str = ""
    specials: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> "PolicyTemplate":
        from transformers import AutoTokenizer

        return cls.from_tokenizer(AutoTokenizer.from_pretrained(name_or_path))

    @classmethod
    def from_tokenizer(cls, tok: Any) -> "PolicyTemplate":
        if not getattr(tok, "chat_template", None):
            raise ValueError("the policy tokenizer has no chat template")

        def render(msgs: list[dict[str, str]]) -> str:
            return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

        u1, _, _, s1 = _PROBE
        specials = [t for t in getattr(tok, "all_special_tokens", []) if isinstance(t, str)]
        specials += [t for t in (getattr(tok, "eos_token", None), getattr(tok, "pad_token", None)) if isinstance(t, str)]
        only_user = render([{"role": "user", "content": u1}])
        fmt = detect_format(only_user)
        if fmt is not None:
            turns = parse_turns(only_user, fmt)
            msgs = [(t.role, only_user[t.start:t.end]) for t in turns or [] if not t.lead]
            if not any(r == "user" and c == u1 for r, c in msgs):
                fmt = None  # the family's markers, not its turn structure: learn it instead
        if fmt is None:
            fmt = _learn_format(render)
            msgs = [(t.role, only_user[t.start:t.end]) for t in parse_turns(only_user, fmt) or []]
        default_system = next((c for r, c in msgs if r == "system"), None)
        prefix = ""
        try:
            with_system = render([{"role": "system", "content": s1}, {"role": "user", "content": u1}])
        except Exception:  # templates that refuse a system message
            with_system = ""
        for t in parse_turns(with_system, fmt) or []:
            c = with_system[t.start:t.end]
            if t.role == "system" and s1 in c:
                prefix = c[: c.index(s1)]
                break
        specials = [t for t in dict.fromkeys(list(fmt.specials) + specials) if 0 < len(t) <= MAX_SPECIAL_CHARS][:MAX_SPECIALS]
        return cls(fmt=fmt, default_system=default_system, system_prefix=prefix, specials=tuple(specials))


def _learn_format(render: Callable[[list[dict[str, str]]], str]) -> ChatFormat:
    """A format for a template of no known family: render probe conversations and take the
    literal text between their contents as separators (each one is the end of a turn plus
    the next turn's header). Assumes the common alternation: [system,] user, assistant, ..."""
    u1, a1, u2, s1 = _PROBE
    x = render([{"role": "user", "content": u1}, {"role": "assistant", "content": a1}, {"role": "user", "content": u2}])
    i_u1, i_a1, i_u2 = x.find(u1), x.find(a1), x.find(u2)
    if not 0 <= i_u1 < i_a1 < i_u2:
        raise ValueError("cannot learn the policy's chat template: probe messages not rendered in order")
    seps: dict[str, str] = {}  # literal -> role of the turn it opens
    found = [
        (x[:i_u1], "user"),
        (x[i_u1 + len(u1):i_a1], "assistant"),
        (x[i_a1 + len(a1):i_u2], "user"),
        (x[i_u2 + len(u2):], "assistant"),  # the generation header
    ]
    try:
        y = render([{"role": "system", "content": s1}, {"role": "user", "content": u1}])
        i_s, j_u = y.find(s1), y.find(u1)
        if 0 <= i_s < j_u:
            found += [(y[:i_s], "system"), (y[i_s + len(s1):j_u], "user")]
    except Exception:
        pass
    for lit, role in found:
        if not lit:
            raise ValueError("cannot learn the policy's chat template: turns with no separator between them")
        if seps.get(lit, role) != role:
            raise ValueError("cannot learn the policy's chat template: the same separator opens different roles")
        seps[lit] = role
    alts = sorted(seps.items(), key=lambda kv: len(kv[0]), reverse=True)  # longest first
    pattern = "|".join(f"(?P<{role}_{n}>{re.escape(lit)})" for n, (lit, role) in enumerate(alts))
    return ChatFormat("policy", re.compile(pattern))


# ---------------------------------------------------------------------- recovery
@dataclass(frozen=True)
class Recovered:
    prompt: str | list[dict[str, str]]  # "" = no prompt
    response: str
    prompt_truncated: bool  # the prompt was cut (by the client, or here to the bound)
    template: str | None  # the format name, None for plain text


@dataclass
class Recoverer:
    """Recover ``(prompt, response)`` from one OpenRLHF item.

    Attributes:
        policy: the policy's template (``--policy-tokenizer``); None = detect per item.
        strip: extra strings stripped from the ends of responses (``--strip``).
        max_chars: the server's ``max_text_chars``: prompt windows longer than
            ``2 * max_chars + 4096`` are cut to that (from the left) before parsing, or
            rejected with ``reject``; responses are cut to ``max_chars + 4096`` before
            stripping (the server's own truncation comes after).
        max_messages: messages kept (the last ones) when a prompt has more; ``reject``
            leaves them to the server's 413.
        reject: the server's ``on_too_long == "reject"``: an over-long prompt window is a
            413 item error instead of being cut.
    """

    policy: PolicyTemplate | None = None
    strip: tuple[str, ...] = ()
    max_chars: int = 32_768
    max_messages: int = 256
    reject: bool = False

    def recover(self, query: str, prompt: str | None) -> Recovered:
        if prompt is None:
            return self._from_query(query)
        n = len(prompt)
        if query.startswith(prompt):
            a, b, r0, cut = 0, n, n, False
        elif (ov := left_overlap(query, prompt)) is not None:  # OpenRLHF >= 0.9: cut from the left
            s, k = ov
            a, b, r0, cut = n - (k - s), n, k, True
        else:
            fmt = self._format(query)
            if fmt is not None:  # the query holds its whole (visible) conversation
                try:
                    rec = self._from_query(query)
                    return Recovered(rec.prompt, rec.response, True, rec.template)
                except RecoverError:
                    pass
            m = common_prefix(query, prompt)  # OpenRLHF <= 0.8: cut from the right
            if m == 0:
                raise RecoverError(422, "the query contains no part of its prompt; cannot split off the response")
            a, b, r0, cut = 0, m, m, True
        return self._assemble(prompt, a, b, cut, query, r0)

    # -- pieces
    def _format(self, text: str) -> ChatFormat | None:
        return self.policy.fmt if self.policy is not None else detect_format(text)

    def _bound(self) -> int:
        return 2 * self.max_chars + 4096

    def _specials(self, fmt: ChatFormat | None) -> tuple[str, ...]:
        if self.policy is not None:
            return self.strip + self.policy.specials
        return self.strip + (fmt.specials if fmt is not None else ())

    def _window(self, a: int, b: int, bound: int) -> tuple[int, bool]:
        if b - a <= bound:
            return a, False
        if self.reject:
            raise RecoverError(413, f"prompt has {b - a} characters; the limit is {self.max_chars} (plus template markup)")
        return b - bound, True

    def _response(self, text: str, start: int, fmt: ChatFormat | None) -> str:
        return strip_tokens(text[start:start + self.max_chars + 4096], self._specials(fmt))

    def _assemble(self, prompt: str, a: int, b: int, cut: bool, query: str, r0: int) -> Recovered:
        a, bounded = self._window(a, b, self._bound())
        cut = cut or bounded
        # parse from a little before the window, so that a turn whose header was cut keeps
        # its role (a header is < 128 characters); turns before the window are dropped
        a0 = max(0, a - 128) if a > 0 else 0
        text = prompt[a0:b]
        fmt = self._format(text)
        turns = parse_turns(text, fmt) if fmt is not None else None
        if turns is None:  # plain text prompt: scored as a string, as before
            return Recovered(prompt[a:b], self._response(query, r0, fmt), cut, None)
        response = self._response(query, r0, fmt)
        msgs, lead = self._messages(text, turns, cut, skip=a - a0)
        if msgs and msgs[-1]["role"] == "assistant":  # a prefilled assistant turn: the response continues it
            response = msgs.pop()["content"] + response
        return Recovered(msgs or "", response, cut or lead, fmt.name)

    def _messages(self, text: str, turns: list[Turn], cut: bool, skip: int = 0) -> tuple[list[dict[str, str]], bool]:
        """Messages of the turns that reach past ``skip`` (the first one cut there), without
        the generation header and the policy template's default system message."""
        lead = turns[0].lead or skip > 0
        last = turns[-1]
        if last.role == "assistant" and last.end == last.start and not last.lead:
            turns = turns[:-1]  # the generation header
        msgs = [
            {"role": t.role, "content": text[max(t.start, skip):t.end]}
            for t in turns
            if not (t.start < skip and t.end <= skip)
        ]
        if lead and msgs and not msgs[0]["content"].strip():
            msgs.pop(0)  # what is left of a turn cut from the left is a newline
        if not lead and not cut and self.policy is not None and msgs and msgs[0]["role"] == "system":
            c = msgs[0]["content"]
            if self.policy.default_system is not None and c == self.policy.default_system:
                msgs.pop(0)  # added by the policy's template, not part of the conversation
            elif self.policy.system_prefix and c.startswith(self.policy.system_prefix):
                msgs[0]["content"] = c[len(self.policy.system_prefix):]
        if len(msgs) > self.max_messages and not self.reject:
            msgs = msgs[-self.max_messages:]
            lead = True
        return msgs, lead

    def _from_query(self, query: str) -> Recovered:
        """No prompt sent: the query is the whole conversation (a template detected), else the
        response to an empty prompt."""
        fmt = self._format(query)
        if fmt is None:
            return Recovered("", self._response(query, 0, None), False, None)
        a, cut = self._window(0, len(query), self._bound() + self.max_chars + 4096)
        window = query[a:]
        turns = parse_turns(window, fmt)
        if turns is None:
            return Recovered("", self._response(query, 0, fmt), False, None)
        last = turns[-1]
        if last.role != "assistant" or last.lead:
            raise RecoverError(422, "the query has no assistant turn after its prompt; cannot find the response")
        response = strip_tokens(window[last.start:last.end][: self.max_chars + 4096], self._specials(fmt))
        msgs, lead = self._messages(window, turns[:-1], cut) if len(turns) > 1 else ([], cut)
        return Recovered(msgs or "", response, cut or lead, fmt.name)
