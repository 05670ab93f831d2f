"""Per-word bit allocation for the token embedding, and bits per block under a model-size budget.

    from workbench.quant.by_frequency import (token_frequencies, allocate_row_bits, random_row_bits,
                                              quantize_embeddings_by_frequency, packed_row_bits_size,
                                              allocate_block_bits, block_spec)
    freq = token_frequencies(tokenizer, load_split("lee", "calibration"), vocab_size=49152)  # [vocab]
    row_bits = allocate_row_bits(freq, avg_bits=3.0)                 # [vocab] in {2, 3, 4, 8}, mean <= 3
    qmodel, report = quantize_embeddings_by_frequency(model, freq, avg_bits=3.0, group_size=128)
    control, _ = quantize_embeddings_by_frequency(model, freq, row_bits=random_row_bits(freq, row_bits, seed=0))
    packed_row_bits_size(row_bits, dim=576, group_size=128)          # ideal bytes of the mixed-width table
    alloc = allocate_block_bits(model, budget_bits=3.0)              # {"embeddings": 3, "attention": 3, "ffn": 3}
    qmodel, report = quantize_for_spec(model, block_spec(alloc))     # workbench.quant's component spec
    spec = {"linears": {}, "embeddings": FrequencyBits(avg_bits=3.0)}  # a sweep spec: perplexity_sweep takes it

After Chung et al., "Extremely Low Bit Transformer Quantization for On-Device Neural Machine
Translation" (Findings of EMNLP 2020): inside the embedding block each word contributes very
differently, so words are ranked by their frequency and the frequent ones get more bits; and
each block of the transformer (embedding, attention, FFN) gets its own width under one size
budget. Each row of the embedding [vocab, dim] (one token) is round-to-nearest quantized at its
own width on the repo's grid (grid.py: groups along the row, so rows are independent). The
frequencies come from the calibration split of a corpus (`workbench.data.load_split(name,
"calibration")`), never from the evaluation split that perplexity is measured on.

SmolLM2 ties its output head to the input embedding: quantizing the embedding's rows quantizes
the head's rows with them, so a rare token's logit is computed from its low-bit row too. An
untied head is quantized with the same row widths. The mixed-width table is fake-quantized
(dequantized weights in the model); `save_quantized` cannot pack it (one width per module), so
`packed_row_bits_size` gives its ideal packed size for comparisons at equal bytes.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import pandas as pd
import torch
from torch import nn

from workbench.modules import COMPONENT_GROUPS, LM_HEAD, linear_modules
from workbench.quant.grid import QuantConfig, QuantizedWeight, _check_weight
from workbench.quant.rtn import RTNConfig, rtn_quantize_weight

DEFAULT_CHOICES = (2, 3, 4, 8)               # widths a row (or a block) may take
BLOCKS = ("embeddings", "attention", "ffn")  # the keys of workbench.modules.COMPONENT_GROUPS
GRID_SETTINGS = tuple(f.name for f in fields(QuantConfig) if f.name not in ("bits", "group_size", "method"))


# ----------------------------------------------------------------------------- frequencies and allocation

def token_frequencies(tokenizer,               # a Hugging Face tokenizer (called on a list of texts)
                      texts: str | list[str],  # the calibration documents, e.g. load_split("lee", "calibration")
                      vocab_size: int,         # rows of the embedding (model.get_input_embeddings().num_embeddings)
                      ) -> torch.Tensor:
    """How often each token id occurs in `texts`, tokenized one text at a time without special
    tokens: a LongTensor [vocab_size] of counts. Use the calibration split of a corpus, never the
    evaluation split (the allocation would then be fitted to the text it is scored on). A token id
    at or beyond `vocab_size` is an error that names it (the tokenizer does not fit the model)."""
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()           # silence "sequence length is longer than the maximum"
    try:
        ids = tokenizer(list(texts), add_special_tokens=False).input_ids if texts else []
    finally:
        hf_logging.set_verbosity(level)
    flat = torch.tensor([i for seq in ids for i in seq], dtype=torch.long)    # [n_tokens]
    if flat.numel() and (flat.max() >= vocab_size or flat.min() < 0):
        bad = int(flat.max()) if flat.max() >= vocab_size else int(flat.min())
        raise ValueError(f"token id {bad} is outside the vocabulary of {vocab_size} rows: the tokenizer does "
                         "not belong to this model (pass vocab_size=model.get_input_embeddings().num_embeddings)")
    return torch.bincount(flat, minlength=vocab_size)                          # [vocab]


def _check_freq(freq: torch.Tensor) -> torch.Tensor:
    """Counts as float64 [vocab]; an error unless 1-D, finite and non-negative."""
    freq = torch.as_tensor(freq)
    if freq.dim() != 1 or freq.numel() == 0:
        raise ValueError(f"freq must be a non-empty 1-D tensor [vocab], got shape {tuple(freq.shape)}")
    freq = freq.double()
    if not torch.isfinite(freq).all() or (freq < 0).any():
        raise ValueError("freq must hold finite, non-negative counts")
    return freq


def _check_choices(choices) -> tuple[int, ...]:
    """Distinct widths, sorted; each one RTN can use (2..8 bits)."""
    out = sorted(set(choices))
    if not out:
        raise ValueError("choices must name at least one bit width")
    for b in out:
        if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8:
            raise ValueError(f"every choice must be an integer width from 2 to 8 (RTN's grid), got {b!r}")
    return tuple(out)


def _check_avg(avg_bits, choices: tuple[int, ...], what: str = "avg_bits") -> float:
    if isinstance(avg_bits, bool) or not isinstance(avg_bits, (int, float)) or not math.isfinite(avg_bits):
        raise ValueError(f"{what} must be a finite number, got {avg_bits!r}")
    if not choices[0] <= avg_bits <= choices[-1]:
        raise ValueError(f"{what}={avg_bits} is impossible with widths {choices}: every row takes at least "
                         f"{choices[0]} and at most {choices[-1]} bits, so the mean must lie in "
                         f"[{choices[0]}, {choices[-1]}]")
    return float(avg_bits)


def frequency_rank(freq: torch.Tensor) -> torch.Tensor:
    """Token ids from the most to the least frequent, ties by token id: LongTensor [vocab]."""
    return torch.sort(-_check_freq(freq), stable=True).indices     # stable: equal counts keep id order


def step_error(bits: torch.Tensor) -> torch.Tensor:
    """The squared grid step relative to a group's range, 1 / (2^bits - 1)^2: the error model of
    `allocate_row_bits` (RTN's mean squared error is step^2 / 12, times the range^2)."""
    return 1.0 / (2.0 ** bits.double() - 1) ** 2


def allocate_row_bits(freq: torch.Tensor,                # [vocab] token counts (token_frequencies)
                      avg_bits: float,                   # budget: mean bits over the rows, in [min, max] of choices
                      choices=DEFAULT_CHOICES,           # the widths a row may take (each 2..8)
                      smoothing: float = 0.0,            # added to every count (lets unseen tokens compete)
                      ) -> torch.Tensor:
    """Bits of each embedding row, frequent tokens more: LongTensor [vocab], values in `choices`,
    sum <= floor(avg_bits * vocab), and short of it by less than the largest gap between adjacent
    widths (so the mean is within one row's worth of avg_bits).

    The rule. Tokens are ranked by count (descending, ties by token id), and every row starts at
    the smallest width. Raising row i from width c_j to the next width c_{j+1} costs c_{j+1} - c_j
    bits and removes (f_i + smoothing) * (e(c_j) - e(c_{j+1})) of modelled frequency-weighted
    error, where e(b) = 1/(2^b - 1)^2 is the squared grid step (`step_error`). All such raises are
    sorted by error removed per bit (descending; ties by the lower step first, then by rank) and
    taken in that order while the budget lasts (the greedy of a separable convex knapsack: e is
    convex, so each row's raises come in order). When a raise does not fit, its step is closed to
    every later row, and smaller raises of other steps may still fill the remainder. The result is
    Chung et al.'s frequency buckets: a most-frequent prefix of the ranking at the widest width,
    then the next widths in turn, the rarest at the narrowest; so a more frequent token never has
    fewer bits than a rarer one, nor a token fewer bits than a later token of equal count. It is
    deterministic (no randomness; ties by token id). Tokens never seen (count 0, no smoothing)
    all share the same modelled value, so spare budget goes to them by token id, one step at a
    time. An `avg_bits` outside [min(choices), max(choices)] is a ValueError.
    """
    freq = _check_freq(freq)
    choices = _check_choices(choices)
    avg_bits = _check_avg(avg_bits, choices)
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < math.inf:
        raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing!r}")
    vocab = freq.numel()
    lo = choices[0]
    level = torch.zeros(vocab, dtype=torch.long)                    # [vocab] index into choices
    c = torch.tensor(choices, dtype=torch.long)                     # [K]
    extra = math.floor(avg_bits * vocab + 1e-9) - lo * vocab        # bits to hand out above the minimum
    if len(choices) == 1 or extra <= 0:
        return c[level]
    cost = c[1:] - c[:-1]                                           # [K-1] bits of each step
    gain = (step_error(c[:-1]) - step_error(c[1:])) / cost          # [K-1] error removed per bit, decreasing
    order = frequency_rank(freq)                                    # [vocab] ids by rank
    rank = torch.empty(vocab, dtype=torch.long)
    rank[order] = torch.arange(vocab)                               # [vocab] rank of each id
    n_steps = len(choices) - 1
    item_tok = torch.arange(vocab).repeat_interleave(n_steps)       # [vocab * (K-1)] one item per (row, step)
    item_step = torch.arange(n_steps).repeat(vocab)                 # [vocab * (K-1)]
    value = (freq[item_tok] + smoothing) * gain[item_step]          # [vocab * (K-1)] error removed per bit
    # sort by (-value, step, rank): stable sorts from the last key to the first
    perm = torch.sort(rank[item_tok], stable=True).indices
    perm = perm[torch.sort(item_step[perm], stable=True).indices]
    perm = perm[torch.sort(-value[perm], stable=True).indices]
    tok, step = item_tok[perm], item_step[perm]                     # [n_items] in the order raises are taken
    spent = torch.cumsum(cost[step], 0)                             # [n_items]
    n_take = int((spent <= extra).sum())                            # a prefix: spent only grows
    level.index_add_(0, tok[:n_take], torch.ones(n_take, dtype=torch.long))
    left = extra - (int(spent[n_take - 1]) if n_take else 0)
    closed: set[int] = set()
    for i, j in zip(tok[n_take:].tolist(), step[n_take:].tolist()):  # fill what is left, at most a step's worth
        if left == 0 or len(closed) == n_steps:
            break
        if j in closed:
            continue
        if level[i] != j or cost[j] > left:                         # cannot be taken: no later row may take step j
            closed.add(j)
            continue
        level[i] += 1
        left -= int(cost[j])
    return c[level]                                                 # [vocab]


