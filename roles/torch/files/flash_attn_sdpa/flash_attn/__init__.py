"""`flash_attn_func` on torch's scaled_dot_product_attention (installed by ktdeploy's torch role).

Only what KTransformers 0.2.x calls: dense attention in flash-attn's (batch, seqlen, heads, dim)
layout, causal masks aligned to the bottom right as flash-attn >= 2.1 does, grouped KV heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__version__ = "2.8.3+ktdeploy.sdpa"
__all__ = ["flash_attn_func", "flash_attn_with_kvcache"]


def _unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(
        f"ktdeploy's SDPA flash_attn_func does not support {what}; install a flash-attn wheel that matches "
        "this torch (torch_flash_attn_wheel) instead"
    )


def causal_mask(seqlen_q: int, seqlen_k: int, device=None) -> torch.Tensor:
    """True where query i may attend key j: j <= i + (seqlen_k - seqlen_q) (bottom-right aligned)."""
    rows = torch.arange(seqlen_q, device=device).unsqueeze(1)
    cols = torch.arange(seqlen_k, device=device).unsqueeze(0)
    return cols <= rows + (seqlen_k - seqlen_q)


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> torch.Tensor:
    """q: (batch, seqlen_q, heads, dim); k, v: (batch, seqlen_k, kv_heads, dim_k / dim_v). Returns (batch, seqlen_q, heads, dim_v)."""
    if dropout_p:
        raise _unsupported("dropout")
    if tuple(window_size) != (-1, -1):
        raise _unsupported("sliding windows")
    if softcap:
        raise _unsupported("softcap")
    if alibi_slopes is not None:
        raise _unsupported("ALiBi")
    if return_attn_probs:
        raise _unsupported("returning the attention probabilities")
    heads, kv_heads = q.shape[2], k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads ({kv_heads})")
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    if kv_heads != heads:
        kt = kt.repeat_interleave(heads // kv_heads, dim=1)
        vt = vt.repeat_interleave(heads // kv_heads, dim=1)
    seqlen_q, seqlen_k = q.shape[1], k.shape[1]
    mask = None
    if causal and seqlen_q != seqlen_k:
        mask = causal_mask(seqlen_q, seqlen_k, device=q.device)
    out = F.scaled_dot_product_attention(
        qt, kt, vt, attn_mask=mask, is_causal=causal and mask is None, scale=softmax_scale
    )
    return out.transpose(1, 2).contiguous()


def flash_attn_with_kvcache(*args, **kwargs):
    """Named so that KTransformers' long-context module imports; that mode (Llama/InternLM only) is not served."""
    raise _unsupported("flash_attn_with_kvcache (KTransformers' long_context mode)")
