"""The sweep engine: a list of points and a measure in, one stored record per point out; resumable,
in one process, in local processes or on Ray.

    from workbench.experiments import run_sweep, summary_frame, items_frame
    points = [{"model": "smollm2-135m", "bits": b, "seed": s} for b in (8, 4, 3) for s in (0, 1, 2)]
    records = run_sweep(points, measure, name="ppl-bits", defaults={"corpus": "lee", "seqlen": 512})
    summary_frame(records)          # one row per point: its arguments and its summary
    items_frame(records)            # one row per item: its point's arguments and the item's fields

A point is a plain dict of JSON-like values (model, quantization, task or corpus, adaptation,
seed). A measure is a top-level function `measure(point) -> {"summary": {...}, "items": [...]}`
whose items are the smallest units it scored (each perplexity window's NLL, each prompt with
its generation, extracted answer and score, each training step's loss), so that a table, an
interval or a paired test can be computed later and a test can re-run any single item.

Each point is stored the moment it finishes, as one JSON file written to a temporary name and
renamed into place, under `<results>/experiments/<name>/<key>.json`. Its key is a sha256 of
the measure's qualified name, the point with every default spelled out (`defaults`), and
`versions` (workbench's, plus what the caller adds: lm-eval's, the task files'). A run finds the
points already stored and computes only the others, so a sweep killed halfway (even by SIGKILL)
resumes where it stopped with nothing lost and nothing finished computed twice. Two runs of the
same sweep at the same time may both compute a point; the later write wins, with equal content.

Backends: "inprocess" (default), "processes" (a spawn pool of `workers` local processes; the
measure must be importable) and "ray" (`pip install -e '.[ray]'`; `ray_address` connects to a
cluster, otherwise a local Ray is started). Records are written by the driver as results arrive,
so every backend stores the same files.

Committed snapshots (`snapshot="name"`): a sweep whose records are committed with the repository
as data/snapshots/<name>.json.gz, for results that take minutes (a notebook's heavy sweeps). A
point whose key (measure, point with defaults, versions) is in the snapshot is read from it;
the others are computed, and the file is rewritten with exactly this sweep's records.
With $WORKBENCH_RECOMPUTE == "1" (what `make reproduce` sets) the committed snapshot is not
read: every point comes from the results store or is measured, so a `make reproduce` that was
stopped resumes where it stopped. `recompute=True` measures every point again.
tests/test_snapshots.py re-runs a sample of every snapshot's points and items.

A measure gets its model or task through `loaded(key, load)`: loaded once per process and
kept while the same key is asked for, so that a sweep over quantizations of one model loads it
once per worker; a caller that already holds the object hands it over with `provide`.
"""

from __future__ import annotations

import concurrent.futures as cf
import gzip
import hashlib
import json
import multiprocessing
import os
import re
import time
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
from tqdm.auto import tqdm

from workbench.cache import atomic_write_bytes, atomic_write_text, results_dir
from workbench.report import project_dir

BACKENDS = ("inprocess", "processes", "ray")
RECORD_FORMAT = 1                          # bump when a record's layout changes


# ----------------------------------------------------------------------------- keys and storage

def _canonical(obj):
    """`obj` as canonical JSON-able data; floats kept exactly (repr), NaN and inf included."""
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        return {"float": repr(obj)}
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    raise TypeError(f"a sweep point holds {obj!r} ({type(obj).__name__}); points are plain dicts of strings, "
                    "numbers, booleans, None, lists and dicts (describe a model by its name, a config by its fields)")


def _measure_name(measure: Callable) -> str:
    name = f"{getattr(measure, '__module__', '?')}.{getattr(measure, '__qualname__', repr(measure))}"
    if "<lambda>" in name or "<locals>" in name:
        raise ValueError(f"the measure {name} is not a top-level function: define it at module level so that "
                         "its name keys the stored results and other processes can import it")
    return name