def uniform_row_bits(vocab: int,      # rows of the embedding
                     avg_bits: int,   # the one width of every row (an integer, 2..8)
                     ) -> torch.Tensor:
    """Every row at the same width: LongTensor [vocab], the plain control at the same code size.
    A fractional `avg_bits` has no uniform table; use `random_row_bits` (the same histogram as the
    frequency allocation, rows drawn at random) for that."""
    if isinstance(avg_bits, bool) or not isinstance(avg_bits, (int, float)) or avg_bits != int(avg_bits) \
            or not 2 <= avg_bits <= 8:
        raise ValueError(f"a uniform table needs an integer width from 2 to 8, got {avg_bits!r}; for a "
                         "fractional mean use random_row_bits(freq, like=allocate_row_bits(freq, avg_bits))")
    return torch.full((vocab,), int(avg_bits), dtype=torch.long)


def random_row_bits(freq: torch.Tensor,   # [vocab] token counts (only its length is used)
                    like: torch.Tensor,   # [vocab] an allocation whose histogram to keep
                    seed: int = 0,        # the permutation's seed
                    ) -> torch.Tensor:
    """The widths of `like` permuted over the rows at random: LongTensor [vocab], the same bits
    histogram and so exactly the same packed size, but blind to frequency (the control)."""
    like = torch.as_tensor(like).long()
    if like.dim() != 1 or like.numel() != _check_freq(freq).numel():
        raise ValueError(f"like must be [vocab] = [{freq.numel()}], got shape {tuple(like.shape)}")
    g = torch.Generator().manual_seed(seed)
    return like[torch.randperm(like.numel(), generator=g)]


