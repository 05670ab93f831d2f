"""Intervals and paired tests for the numbers the workbench reports (stdlib and numpy only).

    from workbench.stats import wilson_interval, bootstrap_interval, perplexity_interval, mcnemar_test
    wilson_interval(22, 40)                    # (0.55, 0.398, 0.693): estimate and its 95% interval
    perplexity_interval(nll, tokens)           # per-window NLL sums and token counts -> (ppl, low, high)
    mcnemar_test(base_correct, quant_correct)  # the same items scored by two models: exact, two-sided
    paired_bootstrap(a, b)                     # mean difference of paired values, its interval and p
    paired_seeds(a_by_seed, b_by_seed)         # the same over seeds: a two-level bootstrap (seeds, then items)

Accuracies get Wilson score intervals (Wilson 1927; good coverage at small n and near 0 or 1,
where the normal approximation fails). Perplexity and any other mean get percentile bootstrap
intervals over the units that were scored independently (windows, items, seeds), resampled with
a seeded generator, so the same records give the same interval. "A beats B" on the same items
is a paired question: exact McNemar on the discordant items for 0/1 outcomes, the paired
bootstrap of the differences otherwise. Every function returns plain floats.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """(successes / n, low, high): the Wilson score interval of a proportion."""
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive whole number of items, got {n!r}")
    if int(successes) != successes or not 0 <= successes <= n:
        raise ValueError(f"successes must be a whole number from 0 to n={n}, got {successes!r}")
    z, p = _z(confidence), successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def _resample(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Indices [n_resamples, n] drawn with replacement from a seeded generator."""
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be at least 100 for a 95% interval, got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def bootstrap_interval(values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean,
                       confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(statistic(values), low, high): the percentile bootstrap interval of `statistic` (default:
    the mean) over independently scored units (items, windows, seeds)."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) < 2 or not np.isfinite(x).all():
        raise ValueError(f"values must be at least 2 finite numbers, got {len(np.atleast_1d(x))} "
                         f"({'with NaN or inf' if x.size and not np.isfinite(x).all() else 'too few'})")
    _z(confidence)
    idx = _resample(len(x), n_resamples, seed)
    stats = np.apply_along_axis(statistic, 1, x[idx]) if statistic is not np.mean else x[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(statistic(x)), float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def perplexity_of(nll: float, tokens: float) -> float:
    """exp(nll / tokens): the perplexity of a summed NLL (nats) over `tokens` predicted tokens;
    inf, not an OverflowError, when the mean NLL is past what a float holds (a broken quantization)."""
    if not tokens > 0:
        raise ValueError(f"a perplexity needs a positive token count, got {tokens!r}")
    if math.isnan(nll):
        raise ValueError("the NLL is NaN: the model's logits held NaN (or inf of both signs); check the quantized "
                         "weights with modules.check_finite and the activations for overflow")
    if nll < 0:
        raise ValueError(f"an NLL is at least 0, got {nll!r}: was a log-likelihood passed? negate it")
    mean = float(nll) / float(tokens)
    return math.exp(mean) if mean < 700 else math.inf


def perplexity_interval(nll: Sequence[float], tokens: Sequence[int] | int, confidence: float = 0.95,
                        n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(perplexity, low, high) from per-window summed NLLs (nats) and predicted-token counts (one
    count or one per window): exp(sum nll / sum tokens), bootstrapped over windows (a ratio of
    sums, so longer windows weigh more). These are the items of `evaluate.perplexity_point`."""
    nll = np.asarray(nll, dtype=float)
    tok = np.asarray(tokens, dtype=float)
    if tok.ndim and tok.shape != nll.shape:
        raise ValueError(f"tokens: one count, or one per window (got {tok.size} for {nll.size} windows)")
    tok = np.broadcast_to(tok, nll.shape)
    if nll.ndim != 1 or len(nll) < 2:
        raise ValueError(f"need the NLL of at least 2 windows for an interval, got {nll.size}")
    if (nll < 0).any():
        raise ValueError("an NLL is at least 0, and some are negative: were log-likelihoods passed? negate them")
    if not (np.isfinite(nll).all() and (tok > 0).all()):
        raise ValueError("every window needs a finite NLL and a positive token count")
    _z(confidence)
    idx = _resample(len(nll), n_resamples, seed)
    ratios = nll[idx].sum(axis=1) / tok[idx].sum(axis=1)
    alpha = (1 - confidence) / 2
    return (perplexity_of(nll.sum(), tok.sum()), perplexity_of(float(np.quantile(ratios, alpha)), 1),
            perplexity_of(float(np.quantile(ratios, 1 - alpha)), 1))


def window_bounds(windows: Sequence[dict], confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) of the perplexity of per-window records ({"nll", "tokens"}, as a perplexity
    sweep stores them; a DataFrame with those columns will do): `perplexity_interval`'s bootstrap;
    (inf, inf) when the perplexity itself is infinite (an NLL past a float's range); NaN, NaN with
    fewer than two windows."""
    if hasattr(windows, "to_dict"):                                  # a DataFrame of the same records
        windows = windows.to_dict("records")
    if len(windows) < 2:
        return float("nan"), float("nan")
    nll, tokens = [w["nll"] for w in windows], [w["tokens"] for w in windows]
    if math.isinf(perplexity_of(sum(nll), sum(tokens))):            # (a NaN NLL is an error there)
        return math.inf, math.inf
    return perplexity_interval(nll, tokens, confidence)[1:]


def _binary(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1 or not np.isin(a, (0.0, 1.0)).all():
        raise ValueError(f"{name} must be a list of 0/1 (or False/True) outcomes, one per item")
    return a.astype(bool)


def mcnemar_test(a: Sequence[int | bool], b: Sequence[int | bool]) -> dict:
    """Exact two-sided McNemar test of two models' 0/1 outcomes on the same items (item i of `a`
    and of `b` is the same item): only the discordant items count; under the null each is as
    likely to favour either model, so the p-value is a two-sided binomial(n_discordant, 1/2) tail.
    Returns {"n", "a_only" (items only `a` got right), "b_only", "p_value", "difference" (mean a - mean b)}."""
    a, b = _binary(a, "a"), _binary(b, "b")
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"a and b must score the same items: got {len(a)} and {len(b)} outcomes")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    m, k = a_only + b_only, min(a_only, b_only)
    p = 1.0 if m == 0 else min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m)
    return {"n": len(a), "a_only": a_only, "b_only": b_only, "p_value": p,
            "difference": float(a.mean() - b.mean())}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000,
                     seed: int = 0) -> dict:
    """Mean of a - b over paired units (the same items, windows or seeds), its percentile bootstrap
    interval, and a two-sided bootstrap p-value for "no difference" (twice the share of resampled
    means on the other side of zero, counted as (k + 1) / (n_resamples + 1) so that it is never 0:
    with 10,000 resamples the smallest p is 2e-4). Returns {"n", "difference", "low", "high", "p_value"}."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be paired: got shapes {a.shape} and {b.shape}")
    d = a - b
    est, low, high = bootstrap_interval(d, confidence=confidence, n_resamples=n_resamples, seed=seed)
    if not d.any():
        return {"n": len(d), "difference": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}
    means = d[_resample(len(d), n_resamples, seed)].mean(axis=1)
    k = min((means <= 0).sum(), (means >= 0).sum())
    p = min(1.0, 2 * (k + 1) / (n_resamples + 1))
    return {"n": len(d), "difference": est, "low": low, "high": high, "p_value": float(p)}


def unpaired_bootstrap(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000,
                       seed: int = 0) -> dict:
    """Mean of `a` minus mean of `b` for two independent samples (units that cannot be paired: two
    models' windows cut by different tokenizers, say), each resampled on its own; the percentile
    bootstrap interval and a two-sided bootstrap p-value for "no difference", as in
    `paired_bootstrap`. Returns {"n" (a's, b's), "difference", "low", "high", "p_value"}."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    for name, v in (("a", x), ("b", y)):
        if v.ndim != 1 or len(v) < 2 or not np.isfinite(v).all():
            raise ValueError(f"{name} must be at least 2 finite numbers, got {v.size}")
    _z(confidence)
    means = (x[_resample(len(x), n_resamples, seed)].mean(axis=1)
             - y[_resample(len(y), n_resamples, seed + 1)].mean(axis=1))
    alpha = (1 - confidence) / 2
    k = min((means <= 0).sum(), (means >= 0).sum())
    return {"n": (len(x), len(y)), "difference": float(x.mean() - y.mean()),
            "low": float(np.quantile(means, alpha)), "high": float(np.quantile(means, 1 - alpha)),
            "p_value": float(min(1.0, 2 * (k + 1) / (n_resamples + 1)))}


def paired_outcomes(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Two models' scores on the same items: the mean difference a - b with its paired bootstrap
    interval, and the p-value of the exact McNemar test when every score is 0 or 1 (else the
    bootstrap's). Returns {"n", "difference", "low", "high", "p_value", "test"}."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    boot = paired_bootstrap(x, y, confidence=confidence)
    binary = set(x) | set(y) <= {0.0, 1.0}
    p, test = (mcnemar_test(x, y)["p_value"], "exact McNemar") if binary else (boot["p_value"], "paired bootstrap")
    return {"n": boot["n"], "difference": boot["difference"], "low": boot["low"], "high": boot["high"],
            "p_value": p, "test": test}


def _groups(groups, name: str) -> list[np.ndarray]:
    if hasattr(groups, "ngroups") or hasattr(groups, "columns"):      # a pandas groupby, or a wide DataFrame
        raise TypeError(f"{name} is a list of per-seed lists of per-item values, e.g. "
                        "[g.tolist() for _, g in df.groupby('seed').correct]; got a pandas "
                        f"{type(groups).__name__}")
    out = [np.asarray(g, dtype=float) for g in groups]
    if len(out) < 2 or any(g.ndim != 1 or len(g) < 1 or not np.isfinite(g).all() for g in out):
        raise ValueError(f"{name} must hold at least 2 seeds, each a non-empty list of finite per-item values")
    return out


def seeds_bootstrap(groups: Sequence[Sequence[float]], confidence: float = 0.95, n_resamples: int = 10_000,
                    seed: int = 0) -> dict:
    """The mean over seeds of each seed's mean item value, with a two-level (hierarchical)
    percentile bootstrap interval: resample the seeds with replacement, then the items within
    each drawn seed, so that both the seed-to-seed spread (initialization, data order, split) and
    the item sampling widen the interval. `groups` holds one list of per-item values per seed
    (0/1 outcomes, or paired differences). The p-value is for "mean 0", counted as in
    `paired_bootstrap`. Returns {"seeds", "n" (items, all seeds), "estimate", "low", "high",
    "p_value", "per_seed" (each seed's mean)}."""
    gs = _groups(groups, "groups")
    _z(confidence)
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be at least 100 for a 95% interval, got {n_resamples}")
    rng = np.random.default_rng(seed)
    k = len(gs)
    pick = rng.integers(0, k, size=(n_resamples, k))                 # [B, k] which seed fills each slot
    inner = np.stack([g[rng.integers(0, len(g), size=(n_resamples * k, len(g)))].mean(axis=1) for g in gs])   # [k, B*k]
    slot = np.arange(n_resamples * k).reshape(n_resamples, k)       # a fresh item resample for every slot
    means = inner[pick, slot].mean(axis=1)                           # [B]
    per_seed = [float(g.mean()) for g in gs]
    est = float(np.mean(per_seed))
    alpha = (1 - confidence) / 2
    k_out = min((means <= 0).sum(), (means >= 0).sum())
    p = min(1.0, 2 * (k_out + 1) / (n_resamples + 1))
    return {"seeds": k, "n": int(sum(len(g) for g in gs)), "estimate": est, "low": float(np.quantile(means, alpha)),
            "high": float(np.quantile(means, 1 - alpha)), "p_value": float(p), "per_seed": per_seed}


def paired_seeds(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], confidence: float = 0.95,
                 n_resamples: int = 10_000, seed: int = 0) -> dict:
    """Does method `a` beat method `b` over seeds? `a` and `b` hold, per seed, the per-item
    outcomes of each method on that seed's held-out items (item i of a[s] and b[s] is the same
    item; the items may differ between seeds, as with a seeded split). The mean over seeds of
    the paired difference a - b, its two-level bootstrap interval and p (`seeds_bootstrap` of the
    per-item differences). Returns {"seeds", "n", "difference", "low", "high", "p_value",
    "per_seed" (each seed's a - b), "a_score", "b_score"}."""
    ga, gb = _groups(a, "a"), _groups(b, "b")
    if len(ga) != len(gb) or any(x.shape != y.shape for x, y in zip(ga, gb)):
        raise ValueError(f"a and b must be paired: the same seeds and, per seed, the same items "
                         f"(got {[len(x) for x in ga]} and {[len(y) for y in gb]} items per seed)")
    out = seeds_bootstrap([x - y for x, y in zip(ga, gb)], confidence, n_resamples, seed)
    return {"seeds": out["seeds"], "n": out["n"], "difference": out["estimate"], "low": out["low"], "high": out["high"],
            "p_value": out["p_value"], "per_seed": out["per_seed"],
            "a_score": float(np.mean([x.mean() for x in ga])), "b_score": float(np.mean([y.mean() for y in gb]))}


def _within(values: np.ndarray, strata: np.ndarray, rank: bool) -> np.ndarray:
    """`values` ([..., n]) ranked (scaled to (0, 1)) if `rank`, then centred within each stratum
    of `strata` ([n]): what is left is each unit's position inside its own stratum."""
    import pandas as pd

    out = values.astype(float).copy()
    for s in np.unique(strata):
        m = strata == s
        v = out[..., m]
        if rank:          # average ranks: ties (every bootstrap resample repeats units) share their rank
            v = pd.DataFrame(v.reshape(-1, m.sum())).rank(axis=1).to_numpy().reshape(v.shape) / (m.sum() + 1.0)
        out[..., m] = v - v.mean(axis=-1, keepdims=True)
    return out


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))
    return np.where(den > 0, (x * y).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)


def correlation_test(x: Sequence[float], y: Sequence[float], method: str = "spearman", strata: Sequence | None = None,
                     confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> dict:
    """Correlation of `x` and `y` over units (e.g. weight matrices), its percentile bootstrap
    interval (units resampled, within their stratum when `strata` is given) and a two-sided
    permutation p-value ((k + 1) / (n_resamples + 1), `y` shuffled within strata). With `strata`
    (e.g. each matrix's component) the correlation is taken *within* strata: x and y are ranked
    (Spearman) and centred inside each stratum and pooled, so that a trend that only separates
    the strata (one component has both higher x and higher y) does not count. Units with a NaN
    or infinite value are dropped. Returns {"n", "r", "low", "high", "p_value", "method",
    "within_strata"}."""
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    _z(confidence)
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be at least 100 for a 95% interval and a p-value below 0.01, got {n_resamples}")
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    g = np.zeros(len(x), dtype=int) if strata is None else np.unique(np.asarray(strata, dtype=str), return_inverse=True)[1]
    if not (x.shape == y.shape == g.shape) or x.ndim != 1:
        raise ValueError(f"x, y and strata must be paired 1-d sequences: got shapes {x.shape}, {y.shape}, {g.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, g = x[keep], y[keep], g[keep]
    if len(x) < 4:
        raise ValueError(f"a correlation needs at least 4 units with finite values, got {len(x)}")
    rank = method == "spearman"
    r = float(_pearson_rows(_within(x, g, rank), _within(y, g, rank)))
    if not math.isfinite(r):
        raise ValueError("no correlation to test: x or y does not vary" + (" within any stratum" if strata is not None
                                                                             else ""))
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(g == s), size=(n_resamples, (g == s).sum()))
                          for s in np.unique(g)], axis=1)                                   # [B, n], strata kept
    gb = np.concatenate([np.full((g == s).sum(), s) for s in np.unique(g)])
    boots = _pearson_rows(_within(x[idx], gb, rank), _within(y[idx], gb, rank))
    boots = boots[np.isfinite(boots)]
    alpha = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(boots, [alpha, 1 - alpha]))
    perm = np.stack([rng.permutation(len(y)) for _ in range(n_resamples)])                  # [B, n]
    for s in np.unique(g):                       # shuffle y only among the units of one stratum
        m = np.flatnonzero(g == s)
        perm[:, m] = m[rng.permuted(np.tile(np.arange(len(m)), (n_resamples, 1)), axis=1)]
    xr, yr = _within(x, g, rank), _within(y, g, rank)
    null = _pearson_rows(np.broadcast_to(xr, perm.shape), yr[perm])
    k = int((np.abs(null) >= abs(r) - 1e-12).sum())
    return {"n": len(x), "r": r, "low": low, "high": high, "p_value": min(1.0, (k + 1) / (n_resamples + 1)),
            "method": method, "within_strata": strata is not None}


