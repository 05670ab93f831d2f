"""workbench/quant/by_frequency.py: per-word bit allocation (Chung et al. 2020) and bits per block."""

import copy
import math

import pytest
import torch

from workbench.quant import QuantConfig, quantize_model, rtn_quantize_weight
from workbench.quant.by_frequency import (allocate_block_bits, allocate_row_bits, block_allocations,
                                          block_parameters, block_spec, frequency_rank, packed_row_bits_size,
                                          quantize_embeddings_by_frequency, quantize_rows, random_row_bits,
                                          relative_row_error, token_frequencies, uniform_row_bits)

pytestmark = pytest.mark.usefixtures("one_thread")


def _zipf(vocab=512, seed=0, zeros=0):
    """Zipf-like counts over a shuffled vocabulary, with `zeros` tokens never seen and some ties."""
    g = torch.Generator().manual_seed(seed)
    counts = (10000 / torch.arange(1, vocab + 1).double()).floor().long()       # many ties in the tail
    counts[vocab - zeros:] = 0
    return counts[torch.randperm(vocab, generator=g)]


def test_token_frequencies_count_a_toy_text(tiny_lm):
    tok = tiny_lm.tokenizer
    freq = token_frequencies(tok, ["w1 w2 w1", "w5 w1 zzz"], vocab_size=64)
    assert freq.shape == (64,) and freq.dtype == torch.long and freq.sum() == 6   # no special tokens added
    ids = dict(zip(["w1", "w2", "w5", "<unk>"], tok.convert_tokens_to_ids(["w1", "w2", "w5", "<unk>"])))
    assert [freq[ids[w]].item() for w in ("w1", "w2", "w5", "<unk>")] == [3, 1, 1, 1]
    assert torch.equal(token_frequencies(tok, "w1 w2 w1", 64), token_frequencies(tok, ["w1 w2", "w1"], 64))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_frequencies(tok, "w61", vocab_size=10)


@pytest.mark.parametrize("avg_bits,choices", [(a, c) for c in [(2, 3, 4, 8), (2, 4), (3, 8, 5)]
                                               for a in [2, 2.01, 2.5, 3, 3.3, 4.75, 7.9, 8] if min(c) <= a <= max(c)])
def test_allocation_meets_budget_is_monotone_and_uses_choices(avg_bits, choices):
    freq = _zipf(zeros=100)
    bits = allocate_row_bits(freq, avg_bits, choices)
    vocab = freq.numel()
    assert bits.shape == (vocab,) and set(bits.tolist()) <= set(choices)
    budget = math.floor(avg_bits * vocab + 1e-9)
    gap = max(b - a for a, b in zip(sorted(choices), sorted(choices)[1:]))
    assert budget - gap < bits.sum().item() <= budget                          # within one row's worth
    ranked = bits[frequency_rank(freq)]                                        # most frequent first, ties by id
    assert (ranked[:-1] >= ranked[1:]).all()                                   # never fewer bits for a likelier token
    f, b = freq.double(), bits
    assert not ((f[:, None] > f[None, :]) & (b[:, None] < b[None, :])).any()
    assert torch.equal(bits, allocate_row_bits(freq.clone(), avg_bits, choices))   # deterministic


def test_allocation_gives_frequent_tokens_more_bits_and_errors():
    freq = torch.tensor([0, 100, 5, 100, 1, 0, 50, 2])
    bits = allocate_row_bits(freq, 3.0, (2, 3, 4))
    assert bits.sum() == 24 and bits[1] == 4 and bits[3] == 4 and bits[0] == bits[5] == 2
    assert allocate_row_bits(freq, 2, (2, 3, 4)).tolist() == [2] * 8
    assert allocate_row_bits(freq, 4, (2, 3, 4)).tolist() == [4] * 8
    for bad in (1.5, 8.5, float("nan"), True):
        with pytest.raises(ValueError):
            allocate_row_bits(freq, bad, (2, 3, 4, 8))
    with pytest.raises(ValueError, match=r"impossible.*\[2, 4\]"):
        allocate_row_bits(freq, 5, (2, 4))
    with pytest.raises(ValueError, match="from 2 to 8"):
        allocate_row_bits(freq, 3, (1, 4))
    with pytest.raises(ValueError, match="non-negative"):
        allocate_row_bits(torch.tensor([1, -1]), 3)
    with pytest.raises(ValueError, match="integer width"):
        uniform_row_bits(8, 2.5)
    assert uniform_row_bits(5, 3).tolist() == [3] * 5


