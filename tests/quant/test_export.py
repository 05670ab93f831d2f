"""compressed-tensors export: what transformers loads back is the fake-quantized model; what the
format cannot hold is an error that names the module and the way out."""

import pytest
import torch

pytest.importorskip("compressed_tensors")

from transformers import AutoModelForCausalLM  # noqa: E402

from workbench.quant import QuantConfig, quantize_model  # noqa: E402
from workbench.quant.export import export  # noqa: E402


def _ids(n=2, seqlen=12):
    return torch.randint(2, 64, (n, seqlen), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("spec", [
    QuantConfig(bits=4, group_size=16, symmetric=True),
    QuantConfig(bits=3, group_size=16, symmetric=True, method="gptq", act_order=True, static_groups=True),
    QuantConfig(bits=2, granularity="channel", symmetric=True),
    {r"self_attn": QuantConfig(bits=8, group_size=48, symmetric=True), r"mlp": QuantConfig(bits=4, group_size=16, symmetric=True)},
], ids=["rtn-w4-g16", "gptq-w3-g16", "rtn-w2-channel", "mixed-w8-w4"])
def test_transformers_loads_the_export_and_gives_the_fake_quantized_logits(tiny_lm, tmp_path, spec):
    model, tokenizer, _ = tiny_lm
    qmodel, _ = quantize_model(model, spec, calibration=_ids(8, 32), progress=False)
    folder = export(qmodel, tmp_path / "ct", tokenizer)
    back = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(_ids()).logits, qmodel(_ids()).logits, rtol=0, atol=1e-5)
    assert (folder / "tokenizer.json").exists() and not list(tmp_path.glob(".ct.*"))


def test_the_checkpoint_is_packed(tiny_lm, tmp_path):
    from safetensors import safe_open

    model, _, _ = tiny_lm
    qmodel, _ = quantize_model(model, QuantConfig(bits=4, group_size=16, symmetric=True), progress=False)
    folder = export(qmodel, tmp_path / "ct")
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        packed = f.get_tensor("model.layers.0.mlp.down_proj.weight_packed")
    assert "model.layers.0.mlp.down_proj.weight" not in keys and "lm_head.weight" not in keys   # tied head stored once
    assert packed.dtype == torch.int32 and packed.shape == (48, 96 * 4 // 32)


@pytest.mark.parametrize("spec, calibrated, match", [
    (QuantConfig(bits=4, group_size=16), False, "asymmetric.*symmetric=True"),
    (QuantConfig(bits=4, group_size=32, symmetric=True), False, r"48-wide rows at group 32.*1x32\+16.*e\.g\. 16"),
    (QuantConfig(bits=4, group_size=16, symmetric=True, outlier_fraction=0.01), False, "outliers"),
    (QuantConfig(bits=4, group_size=16, symmetric=True, method="awq"), True, "AWQ"),
    (QuantConfig(bits=3, group_size=16, method="bcq"), False, "binary-coding"),
], ids=["asymmetric", "short-last-group", "outliers", "awq", "bcq"])
def test_grids_the_format_cannot_hold_are_named(tiny_lm, tmp_path, spec, calibrated, match):
    model, _, _ = tiny_lm
    qmodel, _ = quantize_model(model, spec, calibration=_ids(8, 32) if calibrated else None, progress=False)
    with pytest.raises(ValueError, match=match):
        export(qmodel, tmp_path / "ct")
    assert not (tmp_path / "ct").exists() and not list(tmp_path.glob(".ct.*"))


def test_bad_calls(tiny_lm, tmp_path):
    model, _, _ = tiny_lm
    with pytest.raises(ValueError, match="quant_state"):
        export(model, tmp_path / "x")
    qmodel, _ = quantize_model(model, QuantConfig(bits=4, group_size=16, symmetric=True), progress=False)
    with pytest.raises(ValueError, match="unknown export format 'gptq'.*save_quantized"):
        export(qmodel, tmp_path / "x", format="gptq")
