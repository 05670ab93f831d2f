"""Text corpora for calibration and evaluation, with a fixed split and a GPTQ-style sampler.

    from workbench.data import CORPORA, load_corpus, evaluation_text, calibration_batch

    docs = load_corpus("wiki")                      # list[str], one cleaned article each
    text = evaluation_text("lee")                   # evaluation documents joined with "\\n\\n"
    calib = calibration_batch(tokenizer, "lee", n_samples=128, seqlen=512, seed=0)  # [128, 512]
    df = load_polarity()                            # 200 movie-review sentences, label 0/1

Every corpus comes from a pinned PyPI artifact (see workbench.assets), so there is no download
from a dataset hub and the text is the same on every machine:

    lee      Australian news articles (gensim's lee_background.cor), one per line; 300 with 7 repeats
    wiki     Wikipedia articles from gensim's shortened enwiki XML dump, wiki markup stripped
    botchan  Natsume Soseki's novel (Gutenberg English translation), paragraphs grouped into
             documents of at least ~1,000 characters
    text8    gensim's head500.noblanks.cor: lowercase *stemmed* words, one article per line

A document is whitespace-normalized text: runs of spaces inside a line become one space, lines
are stripped, blank lines are dropped, and the remaining lines (paragraphs, headings) are joined
with "\\n". Empty documents and exact repeats of an earlier document are dropped (lee has 7
repeated articles, so it yields 293 documents).

The split is fixed by document position and never changes: document i is in "evaluation" when
i % 5 == 4 (indices 4, 9, 14, ...) and in "calibration" otherwise, so the two never overlap,
together cover the corpus, and evaluation holds ~20% of it. Calibrate a quantizer on the
calibration split and measure perplexity on the evaluation split; never the other way round.

`calibration_batch` is the GPTQ calibration sampler (Frantar et al. 2023, `datautils.py`):
tokenize the calibration text once, draw `n_samples` uniform random start offsets from a seeded
generator and cut a window of `seqlen` tokens at each.
"""

from __future__ import annotations

import bz2
import functools
import html
import re
import xml.etree.ElementTree as ET

import torch

from workbench.assets import fetch

CORPORA: dict[str, str] = {
    "lee": "news: Australian news articles (Lee et al. 2005, as shipped with gensim; 293 distinct of 300)",
    "wiki": "cleaned Wikipedia: main-namespace articles of gensim's enwiki sample, markup stripped",
    "botchan": "prose: Botchan by Natsume Soseki (English, public domain), ~1,000-char documents",
    "text8": "text8-style words: gensim's head500 (lowercase, stemmed, no punctuation), one article per line",
}

SPLITS = ("calibration", "evaluation")
EVAL_EVERY = 5  # document i is in the evaluation split when i % EVAL_EVERY == EVAL_EVERY - 1

GENSIM_DIR = "gensim/test/test_data"
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
BOTCHAN_FILE = "sentencepiece-0.2.3/test/botchan.txt"
BOTCHAN_DOC_CHARS = 1000  # group consecutive paragraphs until a document has this many characters
BOTCHAN_WIDTH = 72        # the hard-wrap width of the Gutenberg text


# -----------------------------------------------------------------------------
# whitespace


