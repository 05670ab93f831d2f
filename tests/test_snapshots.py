"""Committed snapshots (data/snapshots): the heavy sweeps that notebooks 04, 05 and 06 render.

Each snapshot is recomputed in part from an empty results cache, with the arguments it records,
and must match the committed numbers: one or two models of every sweep, chosen to cover the
unquantized model, a quantized one, a component spec and LoRA training. A new snapshot without
an entry in SAMPLES fails `test_every_snapshot_is_verified`. "Match" is the rule of
workbench/reproducibility.py (the same on any x86-64 CPU), never bit for bit.
"""
import json

import numpy as np
import pandas as pd
import pytest

from workbench import abilities
from workbench import reproducibility as rep
from workbench.report import project_dir

SNAPSHOTS = project_dir() / "data" / "snapshots"
SAMPLES = {                              # snapshot -> labels recomputed in full
    "abilities_bits_sweep": ["base", "RTN W3"],
    "component_sensitivity_w2": ["only attention"],
    "abilities_lora": [],                # LoRA: training and perplexity of "RTN W3 + LoRA", below
}
RUN_SAMPLES = {                          # workbench.report.snapshot of adapt.run_methods -> runs re-run
    "adapt_encoder": ["head only", "PreQuant W4 1.0%"],
    "adapt_navigate": ["head only"],
    "adapt_causal": ["RTN W3"],          # quantize + lm-eval; the adapted causal runs take 1-2 min each
    "adapt_causal_fp": ["stable-rank LoRA r8"],
}
KEYS = ["label", "task", "shots", "metric", "filter"]


def _compare(fresh: pd.DataFrame, committed: pd.DataFrame, fresh_samples: pd.DataFrame,
             committed_samples: pd.DataFrame, name: str):
    """Scores by the rule for their kind; each model's per-item outcomes through its samples."""
    fresh, committed = (df.astype({"shots": float}).fillna({"shots": -1}).set_index(KEYS).sort_index()
                        for df in (fresh, committed))                  # -1: no shots (perplexity), NaN != NaN
    assert list(fresh.index) == list(committed.index)
    for key, row in committed.iterrows():
        what = f"{name} {key}"
        if dict(zip(KEYS, key))["metric"] == "perplexity":
            rep.assert_eval_reproduces(fresh.loc[key, "score"], row.score, what)
        else:                                                          # a mean of n 0/1 outcomes
            rep.assert_metric_reproduces(fresh.loc[key, "score"], row.score, int(row.n), what, trained=False)
    items = ["label", "task", "shots", "filter"]
    for group, done in committed_samples.groupby(items):
        mine = fresh_samples
        for col, value in zip(items, group):
            mine = mine[mine[col] == value]
        rep.assert_items_agree(dict(zip(mine.doc_id, mine.score)), dict(zip(done.doc_id, done.score)),
                               f"{name} {group} per item")


def test_every_snapshot_is_verified():
    names = sorted(p.stem for p in SNAPSHOTS.glob("*.json"))
    assert names == sorted([*SAMPLES, *RUN_SAMPLES])


@pytest.fixture(scope="module")
def smollm():
    from workbench.models import load_model

    return load_model("smollm2-135m")


@pytest.mark.integration
@pytest.mark.parametrize("name", [n for n, labels in SAMPLES.items() if labels])
def test_snapshot_recomputes_from_scratch(name, smollm, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))     # an empty results cache
    args, committed = abilities.read_snapshot(name)
    model, tokenizer, record = smollm
    assert args.pop("model") == record.name
    specs = args.pop("specs")
    labels = SAMPLES[name]
    fresh = abilities.ability_sweep(model, tokenizer, record, {k: specs[k] for k in labels}, progress=False, **args)
    written = {}
    for part in ("scores", "samples"):                           # through CSV, as the snapshot was
        getattr(fresh, part).to_csv(tmp_path / f"{part}.csv", index=False)
        written[part] = pd.read_csv(tmp_path / f"{part}.csv", keep_default_na=False, na_values=[""])
    _compare(written["scores"], committed.scores[committed.scores.label.isin(labels)], written["samples"],
             committed.samples[committed.samples.label.isin(labels)], name)


@pytest.mark.integration
def test_lora_snapshot_retrains_to_the_same_perplexity(smollm, tmp_path, monkeypatch):
    from workbench.data import evaluation_text
    from workbench.evaluate import perplexity
    from workbench.finetune import lora_finetune

    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    args, committed = abilities.read_snapshot("abilities_lora")
    model, tokenizer, record = smollm
    qmodel, _ = abilities.quantize_for_spec(model, args["specs"]["RTN W3"])
    tuned, rec = lora_finetune(qmodel, tokenizer, progress=False, **args["lora"])
    ppl = perplexity(tuned, tokenizer, evaluation_text("lee"), 512, max_windows=2, progress=False)
    row = committed.scores[(committed.scores.label == "RTN W3 + LoRA") & (committed.scores.task == "perplexity")]
    assert len(row) == 1
    rep.assert_close(ppl, row.score.item(), rep.RTOL_TRAINED, "abilities_lora RTN W3 + LoRA perplexity", "trained")
    assert rec["trainable_params"] == row.trainable_params.item()


