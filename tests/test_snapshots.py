"""Committed snapshots (data/snapshots/<name>.json): the records of the heavy sweeps that notebooks
04, 05 and 06 render, written by the engine of workbench/experiments.py.

Two checks per snapshot. Its records are current: each key is what this code computes from the
stored point, measure and versions, and the versions are this checkout's, so a notebook reads the
snapshot instead of recomputing it. And a sample of its points is re-run from scratch (an empty
results store) and must match the committed records: summaries and every item, by the rule of
workbench/reproducibility.py (the same on any x86-64 CPU), never bit for bit. A new snapshot
without a SAMPLES entry fails `test_every_snapshot_is_verified`.
"""
import pandas as pd
import pytest

from workbench import reproducibility as rep
from workbench.experiments import point_key, read_snapshot, snapshot_path


def _rtn3(p):
    return p["spec"] is not None and p["spec"].get("method") == "rtn" and p["spec"].get("bits") == 3


def _only_attention(p):
    return p["spec"] is not None and [c is not None for _, c in p["spec"]["linears"]] == [True, False] \
        and p["spec"]["embeddings"] is None


SAMPLES = {                   # snapshot -> which of its points are re-run
    "abilities_bits_sweep": lambda p: p["spec"] is None or _rtn3(p),
    "component_sensitivity_w2": _only_attention,
    "abilities_lora": lambda p: _rtn3(p),              # LoRA: its training and perplexity (below)
    "adapt_encoder": lambda p: p["method"] == "head_only" or (p["method"] == "prequant" and p["args"]["budget"] == 0.01
                                                              and p["args"]["bits"] == 4),
    "adapt_navigate": lambda p: p["method"] == "head_only",
    "adapt_causal": lambda p: p["method"] == "unadapted" and p["args"]["bits"] == 3,   # quantize + lm-eval
    "adapt_causal_fp": lambda p: p["method"] == "stable_rank_lora",   # the adapted causal runs take 1-2 min each
}
ABILITY_SNAPSHOTS = ("abilities_bits_sweep", "component_sensitivity_w2", "abilities_lora")


def _measure(name):
    if name in ABILITY_SNAPSHOTS:
        from workbench.abilities import ability_point

        return ability_point
    from workbench.adapt.sweeps import run_point

    return run_point


def test_every_snapshot_is_verified():
    names = sorted(p.stem for p in snapshot_path("x").parent.glob("*.json"))
    assert names == sorted(SAMPLES)
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
    else:
        from workbench.adapt.sweeps import load_model_for, versions

        current = versions(load_model_for(point["model"], point["task"])[2], point["task"])
    measure = _measure(name)
    for r in records:
        assert {k: v for k, v in r["versions"].items() if k != "workbench"} == current, name
        assert point_key(r["point"], measure, versions=current) == r["key"], f"{name}: {r['point']}"


def _scores_match(fresh: list[dict], committed: list[dict], what: str):
    keys = ["task", "shots", "metric", "filter"]
    f, c = (pd.DataFrame(x).astype({"shots": float}).fillna({"shots": -1}).set_index(keys).sort_index()
            for x in (fresh, committed))
    assert list(f.index) == list(c.index), what
    for key, row in c.iterrows():
        if dict(zip(keys, key))["metric"] == "perplexity":
            rep.assert_eval_reproduces(f.loc[key, "score"], row.score, f"{what} {key}")
        else:                                                           # a mean of n 0/1 outcomes
            rep.assert_metric_reproduces(f.loc[key, "score"], row.score, int(row.n), f"{what} {key}", trained=False)


def _items_match(fresh: list[dict], committed: list[dict], what: str):
    groups = ["task", "shots", "filter"]
    f, c = pd.DataFrame(fresh).fillna({"shots": -1}), pd.DataFrame(committed).fillna({"shots": -1})
    for group, done in c.groupby(groups):
        mine = f[(f[groups] == pd.Series(dict(zip(groups, group)))).all(axis=1)]
        rep.assert_items_agree(dict(zip(mine.doc_id, mine.score)), dict(zip(done.doc_id, done.score)),
                               f"{what} {group} per item")


@pytest.mark.integration
@pytest.mark.parametrize("name", [n for n in ABILITY_SNAPSHOTS if n != "abilities_lora"])
def test_ability_snapshot_points_rerun_from_scratch(name, tmp_path, monkeypatch):
    from workbench.abilities import ability_point

    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))     # nothing cached
    for r in (r for r in read_snapshot(name) if SAMPLES[name](r["point"])):
        fresh = ability_point(r["point"])
        what = f"{name} {r['point']['spec'] and r['point']['spec'].get('bits')}"
        _scores_match(fresh["summary"]["scores"], r["summary"]["scores"], what)
        _items_match(fresh["items"], r["items"], what)


@pytest.mark.integration
def test_lora_snapshot_retrains_to_the_same_losses_and_perplexity(tmp_path, monkeypatch):
    """The LoRA of an abilities_lora point retrained, and the tuned model's perplexity (its lm-eval
    scoring is the same code as the other ability snapshots' re-runs)."""
    from workbench import adapt
    from workbench.abilities import quantize_for_spec
    from workbench.data import evaluation_text
    from workbench.evaluate import perplexity
    from workbench.finetune import corpus_task
    from workbench.models import load_model
    from workbench.quant import spec_from_json

    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    (r,) = [r for r in read_snapshot("abilities_lora") if SAMPLES["abilities_lora"](r["point"])]
    p = r["point"]
    model, tokenizer, _ = load_model(p["model"])
    qmodel, _ = quantize_for_spec(model, spec_from_json(p["spec"]))
    task = {k: v for k, v in p["lora"]["task"].items() if k != "kind"}
    tuned, rec = adapt.lora(qmodel, corpus_task(tokenizer, **task), **p["lora"]["args"])
    committed = r["summary"]["lora"]
    assert rec["trainable_params"] == committed["trainable_params"]
    rep.assert_training_reproduces(rec["losses"], committed["losses"], "abilities_lora RTN W3 LoRA")
    ppl = perplexity(tuned, tokenizer, evaluation_text("lee"), 512, max_windows=p["perplexity_windows"], progress=False)
    (row,) = [s for s in r["summary"]["scores"] if s["task"] == "perplexity"]
    rep.assert_close(ppl, row["score"], rep.RTOL_TRAINED, "abilities_lora RTN W3 + LoRA perplexity", "trained")


@pytest.mark.integration
@pytest.mark.parametrize("name", [n for n in SAMPLES if n not in ABILITY_SNAPSHOTS])
def test_adaptation_snapshot_points_rerun_from_scratch(name, tmp_path, monkeypatch):
    from workbench.adapt.sweeps import record_of, run_point, task_for

    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))     # the causal task's lm-eval scores: no cache
    for r in (r for r in read_snapshot(name) if SAMPLES[name](r["point"])):
        p = r["point"]
        fresh, stored = record_of(run_point(p)), record_of(r)
        what = f"{name} {p['method']} {p['args'].get('bits')}"
        assert fresh["trainable_params"] == stored["trainable_params"], what
        rep.assert_training_reproduces(fresh["losses"], stored["losses"], what)
        ability = p["task"]["kind"] == "ability"
        n = p["task"]["limit"] if ability else len(task_for(p["model"], p["task"]).dev_labels)   # items scored
        rep.assert_metric_reproduces(fresh["accuracy"], stored["accuracy"], n, what, trained=bool(fresh["losses"]))
