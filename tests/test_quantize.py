import copy

import pytest
import torch

from workbench.quant import QuantConfig, choose_qparams, dequantize, fake_quantize, quantize, quantize_model


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
    (dict(method="awq"), "unknown quantization method"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)


def test_nan_weight_is_named(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj: .*NaN"):
        quantize_model(model, QuantConfig(bits=4, group_size=16))


def test_quantize_model_copies_skips_the_head_and_reports(tiny_lm):
    model = tiny_lm.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel, report = quantize_model(model, QuantConfig(bits=3, group_size=32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # original untouched
    assert len(report) == 2 * 7 and "lm_head" not in set(report.module)
    assert torch.equal(qmodel.lm_head.weight, model.lm_head.weight)
    assert torch.equal(qmodel.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert set(report.component) == {"q", "k", "v", "o", "gate", "up", "down"}
    assert set(report.groups) == {"1x32+16", "3x32"}  # 48-wide rows and 96-wide rows
    assert (report.rel_weight_error > 0).all() and (report.rel_weight_error < 0.5).all()
    w = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(qmodel.model.layers[0].self_attn.q_proj.weight, fake_quantize(w, QuantConfig(bits=3, group_size=32)))


def test_mixed_spec_and_patterns(tiny_lm):
    spec = {r"self_attn": QuantConfig(bits=4, group_size=16), r"mlp\.down": None, r"mlp": QuantConfig(bits=2, group_size=16)}
    qmodel, report = quantize_model(tiny_lm.model, spec)
    by = report.groupby("component").bits.first().to_dict()
    assert by == {"q": 4, "k": 4, "v": 4, "o": 4, "gate": 2, "up": 2}
    assert torch.equal(qmodel.model.layers[0].mlp.down_proj.weight, tiny_lm.model.model.layers[0].mlp.down_proj.weight)
    with pytest.raises(ValueError, match="matches no linear module"):
        quantize_model(tiny_lm.model, {r"cross_attn": QuantConfig()})


def test_inplace(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    qmodel, _ = quantize_model(model, QuantConfig(bits=2, group_size=16), inplace=True)
    assert qmodel is model


@pytest.mark.parametrize("field", ["symmetric", "round_zero", "zero_in_range", "mse_clip", "act_order", "static_groups"])
def test_booleans_are_type_checked(field):
    with pytest.raises(TypeError, match=f"{field} must be True or False, got 'no'"):
        QuantConfig(**{field: "no"})


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).eval()


def test_gpt2_conv1d_layers_are_quantized():
    from workbench.modules import to_linear

    model, ids = _tiny_gpt2(), torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fp = model(ids).logits
        converted = copy.deepcopy(model)
        assert to_linear(converted) == 4 * 2                     # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
        torch.testing.assert_close(converted(ids).logits, fp, rtol=1e-5, atol=1e-5)   # the same function
        qmodel, report = quantize_model(model, QuantConfig(bits=2, group_size=16))
        q8, _ = quantize_model(model, QuantConfig(bits=8, group_size=16))
        low, high = (qmodel(ids).logits - fp).abs().max(), (q8(ids).logits - fp).abs().max()
    assert len(report) == 8 and report.attrs["conv1d_to_linear"] == 8
    assert set(report.component) == {"qkv", "o", "up", "down"}
    assert (report.rel_weight_error > 0.1).all()                 # 2 bits really moved every weight
    assert high < low and low > 1e-3
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"   # the original is untouched
    w = model.transformer.h[1].mlp.c_fc.weight.t()               # Conv1D stores [in, out]
    assert torch.equal(qmodel.transformer.h[1].mlp.c_fc.weight, fake_quantize(w, QuantConfig(bits=2, group_size=16)))


def test_gptq_on_gpt2():
    model = _tiny_gpt2()
    calib = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(1))
    _, report = quantize_model(model, QuantConfig(bits=3, group_size=16, method="gptq"), calibration=calib,
                               progress=False)
    assert len(report) == 8 and report.rel_output_error.notna().all()


def test_nothing_to_quantize_is_an_error():
    with pytest.raises(ValueError, match="nothing to quantize: this Sequential has no nn.Linear"):
        quantize_model(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.ReLU()), QuantConfig())
    head_only = torch.nn.ModuleDict({"lm_head": torch.nn.Linear(4, 4)})
    with pytest.raises(ValueError, match="outside skip="):
        quantize_model(head_only, QuantConfig(group_size=4))