# ----------------------------------------------------------------------------- quantizing rows

class RowPart(NamedTuple):
    """The rows quantized at one width: their indices [n_rows] and their QuantizedWeight, whose
    scale and zero are [n_rows, n_groups] in the order of `rows`."""
    rows: torch.Tensor
    state: QuantizedWeight


def _row_bits_for(w: torch.Tensor, row_bits) -> torch.Tensor:
    row_bits = torch.as_tensor(row_bits)
    if row_bits.dim() != 1 or row_bits.numel() != w.shape[0]:
        raise ValueError(f"row_bits must be [rows] = [{w.shape[0]}], got shape {tuple(row_bits.shape)}")
    if row_bits.is_floating_point() and not torch.equal(row_bits, row_bits.round()):
        raise ValueError("row_bits must hold integer widths")
    return row_bits.long().to(w.device)


def _check_grid(grid: dict) -> None:
    unknown = sorted(set(grid) - set(GRID_SETTINGS))
    if unknown:
        raise TypeError(f"unknown grid setting(s) {', '.join(unknown)}; row-wise RTN takes {', '.join(GRID_SETTINGS)}")
    if grid.get("granularity", "group") == "tensor":
        raise ValueError("granularity='tensor' shares one scale across rows of different widths; use "
                         "'group' or 'channel'")