def point_key(point: dict, measure: Callable, defaults: dict | None = None, versions: dict | None = None) -> str:
    """sha256 of the measure's name, the point with its defaults filled in, and the versions."""
    from workbench import __version__

    full = {**(defaults or {}), **point}
    payload = {"measure": _measure_name(measure), "point": _canonical(full),
               "versions": _canonical({"workbench": __version__, **(versions or {})}), "format": RECORD_FORMAT}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sweep_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where sweep `name` stores its records: `root` itself when given (that sweep's own folder:
    two sweeps given one root share it), else `results_dir()/experiments/<name>`."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"a sweep name is one plain folder name, got {name!r}")
    return Path(root) if root is not None else _store_folder(results_dir(), name)


def _store_folder(results: str | os.PathLike, name: str) -> Path:
    """Sweep `name`'s folder in the results store `results` (run_sweep's layout without a `root`)."""
    return Path(results) / "experiments" / name


def _read(path: Path) -> dict | None:
    """A stored record, or None when there is none or it cannot be read (then it is recomputed)."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        return record if record.get("format") == RECORD_FORMAT else None
    except (OSError, ValueError) as e:
        import warnings

        warnings.warn(f"the stored sweep record {path} cannot be read ({e}); recomputing it", stacklevel=3)
        return None


def _check_result(result, point: dict, measure_name: str) -> dict:
    if not (isinstance(result, dict) and isinstance(result.get("summary"), dict)
            and isinstance(result.get("items", []), list)):
        raise TypeError(f"{measure_name}({point}) must return {{'summary': dict, 'items': list of dicts}}, "
                        f"got {type(result).__name__}")
    return result


def _timed(measure: Callable, point: dict) -> tuple[dict, float]:
    """Run one point (in whichever process the backend chose); return its result and wall time."""
    t0 = time.perf_counter()
    try:
        result = measure(point)
    except Exception as e:
        e.add_note(f"(while measuring the sweep point {point})")
        raise
    return result, time.perf_counter() - t0


def read_sweep(name: str, root: str | os.PathLike | None = None) -> list[dict]:
    """Every record stored for sweep `name` (any points, any run), in no particular order."""
    return [r for r in (_read(p) for p in sorted(sweep_dir(name, root).glob("*.json"))) if r is not None]


def snapshot_path(name: str) -> Path:
    """data/snapshots/<name>.json.gz of the quant-workbench checkout (see `workbench.report.project_dir`).

    Gzipped: item-level records repeat their prompts and generations, and compress about 15×.
    """
    sweep_dir(name)                                       # the same rule for the name
    return project_dir() / "data" / "snapshots" / f"{name}.json.gz"


def _legacy_path(name: str) -> Path:
    return snapshot_path(name).with_suffix("")            # <name>.json, as written before gzip


def read_snapshot(name: str) -> list[dict]:
    """The records of committed snapshot `name`, in its points' order."""
    path = snapshot_path(name)
    if path.exists():
        stored = json.loads(gzip.decompress(path.read_bytes()))
    elif _legacy_path(name).exists():
        path = _legacy_path(name)
        stored = json.loads(path.read_text())
    else:
        raise FileNotFoundError(f"no snapshot {name!r} at {path}; run the notebook that makes it with "
                                "WORKBENCH_RECOMPUTE=1 (or make reproduce)")
    if stored.get("format") != RECORD_FORMAT:
        raise ValueError(f"{path} is a snapshot of format {stored.get('format')!r}, not {RECORD_FORMAT}; "
                         "recompute it with WORKBENCH_RECOMPUTE=1")
    return stored["records"]


def snapshot_exists(name: str) -> bool:
    """Whether snapshot `name` is committed (gzipped, or as the plain JSON of earlier versions)."""
    return snapshot_path(name).exists() or _legacy_path(name).exists()


