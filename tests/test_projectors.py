"""Every projector kind: output shapes, token counts known in advance, padding masked."""

import pytest
import torch

from omnimodal.errors import ConfigError
from omnimodal.projectors import build_projector, masked_mean_max, projector_num_tokens

D_IN, D_OUT = 12, 20


@pytest.mark.parametrize(
    "cfg, length, expected",
    [
        ({"kind": "linear"}, 10, 10),
        ({"kind": "mlp"}, 10, 10),
        ({"kind": "mlp", "hidden_dim": 7}, 3, 3),
        ({"kind": "pool", "stride": 4}, 10, 3),
        ({"kind": "pool", "stride": 2}, 8, 4),
        ({"kind": "resampler", "num_queries": 5}, 10, 5),
        ({"kind": "resampler", "num_queries": 5}, 1, 5),
    ],
)
def test_shapes_match_announced_token_count(cfg, length, expected):
    proj = build_projector(cfg, D_IN, D_OUT)
    feats = torch.randn(3, length, D_IN)
    mask = torch.ones(3, length, dtype=torch.bool)
    tokens, tmask = proj(feats, mask)
    assert tokens.shape == (3, expected, D_OUT)
    assert tmask.shape == (3, expected)
    assert projector_num_tokens(cfg, length) == expected
    assert int(tmask[0].sum()) == expected


def test_pool_counts_follow_each_items_length_and_ignore_padding():
    proj = build_projector({"kind": "pool", "stride": 4}, D_IN, D_OUT)
    feats = torch.randn(2, 12, D_IN)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, :12] = True
    mask[1, :5] = True  # 5 real positions -> ceil(5/4) = 2 tokens
    tokens, tmask = proj(feats, mask)
    assert tmask.sum(1).tolist() == [3, projector_num_tokens({"kind": "pool", "stride": 4}, 5)] == [3, 2]
    # Changing padded features must not change item 1's tokens.
    feats2 = feats.clone()
    feats2[1, 5:] = 1e3
    tokens2, _ = proj(feats2, mask)
    assert torch.allclose(tokens[1, :2], tokens2[1, :2])


@pytest.mark.parametrize("pooled", [False, True])
def test_resampler_ignores_padded_positions(pooled):
    torch.manual_seed(0)
    cfg = {"kind": "resampler", "num_queries": 4, "num_heads": 2, "pooled_queries": pooled}
    proj = build_projector(cfg, D_IN, D_OUT).eval()
    feats = torch.randn(1, 6, D_IN)
    mask = torch.tensor([[True, True, True, False, False, False]])
    a, _ = proj(feats, mask)
    feats[0, 3:] = 100.0
    b, _ = proj(feats, mask)
    c, _ = proj(feats[:, :3], mask[:, :3])
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, c, atol=1e-5)


def test_masked_mean_max_uses_only_valid_positions():
    feats = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [50.0, 60.0]], [[7.0, 8.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    pooled = masked_mean_max(feats, mask)
    assert pooled[0].tolist() == [2.0, 1.0, 3.0, 4.0]  # mean, then max, padding ignored
    assert pooled[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # nothing valid: zeros, not -inf/NaN


def test_unknown_kind_and_option_list_valid_choices():
    with pytest.raises(ConfigError, match=r"Did you mean 'mlp'.*Valid choices: .*linear, mlp, pool, resampler"):
        build_projector({"kind": "mpl"}, 4, 4)
    with pytest.raises(ConfigError, match="has no option 'strid'.*stride"):
        build_projector({"kind": "pool", "strid": 2}, 4, 4)