def quantize_rows(w: torch.Tensor,         # [rows, dim] e.g. the token embedding [vocab, hidden]
                  row_bits: torch.Tensor,  # [rows] the width of each row (each 2..8)
                  group_size: int = 128,   # columns of a row that share a scale and zero
                  **grid,                  # other grid settings of QuantConfig (symmetric, scale_dtype, mse_clip, ...)
                  ) -> tuple[torch.Tensor, dict[int, RowPart]]:
    """Round-to-nearest each row of `w` at its own width, groups along the row (the repo's grid):
    returns Ŵ (same shape and dtype) and {bits: RowPart(rows, QuantizedWeight)}, one part per
    distinct width. One `rtn_quantize_weight` call per width over the rows that have it; since
    groups never cross rows, each row equals that row quantized alone. Outliers and
    granularity="tensor" (which would tie rows together) are not offered."""
    _check_weight(w)
    row_bits = _row_bits_for(w, row_bits)
    _check_grid(grid)
    w_hat = torch.empty_like(w)                                     # [rows, dim]
    parts: dict[int, RowPart] = {}
    for b in torch.unique(row_bits).tolist():
        rows = (row_bits == b).nonzero().squeeze(1)                 # [n_b]
        cfg = RTNConfig(bits=int(b), group_size=group_size, **grid)
        part, state = rtn_quantize_weight(w[rows], cfg)             # [n_b, dim]
        w_hat[rows] = part
        parts[int(b)] = RowPart(rows, state)
    return w_hat, parts


def relative_row_error(w: torch.Tensor,                     # [rows, dim] original
                       w_hat: torch.Tensor,                 # [rows, dim] quantized
                       weight: torch.Tensor | None = None,  # [rows] e.g. token counts; None: every row alike
                       ) -> float:
    """sqrt(Σ_i weight_i ||w_i - ŵ_i||²) / sqrt(Σ_i weight_i ||w_i||²): with token counts as the
    weights, the relative error of an embedding lookup averaged over the text (frequency-weighted);
    without, ||W - Ŵ||_F / ||W||_F. NaN when the weights (or W) are all zero."""
    num = (w.double() - w_hat.double()).pow(2).sum(dim=1)           # [rows]
    den = w.double().pow(2).sum(dim=1)                              # [rows]
    if weight is not None:
        weight = torch.as_tensor(weight, dtype=torch.float64, device=w.device)
        num, den = num * weight, den * weight
    d = den.sum()
    return (num.sum() / d).sqrt().item() if d > 0 else float("nan")


