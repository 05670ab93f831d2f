"""Fine-tuning: the training loop and the tasks it trains on; LoRA compensation of a causal LM.

    from workbench.finetune import classification_task, load_classifier, train, lora_finetune
    model, tokenizer, record = load_classifier("minilm-l6", num_labels=2, seed=0)   # fresh head
    task = classification_task(tokenizer, "polarity", seed=0)     # fixed train/dev split, tokenized
    losses = train(model, task, steps=100, lr=5e-5)                # whatever requires grad trains
    task.accuracy(model)                                           # held-out accuracy

    tuned, record = lora_finetune(qmodel, tokenizer, steps=40)    # causal LM, qmodel from quantize_model

`train` is deliberately small: AdamW without weight decay (so a parameter whose gradient is
masked to zero never moves, bit for bit), a seeded shuffle per epoch, an optional penalty added
to the loss and an optional hook after each step (the proximal step of an L1 penalty). The
methods that decide *what* trains (PreQuant, AlphaTuning, LoRA, ...) live in workbench.adapt.

`lora_finetune` keeps the quantized weights frozen and untouched (the QLoRA recipe: LoRA
adapters on a quantized base); only the adapters train. The data are random windows of a
corpus's calibration split (`workbench.data.calibration_batch`), next-token loss, AdamW, a fixed
seed: the same call gives the same adapters on CPU.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from workbench.modules import is_task_head

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


# -----------------------------------------------------------------------------
# encoder classification: a model with a fresh head, a tokenized split, the loop


def _device(model: nn.Module) -> torch.device:
    """Where the model's parameters are: the tasks keep their tensors on the CPU and move each batch there."""
    return next(model.parameters()).device


def load_classifier(name: str = "minilm-l6", num_labels: int = 2, seed: int = 0):
    """An encoder (registry name, local folder or hub id) with a freshly initialized, seeded
    classification head: `AutoModelForSequenceClassification`. Returns (model, tokenizer,
    record) like `models.load_model`, the model in eval mode; record describes the encoder."""
    from transformers import AutoModelForSequenceClassification

    from workbench.models import _quiet_loading, load_model

    if num_labels < 2:
        raise ValueError(f"a classifier needs num_labels >= 2, got {num_labels}")
    encoder, tokenizer, record = load_model(name, task="encoder")
    if record.task != "encoder":
        raise ValueError(f"{name!r} is a {record.task} model; load_classifier needs an encoder (e.g. 'minilm-l6')")
    del encoder
    torch.manual_seed(seed)
    with _quiet_loading():
        model = AutoModelForSequenceClassification.from_pretrained(record.path, num_labels=num_labels)
    return model.eval(), tokenizer, record


@dataclass
class ClassificationTask:
    """A fixed train/dev split, tokenized once: ids and attention masks [n, length], labels [n]."""
    name: str
    train_ids: torch.Tensor
    train_mask: torch.Tensor
    train_labels: torch.Tensor
    dev_ids: torch.Tensor
    dev_mask: torch.Tensor
    dev_labels: torch.Tensor
    num_labels: int

    @property
    def n_train(self) -> int:
        return len(self.train_labels)

    def loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the model's logits on the training rows `idx` (right padding cut to
        the batch's longest row: the same logits, less compute)."""
        mask = self.train_mask[idx]
        n = int(mask.sum(1).max())
        dev = _device(model)
        logits = model(input_ids=self.train_ids[idx][:, :n].to(dev), attention_mask=mask[:, :n].to(dev)).logits
        return F.cross_entropy(logits, self.train_labels[idx].to(dev))

    @torch.no_grad()
    def accuracy(self, model: nn.Module, batch_size: int = 64) -> float:
        """Share of dev items whose argmax logit is the label (eval mode, restored afterwards)."""
        was_training = model.training
        model.eval()
        try:
            preds = []
            for i in range(0, len(self.dev_labels), batch_size):
                mask = self.dev_mask[i:i + batch_size]
                n = int(mask.sum(1).max())
                dev = _device(model)
                logits = model(input_ids=self.dev_ids[i:i + batch_size, :n].to(dev), attention_mask=mask[:, :n].to(dev)).logits
                preds.append(logits.argmax(-1).cpu())
            preds = torch.cat(preds)
        finally:
            model.train(was_training)
        return (preds == self.dev_labels).float().mean().item()


