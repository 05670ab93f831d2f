"""Ability tasks and scoring: the local lm-eval tasks, a gold-answer model, IFEval's checkers, batching."""

import json
import math
import re

import pandas as pd
import pytest
import torch

from workbench import abilities
from workbench.abilities import tasks
from workbench.instruction_prompts import INSTRUCTION_TYPES, instruction_prompts

ALL_GOLD_TASKS = ["wb_icl_arith_1d_add", "wb_icl_arith_2d_sub", "wb_icl_sports", "wb_icl_mmlu",
                  "wb_cot_gsm8k", "wb_direct_gsm8k"] + [
    f"wb_{kind}_bbh_{t}" for t in tasks.BBH_TASKS for kind in ("cot", "direct")]


@pytest.fixture(scope="module")
def tasks_dir():
    return tasks.ability_tasks_dir()


@pytest.mark.integration
def test_task_files_are_valid_for_lm_eval(tasks_dir):
    """Every local task has its JSONL and YAML, and lm-eval's TaskManager indexes and builds them."""
    from lm_eval.tasks import get_task_dict

    names = sorted(p.stem for p in tasks_dir.glob("*.yaml"))
    assert len(names) == 22 and all(n.startswith("wb_") for n in names)
    for n in names:
        rows = [json.loads(line) for line in (tasks_dir / f"{n}.jsonl").read_text().splitlines()]
        assert len(rows) >= 100, n
    known = set(abilities.task_manager().all_tasks)
    assert set(names) <= known
    built = get_task_dict(["wb_icl_mmlu", "wb_cot_gsm8k", "wb_ifeval"], abilities.task_manager())
    assert {t.config.task for t in built.values()} == {"wb_icl_mmlu", "wb_cot_gsm8k", "wb_ifeval"}
    assert len(built["wb_icl_mmlu"].eval_docs) == len(tasks.mmlu_rows()) >= 250


@pytest.mark.integration
def test_bbh_rows_follow_the_bbh_format():
    rows = {t: tasks.bbh_rows(t) for t in tasks.BBH_TASKS}
    assert {r["target"] for r in rows["sports_understanding"]} == {"yes", "no"}
    assert {r["target"] for r in rows["navigate"]} == {"Yes", "No"}
    assert all(re.fullmatch(r"\([A-F]\)", r["target"]) for r in rows["date_understanding"])
    assert all(r["target"].isdigit() for r in rows["object_counting"])
    r = rows["date_understanding"][0]
    letter = r["target"][1]
    assert f"\n({letter}) " in r["input"] and "Options:\n(A) " in r["input"]
    # exemplars that lm-eval puts in the prompt never appear as test items
    shots = tasks._lm_eval_yaml("bbh/cot_fewshot/sports_understanding.yaml")["fewshot_config"]["samples"]
    assert not {s["input"] for s in shots} & {r["input"] for r in rows["sports_understanding"]}


def test_direct_exemplars_keep_only_the_answer():
    rows = tasks._answer_only([{"question": "q", "target": "3 + 2 = 5. The answer is 5."},
                              {"input": "i", "target": "Reasoning. So the answer is (B)."}], "target")
    assert [r["target"] for r in rows] == ["The answer is 5.", "The answer is (B)."]
    with pytest.raises(ValueError, match="without a final answer"):
        tasks._answer_only([{"target": "no answer here"}], "target")


def test_mmlu_rows_parse():
    rows = tasks.mmlu_rows()
    assert len({r["subject"] for r in rows}) >= 50
    assert all(len(r["choices"]) == 4 and r["answer"] in range(4) for r in rows)


@pytest.mark.integration
def test_unknown_task_is_a_clear_error(tiny_lm):
    with pytest.raises(ValueError, match="unknown lm-eval task.*wb_icl_arith_1d_add"):
        abilities.evaluate_tasks(tiny_lm.model, tiny_lm.tokenizer, ["no_such_task"], cache=False)
    with pytest.raises(ValueError, match="limit"):
        abilities.evaluate_tasks(tiny_lm.model, tiny_lm.tokenizer, ["wb_icl_sports"], limit=0, cache=False)
    with pytest.raises(TypeError, match=r"got the string 'wb_icl_sports'.*pass \['wb_icl_sports'\]"):
        abilities.evaluate_tasks(tiny_lm.model, tiny_lm.tokenizer, "wb_icl_sports", cache=False)


