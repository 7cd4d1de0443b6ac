"""Length buckets with a token budget, and the image tower skipping padding (``Unpadded``) vs computing it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.batching import length_buckets
from encoders.bert import BertEncoder, BertSelfAttention, additive_attention_mask, init_bert_weights
from encoders.config import TINY_CONFIG, EncoderConfig
from encoders.lightningdot import LightningDOT


def test_token_budget_groups_short_items_in_larger_batches():
    lengths = np.array([101, 11, 50, 11, 11, 101, 11, 30, 200])
    batches = list(length_buckets(lengths, batch_size=100, max_tokens=202))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))  # every item exactly once
    assert all(len(b) * lengths[b].max() <= 202 or len(b) == 1 for b in batches)
    assert [lengths[b].tolist() for b in batches] == [[11, 11, 11, 11, 30], [50, 101], [101], [200]]
    assert [len(b) for b in length_buckets(lengths, batch_size=3)] == [3, 3, 3]  # without a budget: counts only
    assert [len(b) for b in length_buckets(lengths, batch_size=2, max_tokens=10_000)] == [2, 2, 2, 2, 1]
    with pytest.raises(ValueError, match="max_tokens"):
        list(length_buckets(lengths, 4, max_tokens=0))


def test_unpadded_tower_equals_computing_the_padding():
    model = LightningDOT.random(TINY_CONFIG, seed=4)
    rng = np.random.default_rng(0)
    counts = torch.tensor([1, 7, 30, 12])
    feats = torch.as_tensor(rng.random((4, 30, model.config.feature_dim), dtype=np.float32))
    boxes = torch.as_tensor(rng.random((4, 30, 7), dtype=np.float32))
    mask = (torch.arange(30)[None] < counts[:, None]).long()
    feats = feats * mask[..., None]
    with torch.inference_mode():
        skipped = model.model.img_model(feats, boxes, mask)
        computed = model.model.img_model(feats, boxes, mask, unpad=False)
    np.testing.assert_allclose(skipped.numpy(), computed.numpy(), atol=1e-5, rtol=0)
    assert (skipped[0] - skipped[1]).abs().max() > 1e-3


def test_fused_qkv_equals_the_three_linears_and_follows_a_reload():
    """The image tower's stacked q/k/v weight is a cache: the numbers of three GEMMs, rebuilt after a reload."""
    cfg = EncoderConfig.load(TINY_CONFIG)
    fused, plain = BertSelfAttention(cfg, fuse_qkv=True), init_bert_weights(BertSelfAttention(cfg), seed=1)
    x = torch.randn(3, 5, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    mask = additive_attention_mask(torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] + [0] * 4]), x.dtype)
    with torch.inference_mode():
        stale = fused(x, mask)  # caches the stacked weight of its own initial weights
        fused.load_state_dict(plain.state_dict())
        np.testing.assert_allclose(fused(x, mask).numpy(), plain(x, mask).numpy(), atol=1e-6, rtol=0)
    assert (stale - plain(x, mask)).abs().max() > 1e-3


def test_fused_qkv_is_never_stale():
    """Every way a weight changes reaches the stacked copy: writes through ``.data`` (which bump no version
    counter), in place under ``no_grad``, dtype round trips, tensors replaced, and weights shared by two models."""
    cfg = EncoderConfig.load(TINY_CONFIG)
    fused = init_bert_weights(BertSelfAttention(cfg, fuse_qkv=True), seed=1)
    twin = BertSelfAttention(cfg, fuse_qkv=True)
    twin.query, twin.key, twin.value = fused.query, fused.key, fused.value  # the same Linears in two models
    x = torch.randn(2, 5, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    mask = additive_attention_mask(torch.tensor([[1] * 5, [1] * 3 + [0] * 2]), x.dtype)
    gen = torch.Generator().manual_seed(2)

    def check(model: BertSelfAttention) -> None:
        with torch.inference_mode():
            got = model(x.to(model.query.weight.dtype), mask.to(model.query.weight.dtype))
            model.fuse_qkv = False
            want = model(x.to(model.query.weight.dtype), mask.to(model.query.weight.dtype))
            model.fuse_qkv = True
        np.testing.assert_allclose(got.float().numpy(), want.float().numpy(), atol=1e-6, rtol=0)

    changes = [lambda: fused.query.weight.data.copy_(torch.randn(fused.query.weight.shape, generator=gen)),
               lambda: fused.value.bias.data.add_(1.0),
               lambda: torch.no_grad()(fused.key.weight.mul_)(2.0),
               lambda: fused.double(), lambda: fused.float(),
               lambda: setattr(fused.key.weight, "data", torch.randn(fused.key.weight.shape, generator=gen))]
    check(fused)
    for change in changes:
        change()
        check(fused)
        check(twin)
        check(fused)


def test_unpadded_tower_under_autograd_gives_the_padded_gradients():
    """The in-place residual and the reused q/k/v buffer are for inference only: with autograd on, the unpadded
    layout gives the padded layout's gradients instead of an in-place error, and leaves its input as it was."""
    cfg = EncoderConfig.load(TINY_CONFIG)
    encoder = init_bert_weights(BertEncoder(cfg, fuse_qkv=True), seed=1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    x = torch.randn(2, 4, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    grads = []
    for unpad in (True, False):
        leaf = x.clone().requires_grad_(True)
        out = encoder(leaf, mask, unpad=unpad)
        (out * mask[..., None]).sum().backward()
        assert torch.equal(leaf.detach(), x)
        grads.append(leaf.grad * mask[..., None])
    np.testing.assert_allclose(grads[0].numpy(), grads[1].numpy(), atol=1e-5, rtol=0)
