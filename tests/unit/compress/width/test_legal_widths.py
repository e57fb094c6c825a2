"""Legal widths: MLP widths that meet a parameter allowance from below."""

from pipeline.compress.width.legal_widths import spread_widths
from pipeline.models.spec import BaseDims, mlp_parameters


def test_spread_widths_fill_the_allowance_from_below_with_evenly_spaced_wider_layers():
    base = BaseDims("llama", num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64,
                    intermediate_size=1536, vocab_size=100)
    per_channel = mlp_parameters(base, 1) - mlp_parameters(base, 0)
    allowance = 30 * mlp_parameters(base, 1229)  # 0.8 of the width: between two multiples of 64
    widths = spread_widths(base, 30, allowance, 64)
    assert set(widths) == {1216, 1280}
    spent = sum(mlp_parameters(base, w) for w in widths)
    assert allowance - 64 * per_channel < spent <= allowance  # within one multiple of one layer, never over
    wide = [i for i, w in enumerate(widths) if w == 1280]
    assert max(b - a for a, b in zip(wide, wide[1:])) <= 2 * 30 / len(wide)  # spread over the depth, not bunched
    assert spread_widths(base, 30, 30 * mlp_parameters(base, 1536), 64) == [1536] * 30  # never above the full width