# -----------------------------------------------------------------------------
# an lm-eval LM that knows every gold answer (or always answers wrong)


def _gold(task: str, doc: dict) -> str:
    if task.startswith("wb_icl_arith"):
        return doc["target"]
    if task.endswith("gsm8k"):
        return doc["answer"].split("####")[-1].strip()
    if task == "wb_icl_sports":
        return ["plausible", "implausible"][doc["label"]]
    if task == "wb_icl_mmlu":
        return "ABCD"[doc["answer"]]
    return doc["target"]


class OracleLM:
    """Answers like a well-behaved model: the gold answer, in the shape each prompt asks for."""

    def __new__(cls, wrong: bool = False):
        from lm_eval.api.model import LM

        class _Oracle(LM):
            def loglikelihood(self, requests):
                out = []
                for r in requests:
                    right = r.args[1].strip() == _gold(r.task_name, r.doc)
                    out.append((0.0 if right != wrong else -10.0, True))
                return out

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

            def generate_until(self, requests):
                out = []
                for r in requests:
                    ans = _gold(r.task_name, r.doc)
                    if wrong:
                        ans = "1" + ans if ans.lstrip("-").isdigit() or ans.isdigit() else "(Z) nothing"
                    if r.task_name.startswith("wb_cot_gsm8k"):
                        out.append(f" First I add the numbers. The answer is {ans}.")
                    elif r.task_name.startswith("wb_cot_bbh"):
                        out.append(f" Let me think it through. So the answer is {ans}.")
                    elif r.task_name == "wb_direct_gsm8k":
                        out.append(f" The answer is {ans}.")
                    else:
                        out.append(f" {ans}")
                return out

        return _Oracle()


@pytest.mark.integration
@pytest.mark.parametrize("wrong", [False, True])
def test_gold_answers_score_one_and_wrong_answers_zero(wrong):
    res = abilities.evaluate_tasks(OracleLM(wrong), None, ALL_GOLD_TASKS, limit=6, model_key="oracle",
                                   num_fewshot=None, cache=False)
    primary = res.scores[res.scores["primary"]].set_index("task")["score"]
    assert sorted(primary.index) == sorted(ALL_GOLD_TASKS)      # exactly one headline row per task
    assert res.scores.set_index("task").loc["wb_cot_gsm8k"].query("primary")["filter"].item() == "strict-match"
    assert (primary == (0.0 if wrong else 1.0)).all(), primary.to_dict()
    assert (res.scores[res.scores["primary"]]["n"] == 6).all()
    assert len(res.samples) >= 6 * len(ALL_GOLD_TASKS)


@pytest.mark.integration
def test_shot_count_reaches_the_prompt():
    for k in (0, 3):
        res = abilities.evaluate_tasks(OracleLM(), None, ["wb_icl_arith_1d_add"], num_fewshot=k, limit=2,
                                       model_key="oracle", cache=False)
        prompt = res.samples.prompt.iloc[0]
        assert prompt.count("Q: ") == k + 1
        assert (res.scores.shots == k).all()


@pytest.mark.integration
def test_an_item_rerun_alone_gets_the_exemplars_it_had_in_the_full_run():
    """Exemplars are drawn per item (seed, item), not from one generator consumed item by item:
    so doc_ids re-runs any item with its full-run prompt, and another seed draws other exemplars."""
    run = lambda seed, **kw: abilities.evaluate_tasks(OracleLM(), None, ["wb_icl_arith_1d_add"], num_fewshot=3,
                                                       model_key="oracle", seed=seed, cache=False, **kw).samples
    full = run(0, limit=12).set_index("doc_id").prompt
    alone = run(0, doc_ids={"wb_icl_arith_1d_add": [9, 4]}).set_index("doc_id").prompt
    assert sorted(alone.index) == [4, 9] and alone[9] == full[9] and alone[4] == full[4]
    other = run(1, limit=12).set_index("doc_id").prompt
    assert sum(other[i] != full[i] for i in full.index) >= 10           # another draw of exemplars
    assert all(full[i].count("Q: ") == 4 for i in full.index)
    with pytest.raises(ValueError, match="limit or doc_ids"):
        run(0, limit=2, doc_ids={"wb_icl_arith_1d_add": [1]})