def test_quantize_rows_equals_rtn_of_each_row_at_its_width():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 20, generator=g)
    row_bits = torch.tensor([2, 3, 4, 8] * 10)[torch.randperm(40, generator=g)]
    for grid in ({}, {"symmetric": True}):
        w_hat, parts = quantize_rows(w, row_bits, group_size=8, **grid)
        assert w_hat.shape == w.shape and w_hat.dtype == w.dtype and sorted(parts) == [2, 3, 4, 8]
        for i in range(40):
            one, _ = rtn_quantize_weight(w[i:i + 1], QuantConfig(bits=int(row_bits[i]), group_size=8, **grid))
            assert torch.allclose(w_hat[i:i + 1], one, atol=0, rtol=0)
        for b, part in parts.items():
            assert (row_bits[part.rows] == b).all() and part.state.config.bits == b
            assert part.state.scale.shape == (part.rows.numel(), 3)               # 20 columns at 8: 2x8+4
    with pytest.raises(ValueError, match="tensor"):
        quantize_rows(w, row_bits, granularity="tensor")
    with pytest.raises(ValueError, match="row_bits"):
        quantize_rows(w, row_bits[:5])


def test_frequency_allocation_beats_a_random_one_of_the_same_histogram():
    g = torch.Generator().manual_seed(1)
    freq = _zipf(vocab=256, seed=1, zeros=40)
    w = torch.randn(256, 32, generator=g)
    bits = allocate_row_bits(freq, 3.0)
    assert len(torch.unique(bits)) > 1
    w_freq, _ = quantize_rows(w, bits, group_size=16)
    err_freq = relative_row_error(w, w_freq, freq)
    for seed in range(3):
        control = random_row_bits(freq, like=bits, seed=seed)
        assert torch.equal(torch.sort(control).values, torch.sort(bits).values)      # same histogram
        assert packed_row_bits_size(control, 32, 16) == packed_row_bits_size(bits, 32, 16)
        w_rand, _ = quantize_rows(w, control, group_size=16)
        assert err_freq < 0.75 * relative_row_error(w, w_rand, freq)
    w_uni, _ = quantize_rows(w, uniform_row_bits(256, 3), group_size=16)
    assert err_freq < relative_row_error(w, w_uni, freq)


def test_packed_size_matches_a_hand_computation():
    row_bits = torch.tensor([2] * 5 + [3] * 2 + [8] * 3)                 # 10 rows of 576 at group 128: 5 groups
    by_hand = ((5 * 576 * 2 / 8 + 5 * 5 * 2 + math.ceil(5 * 5 * 2 / 8))      # 720 + 50 + 7
               + (2 * 576 * 3 / 8 + 2 * 5 * 2 + math.ceil(2 * 5 * 3 / 8))  # 432 + 20 + 4
               + (3 * 576 * 8 / 8 + 3 * 5 * 2 + 3 * 5)                      # 1728 + 30 + 15
               + math.ceil(10 * 2 / 8))                                    # 3 widths: 2-bit codes, 3 bytes
    assert packed_row_bits_size(row_bits, 576, 128) == by_hand == 3009
    assert packed_row_bits_size(row_bits, 576, 128, symmetric=True, row_map=False) == 3009 - 26 - 3
    # one width: the uniform module's ideal (packing.packed_size's formula), no map
    uniform = math.ceil(7 * 48 * 3 / 8) + 7 * 3 * 2 + math.ceil(7 * 3 * 3 / 8)
    assert packed_row_bits_size(torch.full((7,), 3), 48, 16) == uniform


def test_quantize_embeddings_by_frequency_on_the_tiny_lm(tiny_lm):
    model = tiny_lm.model
    before = model.model.embed_tokens.weight.detach().clone()
    freq = _zipf(vocab=64, seed=2, zeros=10)
    qmodel, report = quantize_embeddings_by_frequency(model, freq, avg_bits=3.0, group_size=16)
    assert torch.equal(model.model.embed_tokens.weight, before)                      # a copy
    w_hat = qmodel.model.embed_tokens.weight
    assert qmodel.lm_head.weight is w_hat and report.attrs["tied"] and "tied" in report.attrs["note"]
    bits = allocate_row_bits(freq, 3.0)
    expect, _ = quantize_rows(before, bits, group_size=16)
    assert torch.equal(w_hat, expect)
    widths, counts = torch.unique(bits, return_counts=True)
    assert report.attrs["mean_bits"] <= 3.0 and report.attrs["histogram"] == dict(zip(widths.tolist(), counts.tolist()))
    assert set(report.bits) == set(bits.tolist()) and report.rows.sum() == 64
    assert math.isclose(report.token_share.sum(), 1.0) and report.module.unique().tolist() == ["model.embed_tokens"]
    assert report.attrs["ideal_bytes"] == packed_row_bits_size(bits, 48, 16)
    assert report.attrs["freq_weighted_error"] < report.attrs["rel_error"]     # frequent rows are finer
    control, rep = quantize_embeddings_by_frequency(model, freq, row_bits=random_row_bits(freq, bits, seed=0),
                                                    group_size=16)
    assert rep.attrs["ideal_bytes"] == report.attrs["ideal_bytes"]
    assert rep.attrs["freq_weighted_error"] > report.attrs["freq_weighted_error"]
    with pytest.raises(ValueError, match="exactly one"):
        quantize_embeddings_by_frequency(model, freq, 3.0, row_bits=bits)
    with pytest.raises(ValueError, match="64 rows"):
        quantize_embeddings_by_frequency(model, freq[:10], 3.0)


