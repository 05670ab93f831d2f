"""Quantize-then-adapt methods on a tiny BERT classifier with a learnable synthetic task."""
import math

import pytest
import torch

from workbench import adapt
from workbench.quant.bcq import BCQLinear, bcq_fit
from workbench.finetune import classification_task, train
from workbench.modules import linear_modules
from workbench.quant import QuantConfig, fake_quantize

STEPS = 12


from tiny_models import tiny_classifier as _tiny_classifier, tiny_task as _tiny_task  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return _tiny_classifier()


@pytest.fixture(scope="module")
def task():
    return _tiny_task()


def _targets(m):
    return {n: l for n, l in linear_modules(m).items() if n in adapt._targets(m, adapt.TARGETS)}


def test_targets_are_the_encoder_projections_not_pooler_or_head(model):
    names = list(adapt._targets(model, adapt.TARGETS))
    assert len(names) == 2 * 6 and not any("pooler" in n or "classifier" in n for n in names)


def test_full_finetune_learns_and_leaves_the_input_model_alone(model, task):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned, rec = adapt.full_finetune(model, task, steps=40, lr=1e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert rec["trainable_params"] == rec["total_params"] == sum(p.numel() for p in model.parameters())
    assert rec["head_params"] == 32 * 2 + 2
    assert rec["losses"][-1] < rec["losses"][0] and rec["accuracy"] > 0.5


def test_head_only_trains_the_head_alone(model, task):
    tuned, rec = adapt.head_only(model, task, steps=STEPS, lr=1e-2)
    assert rec["trainable_params"] == rec["head_params"] == 32 * 2 + 2
    for name, p in tuned.named_parameters():
        assert torch.equal(p, model.get_parameter(name)) != name.startswith("classifier"), name


def test_prequant_gradient_masks_freeze_everything_but_the_outliers(model, task):
    cfg = QuantConfig(bits=3, group_size=16)
    tuned, rec = adapt.prequant(model, task, bits=3, group_size=16, budget=0.02, steps=STEPS, lr=1e-2)
    targets = _targets(model)
    masks = adapt.outlier_masks({n: m.weight for n, m in targets.items()}, 0.02)
    assert rec["budget_weights"] == sum(int(m.sum()) for m in masks.values()) == round(0.02 * sum(
        m.weight.numel() for m in targets.values()))
    assert rec["trainable_params"] == rec["budget_weights"] + rec["head_params"]
    moved = 0
    for name, mask in masks.items():
        w0 = targets[name].weight.detach()
        w = tuned.get_submodule(name).weight.detach()
        assert torch.equal(w[~mask], fake_quantize(w0, cfg)[~mask]), name   # frozen and quantized, bit for bit
        moved += int((w[mask] != w0[mask]).sum())                            # outliers started at fp and trained
    assert moved > 0.5 * rec["budget_weights"]
    for name, p in tuned.named_parameters():                                # nothing else moved
        if not any(name.startswith(t) for t in targets) and "classifier" not in name:
            assert torch.equal(p, model.get_parameter(name)), name


@pytest.mark.parametrize("unit", ["row", "column"])
def test_outlier_masks_take_whole_rows_or_columns_within_the_budget(model, unit):
    weights = {n: m.weight for n, m in _targets(model).items()}
    masks = adapt.outlier_masks(weights, 0.05, unit)
    total = sum(w.numel() for w in weights.values())
    assert 0 < sum(int(m.sum()) for m in masks.values()) <= round(0.05 * total)
    for m in masks.values():
        lines = m.all(dim=1) if unit == "row" else m.all(dim=0)
        assert torch.equal(m.any(dim=1) if unit == "row" else m.any(dim=0), lines)


@pytest.mark.parametrize("offset", [True, False])
def test_alphatuning_changes_only_the_scales(model, task, offset):
    tuned, rec = adapt.alphatuning(model, task, bits=2, group_size=16, steps=STEPS, lr=1e-2, offset=offset)
    layers = {n: m for n, m in tuned.named_modules() if isinstance(m, BCQLinear)}
    assert set(layers) == set(_targets(model))
    cfg = QuantConfig(bits=2, group_size=16, method="bcq", bcq_iters=3, bcq_init="uniform", bcq_offset=offset)
    changed = 0
    for name, layer in layers.items():
        alpha0, binary0, offset0 = bcq_fit(model.get_submodule(name).weight.detach(), cfg)
        assert torch.equal(layer.binary, binary0), name                     # binary planes identical
        assert (layer.offset is None) if not offset else torch.equal(layer.offset, offset0)   # offsets frozen
        changed += int((layer.alpha.detach() != alpha0).sum())
    assert changed > 0
    assert rec["trainable_params"] == rec["head_params"] + sum(l.alpha.numel() for l in layers.values())
    assert rec["total_params"] == sum(p.numel() for p in model.parameters())   # the model given, not the BCQ one
    assert rec["offset"] is offset
    first, rec1 = adapt.alphatuning(model, task, bits=2, group_size=16, steps=STEPS, lr=1e-2, first_scale_only=True,
                                    offset=offset)
    n_first = 0
    for name, layer in ((n, m) for n, m in first.named_modules() if isinstance(m, BCQLinear)):
        alpha0, _, _ = bcq_fit(model.get_submodule(name).weight.detach(), cfg)
        largest = torch.zeros_like(alpha0, dtype=torch.bool).scatter_(0, alpha0.argmax(0, keepdim=True), True)
        a = layer.alpha.detach()
        assert torch.equal(a[~largest], alpha0[~largest])                  # only alpha_1, each group's largest, trained
        assert not torch.equal(a[largest], alpha0[largest])
        n_first += int(largest.sum())
    assert rec1["trainable_params"] == rec1["head_params"] + n_first


def test_qlora_leaves_the_quantized_base_untouched(model, task):
    cfg = QuantConfig(bits=4, group_size=16)
    tuned, rec = adapt.qlora(model, task, bits=4, group_size=16, r=2, steps=STEPS, lr=1e-2)
    for name, lin in _targets(model).items():
        base = tuned.get_submodule(name).base_layer.weight
        assert torch.equal(base, fake_quantize(lin.weight.detach(), cfg)), name
    lora_params = sum(2 * (l.in_features + l.out_features) for l in _targets(model).values())
    assert rec["trainable_params"] == lora_params + rec["head_params"] and rec["bits"] == 4


def test_stable_rank_ranks_match_the_uniform_budget_and_follow_stable_rank(model):
    from workbench.probes import stable_rank

    ranks = adapt.stable_rank_ranks(model, r=4)
    mods = _targets(model)
    uniform = sum(4 * sum(m.weight.shape) for m in mods.values())
    spent = sum(k * sum(mods[n].weight.shape) for n, k in ranks.items())
    assert abs(spent - uniform) <= 0.5 * sum(sum(m.weight.shape) for m in mods.values())  # rounding only
    sr = {n: stable_rank(m.weight.detach()) for n, m in mods.items()}
    order = sorted(ranks, key=sr.get)
    assert ranks[order[0]] <= ranks[order[-1]]
    inverse = adapt.stable_rank_ranks(model, r=4, inverse=True)
    assert inverse[order[0]] >= inverse[order[-1]]


def test_time_aware_stable_rank_lora_trains_the_head_alone_until_start(model, task):
    _, probe = adapt.head_only(model, task, steps=3, seed=0)
    tuned, rec = adapt.stable_rank_lora(model, task, r=2, start=3, steps=6, seed=0)
    assert rec["start"] == 3 and len(rec["losses"]) == 6
    assert rec["losses"][:3] == pytest.approx(probe["losses"], rel=1e-6)   # adapters (B = 0) idle: a probe
    moved = [n for n, p in tuned.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved                                                            # then they trained
    for bad in (-1, 6, 2.5):
        with pytest.raises(ValueError, match="start must be a whole step count"):
            adapt.stable_rank_lora(model, task, r=2, start=bad, steps=6)


def test_l1_ticket_is_sparser_than_plain_finetuning(model, task):
    _, plain = adapt.l1_ticket(model, task, l1=0.0, steps=STEPS, lr=1e-3)
    tuned, sparse = adapt.l1_ticket(model, task, l1=0.5, steps=STEPS, lr=1e-3)
    assert plain["changed_share"] > 0.9
    assert sparse["changed_share"] < 0.5 * plain["changed_share"]
    assert sparse["ticket_change_share"] > plain["ticket_change_share"]
    # only the ticket is kept: at most its size (ties aside) of target weights differ from W0
    differ = sum(int((tuned.get_submodule(n).weight != m.weight).sum()) for n, m in _targets(model).items())
    assert 0 < differ <= sparse["ticket_weights"]


def test_dsee_trains_low_rank_plus_a_sparse_support(model, task):
    tuned, rec = adapt.dsee(model, task, r=2, budget=0.01, steps=STEPS, lr=1e-2)
    mods = _targets(model)
    moved = sum(int((tuned.get_submodule(n).base_layer.weight != m.weight).sum()) for n, m in mods.items())
    assert 0 < moved <= rec["budget_weights"]
    lora_params = sum(2 * (m.in_features + m.out_features) for m in mods.values())
    assert rec["trainable_params"] == lora_params + rec["budget_weights"] + rec["head_params"]
    pruned, rec = adapt.dsee(model, task, r=2, budget=0.01, final_sparsity=0.5, steps=STEPS, lr=1e-2)
    for n in mods:
        w = pruned.get_submodule(n).base_layer.weight
        assert (w == 0).float().mean() >= 0.5
    assert "accuracy_dense" in rec


@pytest.mark.parametrize("budget, match", [(-0.1, "positive"), (0, "positive"), (10 ** 9, "larger than"),
                                           (2.5, "whole"), (float("nan"), "share")])
def test_bad_budgets_are_clear_errors(model, task, budget, match):
    with pytest.raises(ValueError, match=match):
        adapt.prequant(model, task, budget=budget, steps=1)
    with pytest.raises(ValueError, match=match):
        adapt.l1_ticket(model, task, ticket=budget, steps=1)


@pytest.mark.parametrize("l1", [float("nan"), float("inf"), -0.5, "0.5", True])
def test_bad_l1_is_a_clear_error(model, task, l1):
    with pytest.raises(ValueError, match="l1 must be a finite number >= 0"):
        adapt.l1_ticket(model, task, l1=l1, steps=1)


def test_a_target_pattern_matching_nothing_is_a_clear_error(model, task):
    with pytest.raises(ValueError, match="matches no linear module"):
        adapt.lora(model, task, targets=r"attn\.c_attn", steps=1)


def test_train_refuses_a_model_with_nothing_to_train(model, task):
    frozen = _tiny_classifier()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train(frozen, task, steps=1)


def test_training_is_deterministic(model, task):
    _, a = adapt.lora(model, task, r=2, steps=STEPS, lr=1e-2)
    _, b = adapt.lora(model, task, r=2, steps=STEPS, lr=1e-2)
    assert a["losses"] == b["losses"] and a["accuracy"] == b["accuracy"]


@pytest.mark.integration
def test_polarity_split_is_fixed_stratified_and_disjoint():
    from workbench.finetune import load_classifier

    _, tokenizer, _ = load_classifier("minilm-l6")
    a, b = classification_task(tokenizer, seed=0), classification_task(tokenizer, seed=0)
    assert torch.equal(a.train_ids, b.train_ids) and torch.equal(a.dev_labels, b.dev_labels)
    assert len(a.train_labels) == 140 and len(a.dev_labels) == 60 and int(a.dev_labels.sum()) == 30
    train_rows = {tuple(r.tolist()) for r in a.train_ids}
    assert not any(tuple(r.tolist()) in train_rows for r in a.dev_ids)
    with pytest.raises(ValueError, match="unknown classification set"):
        classification_task(tokenizer, "sst2")


@pytest.mark.integration
def test_ability_task_trains_on_other_items_with_loss_on_the_answer_only():
    import json

    from workbench.abilities.tasks import ability_tasks_dir
    from workbench.abilities import ability_task
    from workbench.models import load_model

    _, tokenizer, _ = load_model("smollm2-135m")
    task = ability_task(tokenizer, "wb_icl_arith_1d_add", limit=10, n_train=20)
    rows = [json.loads(line) for line in (ability_tasks_dir() / "wb_icl_arith_1d_add.jsonl").read_text().splitlines()]
    assert task.n_train == 20
    for i, row in enumerate(rows[10:30]):                       # the 10 scored items are never trained on
        answer = task.train_ids[i][task.train_labels[i] != -100]
        assert tokenizer.decode(answer).strip() == row["target"]
        text = tokenizer.decode(task.train_ids[i][task.train_mask[i] == 1])
        assert text.startswith(f"Q: {row['input']}")
    with pytest.raises(ValueError, match="fewer than limit"):
        ability_task(tokenizer, "wb_icl_arith_1d_add", limit=50, n_train=60)


def test_results_table_has_one_row_per_run(model, task):
    runs = adapt.resolve_runs({"probe": ("head_only", dict(steps=STEPS, lr=1e-2)), "none": ("unadapted", {}),
                               "W4": ("unadapted", dict(bits=4, group_size=16))})
    records = {label: adapt.METHODS[method](model, task, **kwargs)[1] for label, (method, kwargs) in runs.items()}
    table = adapt.results_table(records, n_params=sum(p.numel() for p in model.parameters()))
    assert list(table.label) == ["probe", "none", "W4"] and list(table.bits) == [16, 16, 4]
    assert table.adapted_params.tolist() == [0, 0, 0] and table.final_loss.isna().tolist() == [False, True, True]
    ticket = dict(records["probe"], method="l1_ticket", trainable_params=10_000, ticket_weights=100)
    row = adapt.results_table({"L1": ticket}, n_params=20_000).iloc[0]
    assert row.trainable_params == 10_000 and row.adapted_params == 100 and row.adapted_share == 100 / 20_000


def test_unknown_methods_and_arguments_are_named_before_anything_trains():
    with pytest.raises(ValueError, match="unknown method 'qalora'"):
        adapt.resolve_runs({"x": ("qalora", {})})
    with pytest.raises(ValueError, match="prequant has no argument budgett; it takes bits, "):
        adapt.resolve_runs({"x": ("prequant", dict(budgett=0.1))})


def test_resolved_runs_spell_out_every_default():
    runs = adapt.resolve_runs({"a": ("prequant", dict(bits=2)), "b": ("head_only", {})})
    method, kwargs = runs["a"]
    assert method == "prequant" and kwargs["bits"] == 2 and kwargs["budget"] == 0.01
    assert kwargs["head_lr"] == adapt.HEAD_LR and kwargs["targets"] == adapt.TARGETS
    assert set(runs["b"][1]) == {"steps", "lr", "batch_size", "seed"}
    assert adapt.resolve_runs(runs) == runs                               # idempotent


def test_only_a_fresh_task_head_counts_as_the_head():
    from workbench.modules import is_task_head

    assert is_task_head("classifier.weight") and is_task_head("score.weight") and is_task_head("roberta.classifier.dense.bias")
    assert not is_task_head("lm_head.weight") and not is_task_head("embed_out.weight")   # pre-trained LM heads
    assert not is_task_head("bert.pooler.dense.weight")


def test_train_gives_the_head_its_own_learning_rate(task):
    m = _tiny_classifier()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    train(m, task, steps=3, lr=0.0, head_lr=1e-2)
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]) != n.startswith("classifier."), n


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method, kwargs", [
    ("full_finetune", {}), ("lora", dict(r=2)), ("qlora", dict(bits=4, group_size=16, r=2)),
    ("prequant", dict(bits=4, group_size=16, budget=0.05)), ("alphatuning", dict(bits=2, group_size=16)),
    ("stable_rank_lora", dict(r=2, start=2)), ("l1_ticket", dict(ticket=0.05)), ("dsee", dict(r=2, final_sparsity=0.5))])
