"""workbench/quant/grid.py and rtn.py: the grid primitives, QuantConfig's checks, RTN."""

import dataclasses

import pytest
import torch

from workbench.quant import QuantConfig, choose_qparams, dequantize, fake_quantize, quantize


def _weight(out=8, cols=576, seed=0):
    return torch.randn(out, cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [False, True])
def test_round_trip_every_bit_width(bits, symmetric):
    cfg = QuantConfig(bits=bits, group_size=128, symmetric=symmetric)
    w = _weight()
    scale, zero = choose_qparams(w, cfg)
    codes = quantize(w, scale, zero, cfg)
    assert codes.dtype == torch.uint8 and codes.min() >= 0 and codes.max() <= 2**bits - 1
    assert scale.shape == zero.shape == (8, 5)  # 4 x 128 + one group of 64
    w_hat = dequantize(codes, scale, zero, cfg)
    # Every weight that the grid covers is within half a step of its dequantized value.
    step = scale.repeat_interleave(128, dim=1)[:, :576]
    lo = (0 - zero).repeat_interleave(128, dim=1)[:, :576] * step
    hi = (cfg.maxq - zero).repeat_interleave(128, dim=1)[:, :576] * step
    inside = (w >= lo) & (w <= hi)
    assert inside.float().mean() > 0.95
    assert ((w - w_hat).abs()[inside] <= step[inside] / 2 + 1e-6).all()
    # Quantizing the dequantized weights again is exact: they sit on the grid.
    assert torch.equal(quantize(w_hat, scale, zero, cfg), codes)
    if not symmetric:
        assert torch.equal(zero, zero.round())


def test_more_bits_less_error():
    w = _weight()
    errs = [torch.linalg.norm(w - fake_quantize(w, QuantConfig(bits=b))).item() for b in range(2, 9)]
    assert all(a > b for a, b in zip(errs, errs[1:]))


def test_short_last_group_has_its_own_scale():
    w = _weight(cols=576)
    w[:, 512:] *= 100  # the last 64 columns live on a far wider range
    cfg = QuantConfig(bits=4, group_size=128)
    scale, _ = choose_qparams(w, cfg)
    assert (scale[:, 4] > 20 * scale[:, :4].max(dim=1).values).all()
    expected, _ = choose_qparams(w[:, 512:], QuantConfig(bits=4, granularity="channel"))
    assert torch.allclose(scale[:, 4:], expected)
    assert cfg.describe_groups(576) == "4x128+64"


def test_channel_and_tensor_granularity():
    w = _weight()
    for g in ("channel", "tensor"):
        s, _ = choose_qparams(w, QuantConfig(bits=4, granularity=g))
        assert s.shape == (8, 1)
    s, _ = choose_qparams(w, QuantConfig(bits=4, granularity="tensor"))
    assert torch.all(s == s[0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=1), "bits must be an integer from 2 to 8"),
    (dict(bits=9), "bits must be an integer from 2 to 8"),
    (dict(bits=4.0), "bits must be an integer"),
    (dict(group_size=0), "group_size must be a positive integer"),
    (dict(group_size=-128), "group_size must be a positive integer"),
    (dict(group_size=12.5), "group_size must be a positive integer"),
    (dict(granularity="row"), "granularity must be one of"),
    (dict(method="smoothquant"), "unknown quantization method"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)


@pytest.mark.parametrize("method, field", [("rtn", "symmetric"), ("rtn", "round_zero"), ("bcq", "zero_in_range"),
                                           ("rtn", "mse_clip"), ("gptq", "act_order"), ("gptq", "static_groups")])
def test_booleans_are_type_checked(method, field):
    with pytest.raises(TypeError, match=f"{field} must be True or False, got 'no'"):
        QuantConfig(method=method, **{field: "no"})


def test_each_method_has_its_own_config_and_another_methods_setting_is_named():
    from workbench.quant import BCQConfig, GPTQConfig, RTNConfig

    assert type(QuantConfig(bits=3)) is RTNConfig and QuantConfig(bits=3) == RTNConfig(bits=3)
    assert type(QuantConfig(bits=3, method="gptq", act_order=True)) is GPTQConfig
    assert type(QuantConfig(bits=1, method="bcq")) is BCQConfig and isinstance(BCQConfig(), QuantConfig)
    with pytest.raises(TypeError, match=r"RTNConfig \(method 'rtn'\) has no setting damp \(gptq's\)"):
        QuantConfig(bits=3, damp=0.05)
    with pytest.raises(TypeError, match=r"has no setting outlier_fraction \(rtn's\)"):
        QuantConfig(bits=3, method="gptq", outlier_fraction=0.01)
    with pytest.raises(ValueError, match="cannot have method='gptq'"):
        RTNConfig(method="gptq")
    for cfg in (QuantConfig(bits=3, outlier_fraction=0.01), QuantConfig(bits=3, method="gptq", damp=0.05),
                QuantConfig(bits=2, method="bcq", bcq_init="greedy")):
        assert QuantConfig.from_json(cfg.to_json()) == cfg
        own = {f.name for f in dataclasses.fields(cfg)}          # its own fields, no other method's; those
        assert set(cfg.to_json()) == own - set(cfg.ADDED_LATER)   # added later only when set


def test_a_config_stored_with_every_methods_fields_reads_back():
    """Checkpoints and snapshots from before the split hold all 17 fields; other methods' at their defaults."""
    legacy = dict(bits=3, group_size=128, granularity="group", symmetric=False, round_zero=True, zero_in_range=True,
                  scale_dtype="float16", mse_clip=False, method="gptq", damp=0.01, act_order=True, static_groups=False,
                  block_size=128, outlier_fraction=0.0, outlier_mode="weight", bcq_iters=20, bcq_init="uniform")
    assert QuantConfig.from_json(legacy) == QuantConfig(bits=3, method="gptq", act_order=True)
    with pytest.raises(ValueError, match=r"cannot hold outlier_fraction=0.1 \(another method's setting\)"):
        QuantConfig.from_json({**legacy, "outlier_fraction": 0.1})
