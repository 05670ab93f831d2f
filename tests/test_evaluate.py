import math

import pytest
import torch

from workbench.evaluate import perplexity, token_windows, window_nll


def _hand_perplexity(model, windows):
    """Token by token, one prefix at a time: no batching, no shifting tricks."""
    total, count = 0.0, 0
    with torch.no_grad():
        for window in windows:
            for t in range(1, window.numel()):
                logits = model(window[:t].unsqueeze(0)).logits[0, -1].double()
                total -= torch.log_softmax(logits, dim=-1)[window[t]].item()
                count += 1
    return math.exp(total / count)


def test_perplexity_equals_hand_computation(tiny_lm, tiny_text):
    model, tok, _ = tiny_lm
    seqlen = 16
    windows = token_windows(tok, tiny_text, seqlen, max_windows=3)
    expected = _hand_perplexity(model, windows)
    got = perplexity(model, tok, tiny_text, seqlen=seqlen, batch_size=2, max_windows=3, progress=False)
    assert got == pytest.approx(expected, rel=1e-5)


def test_windows_do_not_overlap_and_drop_the_tail(tiny_lm, tiny_text):
    _, tok, _ = tiny_lm
    ids = tok(tiny_text, return_tensors="pt").input_ids[0]
    windows = token_windows(tok, tiny_text, 32)
    assert windows.shape == (ids.numel() // 32, 32)
    assert torch.equal(windows.flatten(), ids[: windows.numel()])


def test_batch_size_does_not_change_the_result(tiny_lm, tiny_text):
    model, tok, _ = tiny_lm
    windows = token_windows(tok, tiny_text, 20)
    a = window_nll(model, windows, batch_size=1, progress=False)
    b = window_nll(model, windows, batch_size=5, progress=False)
    assert torch.allclose(a, b, rtol=1e-5)


def test_text_shorter_than_a_window_is_a_clear_error(tiny_lm):
    model, tok, _ = tiny_lm
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(model, tok, "w1 w2 w3", seqlen=16)
    with pytest.raises(ValueError, match="seqlen"):
        token_windows(tok, "w1 w2", seqlen=1)


def test_a_broken_model_gives_infinite_or_nan_perplexity_not_a_number_that_looks_fine(tiny_lm, tiny_text):
    import copy

    model, tok, _ = tiny_lm
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.lm_head.weight.mul_(1e4)
    ppl = perplexity(broken, tok, tiny_text, seqlen=16, max_windows=2, progress=False)
    assert ppl > 1e6 or math.isnan(ppl)


def test_a_model_with_a_nan_weight_is_an_error_naming_it(tiny_lm, tiny_text):
    import copy

    model, tok, _ = tiny_lm
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.down_proj\.weight holds 1 NaN and 0 inf"):
        perplexity(broken, tok, tiny_text, seqlen=16, max_windows=2, progress=False)


def test_a_list_of_documents_is_scored_whole(tiny_lm, tiny_text):
    model, tok, _ = tiny_lm
    words = tiny_text.split()
    docs = [" ".join(words[i : i + 50]) for i in range(0, 200, 50)]      # four documents of equal length
    joined = "\n\n".join(docs)
    assert token_windows(tok, docs, seqlen=16).shape == token_windows(tok, joined, seqlen=16).shape
    assert token_windows(tok, docs, seqlen=16).shape[0] > 4 * 50 // 16 - 4   # every document, not the first
    assert perplexity(model, tok, docs, seqlen=16, progress=False) == perplexity(model, tok, joined, seqlen=16, progress=False)
    for bad in ([], [1, 2], None):
        with pytest.raises(TypeError, match="text must be a string or a non-empty list of strings"):
            perplexity(model, tok, bad, seqlen=16, progress=False)


def _full_logits_nll(model, windows):
    with torch.no_grad():
        logits = model(input_ids=windows, use_cache=False).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none").double().sum(1)


@pytest.mark.parametrize("arch", ["llama", "gemma3-softcap"])
def test_the_head_in_chunks_gives_the_full_logits_nll(arch, tiny_lm, tiny_text, monkeypatch):
    """window_nll never holds [batch, seqlen, vocab] logits; split into many chunks (here 7 tokens)
    it must give what the whole-logits loss gives, including Gemma's logit soft-capping."""
    import workbench.evaluate as ev

    model, tok, _ = tiny_lm
    if arch == "gemma3-softcap":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        torch.manual_seed(0)
        model = Gemma3ForCausalLM(Gemma3TextConfig(
            vocab_size=model.config.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
            final_logit_softcapping=3.0)).eval()
    assert ev._body_and_head(model) is not None
    windows = token_windows(tok, tiny_text, 20, max_windows=3)
    monkeypatch.setattr(ev, "LOGIT_CHUNK_ELEMENTS", 7 * model.config.vocab_size)
    got = window_nll(model, windows, batch_size=2, progress=False)
    assert torch.allclose(got, _full_logits_nll(model, windows), rtol=1e-5)


def test_a_model_that_is_not_a_hub_causal_lm_is_run_whole(tiny_lm, tiny_text):
    import workbench.evaluate as ev

    model, tok, _ = tiny_lm

    class Wrapped(torch.nn.Module):                 # e.g. a user's wrapper: no body/head split to trust
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            return self.inner(**kw)

    wrapped = Wrapped(model)
    assert ev._body_and_head(wrapped) is None
    windows = token_windows(tok, tiny_text, 20, max_windows=2)
    assert torch.allclose(window_nll(wrapped, windows, progress=False), _full_logits_nll(model, windows), rtol=1e-5)


class _BosTokenizer:
    """A whitespace tokenizer that begins every text with BOS (id 1), as Gemma's does."""
    bos_token_id = 1

    def __call__(self, text, return_tensors=None):
        ids = [1] + [10 + int(w[1:]) if w[1:].isdigit() else 5 for w in text.split()]
        from types import SimpleNamespace

        return SimpleNamespace(input_ids=torch.tensor([ids]) if return_tensors == "pt" else ids)


def test_a_tokenizer_that_starts_with_bos_gets_bos_before_every_window():
    from workbench.evaluate import starts_with_bos

    tok = _BosTokenizer()
    text = " ".join(f"w{i}" for i in range(25))              # 25 text tokens after the one BOS
    assert starts_with_bos(tok)
    windows = token_windows(tok, text, seqlen=8)
    assert windows.shape == (3, 8)                           # 25 // 7 windows of BOS + 7 text tokens
    assert (windows[:, 0] == 1).all()
    assert windows[:, 1:].flatten().tolist() == [10 + i for i in range(21)]   # the text in order, no overlap
    assert token_windows(tok, text, seqlen=8, max_windows=2).shape == (2, 8)


def test_a_tokenizer_without_bos_keeps_gptqs_windows(tiny_lm):
    from workbench.evaluate import starts_with_bos

    assert not starts_with_bos(tiny_lm.tokenizer)


def _counting(monkeypatch, seconds=lambda size: 1.0 + size, fail_above=None):
    """Spy on the per-batch NLL on a fake clock: the sizes of the batches run, each taking
    `seconds(size)` (optionally failing as out of memory above a size)."""
    import types

    import workbench.evaluate as ev

    sizes, real, clock = [], ev._batch_nll, [0.0]

    def spy(model, split, batch):
        if fail_above is not None and batch.shape[0] > fail_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        sizes.append(batch.shape[0])
        clock[0] += seconds(batch.shape[0])
        return real(model, split, batch)

    monkeypatch.setattr(ev, "_batch_nll", spy)
    monkeypatch.setattr(ev, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(ev, "_auto_batch", {})
    return sizes


def test_auto_batch_size_scores_every_window_once_and_remembers_its_choice(tiny_lm, monkeypatch):
    from workbench.evaluate import auto_batch_sizes

    windows = torch.randint(0, 64, (40, 16), generator=torch.Generator().manual_seed(0))
    one_by_one = window_nll(tiny_lm.model, windows, batch_size=1, progress=False)
    sizes = _counting(monkeypatch, seconds=lambda size: 0.5 + size if size <= 4 else 2 * size)   # 4 fastest
    auto = window_nll(tiny_lm.model, windows, batch_size="auto", progress=False)
    assert sizes == [1, 1, 2, 4, 8] + [4] * 6                       # warm-up, trials up to the slower 8, then 4s
    assert torch.allclose(auto, one_by_one, rtol=1e-5)
    assert list(auto_batch_sizes().values()) == [4]
    sizes.clear()
    window_nll(tiny_lm.model, windows[:10], batch_size="auto", progress=False)   # remembered: no new trials
    assert sizes == [4, 4, 2]


def test_auto_batch_size_keeps_growing_while_larger_batches_are_faster(tiny_lm, monkeypatch):
    from workbench.evaluate import auto_batch_sizes

    sizes = _counting(monkeypatch)                                 # 1 + size seconds: larger is always faster
    window_nll(tiny_lm.model, torch.randint(0, 64, (40, 16)), batch_size="auto", progress=False)
    assert sizes == [1, 1, 2, 4, 8, 16, 8] and list(auto_batch_sizes().values()) == [16]


def test_auto_batch_size_backs_off_when_memory_runs_out(tiny_lm, monkeypatch):
    windows = torch.randint(0, 64, (30, 16), generator=torch.Generator().manual_seed(1))
    sizes = _counting(monkeypatch, fail_above=2)
    auto = window_nll(tiny_lm.model, windows, batch_size="auto", progress=False)
    assert sum(sizes) == 30 and max(sizes) == 2 and auto.shape == (30,)


def test_too_few_windows_to_decide_are_scored_but_not_remembered(tiny_lm, monkeypatch):
    from workbench.evaluate import auto_batch_sizes

    sizes = _counting(monkeypatch)
    window_nll(tiny_lm.model, torch.randint(0, 64, (5, 16)), batch_size="auto", progress=False)
    assert sizes == [1, 1, 2, 1] and auto_batch_sizes() == {}


@pytest.mark.parametrize("bad", [0, -2, 2.5, "fast", True])
def test_a_bad_batch_size_is_a_clear_error(tiny_lm, bad):
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        window_nll(tiny_lm.model, torch.zeros(2, 8, dtype=torch.long), batch_size=bad, progress=False)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_max_windows_must_be_a_positive_count(tiny_lm, bad):
    _, tokenizer, _ = tiny_lm
    with pytest.raises(ValueError, match="max_windows is a positive number"):
        token_windows(tokenizer, "w1 w2 " * 200, 16, max_windows=bad)
