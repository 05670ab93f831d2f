"""EarlyBERT (workbench/adapt/earlybert.py) on a tiny BERT classifier: slimming hooks, ticket masks,
structured pruning that really shrinks the weights, early-bird detection, the method end to end."""
import copy
import math

import pytest
import torch

from workbench.adapt import slimming as eb

from tiny_models import FFN, HEADS, HIDDEN, LAYERS  # noqa: E402  (the tiny classifier's sizes)
HEAD_DIM = HIDDEN // HEADS


from tiny_models import hidden as _hidden, logits as _logits, tiny_classifier, tiny_task  # noqa: E402


def _tiny_classifier(seed=0, attn="sdpa"):
    return tiny_classifier(seed, attn=attn)


def _tiny_task(n=96, length=12, seed=0):
    return tiny_task(n, length, seed, padding=True)


@pytest.fixture(scope="module")
def model():
    return _tiny_classifier()


@pytest.fixture(scope="module")
def task():
    return _tiny_task()


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_coefficients_at_one_leave_the_model_unchanged_and_remove_restores_it(model, task):
    slim = copy.deepcopy(model)
    before = _hidden(model, task)
    coefs = eb.add_slimming(slim)
    assert coefs["heads"].shape == (LAYERS, HEADS) and coefs["neurons"].shape == (LAYERS, FFN)
    assert torch.equal(_hidden(slim, task), before)
    assert set(slim.state_dict()) == set(model.state_dict())          # coefficients are not model parameters
    with torch.no_grad():
        coefs["heads"][0, 1] = 0.5
    assert not torch.allclose(_hidden(slim, task), before)           # the hooks act
    with pytest.raises(ValueError, match="slimming hooks already"):
        eb.add_slimming(slim)
    coefs["handle"].remove()
    assert torch.equal(_hidden(slim, task), before)
    eb.add_slimming(slim)["handle"].remove()                          # after remove(), hooks can go on again


def test_coefficients_get_gradients(model, task):
    slim = copy.deepcopy(model)
    coefs = eb.add_slimming(slim)
    task.loss(slim, torch.arange(8)).backward()
    assert coefs["heads"].grad.abs().sum() > 0 and coefs["neurons"].grad.abs().sum() > 0
    coefs["handle"].remove()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_zeroed_coefficients_equal_pruning_the_units(task, attn):
    model = _tiny_classifier(attn=attn)
    head_mask = torch.ones(LAYERS, HEADS, dtype=torch.bool)
    head_mask[0, 1] = head_mask[1, 0] = head_mask[1, 3] = False
    neuron_mask = torch.rand(LAYERS, FFN, generator=torch.Generator().manual_seed(1)) > 0.3
    pruned = eb.prune_structured(model, head_mask, neuron_mask)
    slim = copy.deepcopy(model)
    coefs = eb.add_slimming(slim)
    with torch.no_grad():
        coefs["heads"].mul_(head_mask)
        coefs["neurons"].mul_(neuron_mask)
    assert torch.allclose(_hidden(pruned, task), _hidden(slim, task), atol=1e-5)
    assert torch.allclose(_logits(pruned, task), _logits(slim, task), atol=1e-5)
    assert not torch.allclose(_hidden(pruned, task), _hidden(model, task), atol=1e-3)   # pruning did something


def test_folded_coefficients_equal_the_slimmed_model(model, task):
    g = torch.Generator().manual_seed(2)
    slim = copy.deepcopy(model)
    coefs = eb.add_slimming(slim)
    with torch.no_grad():
        coefs["heads"].copy_(torch.rand(LAYERS, HEADS, generator=g) + 0.2)
        coefs["neurons"].copy_(torch.rand(LAYERS, FFN, generator=g) + 0.2)
    masks = eb.ticket_masks(coefs, head_ratio=0.5, neuron_ratio=0.25)
    with torch.no_grad():
        coefs["heads"].mul_(masks["heads"])
        coefs["neurons"].mul_(masks["neurons"])
    expected = _hidden(slim, task)
    coefs["handle"].remove()
    folded = eb.prune_structured(model, masks["heads"], masks["neurons"], coefficients=coefs)
    plain = eb.prune_structured(model, masks["heads"], masks["neurons"])
    assert torch.allclose(_hidden(folded, task), expected, atol=1e-5)
    assert not torch.allclose(_hidden(plain, task), expected, atol=1e-3)   # the folding mattered


