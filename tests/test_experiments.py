"""workbench/experiments.py: stored per point, keyed by every default, resumable after SIGKILL,
the same records in-process, in local processes and on a local Ray."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench import experiments
from workbench.experiments import items_frame, point_key, run_sweep, summary_frame

CALLS_ENV = "WORKBENCH_TEST_CALLS"          # a folder where the toy measure leaves one file per call


def toy_measure(point: dict) -> dict:
    """A deterministic measure with items: point x, k items (x * j + offset), and a call log."""
    calls = os.environ.get(CALLS_ENV)
    if calls:
        Path(calls, f"{point['x']}-{time.monotonic_ns()}").touch()
    time.sleep(point.get("sleep", 0))
    items = [{"j": j, "value": point["x"] * j + point["offset"], "text": f"item {j} of {point['x']}"}
             for j in range(point["k"])]
    return {"summary": {"total": sum(i["value"] for i in items), "n": len(items)}, "items": items}


def _strip(records):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


POINTS = [{"x": x, "k": 3} for x in range(6)]
DEFAULTS = {"offset": 0.5, "sleep": 0.0}


@pytest.fixture
def calls(tmp_path, monkeypatch):
    folder = tmp_path / "calls"
    folder.mkdir()
    monkeypatch.setenv(CALLS_ENV, str(folder))
    return folder


def test_records_are_stored_per_point_and_not_computed_twice(tmp_path, calls):
    records = run_sweep(POINTS, toy_measure, "toy", defaults=DEFAULTS, root=tmp_path / "store", progress=False)
    assert [r["summary"]["total"] for r in records] == [x * 3 + 1.5 for x in range(6)]
    assert len(list((tmp_path / "store").glob("*.json"))) == 6 and len(list(calls.iterdir())) == 6
    again = run_sweep(POINTS + POINTS[:2], toy_measure, "toy", defaults=DEFAULTS, root=tmp_path / "store",
                      progress=False)
    assert len(list(calls.iterdir())) == 6 and _strip(again[:6]) == _strip(records)
    df, items = summary_frame(records), items_frame(records)
    assert list(df.columns[:4]) == ["offset", "sleep", "x", "k"] and len(df) == 6
    assert len(items) == 18 and items.query("x == 5 and j == 2").value.item() == 10.5


def test_every_default_is_part_of_the_key(tmp_path, calls):
    k = point_key({"x": 1, "k": 3}, toy_measure, DEFAULTS)
    assert k == point_key({"x": 1, "k": 3, "offset": 0.5}, toy_measure, DEFAULTS)        # spelled out or not
    assert k != point_key({"x": 1, "k": 3}, toy_measure, {**DEFAULTS, "offset": 0.25})   # a changed default
    assert k != point_key({"x": 1, "k": 3}, toy_measure, DEFAULTS, versions={"lm_eval": "0.4.10"})
    with pytest.raises(ValueError, match="not a top-level function"):
        run_sweep(POINTS, lambda p: p, "toy", root=tmp_path, progress=False)
    with pytest.raises(TypeError, match="points are plain dicts"):
        run_sweep([{"x": object()}], toy_measure, "toy", root=tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown backend"):
        run_sweep(POINTS, toy_measure, "toy", backend="dask", root=tmp_path, progress=False)


def test_a_corrupt_record_is_recomputed(tmp_path, calls):
    records = run_sweep(POINTS[:2], toy_measure, "toy", defaults=DEFAULTS, root=tmp_path, progress=False)
    path = tmp_path / f"{records[0]['key']}.json"
    path.write_text(path.read_text()[:50])
    with pytest.warns(UserWarning, match="cannot be read"):
        again = run_sweep(POINTS[:2], toy_measure, "toy", defaults=DEFAULTS, root=tmp_path, progress=False)
    assert _strip(again) == _strip(records) and len(list(calls.iterdir())) == 3


KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
import test_experiments as t
from workbench import experiments
done = []
real = experiments.atomic_write_text
def write_then_maybe_die(path, text):
    real(path, text)
    done.append(path)
    if len(done) == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)      # killed right after its third record is stored
experiments.atomic_write_text = write_then_maybe_die
experiments.run_sweep(t.POINTS, t.toy_measure, "toy", defaults=t.DEFAULTS, root=sys.argv[1], progress=False)
"""


