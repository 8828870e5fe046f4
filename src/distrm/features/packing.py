"""Packed (padding-free) forward passes for causal-LM backbones on CUDA.

Length-sorted right-padded batches still spend FLOPs on pad tokens and force SDPA onto a
masked kernel. Here a batch's sequences are concatenated into ONE row of T tokens with
per-sequence position ids, and attention runs through a variable-length causal
flash-attention kernel (``torch.nn.attention.varlen.varlen_attn``) that reads the segment
boundaries from ``cu_seq_lens`` -- the same kwargs transformers' flash-attention-2 path
uses, so the model code is untouched. No pad token is computed and no [T, T] mask is built.

    from distrm.features.packing import packed_hidden, packed_support
    h = packed_hidden(model, seqs, positions)   # [b, P, d]: hidden states at given positions
    ok, why = packed_support("causal", model.config, device, dtype)

It is the default of every :class:`distrm.features.backbones.Backbone` where
:func:`packed_support` says it runs (CUDA, bf16/fp16, a varlen kernel in this torch, an
architecture in :data:`PACKED_ARCHS`); elsewhere the backbone keeps its padded batches and
logs why once. Both give the same features up to float rounding, so the choice is not part
of the feature identity (store keys stay valid whichever path wrote them).

On CPU (tests) the attention falls back to per-segment SDPA, which is the definition the
kernel has to match.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

PACKED_ATTN = "distrm_packed"
_VARLEN: tuple | None = None


def _varlen():
    """(varlen_attn or None, its parameter names): the signature changed between torch
    releases (``is_causal`` in 2.10, ``window_size`` later), so we look before calling."""
    global _VARLEN
    if _VARLEN is None:
        try:
            from torch.nn.attention.varlen import varlen_attn

            _VARLEN = (varlen_attn, set(inspect.signature(varlen_attn).parameters))
        except Exception:  # noqa: BLE001 -- torch without the varlen kernel
            _VARLEN = (None, set())
    return _VARLEN


def available() -> bool:
    """True when packed batches can run on a GPU kernel here."""
    return torch.cuda.is_available() and _varlen()[0] is not None


def _packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for one packed row: q/k/v [1, H, T, Dh] -> [1, T, H, Dh]."""
    cu = kwargs["cu_seq_lens_q"]
    max_len = int(kwargs["max_length_q"])
    window = getattr(module, "sliding_window", None)  # Gemma-3's local layers
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, H, Dh]
    fn, params = _varlen()
    if q.is_cuda and fn is not None and (not window or "window_size" in params):
        gqa = k.shape[1] != q.shape[1]
        if gqa and "enable_gqa" not in params:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        kw = {"scale": scaling}
        if "enable_gqa" in params:
            kw["enable_gqa"] = gqa
        if "window_size" in params:
            kw["window_size"] = (window - 1, 0) if window else (-1, 0)
        else:
            kw["is_causal"] = True
        return fn(q, k, v, cu, cu, max_len, max_len, **kw).unsqueeze(0), None
    outs = []
    b = cu.tolist()
    for s, e in zip(b[:-1], b[1:]):
        qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))  # [H, L, Dh]
        mask = torch.ones(e - s, e - s, dtype=torch.bool, device=q.device).tril()
        if window:
            mask &= ~torch.ones_like(mask).tril(-window)
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scaling, enable_gqa=ks.shape[0] != qs.shape[0])
        outs.append(o.transpose(0, 1))
    return torch.cat(outs, 0).unsqueeze(0), None


def _no_mask(*args, **kwargs):
    return None  # segments come from cu_seq_lens: never materialise a [T, T] mask


def register() -> None:
    """Make ``attn_implementation="distrm_packed"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_ATTN, _packed_attention)
    AttentionMaskInterface.register(PACKED_ATTN, _no_mask)


def use_packed(model: torch.nn.Module) -> None:
    """Switch a loaded HF causal LM (base model) to packed attention."""
    register()
    if model.config._attn_implementation != PACKED_ATTN:
        model.set_attn_implementation(PACKED_ATTN)


@torch.inference_mode()
def packed_last_hidden(model: torch.nn.Module, seqs: Sequence[Sequence[int]], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``seqs`` as one packed row: (hidden [T, d] on device, cu_seqlens [n+1])."""
    device = device or next(model.parameters()).device
    lens = [len(s) for s in seqs]
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long).unsqueeze(0).to(device, non_blocking=True)
    pos = torch.cat([torch.arange(n) for n in lens]).unsqueeze(0).to(device, non_blocking=True)
    cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32).to(device, non_blocking=True)
    m = max(lens)
    h = model(input_ids=ids, position_ids=pos, use_cache=False, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
              max_length_q=m, max_length_k=m).last_hidden_state
    return h[0], cu


def packed_hidden(model: torch.nn.Module, seqs: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]) -> np.ndarray:
    """Hidden states at ``positions[i]`` (indices within sequence i) for each sequence:
    [b, P, d] float32 -- the packed twin of a right-padded batch plus a gather."""
    use_packed(model)
    h, cu = packed_last_hidden(model, seqs)
    idx = cu[:-1, None].long() + torch.tensor(positions, device=h.device)
    return h[idx].float().cpu().numpy()


