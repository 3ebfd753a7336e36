"""The SDPA-based flash_attn_func the torch role installs where no flash-attn wheel matches torch."""

from __future__ import annotations

import importlib.util
import math

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch (CPU build) comes with the test extras")

PKG = Path(__file__).resolve().parents[2] / "roles" / "torch" / "files" / "flash_attn_sdpa" / "flash_attn" / "__init__.py"


@pytest.fixture(scope="module")
def fa():
    spec = importlib.util.spec_from_file_location("ktdeploy_flash_attn_sdpa", PKG)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reference(q, k, v, scale, causal):
    """Plain attention in flash-attn's layout; causal aligned to the bottom right (flash-attn >= 2.1)."""
    b, lq, h, _ = q.shape
    lk, hk = k.shape[1], k.shape[2]
    k = k.repeat_interleave(h // hk, dim=2)
    v = v.repeat_interleave(h // hk, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * scale
    if causal:
        allowed = torch.tensor([[j <= i + lk - lq for j in range(lk)] for i in range(lq)])
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.double()).to(q.dtype)


@pytest.mark.parametrize("lq,lk", [(17, 17), (5, 21), (1, 9)])
@pytest.mark.parametrize("causal", [True, False])
def test_matches_plain_attention(fa, lq, lk, causal):
    g = torch.Generator().manual_seed(lq * 100 + lk)
    # KTransformers' MLA prefill: head dim 192 for q/k, v padded to 192, 16 heads, scale given.
    q = torch.randn(2, lq, 16, 192, generator=g)
    k = torch.randn(2, lk, 16, 192, generator=g)
    v = torch.randn(2, lk, 16, 192, generator=g)
    scale = 1 / math.sqrt(192) * 1.3
    out = fa.flash_attn_func(q, k, v, softmax_scale=scale, causal=causal)
    assert out.shape == (2, lq, 16, 192)
    assert torch.allclose(out, reference(q, k, v, scale, causal), atol=1e-4, rtol=1e-4)


def test_causal_keeps_the_bottom_right_alignment(fa):
    """The last query of a chunk sees every key; the first sees all but the chunk's later tokens."""
    mask = fa.causal_mask(3, 5)
    assert mask.tolist() == [[True, True, True, False, False], [True, True, True, True, False], [True] * 5]


def test_grouped_kv_heads_and_a_smaller_value_dim(fa):
    g = torch.Generator().manual_seed(7)
    q, k, v = torch.randn(1, 6, 8, 64, generator=g), torch.randn(1, 6, 2, 64, generator=g), torch.randn(1, 6, 2, 32, generator=g)
    out = fa.flash_attn_func(q, k, v, causal=True)
    assert out.shape == (1, 6, 8, 32)
    assert torch.allclose(out, reference(q, k, v, 1 / 8, True), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kwargs,word", [({"dropout_p": 0.1}, "dropout"), ({"window_size": (4, 0)}, "sliding"),
                                         ({"softcap": 30.0}, "softcap"), ({"return_attn_probs": True}, "probabilities")])
def test_features_it_lacks_are_refused_by_name(fa, kwargs, word):
    q = torch.zeros(1, 2, 2, 8)
    with pytest.raises(NotImplementedError, match=word):
        fa.flash_attn_func(q, q, q, **kwargs)


def test_transformers_does_not_take_it_for_flash_attention_2():
    """The distribution is not named flash_attn, so transformers' metadata check stays negative."""
    text = (PKG.parents[1] / "pyproject.toml").read_text()
    assert 'name = "ktdeploy-flash-attn-sdpa"' in text


def test_kvcache_variant_imports_but_refuses_to_run(fa):
    with pytest.raises(NotImplementedError, match="long_context"):
        fa.flash_attn_with_kvcache()