def test_snapshot_sweep_uses_a_matching_snapshot_and_recomputes_otherwise(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_OUTPUT", str(tmp_path))
    monkeypatch.delenv("WORKBENCH_RECOMPUTE", raising=False)
    calls = []

    def fake_sweep(model, tokenizer, record, specs, progress=True, **kwargs):
        calls.append(kwargs["limit"])
        scores = pd.DataFrame([{"label": k, "task": "t", "shots": None, "metric": "m", "filter": "none",
                                "score": 1 / 3 + kwargs["limit"], "primary": True} for k in specs])
        samples = pd.DataFrame([{"label": k, "response": "NA", "prompt": "a,\n\"b\""} for k in specs])
        return abilities.AbilityResult(scores, samples)

    monkeypatch.setattr(abilities, "ability_sweep", fake_sweep)
    model, tokenizer, record = tiny_lm
    specs = {"base": None, "W3": abilities.bits_sweep_specs([3], ["rtn"])["RTN W3"]}
    first = abilities.snapshot_sweep("demo", model, tokenizer, record, specs, limit=2)
    again = abilities.snapshot_sweep("demo", model, tokenizer, record, specs, limit=2)
    assert calls == [2]                                          # the second call read the snapshot
    pd.testing.assert_frame_equal(first.scores, again.scores)
    assert first.scores.score.iloc[0] == 1 / 3 + 2              # floats survive the CSV exactly
    assert first.samples.response.iloc[0] == "NA" and first.samples.prompt.iloc[0] == "a,\n\"b\""
    abilities.snapshot_sweep("demo", model, tokenizer, record, specs, limit=3)
    assert calls == [2, 3]                                       # another argument: recomputed
    abilities.snapshot_sweep("demo", model, tokenizer, record, specs, limit=3, recompute=True)
    assert calls == [2, 3, 3]
    args, _ = abilities.read_snapshot("demo")
    assert args["specs"] == specs and args["limit"] == 3 and args["model"] == record.name
    meta = json.loads((tmp_path / "data" / "snapshots" / "demo.json").read_text())
    assert meta["versions"]["tasks"] and meta["versions"]["lm_eval"]
    with pytest.raises(FileNotFoundError, match="WORKBENCH_RECOMPUTE=1"):
        abilities.read_snapshot("missing")


@pytest.mark.integration
@pytest.mark.parametrize("name", list(RUN_SAMPLES))
def test_adaptation_snapshot_reruns_from_scratch(name, tmp_path, monkeypatch):
    from workbench import adapt
    from workbench.abilities import ability_task
    from workbench.finetune import classification_task, load_classifier
    from workbench.models import load_model
    from workbench.report import read_snapshot_json

    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))     # the causal task's lm-eval scores: no cache
    snap = read_snapshot_json(name)
    args = snap["args"]
    if "dataset" in args:                                      # an encoder on a classification set
        model, tokenizer, _ = load_classifier(args["model"]["name"], seed=args["seed"])
        task = classification_task(tokenizer, args["dataset"], seed=args["seed"])
    else:                                                      # a causal LM on an ability task
        model, tokenizer, _ = load_model(args["model"]["name"])
        task = ability_task(tokenizer, args["task"], limit=args["limit"], n_train=args["n_train"],
                            num_fewshot=args["shots"])
    for label in RUN_SAMPLES[name]:
        method, kwargs = args["runs"][label]
        rec = adapt.METHODS[method](model, task, **kwargs)[1]
        stored = snap["result"][label]
        assert rec["trainable_params"] == stored["trainable_params"], label
        what = f"{name} {label}"
        rep.assert_training_reproduces(rec["losses"], stored["losses"], what)
        n = task.limit if hasattr(task, "limit") else len(task.dev_labels)   # items scored
        rep.assert_metric_reproduces(rec["accuracy"], stored["accuracy"], n, what, trained=bool(rec["losses"]))


def test_report_snapshot_reads_back_and_recomputes_when_args_change(tmp_path, monkeypatch):
    from workbench.report import read_snapshot_json, snapshot

    monkeypatch.setenv("WORKBENCH_OUTPUT", str(tmp_path))
    monkeypatch.delenv("WORKBENCH_RECOMPUTE", raising=False)
    calls = []

    def compute(x):
        calls.append(x)
        return {"run": {"losses": [1 / 3, float("nan")], "chosen": {"a.b": 2}, "ok": True}}

    first = snapshot("demo", {"x": 1, "runs": {"a": ("lora", {"r": 8})}}, lambda: compute(1))
    again = snapshot("demo", {"x": 1, "runs": {"a": ("lora", {"r": 8})}}, lambda: compute(1))
    assert calls == [1] and first["run"]["losses"][0] == 1 / 3 and again["run"]["chosen"] == {"a.b": 2}
    snapshot("demo", {"x": 2, "runs": {"a": ("lora", {"r": 8})}}, lambda: compute(2))
    assert calls == [1, 2]
    snapshot("demo", {"x": 2, "runs": {"a": ("lora", {"r": 8})}}, lambda: compute(2), recompute=True)
    assert calls == [1, 2, 2]
    stored = read_snapshot_json("demo")
    assert stored["args"]["runs"]["a"] == ["lora", {"r": 8}] and stored["versions"]["torch"]
    with pytest.raises(TypeError, match="JSON-like"):
        snapshot("demo", {"x": object()}, lambda: compute(3))