def classification_task(tokenizer, name="polarity", dev_fraction: float = 0.3, seed: int = 0,
                        max_length: int = 64) -> ClassificationTask:
    """Tokenize a labelled set into a fixed split: `name` is a set of
    `workbench.data.classification_data` or any DataFrame with columns text and label (ints
    0..k-1; e.g. GLUE SST-2 from `datasets`, for users with a hub). The rows are shuffled with
    `seed` and `dev_fraction` of each label held out (stratified, so both halves keep the label
    balance). Texts are cut to `max_length` tokens."""
    import pandas as pd

    from workbench.data import classification_data

    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be between 0 and 1, got {dev_fraction}")
    if isinstance(name, pd.DataFrame):
        if not {"text", "label"} <= set(name.columns):
            raise ValueError(f"a DataFrame task needs columns text and label, got {list(name.columns)}")
        df, name = name.reset_index(drop=True), "custom"
    else:
        df = classification_data(name)
    g = torch.Generator().manual_seed(seed)
    train_rows, dev_rows = [], []
    for label in sorted(df.label.unique()):
        rows = df.index[df.label == label].to_numpy()
        rows = rows[torch.randperm(len(rows), generator=g).numpy()]
        n_dev = max(1, round(dev_fraction * len(rows)))
        train_rows += rows[n_dev:].tolist()
        dev_rows += rows[:n_dev].tolist()

    def encode(rows):
        enc = tokenizer(df.text[rows].tolist(), padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"], torch.tensor(df.label[rows].to_numpy())

    return ClassificationTask(name, *encode(train_rows), *encode(dev_rows), num_labels=int(df.label.nunique()))


def train(model: nn.Module, task, steps: int = 100, lr: float = 5e-5, batch_size: int = 16, seed: int = 0,
          penalty: Callable[[], torch.Tensor] | None = None, after_step: Callable[[], None] | None = None,
          head_lr: float | None = None, progress: bool = False) -> list[float]:
    """Train, in place, every parameter of `model` that requires grad on `task` (anything with
    `n_train` and `loss(model, idx)`); return the loss per step. AdamW with no weight decay, so
    a masked (zero) gradient leaves its parameter bit-identical; batches are `batch_size` rows
    of a seeded permutation per epoch; dropout draws from the same seed. `penalty()` is added to
    each step's loss; `after_step()` runs after each optimizer step (e.g. a proximal step).
    With `head_lr`, the parameters of a fresh task head (`is_task_head`) train at that rate
    instead of `lr`. Leaves the model in eval mode. Raises on a non-finite loss with the fix (a lower lr)."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got steps={steps}, batch_size={batch_size}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("nothing to train: no parameter of the model requires grad")
    is_head = [head_lr is not None and is_task_head(n) for n, _ in named]
    groups = [{"params": [p for (_, p), h in zip(named, is_head) if not h], "lr": lr},
              {"params": [p for (_, p), h in zip(named, is_head) if h], "lr": head_lr}]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([grp for grp in groups if grp["params"]], lr=lr, weight_decay=0.0)
    order, losses = torch.empty(0, dtype=torch.long), []
    model.train()
    try:
        for step in tqdm(range(steps), desc="train", disable=not progress, leave=False):
            if len(order) < batch_size:
                order = torch.cat([order, torch.randperm(task.n_train, generator=g)])
            idx, order = order[:batch_size], order[batch_size:]
            loss = task.loss(model, idx)
            total = loss + penalty() if penalty is not None else loss
            if not torch.isfinite(total):
                raise FloatingPointError(f"the loss became {total.item()} at step {step}; lower lr (now {lr})")
            total.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if after_step is not None:
                with torch.no_grad():
                    after_step()
            losses.append(loss.item())
    finally:
        model.eval()
    return losses
