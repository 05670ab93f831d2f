"""LoRA on a quantized base: only the adapters train, the quantized weights stay bit-identical."""

import pytest
import torch

from workbench.finetune import lora_finetune
from workbench.quant import QuantConfig, quantize_model


@pytest.mark.integration
def test_lora_on_a_quantized_base_trains_only_the_adapters(tiny_lm):
    qmodel, _ = quantize_model(tiny_lm.model, QuantConfig(bits=3, group_size=16), progress=False)
    before = {n: p.detach().clone() for n, p in qmodel.named_parameters()}
    tuned, rec = lora_finetune(qmodel, tiny_lm.tokenizer, r=2, steps=6, batch_size=2, seqlen=32, progress=False)
    # r * (in + out) summed over q k v o gate up down of 2 layers (hidden 48, kv 24, ffn 96)
    assert rec["trainable_params"] == 2 * 2 * (96 + 72 + 72 + 96 + 144 + 144 + 144)
    assert len(rec["losses"]) == 6 and rec["losses"][-1] < rec["losses"][0]
    params = dict(tuned.named_parameters())
    base_names = {n for n in params if "lora_" not in n}
    for n in base_names:
        orig = n.replace(".base_layer", "")
        assert torch.equal(params[n], before[orig]), n
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in params.items() if "lora_B" in n)
    # the input model itself is untouched
    assert all(torch.equal(p, before[n]) for n, p in qmodel.named_parameters())
    ids = torch.randint(0, 64, (1, 8))
    assert not torch.allclose(tuned(ids).logits, qmodel(ids).logits)


@pytest.mark.integration
def test_lora_bad_settings_are_clear_errors(tiny_lm):
    with pytest.raises(ValueError, match="rank r"):
        lora_finetune(tiny_lm.model, tiny_lm.tokenizer, r=0, steps=1, progress=False)
    with pytest.raises(ValueError, match="does not fit this model"):
        lora_finetune(tiny_lm.model, tiny_lm.tokenizer, target_modules=r".*\.nothing_here", steps=1,
                      batch_size=1, seqlen=16, progress=False)