def packed_row_bits_size(row_bits: torch.Tensor,   # [rows] the width of each row
                         dim: int,                 # columns of a row (576 for SmolLM2)
                         group_size: int = 128,    # columns per group (the whole row if larger)
                         scale_bytes: int = 2,     # bytes of one scale (2: float16)
                         symmetric: bool = False,  # symmetric grid: no zeros stored
                         row_map: bool = True,     # count the width of each row (needed to find a row)
                         ) -> int:
    """Bytes a perfect packing of a per-row mixed-width table needs, as `packing.packed_size`
    counts a uniform module: for the n_b rows at each width b, ceil(n_b·dim·b/8) code bytes, n_b·G
    scales at `scale_bytes` and (asymmetric) ceil(n_b·G·b/8) integer zeros, where G =
    ceil(dim / min(group_size, dim)) groups per row (SmolLM2: 576 at 128 = 5 groups, the last 64
    wide); plus, with `row_map` and more than one width, each row's width code at ceil(log2 K)
    bits (K distinct widths), from which a loader finds each row in its width's block by a
    running count. All rows at one width give exactly the uniform module's ideal bytes."""
    row_bits = torch.as_tensor(row_bits).long()
    g = min(group_size, dim)
    n_groups = math.ceil(dim / g)
    widths, counts = torch.unique(row_bits, return_counts=True)
    total = 0
    for b, n in zip(widths.tolist(), counts.tolist()):
        total += math.ceil(n * dim * b / 8) + n * n_groups * scale_bytes
        total += 0 if symmetric else math.ceil(n * n_groups * b / 8)
    if row_map and len(widths) > 1:
        total += math.ceil(row_bits.numel() * math.ceil(math.log2(len(widths))) / 8)
    return total


# ----------------------------------------------------------------------------- the model's embedding

def _embedding_matrices(model: nn.Module) -> tuple[dict[str, nn.Module], bool]:
    """{name: module} of the input embedding and an untied output head; and whether the head is tied."""
    emb = model.get_input_embeddings()
    mats = {next(n for n, m in model.named_modules() if m is emb): emb}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and head.weight is emb.weight
    if head is not None and not tied:
        mats[next(n for n, m in model.named_modules() if m is head)] = head
    return mats, tied


