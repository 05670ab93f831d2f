"""AWQ: the scale search, the range search, the model handlers, and what a packed checkpoint keeps."""

import pytest
import torch

from workbench.quant import QuantConfig, load_quantized, quantize_model, relative_output_error, save_quantized
from workbench.quant.awq import (AWQConfig, awq_clip_range, awq_quantize_weight, awq_scales, output_error)
from workbench.quant.grid import choose_qparams, dequantize, quantize
from workbench.quant.rtn import fake_quantize


def _skewed(seed=0, out=64, cols=256, tokens=2048, big=(3, 40, 200), factor=30.0):
    """W [out, cols] and the Hessian of inputs whose channels `big` are `factor` times larger."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, cols, generator=g) * 0.05
    X = torch.randn(tokens, cols, generator=g)
    X[:, list(big)] *= factor
    return W, 2 * X.T @ X / tokens


def test_searched_scales_beat_rtn_where_few_input_channels_are_large():
    W, H = _skewed()
    cfg = AWQConfig(bits=3, group_size=64, awq_clip=False)
    w_hat, state, info = awq_quantize_weight(W, H, cfg)
    rtn = fake_quantize(W, cfg)
    assert info["alpha"] > 0
    assert relative_output_error(W, w_hat, H) < 0.8 * relative_output_error(W, rtn, H)
    assert state.column_scale.shape == (W.shape[1],)
    big = state.column_scale[[3, 40, 200]].min()
    assert big > state.column_scale.median()          # the large channels get the finer grid


def test_alpha_zero_is_rtn_so_the_search_never_loses_to_it():
    W, H = _skewed(seed=1, factor=1.0)                    # no large channel: little to gain
    cfg = AWQConfig(bits=4, group_size=64, awq_clip=False)
    s, alpha, tried = awq_scales(W, H, cfg)
    assert tried[0][0] == 0.0 and len(tried) == cfg.awq_grid
    rtn_err = output_error(W, fake_quantize(W, cfg), H).sum().item()
    assert tried[0][1] == pytest.approx(rtn_err, rel=1e-5)
    assert min(e for _, e in tried) <= rtn_err
    one = AWQConfig(bits=4, group_size=64, awq_clip=False, awq_grid=1)   # α = 0 only: exactly RTN
    assert torch.equal(awq_quantize_weight(W, H, one)[0], fake_quantize(W, one))


def test_range_search_lowers_each_groups_output_error():
    W, H = _skewed(seed=2)
    cfg = AWQConfig(bits=3, group_size=64)
    lo, hi, p = awq_clip_range(W, H, cfg)
    assert ((p <= 1) & (p >= 0.55 - 1e-6)).all() and (p < 1).any()
    clipped = awq_quantize_weight(W, H, cfg, s=torch.ones(W.shape[1]))[0]
    plain = awq_quantize_weight(W, H, cfg, s=torch.ones(W.shape[1]), clip=False)[0]
    assert output_error(W, clipped, H).sum() < output_error(W, plain, H).sum()
    scale, zero = choose_qparams(W, AWQConfig(bits=3, group_size=64, awq_clip=False))
    assert torch.equal(plain, dequantize(quantize(W, scale, zero, cfg), scale, zero, cfg))


def test_w_hat_is_reproduced_from_its_state():
    W, H = _skewed(seed=3)
    cfg = AWQConfig(bits=3, group_size=64)
    w_hat, st, _ = awq_quantize_weight(W, H, cfg)
    codes = quantize(w_hat * st.column_scale, st.scale, st.zero, cfg)
    assert torch.equal(dequantize(codes, st.scale, st.zero, cfg) / st.column_scale, w_hat)


def test_bad_settings_name_the_problem():
    with pytest.raises(ValueError, match="awq_grid"):
        QuantConfig(method="awq", awq_grid=0)
    with pytest.raises(ValueError, match="mse_clip"):
        QuantConfig(method="awq", mse_clip=True)
    with pytest.raises(TypeError, match="awq_clip"):
        QuantConfig(method="awq", awq_clip="no")
    with pytest.raises(TypeError, match="awq_clip.*awq's"):
        QuantConfig(method="gptq", awq_clip=True)
    W, H = _skewed()
    with pytest.raises(ValueError, match="Hessian"):
        awq_quantize_weight(W, H[:10, :10], AWQConfig())


def _calibration(n=8, seqlen=32):
    return torch.randint(2, 64, (n, seqlen), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["awq", "awq_gptq"])
def test_quantize_model_with_awq_round_trips_through_a_packed_checkpoint(tiny_lm, tmp_path, method):
    model, tokenizer, _ = tiny_lm
    calib = _calibration()
    extra = {"act_order": True, "static_groups": True} if method == "awq_gptq" else {}
    qmodel, report = quantize_model(model, QuantConfig(bits=3, group_size=16, method=method, **extra),
                                    calibration=calib, progress=False)
    assert set(report.method) == {method} and report.alpha.notna().all()
    qkv = report[report.component.isin(["q", "k", "v"]) & (report.layer == 0)]
    assert qkv.alpha.nunique() == 1                           # one s for the three that read one input
    assert (report.rel_output_error < report.rtn_rel_output_error + 1e-6).mean() > 0.5
    # no hook is left on the model and the unquantized model is untouched
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in qmodel.modules())
    assert not torch.equal(qmodel.model.layers[0].mlp.down_proj.weight, model.model.layers[0].mlp.down_proj.weight)
    folder = save_quantized(qmodel, tmp_path / method, tokenizer)
    back = load_quantized(folder)
    for name, m in qmodel.named_modules():
        if name in qmodel.quant_state:
            assert torch.equal(back.get_submodule(name).weight, m.weight), name
    ids = calib[:2]
    assert torch.allclose(back(ids).logits, qmodel(ids).logits, atol=1e-5)


def test_awq_on_a_real_model_never_loses_to_rtn_where_one_linear_reads_an_input(tiny_lm):
    """o and down read an input alone, so their search includes plain RTN (α = 0) and can only win."""
    model, _, _ = tiny_lm
    calib = _calibration(16, 32)
    _, awq_rep = quantize_model(model, QuantConfig(bits=3, group_size=16, method="awq", awq_clip=False),
                                calibration=calib, progress=False)
    alone = awq_rep[awq_rep.component.isin(["o", "down"])]
    assert len(alone) == 4
    assert (alone.rel_output_error <= alone.rtn_rel_output_error * (1 + 1e-4)).all()


def test_awq_gptq_with_unit_scales_is_gptq(tiny_lm):
    """awq_grid=1 tries α = 0 only (s = 1): the hooks and the scaling then change nothing, and the
    result is GPTQ's with the same settings."""
    model, _, _ = tiny_lm
    calib = _calibration(8, 32)
    kw = dict(bits=3, group_size=16, act_order=True, static_groups=True)
    awq_q, rep = quantize_model(model, QuantConfig(method="awq_gptq", awq_grid=1, **kw), calibration=calib, progress=False)
    gptq_q, _ = quantize_model(model, QuantConfig(method="gptq", **kw), calibration=calib, progress=False)
    assert (rep.alpha == 0).all()
    for name in gptq_q.quant_state:
        torch.testing.assert_close(awq_q.get_submodule(name).weight, gptq_q.get_submodule(name).weight,
                                   rtol=0, atol=1e-6, msg=name)


def test_awq_gptq_restores_the_weights_when_gptq_fails(tiny_lm, monkeypatch):
    import workbench.quant.awq as awq

    model, _, _ = tiny_lm
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def broken(*args, **kwargs):
        raise RuntimeError("GPTQ failed")

    monkeypatch.setattr(awq, "gptq_quantize_model", broken)
    target = __import__("copy").deepcopy(model)
    with pytest.raises(RuntimeError, match="GPTQ failed"):
        quantize_model(target, QuantConfig(method="awq_gptq", bits=3, group_size=16), calibration=_calibration(),
                       inplace=True, progress=False)
    for n, p in target.named_parameters():
        assert torch.equal(p, before[n]), n
    assert all(not m._forward_pre_hooks for m in target.modules())
