"""workbench/stats.py: intervals against published values, tests against hand-computed ones, and
clear errors for inputs that would give a meaningless number."""

import math

import numpy as np
import pandas as pd
import pytest

from workbench import stats


@pytest.mark.parametrize("k, n, low, high", [(81, 263, 0.2553, 0.3662),    # Newcombe (1998), Table I
                                             (15, 148, 0.0624, 0.1605),
                                             (0, 20, 0.0, 0.1611),
                                             (1, 29, 0.0061, 0.1718)])
def test_wilson_matches_newcombes_table(k, n, low, high):
    p, lo, hi = stats.wilson_interval(k, n)
    assert p == k / n and lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_narrows_with_n_and_widens_with_confidence():
    w = [stats.wilson_interval(n // 2, n) for n in (10, 100, 1000)]
    widths = [hi - lo for _, lo, hi in w]
    assert widths[0] > widths[1] > widths[2]
    assert stats.wilson_interval(5, 10, 0.99)[2] > stats.wilson_interval(5, 10, 0.95)[2]


@pytest.mark.parametrize("args, match", [((3, 0), "n must be a positive"), ((11, 10), "successes must be"),
                                         ((2.5, 10), "successes must be"), ((5, 10, 1.5), "confidence")])
def test_wilson_bad_inputs_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        stats.wilson_interval(*args)


def test_mcnemar_is_the_exact_binomial_tail_of_the_discordant_items():
    a = [1] * 10 + [0] * 2 + [1] * 20 + [0] * 8       # 10 items only a got right, 2 only b, 28 concordant
    b = [0] * 10 + [1] * 2 + [1] * 20 + [0] * 8
    r = stats.mcnemar_test(a, b)
    assert (r["n"], r["a_only"], r["b_only"]) == (40, 10, 2)
    assert r["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 2 ** 12)          # 0.0386
    assert r["difference"] == pytest.approx(8 / 40)
    assert stats.mcnemar_test(b, a)["p_value"] == r["p_value"]
    assert stats.mcnemar_test(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same items"):
        stats.mcnemar_test(a, b[:-1])
    with pytest.raises(ValueError, match="0/1"):
        stats.mcnemar_test([0.5] * 40, b)


def test_bootstrap_interval_is_seeded_and_near_the_normal_one():
    x = np.random.default_rng(1).normal(10, 2, size=400)
    est, lo, hi = stats.bootstrap_interval(x)
    assert est == pytest.approx(x.mean()) and (lo, hi) == stats.bootstrap_interval(x)[1:]
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1) and lo < est < hi
    assert stats.bootstrap_interval([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)
    assert stats.bootstrap_interval(x, statistic=np.median)[0] == pytest.approx(np.median(x))
    with pytest.raises(ValueError, match="at least 2 finite"):
        stats.bootstrap_interval([1.0, float("nan")])


def test_perplexity_interval_is_a_ratio_of_sums_over_windows():
    rng = np.random.default_rng(0)
    nll = rng.normal(3.3, 0.2, size=50) * 511                   # 50 windows of 511 predicted tokens
    ppl, lo, hi = stats.perplexity_interval(nll, 511)
    assert ppl == pytest.approx(math.exp(nll.sum() / (50 * 511))) and lo < ppl < hi
    short = stats.perplexity_interval(nll[:5], 511)
    assert short[2] - short[1] > hi - lo                         # 5 windows say less than 50
    with pytest.raises(ValueError, match="at least 2 windows"):
        stats.perplexity_interval(nll[:1], 511)
    with pytest.raises(ValueError, match="positive token count"):
        stats.perplexity_interval(nll[:3], [511, 0, 511])


def test_paired_bootstrap_sees_a_consistent_small_difference():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, size=200)
    r = stats.paired_bootstrap(base + 0.3 + rng.normal(0, 0.1, size=200), base)
    assert r["difference"] == pytest.approx(0.3, abs=0.05) and r["low"] > 0 and r["p_value"] < 0.01
    # no resample crosses zero: the p-value is the smallest the resamples can show, never 0
    assert r["p_value"] == pytest.approx(2 / 10_001)
    assert stats.paired_bootstrap(base + 0.3, base, n_resamples=999)["p_value"] == pytest.approx(2 / 1000)
    same = stats.paired_bootstrap(base, base)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    noise = stats.paired_bootstrap(base, rng.normal(0, 1, size=200))
    assert noise["p_value"] > 0.01
    with pytest.raises(ValueError, match="paired"):
        stats.paired_bootstrap(base, base[:-1])


def test_summarize_uses_wilson_for_outcomes_and_the_bootstrap_for_means():
    s = stats.summarize([1, 0, 1, 1, float("nan")])
    assert s["n"] == 4 and (s["estimate"], s["low"], s["high"]) == pytest.approx(stats.wilson_interval(3, 4))
    m = stats.summarize([0.5, 1.0, 0.0, 0.5, 1.0])                    # items averaged over draws
    assert m["estimate"] == pytest.approx(0.6) and m["low"] < 0.6 < m["high"]
    assert stats.summarize([])["n"] == 0
    assert stats.majority_share(["no", "yes", "no", "no"]) == 0.75


def test_interval_table_has_one_row_per_group_with_n_and_interval():
    df = pd.DataFrame({"model": ["a"] * 40 + ["b"] * 40, "score": [1] * 22 + [0] * 18 + [1] * 5 + [0] * 35})
    t = stats.interval_table(df, "model")
    assert list(t.columns) == ["model", "n", "estimate", "low", "high"] and list(t.model) == ["a", "b"]
    assert t.n.tolist() == [40, 40] and t.estimate.tolist() == [0.55, 0.125]
    assert t.high[1] < t.low[0]                                         # 22/40 vs 5/40: the intervals part
    with pytest.raises(ValueError, match="not in the table"):
        stats.interval_table(df, "label")


def test_perplexity_table_pools_windows_by_group():
    rng = np.random.default_rng(1)
    w = pd.DataFrame({"corpus": ["lee"] * 20 + ["wiki"] * 30, "nll": rng.normal(3.0, 0.1, 50) * 511, "tokens": 511})
    t = stats.perplexity_table(w, "corpus")
    assert t.windows.tolist() == [20, 30] and t.tokens.tolist() == [20 * 511, 30 * 511]
    lee = w[w.corpus == "lee"]
    assert t.perplexity[0] == pytest.approx(math.exp(lee.nll.sum() / lee.tokens.sum()))
    assert (t.low < t.perplexity).all() and (t.perplexity < t.high).all()


def test_verdicts_follow_the_test_and_the_margin():
    lost = {"difference": 0.3, "low": 0.15, "high": 0.45, "p_value": 0.001}
    kept = {"difference": 0.0, "low": -0.02, "high": 0.03, "p_value": 0.9}
    wide = {"difference": 0.05, "low": -0.1, "high": 0.2, "p_value": 0.4}
    gained = {"difference": -0.2, "low": -0.3, "high": -0.1, "p_value": 0.002}
    tiny = {"difference": 0.01, "low": 0.005, "high": 0.015, "p_value": 0.001}     # real, but below the margin
    assert [stats.keeps_verdict(t, margin=0.05) for t in (lost, kept, wide, tiny)] == \
        ["contradicts", "agrees", "cannot test here", "agrees"]
    assert [stats.loses_verdict(t) for t in (lost, kept, gained)] == ["agrees", "cannot test here", "contradicts"]
    assert stats.above_baseline(0.3, 0.25) and not stats.above_baseline(0.2, 0.25)
    with pytest.raises(ValueError, match="margin"):
        stats.keeps_verdict(kept, margin=0)


def test_paired_windows_compares_two_models_window_by_window():
    import pandas as pd

    base = pd.DataFrame({"label": "base", "corpus": "lee", "window": [2, 0, 1], "nll": [1000.0, 1100.0, 1200.0],
                         "tokens": 511})
    worse = base.assign(label="W3", nll=base.nll + [30.0, 50.0, 40.0])
    broken = base.assign(label="W2", nll=base.nll * 1e3)            # per-token NLL past 700: perplexity inf
    w = pd.concat([base, worse, broken])
    t = stats.paired_windows(w, "W3", "base", "lee")
    assert t["n"] == 3 and t["difference"] == pytest.approx(40 / 511) and t["low"] > 0 and t["p_value"] < 0.5
    assert t["b_score"] == pytest.approx(math.exp(3300 / 1533)) and t["column"] == "perplexity lee"
    assert stats.paired_windows(w, "W2", "base", "lee")["a_score"] == math.inf
    with pytest.raises(ValueError, match="same windows.*labels present"):
        stats.paired_windows(w, "W4", "base", "lee")


def test_correlation_test_reads_a_trend_within_strata_and_not_the_one_between_them():
    rng = np.random.default_rng(0)
    n = 60
    x = rng.normal(size=n)
    y = 0.8 * x + rng.normal(scale=0.6, size=n)
    t = stats.correlation_test(x, y)
    assert t["n"] == n and 0.5 < t["r"] < 0.95 and t["low"] > 0.3 and t["p_value"] < 0.001
    assert t["r"] == pytest.approx(float(pd.Series(x).corr(pd.Series(y), method="spearman")), abs=1e-9)
    noise = stats.correlation_test(x, rng.normal(size=n))
    assert noise["low"] < 0 < noise["high"] and noise["p_value"] > 0.01
    # two strata far apart in both x and y, no trend inside either: the pooled correlation is
    # strong, the within-strata one is not
    group = np.repeat(["attention", "ffn"], 1000)      # the within-strata r then has a standard error of 0.022
    xs, ys = rng.normal(size=2000) + 10 * (group == "ffn"), rng.normal(size=2000) + 10 * (group == "ffn")
    assert stats.correlation_test(xs, ys, n_resamples=1000)["r"] > 0.7
    within = stats.correlation_test(xs, ys, strata=group, n_resamples=1000)
    assert within["within_strata"] and abs(within["r"]) < 0.11
    # a trend inside each stratum is found, with a p-value that shuffles only within strata
    trend = stats.correlation_test(xs, ys + 0.5 * (xs - 10 * (group == "ffn")), strata=group, n_resamples=1000)
    assert trend["r"] > 0.3 and trend["p_value"] < 0.001
    with pytest.raises(ValueError, match="at least 4 units"):
        stats.correlation_test([1, 2, np.nan], [1, 2, 3])
    with pytest.raises(ValueError, match="method"):
        stats.correlation_test(x, y, method="kendall")


def test_correlation_test_gives_ties_their_average_rank():
    x = np.arange(12.0)
    t = stats.correlation_test(x, -x, n_resamples=2000)
    # every resample repeats points, and with tied ranks averaged it is still perfectly monotone
    assert t["r"] == pytest.approx(-1.0) and t["low"] == pytest.approx(-1.0) and t["high"] == pytest.approx(-1.0)
    # y constant within each stratum: nothing to correlate inside them, a clear error
    with pytest.raises(ValueError, match="does not vary within any stratum"):
        stats.correlation_test(x, np.repeat([0.0, 1.0], 6), strata=np.repeat(["a", "b"], 6))
    # heavy ties in y (a 0/1 outcome): the average-rank Spearman equals pandas'
    y = (x % 3 == 0).astype(float)
    assert stats.correlation_test(x, y, n_resamples=200)["r"] == pytest.approx(
        float(pd.Series(x).corr(pd.Series(y), method="spearman")), abs=1e-12)


def test_seeds_bootstrap_widens_with_the_spread_between_seeds():
    rng = np.random.default_rng(0)
    same = [rng.binomial(1, 0.5, 100) for _ in range(3)]                        # three seeds that agree
    apart = [rng.binomial(1, p, 100) for p in (0.2, 0.5, 0.8)]                 # three that do not
    s, a = stats.seeds_bootstrap(same), stats.seeds_bootstrap(apart)
    assert s["seeds"] == 3 and s["n"] == 300 and s["low"] < s["estimate"] < s["high"]
    assert s["estimate"] == pytest.approx(np.mean([g.mean() for g in same]))
    pooled = stats.wilson_interval(int(np.concatenate(apart).sum()), 300)          # items only, seeds ignored
    assert (a["high"] - a["low"]) > 1.5 * (pooled[2] - pooled[1])                   # the seed spread counts
    assert stats.seeds_bootstrap(same) == s                                           # seeded: the same records, the same interval
    with pytest.raises(ValueError, match="at least 2 seeds"):
        stats.seeds_bootstrap([[1, 0, 1]])


def test_paired_seeds_pairs_items_within_each_seed():
    rng = np.random.default_rng(1)
    b = [rng.binomial(1, 0.5, n) for n in (60, 60, 80)]                             # a seeded split: items differ by seed
    a = [np.maximum(x, rng.binomial(1, 0.3, len(x))) for x in b]                   # a fixes some of b's misses, never breaks
    t = stats.paired_seeds(a, b)
    assert t["seeds"] == 3 and t["n"] == 200 and t["difference"] > 0 and t["low"] > 0 and t["p_value"] < 0.01
    assert t["difference"] == pytest.approx(np.mean([x.mean() - y.mean() for x, y in zip(a, b)]))
    null = stats.paired_seeds(b, [rng.permutation(x) for x in b])
    assert null["low"] < 0 < null["high"] and null["p_value"] > 0.05
    with pytest.raises(ValueError, match="the same items"):
        stats.paired_seeds(a, [x[:-1] for x in b])


def test_beats_verdict_reads_the_sign_of_a_significant_difference():
    assert stats.beats_verdict({"difference": 0.1, "p_value": 0.01}) == "agrees"
    assert stats.beats_verdict({"difference": -0.1, "p_value": 0.01}) == "contradicts"
    assert stats.beats_verdict({"difference": 0.1, "p_value": 0.2}) == "cannot test here"


def test_a_paired_test_reads_as_one_findings_cell():
    from workbench.report import paired_cell

    t = {"a": "QLoRA", "b": "LoRA", "a_score": 0.7, "b_score": 0.65, "difference": 0.05, "low": -0.01, "high": 0.11,
         "p_value": 0.1234, "n": 180, "seeds": 3}
    assert paired_cell(t) == "QLoRA 0.70 vs LoRA 0.65: +0.05 [-0.01, +0.11], p=0.12, n=180 (3 seeds)"
    assert paired_cell({**t, "seeds": 1}, digits=3, unit=" nats") .endswith("+0.050 nats [-0.010, +0.110], p=0.12, n=180")


def test_paired_outcomes_uses_mcnemar_for_outcomes_and_the_bootstrap_otherwise():
    a, b = [1, 1, 1, 0, 1, 0, 1, 1], [0, 1, 0, 0, 1, 0, 0, 1]
    t = stats.paired_outcomes(a, b)
    assert t["test"] == "exact McNemar" and t["p_value"] == stats.mcnemar_test(a, b)["p_value"]
    assert t["difference"] == pytest.approx(3 / 8) and t["low"] <= t["difference"] <= t["high"]
    x = [0.5, 1.0, 0.25, 0.75]
    u = stats.paired_outcomes(x, [0.0, 0.5, 0.25, 0.5])
    assert u["test"] == "paired bootstrap" and u["p_value"] == stats.paired_bootstrap(x, [0.0, 0.5, 0.25, 0.5])["p_value"]


def test_unpaired_bootstrap_finds_a_shift_between_independent_samples_and_not_a_null_one():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.5, 1.0, 40), rng.normal(0.0, 1.0, 30)        # different sizes: nothing is paired
    shifted = stats.unpaired_bootstrap(a, b)
    assert shifted["n"] == (40, 30)
    assert shifted["low"] < shifted["difference"] < shifted["high"]
    assert shifted["difference"] == pytest.approx(a.mean() - b.mean())
    null = stats.unpaired_bootstrap(rng.normal(0, 1, 40), rng.normal(0, 1, 30))
    assert null["low"] < 0 < null["high"] and null["p_value"] > 0.05
    big = stats.unpaired_bootstrap(a + 3, b)
    assert big["low"] > 2 and big["p_value"] < 0.001
    with pytest.raises(ValueError, match="at least 2 finite"):
        stats.unpaired_bootstrap([1.0], b)


def test_perplexity_of_is_exp_of_the_mean_nll_and_inf_past_a_floats_range():
    assert stats.perplexity_of(2 * 30.0, 30) == pytest.approx(math.exp(2.0))
    assert stats.perplexity_of(800.0, 1) == math.inf           # math.exp would raise OverflowError
    with pytest.raises(ValueError, match="positive token count"):
        stats.perplexity_of(1.0, 0)


def test_window_bounds_bootstraps_records_and_marks_the_degenerate_cases():
    windows = [{"nll": 511 * v, "tokens": 511} for v in (3.0, 3.2, 3.4, 3.1)]
    low, high = stats.window_bounds(windows)
    ppl = stats.perplexity_of(sum(w["nll"] for w in windows), 4 * 511)
    assert math.exp(3.0) <= low < ppl < high <= math.exp(3.4)
    assert (low, high) == stats.perplexity_interval([w["nll"] for w in windows], 511)[1:]
    assert all(math.isnan(x) for x in stats.window_bounds(windows[:1]))
    assert stats.window_bounds([{"nll": 1e6, "tokens": 1}, {"nll": 1e6, "tokens": 1}]) == (math.inf, math.inf)
    assert stats.window_bounds([{"nll": math.inf, "tokens": 511}] * 2) == (math.inf, math.inf)


def test_perplexities_refuse_a_nan_or_a_log_likelihood_instead_of_an_nll():
    with pytest.raises(ValueError, match="NaN"):
        stats.perplexity_of(math.nan, 10)
    with pytest.raises(ValueError, match="log-likelihood"):
        stats.perplexity_of(-5.0, 10)
    with pytest.raises(ValueError, match="log-likelihoods"):
        stats.perplexity_interval([-1.0, -2.0, -3.0], 10)
    with pytest.raises(ValueError, match="one per window"):
        stats.perplexity_interval([1.0, 2.0, 3.0, 4.0, 5.0], [10, 10, 10])
    frame = pd.DataFrame([{"nll": 511 * v, "tokens": 511} for v in (3.0, 3.2, 3.4)])
    assert stats.window_bounds(frame) == stats.window_bounds(frame.to_dict("records"))


def test_paired_windows_refuses_windows_from_two_runs_under_one_label():
    def run(label, shift):
        return [{"label": label, "corpus": "lee", "window": i, "nll": 511 * (3 + shift + 0.1 * i), "tokens": 511}
                for i in range(4)]
    one = pd.DataFrame(run("a", 0.0) + run("b", 0.1))
    assert stats.paired_windows(one, "a", "b", "lee")["n"] == 4
    two = pd.concat([one, pd.DataFrame(run("a", 0.5) + run("b", 0.6))])      # bits=4 and bits=3 concatenated
    with pytest.raises(ValueError, match="repeated window numbers"):
        stats.paired_windows(two, "a", "b", "lee")
    with pytest.raises(ValueError, match=r"corpora present: \['lee'\]"):
        stats.paired_windows(one, "a", "b", "botchan")
    with pytest.raises(TypeError, match="DataFrame"):
        stats.paired_windows(run("a", 0.0), "a", "b", "lee")


def test_correlation_test_refuses_too_few_resamples_for_its_p_value():
    x = np.arange(10.0)
    with pytest.raises(ValueError, match="n_resamples"):
        stats.correlation_test(x, x ** 2, n_resamples=10)
    with pytest.raises(ValueError, match="confidence"):
        stats.correlation_test(x, x ** 2, confidence=95)


def test_seeds_bootstrap_names_a_groupby_passed_for_per_seed_lists():
    df = pd.DataFrame({"seed": [0, 0, 1, 1, 2, 2], "correct": [1, 0, 1, 1, 0, 1]})
    with pytest.raises(TypeError, match="per-seed lists.*DataFrameGroupBy|per-seed lists.*SeriesGroupBy"):
        stats.seeds_bootstrap(df.groupby("seed").correct)
    ok = stats.seeds_bootstrap([g.tolist() for _, g in df.groupby("seed").correct])
    assert ok["n"] >= 2


def test_interval_text_writes_each_estimate_with_its_interval():
    from workbench.report import interval_text

    assert interval_text([37.9802, 5.025e6], [35.09, 4.157e6], [41.13, 6.089e6]) == [
        "37.98 [35.09, 41.13]", "5.025e+06 [4.157e+06, 6.089e+06]"]
    assert interval_text(pd.Series([0.0541]), [0.0503], [0.0588], "+.3f") == ["+0.054 [+0.050, +0.059]"]


def test_window_bounds_refuses_a_nan_nll_rather_than_calling_it_infinite():
    with pytest.raises(ValueError, match="NaN"):
        stats.window_bounds([{"nll": math.nan, "tokens": 511}, {"nll": 1500.0, "tokens": 511}])