def _write_snapshot(name: str, records: list[dict]) -> None:
    text = json.dumps({"format": RECORD_FORMAT, "name": name, "records": records}, indent=1, allow_nan=True) + "\n"
    path = snapshot_path(name)
    if not path.exists() or gzip.decompress(path.read_bytes()).decode() != text:
        # mtime=0 and no file name in the header: the same records give the same bytes
        atomic_write_bytes(path, gzip.compress(text.encode(), compresslevel=9, mtime=0))
    _legacy_path(name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- objects a measure loads

_LOADED: dict[str, tuple] = {}              # kind -> (key, object): one object of each kind per process


def loaded(key: tuple, load: Callable[[], object]):
    """`load()`'s object for `key` (a tuple whose first element names the kind: ("model", name)),
    loaded once per process and kept until another key of the same kind is asked for."""
    kind = key[0]
    if kind not in _LOADED or _LOADED[kind][0] != key:
        _LOADED.pop(kind, None)                          # one model in memory at a time
        _LOADED[kind] = (key, load())
    return _LOADED[kind][1]


def provide(key: tuple, obj) -> None:
    """Hand an object this process already holds to `loaded` (a notebook's loaded model), so that
    an in-process sweep does not load it again. It must be what `load()` would give."""
    _LOADED[key[0]] = (key, obj)


# ----------------------------------------------------------------------------- backends

def _inprocess(measure, todo, workers, ray_address):
    for i, point in todo:
        yield i, _timed(measure, point)


def _share_cores(threads: int) -> None:
    """In each worker: torch's threads, so that the workers together use the machine's cores once."""
    import torch

    torch.set_num_threads(threads)


def _processes(measure, todo, workers, ray_address):
    ctx = multiprocessing.get_context("spawn")     # no forked torch state; the measure is imported afresh
    workers = workers or os.cpu_count()
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_share_cores,
                                initargs=(max(1, (os.cpu_count() or 1) // workers),)) as pool:
        futures = {pool.submit(_timed, measure, point): i for i, point in todo}
        for f in cf.as_completed(futures):
            yield futures[f], f.result()


def _ray(measure, todo, workers, ray_address):
    try:
        import ray
    except ImportError:
        raise ImportError("backend='ray' needs Ray: pip install -e '.[ray]' (or pip install ray)") from None
    if not ray.is_initialized():
        kwargs = {"address": ray_address} if ray_address else {"num_cpus": workers or os.cpu_count()}
        ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
    remote = ray.remote(num_cpus=1)(_timed)
    refs = {remote.remote(measure, point): i for i, point in todo}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield refs[done[0]], ray.get(done[0])


_BACKENDS = {"inprocess": _inprocess, "processes": _processes, "ray": _ray}


# ----------------------------------------------------------------------------- the engine

def run_sweep(points: Iterable[dict], measure: Callable[[dict], dict], name: str, *,
              defaults: dict | None = None, versions: dict | None = None, backend: str = "inprocess",
              workers: int | None = None, ray_address: str | None = None, root: str | os.PathLike | None = None,
              recompute: bool | None = None, snapshot: str | None = None, progress: bool = True) -> list[dict]:
    """Measure every point not stored yet, store each as it finishes, and return all records in
    point order (see the module doc).

    A record is {"key", "measure", "point" (with defaults filled in), "versions", "summary",
    "items", "wall_s", "format"}. `recompute=True` measures every point again (and overwrites).
    With `snapshot`, records are read from and written to the committed snapshot of that name
    (see the module doc); with `recompute=None` and $WORKBENCH_RECOMPUTE == "1" the committed
    snapshot is passed over, the results store still read (a stopped reproduction resumes).
    Repeated points are measured once. A measure that raises stops the sweep with the point named;
    the points finished before it stay stored.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if isinstance(points, dict):
        raise TypeError("points must be a list of dicts; got one dict: pass [point]")
    points = list(points)
    if not points:
        raise ValueError(f"sweep {name!r} got no points (an empty list, or a generator already used up); "
                         "pass a list of point dicts" + (f" (with none, its snapshot {snapshot!r} would be emptied)"
                                                         if snapshot else ""))
    bad = [p for p in points if not isinstance(p, dict)]
    if bad:
        raise TypeError(f"points must be dicts, got {type(bad[0]).__name__} {bad[0]!r}")
    points = [dict(p) for p in points]
    folder = sweep_dir(name, root)
    mname = _measure_name(measure)
    keys = [point_key(p, measure, defaults, versions) for p in points]
    from workbench import __version__

    all_versions = {"workbench": __version__, **(versions or {})}
    skip_committed = bool(recompute) or (recompute is None and os.environ.get("WORKBENCH_RECOMPUTE") == "1")
    recompute = bool(recompute)
    committed = {}
    if snapshot is not None and not skip_committed and snapshot_exists(snapshot):
        committed = {r["key"]: r for r in read_snapshot(snapshot)}
    records: dict[str, dict] = {}
    todo, seen = [], set()
    for i, (p, k) in enumerate(zip(points, keys)):
        if k in seen:
            continue
        seen.add(k)
        stored = None if recompute else committed.get(k) or _read(folder / f"{k}.json")
        if stored is not None:
            records[k] = stored
        else:
            todo.append((i, {**(defaults or {}), **p}))
    quiet = not progress or os.environ.get("TQDM_DISABLE", "0").lower() not in ("", "0", "false")   # make's runs
    bar = tqdm(total=len(seen), initial=len(seen) - len(todo), desc=name, unit="point", disable=quiet)
    try:
        for i, (result, wall) in _BACKENDS[backend](measure, todo, workers, ray_address):
            point = {**(defaults or {}), **points[i]}
            result = _check_result(result, point, mname)
            record = {"key": keys[i], "measure": mname, "point": point, "versions": all_versions,
                      "summary": result["summary"], "items": result.get("items", []), "wall_s": wall,
                      "format": RECORD_FORMAT}
            text = json.dumps(record, indent=1, allow_nan=True, default=_json_default)
            atomic_write_text(folder / f"{keys[i]}.json", text)
            records[keys[i]] = json.loads(text)     # what a later run reads back, exactly
            bar.update(1)
    finally:
        bar.close()
    if snapshot is not None:
        _write_snapshot(snapshot, [records[k] for k in dict.fromkeys(keys)])
    return [records[k] for k in keys]


def _json_default(obj):
    """Numbers from numpy and torch as plain Python numbers; anything else is an error naming it."""
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if getattr(obj, "ndim", 0):
        raise TypeError(f"a measure returned an array of shape {tuple(obj.shape)}, which a record stores only as a "
                        "list: return .tolist()")
    raise TypeError(f"a measure returned {obj!r} ({type(obj).__name__}), which a record cannot store; "
                    "return plain numbers, strings, lists and dicts")


def frame_rows(frame: pd.DataFrame) -> list[dict]:
    """A DataFrame as the plain rows a measure returns as its items (the inverse of `items_frame`):
    numpy and torch numbers as Python's, tuples as lists, NaN kept; anything a record cannot
    store is an error naming it. The index is not stored: a frame indexed by something that
    matters (after a groupby) must `.reset_index()` first."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame_rows takes a DataFrame, got {type(frame).__name__}")
    if not frame.columns.is_unique:
        raise ValueError(f"frame_rows: repeated column names {sorted(set(frame.columns[frame.columns.duplicated()]))} "
                         "(one would overwrite the other in a row); rename them")
    if frame.index.nlevels > 1 or frame.index.name is not None or not pd.api.types.is_integer_dtype(frame.index):
        raise ValueError("frame_rows stores columns, not the index, and this frame's index carries labels "
                         f"({frame.index.names}); call frame.reset_index() (or reset_index(drop=True)) first")
    return json.loads(json.dumps(frame.to_dict("records"), allow_nan=True, default=_json_default))


def summary_frame(records: list[dict]) -> pd.DataFrame:
    """One row per record: the point's fields, then the summary's."""
    return pd.DataFrame([{**r["point"], **r["summary"]} for r in records])


def items_frame(records: list[dict]) -> pd.DataFrame:
    """One row per item of every record: the point's fields, the item's index in its record, the item's fields."""
    return pd.DataFrame([{**r["point"], "item": j, **item} for r in records for j, item in enumerate(r["items"])])



# ----------------------------------------------------------------------------- what `make reproduce` costs

# a sweep name in a notebook's source: a plain literal, or an f-string with a literal head ("x_{seed}")
_NAME_LITERAL = re.compile(r'f?"([A-Za-z0-9_]{3,}(?:[A-Za-z0-9_]|\{[^{}"]*\})*)"')


def _name_patterns(source: str) -> list[re.Pattern]:
    return [re.compile("".join(".+" if part.startswith("{") else re.escape(part)
                               for part in re.split(r"(\{[^{}]*\})", lit) if part))
            for lit in set(_NAME_LITERAL.findall(source))]


def notebook_of_snapshots(names: Iterable[str], notebooks: str | os.PathLike | None = None) -> dict[str, str | None]:
    """{snapshot name: the notebook (file name) whose source names it}, from the jupytext scripts
    in `notebooks` (default: the checkout's notebooks/); a name in an f-string ("x_draw{seed}")
    matches every name it can make. None where no notebook, or more than one, names it."""
    if isinstance(names, str):
        raise TypeError(f"names must be a list of snapshot names, got the string {names!r}; pass [{names!r}]")
    folder = Path(notebooks) if notebooks is not None else project_dir() / "notebooks"
    patterns = {p.with_suffix(".ipynb").name: _name_patterns(p.read_text())
                for p in sorted(folder.glob("[0-9]*.py"))}
    if not patterns:
        raise FileNotFoundError(f"no notebook scripts (NN_name.py, the jupytext pairs) in {folder}")
    out = {}
    for name in names:
        hits = [nb for nb, pats in patterns.items() if any(p.fullmatch(name) for p in pats)]
        out[name] = hits[0] if len(hits) == 1 else None
    return out


def reproduce_plan(results: str | os.PathLike | None = None) -> pd.DataFrame:
    """What `make reproduce` costs, read from the committed snapshots: one row per snapshot with
    the notebook that makes it, its points, and `wall_s`, the sum of its points' wall times when
    they were made (on the machine, and under the load, of that run: an estimate, not a promise).
    With `results` (a results store, e.g. `make reproduce`'s $WORKBENCH_HOME/reproduce) also the
    points already stored there (`done`) and the wall time of the others (`left_s`), so a
    reproduction made in several sittings shows what is left. Sorted by notebook, then cost."""
    if results is not None and not Path(results).is_dir():
        raise FileNotFoundError(f"no results store at {results} (make reproduce's is $WORKBENCH_HOME/reproduce, "
                                "REPRODUCE_RESULTS in the Makefile); pass None for the cost alone")
    folder = project_dir() / "data" / "snapshots"
    names = sorted({p.name.split(".json")[0] for p in folder.glob("*.json*")})
    owners = notebook_of_snapshots(names)
    rows = []
    for name in names:
        records = read_snapshot(name)
        done = {p.stem for p in _store_folder(results, name).glob("*.json")} if results is not None else set()
        rows.append({"notebook": owners[name], "snapshot": name, "points": len(records),
                     "wall_s": sum(r.get("wall_s") or 0.0 for r in records),
                     "done": sum(r["key"] in done for r in records),
                     "left_s": sum(r.get("wall_s") or 0.0 for r in records if r["key"] not in done)})
    plan = pd.DataFrame(rows, columns=["notebook", "snapshot", "points", "wall_s", "done", "left_s"])
    if results is None:
        plan = plan.drop(columns=["done", "left_s"])
    return plan.sort_values(["notebook", "wall_s"], ascending=[True, False], ignore_index=True)


def _print_plan(results: str | None) -> None:
    if results is not None and not Path(results).is_dir():
        print(f"(no results store at {results} yet: nothing made in an earlier sitting)\n")
        results = None
    plan = reproduce_plan(results)
    hours = plan.groupby("notebook", sort=True)[["points", "wall_s"] + (["left_s"] if results else [])].sum()
    with pd.option_context("display.max_rows", None, "display.width", 160):
        print(plan.assign(wall_min=(plan.wall_s / 60).round(1)).drop(columns="wall_s").to_string(index=False))
        print()
        print((hours.assign(**{c: (hours[c] / 60).round(1) for c in hours if c.endswith("_s")})
               .rename(columns={"wall_s": "wall_min", "left_s": "left_min"}).to_string()))
    total = plan.wall_s.sum() / 3600
    left = f", {plan.left_s.sum() / 3600:.1f} h of it left in {results}" if results else ""
    print(f"\n{len(plan)} snapshots, {plan.points.sum()} points: {total:.1f} h as they were made{left}")


if __name__ == "__main__":         # python -m workbench.experiments [results store]: what make reproduce costs
    import sys

    _print_plan(sys.argv[1] if len(sys.argv) > 1 else None)