# -----------------------------------------------------------------------------
# instruction following: the prompts and lm-eval's checkers


def test_instruction_prompts_cover_enough_types():
    rows = instruction_prompts()
    assert len(rows) >= 100 and len({r["key"] for r in rows}) == len(rows)
    used = {i for r in rows for i in r["instruction_id_list"]}
    assert len(used) >= 15 and used == set(INSTRUCTION_TYPES)
    from lm_eval.tasks.ifeval import instructions_registry  # noqa: F401  (checked after ensure_punkt)


# (instruction id, kwargs, a response that follows it, one that breaks it)
CASES = [
    ("punctuation:no_comma", {}, "A plain answer without that mark.", "A plain answer, with a comma."),
    ("change_case:english_lowercase", {}, "this is all in lower case english text.",
     "This Is Not all in lower case english text."),
    ("change_case:english_capital", {}, "THIS IS AN ANSWER WRITTEN IN CAPITAL LETTERS.",
     "This answer is written in normal letters."),
    ("detectable_format:title", {}, "<<A Title>>\nThe body.", "No title here.\nThe body."),
    ("detectable_format:json_format", {}, '{"answer": "yes"}', "answer: yes"),
    ("startend:quotation", {}, '"All of it is quoted."', "Nothing is quoted."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Here it is. Any other questions?",
     "Any other questions? Here it is."),
    ("keywords:existence", {"keywords": ["garden", "morning"]}, "The garden in the morning.", "The garden."),
    ("keywords:forbidden_words", {"forbidden_words": ["very"]}, "It is quite good.", "It is very good."),
    ("keywords:frequency", {"keyword": "water", "frequency": 3, "relation": "at least"},
     "water, water and more water", "water once"),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     "zebra zoo zone", "a zebra"),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "Four words right here.",
     "These are definitely more than five words in total."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"},
     "Only one sentence here.", "Mr. Smith went to Washington. He arrived at 5 p.m. on Friday. Then he left."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.",
     "Only one part."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body.\nP.S. See you soon.", "Body only."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].",
     "Dear friend."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one\n* two\n* three"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", "*one* only"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nfirst\nSection 2\nsecond", "just one block"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Perhaps."),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", "Only one answer."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "VERY GOOD work", "Very good work"),
    ("language:response_language", {"language": "fr"},
     "Le chat est sur la table et il dort tranquillement.", "The cat is on the table and sleeps quietly."),
]


@pytest.mark.integration
@pytest.mark.parametrize("instruction,kwargs,good,bad", CASES, ids=[c[0] for c in CASES])
def test_ifeval_checkers_accept_and_reject(instruction, kwargs, good, bad):
    abilities.ensure_punkt()
    from lm_eval.tasks.ifeval.utils import process_results

    doc = {"key": 1, "prompt": "Write something.", "instruction_id_list": [instruction], "kwargs": [kwargs]}
    assert process_results(doc, [good])["prompt_level_strict_acc"] is True
    assert process_results(doc, [bad])["prompt_level_strict_acc"] is False


@pytest.mark.integration
def test_punkt_model_splits_sentences_offline():
    abilities.ensure_punkt()
    import nltk

    text = "Mr. Smith went to Washington. He arrived at 5 p.m. on Friday."
    assert nltk.sent_tokenize(text) == ["Mr. Smith went to Washington.", "He arrived at 5 p.m. on Friday."]


# -----------------------------------------------------------------------------
# a real model through HFLM: batched generation with the KV cache, and the quantization specs


@pytest.mark.integration
def test_generation_is_batched_and_uses_the_kv_cache(tiny_lm, monkeypatch):
    calls = []
    original = tiny_lm.model.generate

    def spy(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls.append((ids.shape[0], kwargs.get("use_cache")))
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_lm.model, "generate", spy)
    res = abilities.evaluate_tasks(tiny_lm.model, tiny_lm.tokenizer, ["wb_icl_arith_1d_add"], limit=6,
                                   batch_size=4, max_gen_toks=3, cache=False)
    assert calls and max(b for b, _ in calls) == 4 and all(c is True for _, c in calls)
    assert res.scores.loc[res.scores.primary, "n"].item() == 6


