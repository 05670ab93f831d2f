"""The MPO methods of workbench/adapt/mpo_methods.py on a tiny BERT classifier: MPO models and
contraction back, MPOP's auxiliary-only training, OPF's over-parameterization and its static and
dynamic choices, MPOBERT's shared central tensors, MPOE's experts, router and central gradient."""
import copy
import json

import pytest
import torch
from torch import nn

from workbench.adapt import mpo_methods as mm
from workbench.decompose import MPOLinear, mpo_contract, mpo_decompose
from workbench.finetune import train

from tiny_models import HIDDEN, LAYERS  # noqa: E402  (the tiny classifier's sizes)
N_TARGETS = 6 * LAYERS


from tiny_models import hidden as _hidden, logits as _logits, tiny_classifier as _tiny_classifier, tiny_task  # noqa: E402


def _tiny_task(n=96, length=12, seed=0):
    return tiny_task(n, length, seed, padding=True)


@pytest.fixture(scope="module")
def model():
    return _tiny_classifier()


@pytest.fixture(scope="module")
def task():
    return _tiny_task()


def _shapes(m):
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _json(record):
    json.dumps(record)                                                # every field plain data
    return record


# ----------------------------------------------------------------------------- mpo_model, contract_back


def test_mpo_model_at_full_bond_computes_what_the_model_computes(model, task):
    mpo, report = mm.mpo_model(model)
    layers = [m for m in mpo.modules() if isinstance(m, MPOLinear)]
    assert len(layers) == len(report) == N_TARGETS
    assert not any(isinstance(m, MPOLinear) for m in model.modules())          # the input is untouched
    assert torch.allclose(_hidden(mpo, task), _hidden(model, task), atol=1e-5)
    assert torch.allclose(_logits(mpo, task), _logits(model, task), atol=1e-5)
    assert (report.rel_error < 1e-5).all() and (report.params > report.dense_params).all()   # full bond: exact, larger
    assert list(report.columns) == ["module", "out_factors", "in_factors", "bonds", "params", "dense_params",
                                    "compression", "rel_error"]


def test_mpo_model_truncation_compresses_and_reports_its_error(model):
    mpo, report = mm.mpo_model(model, max_bond=2)
    assert (report.compression < 1).all() and all(max(b) <= 2 for b in report.bonds)
    name = "bert.encoder.layer.1.intermediate.dense"
    w = model.get_submodule(name).weight.detach()
    with torch.no_grad():
        w_hat = mpo.get_submodule(name).weight
    expected = float(torch.linalg.norm(w - w_hat) / torch.linalg.norm(w))
    assert report.set_index("module").rel_error[name] == pytest.approx(expected, rel=1e-4)
    assert expected > 0.1


def test_contract_back_restores_plain_linear_layers_with_the_same_outputs(model, task):
    mpo, _ = mm.mpo_model(model, max_bond=3)
    dense = mm.contract_back(mpo)
    assert _shapes(dense) == _shapes(model)                                   # same keys, same shapes
    for name in mm._targets(model, mm.TARGETS):
        assert type(dense.get_submodule(name)) is nn.Linear
    assert torch.allclose(_hidden(dense, task), _hidden(mpo, task), atol=1e-5)
    assert any(isinstance(m, MPOLinear) for m in mpo.modules())              # contract_back works on a copy
    with pytest.raises(ValueError, match="no MPOLinear"):
        mm.contract_back(model)


# ----------------------------------------------------------------------------- MPOP


def test_mpop_trains_only_the_auxiliary_tensors_and_the_head(model, task):
    before, report = mm.mpo_model(model, max_bond=4)
    tuned, rec = mm.mpop(model, task, max_bond=4, steps=4, lr=1e-2)
    _json(rec)
    old, new = mm._mpo_layers(before), mm._mpo_layers(tuned)
    aux = 0
    for name, layer in new.items():
        c = layer.central
        assert torch.equal(layer.tensors[c], old[name].tensors[c])             # central: bit-identical
        assert torch.equal(layer.bias, old[name].bias)                         # biases frozen too
        for k, t in enumerate(layer.tensors):
            if k != c:
                assert not torch.equal(t, old[name].tensors[k])                 # every auxiliary moved
                aux += t.numel()
    assert torch.equal(tuned.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)
    assert not torch.equal(tuned.classifier.weight, model.classifier.weight)
    head = sum(p.numel() for p in model.classifier.parameters())
    assert rec["trainable_params"] == aux + head and rec["head_params"] == head and rec["auxiliary_params"] == aux
    assert rec["target_params_mpo"] == report.params.sum() and rec["target_params_dense"] == report.dense_params.sum()
    assert rec["compression"] == pytest.approx(rec["target_params_mpo"] / rec["target_params_dense"])
    assert rec["compression"] < 1
    assert rec["rel_error"] == pytest.approx(report.rel_error.mean())
    assert rec["params_after"] < rec["total_params"] and rec["max_bond"] == 4
    assert len(rec["losses"]) == 4 and rec["accuracy"] is not None


