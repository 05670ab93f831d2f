"""Token perplexity over non-overlapping windows, the convention of the GPTQ paper.

    from workbench.evaluate import perplexity
    ppl = perplexity(model, tokenizer, evaluation_text("lee"), seqlen=512)

The convention (GPTQ, Frantar et al. 2023, `datautils.py`/`llama_eval`): join the evaluation
documents with "\\n\\n", tokenize the whole string once, cut it into n = len // seqlen
non-overlapping windows (the tail that does not fill a window is dropped), run each window
with no context from the previous one, and report

    ppl = exp( sum of token NLLs / number of predicted tokens ),

where every window predicts its tokens 2..seqlen from the ones before (seqlen - 1 tokens each;
GPTQ's code multiplies each window's mean loss by seqlen instead, a difference of 1/seqlen in
the exponent). One departure: for a tokenizer that begins texts with BOS (Gemma, Llama-2) each
window is BOS plus seqlen - 1 tokens of text, as in lm-eval's rolling windows; GPTQ's code gives
BOS to the first window only, which costs Gemma about a nat per token on every other window. The number depends on the tokenizer and on `seqlen`: compare models that share
both. lm-eval's `word_perplexity` differs: it scores each document separately with rolling,
overlapping windows (every token gets up to max_length of context) and normalizes the total
log-likelihood by the number of *words*, not tokens, so it is comparable across tokenizers and
lower-context effects are smaller. Use lm-eval (workbench.abilities) when you need that.
"""

from __future__ import annotations

import json
import numbers
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from workbench.data import starts_with_bos
from workbench.modules import check_finite
from workbench.stats import perplexity_of


def join_documents(text: str | list[str] | tuple[str, ...]) -> str:
    """One evaluation string: `text` itself, or a list of documents joined with "\\n\\n" (GPTQ's convention)."""
    if isinstance(text, str):
        return text
    if isinstance(text, (list, tuple)) and text and all(isinstance(t, str) for t in text):
        return "\n\n".join(text)
    raise TypeError(f"text must be a string or a non-empty list of strings (documents), got "
                    f"{type(text).__name__}{' (empty)' if isinstance(text, (list, tuple)) and not text else ''}")


def token_windows(tokenizer, text: str | list[str], seqlen: int = 512, max_windows: int | None = None) -> torch.Tensor:
    """Tokenize `text` (or documents joined by `join_documents`) once and cut it into
    non-overlapping windows: LongTensor [n, seqlen]. For a tokenizer that begins texts with BOS
    (`starts_with_bos`) every window is BOS followed by the next seqlen - 1 tokens of the text,
    as lm-eval's rolling windows do: without it Gemma-3-270M reads the lee corpus about one nat
    per token worse. Every window predicts seqlen - 1 tokens either way."""
    if seqlen < 2:
        raise ValueError(f"seqlen must be at least 2 (one context token, one predicted), got {seqlen}")
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, numbers.Integral)
                                    or max_windows < 1):
        raise ValueError(f"max_windows is a positive number of windows, or None for the whole text; got {max_windows!r}")
    text = join_documents(text)
    ids = tokenizer(text, return_tensors="pt").input_ids[0]  # [n_tokens]
    bos = starts_with_bos(tokenizer)
    if bos:
        ids = ids[1:]                                         # the text alone; BOS goes before every window
    width = seqlen - 1 if bos else seqlen
    n = ids.numel() // width
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than one window of {seqlen}; "
                         "use a longer text or a smaller seqlen")
    windows = ids[: n * width].view(n, width)
    if bos:
        windows = torch.cat([torch.full((n, 1), tokenizer.bos_token_id, dtype=windows.dtype), windows], dim=1)
    return windows


LOGIT_CHUNK_ELEMENTS = 2 ** 26    # logits held at once by `window_nll`: 256 MB of float32 (1,365 tokens of
                                 # SmolLM2's 49,152-word vocabulary, 256 of Gemma-3's 262,144)


def _body_and_head(model: nn.Module):
    """(body, head, softcap) when `model`'s logits are head(body(ids)[0]) (capped by
    softcap·tanh(x/softcap) when softcap is set), as in every Hugging Face `*ForCausalLM`
    (Llama, Gemma, GPT-2, ...); None for anything else, which `window_nll` runs whole."""
    from transformers import PreTrainedModel

    if not (isinstance(model, PreTrainedModel) and type(model).__name__.endswith("ForCausalLM")):
        return None
    body = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or body is model or not isinstance(head, nn.Module):
        return None
    return body, head, getattr(model.config, "final_logit_softcapping", None)