def normalize_whitespace(text: str) -> str:
    """Collapse runs of spaces inside each line, strip lines, drop blank ones, join with "\\n"."""
    lines = (re.sub(r"[^\S\n]+", " ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


# -----------------------------------------------------------------------------
# Wikipedia: MediaWiki XML dump -> plain prose

# title prefixes of the non-article namespaces in an English Wikipedia dump
WIKI_NAMESPACES = {
    "Media", "Special", "Talk", "User", "User talk", "Wikipedia", "Wikipedia talk", "WP", "Project",
    "File", "File talk", "Image", "MediaWiki", "MediaWiki talk", "Template", "Template talk",
    "Help", "Help talk", "Category", "Category talk", "Portal", "Portal talk", "Book", "Book talk",
    "Draft", "Draft talk", "Education Program", "Education Program talk", "TimedText",
    "TimedText talk", "Module", "Module talk", "Gadget", "Gadget talk", "Gadget definition",
    "Gadget definition talk", "Topic",
}
DROP_LINKS = ("file", "image", "media", "category")   # [[File:...]] etc. vanish with their caption
DROP_TAGS = ("ref", "math", "gallery", "timeline", "source", "syntaxhighlight", "score",
             "imagemap", "references", "chem", "ce", "hiero", "graph", "templatedata")
DISAMBIGUATION = re.compile(r"\{\{\s*(?:disambig\w*|dab|[a-z]*dis)\s*[|}]", re.IGNORECASE)  # {{geodis}} ...
HEADING = "\x00"  # marks heading lines inside clean_wikitext until empty sections are dropped


def _innermost(text: str, open_: str, close: str, repl) -> str:
    """Replace innermost open_...close spans (containing neither delimiter) until none are left."""
    o, c = re.escape(open_), re.escape(close)
    pattern = re.compile(f"{o}((?:(?!{o}|{c}).)*){c}", re.DOTALL)
    while True:
        text, n = pattern.subn(repl, text)
        if n == 0:
            return text


def _wikilink(m: re.Match) -> str:
    """[[target|label]] -> label, [[target]] -> target, [[File:...]] and [[de:...]] -> ''."""
    target, _, label = m.group(1).partition("|")
    target = target.strip().lstrip(":")
    prefix = target.partition(":")[0].strip().lower() if ":" in target else ""
    if prefix in DROP_LINKS:
        return ""
    if not label and re.fullmatch(r"[a-z][a-z\-]{1,11}", prefix):  # interlanguage link [[de:X]]
        return ""
    return (label or target).strip()


def clean_wikitext(text: str) -> str:
    """Strip MediaWiki markup from one article's wikitext and return plain prose.

    Removes comments, <ref>s and other non-prose tags with their content (math, gallery, ...),
    remaining HTML tags (keeping their text), templates {{...}} (nested, innermost first),
    tables {| ... |}, [[File:/Image:/Category:...]] links including their captions, and bold and
    italic quotes; turns [[target|label]] into label, [[target]] into target, [http://x label]
    into label, and "== Heading ==" into the heading text on its own line. Lines that are
    list or table debris are dropped, as are headings whose section ends up empty. The result
    is whitespace-normalized: one paragraph or heading per line, joined with "\\n". Markup left
    unbalanced by a truncated article is removed too, so no "{{", "[[", "'''" or "<ref" remains.
    """
    t = text.replace("\r\n", "\n")
    t = re.sub(r"<!--.*?(?:-->|$)", "", t, flags=re.DOTALL)                       # comments
    for tag in DROP_TAGS:                                                        # tags + content
        t = re.sub(rf"<{tag}\b[^>]*/>", "", t, flags=re.IGNORECASE)
        t = re.sub(rf"<{tag}\b[^>]*>.*?(?:</{tag}\s*>|$)", "", t, flags=re.IGNORECASE | re.DOTALL)
    t = re.sub(r"<br\s*/?>", "\n", t, flags=re.IGNORECASE)
    t = re.sub(r"</?[a-zA-Z][^<>]*>", "", t)                                     # other tags
    t = _innermost(t, "{{", "}}", "")                                            # templates
    t = _innermost(t, "{|", "|}", "")                                            # tables
    t = re.sub(r"\{\{.*", "", t, flags=re.DOTALL)   # a template left open by truncation: drop rest
    t = _innermost(t, "[[", "]]", _wikilink)                                     # links
    t = re.sub(r"\[(?:https?:|ftp:)?//[^\s\]]*\s*([^\]]*)\]", r"\1", t)        # [http://x label]
    t = re.sub(r"'{2,}", "", t)                                                  # bold, italic
    t = re.sub(r"__[A-Z]+__", "", t)                                             # __NOTOC__ ...
    t = re.sub(r"^(={1,6})\s*(.*?)\s*\1\s*$", HEADING + r"\2", t, flags=re.MULTILINE)
    t = html.unescape(t)                                                         # &nbsp; &ndash;

    lines = []
    for line in t.split("\n"):
        line = line.strip()
        if not line or line[0] in "*#;|!{}[]" or line.startswith(("=", "<", "}}", "]]")):
            continue                                                             # list/table debris
        line = line.lstrip(":").strip()                                          # indentation
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line)                              # "()" left by templates
        line = re.sub(r"\(\s*[,;]\s*", "(", line)
        line = re.sub(r"\s+([,.;:!?)])", r"\1", line)                            # " ," -> ","
        line = line.replace("{{", "").replace("}}", "").replace("[[", "").replace("]]", "")
        if line.strip(HEADING + " "):
            lines.append(line)
    # drop headings whose section is empty (References, See also, External links, ...)
    kept = [line for i, line in enumerate(lines)
            if not line.startswith(HEADING) or (i + 1 < len(lines) and not lines[i + 1].startswith(HEADING))]
    return normalize_whitespace("\n".join(line.lstrip(HEADING) for line in kept))


def _wiki_articles(path) -> list[tuple[str, str]]:
    """(title, wikitext) of the main-namespace articles of a bz2 MediaWiki dump.

    Skips redirects, pages outside namespace 0 or with a namespace prefix, and disambiguation
    pages (lists of links that clean to almost nothing).
    """
    out = []
    with bz2.open(path, "rb") as f:
        for _, elem in ET.iterparse(f, events=("end",)):
            if elem.tag.rpartition("}")[2] != "page":
                continue
            fields = {child.tag.rpartition("}")[2]: child for child in elem.iter()}  # drop the xmlns
            title = fields["title"].text or ""
            text = fields["text"].text if "text" in fields else ""
            in_main = (fields["ns"].text or "").strip() == "0"
            is_article = in_main and title.partition(":")[0] not in WIKI_NAMESPACES
            is_redirect = "redirect" in fields or re.match(r"\s*#redirect", text or "", re.IGNORECASE)
            is_disambiguation = re.search(DISAMBIGUATION, text or "") is not None  # lists of links
            if is_article and not is_redirect and not is_disambiguation and text:
                out.append((title, text))
            elem.clear()
    return out


# -----------------------------------------------------------------------------
# Botchan: hard-wrapped Gutenberg text -> paragraphs -> ~1,000-character documents


def _paragraphs(lines: list[str], width: int = BOTCHAN_WIDTH) -> list[str]:
    """Re-join hard-wrapped lines into paragraphs.

    A blank line ends a paragraph. This file has none, so a line also ends its paragraph when the
    next line's first word would have fitted on it within the wrap width (the wrapper would have
    put it there) and the line ends a sentence or is short (a heading); that catches the short
    last lines of paragraphs, dialogue and headings.
    """
    paras, current = [], []
    for i, line in enumerate(lines):
        line = line.strip()
        if line:
            current.append(line)
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        fits = bool(nxt) and len(line) + 1 + len(nxt.split()[0]) <= width
        ends = line.endswith((".", "!", "?", '"', "'", ")", ":", "-")) or len(line) < width // 2
        if current and (not line or not nxt or (fits and ends)):
            paras.append(" ".join(current))
            current = []
    return paras


def _botchan_documents(text: str) -> list[str]:
    lines = text.lstrip("\ufeff").splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("*** START OF")) + 1
    end = next(i for i, l in enumerate(lines) if l.startswith("*** END OF"))
    end = next((i + 1 for i, l in enumerate(lines[:end]) if l.strip() == "--(THE END)--"), end)
    body = [l for l in lines[start:end] if not l.startswith("Produced by")]  # Gutenberg credits line
    docs, current = [], []
    for para in _paragraphs(body):
        para = re.sub(r"\[[A-Z]\]", "", para)  # transcriber's markers "Hello[H]" (notes dropped above)
        current.append(para)
        if sum(len(p) for p in current) >= BOTCHAN_DOC_CHARS:
            docs.append("\n".join(current))
            current = []
    if current:  # a short tail joins the last document
        docs[-1] += "\n" + "\n".join(current)
    return docs