def test_a_sweep_killed_halfway_resumes_and_equals_an_uninterrupted_one(tmp_path, calls):
    store = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(store), str(Path(__file__).parent), "3"],
                          capture_output=True, text=True, timeout=120, env={**os.environ})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(list(store.glob("*.json"))) == 3 and not list(store.glob(".*"))   # three whole records, no debris
    assert len(list(calls.iterdir())) == 3
    resumed = run_sweep(POINTS, toy_measure, "toy", defaults=DEFAULTS, root=store, progress=False)
    assert len(list(calls.iterdir())) == 6                                      # only the other three ran
    clean = run_sweep(POINTS, toy_measure, "toy", defaults=DEFAULTS, root=tmp_path / "clean", progress=False)
    assert _strip(resumed) == _strip(clean)


def test_local_processes_give_the_same_records(tmp_path, calls):
    inproc = run_sweep(POINTS, toy_measure, "toy", defaults=DEFAULTS, root=tmp_path / "a", progress=False)
    procs = run_sweep(POINTS, toy_measure, "toy", defaults=DEFAULTS, root=tmp_path / "b", backend="processes",
                      workers=2, progress=False)
    assert _strip(procs) == _strip(inproc)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in (tmp_path / "b").iterdir())


def test_a_local_ray_gives_the_same_records(tmp_path, calls):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])    # workers need not import this test file
    inproc = run_sweep(POINTS, toy_measure, "toy", defaults=DEFAULTS, root=tmp_path / "a", progress=False)
    try:
        t0 = time.perf_counter()
        on_ray = run_sweep(POINTS, toy_measure, "toy", defaults=DEFAULTS, root=tmp_path / "b", backend="ray",
                           workers=2, progress=False)
        print(f"\nlocal Ray, {len(POINTS)} points: {time.perf_counter() - t0:.1f} s (Ray start included)")
    finally:
        ray.shutdown()
    assert _strip(on_ray) == _strip(inproc)
    assert json.loads(next((tmp_path / "b").iterdir()).read_text())["format"] == experiments.RECORD_FORMAT


def test_perplexity_points_keep_every_window(tiny_lm_dir, tiny_text, tmp_path, monkeypatch):
    """A real measure: the stored windows reproduce the perplexity, and any window re-runs alone."""
    import math

    from workbench import data, evaluate
    from workbench.models import load_model

    monkeypatch.setattr(data, "evaluation_text", lambda corpus="lee": tiny_text)
    model, tok, record = load_model(str(tiny_lm_dir))
    points = [{"model": str(tiny_lm_dir), "spec": None, "seqlen": 16},
              {"model": str(tiny_lm_dir), "spec": {"bits": 3, "group_size": 16}, "seqlen": 16}]
    records = run_sweep(points, evaluate.perplexity_point, "ppl", defaults=evaluate.PERPLEXITY_DEFAULTS,
                        versions={"model": record.key}, root=tmp_path, progress=False)
    fp, q3 = records
    assert fp["summary"]["perplexity"] == pytest.approx(evaluate.perplexity(model, tok, tiny_text, seqlen=16,
                                                                            progress=False), rel=1e-6)
    assert q3["summary"]["perplexity"] != fp["summary"]["perplexity"]       # 3 bits moved it (random weights: either way)
    for r in records:
        nll = sum(i["nll"] for i in r["items"]) / sum(i["tokens"] for i in r["items"])
        assert math.exp(nll) == pytest.approx(r["summary"]["perplexity"], rel=1e-6)
    j = len(fp["items"]) // 2                                        # re-run one window alone
    window = evaluate.token_windows(tok, tiny_text, 16)[j : j + 1]
    assert evaluate.window_nll(model, window, progress=False).item() == pytest.approx(fp["items"][j]["nll"], rel=1e-6)


