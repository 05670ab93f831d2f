"""Activation quantization: the per-token rounding, SmoothQuant's scales, the hooks on a model."""

import copy

import pytest
import torch

from workbench.quant import (ActQuantConfig, QuantConfig, quantize_activations, quantize_for_spec,
                             remove_activation_quantization)
from workbench.quant.activations import input_absmax, smooth, smooth_scales
from workbench.quant.grid import fake_quantize_lastdim


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_rounding_is_per_token_idempotent_and_bounded_by_half_a_step(bits, symmetric):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(5, 7, 64, generator=g) * torch.linspace(0.1, 10, 5).view(5, 1, 1)
    q = fake_quantize_lastdim(x, bits, None, symmetric)
    levels = {len(torch.unique(row)) for row in q.reshape(-1, 64)}
    assert max(levels) <= (2 ** bits - 1 if symmetric else 2 ** bits)
    span = (2 * x.abs().amax(-1, keepdim=True) / (2 ** bits - 2) if symmetric
            else (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / (2 ** bits - 1))
    assert ((q - x).abs() <= span / 2 * (1 + 1e-5)).all()                    # each token its own step
    torch.testing.assert_close(fake_quantize_lastdim(q, bits, None, symmetric), q, rtol=0, atol=1e-5)
    # a token's rounding does not depend on the other tokens (what makes a cache of rounded entries possible)
    torch.testing.assert_close(fake_quantize_lastdim(x[:1], bits, None, symmetric), q[:1], rtol=0, atol=0)
    # groups: each group of 16 has its own range, so the error is no larger than one range per row
    qg = fake_quantize_lastdim(x, bits, 16, symmetric)
    assert (qg - x).norm() <= (q - x).norm() * (1 + 1e-5)


def test_rounding_refuses_a_group_that_does_not_divide_the_row():
    with pytest.raises(ValueError, match="does not divide the last dimension 64"):
        fake_quantize_lastdim(torch.randn(2, 64), 8, 24)


@pytest.mark.parametrize("bad, match", [(dict(bits=1), "2..8"), (dict(bits=True), "2..8"), (dict(group_size=0), "positive"),
                                        (dict(clip=0.0), "clip"), (dict(smooth_alpha=1.5), "smooth_alpha"),
                                        (dict(symmetric="no"), "True or False")])
def test_bad_settings_are_clear_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ActQuantConfig(**bad)


def test_hooks_round_each_linear_input_and_leave_the_head_alone(tiny_lm):
    model = tiny_lm.model
    ids = torch.randint(2, 64, (2, 24), generator=torch.Generator().manual_seed(0))
    seen = {}

    def spy(name):
        return lambda m, args: seen.setdefault(name, args[0].detach().clone())

    q = quantize_activations(model, ActQuantConfig(bits=4))
    assert not hasattr(model.model.layers[0].self_attn.q_proj, "_wb_input_quantizer")   # the original is untouched
    handles = [m.register_forward_pre_hook(spy(n)) for n, m in q.named_modules() if n.endswith(("down_proj", "lm_head"))]
    with torch.no_grad():
        q(ids)
    for h in handles:
        h.remove()
    down = seen["model.layers.0.mlp.down_proj"]
    assert max(len(torch.unique(row)) for row in down.reshape(-1, down.shape[-1])) <= 15      # 4 bits symmetric
    head = seen["lm_head"]
    assert len(torch.unique(head[0, 0])) > 15                                                # not rounded
    assert q.runtime_quant["activations"]["bits"] == 4
    with torch.no_grad():
        base, rounded = model(ids).logits, q(ids).logits
        assert not torch.allclose(base, rounded)
        remove_activation_quantization(q)
        torch.testing.assert_close(q(ids).logits, base, rtol=0, atol=1e-6)
    assert q.runtime_quant == {}


def test_smoothing_alone_keeps_the_function_and_shrinks_the_outlier_channel(tiny_lm):
    model = copy.deepcopy(tiny_lm.model)
    with torch.no_grad():                         # an outlier channel in the attention norm's output
        model.model.layers[0].input_layernorm.weight[5] = 40.0
    calib = torch.randint(2, 64, (4, 32), generator=torch.Generator().manual_seed(1))
    amax, groups = input_absmax(model, ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                                        "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.down_proj"], calib)
    assert ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
            "model.layers.0.self_attn.v_proj"] in groups                                 # one shared input
    scales = smooth_scales(model, calib, alpha=0.5)
    assert not any("down_proj" in n or "o_proj" in n for n in scales)                   # SmoothQuant's choice
    s = scales["model.layers.0.self_attn.q_proj"]
    assert s is scales["model.layers.0.self_attn.k_proj"] and s.argmax().item() == 5
    ids = torch.randint(2, 64, (2, 24), generator=torch.Generator().manual_seed(0))
    smoothed = smooth(copy.deepcopy(model), scales)
    with torch.no_grad():
        torch.testing.assert_close(smoothed(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5)
    # with 4-bit activations, smoothing lowers the error that the outlier channel causes
    with torch.no_grad():
        base = model(ids).logits
        plain = quantize_activations(model, ActQuantConfig(bits=4))(ids).logits
        smooth_q = quantize_activations(model, ActQuantConfig(bits=4, smooth_alpha=0.5), calibration=calib)(ids).logits
    assert (smooth_q - base).norm() < (plain - base).norm()
    with pytest.raises(ValueError, match="calibration"):
        quantize_activations(model, ActQuantConfig(bits=8, smooth_alpha=0.5))


def test_smoothquant_then_weights_then_activations_through_a_spec(tiny_lm):
    model = tiny_lm.model
    calib = torch.randint(2, 64, (4, 32), generator=torch.Generator().manual_seed(1))
    spec = {"weights": QuantConfig(bits=8, group_size=16), "activations": ActQuantConfig(bits=16, smooth_alpha=0.5),
            "kv": None}
    q, report = quantize_for_spec(model, spec, calibration=calib)
    ids = torch.randint(2, 64, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():                         # 8-bit weights of W diag(s), inputs x / s: close to the model
        torch.testing.assert_close(q(ids).logits, model(ids).logits, rtol=0, atol=0.05)
    assert len(report) == 14
    w = q.model.layers[0].self_attn.q_proj.weight
    s = q.model.layers[0].self_attn.q_proj._wb_input_quantizer.smooth
    assert not torch.allclose(w, model.model.layers[0].self_attn.q_proj.weight, atol=1e-2)
    assert s.shape == (48,)


def test_a_runtime_spec_copies_the_model_once_and_inplace_not_at_all(tiny_lm, monkeypatch):
    """W x A x KV specs round weights, activations and the cache on one copy (a second copy of a
    large model would double the peak memory); inplace=True works on the model handed in."""
    import copy as copy_module

    from workbench.quant import precision_spec

    model = copy_module.deepcopy(tiny_lm.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copies = []
    real = copy_module.deepcopy
    monkeypatch.setattr(copy_module, "deepcopy",       # whole models copied (not the recursion, which passes its memo)
                        lambda x, memo=None, *a: (memo is None and isinstance(x, torch.nn.Module)
                                                  and copies.append(type(x).__name__)) or real(x, memo, *a))
    spec = precision_spec("W4A8KV4", group_size=16)
    q, report = quantize_for_spec(model, spec)
    assert copies == [type(model).__name__] and q is not model and len(report) == 14
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())          # the original untouched
    copies.clear()
    q2, _ = quantize_for_spec(model, spec, inplace=True)
    assert copies == [] and q2 is model
    assert torch.equal(q2.model.layers[0].mlp.up_proj.weight, q.model.layers[0].mlp.up_proj.weight)