# -----------------------------------------------------------------------------
# corpora and the fixed split


def _gensim_file(filename: str):
    return fetch("gensim-data") / GENSIM_DIR / filename


@functools.lru_cache(maxsize=None)
def _documents(name: str) -> tuple[str, ...]:
    if name == "lee":
        raw = _gensim_file("lee_background.cor").read_text(encoding="utf-8").splitlines()
    elif name == "wiki":
        raw = [clean_wikitext(text) for _, text in _wiki_articles(_gensim_file(WIKI_FILE))]
    elif name == "botchan":
        raw = _botchan_documents((fetch("botchan") / BOTCHAN_FILE).read_text(encoding="utf-8"))
    elif name == "text8":  # 250 lines of ~1,300 words each (98 to 6,610): a line is a document
        raw = _gensim_file("head500.noblanks.cor").read_text(encoding="utf-8").splitlines()
    else:
        raise ValueError(f"unknown corpus {name!r}; known corpora: {', '.join(CORPORA)}")
    docs = (normalize_whitespace(d) for d in raw)
    return tuple(dict.fromkeys(d for d in docs if d))  # drop empty and repeated documents, keep order


def load_corpus(name: str) -> list[str]:
    """The documents of corpus `name` (a key of CORPORA), whitespace-normalized, empty ones dropped.

    Documents keep the file's order, which is what the fixed split indexes. A document that
    repeats an earlier one exactly is dropped (lee_background.cor holds 7 such repeats, so "lee"
    has 293 documents, not 300), so that one article cannot land in both splits. The corpus is
    read and cleaned once per process (cached); each call returns a fresh list, so callers may
    mutate it. An unknown name raises ValueError listing the known corpora.
    """
    return list(_documents(name))