def test_block_allocation_meets_the_budget_and_its_spec_quantizes(tiny_lm):
    from workbench.quant import quantize_for_spec

    model = tiny_lm.model
    n = block_parameters(model)
    assert n == {"embeddings": 64 * 48, "attention": 2 * (2 * 48 * 48 + 2 * 48 * 24), "ffn": 2 * 3 * 48 * 96}
    table = block_allocations(model, 3.5)
    means = (sum(table[b] * n[b] for b in n) / sum(n.values()))
    assert (means <= 3.5 + 1e-12).all() and (table.mean_bits == means).all() and table.mean_bits.is_monotonic_decreasing
    alloc = allocate_block_bits(model, 3.5)
    assert set(alloc) == {"embeddings", "attention", "ffn"} and all(b in (2, 3, 4, 8) for b in alloc.values())
    mean = sum(alloc[b] * n[b] for b in n) / sum(n.values())
    assert mean <= 3.5 and mean == table.mean_bits.max()
    assert allocate_block_bits(model, 3) == {"embeddings": 3, "attention": 3, "ffn": 3}
    with pytest.raises(ValueError, match="impossible"):
        allocate_block_bits(model, 1.9)
    spec = block_spec(alloc, group_size=16)
    qmodel, report = quantize_for_spec(model, spec)
    by = report.groupby("component").bits.first().to_dict()
    assert by["q"] == alloc["attention"] and by["down"] == alloc["ffn"] and by["embed"] == alloc["embeddings"]
    assert not torch.equal(qmodel.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    linears = {rx: c for rx, c in spec["linears"].items() if c is not None}
    _, rep = quantize_model(copy.deepcopy(model), linears, inplace=True)
    assert len(rep) == 14
    assert block_spec({"ffn": 2})["linears"][r"self_attn|attention\."] is None
    with pytest.raises(ValueError, match="unknown block"):
        block_spec({"embedding": 2})


def test_frequency_bits_is_a_sweep_spec_with_clear_errors():
    from workbench.quant import FrequencyBits, spec_from_json, spec_to_json

    spec = {"linears": {r"mlp": None}, "embeddings": FrequencyBits(avg_bits=2.5, rule="random", seed=3)}
    data = spec_to_json(spec)
    assert data["embeddings"]["by_frequency"]["rule"] == "random"
    back = spec_from_json(data)
    assert back["embeddings"] == spec["embeddings"] and spec_to_json(back) == data
    assert spec_to_json(FrequencyBits(avg_bits=3)) == spec_to_json(FrequencyBits(avg_bits=3.0))   # one sweep key
    fb = FrequencyBits(avg_bits=2.5)
    assert fb.bits == 2.5 and fb.method == "rtn" and not fb.needs_calibration    # what sweep tables read of a spec
    with pytest.raises(ValueError, match="rule"):
        FrequencyBits(rule="zipf")
    with pytest.raises(ValueError, match="integer"):
        FrequencyBits(avg_bits=2.5, rule="uniform")
    with pytest.raises(ValueError, match="avg_bits"):
        FrequencyBits(avg_bits=9)


@pytest.mark.integration
def test_quantize_for_spec_applies_frequency_bits_with_the_tokenizer(tiny_lm):
    """Counts come from the corpus's calibration split; the rules keep the same size; no tokenizer is an error."""
    from workbench.quant import FrequencyBits, quantize_for_spec

    model, tokenizer, _ = tiny_lm
    spec = {"linears": {}, "embeddings": FrequencyBits(avg_bits=3.0, choices=(2, 3, 4, 8))}
    with pytest.raises(ValueError, match="tokenizer"):
        quantize_for_spec(model, spec)
    sizes = {}
    for rule in ("frequency", "random", "uniform"):
        s = {"linears": {}, "embeddings": FrequencyBits(avg_bits=3.0, rule=rule)}
        q, report = quantize_for_spec(model, s, tokenizer=tokenizer)
        assert q is not model and len(report) == 1 and 0 < report.rel_weight_error.iloc[0] < 1
        assert not torch.equal(q.get_input_embeddings().weight, model.get_input_embeddings().weight)
        sizes[rule] = report.ideal_bytes.iloc[0]
        assert report.bits.iloc[0] <= 3.0
    assert sizes["frequency"] == sizes["random"]