@pytest.mark.parametrize("head_ratio, neuron_ratio, heads_pruned, neurons_pruned",
                         [(0.25, 0.4, 1, 26), (0.5, 0.1, 2, 6), (0.0, 0.0, 0, 0), (0.6, 0.99, 2, 63)])
def test_ratio_prunes_that_many_units_per_layer_the_smallest_coefficients(head_ratio, neuron_ratio, heads_pruned,
                                                                          neurons_pruned):
    g = torch.Generator().manual_seed(0)
    coefs = {"heads": torch.randn(LAYERS, HEADS, generator=g), "neurons": torch.randn(LAYERS, FFN, generator=g)}
    masks = eb.ticket_masks(coefs, head_ratio, neuron_ratio)
    assert masks["heads"].dtype == torch.bool
    assert (~masks["heads"]).sum(1).tolist() == [heads_pruned] * LAYERS
    assert (~masks["neurons"]).sum(1).tolist() == [neurons_pruned] * LAYERS
    for key in ("heads", "neurons"):
        c, m = coefs[key].abs(), masks[key]
        for i in range(LAYERS):
            if (~m[i]).any() and m[i].any():
                assert c[i][~m[i]].max() <= c[i][m[i]].min()        # pruned ones are the weakest
    rand = eb.random_masks(_tiny_classifier(), head_ratio, neuron_ratio, seed=3)
    assert (~rand["heads"]).sum(1).tolist() == [heads_pruned] * LAYERS
    assert (~rand["neurons"]).sum(1).tolist() == [neurons_pruned] * LAYERS