# ----------------------------------------------------------------------------- OPF


def test_opf_static_over_parameterizes_the_top_n_and_returns_the_original_architecture(model, task):
    tuned, rec = mm.opf(model, task, n_matrices=3, criterion="norm", steps=3, lr=1e-3)
    _json(rec)
    norms = {n: m.weight.detach().norm().item() for n, m in mm._targets(model, mm.TARGETS).items()}
    top = sorted(norms, key=norms.get, reverse=True)[:3]
    assert rec["rounds"][0]["chosen"] == top == rec["chosen"] and len(rec["rounds"]) == 1
    assert _shapes(tuned) == _shapes(model)
    assert [type(m) for m in tuned.modules()] == [type(m) for m in model.modules()]   # no MPO left: no latency
    for n in top:
        assert rec["mpo_params"][n] > rec["dense_params"][n] == model.get_submodule(n).weight.numel()
        assert not torch.equal(tuned.get_submodule(n).weight, model.get_submodule(n).weight)   # they trained
    assert rec["over_parameterization"] > 1 and rec["rel_error_max"] < 1e-5
    assert rec["trainable_params"] > rec["total_params"] == rec["params_after"]   # trained over-parameterized


def test_opf_static_stable_rank_criterion(model, task):
    _, rec = mm.opf(model, task, n_matrices=2, criterion="stable_rank", steps=1)
    sr = {}
    for n, m in mm._targets(model, mm.TARGETS).items():
        s = torch.linalg.svdvals(m.weight.detach().double())
        sr[n] = float((s ** 2).sum() / s[0] ** 2)
    assert rec["rounds"][0]["chosen"] == sorted(sr, key=sr.get, reverse=True)[:2]


def test_opf_dynamic_rechooses_by_the_gradient_norm_of_the_dense_weight(model, task):
    """Layer 1's output.dense is zero, so its intermediate.dense gets (almost) no gradient while it
    has by far the largest norm: the static choice takes it, the gradient sends it away."""
    m = copy.deepcopy(model)
    up = "bert.encoder.layer.1.intermediate.dense"
    with torch.no_grad():
        m.bert.encoder.layer[1].output.dense.weight.zero_()
        m.get_submodule(up).weight.mul_(10)
    tuned, rec = mm.opf(m, task, n_matrices=1, choice="dynamic", criterion="norm", every=2, steps=4, lr=1e-3)
    _json(rec)
    first, second = rec["rounds"]
    assert first["chosen"] == [up] and (first["start"], second["start"]) == (0, 2)
    grads = second["scores"]                                                  # ||dL/dW||^2 summed over round 0
    assert set(grads) == set(mm._targets(model, mm.TARGETS)) and len(grads) == N_TARGETS
    assert second["chosen"] == [max(grads, key=grads.get)] != [up]
    assert grads[up] < 1e-3 * max(grads.values())
    assert rec["chosen"] == [up, second["chosen"][0]]
    assert _shapes(tuned) == _shapes(m) and not any(isinstance(x, MPOLinear) for x in tuned.modules())
    assert len(rec["losses"]) == 4


# ----------------------------------------------------------------------------- MPOBERT