def _batch_nll(model: nn.Module, split, batch: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each window of one batch [B, T] -> [B] float64 (on the CPU)."""
    targets = batch[:, 1:]                                                    # [B, T-1]
    if split is None:
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1]       # [B, T-1, V]
        nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    else:
        body, head, cap = split
        hidden = body(input_ids=batch, use_cache=False)[0][:, :-1]            # [B, T-1, H]
        flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        chunk = max(1, LOGIT_CHUNK_ELEMENTS // model.config.vocab_size)
        parts = []
        for c in range(0, flat_t.numel(), chunk):
            logits = head(flat_h[c : c + chunk]).float()                      # [chunk, V]
            if cap:
                logits = cap * torch.tanh(logits / cap)
            parts.append(F.cross_entropy(logits, flat_t[c : c + chunk], reduction="none"))
        nll = torch.cat(parts).view_as(targets)                               # [B, T-1]
    return nll.double().sum(dim=1).cpu()


AUTO_BATCH_SIZES = (1, 2, 4, 8, 16)   # what batch_size="auto" tries, in this order
AUTO_BATCH_SLOWER = 0.97              # stop trying larger batches once one runs below this share of the best rate
_auto_batch: dict[tuple, int] = {}    # (device, threads, model shape, seqlen) -> the batch size measured fastest


def _auto_key(model: nn.Module, device, seqlen: int) -> tuple:
    config = getattr(model, "config", None)
    shape = json.dumps(config.to_dict(), sort_keys=True, default=str) if hasattr(config, "to_dict") else type(model).__name__
    return (str(device), torch.get_num_threads(), shape, seqlen)


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


@torch.inference_mode()
def window_nll(model: nn.Module, windows: torch.Tensor, batch_size: int | str = 4,
               progress: bool = True) -> torch.Tensor:
    """Summed next-token NLL of each window: [n, seqlen] token ids -> [n] float64 nats.

    Windows are run `batch_size` at a time without a KV cache; each window predicts its own
    tokens 2..seqlen. For a Hugging Face causal LM the output head runs on the last hidden
    state a chunk of tokens at a time (`LOGIT_CHUNK_ELEMENTS`), so the [batch, seqlen, vocab]
    logits are never held whole: 400 MB for 4 windows of SmolLM2, 2.1 GB for Gemma-3. Any
    other model is run whole. `batch_size="auto"` measures: after one warm-up window it times
    batches of 1, 2, 4, ... windows (AUTO_BATCH_SIZES; every window scored counts, none is run
    twice), stops at the first that is slower per token than the best or runs out of memory,
    and runs the rest at the fastest; the choice is remembered for this device, thread count,
    model shape and seqlen (`auto_batch_sizes()`). The batch size changes no result beyond
    float summation order.
    """
    if not (batch_size == "auto" or (isinstance(batch_size, int) and not isinstance(batch_size, bool)
                                     and batch_size >= 1)):
        raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    device = next(model.parameters()).device
    split = _body_and_head(model)
    n = windows.shape[0]
    out: list[torch.Tensor] = []                                              # [B] per batch run
    done = 0                                                                  # windows scored so far
    bar = tqdm(total=n, desc="perplexity", unit="window", disable=not progress, leave=False)

    def run(size: int) -> None:
        nonlocal done
        out.append(_batch_nll(model, split, windows[done : done + size].to(device)))
        done += out[-1].shape[0]
        bar.update(out[-1].shape[0])

    if batch_size == "auto":
        key = _auto_key(model, device, windows.shape[1])
        if key not in _auto_batch and n > 1:
            run(1)                                                            # warm-up: lazy initialisation
            best, best_rate, decided = 1, 0.0, True
            for size in AUTO_BATCH_SIZES:
                if done + size > n:                                           # too few windows to decide
                    decided = False
                    break
                t0 = time.perf_counter()
                try:
                    run(size)
                except (RuntimeError, torch.OutOfMemoryError) as e:
                    if not _out_of_memory(e):
                        raise
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    break
                rate = size / (time.perf_counter() - t0)
                if rate > best_rate:
                    best, best_rate = size, rate
                elif rate < AUTO_BATCH_SLOWER * best_rate:
                    break
            if decided:
                _auto_batch[key] = best
            batch_size = best
        else:
            batch_size = _auto_batch.get(key, 1)
    while done < n:
        run(batch_size)
    bar.close()
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def auto_batch_sizes() -> dict[tuple, int]:
    """The batch sizes `window_nll(batch_size="auto")` measured in this process: {(device, threads,
    model config, seqlen): windows per batch}."""
    return dict(_auto_batch)


def perplexity(model: nn.Module, tokenizer, text: str | list[str], seqlen: int = 512, batch_size: int | str = "auto",
               max_windows: int | None = None, progress: bool = True) -> float:
    """Token perplexity of `model` on `text` over non-overlapping `seqlen` windows (see module doc).

    `text` is one string or a list of documents (joined with "\\n\\n"). `max_windows` keeps only
    the first windows, for quick looks; leave it None for the number a paper would report.
    `batch_size` is windows per forward pass, "auto" (the default) measures the fastest on this
    device (see `window_nll`). A model with a NaN or inf weight is an error naming the weight; a
    finite model whose predictions overflow (a broken quantization) gets inf, never a hidden number.
    """
    check_finite(model, why="its perplexity would be meaningless")
    windows = token_windows(tokenizer, text, seqlen, max_windows)
    nll = window_nll(model, windows, batch_size=batch_size, progress=progress)
    return perplexity_of(nll.sum().item(), windows.shape[0] * (seqlen - 1))


def perplexity_versions(record, tokenizer) -> dict:
    """What keys a perplexity point besides its arguments: the model's weights (`record.key`) and,
    for a tokenizer that begins texts with BOS, that every window starts with it (so that numbers
    from windows without it are never read back as these)."""
    return {"model": json.loads(json.dumps(record.key, default=str)),
            **({"windows": "BOS + seqlen - 1 tokens"} if starts_with_bos(tokenizer) else {})}


def perplexity_sweep(model: nn.Module, tokenizer, record, specs: dict, corpus: str = "lee",
                     seqlen: int = 512, max_windows: int | None = None, batch_size: int = 4,
                     calibration: dict | None = None, name: str = "perplexity", backend: str = "inprocess",
                     workers: int | None = None, snapshot: bool = False, return_windows: bool = False,
                     progress: bool = True):
    """Perplexity of `model` quantized by each spec, as a DataFrame: one point of the sweep
    `name` (workbench.experiments, measure `perplexity_point`) per spec, stored with every
    window's NLL as it finishes and read back on the next call.

    `specs` maps a label to a quantization spec (`QuantConfig`, {regex: config}, or a component
    spec {"linears": ..., "embeddings": QuantConfig or `FrequencyBits`}) or to None for the
    unquantized model. `record` is the ModelRecord from `load_model`, and `model` must be
    what `load_model(record.name)` gives (other processes load that name). `calibration` (e.g.
    {"n_samples": 16, "seqlen": 512, "seed": 0}) is drawn from `corpus` with
    `workbench.data.calibration_batch` and handed to `quantize_model` (GPTQ and channel
    outliers need it; with it the report also measures output error). The weights (record.key),
    the spec, the calibration, the corpus, `seqlen`, `max_windows` and `batch_size` key each point
    (the committed snapshots were made at batch 4, which stays the default here; "auto" works). Columns:
    label, bits, perplexity with its 95% bootstrap interval over windows (low, high; NaN with one
    window, inf when the perplexity overflows), the mean relative weight (and, with calibration, output) error over quantized
    modules, their number, the quantization time, the windows and the evaluated token count.
    With `snapshot=True` the records are the committed snapshot data/snapshots/<name>.json.gz
    (see workbench.experiments). With `return_windows=True` it returns (table, windows): one row
    per window (label, corpus, window, nll, tokens), for paired tests (`stats.paired_windows`).
    """
    import pandas as pd

    from workbench.experiments import provide, run_sweep
    from workbench.quant import spec_to_json

    provide(("model", "causal-lm", record.name), (model, tokenizer, record))
    points = [{"model": record.name, "spec": spec_to_json(spec), "corpus": corpus, "seqlen": seqlen,
               "max_windows": max_windows, "batch_size": batch_size,
               "calibration": calibration if spec is not None else None} for spec in specs.values()]
    records = run_sweep(points, perplexity_point, name, defaults=PERPLEXITY_DEFAULTS,
                        versions=perplexity_versions(record, tokenizer), backend=backend,
                        workers=workers, snapshot=name if snapshot else None, progress=progress)
    from workbench.stats import window_bounds

    rows, windows = [], []
    for (label, spec), r in zip(specs.items(), records):
        summary, items = r["summary"], r["items"]
        low, high = window_bounds(items)
        rows.append({"label": label, "bits": getattr(spec, "bits", None),   # None: unquantized or mixed
                     "perplexity": summary["perplexity"], "low": low, "high": high,
                     **{k: summary[k] for k in ("rel_weight_error", "rel_output_error",
                                                "quantized_modules", "quantize_time_s")},
                     "windows": summary["n_windows"], "tokens": summary["n_windows"] * seqlen})
        windows += [{"label": label, "corpus": corpus, **i} for i in items]
    table = pd.DataFrame(rows)
    if return_windows:
        return table, pd.DataFrame(windows, columns=["label", "corpus", "window", "nll", "tokens"])
    return table


def rerun_windows(point: dict, windows: list[int]) -> list[dict]:
    """Re-score some windows of a `perplexity_point` record from scratch: the model rebuilt and
    quantized as the point says, the NLL of each numbered window recomputed alone. Returns
    items in the record's format ({"window", "nll", "tokens"}), in window order."""
    from workbench.data import calibration_batch, evaluation_text
    from workbench.models import load_model
    from workbench.quant import quantize_for_spec, spec_from_json

    p = {**PERPLEXITY_DEFAULTS, **point}
    model, tokenizer, _ = load_model(p["model"])
    if p["spec"] is not None:
        calib = calibration_batch(tokenizer, **{"corpus": p["corpus"], **p["calibration"]}) if p["calibration"] else None
        model, _ = quantize_for_spec(model, spec_from_json(p["spec"]), calibration=calib, tokenizer=tokenizer)
    seqs = token_windows(tokenizer, evaluation_text(p["corpus"]), p["seqlen"], p["max_windows"])
    index = sorted(int(w) for w in windows)
    if index and not 0 <= index[0] <= index[-1] < len(seqs):
        raise ValueError(f"windows {index} outside the {len(seqs)} windows of {p['corpus']!r}")
    nll = window_nll(model, seqs[index], batch_size=p["batch_size"], progress=False)
    return [{"window": i, "nll": float(v), "tokens": p["seqlen"] - 1} for i, v in zip(index, nll.tolist())]


# ----------------------------------------------------------------------------- a sweep measure

PERPLEXITY_DEFAULTS = {          # every argument of `perplexity_point`, spelled out for its sweep key
    "spec": None,                # workbench.quant.spec_to_json of the quantization; None: unquantized
    "corpus": "lee",             # workbench.data corpus whose evaluation split is scored
    "seqlen": 512,               # window length in tokens
    "max_windows": None,         # None: the whole evaluation split
    "calibration": None,         # calibration_batch arguments (GPTQ, channel outliers), e.g. {"n_samples": 16}
    "batch_size": 4,             # windows per forward pass (does not change the result)
}


def perplexity_point(point: dict) -> dict:
    """A `workbench.experiments` measure: token perplexity of `point["model"]` quantized by
    `point["spec"]`, with one item per window (its summed NLL and predicted tokens), so that the
    perplexity, an interval over windows or a paired comparison can be recomputed from the
    record and any window re-run alone. The summary adds the quantization report's means
    (rel_weight_error, rel_output_error with calibration), the number of quantized modules and
    the quantization time. Run it with `defaults=PERPLEXITY_DEFAULTS`; the model is loaded once
    per process. For a local model folder pass `versions={"model": record.key}`, so that new
    weights make new keys."""
    import pandas as pd

    from workbench.data import calibration_batch, evaluation_text
    from workbench.experiments import loaded
    from workbench.models import load_model
    from workbench.quant import quantize_for_spec, spec_from_json

    p = {**PERPLEXITY_DEFAULTS, **point}
    model, tokenizer, _ = loaded(("model", "causal-lm", p["model"]), lambda: load_model(p["model"]))
    quant = {"rel_weight_error": float("nan"), "rel_output_error": float("nan"), "quantized_modules": 0,
             "quantize_time_s": 0.0}
    if p["spec"] is not None:
        calib = calibration_batch(tokenizer, **{"corpus": p["corpus"], **p["calibration"]}) if p["calibration"] else None
        t0 = time.perf_counter()
        model, report = quantize_for_spec(model, spec_from_json(p["spec"]), calibration=calib, tokenizer=tokenizer)
        if report is None:                            # a component spec that quantizes nothing
            report = pd.DataFrame({"rel_weight_error": []})
        quant = {"rel_weight_error": float(report.rel_weight_error.mean()),
                 "rel_output_error": float(report["rel_output_error"].mean()) if "rel_output_error" in report
                 else float("nan"),
                 "quantized_modules": len(report), "quantize_time_s": time.perf_counter() - t0}
    windows = token_windows(tokenizer, evaluation_text(p["corpus"]), p["seqlen"], p["max_windows"])
    check_finite(model, why="its perplexity would be meaningless")
    nll = window_nll(model, windows, batch_size=p["batch_size"], progress=False)
    tokens = windows.shape[0] * (p["seqlen"] - 1)
    mean = nll.sum().item() / tokens
    return {"summary": {"perplexity": perplexity_of(nll.sum().item(), tokens), "nll_per_token": mean,
                        "n_windows": windows.shape[0], "tokens": tokens, **quant},
            "items": [{"window": i, "nll": float(v), "tokens": p["seqlen"] - 1} for i, v in enumerate(nll.tolist())]}