def test_prune_structured_really_shrinks_the_weights(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head_mask = torch.tensor([[True, False, True, True], [False, True, False, True]])
    neuron_mask = torch.ones(LAYERS, FFN, dtype=torch.bool)
    neuron_mask[0, :10] = False
    neuron_mask[1, 5:25] = False
    pruned = eb.prune_structured(model, head_mask, neuron_mask)
    per_head = 3 * (HEAD_DIM * HIDDEN + HEAD_DIM) + HEAD_DIM * HIDDEN        # q, k, v rows and biases; output columns
    per_neuron = HIDDEN + 1 + HIDDEN                                          # intermediate row and bias; output column
    assert _n_params(pruned) == _n_params(model) - 3 * per_head - 30 * per_neuron
    for i, (heads, neurons) in enumerate([(3, 54), (2, 44)]):
        layer = pruned.bert.encoder.layer[i]
        assert layer.attention.self.query.weight.shape == (heads * HEAD_DIM, HIDDEN)
        assert layer.attention.self.value.bias.shape == (heads * HEAD_DIM,)
        assert layer.attention.output.dense.weight.shape == (HIDDEN, heads * HEAD_DIM)
        assert layer.attention.self.num_attention_heads == heads
        assert layer.intermediate.dense.weight.shape == (neurons, HIDDEN)
        assert layer.output.dense.weight.shape == (HIDDEN, neurons)
    assert pruned.classifier.weight.shape == model.classifier.weight.shape
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # the input model is untouched
    kept = model.bert.encoder.layer[1].attention.self.key.weight[HEAD_DIM:2 * HEAD_DIM]   # layer 1 keeps head 1 first
    assert torch.equal(pruned.bert.encoder.layer[1].attention.self.key.weight[:HEAD_DIM], kept)


def test_hamming_distance():
    a = torch.tensor([[True, False, True, True], [False, True, False, False]])
    assert eb.hamming(a, a.clone()) == 0
    assert eb.hamming(a, ~a) == 1
    b = a.clone()
    b[0, 0] = False
    assert eb.hamming(a, b) == 1 / 8
    with pytest.raises(ValueError, match="different shapes"):
        eb.hamming(a, a[0])


def test_early_bird_is_the_first_checkpoint_below_eps():
    nan = float("nan")
    assert eb.early_bird([nan, 0.5, 0.3, 0.05, 0.2, 0.01], eps=0.1) == 3
    assert eb.early_bird([nan, 0.5, 0.3, 0.1, 0.2], eps=0.1) is None           # not strictly below
    assert eb.early_bird([nan, 0.05, 0.3, 0.08, 0.09], eps=0.1, patience=2) == 4
    assert eb.early_bird([nan], eps=1.0) is None                               # the first has no distance
    with pytest.raises(ValueError, match="eps must be positive"):
        eb.early_bird([0.1], eps=0)


def test_search_stops_at_the_early_bird_and_reports_each_checkpoint(model, task):
    masks, table = eb.slimming_search(model, task, head_ratio=0.25, neuron_ratio=0.5, steps=12, checkpoint_every=3,
                                      eps=1.01, coef_lr=0.05)
    assert list(table.columns) == ["step", "loss", "hamming_heads", "hamming_neurons", "early_bird"]
    assert table.step.tolist() == [3, 6] and table.early_bird.tolist() == [False, True]   # eps > 1: the 2nd checkpoint
    assert math.isnan(table.hamming_heads[0]) and 0 <= table.hamming_neurons[1] <= 1
    assert (~masks["heads"]).sum().item() == LAYERS and (~masks["neurons"]).sum().item() == LAYERS * FFN // 2
    _, full = eb.slimming_search(model, task, head_ratio=0.25, neuron_ratio=0.5, steps=12, checkpoint_every=3,
                                 eps=1e-9, coef_lr=0.05)
    assert full.step.tolist() == [3, 6, 9, 12] and not full.early_bird.any()
    assert full.hamming_neurons[1:].sum() > 0                                     # the coefficients moved the ticket


def test_earlybert_end_to_end(model, task):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned, rec = eb.earlybert(model, task, head_ratio=0.25, neuron_ratio=0.5, search_steps=12, steps=40,
                              checkpoint_every=3, eps=0.5, coef_lr=0.05, lr=3e-3)
    assert rec["method"] == "earlybert"
    assert rec["params_after"] < rec["params_before"] == rec["total_params"] == _n_params(model)
    assert rec["params_after"] == _n_params(tuned) == rec["trainable_params"]
    assert rec["head_params"] == HIDDEN * 2 + 2
    assert rec["heads_kept"] == [3, 3] and rec["neurons_kept"] == [32, 32]
    assert rec["early_bird_step"] is None or rec["early_bird_step"] in [r["step"] for r in rec["hamming"]]
    assert rec["search_steps_run"] == rec["hamming"][-1]["step"] <= 12
    assert len(rec["losses"]) == 40 and sum(rec["losses"][-5:]) < 0.5 * sum(rec["losses"][:5])   # the ticket learns
    assert rec["accuracy"] > 0.75 and 0 < rec["train_time_s"] < rec["time_s"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    control, crec = eb.random_structured_ticket(model, task, head_ratio=0.25, neuron_ratio=0.5, steps=5, lr=1e-3)
    assert crec["method"] == "random_structured_ticket" and crec["params_after"] == rec["params_after"]


def test_bad_input_names_the_problem(model, task):
    with pytest.raises(ValueError, match=r"head_ratio must be a share in \[0, 1\)"):
        eb.earlybert(model, task, head_ratio=1.0, search_steps=3, steps=1, checkpoint_every=1)
    with pytest.raises(ValueError, match=r"neuron_ratio must be a share in \[0, 1\)"):
        eb.random_structured_ticket(model, task, neuron_ratio=-0.1, steps=1)
    with pytest.raises(ValueError, match="would prune all 4 heads"):
        eb.slimming_search(model, task, head_ratio=0.9, steps=3, checkpoint_every=1)
    with pytest.raises(ValueError, match="checkpoint_every"):
        eb.slimming_search(model, task, steps=3, checkpoint_every=5)
    head_mask = torch.ones(LAYERS, HEADS, dtype=torch.bool)
    head_mask[1] = False
    with pytest.raises(ValueError, match="prunes every head of layer 1"):
        eb.prune_structured(model, head_mask, torch.ones(LAYERS, FFN, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"neuron_mask must be a tensor of shape \[layers, units\] = \[2, 64\]"):
        eb.prune_structured(model, torch.ones(LAYERS, HEADS, dtype=torch.bool), torch.ones(LAYERS, 8, dtype=torch.bool))
    pruned = eb.prune_structured(model, torch.tensor([[True, False, True, True], [True] * 4]),
                                 torch.ones(LAYERS, FFN, dtype=torch.bool))
    with pytest.raises(ValueError, match="pruned already"):
        eb.add_slimming(pruned)
    with pytest.raises(ValueError, match="BERT-style encoder"):
        eb.add_slimming(torch.nn.Sequential(torch.nn.Linear(4, 4)))
