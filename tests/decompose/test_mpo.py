import itertools
import math

import pytest
import torch
from torch import nn

from workbench.decompose.mpo import (MPOLinear, bond_dims, central_index, factorize, full_bond_dims,
                                     mpo_contract, mpo_decompose, mpo_params, truncation_table)


pytestmark = pytest.mark.usefixtures("one_thread")


def _weight(out, cols, seed=0, dtype=torch.float32):
    return torch.randn(out, cols, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rel(a, b):
    return (torch.linalg.norm((a - b).double()) / torch.linalg.norm(b.double())).item()


def _random_chain(out_factors, in_factors, bonds, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bonds[k], o, i, bonds[k + 1], generator=g, dtype=torch.float64)
            for k, (o, i) in enumerate(zip(out_factors, in_factors))]


# ------------------------------------------------------------------------------------- factorize

def test_factorize_known_dims():
    assert factorize(768, 3) == [8, 12, 8]
    assert factorize(576, 3) == [8, 9, 8]
    assert sorted(factorize(1536, 3)) == [8, 12, 16] and factorize(1536, 3)[1] == 16
    assert factorize(576, 4) == [4, 6, 6, 4]
    assert factorize(64, 2) == [8, 8]
    assert factorize(13, 1) == [13]


def test_factorize_product_balance_and_mountain_shape():
    for n in range(1, 241):
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        for parts in (2, 3, 4):
            f = factorize(n, parts)
            assert len(f) == parts and math.prod(f) == n, (n, parts, f)
            # balanced: no factorization of n into `parts` has a smaller spread of log-factors
            spread = sum(math.log(x) ** 2 for x in f)
            best = min(sum(math.log(x) ** 2 for x in c) for c in itertools.product(divisors, repeat=parts)
                       if math.prod(c) == n)
            assert spread <= best + 1e-9, (n, parts, f)
            # largest in the middle, falling off towards both ends
            peak = parts // 2
            assert f[peak] == max(f), (n, parts, f)
            assert all(a <= b for a, b in zip(f[:peak], f[1:peak + 1])), (n, parts, f)
            assert all(a >= b for a, b in zip(f[peak:], f[peak + 1:])), (n, parts, f)


def test_factorize_primes_and_ones_pad_with_ones():
    assert factorize(7, 3) == [1, 7, 1]
    assert factorize(1, 3) == [1, 1, 1]
    assert factorize(6, 4) == [1, 2, 3, 1]


@pytest.mark.parametrize("n, parts, match", [(0, 3, "n must be a positive"), (-4, 2, "n must be a positive"),
                                             (12, 0, "parts must be >= 1"), (12.0, 2, "n must be an int"),
                                             (12, True, "parts must be an int")])
def test_factorize_bad_input(n, parts, match):
    with pytest.raises(ValueError, match=match):
        factorize(n, parts)


# --------------------------------------------------------------------------- exact at full bond

@pytest.mark.parametrize("out, cols, out_factors, in_factors", [
    (576, 1536, None, None),                       # SmolLM2's FFN, 3 tensors [8, 9, 8] x [12, 16, 8]
    (576, 1536, [4, 6, 6, 4], [4, 8, 8, 6]),       # the same, 4 tensors
    (48, 96, [4, 4, 3], [4, 6, 4]),
    (12, 30, [3, 4], [5, 6]),                      # 2 tensors: one SVD
    (30, 12, [2, 3, 5], [3, 2, 2]),                # tall
    (7, 10, [1, 7, 1], [2, 5, 1]),                 # a prime dimension padded with 1s
])
def test_full_bond_contraction_is_exact(out, cols, out_factors, in_factors):
    w = _weight(out, cols)
    out_factors = out_factors or factorize(out, 3)
    in_factors = in_factors or factorize(cols, 3)
    tensors = mpo_decompose(w, out_factors, in_factors)
    assert all(t.dtype == torch.float32 for t in tensors)
    assert [tuple(t.shape[1:3]) for t in tensors] == list(zip(out_factors, in_factors))
    assert bond_dims(tensors) == full_bond_dims(out_factors, in_factors)
    w_hat = mpo_contract(tensors)
    assert w_hat.shape == w.shape
    assert _rel(w_hat, w) < 1e-5
    assert torch.allclose(w_hat, w, atol=1e-5 * w.abs().max().item())


def test_full_bond_dims_formula():
    # sites o_k i_k = 16, 24, 12: bond 1 = min(16, 288), bond 2 = min(384, 12)
    assert full_bond_dims([4, 4, 3], [4, 6, 4]) == [1, 16, 12, 1]
    assert full_bond_dims([4, 6, 6, 4], [4, 8, 8, 6]) == [1, 16, 768, 24, 1]