def paired_windows(windows, a: str, b: str, corpus: str, confidence: float = 0.95) -> dict:
    """Does model `a` predict `corpus` differently from model `b`, window by window? `windows` is
    a DataFrame of per-window records (label, corpus, window, nll summed over the window's
    tokens, tokens), e.g. from `evaluate.perplexity_sweep(..., return_windows=True)` or an
    ability sweep. The paired bootstrap over windows of the per-token NLL difference a - b
    (positive: `a` is worse; exp of it is the perplexity ratio). Returns {"column", "a", "b",
    "n", "a_score", "b_score" (perplexities), "difference" (nats per token), "low", "high",
    "p_value", "test"}."""
    if not hasattr(windows, "corpus"):
        raise TypeError("paired_windows takes a DataFrame of window records (label, corpus, window, nll, tokens); "
                        f"got {type(windows).__name__}: wrap a list of records in pd.DataFrame(...)")
    w = windows[windows.corpus == corpus]
    if not len(w):
        raise ValueError(f"no windows of corpus {corpus!r}; corpora present: {sorted(set(windows.corpus))}")
    wa, wb = (w[w.label == x].set_index("window").sort_index() for x in (a, b))
    for label, part in ((a, wa), (b, wb)):
        if not part.index.is_unique:
            raise ValueError(f"{label!r} has repeated window numbers on {corpus!r}: the frame mixes runs (other bits, "
                             "group sizes or seqlens under one label); filter it to one run first")
    if not len(wa) or not len(wb) or not wa.index.equals(wb.index):
        raise ValueError(f"{a!r} and {b!r} need the same windows of {corpus!r} (got {len(wa)} and {len(wb)}; "
                         f"labels present: {sorted(set(w.label))})")
    x, y = (wa.nll / wa.tokens).to_numpy(), (wb.nll / wb.tokens).to_numpy()
    boot = paired_bootstrap(x, y, confidence=confidence)

    def ppl(part):
        return perplexity_of(part.nll.sum(), part.tokens.sum())

    return {"column": f"perplexity {corpus}", "a": a, "b": b, "n": len(x), "a_score": ppl(wa), "b_score": ppl(wb),
            "difference": boot["difference"], "low": boot["low"], "high": boot["high"], "p_value": boot["p_value"],
            "test": "paired bootstrap over windows"}