def load_split(name: str, split: str) -> list[str]:
    """The "calibration" or "evaluation" documents of corpus `name`, a fixed split by position.

    Document i goes to "evaluation" when i % 5 == 4 (indices 4, 9, 14, ...) and to "calibration"
    otherwise. The split depends only on document order, never on a seed, so it never changes
    between runs or machines; the two parts never overlap and together cover the corpus, with
    ~20% of the documents in evaluation. A split name other than the two raises ValueError.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    is_eval = split == "evaluation"
    return [d for i, d in enumerate(_documents(name)) if (i % EVAL_EVERY == EVAL_EVERY - 1) == is_eval]


def evaluation_text(name: str = "lee") -> str:
    """The evaluation documents of corpus `name` joined with "\\n\\n" into one string.

    This is the GPTQ/WikiText-2 convention: the whole test set is one text, tokenized once and
    cut into windows by the perplexity code (workbench.evaluate.perplexity).
    """
    return "\n\n".join(load_split(name, "evaluation"))


def calibration_text(name: str = "lee") -> str:
    """The calibration documents of corpus `name` joined with "\\n\\n" into one string.

    The counterpart of `evaluation_text` for the calibration split; `calibration_batch` samples
    its windows from the tokenized form of this string.
    """
    return "\n\n".join(load_split(name, "calibration"))


# -----------------------------------------------------------------------------
# GPTQ calibration sampler


class _ByName:
    """A tokenizer wrapped so that lru_cache keys on its class, name_or_path and vocab size."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.key = (type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), len(tokenizer))

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _ByName) and self.key == other.key


@functools.lru_cache(maxsize=32)
def _cached_tokens(tok: _ByName, corpus: str) -> torch.Tensor:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # silence "sequence length is longer than the maximum": we cut windows
    try:
        ids = tok.tokenizer(calibration_text(corpus), add_special_tokens=False).input_ids
    finally:
        hf_logging.set_verbosity(level)
    return torch.tensor(ids, dtype=torch.long)  # [n_tokens]


def _token_stream(tokenizer, corpus: str) -> torch.Tensor:
    """The calibration text of `corpus` tokenized without special tokens: LongTensor [n_tokens]."""
    tok = _ByName(tokenizer)
    if not tok.key[1]:  # a tokenizer without a name could collide with another one: don't cache
        return _cached_tokens.__wrapped__(tok, corpus)
    return _cached_tokens(tok, corpus)


def starts_with_bos(tokenizer) -> bool:
    """Whether `tokenizer` begins every text with its BOS token (Gemma, Llama-2; not SmolLM2 or
    GPT-2). Such models are trained to see BOS first, and `evaluate.token_windows` and
    `calibration_batch` give each window one."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def calibration_batch(tokenizer, corpus: str = "lee", n_samples: int = 128, seqlen: int = 512,
                      seed: int = 0) -> torch.Tensor:
    """Sample GPTQ calibration windows from the calibration split: LongTensor [n_samples, seqlen].

    Tokenizes `calibration_text(corpus)` once (no special tokens; cached per tokenizer
    name_or_path and corpus), draws `n_samples` start offsets uniformly from
    [0, n_tokens - seqlen] with `torch.Generator().manual_seed(seed)`, and returns the token
    windows starting there (windows may overlap); for a tokenizer that begins texts with BOS
    (`starts_with_bos`: Gemma) each window is BOS and seqlen - 1 tokens, as the model is run. The
    same seed gives the same tensor on every run. Raises ValueError when n_samples < 1, seqlen < 2, or the corpus has fewer than
    seqlen + 1 tokens.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if seqlen < 2:
        raise ValueError(f"seqlen must be at least 2, got {seqlen}")
    ids = _token_stream(tokenizer, corpus)  # [n_tokens]
    n_tokens = ids.numel()
    if n_tokens < seqlen + 1:
        raise ValueError(f"the calibration split of corpus {corpus!r} has only {n_tokens} tokens, fewer "
                         f"than seqlen + 1 = {seqlen + 1}; lower seqlen or choose a larger corpus "
                         f"({', '.join(CORPORA)})")
    bos = starts_with_bos(tokenizer)
    width = seqlen - 1 if bos else seqlen                  # with BOS first, as the model will be run
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n_tokens - width + 1, (n_samples,), generator=g)   # [n_samples]
    index = starts[:, None] + torch.arange(width)                               # [n_samples, width]
    windows = ids[index]
    if bos:
        windows = torch.cat([torch.full((n_samples, 1), tokenizer.bos_token_id, dtype=windows.dtype), windows], dim=1)
    return windows                                                               # [n_samples, seqlen]