def test_a_committed_snapshot_is_read_then_rewritten_with_exactly_the_sweeps_records(tmp_path, calls, monkeypatch):
    monkeypatch.setenv("WORKBENCH_OUTPUT", str(tmp_path / "project"))     # where data/snapshots/ is
    monkeypatch.delenv("WORKBENCH_RECOMPUTE", raising=False)
    store = tmp_path / "store"
    first = run_sweep(POINTS[:3], toy_measure, "toy", defaults=DEFAULTS, root=store, snapshot="demo", progress=False)
    path = experiments.snapshot_path("demo")
    assert path == tmp_path / "project" / "data" / "snapshots" / "demo.json.gz"
    written = path.read_bytes()
    assert _strip(experiments.read_snapshot("demo")) == _strip(first) and len(list(calls.iterdir())) == 3

    # a fresh clone: no stored records, only the committed snapshot -> nothing is computed
    again = run_sweep(POINTS[:3], toy_measure, "toy", defaults=DEFAULTS, root=tmp_path / "empty", snapshot="demo",
                      progress=False)
    assert again == first and len(list(calls.iterdir())) == 3
    # another point set: the matching points come from the snapshot, the new one is computed,
    # and the snapshot then holds exactly this sweep's points (the dropped one goes)
    mixed = run_sweep(POINTS[1:4], toy_measure, "toy", defaults=DEFAULTS, root=tmp_path / "empty", snapshot="demo",
                      progress=False)
    assert len(list(calls.iterdir())) == 4 and mixed[:2] == first[1:]
    assert [r["point"]["x"] for r in experiments.read_snapshot("demo")] == [1, 2, 3]
    # WORKBENCH_RECOMPUTE=1 (make reproduce) passes over the snapshot: every point not in the
    # results store is measured, and a second (resumed) reproduction measures nothing again
    monkeypatch.setenv("WORKBENCH_RECOMPUTE", "1")
    run_sweep(POINTS[1:4], toy_measure, "toy", defaults=DEFAULTS, root=tmp_path / "reproduce", snapshot="demo",
              progress=False)
    assert len(list(calls.iterdir())) == 7
    run_sweep(POINTS[1:4], toy_measure, "toy", defaults=DEFAULTS, root=tmp_path / "reproduce", snapshot="demo",
              progress=False)
    assert len(list(calls.iterdir())) == 7
    run_sweep(POINTS[1:4], toy_measure, "toy", defaults=DEFAULTS, root=tmp_path / "reproduce", snapshot="demo",
              recompute=True, progress=False)                  # recompute=True: everything again
    assert len(list(calls.iterdir())) == 10
    # another default or version makes another key: the snapshot is not used for it
    monkeypatch.delenv("WORKBENCH_RECOMPUTE")
    run_sweep(POINTS[1:2], toy_measure, "toy", defaults={**DEFAULTS, "offset": 1.5}, root=tmp_path / "other",
              snapshot="demo", progress=False)
    assert len(list(calls.iterdir())) == 11
    # the same records give the same bytes (no time stamp in the gzip header), and a snapshot in
    # the plain JSON of earlier versions is read, then replaced by the gzipped one
    legacy = path.with_suffix("")
    legacy.write_text(json.dumps({"format": experiments.RECORD_FORMAT, "records": first}))
    path.unlink()
    assert run_sweep(POINTS[:3], toy_measure, "toy", defaults=DEFAULTS, root=tmp_path / "empty", snapshot="demo",
                     progress=False) == first and len(list(calls.iterdir())) == 11
    assert path.read_bytes() == written and not legacy.exists()
    # a snapshot of another format is a clear error, not a silent recompute
    path.write_bytes(gzip.compress(json.dumps({"format": 0, "records": []}).encode()))
    with pytest.raises(ValueError, match="WORKBENCH_RECOMPUTE=1"):
        experiments.read_snapshot("demo")
    with pytest.raises(FileNotFoundError, match="make reproduce"):
        experiments.read_snapshot("missing")


def test_loaded_keeps_one_object_of_each_kind():
    made = []
    experiments._LOADED.clear()
    a = experiments.loaded(("thing", 1), lambda: made.append(1) or object())
    assert experiments.loaded(("thing", 1), lambda: made.append(1) or object()) is a and made == [1]
    b = experiments.loaded(("thing", 2), lambda: made.append(2) or object())
    assert b is not a and made == [1, 2] and experiments._LOADED["thing"][1] is b
    mine = object()
    experiments.provide(("thing", 3), mine)
    assert experiments.loaded(("thing", 3), lambda: made.append(3)) is mine and made == [1, 2]
    experiments._LOADED.clear()


def test_frame_rows_makes_plain_json_rows_and_names_what_it_cannot_store():
    import numpy as np
    import pandas as pd

    rows = experiments.frame_rows(pd.DataFrame({"module": ["a", "b"], "shape": [(2, 3), (4, 5)],
                                                "error": np.array([0.5, np.nan], dtype=np.float32)}))
    assert rows[0] == {"module": "a", "shape": [2, 3], "error": 0.5}
    assert type(rows[0]["error"]) is float and rows[1]["error"] != rows[1]["error"]    # NaN kept
    with pytest.raises(TypeError, match="cannot store"):
        experiments.frame_rows(pd.DataFrame({"x": [object()]}))