def test_mixed_canonical_gauge_and_central_tensor():
    w = _weight(576, 1536, dtype=torch.float64)
    tensors = mpo_decompose(w, [4, 6, 6, 4], [4, 8, 8, 6], max_bond=40)
    c = central_index(tensors)
    sizes = [t.numel() for t in tensors]
    assert c == sizes.index(max(sizes)) == 2
    assert bond_dims(tensors) == [1, 16, 40, 24, 1]
    for k, t in enumerate(tensors):
        if k < c:                                  # left isometry: orthonormal columns
            m = t.reshape(-1, t.shape[3])
            assert torch.allclose(m.T @ m, torch.eye(m.shape[1], dtype=m.dtype), atol=1e-10)
        elif k > c:                                # right isometry: orthonormal rows
            m = t.reshape(t.shape[0], -1)
            assert torch.allclose(m @ m.T, torch.eye(m.shape[0], dtype=m.dtype), atol=1e-10)
    # the central tensor carries the whole norm of W_hat
    assert math.isclose(torch.linalg.norm(tensors[c]).item(), torch.linalg.norm(mpo_contract(tensors)).item(),
                        rel_tol=1e-10)
    assert mpo_params(tensors) == sum(sizes) == 16 * 16 + 16 * 48 * 40 + 40 * 48 * 24 + 24 * 24


def test_dtype_is_kept():
    w = _weight(12, 30).to(torch.bfloat16)
    tensors = mpo_decompose(w, [3, 4], [5, 6])
    assert all(t.dtype == torch.bfloat16 for t in tensors)
    assert _rel(mpo_contract(tensors).float(), w.float()) < 2e-2


# ----------------------------------------------------------------------------------- truncation

def test_bond_one_is_a_kronecker_product():
    w = _weight(30, 12)
    tensors = mpo_decompose(w, [2, 3, 5], [3, 2, 2], max_bond=1)
    assert bond_dims(tensors) == [1, 1, 1, 1]
    a, b, c = (t[0, :, :, 0] for t in tensors)
    assert torch.allclose(mpo_contract(tensors), torch.kron(torch.kron(a, b), c), atol=1e-6)
    # and a matrix that *is* a Kronecker product is recovered exactly at bond 1
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64)
    kron = torch.kron(a, b)                                                  # [12, 10]
    assert _rel(mpo_contract(mpo_decompose(kron, [4, 3], [5, 2], max_bond=1)), kron) < 1e-12
    # with the factors the other way round it is not a Kronecker product of that shape
    assert _rel(mpo_contract(mpo_decompose(kron, [3, 4], [2, 5], max_bond=1)), kron) > 0.1


def test_truncation_error_falls_and_params_grow():
    w = _weight(48, 96, seed=1)
    table = truncation_table(w, [4, 4, 3], [4, 6, 4], [1, 2, 4, 8, 12, 16, 32])
    assert list(table.columns) == ["max_bond", "params", "compression", "rel_error"]
    err, params = table["rel_error"].tolist(), table["params"].tolist()
    assert all(a > b for a, b in zip(err[:-1], err[1:-1])), err              # strictly falling up to full bond
    assert all(a < b for a, b in zip(params[:-2], params[1:-1])), params
    assert err[-2] < 1e-6 and err[-1] < 1e-6                                 # 16 is full, 32 changes nothing
    assert params[-1] == params[-2]
    assert table["params"][0] == 4 * 4 + 4 * 6 + 3 * 4                       # bond 1: just the o_k x i_k blocks
    assert (table["compression"] == table["params"] / w.numel()).all()
    assert err[0] > 0.9                                                       # a random matrix is far from rank 1


def test_exact_low_bond_matrix_is_recovered_at_its_bond():
    of, inf = [3, 4, 4], [4, 3, 2]
    w = mpo_contract(_random_chain(of, inf, [1, 3, 3, 1]))                  # [48, 24], bonds (3, 3)
    assert full_bond_dims(of, inf) == [1, 12, 8, 1]
    assert _rel(mpo_contract(mpo_decompose(w, of, inf, max_bond=3)), w) < 1e-10
    assert _rel(mpo_contract(mpo_decompose(w, of, inf, max_bond=2)), w) > 1e-3
    # in float32 the same matrix is recovered to float32 precision
    w32 = w.float()
    assert _rel(mpo_contract(mpo_decompose(w32, of, inf, max_bond=3)), w32) < 1e-5


# ---------------------------------------------------------------------------------- the layer