def test_methods_run_on_cuda_like_on_cpu(task, method, kwargs):
    """The tasks keep their tensors on the CPU and move each batch to the model: every method trains
    a CUDA model, and the losses follow the CPU run's (dropout and kernels differ, so loosely)."""
    cpu, gpu = _tiny_classifier(), _tiny_classifier().cuda()
    kw = dict(steps=6, lr=1e-2, **kwargs)
    tuned, rec = adapt.METHODS[method](gpu, task, **kw)
    _, ref = adapt.METHODS[method](cpu, task, **kw)
    assert all(p.is_cuda for p in tuned.parameters())
    assert rec["trainable_params"] == ref["trainable_params"]
    assert all(math.isfinite(x) for x in rec["losses"])
    assert rec["losses"][0] == pytest.approx(ref["losses"][0], rel=0.3)     # dropout draws differ on the GPU
    assert 0 <= rec["accuracy"] <= 1


def test_lora_params_is_the_adapter_count_peft_trains(model, task):
    rec = adapt.lora(model, task, r=4, steps=1)[1]
    assert adapt.lora_params(model, 4) == rec["trainable_params"] - rec["head_params"] == 2 * (4 * 4 * (32 + 32) + 2 * 4 * (32 + 64))
    assert adapt.target_params(model) == 2 * (4 * 32 * 32 + 2 * 32 * 64)
    with pytest.raises(ValueError, match="positive int rank"):
        adapt.lora_params(model, 0)