def fuse_pointwise(model: torch.nn.Module) -> list[str]:
    """``torch.compile`` the memory-bound pieces of a HF decoder (RMSNorm, gated MLP,
    rotary embedding) at class level with dynamic shapes, leaving the GEMMs to cuBLAS and
    attention to the varlen kernel. Eager RMSNorm alone makes ~7 fp32 passes over the
    hidden state per call; fused it is one. One compiled graph serves every layer (the
    parameters are graph inputs), so compiling costs seconds, not minutes. Returns what
    was compiled. Affects every model of these classes in the process (benchmarks/GPU)."""
    import sys

    done = []
    mod = sys.modules[type(model.layers[0]).__module__] if hasattr(model, "layers") else None
    for cls in {type(m) for m in model.modules()}:
        if cls.__name__.endswith(("RMSNorm", "MLP")) and not getattr(cls.forward, "_distrm_compiled", False):
            cls.forward = torch.compile(cls.forward, dynamic=True)
            cls.forward._distrm_compiled = True
            done.append(cls.__name__)
    if mod is not None and hasattr(mod, "apply_rotary_pos_emb") and not getattr(mod.apply_rotary_pos_emb, "_distrm_compiled", False):
        mod.apply_rotary_pos_emb = torch.compile(mod.apply_rotary_pos_emb, dynamic=True)
        mod.apply_rotary_pos_emb._distrm_compiled = True
        done.append("apply_rotary_pos_emb")
    return done


# Architectures whose attention goes through transformers' AttentionInterface with the
# ``cu_seq_lens`` kwargs passed on and whose decoder layers take ``position_ids`` per token;
# each is checked against the padded forward in tests/test_extract_packed.py. Others (and
# any model with attention logit soft-capping, which the kernel lacks) stay padded.
PACKED_ARCHS = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma3_text"})


def packed_support(kind: str, config, device: torch.device, dtype: torch.dtype,
                   kernel: bool | None = None) -> tuple[bool, str]:
    """(whether a backbone's batches can run packed here, why or why not). ``kernel``: whether
    this torch has the varlen kernel (default: look). Pure, so the rules are testable
    without a GPU."""
    model_type = getattr(config, "model_type", None)
    if kind != "causal":
        return False, "encoder backbone (bidirectional and mean-pooled: nothing to pack)"
    if model_type not in PACKED_ARCHS:
        return False, f"architecture {model_type!r} is not one of {', '.join(sorted(PACKED_ARCHS))}"
    if getattr(config, "attn_logit_softcapping", None):
        return False, "attention logit soft-capping (the varlen kernel has none)"
    if torch.device(device).type != "cuda":
        return False, f"no CUDA (device {device})"
    if kernel is None:
        kernel = _varlen()[0] is not None
    if not kernel:
        return False, f"torch {torch.__version__} has no varlen attention kernel (torch.nn.attention.varlen)"
    if dtype not in (torch.bfloat16, torch.float16):
        return False, f"dtype {str(dtype).replace('torch.', '')} (the varlen flash kernel takes bfloat16/float16)"
    if getattr(config, "sliding_window", None) and "window_size" not in _varlen()[1]:
        return False, f"sliding-window attention and torch {torch.__version__}'s varlen kernel has no window_size"
    return True, "CUDA varlen attention kernel"


def enable_packing(model: torch.nn.Module, fuse: bool = True) -> int:
    """Switch a loaded HF causal LM (base model) to packed attention, and with ``fuse`` merge
    its projections (:func:`fuse_projections`: the fastest measured path); returns the number
    of layers fused. The model is then for :func:`packed_hidden` only: the padded forward
    of a fused model is gone."""
    use_packed(model)
    return fuse_projections(model) if fuse else 0


def fuse_projections(model: torch.nn.Module, compile: bool = False) -> int:
    """Merge q/k/v into one GEMM and gate/up into one GEMM per layer (Llama/Mistral-style
    layers without q/k norms; others are left alone). Fewer, wider GEMMs keep the tensor
    cores busier: k/v alone are only 1024 wide on Llama-3-8B. Packed attention only (the
    new attention forward calls the varlen kernel); ``compile`` also fuses their pointwise
    parts (rotary, SiLU-gate) with ``torch.compile``. Returns the number of layers fused."""
    import types

    register()
    n = 0
    for layer in getattr(model, "layers", []):
        att, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if att is None or mlp is None or hasattr(att, "q_norm") or not hasattr(mlp, "gate_proj"):
            continue
        w = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])
        b = None if att.q_proj.bias is None else torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias])
        # parameters (frozen), not buffers: parameter counts (FLOPs, memory reports) stay right
        att.qkv_weight = torch.nn.Parameter(w, requires_grad=False)
        att.qkv_bias = b
        att.qkv_split = [att.q_proj.out_features, att.k_proj.out_features, att.v_proj.out_features]
        del att.q_proj, att.k_proj, att.v_proj
        att.forward = types.MethodType(_compiled("attn") if compile else _fused_attention_forward, att)
        mlp.gate_up_weight = torch.nn.Parameter(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), requires_grad=False)
        del mlp.gate_proj, mlp.up_proj
        mlp.forward = types.MethodType(_compiled("mlp") if compile else _fused_mlp_forward, mlp)
        n += 1
    return n


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _fused_attention_forward(self, hidden_states, position_embeddings, attention_mask=None, **kwargs):
    shape = hidden_states.shape[:-1]
    q, k, v = F.linear(hidden_states, self.qkv_weight, self.qkv_bias).split(self.qkv_split, dim=-1)
    q, k, v = (t.view(*shape, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
    cos, sin = (t.unsqueeze(1) for t in position_embeddings)
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    out, _ = _packed_attention(self, q, k, v, attention_mask, scaling=self.scaling, **kwargs)
    return self.o_proj(out.reshape(*shape, -1)), None


def _fused_mlp_forward(self, x):
    g, u = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
    return self.down_proj(self.act_fn(g) * u)


_COMPILED: dict[str, object] = {}


def _compiled(which: str):
    if which not in _COMPILED:  # one compiled function shared by every layer
        fn = _fused_attention_forward if which == "attn" else _fused_mlp_forward
        _COMPILED[which] = torch.compile(fn, dynamic=True)
    return _COMPILED[which]