def test_mpobert_model_shares_one_parameter_per_matrix_type_and_a_step_moves_it_everywhere(model, task):
    shared, report = mm.mpobert_model(model)
    layers = mm._mpo_layers(shared)
    groups = report.groupby("group")
    assert len(groups) == 6 and all(len(rows) == LAYERS for _, rows in groups)
    centrals = {}
    for g, rows in groups:
        first = layers[rows.module.iloc[0]]
        centrals[g] = first.tensors[first.central]
        assert all(layers[n].tensors[layers[n].central] is centrals[g] for n in rows.module)
    n_unique = sum(p.numel() for p in shared.parameters())
    n_unshared = n_unique + sum(c.numel() for c in centrals.values()) * (LAYERS - 1)
    assert n_unique < n_unshared
    layer0 = report[report.module.str.contains(r"layer\.0\.")]
    assert (layer0.rel_error_shared < 1e-5).all()                             # init="first": layer 0 exact
    start = {g: c.detach().clone() for g, c in centrals.items()}
    w_before = {n: layers[n].weight.detach().clone() for n in report.module}
    for p in shared.parameters():
        p.requires_grad_(True)
    train(shared, task, steps=1, lr=1e-2, batch_size=8)
    for g, rows in groups:
        assert not torch.equal(centrals[g], start[g])                         # the step moved the shared tensor ...
        for n in rows.module:                                                 # ... in every layer alike
            layer = layers[n]
            assert layer.tensors[layer.central] is centrals[g]
            assert torch.equal(layer.tensors[layer.central], centrals[g])
            assert not torch.equal(layer.weight.detach(), w_before[n])


def test_mpobert_refit_lowers_the_sharing_error(model):
    _, no_refit = mm.mpobert_model(model, refit_sweeps=0)
    _, refit = mm.mpobert_model(model, refit_sweeps=2)
    # the layer whose central is shared keeps its own, an error of float32 round-off (~1e-7) either way
    assert (refit.rel_error_shared <= no_refit.rel_error_shared + 1e-6).all()
    assert refit.rel_error_shared.mean() < no_refit.rel_error_shared.mean()


def test_refit_auxiliaries_is_least_squares_and_never_raises_the_error():
    torch.manual_seed(0)
    w = torch.randn(32, 48, dtype=torch.float64)
    other = torch.randn(32, 48, dtype=torch.float64)
    chain = mpo_decompose(w, [4, 4, 2], [4, 4, 3])
    c = 1
    chain[c] = mpo_decompose(other, [4, 4, 2], [4, 4, 3])[c]                  # a central that is not w's
    errors = []
    for sweeps in range(4):
        fitted = mm._refit_auxiliaries(w, chain, c, sweeps)
        assert torch.equal(fitted[c], chain[c])
        errors.append(mm._rel_error(w, mpo_contract(fitted)))
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:])) and errors[-1] < errors[0]


def test_mpobert_records_the_saving(model, task):
    tuned, rec = mm.mpobert(model, task, steps=2, lr=1e-3)
    _json(rec)
    assert rec["params_unique"] == sum(p.numel() for p in tuned.parameters()) < rec["params_unshared"]
    assert rec["saving"] == pytest.approx(1 - rec["params_unique"] / rec["params_unshared"])
    assert rec["saving"] > 0
    assert rec["trainable_params"] == rec["params_unique"] and rec["accuracy"] is not None
    assert rec["groups"] == {g: LAYERS for g in rec["groups"]} and len(rec["groups"]) == 6
    _, none = mm.mpobert(model, task, share="none", steps=1)
    assert none["params_unique"] == none["params_unshared"] > rec["params_unique"]


# ----------------------------------------------------------------------------- MPOE


def _experts(m):
    return [x for x in m.modules() if isinstance(x, mm.SharedCentralMPO)]


@pytest.mark.parametrize("routing", ["top1", "soft"])
def test_mpoe_model_starts_as_the_model_with_fewer_parameters_than_full_experts(model, task, routing):
    moe, report = mm.mpoe_model(model, experts=3, routing=routing)
    assert torch.allclose(_hidden(moe, task), _hidden(model, task), atol=1e-5)   # equal experts, gates sum to 1
    assert (report.mpoe_params < report.moe_params).all() and (report.rel_error_in < 1e-5).all()
    for ex in _experts(moe):
        params = list(ex.parameters())
        assert len(params) == 1 + 3 * 2                                       # one central, 3 experts x 2 auxiliaries
        for e in (1, 2):                                                      # experts differ only in auxiliaries:
            for a, b in zip(ex.auxiliary[0], ex.auxiliary[e]):                # own tensors, equal at the start
                assert a is not b and torch.equal(a, b)
    layer = moe.bert.encoder.layer[0]
    assert isinstance(layer.intermediate, mm.MPOEIntermediate) and isinstance(layer.output.dense, mm.MPOEOutput)