def test_records_hold_each_held_out_items_outcome(model, task):
    rec = adapt.head_only(model, task, steps=STEPS, lr=1e-2)[1]
    assert len(rec["correct"]) == len(task.dev_labels) and set(rec["correct"]) <= {0, 1}
    assert rec["accuracy"] == pytest.approx(sum(rec["correct"]) / len(rec["correct"]))


def test_results_over_seeds_carry_n_interval_and_each_seed(model, task):
    seeds = {s: adapt.head_only(model, task, steps=STEPS, lr=1e-2, seed=s)[1] for s in (0, 1, 2)}
    none = adapt.unadapted(model, task)[1]
    records = {"probe": list(seeds.values()), "none": [none]}
    table = adapt.results_table(records).set_index("label")
    n = len(task.dev_labels)
    assert table.loc["probe", "seeds"] == 3 and table.loc["probe", "n"] == 3 * n
    assert table.loc["probe", "accuracy"] == pytest.approx(sum(r["accuracy"] for r in seeds.values()) / 3)
    assert table.loc["probe", "low"] <= table.loc["probe", "accuracy"] <= table.loc["probe", "high"]
    assert table.loc["probe", "per_seed"] == " ".join(f"{r['accuracy']:.3f}" for r in seeds.values())
    assert table.loc["none", "seeds"] == 1 and table.loc["none", "n"] == n      # one seed: the Wilson interval
    t = adapt.paired_runs(records, "probe", "none")                              # the unseeded run pairs with each seed
    assert t["seeds"] == 3 and t["difference"] == pytest.approx(table.loc["probe", "accuracy"] - none["accuracy"])
    one = adapt.paired_runs({"a": seeds[0], "b": none}, "a", "b")
    assert one["test"] == "exact McNemar" and one["n"] == n
    with pytest.raises(ValueError, match="no run 'x'"):
        adapt.paired_runs(records, "x", "none")
    with pytest.raises(ValueError, match="no per-item outcomes"):
        adapt.paired_runs({"a": dict(none, correct=None), "b": none}, "a", "b")
    with pytest.raises(ValueError, match="the same seeds"):
        adapt.paired_runs({"a": [seeds[0], seeds[1]], "b": list(seeds.values())}, "a", "b")