@pytest.mark.integration
def test_results_are_cached_and_keyed_by_the_model(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    kw = dict(limit=2, batch_size=2, max_gen_toks=2)
    a = abilities.evaluate_tasks(tiny_lm.model, tiny_lm.tokenizer, ["wb_icl_sports"], **kw)
    n_files = len(list(tmp_path.rglob("*.pkl")))
    b = abilities.evaluate_tasks(tiny_lm.model, tiny_lm.tokenizer, ["wb_icl_sports"], **kw)
    assert n_files == 1 and len(list(tmp_path.rglob("*.pkl"))) == 1
    assert a.samples.equals(b.samples)
    import copy

    other = copy.deepcopy(tiny_lm.model)
    with torch.no_grad():
        other.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    assert abilities.model_fingerprint(other) != abilities.model_fingerprint(tiny_lm.model)


def test_component_specs_quantize_only_their_group(tiny_lm):
    specs = abilities.component_specs(bits=2, group_size=16)
    assert set(specs) == {"all"} | {f"{w} {g}" for g in abilities.COMPONENT_GROUPS for w in ("only", "all but")}
    base = dict(tiny_lm.model.named_parameters())
    for label, want in [("only attention", "self_attn"), ("only ffn", "mlp"), ("only embeddings", "embed")]:
        q, report = abilities.quantize_for_spec(tiny_lm.model, specs[label])
        changed = {n for n, p in q.named_parameters() if not torch.equal(p, base[n])}
        assert changed and all(want in n for n in changed), (label, changed)
    q, _ = abilities.quantize_for_spec(tiny_lm.model, specs["all but embeddings"])
    emb = q.get_input_embeddings().weight
    assert torch.equal(emb, tiny_lm.model.get_input_embeddings().weight)
    assert not torch.equal(q.model.layers[0].mlp.up_proj.weight, tiny_lm.model.model.layers[0].mlp.up_proj.weight)


def test_quantize_embeddings_uses_rtn_and_says_so(tiny_lm):
    from workbench.quant import QuantConfig, quantize_embeddings

    q, report = quantize_embeddings(tiny_lm.model, QuantConfig(bits=3, group_size=16, method="gptq"))
    assert len(report) == 1 and "RTN" in report.note[0] and "tied" in report.note[0]
    w = q.get_input_embeddings().weight
    assert w is q.get_output_embeddings().weight  # still tied
    assert max(g.unique().numel() for g in w.detach().reshape(-1, 16)) <= 8  # 3 bits: at most 8 levels
    assert not torch.equal(w, tiny_lm.model.get_input_embeddings().weight)


def test_ability_table_and_recovery():
    import pandas as pd

    rows = []
    for label, s in [("base", 0.6), ("RTN W2", 0.1), ("RTN W2 + LoRA", 0.35)]:
        rows += [{"label": label, "bits": 16, "method": "x", "task": "t", "ability": "icl", "shots": 0,
                  "metric": "acc", "score": s, "primary": True},
                 {"label": label, "bits": 16, "method": "x", "task": "perplexity", "ability": "lm",
                  "shots": None, "metric": "perplexity", "score": {"base": 10, "RTN W2": 1000,
                                                                   "RTN W2 + LoRA": 100}[label], "primary": True}]
    table = abilities.ability_table(pd.DataFrame(rows))
    assert list(table["icl k=0"]) == [0.6, 0.1, 0.35]
    rec = abilities.recovery(table, "base", "RTN W2", "RTN W2 + LoRA")
    assert rec["icl k=0"] == pytest.approx(0.5)
    assert rec["perplexity"] == pytest.approx(0.5)
    # nothing lost, nothing to win back
    assert rec.isna().sum() == 0
    assert abilities.recovery(table, "RTN W2", "base", "RTN W2 + LoRA").isna().all()


def _samples(outcomes: dict) -> pd.DataFrame:
    """Synthetic ability samples: label -> {(task, shots, seed): [0/1 per doc]}."""
    rows = []
    for label, cells in outcomes.items():
        for (task, shots, seed), scores in cells.items():
            rows += [{"label": label, "bits": 16 if label == "base" else 4, "method": "none" if label == "base"
                      else "rtn", "task": task, "shots": shots, "fewshot_seed": seed, "doc_id": i,
                      "target": "no" if i % 4 else "yes", "score": float(v),
                      "metrics": {"prompt_level_loose_acc": 1.0} if "ifeval" in task else {}}
                     for i, v in enumerate(scores)]
    return pd.DataFrame(rows)


def test_ability_intervals_pool_items_average_draws_and_give_the_majority_baseline():
    add = "wb_icl_arith_1d_add"
    base = {(add, 5, 0): [1] * 22 + [0] * 18, (add, 5, 1): [1] * 18 + [0] * 22,
            ("wb_direct_bbh_sports_understanding", 3, 0): [1, 0] * 20, ("wb_ifeval", 0, 0): [0, 1, 1, 0]}
    quant = {(add, 5, 0): [1] * 5 + [0] * 35, (add, 5, 1): [1] * 6 + [0] * 34,
             ("wb_direct_bbh_sports_understanding", 3, 0): [1, 0] * 20, ("wb_ifeval", 0, 0): [0, 0, 1, 0]}
    windows = pd.DataFrame({"label": ["base"] * 3, "bits": 16, "method": "none", "corpus": "lee", "window": [0, 1, 2],
                            "nll": [1500.0, 1600.0, 1550.0], "tokens": 511})
    res = abilities.AbilityResult(pd.DataFrame(), _samples({"base": base, "RTN W4": quant}), windows)
    iv = abilities.ability_intervals(res).set_index(["label", "column"])
    icl = iv.loc[("base", "icl k=5")]
    assert icl.n == 40 and icl.draws == 2 and icl.estimate == pytest.approx(40 / 80)   # items, not draws
    assert icl.low < 0.5 < icl.high
    direct = iv.loc[("base", "cot (answer only)")]
    assert direct.n == 40 and direct.majority == pytest.approx(30 / 40)               # "no" on 3 of 4 items
    assert iv.loc[("RTN W4", "if strict")].estimate == 0.25 and iv.loc[("RTN W4", "if loose")].estimate == 1.0
    ppl = iv.loc[("base", "perplexity lee")]
    assert ppl.n == 3 and ppl.estimate == pytest.approx(math.exp(4650 / 1533)) and ppl.low < ppl.estimate < ppl.high

    test = abilities.paired_items(res.samples, "base", "RTN W4", "icl k=5")
    assert test["n"] == 40 and test["difference"] == pytest.approx((40 - 11) / 80)
    assert test["test"] == "paired bootstrap" and test["p_value"] < 0.01 and test["low"] > 0
    one = abilities.paired_items(res.samples[res.samples.fewshot_seed == 0], "base", "RTN W4", "icl k=5")
    assert one["test"] == "exact McNemar" and one["p_value"] < 0.001
    same = abilities.paired_items(res.samples, "base", "RTN W4", "cot (answer only)")
    assert same["difference"] == 0 and same["p_value"] == 1.0
    with pytest.raises(ValueError, match="no items of column"):
        abilities.paired_items(res.samples, "base", "RTN W4", "icl k=3")
    # items averaged over other exemplar draws are not the same prompts: no pairing
    fewer = res.samples[(res.samples.label == "base") | (res.samples.fewshot_seed == 0)]
    with pytest.raises(ValueError, match="different exemplar draws"):
        abilities.paired_items(fewer, "base", "RTN W4", "icl k=5")
    # a mixed-precision label (bits None) keeps its items, and a second filter of a task does not
    # count as another draw
    mixed = res.samples[res.samples.label == "RTN W4"].assign(label="mixed", bits=None, method="mixed")
    both_filters = pd.concat([res.samples.assign(filter="strict"), mixed.assign(filter="strict"),
                              mixed.assign(filter="flexible", score=1.0)])
    iv2 = abilities.ability_intervals(abilities.AbilityResult(pd.DataFrame(), both_filters)).set_index(["label", "column"])
    assert iv2.loc[("mixed", "icl k=5")].n == 40 and iv2.loc[("mixed", "icl k=5")].draws == 2
    assert iv2.loc[("mixed", "icl k=5")].estimate == pytest.approx(11 / 80)

    w = pd.concat([windows, windows.assign(label="RTN W4", nll=windows.nll + [60.0, 40.0, 50.0])])
    pw = abilities.paired_windows(w, "RTN W4", "base", "lee")
    assert pw["n"] == 3 and pw["difference"] == pytest.approx(50 / 511) and pw["b_score"] == pytest.approx(ppl.estimate)
    with pytest.raises(ValueError, match="same windows"):
        abilities.paired_windows(w.iloc[:-1], "RTN W4", "base", "lee")
    # per unit: W4 adds 50/511 nats per token over 10 units, W3 100/511 over 40: W4 costs more per unit
    w3 = pd.concat([w, windows.assign(label="RTN W3", nll=windows.nll + [90.0, 110.0, 100.0])])
    pc = abilities.paired_costs(w3, "base", "RTN W4", "RTN W3", "lee", per_a=10, per_b=40)
    assert pc["a_cost"] == pytest.approx(5 / 511) and pc["b_cost"] == pytest.approx(2.5 / 511)
    assert pc["difference"] == pytest.approx(2.5 / 511) and pc["low"] > 0
    assert abilities.paired_costs(w3, "base", "RTN W4", "RTN W3", "lee")["difference"] == pytest.approx(-50 / 511)
    with pytest.raises(ValueError, match="per_b must be a positive"):
        abilities.paired_costs(w3, "base", "RTN W4", "RTN W3", "lee", per_b=0)


# -----------------------------------------------------------------------------
# a user's own lm-eval task folder, and the local task folder's rebuilds

class _AlwaysA:
    def __new__(cls):
        from lm_eval.api.model import LM

        class _A(LM):
            def loglikelihood(self, requests):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

            def generate_until(self, requests):
                return [" A" for _ in requests]

        return _A()


def _user_task(folder, answers):
    folder.mkdir(exist_ok=True)
    (folder / "letters.jsonl").write_text("".join(json.dumps({"q": f"Say A ({i})", "a": a}) + "\n"
                                                  for i, a in enumerate(answers)))
    (folder / "letters.yaml").write_text(
        "task: user_letters\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'letters.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n"
        "filter_list:\n  - name: strip\n    filter:\n      - function: remove_whitespace\n      - function: take_first\n"
        "metric_list:\n  - metric: exact_match\n")


@pytest.mark.integration
def test_a_users_task_folder_runs_and_an_edit_is_scored_afresh(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path / "results"))
    folder = tmp_path / "my_tasks"
    _user_task(folder, ["A", "A", "A", "A"])

    def score():
        res = abilities.evaluate_tasks(_AlwaysA(), None, ["user_letters"], model_key="always-A", include_path=folder)
        return res.scores.query("primary").score.item(), len(res.samples)

    assert score() == (1.0, 4)
    _user_task(folder, ["A", "B", "A", "B"])      # same names and sizes, new answers
    assert score() == (0.5, 4)
    with pytest.raises(ValueError, match="unknown lm-eval task"):
        abilities.evaluate_tasks(_AlwaysA(), None, ["user_letters"], model_key="always-A", cache=False)
    with pytest.raises(ValueError, match="is not a folder"):
        abilities.evaluate_tasks(_AlwaysA(), None, ["user_letters"], model_key="always-A", include_path=tmp_path / "nope")