def test_notebook_of_snapshots_reads_names_and_f_string_names_from_the_notebook_scripts(tmp_path):
    (tmp_path / "01_a.py").write_text('run(name="alpha_bits", snapshot=True)\n'
                                      'for s in (0, 1): run(name=f"alpha_draw{s}", snapshot=True)\n')
    (tmp_path / "02_b.py").write_text('run(name=f"beta_{kind}_w{BITS}")\nrun(name="alpha_bits")\n'
                                      'x = f"{prefix}"  # no literal head: names nothing\n')
    owners = experiments.notebook_of_snapshots(
        ["alpha_draw1", "beta_grid_w4", "alpha_bits", "gamma"], tmp_path)
    assert owners == {"alpha_draw1": "01_a.ipynb", "beta_grid_w4": "02_b.ipynb",
                      "alpha_bits": None,        # named by two notebooks: no owner
                      "gamma": None}             # named by none


def test_reproduce_plan_owns_every_committed_snapshot_and_counts_what_a_store_holds(tmp_path, monkeypatch):
    plan = experiments.reproduce_plan()
    unowned = plan[plan.notebook.isna()].snapshot.tolist()
    assert not unowned, f"snapshots no notebook names (or several do): {unowned}"
    assert (plan.points > 0).all() and (plan.wall_s > 0).all()
    name = plan.snapshot.iloc[0]
    records = experiments.read_snapshot(name)
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))               # as make reproduce sets it
    stored = experiments.sweep_dir(name)                                   # where run_sweep stores the sweep
    stored.mkdir(parents=True)
    (stored / f"{records[0]['key']}.json").write_text("{}")          # one point made in an earlier sitting
    (stored / "not-a-point-of-it.json").write_text("{}")
    row = experiments.reproduce_plan(tmp_path).set_index("snapshot").loc[name]
    assert row.done == 1
    assert row.left_s == pytest.approx(row.wall_s - records[0]["wall_s"])


def test_the_readme_states_the_reproduce_cost_the_plan_computes():
    import re

    plan = experiments.reproduce_plan()
    readme = (experiments.project_dir() / "README.md").read_text()
    found = re.search(r"As committed: (\d+) snapshots, (\d+) points, \*\*([\d.]+) h\*\*", readme)
    assert found, "README.md no longer states make reproduce's cost ('As committed: N snapshots, M points, **X h**')"
    assert (int(found[1]), int(found[2]), found[3]) == (len(plan), int(plan.points.sum()),
                                                        f"{plan.wall_s.sum() / 3600:.1f}"), \
        "README.md's make reproduce cost is stale: run make reproduce-plan and copy its last line"


def test_run_sweep_refuses_no_points_before_it_can_empty_a_snapshot(tmp_path):
    with pytest.raises(ValueError, match="no points.*would be emptied"):
        run_sweep(iter([]), toy_measure, "toy", root=tmp_path, snapshot="demo", progress=False)
    with pytest.raises(TypeError, match=r"one dict: pass \[point\]"):
        run_sweep(POINTS[0], toy_measure, "toy", root=tmp_path, progress=False)
    with pytest.raises(TypeError, match="points must be dicts, got str"):
        run_sweep(["bits=4"], toy_measure, "toy", root=tmp_path, progress=False)


def broken_measure(point: dict) -> dict:
    raise RuntimeError("boom")


def test_a_failing_measure_names_its_point(tmp_path):
    with pytest.raises(RuntimeError, match="boom") as err:
        run_sweep(POINTS[:1], broken_measure, "toy", root=tmp_path, progress=False)
    assert any("sweep point" in note and "'x': 0" in note for note in err.value.__notes__)


def test_frame_rows_refuses_what_it_would_lose():
    import numpy as np
    import pandas as pd

    grouped = pd.DataFrame({"module": ["a", "a", "b"], "err": [0.1, 0.3, 0.2]}).groupby("module").mean()
    with pytest.raises(ValueError, match="reset_index"):
        experiments.frame_rows(grouped)
    with pytest.raises(ValueError, match="repeated column names"):
        experiments.frame_rows(pd.DataFrame([[1, 2]], columns=["x", "x"]))
    with pytest.raises(TypeError, match=r"shape \(3,\).*tolist"):
        experiments.frame_rows(pd.DataFrame({"v": [np.zeros(3)]}))
    kept = pd.DataFrame({"x": [1, 2, 3]})
    assert experiments.frame_rows(kept[kept.x > 1]) == [{"x": 2}, {"x": 3}]     # a filtered frame is fine


def test_the_plan_helpers_name_a_mistyped_argument(tmp_path):
    with pytest.raises(TypeError, match="got the string"):
        experiments.notebook_of_snapshots("quickstart_lee")
    with pytest.raises(FileNotFoundError, match="no notebook scripts"):
        experiments.notebook_of_snapshots(["x"], tmp_path)
    with pytest.raises(FileNotFoundError, match="no results store"):
        experiments.reproduce_plan(tmp_path / "typo")