@torch.no_grad()
def quantize_embeddings_by_frequency(model: nn.Module,                      # a causal LM (get_input_embeddings)
                                     freq: torch.Tensor,                    # [vocab] token counts (calibration split)
                                     avg_bits: float | None = None,         # mean bits per row; or give row_bits
                                     group_size: int = 128,                 # columns per group along a row
                                     inplace: bool = False,                 # quantize `model` itself, not a copy
                                     choices=DEFAULT_CHOICES,               # the widths a row may take
                                     row_bits: torch.Tensor | None = None,  # [vocab] widths to use instead (a control)
                                     smoothing: float = 0.0,                # see allocate_row_bits
                                     **grid,                                # other grid settings (symmetric, ...)
                                     ) -> tuple[nn.Module, pd.DataFrame]:
    """Quantize the token embedding row by row, frequent tokens at more bits; return model, report.

    The widths are `allocate_row_bits(freq, avg_bits, choices)` unless `row_bits` is given (e.g.
    `random_row_bits` or `uniform_row_bits`, the controls at the same size); pass one of the two.
    Each row is RTN-quantized at its width (`quantize_rows`). When the output head is tied to the
    embedding (SmolLM2), quantizing the embedding quantizes the head's rows too; an untied head is
    quantized with the same widths. The report has one row per (module, width): module, bits,
    rows, row_share, token_share (share of the counted tokens), rel_error (||W - Ŵ||/||W|| over
    those rows), freq_weighted_error (`relative_row_error` weighted by counts; NaN for a width
    whose rows were never counted) and ideal_bytes (without the row map);
    `report.attrs` holds mean_bits, histogram {bits: rows}, the input embedding's rel_error and
    freq_weighted_error, ideal_bytes (`packed_row_bits_size` with its row map, summed over the
    matrices quantized: one when tied), tied and note.
    """
    freq = _check_freq(freq)
    if (avg_bits is None) == (row_bits is None):
        raise ValueError("pass exactly one of avg_bits (allocate by frequency) and row_bits (widths to use)")
    _check_grid(grid)
    qmodel = model if inplace else copy.deepcopy(model)
    mats, tied = _embedding_matrices(qmodel)
    vocab = next(iter(mats.values())).weight.shape[0]
    if freq.numel() != vocab:
        raise ValueError(f"freq has {freq.numel()} counts but the embedding has {vocab} rows; count with "
                         f"token_frequencies(tokenizer, texts, vocab_size={vocab})")
    if row_bits is None:
        row_bits = allocate_row_bits(freq, avg_bits, choices, smoothing)
    row_bits = torch.as_tensor(row_bits).long()
    note = "tied to the output head: its rows are quantized too" if tied else ""
    rows, summary = [], {}
    for name, module in mats.items():
        w = module.weight
        if w.shape[0] != row_bits.numel():
            raise ValueError(f"{name}: {w.shape[0]} rows but {row_bits.numel()} widths")
        try:
            w_hat, parts = quantize_rows(w.data, row_bits, group_size, **grid)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        dev_freq = freq.to(w.device)
        for b, part in sorted(parts.items()):
            r = part.rows
            rows.append(dict(module=name, bits=b, rows=r.numel(), row_share=r.numel() / vocab,
                             token_share=(freq[r.cpu()].sum() / freq.sum()).item() if freq.sum() > 0 else float("nan"),
                             rel_error=relative_row_error(w.data[r], w_hat[r]),
                             freq_weighted_error=relative_row_error(w.data[r], w_hat[r], dev_freq[r]),
                             ideal_bytes=packed_row_bits_size(row_bits[r.cpu()], w.shape[1], group_size,
                                                              _scale_bytes(grid), grid.get("symmetric", False))))
        summary.setdefault("rel_error", relative_row_error(w.data, w_hat))          # the input embedding's
        summary.setdefault("freq_weighted_error", relative_row_error(w.data, w_hat, dev_freq))
        summary["ideal_bytes"] = summary.get("ideal_bytes", 0) + packed_row_bits_size(   # every matrix stored
            row_bits, w.shape[1], group_size, _scale_bytes(grid), grid.get("symmetric", False))
        w.data.copy_(w_hat)
    widths, counts = torch.unique(row_bits, return_counts=True)
    report = pd.DataFrame(rows, columns=["module", "bits", "rows", "row_share", "token_share", "rel_error",
                                         "freq_weighted_error", "ideal_bytes"])
    report.attrs.update(mean_bits=row_bits.double().mean().item(),
                        histogram=dict(zip(widths.tolist(), counts.tolist())), tied=tied, note=note, **summary)
    return qmodel, report


def _scale_bytes(grid: dict) -> int:
    return {"float16": 2, "bfloat16": 2, "float32": 4}[grid.get("scale_dtype", "float16")]


# ----------------------------------------------------------------------------- as a sweep spec

FREQUENCY_RULES = ("frequency", "random", "uniform")


@dataclass(frozen=True)
class FrequencyBits:
    """The token embedding quantized row by row: the "embeddings" entry of a component spec
    ({"linears": {...}, "embeddings": FrequencyBits(...)}), stored in a sweep point by
    `spec_to_json` and applied by `workbench.quant.quantize_for_spec` (which needs the tokenizer
    to count the tokens). Every field keys the point."""

    avg_bits: float = 3.0              # mean bits per embedding row (the size budget)
    rule: str = "frequency"            # "frequency": allocate_row_bits; "random": the same widths shuffled
                                       # over the rows (random_row_bits, the same size); "uniform": every row
                                       # at avg_bits (an integer)
    choices: tuple = DEFAULT_CHOICES   # the widths a row may take
    corpus: str = "lee"                # token counts from this corpus's calibration split (never its evaluation split)
    smoothing: float = 0.0             # added to every count before allocating (allocate_row_bits)
    group_size: int = 128              # columns per group along a row
    seed: int = 0                      # the random rule's permutation

    method = "rtn"                     # what quantizes each row (for sweep tables that read a spec's method)
    needs_calibration = False          # counts come from the corpus's text, not from calibration activations

    @property
    def bits(self) -> float:
        """The mean width, where a sweep table reads a spec's bits."""
        return self.avg_bits

    def __post_init__(self):
        for name in ("avg_bits", "smoothing"):                 # 3 and 3.0 must key the same sweep point
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.rule not in FREQUENCY_RULES:
            raise ValueError(f"rule must be one of {FREQUENCY_RULES}, got {self.rule!r}")
        object.__setattr__(self, "choices", _check_choices(self.choices))
        if self.rule == "uniform":
            uniform_row_bits(1, self.avg_bits)                 # its clear error for a non-integer width
        else:
            _check_avg(self.avg_bits, self.choices)

    def to_json(self) -> dict:
        return {"by_frequency": {**asdict(self), "choices": list(self.choices)}}

    @staticmethod
    def from_json(obj: dict) -> "FrequencyBits":
        return FrequencyBits(**{**obj["by_frequency"], "choices": tuple(obj["by_frequency"]["choices"])})


