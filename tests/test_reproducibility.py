"""The cross-machine rule (workbench/reproducibility.py): what passes, what fails, and that a
committed number moved by 1% fails it — so the snapshot checks can fail."""

import json

import pytest

from workbench import reproducibility as rep
from workbench.experiments import read_snapshot


def _committed_perplexity():
    return [s["score"] for r in read_snapshot("abilities_bits_sweep") for s in r["summary"]["scores"]
            if s["metric"] == "perplexity"]


def _committed_losses():
    return {r["point"]["method"]: [i["loss"] for i in r["items"]] for r in read_snapshot("adapt_causal_fp") if r["items"]}


def test_last_bit_differences_pass_and_a_one_percent_move_fails_every_evaluation():
    committed = _committed_perplexity()
    assert len(committed) >= 5
    last_bits = [x * (1 + 2e-7) for x in committed]                   # what another CPU moves
    assert rep.assert_eval_reproduces(last_bits, committed, "perplexity") < 1e-6
    for i in range(len(committed)):
        moved = list(committed)
        moved[i] *= 1.01
        with pytest.raises(rep.NotReproduced, match=rf"\[{i}\] fresh .* \(rel 1.00e-02\)"):
            rep.assert_eval_reproduces(moved, committed, "perplexity")
        with pytest.raises(rep.NotReproduced):
            rep.assert_close(moved[i], committed[i], rep.RTOL_TRAINED, "trained perplexity", "trained")


def test_training_compares_the_early_steps_and_a_one_percent_move_fails():
    for label, losses in _committed_losses().items():
        later_chaos = losses[:rep.EARLY_STEPS] + [x * 1.5 for x in losses[rep.EARLY_STEPS:]]
        rep.assert_training_reproduces(later_chaos, losses, label)      # after the early steps: not compared
        for step in range(rep.EARLY_STEPS):
            moved = list(losses)
            moved[step] *= 1.01
            with pytest.raises(rep.NotReproduced, match="first 5 losses"):
                rep.assert_training_reproduces(moved, losses, label)
        with pytest.raises(rep.NotReproduced, match="training steps"):
            rep.assert_training_reproduces(losses[:-1], losses, label)


def test_nan_equals_nan_but_not_a_number():
    assert rep.assert_close([float("nan"), 2.0], [float("nan"), 2.0], 1e-4, "x") == 0.0
    with pytest.raises(rep.NotReproduced):
        rep.assert_close([float("nan")], [2.0], 1e-4, "x")
    with pytest.raises(rep.NotReproduced, match="2 fresh values for 1"):
        rep.assert_close([1.0, 2.0], [1.0], 1e-4, "x")


def test_items_may_flip_only_as_many_as_allowed_and_are_listed():
    committed = {i: float(i % 3 == 0) for i in range(100)}
    assert rep.item_flips(100) == 2 and rep.item_flips(6) == 0 and rep.trained_flips(6) == 1
    fresh = dict(committed)
    fresh[1], fresh[2] = 1.0, 1.0
    assert rep.assert_items_agree(fresh, committed, "fixed") == 2
    fresh[4] = 1.0
    with pytest.raises(rep.NotReproduced, match=r"3 of 100 items differ \(2 allowed\):\n  1: .*\n  2: .*\n  4: "):
        rep.assert_items_agree(fresh, committed, "fixed")
    assert rep.assert_items_agree(fresh, committed, "trained", trained=True) == 3
    assert rep.assert_items_agree(fresh, committed, "W8A8KV8", rounded_at_run_time=True) == 3
    one = {0: 1.0, 1: 0.0}                                   # 2 items: a fixed model none, run-time rounding one
    with pytest.raises(rep.NotReproduced, match="0 allowed"):
        rep.assert_items_agree({0: 0.0, 1: 0.0}, one, "fixed")
    assert rep.assert_items_agree({0: 0.0, 1: 0.0}, one, "W4A8", rounded_at_run_time=True) == 1
    with pytest.raises(rep.NotReproduced, match="items differ: only fresh"):
        rep.assert_items_agree({**committed, 100: 1.0}, committed, "fixed")


def test_an_accuracy_may_move_by_its_allowed_items_only():
    n = 40
    assert rep.assert_metric_reproduces(23 / n, 22 / n, n, "trained") == 1
    with pytest.raises(rep.NotReproduced, match="3.0 items apart, 2 allowed"):
        rep.assert_metric_reproduces(25 / n, 22 / n, n, "trained")
    with pytest.raises(rep.NotReproduced, match="1.0 items apart, 0 allowed"):
        rep.assert_metric_reproduces(23 / n, 22 / n, n, "fixed", trained=False)


def test_checks_log_what_they_measured(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("WORKBENCH_REPRO_LOG", str(log))
    rep.assert_eval_reproduces(1.0 + 1e-6, 1.0, "ppl")
    rep.assert_training_reproduces([1.0] * 7, [1.0] * 6 + [2.0], "run")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["eval", "train_late", "train_early"]
    assert records[0]["max_rel"] == pytest.approx(1e-6) and records[1]["max_rel"] == pytest.approx(0.5)