@pytest.mark.parametrize("in_features, out_features, bias", [(96, 48, True), (30, 12, False), (1536, 576, True)])
def test_mpo_linear_matches_the_dense_layer(in_features, out_features, bias):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=bias)
    layer = MPOLinear.from_linear(linear)
    x = torch.randn(2, 3, in_features)
    with torch.no_grad():
        expected = linear(x)
        assert torch.allclose(layer(x), expected, atol=1e-5)
        dense = layer.to_linear()
        assert isinstance(dense, nn.Linear) and dense.weight.shape == linear.weight.shape
        assert (dense.bias is None) == (not bias)
        assert torch.allclose(dense(x), expected, atol=1e-5)
    assert len(layer.tensors) == 3 and isinstance(layer.tensors, nn.ParameterList)
    assert layer.out_factors == factorize(out_features, 3) and layer.in_factors == factorize(in_features, 3)
    assert all(isinstance(t, nn.Parameter) and t.requires_grad for t in layer.tensors)


def test_mpo_linear_truncated_and_explicit_factors():
    torch.manual_seed(0)
    linear = nn.Linear(96, 48).double()
    layer = MPOLinear.from_linear(linear, out_factors=[4, 4, 3], in_factors=[4, 6, 4], max_bond=8)
    assert layer.bonds == [1, 8, 8, 1] and layer.central == 1
    assert all(t.dtype == torch.float64 for t in layer.tensors) and layer.bias.dtype == torch.float64
    expected = mpo_contract(mpo_decompose(linear.weight.detach(), [4, 4, 3], [4, 6, 4], max_bond=8))
    assert torch.allclose(layer.weight, expected, atol=1e-12)
    assert _rel(layer.weight.detach(), linear.weight.detach()) > 0.1         # truncated: not the dense weight
    assert "out_factors=[4, 4, 3]" in repr(layer) and "bonds=[1, 8, 8, 1]" in repr(layer)
    # one side given: the other is factorized into as many parts
    four = MPOLinear.from_linear(nn.Linear(96, 48), in_factors=[2, 4, 4, 3])
    assert len(four.tensors) == 4 and four.out_factors == factorize(48, 4)
    assert four.to_linear().weight.shape == (48, 96)


def test_freeze_central_trains_only_the_auxiliaries():
    torch.manual_seed(0)
    layer = MPOLinear.from_linear(nn.Linear(96, 48), max_bond=8).freeze_central()
    c = layer.central
    aux = layer.auxiliary_parameters()
    assert len(aux) == 2 and all(a is not layer.tensors[c] for a in aux)
    assert not layer.tensors[c].requires_grad and all(a.requires_grad for a in aux)
    before = [t.detach().clone() for t in layer.tensors]
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=0.1)
    loss = layer(torch.randn(4, 96)).pow(2).mean()
    loss.backward()
    assert layer.tensors[c].grad is None
    opt.step()
    assert torch.equal(layer.tensors[c], before[c])
    for k, t in enumerate(layer.tensors):
        if k != c:
            assert not torch.equal(t, before[k]), k


# ---------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("shape, of, inf, max_bond, match", [
    ((12, 30), [3, 5], [5, 6], None, r"out_factors \[3, 5\] multiply to 15, but the weight has 12 rows"),
    ((12, 30), [3, 4], [5, 7], None, r"in_factors \[5, 7\] multiply to 35.*30 columns"),
    ((12, 30), [3, 4], [5, 3, 2], None, "different lengths"),
    ((12, 30), [12], [30], None, "at least 2 tensors"),
    ((12, 30), [3, 4], [5, 6], 0, "max_bond must be a positive int"),
    ((12, 30), [3, 4], [5.0, 6], None, "in_factors must be positive integers"),
    ((30,), [5, 6], [1, 1], None, "2-D weight matrix"),
    ((2, 3, 5), [2, 3], [5, 1], None, "2-D weight matrix"),
])
def test_bad_input_names_the_problem(shape, of, inf, max_bond, match):
    with pytest.raises(ValueError, match=match):
        mpo_decompose(torch.zeros(shape), of, inf, max_bond=max_bond)


def test_bad_chains_and_layers():
    chain = _random_chain([2, 3], [3, 2], [1, 4, 1])
    with pytest.raises(ValueError, match="bond mismatch between MPO tensors 0 and 1"):
        mpo_contract([chain[0], chain[1][:3]])
    with pytest.raises(ValueError, match="outer bonds must be 1"):
        mpo_contract([torch.zeros(2, 2, 3, 4), chain[1]])
    with pytest.raises(ValueError, match="must be 4-D"):
        mpo_contract([chain[0], chain[1][0]])
    with pytest.raises(ValueError, match="at least 2 local tensors"):
        bond_dims(chain[:1])
    with pytest.raises(ValueError, match="takes an nn.Linear"):
        MPOLinear.from_linear(nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="bias must have shape"):
        MPOLinear(chain, torch.zeros(5))