def apply_frequency_bits(model: nn.Module, tokenizer, spec: FrequencyBits,
                         inplace: bool = False) -> tuple[nn.Module, pd.DataFrame]:
    """Quantize `model`'s token embedding (and a tied head with it) as `spec` says: count the
    tokens of spec.corpus's calibration split, choose each row's width by spec.rule, RTN each row.
    Returns the model and a one-row report (module, method "rtn by frequency", bits = the mean
    width, rel_weight_error, freq_weighted_error, ideal_bytes, tied), the form quantize_for_spec
    concatenates with the linear layers' report."""
    from workbench.data import calibration_text

    vocab = model.get_input_embeddings().weight.shape[0]
    freq = token_frequencies(tokenizer, [calibration_text(spec.corpus)], vocab)
    if spec.rule == "uniform":
        row_bits = uniform_row_bits(vocab, spec.avg_bits)
    else:
        row_bits = allocate_row_bits(freq, spec.avg_bits, spec.choices, spec.smoothing)
        if spec.rule == "random":
            row_bits = random_row_bits(freq, row_bits, seed=spec.seed)
    qmodel, report = quantize_embeddings_by_frequency(model, freq, row_bits=row_bits, group_size=spec.group_size,
                                                      inplace=inplace)
    a = report.attrs
    return qmodel, pd.DataFrame([{"module": "embeddings (by frequency)", "method": f"rtn by {spec.rule}",
                                  "bits": a["mean_bits"], "rel_weight_error": a["rel_error"],
                                  "freq_weighted_error": a["freq_weighted_error"], "ideal_bytes": a["ideal_bytes"],
                                  "tied": a["tied"]}])


# ----------------------------------------------------------------------------- bits per block

def _component_groups(groups: dict | None) -> dict:
    return COMPONENT_GROUPS if groups is None else groups


def block_parameters(model: nn.Module,        # a causal LM
                     blocks=BLOCKS,           # block names: keys of `groups`
                     groups: dict | None = None,  # {block: module regex, None for the embeddings}; default
                                              # workbench.modules.COMPONENT_GROUPS
                     ) -> dict[str, int]:
    """Weights in each block: {block: count}. "embeddings" (regex None) counts the input embedding
    and an untied output head (a tied head is the same matrix); another block counts the weights
    of the linear layers whose name matches its regex (the LM head excluded, as quantize_model
    skips it; a layer matching two blocks counts in the first). A block with no weights is an error."""
    groups = _component_groups(groups)
    unknown = [b for b in blocks if b not in groups]
    if unknown or len(set(blocks)) != len(blocks):
        raise ValueError(f"blocks must be distinct names from {tuple(groups)}, got {tuple(blocks)}")
    linears = {n: m for n, m in linear_modules(model).items() if not re.search(LM_HEAD, n)}
    linears.update({n: m for n, m in model.named_modules()            # GPT-2's Conv1D: the same weights
                    if type(m).__name__ == "Conv1D" and not re.search(LM_HEAD, n)})
    counted: set[str] = set()
    out = {}
    for block in blocks:
        rx = groups[block]
        if rx is None:
            mats, _ = _embedding_matrices(model)
            out[block] = sum(m.weight.numel() for m in mats.values())
        else:
            names = [n for n in linears if n not in counted and re.search(rx, n)]
            counted.update(names)
            out[block] = sum(linears[n].weight.numel() for n in names)
        if out[block] == 0:
            raise ValueError(f"block {block!r} has no weights in this {type(model).__name__}")
    return out