@pytest.mark.integration
def test_a_rebuild_keeps_files_it_did_not_write_and_follows_a_moved_home(tmp_path):
    import shutil

    folder = tasks.build_ability_tasks(tmp_path / "home" / "tasks")
    assert tasks._built_for(folder) == str(folder.resolve())
    _user_task(folder / "mine", ["A"])
    (folder / "extra.yaml").write_text("task: extra\n")
    with pytest.warns(UserWarning, match="did not write.*extra.yaml.*mine"):
        tasks.build_ability_tasks(folder)
    assert (folder / "extra.yaml").read_text() == "task: extra\n" and (folder / "mine" / "letters.yaml").exists()
    assert len(list(folder.glob("wb_*.yaml"))) == 22
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "home", moved)
    assert tasks._built_for(moved / "tasks") != str((moved / "tasks").resolve())   # so ability_tasks_dir rebuilds it


@pytest.mark.integration
def test_ability_sweep_stores_one_point_per_spec_with_its_items(tiny_lm, tmp_path, monkeypatch):
    from workbench import experiments
    from workbench.quant import QuantConfig

    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    calls = []
    real = abilities.ability_scores
    monkeypatch.setattr(abilities, "ability_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, tokenizer, record = tiny_lm
    specs = {"base": None, "W3": QuantConfig(bits=3, group_size=16)}
    kw = dict(suites={"icl": ["wb_icl_arith_1d_add"]}, shots=[0, 1], limit=2, max_gen_toks=4, perplexity_corpora=[],
              progress=False)
    res = abilities.ability_sweep(model, tokenizer, record, specs, **kw)
    assert calls == [1, 1] and len(list((tmp_path / "experiments" / "abilities").glob("*.json"))) == 2
    assert res.scores.label.unique().tolist() == ["base", "W3"] and res.scores.bits.unique().tolist() == [16, 3]
    assert len(res.samples) == 2 * 2 * 2 and {"prompt", "response", "score", "doc_id"} <= set(res.samples.columns)
    again = abilities.ability_sweep(model, tokenizer, record, specs, **kw)
    assert calls == [1, 1]
    pd.testing.assert_frame_equal(again.scores, res.scores)
    # one stored item re-scored alone equals the record (a model loaded afresh by its name)
    (point,) = [r["point"] for r in experiments.read_sweep("abilities") if r["point"]["spec"] is None]
    one = abilities.ability_point({**point, "shots": [1]})
    stored = res.samples[(res.samples.label == "base") & (res.samples.shots == 1)]
    assert [i["score"] for i in one["items"]] == stored.score.tolist()
    # LoRA before scoring: adapt.lora on a corpus task; the label and the trainable parameters say so
    lora = {"task": {"kind": "corpus", "corpus": "lee", "n_train": 4, "seqlen": 32, "seed": 0},
            "args": {"r": 2, "steps": 2, "batch_size": 2}}
    tuned = abilities.ability_sweep(model, tokenizer, record, {"W3": specs["W3"]}, lora=lora, **kw)
    assert tuned.scores.label.unique().tolist() == ["W3 + LoRA"]
    assert tuned.scores.trainable_params.unique().tolist() == [2 * 2 * (96 + 72 + 72 + 96 + 144 + 144 + 144)]
    with pytest.raises(ValueError, match="'kind': 'corpus'"):
        abilities.ability_sweep(model, tokenizer, record, specs, lora={"r": 8}, **kw)
    with pytest.raises(ValueError, match="perplexity_corpora=\\[\\]"):
        abilities.ability_sweep(model, tokenizer, record, specs, **{**kw, "perplexity_windows": 0})


@pytest.mark.integration
def test_the_task_fingerprint_does_not_depend_on_where_the_tasks_or_lm_eval_are(tmp_path, monkeypatch):
    """The local YAMLs name their data files and lm-eval's task files by absolute path; a snapshot
    made under another WORKBENCH_HOME and virtual environment (another machine) must still find
    the same fingerprint, and an edit must not."""
    from pathlib import Path

    import lm_eval

    expected = abilities.task_folder_fingerprint(tasks.ability_tasks_dir())
    there = tasks.build_ability_tasks(tmp_path / "elsewhere" / "tasks")
    assert str(there) in (there / "wb_icl_arith_1d_add.yaml").read_text()      # absolute paths inside
    assert abilities.task_folder_fingerprint(there) == expected
    installed, other = str(Path(lm_eval.__file__).parent), str(tmp_path / "venv" / "site-packages" / "lm_eval")
    for yaml in there.glob("*.yaml"):                                          # lm-eval installed elsewhere
        yaml.write_text(yaml.read_text().replace(installed, other))
    assert other in (there / "wb_ifeval.yaml").read_text()
    monkeypatch.setattr(lm_eval, "__file__", str(Path(other) / "__init__.py"))
    assert abilities.task_folder_fingerprint(there) == expected
    with open(there / "wb_icl_arith_1d_add.jsonl", "a") as f:
        f.write('{"input": "What is 1 plus 1?", "target": "2"}\n')
    assert abilities.task_folder_fingerprint(there) != expected


def test_ability_frames_refuse_two_records_under_one_label():
    def record(r):
        return {"point": {"spec": None, "lora": {"task": {"kind": "corpus"}, "args": {"r": r, "seed": 0}}},
                "summary": {"scores": [], "lora": {"trainable_params": 10 * r}, "windows": []}, "items": []}
    frames = abilities.ability_frames([record(8)], ["base"])
    assert frames.scores.empty and frames.windows.columns.tolist()[:3] == ["label", "bits", "method"]
    with pytest.raises(ValueError, match="both be labelled 'base \\+ LoRA'"):
        abilities.ability_frames([record(8), record(16)], ["base", "base"])
