"""Fine-tuning: the training loop and the tasks it trains on.

    from workbench.finetune import classification_task, corpus_task, load_classifier, train
    model, tokenizer, record = load_classifier("minilm-l6", num_labels=2, seed=0)   # fresh head
    task = classification_task(tokenizer, "polarity", seed=0)     # fixed train/dev split, tokenized
    losses = train(model, task, steps=100, lr=5e-5)                # whatever requires grad trains
    task.accuracy(model)                                           # held-out accuracy

    lm_task = corpus_task(tokenizer, "lee", n_train=40, seqlen=128)  # next-token windows of a corpus

`train` is deliberately small: AdamW without weight decay (so a parameter whose gradient is
masked to zero never moves, bit for bit), a seeded shuffle per epoch, an optional penalty added
to the loss and an optional hook after each step (the proximal step of an L1 penalty). The
methods that decide *what* trains (PreQuant, AlphaTuning, LoRA, ...) live in workbench.adapt.
A task is anything with `n_train` and `loss(model, idx)`, and `accuracy(model)` when it can be
scored: `ClassificationTask` (an encoder with a fresh head), `CorpusTask` (next-token windows of
a corpus: LoRA compensation of a quantized causal LM, `workbench.adapt.lora` on it) and
`workbench.abilities.AbilityTask` (an lm-eval task's items).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from workbench.modules import is_task_head

@dataclass
class CorpusTask:
    """Next-token prediction on windows of a corpus: the task LoRA compensation trains on (the
    QLoRA recipe on a quantized causal LM). It has no accuracy: the adapted model is scored by
    whoever asked for it (perplexity, lm-eval), and the record's accuracy is None."""
    name: str
    train_ids: torch.Tensor       # [n, seqlen] windows of the corpus's calibration split

    @property
    def n_train(self) -> int:
        return len(self.train_ids)

    def loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        batch = self.train_ids[idx].to(_device(model))                     # [B, seqlen]
        return model(input_ids=batch, labels=batch).loss


def corpus_task(tokenizer, corpus: str = "lee", n_train: int = 40, seqlen: int = 128, seed: int = 0) -> CorpusTask:
    """`n_train` random windows of `seqlen` tokens from the calibration split of `corpus`
    (`workbench.data.calibration_batch`, seeded), as a task for `workbench.adapt`'s methods."""
    from workbench.data import calibration_batch

    return CorpusTask(f"{corpus} windows", calibration_batch(tokenizer, corpus, n_samples=n_train, seqlen=seqlen,
                                                             seed=seed))


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

    def accuracy(self, model: nn.Module, batch_size: int = 64) -> float:
        """Share of dev items whose argmax logit is the label (eval mode, restored afterwards)."""
        correct = self.correct(model, batch_size)
        return sum(correct) / len(correct)

    @torch.no_grad()
    def correct(self, model: nn.Module, batch_size: int = 64) -> list[int]:
        """Per dev item, in order: 1 if its argmax logit is the label, else 0 (the item-level
        outcomes that paired tests between two adapted models need)."""
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
        return (preds == self.dev_labels).int().tolist()


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
