"""Committed snapshots (data/snapshots/<name>.json.gz): the records of the heavy sweeps that notebooks
00 to 06 render (perplexity, ability, adaptation, per-matrix probe and library sweeps), written by the engine of workbench/experiments.py.

Two checks per snapshot. Its records are current: each key is what this code computes from the
stored point, measure and versions, and the versions are this checkout's, so a notebook reads the
snapshot instead of recomputing it. And a sample of its points is re-run from scratch (an empty
results store) and must match the committed records: summaries and every item, by the rule of
workbench/reproducibility.py (the same on any x86-64 CPU), never bit for bit. A new snapshot
without a SAMPLES entry fails `test_every_snapshot_is_verified`.
"""
import json

import pandas as pd
import pytest

from workbench import reproducibility as rep
from workbench.experiments import point_key, read_snapshot, snapshot_path


def _rtn3(p):
    return p["spec"] is not None and p["spec"].get("method") == "rtn" and p["spec"].get("bits") == 3


def _only_attention(p):
    return p["spec"] is not None and [c is not None for _, c in p["spec"]["linears"]] == [True, False] \
        and p["spec"]["embeddings"] is None


def _fixed_weights(p):
    """Points whose quantized weights are the same on any CPU: not GPTQ, whose error feedback
    turns last-bit differences into other rounding decisions (nor AWQ + GPTQ), nor BCQ's least-squares fits,
    nor SignRound, whose signed steps flip with the sign of a gradient that is zero up to rounding."""
    return p["spec"] is None or not any(f'"method": "{m}"' in json.dumps(p["spec"])
                                        for m in ("gptq", "awq_gptq", "bcq", "signround"))


PROBE_SNAPSHOTS = ("stable_rank_under_quantization", "stable_rank_w3_errors", "stable_rank_w3_weight_stats",
                   "outliers_weight_stats", "outliers_retention_errors", "quantizers_gguf_grid_errors",
                   "quantizers_scale_activations")
LIBRARY_SNAPSHOTS = ("quantizers_libraries",)    # workbench.quant.compare: HQQ, quanto and torchao beside RTN
SAMPLES = {                   # snapshot -> which of its points are re-run
    "abilities_bits_sweep": lambda p: p["spec"] is None or _rtn3(p),
    "abilities_cot_probe": lambda p: True,             # the base model only
    "abilities_scale_gemma": lambda p: p["spec"] is None or _rtn3(p),
    "abilities_wakv": lambda p: True,                  # RTN weights, activations and KV rounded at run time
    "abilities_kivi": lambda p: True,                  # the KV cache rounded at run time (KIVI, per token + window)
    "component_sensitivity_w4": _only_attention,
    "abilities_lora": lambda p: _rtn3(p),              # LoRA: its training and perplexity (below)
    # adaptation runs: one point drawn at random (its seed among them) from the runs that take under a minute
    "adapt_encoder": lambda p: p["method"] in ("head_only", "lora", "qlora", "prequant") and p["args"].get("r", 8) <= 8,
    "adapt_navigate": lambda p: p["method"] in ("head_only", "qlora", "prequant"),
    "adapt_causal": lambda p: p["method"] in ("unadapted", "qlora") and p["args"]["bits"] == 3 and p["args"].get("steps", 0) <= 20,
    "adapt_causal_fp": lambda p: p["method"] == "stable_rank_lora",
    "decompositions_polarity": lambda p: p["method"] in ("head_only", "lora", "mpop", "random_structured_ticket"),
    "decompositions_navigate": lambda p: p["method"] in ("head_only", "lora", "random_structured_ticket"),
    "quickstart_lee": lambda p: True,                  # perplexity sweeps: a few windows of a random point
    "quickstart_botchan": lambda p: True,
    "quantizers_gguf_grid_lee": lambda p: True,
    "quantizers_gguf_grid_botchan": lambda p: True,
    "quantizers_wakv": lambda p: True,                # RTN weights; activations and KV cache rounded at run time
    "quantizers_wakv_smooth": lambda p: p["spec"]["runtime"]["weights"] is None,   # W16A4 SQ: no weight Hessians
    "quantizers_wakv_kivi": lambda p: True,           # RTN weights; KIVI's and per-token KV with a residual window
    **{f"quantizers_{n}": _fixed_weights for n in ("method_bits", "method_bits_gptq", "bcq_init", "gptq_order",
                                                  "gptq_draw0", "gptq_draw1", "gptq_draw2", "group_size",
                                                  "zero_point", "mixed_precision", "bcq_zero",
                                                  "scale_gemma", "scale_gemma_gptq",
                                                  "awq_draw0", "awq_draw1", "awq_draw2", "signround_botchan")},
    "outliers_retention": _fixed_weights,
    "by_frequency_embeddings": lambda p: True,         # RTN rows by frequency: the same on any CPU
    "by_frequency_blocks": lambda p: True,
    # per-matrix probe tables (workbench.probes.probe_sweep): a few matrices of a random model, re-computed alone
    **{n: lambda p: True for n in PROBE_SNAPSHOTS},
    "quantizers_libraries": lambda p: p["method"] != "unquantized",   # a library's or the workbench's RTN
}
ABILITY_SNAPSHOTS = ("abilities_bits_sweep", "abilities_cot_probe", "component_sensitivity_w4", "abilities_lora",
                     "abilities_scale_gemma", "abilities_wakv", "abilities_kivi")
