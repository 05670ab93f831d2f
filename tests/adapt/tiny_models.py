"""The tiny BERT classifier and learnable synthetic task that the adaptation tests share (imported
by name: pytest puts this folder on sys.path)."""
import torch

from workbench.finetune import ClassificationTask

HIDDEN, HEADS, FFN, LAYERS = 32, 4, 64, 2          # the tiny classifier's sizes


def tiny_classifier(seed: int = 0, attn: str | None = None):
    """A randomly initialised BertForSequenceClassification (vocab 64, 2 labels), seeded, in eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    extra = {"attn_implementation": attn} if attn else {}
    config = BertConfig(vocab_size=64, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, max_position_embeddings=32, num_labels=2, **extra)
    return BertForSequenceClassification(config).eval()


def tiny_task(n: int = 96, length: int = 12, seed: int = 0, padding: bool = False) -> ClassificationTask:
    """Label 1 iff token 7 occurs in the sentence: learnable in a few steps. 64 training and n - 64
    held-out rows; with `padding`, every third row ends in 3 padded positions (so the mask matters)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, 64, (n, length), generator=g)
    labels = torch.arange(n) % 2
    pos = torch.randint(1, length, (n,), generator=g)
    ids[labels == 1, pos[labels == 1]] = 7
    ids[:, 0] = 2                                                     # [CLS]
    mask = torch.ones_like(ids)
    if padding:
        mask[::3, -3:] = 0
    return ClassificationTask("tiny", ids[:64], mask[:64], labels[:64], ids[64:], mask[64:], labels[64:], 2)


def logits(m, task: ClassificationTask) -> torch.Tensor:
    """The classifier's held-out logits [n_dev, 2], without gradients."""
    with torch.no_grad():
        return m(input_ids=task.dev_ids, attention_mask=task.dev_mask).logits


def hidden(m, task: ClassificationTask) -> torch.Tensor:
    """The encoder's last hidden states on the held-out rows: finer than 2 logits for comparing two models."""
    with torch.no_grad():
        return m.bert(input_ids=task.dev_ids, attention_mask=task.dev_mask).last_hidden_state
