"""Adaptation runs as sweep points: a method with its arguments, on a model and a task, stored
and resumed by `workbench.experiments` (and committable as a snapshot).

    from workbench.adapt import sweeps
    task = {"kind": "classification", "dataset": "polarity", "seed": 0}
    runs = {"LoRA r8": ("lora", {"r": 8, "steps": 60}), "head only": ("head_only", {"steps": 60})}
    records = sweeps.run_methods("minilm-l6", task, runs, name="adapt_encoder")   # {label: record}

A point is {"model": a registry name, local folder or hub id; "task": a task description (plain
data, TASK_KINDS below); "method": a function of `workbench.adapt`; "args": its keyword
arguments with every default spelled out (`workbench.adapt.resolve_runs`)}. The measure builds
the model and the task once per process, runs the method and stores its record: the summary is
the method's record without its losses, the items are the training steps ({"step", "loss"}).
This module sits above `workbench.adapt` and `workbench.abilities` (an ability task is one kind
of task), and nothing below imports it.
"""

from __future__ import annotations

import json

from workbench import adapt
from workbench.experiments import loaded, run_sweep

RECORD_FORMAT = 2             # 2: a record holds every held-out item's outcome (`correct`), not only the accuracy

TASK_KINDS = {                 # kind -> the fields that describe it (all required)
    "classification": ("dataset", "seed"),            # finetune.classification_task; the classifier's head seeded too
    "ability": ("name", "limit", "n_train", "shots"),   # abilities.ability_task: lm-eval items, the first `limit` scored
    "corpus": ("corpus", "n_train", "seqlen", "seed"),  # finetune.corpus_task: next-token windows (no accuracy)
}


def _check_task(task: dict) -> dict:
    if not isinstance(task, dict) or task.get("kind") not in TASK_KINDS:
        raise ValueError(f"a task is a dict with kind one of {', '.join(TASK_KINDS)}, got {task!r}")
    want = set(TASK_KINDS[task["kind"]])
    if set(task) - {"kind"} != want:
        raise ValueError(f"a {task['kind']} task needs exactly the fields {sorted(want)}, got {sorted(set(task) - {'kind'})}")
    return task


def load_model_for(model: str, task: dict):
    """(model, tokenizer, record) for `task`: a classifier with a head seeded by the task's seed
    for a classification task, the causal LM otherwise; loaded once per process."""
    from workbench.finetune import load_classifier
    from workbench.models import load_model

    if _check_task(task)["kind"] == "classification":
        return loaded(("model", "classifier", model, task["seed"]), lambda: load_classifier(model, seed=task["seed"]))
    return loaded(("model", "causal-lm", model), lambda: load_model(model))


def build_task(tokenizer, task: dict):
    """The task object that `task` (plain data, TASK_KINDS) describes."""
    from workbench.abilities import ability_task
    from workbench.finetune import classification_task, corpus_task

    kind = _check_task(task)["kind"]
    if kind == "classification":
        return classification_task(tokenizer, task["dataset"], seed=task["seed"])
    if kind == "ability":
        return ability_task(tokenizer, task["name"], limit=task["limit"], n_train=task["n_train"],
                            num_fewshot=task["shots"])
    return corpus_task(tokenizer, task["corpus"], n_train=task["n_train"], seqlen=task["seqlen"], seed=task["seed"])


def task_for(model: str, task: dict):
    """The task object of `task` for `model`'s tokenizer, built once per process."""
    tokenizer = load_model_for(model, task)[1]
    return loaded(("task", model, json.dumps(task, sort_keys=True)), lambda: build_task(tokenizer, task))


def run_point(point: dict) -> dict:
    """The `workbench.experiments` measure: one method run (see the module doc)."""
    net = load_model_for(point["model"], point["task"])[0]
    task = task_for(point["model"], point["task"])
    record = adapt.METHODS[point["method"]](net, task, **point["args"])[1]
    losses = record.pop("losses")
    return {"summary": record, "items": [{"step": i, "loss": v} for i, v in enumerate(losses)]}


def versions(model_record, task: dict) -> dict:
    """What besides the point decides a run's result: the weights, the training and evaluation
    libraries, and for an ability task lm-eval and the task files."""
    import importlib.metadata as md

    out = {"model": model_record.key, "record": RECORD_FORMAT,
           **{p: md.version(p) for p in ("torch", "transformers", "peft")}}
    if task["kind"] == "ability":
        from workbench.abilities import ABILITY_PROTOCOL, ABILITY_TASKS_VERSION, task_folder_fingerprint
        from workbench.abilities.tasks import ability_tasks_dir

        out.update(lm_eval=md.version("lm_eval"), tasks=ABILITY_TASKS_VERSION, protocol=ABILITY_PROTOCOL,
                   task_contents=task_folder_fingerprint(ability_tasks_dir()))
    return out


def run_methods(model: str, task: dict, runs: dict, name: str, snapshot: bool = False,
                recompute: bool | None = None, backend: str = "inprocess", workers: int | None = None,
                progress: bool = False, seeds: list[int] | None = None) -> dict:
    """Run each method of `runs` ({label: (method name in workbench.adapt, keyword arguments)},
    checked and completed by `resolve_runs` before anything trains) on `model` (a name) and
    `task` (plain data, TASK_KINDS); return {label: record} in the order of `runs`, each record
    the method's (accuracy, correct, trainable_params, ..., losses). With `seeds`, every run is
    repeated once per seed s, its `seed` argument set to s and, for a task with a seed (a
    classification task: its train/held-out split and the head's initialization), the task's
    too; then the result is {label: [record for each seed]} (a run that no seed changes, such as
    `unadapted` on an ability task, is measured once and its list holds one record). Each run is one point of
    the sweep `name`: stored as it finishes, read back on the next call; with `snapshot=True` the
    records are the committed snapshot data/snapshots/<name>.json (see workbench.experiments)."""
    runs = adapt.resolve_runs(runs)
    _check_task(task)
    if seeds is not None and (not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)):
        raise ValueError(f"seeds must be a non-empty list of ints, e.g. [0, 1, 2]; got {seeds!r}")
    points = []
    for seed in (seeds if seeds is not None else [None]):
        for method, args in runs.values():
            t, a = dict(task), dict(args)
            if seed is not None:
                if "seed" in t:
                    t["seed"] = seed
                if "seed" in a:
                    a["seed"] = seed
            points.append({"model": model, "task": t, "method": method, "args": a})
    record = load_model_for(model, task)[2]
    records = run_sweep(points, run_point, name, versions=versions(record, task), backend=backend, workers=workers,
                        recompute=recompute, snapshot=name if snapshot else None, progress=progress)
    records = [record_of(r) for r in records]
    if seeds is None:
        return dict(zip(runs, records))
    out = {}
    for i, label in enumerate(runs):
        same = len({json.dumps(p, sort_keys=True) for p in points[i::len(runs)]}) == 1   # no seed to vary
        out[label] = records[i::len(runs)][:1] if same else records[i::len(runs)]
    return out


def record_of(stored: dict) -> dict:
    """A method's record (losses included) from a stored sweep record."""
    return {**stored["summary"], "losses": [item["loss"] for item in stored["items"]]}