PERPLEXITY_SNAPSHOTS = tuple(n for n in SAMPLES if n.startswith(("quickstart_", "quantizers_", "outliers_", "by_frequency_"))
                             and n not in PROBE_SNAPSHOTS + LIBRARY_SNAPSHOTS)
# Snapshots of which one, drawn at random, is re-run per test run, so that `make test` stays within its
# 20 minutes cold on 2 cores (each snapshot is verified every few runs, the draw is in the seed):
# - the sweeps whose CPU-independent points need a 64 x 512 calibration pass (AWQ's three draws, about
#   2.3 minutes a rebuild; the SmoothQuant part of the W x A x KV sweep, about 1.4 minutes) or are the
#   unquantized model that quickstart's sweeps also check (GPTQ's draws and method sweep; SignRound's
#   points are not CPU-independent, so its out-of-corpus sweep re-runs its unquantized model): at most
#   one calibration pass per run (AWQ one run in three, SmoothQuant one in nine);
# - the Gemma sweeps, whose GPTQ part's only CPU-independent point is the unquantized model the other holds;
# - the adaptation snapshots in pairs that train the same model on the same kind of task (20 to 60 s a
#   retraining): the causal model's ability task quantized and in full precision, the encoder's two
#   classification tasks, and the decompositions' two tasks.
ONE_OF = (("quantizers_awq_draw0", "quantizers_awq_draw1", "quantizers_awq_draw2", "quantizers_wakv_smooth",
           "quantizers_signround_botchan", "quantizers_gptq_draw0", "quantizers_gptq_draw1", "quantizers_gptq_draw2",
           "quantizers_method_bits_gptq"),
          ("quantizers_scale_gemma", "quantizers_scale_gemma_gptq"))
ADAPTATION_ONE_OF = (("adapt_causal", "adapt_causal_fp"), ("adapt_encoder", "adapt_navigate"),
                     ("decompositions_polarity", "decompositions_navigate"))
PERPLEXITY_RERUNS = list(ONE_OF) + [(n,) for n in PERPLEXITY_SNAPSHOTS if not any(n in g for g in ONE_OF)]
ADAPTATION_SNAPSHOTS = tuple(n for n in SAMPLES
                             if n not in ABILITY_SNAPSHOTS + PERPLEXITY_SNAPSHOTS + PROBE_SNAPSHOTS + LIBRARY_SNAPSHOTS)
ADAPTATION_RERUNS = list(ADAPTATION_ONE_OF) + [(n,) for n in ADAPTATION_SNAPSHOTS
                                               if not any(n in g for g in ADAPTATION_ONE_OF)]


def _measure(name):
    if name in ABILITY_SNAPSHOTS:
        from workbench.abilities import ability_point

        return ability_point
    if name in PERPLEXITY_SNAPSHOTS:
        from workbench.evaluate import perplexity_point

        return perplexity_point
    if name in PROBE_SNAPSHOTS:
        from workbench.probes import probe_point

        return probe_point
    if name in LIBRARY_SNAPSHOTS:
        from workbench.quant.compare import library_point

        return library_point
    from workbench.adapt.sweeps import run_point

    return run_point


def test_every_snapshot_is_verified():
    folder = snapshot_path("x").parent
    names = sorted(p.name.removesuffix(".json.gz") for p in folder.glob("*.json.gz"))
    assert names == sorted(SAMPLES) and not list(folder.glob("*.json")), "one gzipped snapshot per sample"
    for name, chosen in SAMPLES.items():
        assert any(chosen(r["point"]) for r in read_snapshot(name)), f"{name}: the sample selects no point"


