"""Fine-tuning a (quantized) causal LM with LoRA through peft, to win back what quantization lost.

    from workbench.finetune import lora_finetune
    tuned, record = lora_finetune(qmodel, tokenizer, steps=40)   # qmodel from quantize_model
    record["trainable_params"], record["losses"]

The quantized weights stay frozen and untouched (the QLoRA recipe: LoRA adapters on a quantized
base); only the adapters train. The data are random windows of a corpus's calibration split
(`workbench.data.calibration_batch`), next-token loss, AdamW, a fixed seed: the same call gives
the same adapters on CPU.
"""

from __future__ import annotations

import copy
import time
import warnings

import torch
from torch import nn
from tqdm.auto import tqdm

LORA_TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def lora_finetune(model: nn.Module, tokenizer, corpus: str = "lee", r: int = 8, alpha: int = 16,
                  target_modules: str = LORA_TARGETS, steps: int = 40, lr: float = 1e-3, seqlen: int = 256,
                  batch_size: int = 4, seed: int = 0, progress: bool = True) -> tuple[nn.Module, dict]:
    """Train LoRA adapters (peft) on a copy of `model`; return the model with adapters and a record.

    `target_modules` is peft's regex over module names (default: every attention and FFN
    projection of Llama-style blocks). The returned model is the transformers model with peft's
    LoRA layers inside (adapters not merged, so the quantized base weights are exactly as they
    were); it can be handed to lm-eval like any model. The record holds trainable_params,
    total_params, trainable_share, losses (one per step), and time_s.
    """
    from peft import LoraConfig, get_peft_model

    from workbench.data import calibration_batch

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got steps={steps}, batch_size={batch_size}")
    if r < 1:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r}")
    data = calibration_batch(tokenizer, corpus, n_samples=steps * batch_size, seqlen=seqlen, seed=seed)
    base = copy.deepcopy(model)
    for attr in ("hf_quantizer",):   # a GGUF-loaded model is already dequantized to fp32
        if getattr(base, attr, None) is not None:
            setattr(base, attr, None)
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_modules, bias="none")
    with warnings.catch_warnings():   # transformers' deprecation notices from inside peft
        warnings.simplefilter("ignore", FutureWarning)
        try:
            peft_model = get_peft_model(base, config)
        except ValueError as e:
            raise ValueError(f"LoRA target pattern {target_modules!r} does not fit this model: {e}") from None
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in peft_model.parameters())
        opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        peft_model.train()
        losses = []
        t0 = time.perf_counter()
        for step in tqdm(range(steps), desc="LoRA", disable=not progress, leave=False):
            batch = data[step * batch_size:(step + 1) * batch_size]            # [B, seqlen]
            loss = peft_model(input_ids=batch, labels=batch).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"LoRA loss became {loss.item()} at step {step}; lower lr (now {lr})")
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    peft_model.eval()
    record = {"r": r, "alpha": alpha, "steps": steps, "lr": lr, "seqlen": seqlen, "batch_size": batch_size,
              "corpus": corpus, "trainable_params": trainable, "total_params": total,
              "trainable_share": trainable / total, "losses": losses, "time_s": time.perf_counter() - t0}
    return peft_model.get_base_model(), record