def test_mpoe_router_probabilities_and_gates_sum_to_one(model):
    moe, _ = mm.mpoe_model(model, experts=4)
    inter = moe.bert.encoder.layer[0].intermediate
    x = torch.randn(2, 5, HIDDEN)
    probs = inter.router_probs(x)
    assert probs.shape == (2, 5, 4) and torch.allclose(probs.sum(-1), torch.ones(2, 5))
    gates = inter.gates(probs)
    assert torch.allclose(gates.sum(-1), torch.ones(2, 5))
    assert torch.equal((gates > 0).sum(-1), torch.ones(2, 5, dtype=torch.long))   # top1: one expert each
    assert torch.equal(gates.argmax(-1), probs.argmax(-1))
    inter.routing = "soft"
    assert torch.equal(inter.gates(probs), probs)


def test_mpoe_central_gradient_is_scaled(model, task):
    grads = {}
    for s in (1.0, 0.25):
        moe, _ = mm.mpoe_model(model, experts=2, central_grad_scale=s, seed=3)
        for p in moe.parameters():
            p.requires_grad_(True)
        task.loss(moe, torch.arange(8)).backward()                            # eval mode: no dropout
        grads[s] = [(ex.central.grad.clone(), [a.grad.clone() for a in ex.auxiliary[0]]) for ex in _experts(moe)]
        with torch.no_grad():                                                 # stored C / s, used as C
            assert all(torch.allclose(ex.central * s, ex.central_tensor()) for ex in _experts(moe))
    for (c1, a1), (cs, as_) in zip(grads[1.0], grads[0.25]):
        assert c1.abs().max() > 0
        assert torch.allclose(cs, 0.25 * c1, rtol=1e-4, atol=1e-9)
        assert all(torch.allclose(x, y, rtol=1e-4, atol=1e-9) for x, y in zip(a1, as_))   # auxiliaries unchanged
    frozen, _ = mm.mpoe_model(model, experts=2, central_grad_scale=0)
    assert not any(ex.central.requires_grad for ex in _experts(frozen))


def test_mpoe_trains_experts_apart_and_records_the_parameter_counts(model, task):
    tuned, rec = mm.mpoe(model, task, experts=3, steps=6, lr=1e-3)
    _json(rec)
    assert rec["mpoe_ffn_params"] < rec["moe_ffn_params"] and rec["dense_ffn_params"] < rec["mpoe_ffn_params"]
    assert rec["trainable_params"] == rec["params_after"] == sum(p.numel() for p in tuned.parameters())
    assert len(rec["expert_share"]) == LAYERS
    assert all(sum(share) == pytest.approx(1) and len(share) == 3 for share in rec["expert_share"])
    moved = [not torch.equal(a, b) for ex in _experts(tuned) for e in (1, 2)
             for a, b in zip(ex.auxiliary[0], ex.auxiliary[e])]
    assert any(moved)                                                         # the experts are no longer copies
    assert len(rec["losses"]) == 6 and rec["accuracy"] is not None


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_an_error_that_names_the_problem(model, task):
    with pytest.raises(ValueError, match="experts"):
        mm.mpoe(model, task, experts=0)
    with pytest.raises(ValueError, match="n_matrices"):
        mm.opf(model, task, n_matrices=N_TARGETS + 1)
    with pytest.raises(ValueError, match="n_matrices"):
        mm.opf(model, task, n_matrices=0)
    with pytest.raises(ValueError, match="max_bond"):
        mm.mpop(model, task, max_bond=0)
    with pytest.raises(ValueError, match="max_bond"):
        mm.mpobert(model, task, max_bond=0)
    with pytest.raises(ValueError, match="choice"):
        mm.opf(model, task, choice="random")
    with pytest.raises(ValueError, match="every"):
        mm.opf(model, task, choice="dynamic", every=0)
    with pytest.raises(ValueError, match="parts"):
        mm.mpo_model(model, parts=1)
    with pytest.raises(ValueError, match="share"):
        mm.mpobert(model, task, share="all")
    with pytest.raises(ValueError, match="routing"):
        mm.mpoe(model, task, routing="top2")
    with pytest.raises(ValueError, match="central_grad_scale"):
        mm.mpoe(model, task, central_grad_scale=-1)
    with pytest.raises(ValueError, match="BERT-style"):
        mm.mpoe(nn.Sequential(nn.Linear(4, 4)), task)