@pytest.mark.integration
@pytest.mark.parametrize("name", list(SAMPLES))
def test_snapshot_records_are_current(name):
    """The keys and versions this checkout computes: what the notebooks will look up."""
    from workbench.models import load_model

    records = read_snapshot(name)
    point = records[0]["point"]
    if name in ABILITY_SNAPSHOTS:
        from workbench.abilities import sweep_versions

        current = sweep_versions(load_model(point["model"]).record)
    elif name in PERPLEXITY_SNAPSHOTS + LIBRARY_SNAPSHOTS:
        from workbench.evaluate import perplexity_versions

        loaded_ = load_model(point["model"])
        current = perplexity_versions(loaded_.record, loaded_.tokenizer)
    elif name in PROBE_SNAPSHOTS:           # the weights are in each point, the versions hold nothing else
        current = {}
        for r in records:
            assert r["point"]["weights"] == json.loads(json.dumps(load_model(r["point"]["model"]).record.key,
                                                                  default=str)), f"{name}: {r['point']['model']}"
    else:
        from workbench.adapt.sweeps import load_model_for, versions

        current = versions(load_model_for(point["model"], point["task"])[2], point["task"])
    measure = _measure(name)
    for r in records:
        assert {k: v for k, v in r["versions"].items() if k != "workbench"} == current, name
        assert point_key(r["point"], measure, versions=current) == r["key"], f"{name}: {r['point']}"


ITEMS = 12          # ability items re-run per snapshot, drawn at random across its tasks, shots and draws
WINDOWS = 2         # perplexity windows re-run per corpus


def _item_key(i: dict) -> tuple:
    return i["task"], i["shots"], i.get("fewshot_seed"), i["filter"], i["doc_id"]


def test_ability_records_are_consistent():
    """Each committed score row is the mean of its committed items (and a perplexity, of its
    windows): what the tables and intervals are computed from is what the scores say."""
    import math

    for name in ABILITY_SNAPSHOTS:
        for r in read_snapshot(name):
            items = pd.DataFrame(r["items"])
            for row in r["summary"]["scores"]:
                if row["metric"] == "perplexity":
                    w = [x for x in r["summary"]["windows"] if f"perplexity {x['corpus']}" == row["task"]]
                    assert row["score"] == pytest.approx(math.exp(sum(x["nll"] for x in w) / sum(x["tokens"] for x in w)),
                                                         rel=1e-6), (name, row)
                elif row["primary"]:
                    mine = items[(items.task == row["task"]) & (items.shots == row["shots"])
                                 & (items.fewshot_seed == row["fewshot_seed"]) & (items["filter"] == row["filter"])]
                    assert len(mine) == row["n"] and mine.score.mean() == pytest.approx(row["score"], abs=1e-9), (name, row)


@pytest.mark.integration
@pytest.mark.parametrize("name", ABILITY_SNAPSHOTS)
def test_ability_snapshot_items_rerun_from_scratch(name, tmp_path, monkeypatch, sample_rng):
    """A random point of the snapshot rebuilt from scratch (quantized, LoRA retrained), and a random
    sample of its items and perplexity windows re-scored one by one (the seed is in the header)."""
    from workbench.abilities import rerun_items

    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))     # nothing cached
    r = sample_rng.choice([r for r in read_snapshot(name) if SAMPLES[name](r["point"])])
    items = sample_rng.sample(r["items"], min(ITEMS, len(r["items"])))
    corpora = sorted({w["corpus"] for w in r["summary"]["windows"]})
    windows = [w for c in corpora for w in sample_rng.sample([w for w in r["summary"]["windows"] if w["corpus"] == c],
                                                              WINDOWS)]
    fresh = rerun_items(r["point"], items, windows)
    lora = r["summary"]["lora"]
    what = f"{name} {r['point']['spec'] and r['point']['spec'].get('bits')}{' + LoRA' if lora else ''}"
    if lora:
        assert fresh["lora"]["trainable_params"] == lora["trainable_params"]
        rep.assert_training_reproduces(fresh["lora"]["losses"], lora["losses"], f"{what} training")
    runtime = isinstance(r["point"]["spec"], dict) and "runtime" in r["point"]["spec"]   # activations/KV rounded live
    rep.assert_items_agree({_item_key(i): i["score"] for i in fresh["items"]}, {_item_key(i): i["score"] for i in items},
                           f"{what} items", trained=bool(lora), rounded_at_run_time=runtime)
    for f, c in zip(fresh["windows"], sorted(windows, key=lambda w: (w["corpus"], w["window"]))):
        assert (f["corpus"], f["window"]) == (c["corpus"], c["window"])
        rep.assert_close(f["nll"], c["nll"], rep.RTOL_TRAINED if lora else rep.RTOL_EVAL,
                         f"{what} {c['corpus']} window {c['window']} NLL", "trained" if lora else "eval")