# -----------------------------------------------------------------------------
# tables: one row per group, with n, the estimate and its interval


def majority_share(labels: Sequence) -> float:
    """Share of the most common label: the accuracy of always answering it (the majority baseline)."""
    values, counts = np.unique(np.asarray(list(labels), dtype=object).astype(str), return_counts=True)
    if len(values) == 0:
        raise ValueError("majority_share needs at least one label")
    return float(counts.max() / counts.sum())


def summarize(values: Sequence[float], confidence: float = 0.95) -> dict:
    """{"n", "estimate", "low", "high"} of per-item scores: the Wilson interval when every score is
    0 or 1 (an accuracy), the bootstrap interval of the mean otherwise; NaN scores are dropped."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return {"n": 0, "estimate": float("nan"), "low": float("nan"), "high": float("nan")}
    if np.isin(x, (0.0, 1.0)).all():
        est, low, high = wilson_interval(int(x.sum()), len(x), confidence)
    elif len(x) == 1 or (x == x[0]).all():
        est = low = high = float(x[0])
    else:
        est, low, high = bootstrap_interval(x, confidence=confidence)
    return {"n": len(x), "estimate": est, "low": low, "high": high}


def interval_table(df, by: str | list[str], value: str = "score", confidence: float = 0.95):
    """One row per group of `df` (a pandas DataFrame of per-item scores) with n, the estimate and
    its 95% interval of column `value` (see `summarize`), groups in order of appearance."""
    import pandas as pd

    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*by, value] if c not in df.columns]
    if missing:
        raise ValueError(f"interval_table: columns {missing} not in the table (it has {list(df.columns)})")
    rows = [{**dict(zip(by, key if isinstance(key, tuple) else (key,))), **summarize(part[value], confidence)}
            for key, part in df.groupby(by, sort=False, dropna=False)]
    return pd.DataFrame(rows, columns=[*by, "n", "estimate", "low", "high"])


def perplexity_table(windows, by: str | list[str], confidence: float = 0.95):
    """One row per group of per-window records (columns `nll`, summed over the window's predicted
    tokens, and `tokens`) with windows, tokens, the perplexity and its bootstrap 95% interval."""
    import pandas as pd

    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, part in windows.groupby(by, sort=False, dropna=False):
        ppl, low, high = (perplexity_interval(part["nll"], part["tokens"], confidence) if len(part) > 1
                          else (perplexity_of(part["nll"].sum(), part["tokens"].sum()),) + (float("nan"),) * 2)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "windows": len(part),
                     "tokens": int(part["tokens"].sum()), "perplexity": ppl, "low": low, "high": high})
    return pd.DataFrame(rows, columns=[*by, "windows", "tokens", "perplexity", "low", "high"])


# -----------------------------------------------------------------------------
# verdicts for a findings table


def keeps_verdict(test: dict, margin: float, alpha: float = 0.05) -> str:
    """Verdict on a claim "the change keeps the score" from a paired test of before (a) against
    after (b) (`difference` = a - b, the loss, its interval `low`..`high`, `p_value`): "agrees"
    when the whole interval lies below a loss of `margin` (the largest loss that still counts as
    keeping it; an equivalence reading, so a loss too small to matter agrees even when it is
    significant); otherwise "contradicts" when the loss is significant at `alpha`; "cannot test
    here" when neither: the experiment cannot tell a loss of `margin` from none."""
    if not 0 < margin:
        raise ValueError(f"margin must be a positive score difference (e.g. 0.05), got {margin!r}")
    if test["high"] < margin:
        return "agrees"
    if test["p_value"] < alpha and test["difference"] > 0:
        return "contradicts"
    return "cannot test here"


def loses_verdict(test: dict, alpha: float = 0.05) -> str:
    """Verdict on a claim "the change loses the score" from the same paired test: "agrees" when
    the loss is significant at `alpha`, "contradicts" when the score is significantly higher
    after, "cannot test here" otherwise."""
    if test["p_value"] < alpha:
        return "agrees" if test["difference"] > 0 else "contradicts"
    return "cannot test here"


def beats_verdict(test: dict, alpha: float = 0.05) -> str:
    """Verdict on a claim "a beats b" from a paired test of a against b (`difference` = a - b):
    "agrees" when a is significantly better at `alpha`, "contradicts" when significantly worse,
    "cannot test here" otherwise."""
    if test["p_value"] < alpha:
        return "agrees" if test["difference"] > 0 else "contradicts"
    return "cannot test here"


def above_baseline(low: float, baseline: float) -> bool:
    """Whether a score's 95% interval lies wholly above a baseline (chance or majority class):
    only then does the model show the ability at all, and only then can a loss of it be tested."""
    return bool(low > baseline)