def block_allocations(model: nn.Module,            # a causal LM
                      budget_bits: float,          # mean code bits per weight over the blocks, at most
                      blocks=BLOCKS,               # the blocks, in order of priority for ties
                      choices=DEFAULT_CHOICES,     # the widths a block may take
                      groups: dict | None = None,  # see block_parameters
                      ) -> pd.DataFrame:
    """Every width per block whose weight-count-weighted mean bits meets the budget, best first:
    one row per combination, a column per block, then mean_bits and params (the blocks' weights).

    mean_bits = Σ_b n_b·bits_b / Σ_b n_b over the blocks' weights n_b (`block_parameters`): code
    bits only (scales and zeros add about (16 + bits)/group_size per weight for every block).
    Order: the largest mean_bits first (the closest to the budget from below), then the most even
    (smallest max - min), then by the widths in `blocks` order, larger first. A budget below every
    combination (min(choices)) is a ValueError.
    """
    choices = _check_choices(choices)
    if isinstance(budget_bits, bool) or not isinstance(budget_bits, (int, float)) or not math.isfinite(budget_bits):
        raise ValueError(f"budget_bits must be a finite number, got {budget_bits!r}")
    if budget_bits < choices[0]:
        raise ValueError(f"budget_bits={budget_bits} is impossible with widths {choices}: every block takes at "
                         f"least {choices[0]} bits")
    n = block_parameters(model, blocks, groups)
    total = sum(n.values())
    rows = []
    for combo in itertools.product(choices, repeat=len(blocks)):
        mean = sum(n[b] * c for b, c in zip(blocks, combo)) / total
        if mean <= budget_bits + 1e-12:
            rows.append(dict(zip(blocks, combo), mean_bits=mean, params=total, _spread=max(combo) - min(combo),
                             _key=tuple(-c for c in combo)))
    df = pd.DataFrame(rows).sort_values(["mean_bits", "_spread", "_key"], ascending=[False, True, True])
    return df.drop(columns=["_spread", "_key"]).reset_index(drop=True)


def allocate_block_bits(model: nn.Module,            # a causal LM
                        budget_bits: float,          # mean code bits per weight over the blocks, at most
                        blocks=BLOCKS,               # the blocks, in order of priority for ties
                        choices=DEFAULT_CHOICES,     # the widths a block may take
                        groups: dict | None = None,  # see block_parameters
                        ) -> dict[str, int]:
    """The best width per block under the budget: the first row of `block_allocations` (the
    largest parameter-weighted mean bits <= budget_bits; ties to the most even, then to the
    blocks listed first), as {block: bits}."""
    best = block_allocations(model, budget_bits, blocks, choices, groups).iloc[0]
    return {b: int(best[b]) for b in blocks}


def block_spec(allocation: dict[str, int | None],  # {block: bits or None (left in full precision)}
               group_size: int = 128,              # columns per group
               method: str = "rtn",                # quantization method of the linear blocks
               groups: dict | None = None,         # see block_parameters
               **settings,                         # further QuantConfig settings (e.g. act_order=True for GPTQ)
               ) -> dict:
    """A block allocation as the component spec of `workbench.abilities.component_specs`:
    {"linears": {regex: QuantConfig or None}, "embeddings": QuantConfig or None}, which
    `workbench.quant.quantize_for_spec` applies and `spec_to_json` stores; its "linears" part
    alone (None entries dropped) is a `quantize_model` spec. The embeddings are quantized with RTN
    (`quantize_embeddings` turns another method into RTN). Blocks left out of `allocation` stay
    in full precision."""
    groups = _component_groups(groups)
    unknown = [b for b in allocation if b not in groups]
    if unknown:
        raise ValueError(f"unknown block(s) {unknown}; blocks are {tuple(groups)}")

    def cfg(bits):
        return None if bits is None else QuantConfig(bits=int(bits), group_size=group_size, method=method, **settings)

    linears = {rx: cfg(allocation.get(b)) for b, rx in groups.items() if rx is not None}
    emb = next((b for b, rx in groups.items() if rx is None), None)
    return {"linears": linears, "embeddings": cfg(allocation.get(emb)) if emb is not None else None}