def test_stable_rank_qlora_takes_its_ranks_from_the_quantized_weights(model, task):
    from workbench.modules import HEAD
    from workbench.quant import quantize_model

    qmodel, _ = quantize_model(model, {adapt.TARGETS: QuantConfig(bits=2, group_size=16)}, skip=HEAD, progress=False)
    for inverse in (False, True):
        tuned, rec = adapt.stable_rank_qlora(model, task, bits=2, group_size=16, r=2, inverse=inverse, steps=3)
        assert rec["method"] == "stable_rank_qlora" and rec["bits"] == 2 and rec["inverse"] is inverse
        assert rec["ranks"] == adapt.stable_rank_ranks(qmodel, r=2, inverse=inverse)     # the quantized spectra
        base = {n: m.base_layer.weight for n, m in tuned.named_modules() if hasattr(m, "base_layer")}
        assert base and all(torch.equal(w, dict(linear_modules(qmodel))[n.removeprefix("base_model.model.")].weight)
                            for n, w in base.items())                                  # frozen, quantized, bit-identical


def test_dominant_ticket_retrains_only_the_ticket_from_the_pretrained_weights(model, task):
    tuned, rec = adapt.dominant_ticket(model, task, ticket=0.05, l1=0.5, find_steps=STEPS, find_lr=1e-3, steps=STEPS)
    n = round(0.05 * adapt.target_params(model))
    assert rec["method"] == "dominant_ticket" and len(rec["losses"]) == STEPS and rec["find_steps"] == STEPS
    assert rec["ticket_weights"] == sum(rec["chosen"].values()) and n <= rec["ticket_weights"] <= n + 5    # ties aside
    assert rec["trainable_params"] == rec["ticket_weights"] + rec["head_params"]
    before, after = _targets(model), _targets(tuned)
    moved = sum(int((after[k].weight != w.weight).sum()) for k, w in before.items())
    assert 0 < moved <= rec["ticket_weights"]                      # only ticket entries left the pre-trained weights
    found = adapt.l1_ticket(model, task, ticket=0.05, l1=0.5, steps=STEPS, lr=1e-3)[1]
    assert rec["ticket_change_share"] == pytest.approx(found["ticket_change_share"])   # the same search found it
    with pytest.raises(ValueError, match="budget must be positive"):
        adapt.dominant_ticket(model, task, ticket=0, find_steps=1, steps=1)
