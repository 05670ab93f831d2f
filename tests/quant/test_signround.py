"""SignRound: the learned rounding of one weight, the block-by-block handler, and its errors."""

import copy

import pytest
import torch

from workbench.quant import QuantConfig, fake_quantize, load_quantized, quantize_model, save_quantized
from workbench.quant.grid import dequantize, qparams_from_range, quantize
from workbench.quant.signround import LearnedRounding, SignRoundConfig, signround_quantize_model
from workbench.quant.model import resolve_spec


def _calibration(n=8, seqlen=32, seed=0):
    return torch.randint(0, 64, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cfg", [SignRoundConfig(bits=3, group_size=16), SignRoundConfig(bits=2, granularity="channel"),
                                 SignRoundConfig(bits=4, group_size=24, symmetric=True)])
def test_the_start_is_rtn_and_any_setting_lies_on_its_grid(cfg):
    W = torch.randn(12, 40, generator=torch.Generator().manual_seed(1))
    r = LearnedRounding(W, cfg)
    assert torch.equal(r.result()[0], fake_quantize(W, cfg))            # v = 0, a = b = 1: RTN
    assert torch.allclose(r(), fake_quantize(W, cfg), atol=1e-6)
    with torch.no_grad():
        r.v.uniform_(-0.5, 0.5)
        r.a.uniform_(0.6, 1.0)
        r.b.uniform_(0.6, 1.0)
    w_hat, scale, zero = r.result()
    assert torch.equal(dequantize(quantize(w_hat, scale, zero, cfg), scale, zero, cfg), w_hat)
    assert torch.allclose(r(), w_hat, atol=1e-6)                        # training sees the stored result
    assert not torch.equal(w_hat, fake_quantize(W, cfg))


def test_gradients_reach_the_offsets_and_the_clip():
    W = torch.randn(8, 32, generator=torch.Generator().manual_seed(2))
    r = LearnedRounding(W, SignRoundConfig(bits=3, group_size=16))
    loss = (r() - W).pow(2).sum()
    gv, ga, gb = torch.autograd.grad(loss, [r.v, r.a, r.b])
    assert gv.abs().sum() > 0 and ga.abs().sum() > 0 and gb.abs().sum() > 0
    frozen = LearnedRounding(W, SignRoundConfig(bits=3, group_size=16, learn_clip=False))
    assert [n for n, p in frozen.named_parameters() if p.requires_grad] == ["v"]


def test_ste_rounding_of_the_zero_changes_no_value():
    lo, hi = -torch.rand(5, 3) - 0.1, torch.rand(5, 3) + 0.1
    cfg = SignRoundConfig(bits=3)
    for a, b in zip(qparams_from_range(lo, hi, cfg), qparams_from_range(lo, hi, cfg, ste=True)):
        assert torch.equal(a, b)


def test_signround_lowers_each_blocks_output_error_below_rtn(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    cfg = SignRoundConfig(bits=2, group_size=16, iters=40, batch_size=4)
    plan = resolve_spec(model, cfg)
    qparams, report = signround_quantize_model(model, plan, _calibration(), progress=False)
    assert set(qparams) == set(plan)
    by_block = {r["layer"]: (r["block_rel_error"], r["rtn_block_rel_error"]) for r in report}
    assert len(by_block) == 2
    for after, before in by_block.values():
        assert after < 0.9 * before
    assert all(0 < r["flipped"] < 0.5 and 0.5 <= r["clip_mean"] <= 1 for r in report)
    for name, (scale, zero) in qparams.items():                        # weights written, on their grids
        W = dict(model.named_modules())[name].weight.data
        assert torch.equal(dequantize(quantize(W, scale, zero, cfg), scale, zero, cfg), W)


def test_zero_iterations_is_rtn_on_every_layer(tiny_lm):
    cfg = SignRoundConfig(bits=3, group_size=16, iters=0, batch_size=4)
    q, _ = quantize_model(tiny_lm.model, cfg, calibration=_calibration(), progress=False)
    r, _ = quantize_model(tiny_lm.model, QuantConfig(bits=3, group_size=16), progress=False)
    for (n, a), (_, b) in zip(q.named_parameters(), r.named_parameters()):
        assert torch.equal(a, b), n


def test_a_signround_model_saves_and_reloads_exactly(tiny_lm, tmp_path):
    cfg = QuantConfig(bits=3, group_size=16, method="signround", iters=5, batch_size=4)
    qmodel, report = quantize_model(tiny_lm.model, cfg, calibration=_calibration(), progress=False)
    assert {"block_rel_error", "rtn_block_rel_error", "flipped", "clip_mean"} <= set(report.columns)
    save_quantized(qmodel, tmp_path / "q")
    again = load_quantized(tmp_path / "q")
    ids = _calibration(n=2)
    with torch.no_grad():
        assert torch.allclose(qmodel(input_ids=ids).logits, again(input_ids=ids).logits, atol=1e-5)


def test_clear_errors():
    with pytest.raises(ValueError, match="granularity='group' or 'channel'"):
        SignRoundConfig(granularity="tensor")
    with pytest.raises(ValueError, match="mse_clip=False"):
        SignRoundConfig(mse_clip=True)
    with pytest.raises(ValueError, match="iters must be a non-negative integer"):
        SignRoundConfig(iters=-1)
    with pytest.raises(ValueError, match="lr is a step size"):
        SignRoundConfig(lr=2.0)
    with pytest.raises(ValueError, match="clip_floor"):
        SignRoundConfig(clip_floor=0)


def test_modules_outside_the_blocks_are_refused_with_a_way_out(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    plan = {"model.layers.0.mlp.up_proj": SignRoundConfig(bits=3, group_size=16),
            "lm_head": SignRoundConfig(bits=3, group_size=16)}
    with pytest.raises(ValueError, match="outside the blocks.*method='gptq'"):
        signround_quantize_model(model, plan, _calibration(), progress=False)
