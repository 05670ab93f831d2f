"""workbench/quant/model.py: quantize_model over whole models (Llama, GPT-2's Conv1D), specs, reports."""

import copy

import pytest
import torch

from workbench.quant import QuantConfig, fake_quantize, quantize_model


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