# -----------------------------------------------------------------------------
# sentiment


@functools.lru_cache(maxsize=None)
def _polarity_rows() -> tuple[tuple[str, int], ...]:
    rows = []
    text = _gensim_file("pang_lee_polarity.cor").read_text(encoding="cp1252")  # not UTF-8: 0x97 is "—"
    for line in text.splitlines():
        if not line.strip():
            continue
        tag, _, text = line.partition(" ")
        if tag not in ("__label__neg", "__label__pos"):
            raise ValueError(f"pang_lee_polarity.cor: unexpected label {tag!r} in line {line[:60]!r}")
        rows.append((" ".join(text.split()), int(tag == "__label__pos")))
    return tuple(rows)


def load_polarity():
    """The 200 Pang & Lee movie-review sentences as a DataFrame with columns text (str), label (int).

    Each line of pang_lee_polarity.cor is fastText-style, "__label__neg <text>" or
    "__label__pos <text>"; label is 1 for pos and 0 for neg. The text is lowercase and
    pre-tokenized (punctuation split off by spaces); only its whitespace is normalized. The file
    is Windows-1252 encoded (em dashes, accented letters), not UTF-8. Rows keep the file order,
    which is 100 negative sentences followed by 100 positive ones, so shuffle before splitting.
    """
    import pandas as pd

    return pd.DataFrame(list(_polarity_rows()), columns=["text", "label"])


CLASSIFICATION_SETS = {
    "polarity": "the 200 Pang & Lee movie-review sentences (neg 0 / pos 1)",
    "sports_understanding": "BIG-bench sports_understanding: 1,000 sentences about athletes "
                            "(implausible 0 / plausible 1)",
    "navigate": "BIG-bench navigate: 1,000 sequences of steps and turns; do they return to the "
                "start? (False 0 / True 1)",
}
BIGBENCH_LABELS = {"sports_understanding": ("implausible", "plausible"), "navigate": ("False", "True")}


def classification_data(name: str = "polarity"):
    """A labelled sentence set as a DataFrame with columns text (str) and label (int 0..k-1).
    Names: see CLASSIFICATION_SETS. The BIG-bench sets are the task's examples in file order,
    each input with the index in BIGBENCH_LABELS of its correct target."""
    import pandas as pd

    if name not in CLASSIFICATION_SETS:
        raise ValueError(f"unknown classification set {name!r}; known: {', '.join(CLASSIFICATION_SETS)}")
    if name == "polarity":
        return load_polarity()
    labels = BIGBENCH_LABELS[name]
    rows = [(normalize_whitespace(e["input"]), labels.index(bigbench_answer(e["target_scores"])))
            for e in bigbench_examples(name)]
    return pd.DataFrame(rows, columns=["text", "label"])


# -----------------------------------------------------------------------------
# BIG-bench JSON tasks (the bigbench asset); the lm-eval ability tasks built from them: workbench.abilities.tasks

BIGBENCH_DIR = "bigbench-1.0.0/bigbench/benchmark_tasks"


def bigbench_examples(task: str) -> list[dict]:
    """The examples of one BIG-bench JSON task (e.g. "arithmetic/2_digit_addition"), file order."""
    import json

    path = fetch("bigbench") / BIGBENCH_DIR / task / "task.json"
    if not path.exists():
        raise ValueError(f"BIG-bench task {task!r} is not in the bigbench asset; add its folder to "
                         "the asset's members in workbench/assets.py")
    return json.loads(path.read_text())["examples"]


def bigbench_answer(scores: dict) -> str:
    """The correct target of a multiple-choice BIG-bench example: the key of `target_scores` scored 1."""
    return next(k for k, v in scores.items() if v == 1)