@pytest.mark.integration
@pytest.mark.parametrize("names", PERPLEXITY_RERUNS, ids="|".join)
def test_perplexity_snapshot_windows_rerun_from_scratch(names, sample_rng):
    """A random point of a perplexity sweep (of one of `names`, drawn) rebuilt (quantized again) and
    a random sample of its windows re-scored: each window's summed NLL must match the committed one."""
    from workbench.evaluate import rerun_windows

    name = sample_rng.choice(names)
    r = sample_rng.choice([r for r in read_snapshot(name) if SAMPLES[name](r["point"])])
    chosen = sorted(sample_rng.sample(r["items"], WINDOWS), key=lambda w: w["window"])
    fresh = rerun_windows(r["point"], [w["window"] for w in chosen])
    what = f"{name} {r['point']['spec'] and r['point']['spec'].get('bits')}"
    for f, c in zip(fresh, chosen):
        assert f["window"] == c["window"] and f["tokens"] == c["tokens"]
        rep.assert_close(f["nll"], c["nll"], rep.RTOL_EVAL, f"{what} window {c['window']} NLL", "eval")


MATRICES = 3        # matrices of a probe table re-computed per snapshot


@pytest.mark.integration
@pytest.mark.parametrize("name", PROBE_SNAPSHOTS)
def test_probe_snapshot_rows_rerun_from_scratch(name, sample_rng):
    """A random model of a per-matrix probe table and a random sample of its matrices: their rows
    computed again from scratch (quantized again, calibration inputs collected again) must equal
    the committed rows: text and integers exactly, numbers within the evaluation tolerance."""
    from workbench.probes import rerun_probe_rows

    r = sample_rng.choice(read_snapshot(name))
    modules = sample_rng.sample(sorted({i["module"] for i in r["items"]}), MATRICES)
    fresh = rerun_probe_rows(r["point"], modules)
    committed = [i for i in r["items"] if i["module"] in modules]
    what = f"{name} {r['point']['model']}"
    assert [(f["module"], f.get("label")) for f in fresh] == [(c["module"], c.get("label")) for c in committed], what
    for f, c in zip(fresh, committed):
        numbers = [k for k, v in c.items() if isinstance(v, float)]
        assert {k: v for k, v in f.items() if k not in numbers} == {k: v for k, v in c.items() if k not in numbers}, what
        rep.assert_close([f[k] for k in numbers], [c[k] for k in numbers], rep.RTOL_EVAL,
                         f"{what} {c['module']} {c.get('label', '')} {numbers}", "eval")


@pytest.mark.integration
@pytest.mark.parametrize("name", LIBRARY_SNAPSHOTS)
def test_library_snapshot_windows_rerun_from_scratch(name, sample_rng):
    """A random row of the libraries' comparison (a library's own quantized modules, or the
    workbench's RTN) built again from scratch and a sample of its windows re-scored."""
    from workbench.quant.compare import rerun_library_windows

    r = sample_rng.choice([r for r in read_snapshot(name) if SAMPLES[name](r["point"]) and r["items"]])
    chosen = sorted(sample_rng.sample(r["items"], WINDOWS), key=lambda w: w["window"])
    fresh = rerun_library_windows(r["point"], [w["window"] for w in chosen])
    for f, c in zip(fresh, chosen):
        assert f["window"] == c["window"] and f["tokens"] == c["tokens"]
        rep.assert_close(f["nll"], c["nll"], rep.RTOL_EVAL, f"{name} {r['point']['method']} window {c['window']} NLL",
                         "eval")


def test_every_snapshot_is_in_one_rerun_group():
    groups = PERPLEXITY_RERUNS + ADAPTATION_RERUNS + [(n,) for n in PROBE_SNAPSHOTS + LIBRARY_SNAPSHOTS + ABILITY_SNAPSHOTS]
    assert sorted(n for g in groups for n in g) == sorted(SAMPLES)


@pytest.mark.integration
@pytest.mark.parametrize("names", ADAPTATION_RERUNS, ids="|".join)
def test_adaptation_snapshot_points_rerun_from_scratch(names, tmp_path, monkeypatch, sample_rng):
    """A random run of a snapshot (of one of `names`, drawn; method, budget and seed drawn; the seed
    is in the header) trained again from scratch: its parameter count, its first losses, and every
    held-out item's outcome within the flips allowed a trained model."""
    from workbench.adapt.sweeps import record_of, run_point

    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))     # the causal task's lm-eval scores: no cache
    name = sample_rng.choice(names)
    r = sample_rng.choice([r for r in read_snapshot(name) if SAMPLES[name](r["point"])])
    p = r["point"]
    fresh, stored = record_of(run_point(p)), record_of(r)
    what = f"{name} {p['method']} {p['args'].get('bits')} seed {p['args'].get('seed')}"
    assert fresh["trainable_params"] == stored["trainable_params"], what
    rep.assert_training_reproduces(fresh["losses"], stored["losses"], what)
    rep.assert_items_agree(dict(enumerate(fresh["correct"])), dict(enumerate(stored["correct"])), f"{what} items",
                           trained=bool(fresh["losses"]))
