"""workbench/adapt/sweeps.py: adaptation runs as engine points, resumed, in the order asked, one
record format whether computed or read back."""

import pytest

from workbench.adapt import sweeps

TASK = {"kind": "classification", "dataset": "polarity", "seed": 0}


def test_a_task_description_is_checked():
    with pytest.raises(ValueError, match="kind one of classification, ability, corpus"):
        sweeps.load_model_for("minilm-l6", {"kind": "glue"})
    with pytest.raises(ValueError, match=r"needs exactly the fields \['dataset', 'seed'\]"):
        sweeps.load_model_for("minilm-l6", {"kind": "classification", "dataset": "polarity"})


@pytest.mark.integration
def test_runs_are_stored_points_read_back_in_the_order_asked(tmp_path, monkeypatch):
    from workbench import adapt

    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    calls = []
    real = sweeps.run_point
    monkeypatch.setattr(sweeps, "run_point", lambda p: calls.append(p["method"]) or real(p))
    monkeypatch.setattr(sweeps.run_point, "__module__", real.__module__, raising=False)
    monkeypatch.setattr(sweeps.run_point, "__qualname__", real.__qualname__, raising=False)
    runs = {"probe": ("head_only", {"steps": 3}), "W4": ("unadapted", {"bits": 4})}
    first = sweeps.run_methods("minilm-l6", TASK, runs, name="t")
    assert list(first) == ["probe", "W4"] and calls == ["head_only", "unadapted"]
    assert len(first["probe"]["losses"]) == 3 and first["W4"]["losses"] == [] and first["W4"]["bits"] == 4
    again = sweeps.run_methods("minilm-l6", TASK, {"W4": ("unadapted", {"bits": 4}), **runs}, name="t")
    assert calls == ["head_only", "unadapted"] and list(again) == ["W4", "probe"] and again["probe"] == first["probe"]
    # the record equals the method called directly (the same seeded head, the same task)
    model, _, _ = sweeps.load_model_for("minilm-l6", TASK)
    direct = adapt.head_only(model, sweeps.task_for("minilm-l6", TASK), steps=3)[1]
    assert direct["losses"] == first["probe"]["losses"] and direct["accuracy"] == first["probe"]["accuracy"]
    sweeps.run_methods("minilm-l6", {**TASK, "seed": 1}, runs, name="t")     # another head and split: computed
    assert calls == ["head_only", "unadapted"] * 2


@pytest.mark.integration
def test_seeds_repeat_every_run_with_its_seed_and_the_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    runs = {"probe": ("head_only", {"steps": 3})}
    by_seed = sweeps.run_methods("minilm-l6", TASK, runs, name="s", seeds=[0, 1])
    assert len(by_seed["probe"]) == 2
    assert by_seed["probe"][0] == sweeps.run_methods("minilm-l6", TASK, runs, name="s")["probe"]   # seed 0: the plain run
    alone = sweeps.run_methods("minilm-l6", {**TASK, "seed": 1}, {"probe": ("head_only", {"steps": 3, "seed": 1})}, name="s")
    assert by_seed["probe"][1] == alone["probe"]                                  # seed 1: split, head and training
    with pytest.raises(ValueError, match="seeds must be a non-empty list of ints"):
        sweeps.run_methods("minilm-l6", TASK, runs, name="s", seeds=[])
