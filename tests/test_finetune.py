"""The corpus task and LoRA on a quantized causal LM through it (the one LoRA path, workbench.adapt.lora):
only the adapters train, the quantized weights stay bit-identical."""

import pytest
import torch

from workbench import adapt
from workbench.finetune import CorpusTask, corpus_task
from workbench.quant import QuantConfig, quantize_model


@pytest.mark.integration
def test_corpus_task_is_seeded_windows_of_the_calibration_split(tiny_lm):
    from workbench.data import calibration_batch

    task = corpus_task(tiny_lm.tokenizer, "lee", n_train=6, seqlen=32, seed=1)
    assert isinstance(task, CorpusTask) and task.n_train == 6 and task.train_ids.shape == (6, 32)
    assert torch.equal(task.train_ids, calibration_batch(tiny_lm.tokenizer, "lee", n_samples=6, seqlen=32, seed=1))
    loss = task.loss(tiny_lm.model, torch.tensor([0, 1]))
    assert loss.ndim == 0 and 2 < loss.item() < 10                    # near log(64) for random weights


@pytest.mark.integration
def test_lora_on_a_quantized_base_trains_only_the_adapters(tiny_lm):
    qmodel, _ = quantize_model(tiny_lm.model, QuantConfig(bits=3, group_size=16), progress=False)
    before = {n: p.detach().clone() for n, p in qmodel.named_parameters()}
    task = corpus_task(tiny_lm.tokenizer, "lee", n_train=12, seqlen=32)
    tuned, rec = adapt.lora(qmodel, task, r=2, steps=6, batch_size=2, lr=1e-2)
    # r * (in + out) summed over q k v o gate up down of 2 layers (hidden 48, kv 24, ffn 96)
    assert rec["trainable_params"] == 2 * 2 * (96 + 72 + 72 + 96 + 144 + 144 + 144) and rec["head_params"] == 0
    assert rec["accuracy"] is None                                  # a corpus task has none: the caller scores
    assert len(rec["losses"]) == 6 and rec["losses"][-1] < rec["losses"][0]
    params = dict(tuned.named_parameters())
    for n in (n for n in params if "lora_" not in n):
        assert torch.equal(params[n], before[n.replace(".base_layer", "")]), n
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in params.items() if "lora_B" in n)
    assert all(torch.equal(p, before[n]) for n, p in qmodel.named_parameters())   # the input model is untouched
    ids = torch.randint(0, 64, (1, 8))
    assert not torch.allclose(tuned(ids).logits, qmodel(ids).logits)


@pytest.mark.integration
def test_lora_bad_settings_are_clear_errors(tiny_lm):
    task = corpus_task(tiny_lm.tokenizer, "lee", n_train=2, seqlen=16)
    with pytest.raises(ValueError, match="rank r"):
        adapt.lora(tiny_lm.model, task, r=0, steps=1)
    with pytest.raises(ValueError, match="nothing_here"):
        adapt.lora(tiny_lm.model, task, targets=r".*\.nothing_here", steps=1, batch_size=1)
