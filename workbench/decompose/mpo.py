"""Matrix product operator (MPO) decomposition of a weight matrix: the format of MPOP (Gao, Liu et
al., ACL 2021), MPOBERT, MPOE and OPF from RUCAIBox (gpt-fast style, flat and readable).

    from workbench.decompose.mpo import factorize, mpo_decompose, mpo_contract, MPOLinear
    out_f, in_f = factorize(576, 3), factorize(1536, 3)       # [8, 9, 8], [12, 16, 8]
    tensors = mpo_decompose(W, out_f, in_f, max_bond=64)      # T_k [d_k, o_k, i_k, d_{k+1}]
    W_hat = mpo_contract(tensors)                             # [576, 1536]
    table = truncation_table(W, out_f, in_f, [8, 16, 32, 64]) # max_bond, params, compression, rel_error
    layer = MPOLinear.from_linear(linear, parts=3, max_bond=64).freeze_central()  # MPOP: train auxiliaries
    linear = layer.to_linear()                                # OPF: back to a dense nn.Linear

The format. Factor out = o_0 o_1 ... o_{n-1} and in = i_0 i_1 ... i_{n-1}. A row index r of W [out, in]
is read as digits (a_0, ..., a_{n-1}) in row-major order (a_0 most significant, as W.reshape(o_0, ...,
o_{n-1}, i_0, ..., i_{n-1}) reads it), a column index likewise as (b_0, ..., b_{n-1}); after the
permutation to (o_0, i_0, o_1, i_1, ...) the 2n-order tensor is written as a chain of n local tensors
    W[r, c] = T_0[0, a_0, b_0, :] @ T_1[:, a_1, b_1, :] @ ... @ T_{n-1}[:, a_{n-1}, b_{n-1}, 0]
with T_k [d_k, o_k, i_k, d_{k+1}] and d_0 = d_n = 1. Indices are 0-based here: n tensors, n + 1 bonds
[1, d_1, ..., d_{n-1}, 1] (what `bond_dims` returns). The full bonds d_k = min(prod_{j<k} o_j i_j,
prod_{j>=k} o_j i_j) reproduce W exactly; capping every bond at `max_bond` compresses. With one bond
everywhere W_hat is a Kronecker product T_0[0,:,:,0] (x) T_1[0,:,:,0] (x) ... (x) T_{n-1}[0,:,:,0].

The decomposition is the tensor-train SVD (sequential SVDs, Oseledets 2011) in mixed-canonical form
about the central tensor c (the one with the most parameters, known in advance because the bonds are
always min(full, max_bond)): tensors left of c come from left-to-right SVDs and keep left singular
vectors (T_k as [d_k o_k i_k, d_{k+1}] has orthonormal columns), tensors right of c from right-to-left
SVDs and keep right singular vectors (T_k as [d_k, o_k i_k d_{k+1}] has orthonormal rows), and T_c keeps
what is left, so ||T_c||_F = ||W_hat||_F: the auxiliary tensors are orthonormal bases and the central
tensor carries the whole spectrum. (RUCAIBox's code spreads the singular values over the bonds with a
Vidal-style gauge instead; W_hat is the same function of the truncation either way, only which tensor
carries the scale differs, and with it the dynamics of training the auxiliaries alone.) Each bond's
truncation drops the smallest singular values of one unfolding, the dropped parts are orthogonal, so
||W - W_hat||_F^2 is exactly the sum of the dropped squared singular values, within sqrt(n - 1) of the
best MPO with those bonds. SVDs run in float64 on the weight's device; results come back in its dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------- factors

def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _mountain(factors: list[int]) -> list[int]:
    """Arrange factors so the largest sits at index len // 2 and they fall off towards both ends
    (the next largest left of the peak, then right of it, then two left, ...)."""
    n = len(factors)
    peak = n // 2
    positions = sorted(range(n), key=lambda p: (abs(p - peak), p))     # peak, peak-1, peak+1, peak-2, ...
    arranged = [0] * n
    for p, f in zip(positions, sorted(factors, reverse=True)):
        arranged[p] = f
    return arranged


def factorize(n: int, parts: int) -> list[int]:
    """Split n into `parts` positive integers whose product is n, as balanced as possible: among all
    such factorizations the one with the smallest spread of log-factors (sum of squared logs; ties go to
    the smaller largest factor), e.g. 768 -> {8, 8, 12}, 576 -> {8, 8, 9}, 1536 -> {8, 12, 16}. The
    factors are ordered with the largest at index parts // 2 and decreasing towards both ends (768 ->
    [8, 12, 8], 1536 -> [12, 16, 8]), so the middle MPO tensor gets the largest physical legs and
    becomes the central one. When n has fewer prime factors than `parts` the split is padded with 1s:
    a prime p gives [1, p, 1] for 3 parts, a site with factor 1 has a size-1 leg and the chain is
    effectively shorter (still exact); n = 1 gives all ones. Raises ValueError for n < 1 or parts < 1."""
    for name, value in (("n", n), ("parts", parts)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"factorize: {name} must be an int, got {value!r}")
    if n < 1:
        raise ValueError(f"factorize: n must be a positive integer (a dimension), got {n}")
    if parts < 1:
        raise ValueError(f"factorize: parts must be >= 1 (the number of MPO tensors), got {parts}")
    divisors = _divisors(n)
    best, best_key = None, None

    def search(rest: int, k: int, low: int, chosen: list[int]) -> None:
        nonlocal best, best_key
        if k == 1:                                            # the last factor is what is left
            if rest >= low:
                factors = chosen + [rest]
                key = (round(sum(math.log(f) ** 2 for f in factors), 9), max(factors))
                if best_key is None or key < best_key:
                    best, best_key = factors, key
            return
        for d in divisors:                                    # non-decreasing factors: each multiset once
            if d < low or rest % d:
                continue
            if d ** k > rest:                                 # the k - 1 factors after d would be < d
                break
            search(rest // d, k - 1, d, chosen + [d])

    search(n, parts, 1, [])
    return _mountain(best)


# ------------------------------------------------------------------------------------- validation

def _check_factors(w: torch.Tensor, out_factors: Sequence[int], in_factors: Sequence[int]) -> tuple[list, list]:
    if w.dim() != 2:
        raise ValueError(f"mpo_decompose expects a 2-D weight matrix [out, in], got shape {tuple(w.shape)}; "
                         f"pass a Linear's weight, or reshape a vector to [1, n]")
    out_factors, in_factors = list(out_factors), list(in_factors)
    if len(out_factors) != len(in_factors):
        raise ValueError(f"out_factors {out_factors} and in_factors {in_factors} have different lengths "
                         f"({len(out_factors)} vs {len(in_factors)}): every MPO tensor takes one factor of "
                         f"each, so pass the same number (pad with 1s, or use factorize(dim, parts) for both)")
    if len(out_factors) < 2:
        raise ValueError(f"an MPO needs at least 2 tensors, got {len(out_factors)} factor(s); pass >= 2 "
                         f"factors per side (factorize(dim, 3) gives 3)")
    for side, factors in (("out_factors", out_factors), ("in_factors", in_factors)):
        if any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in factors):
            raise ValueError(f"{side} must be positive integers, got {factors}")
    for side, factors, dim, what in (("out_factors", out_factors, w.shape[0], "rows (out features)"),
                                     ("in_factors", in_factors, w.shape[1], "columns (in features)")):
        if math.prod(factors) != dim:
            raise ValueError(f"{side} {factors} multiply to {math.prod(factors)}, but the weight has {dim} "
                             f"{what}; pass factors whose product is {dim}, e.g. "
                             f"factorize({dim}, {len(factors)}) = {factorize(dim, len(factors))}")
    return out_factors, in_factors


def _check_chain(tensors: Sequence[torch.Tensor]) -> None:
    if len(tensors) < 2:
        raise ValueError(f"an MPO is a chain of at least 2 local tensors, got {len(tensors)}")
    for k, t in enumerate(tensors):
        if t.dim() != 4:
            raise ValueError(f"MPO tensor {k} must be 4-D [d_k, o_k, i_k, d_k+1], got shape {tuple(t.shape)}")
    if tensors[0].shape[0] != 1 or tensors[-1].shape[3] != 1:
        raise ValueError(f"the chain's outer bonds must be 1, got {tensors[0].shape[0]} (first tensor's left) "
                         f"and {tensors[-1].shape[3]} (last tensor's right)")
    for k in range(len(tensors) - 1):
        if tensors[k].shape[3] != tensors[k + 1].shape[0]:
            raise ValueError(f"bond mismatch between MPO tensors {k} and {k + 1}: right bond "
                             f"{tensors[k].shape[3]} vs left bond {tensors[k + 1].shape[0]}")


def _check_bond(max_bond: int | None) -> None:
    if max_bond is not None and (isinstance(max_bond, bool) or not isinstance(max_bond, int) or max_bond < 1):
        raise ValueError(f"max_bond must be a positive int or None (no truncation), got {max_bond!r}")


# ----------------------------------------------------------------------------------- bond algebra

def full_bond_dims(out_factors: Sequence[int], in_factors: Sequence[int]) -> list[int]:
    """The untruncated bonds [1, d_1, ..., d_{n-1}, 1] of an MPO with these factors: d_k = min(prod of
    o_j i_j over the tensors left of bond k, the same product over those right of it), the rank an
    unfolding of a generic matrix has there. An MPO with these bonds represents any W exactly."""
    sites = [o * i for o, i in zip(out_factors, in_factors)]
    return [min(math.prod(sites[:k]), math.prod(sites[k:])) for k in range(len(sites) + 1)]


def _central_from_shapes(shapes: Sequence[Sequence[int]]) -> int:
    middle = (len(shapes) - 1) / 2
    return max(range(len(shapes)), key=lambda k: (math.prod(shapes[k]), -abs(k - middle), -k))


def bond_dims(tensors: Sequence[torch.Tensor]) -> list[int]:
    """The bonds [1, d_1, ..., d_{n-1}, 1] of a chain of MPO tensors T_k [d_k, o_k, i_k, d_{k+1}]
    (n + 1 numbers for n tensors, the outer two always 1), read from the tensors' shapes."""
    _check_chain(tensors)
    return [t.shape[0] for t in tensors] + [tensors[-1].shape[3]]


def central_index(tensors: Sequence[torch.Tensor]) -> int:
    """The index of the central tensor: the one with the most parameters (d_k o_k i_k d_{k+1}); ties
    go to the tensor nearest the middle of the chain, then to the lower index. The others are the
    auxiliary tensors, which MPOP fine-tunes while the central tensor stays frozen."""
    _check_chain(tensors)
    return _central_from_shapes([tuple(t.shape) for t in tensors])


def mpo_params(tensors: Sequence[torch.Tensor]) -> int:
    """The number of parameters of the MPO: the sum of its local tensors' sizes (the bias, if a layer
    has one, is not counted). Divide by out * in for the compression ratio against the dense W."""
    return sum(t.numel() for t in tensors)


# ------------------------------------------------------------------------- decompose and contract

def mpo_decompose(w: torch.Tensor, out_factors: Sequence[int], in_factors: Sequence[int],
                  max_bond: int | None = None) -> list[torch.Tensor]:
    """Decompose W [out, in] into n local tensors T_k [d_k, o_k, i_k, d_{k+1}] (out = prod out_factors,
    in = prod in_factors, n >= 2 factors on each side) by the tensor-train SVD in mixed-canonical form
    (see the module docstring): left of the central tensor left-to-right SVDs keep left singular
    vectors, right of it right-to-left SVDs keep right singular vectors, the central tensor keeps the
    rest. Every bond is truncated to d_k = min(full d_k, max_bond) (max_bond=None: no truncation, and
    mpo_contract gives W back up to float error). The SVDs run in float64 on w's device; the tensors are
    returned in w's dtype. Raises ValueError for a non-2-D w, factor lists of different lengths or
    fewer than 2 factors, factors that do not multiply to the dimensions, or a bad max_bond."""
    out_factors, in_factors = _check_factors(w, out_factors, in_factors)
    _check_bond(max_bond)
    n = len(out_factors)
    sites = [o * i for o, i in zip(out_factors, in_factors)]               # o_k i_k: one physical leg per tensor
    cap = max_bond if max_bond is not None else math.inf
    bonds = [min(d, cap) for d in full_bond_dims(out_factors, in_factors)]  # [1, d_1, ..., d_{n-1}, 1]
    shapes = [(bonds[k], out_factors[k], in_factors[k], bonds[k + 1]) for k in range(n)]
    c = _central_from_shapes(shapes)

    t = w.detach().to(torch.float64).reshape(*out_factors, *in_factors)     # [o_0..o_{n-1}, i_0..i_{n-1}]
    perm = [j for k in range(n) for j in (k, n + k)]                        # (o_0, i_0, o_1, i_1, ...)
    t = t.permute(*perm).contiguous()                                       # [o_0, i_0, ..., o_{n-1}, i_{n-1}]
    rest = t.reshape(math.prod(sites))                                      # [prod o_k i_k], row-major over sites
    tensors = [None] * n

    # left of the centre: peel T_0, T_1, ..., T_{c-1} off the front; rest is [d_k * remaining sites]
    for k in range(c):
        mat = rest.reshape(bonds[k] * sites[k], -1)                         # [d_k o_k i_k, prod_{j>k} o_j i_j]
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)               # [rows, r], [r], [r, cols]
        r = bonds[k + 1]                                                    # = min(rows, cols, max_bond)
        tensors[k] = u[:, :r].reshape(shapes[k])                            # [d_k, o_k, i_k, d_{k+1}], left isometry
        rest = s[:r, None] * vh[:r]                                         # [d_{k+1}, prod_{j>k} o_j i_j]

    # right of the centre: peel T_{n-1}, ..., T_{c+1} off the back; rest is [d_c * sites c..k]
    for k in range(n - 1, c, -1):
        mat = rest.reshape(-1, sites[k] * bonds[k + 1])                     # [d_c prod_{c<=j<k} o_j i_j, o_k i_k d_{k+1}]
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)               # [rows, r], [r], [r, cols]
        r = bonds[k]                                                        # = min(rows, cols, max_bond)
        tensors[k] = vh[:r].reshape(shapes[k])                              # [d_k, o_k, i_k, d_{k+1}], right isometry
        rest = u[:, :r] * s[:r]                                             # [d_c prod_{c<=j<k} o_j i_j, d_k]

    tensors[c] = rest.reshape(shapes[c])                                    # [d_c, o_c, i_c, d_{c+1}]: the norm
    return [t.to(w.dtype) for t in tensors]


def mpo_contract(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Contract a chain of MPO tensors T_k [d_k, o_k, i_k, d_{k+1}] back to the dense matrix
    W_hat [prod o_k, prod i_k]. Each step merges the next tensor's out leg into the rows and its in leg
    into the columns (row-major, first tensor most significant), which is the inverse of the reshape
    and permutation in mpo_decompose. Differentiable: gradients reach every tensor."""
    _check_chain(tensors)
    acc = tensors[0][0]                                                     # [o_0, i_0, d_1]
    for t in tensors[1:]:
        rows, cols = acc.shape[0] * t.shape[1], acc.shape[1] * t.shape[2]
        acc = torch.einsum("abd,doie->aobie", acc, t)                       # [rows, o_k, cols, i_k, d_{k+1}]
        acc = acc.reshape(rows, cols, t.shape[3])                           # [rows * o_k, cols * i_k, d_{k+1}]
    return acc[:, :, 0]                                                     # [out, in] (last bond is 1)


def truncation_table(w: torch.Tensor, out_factors: Sequence[int], in_factors: Sequence[int],
                     bonds: Sequence[int]) -> pd.DataFrame:
    """Decompose W once per entry of `bonds` (each a max_bond) and tabulate the trade-off: one row per
    bond with columns max_bond, params (mpo_params), compression (params / w.numel(); above 1 means the
    MPO is larger than W, as at full bond) and rel_error ||W - W_hat||_F / ||W||_F (computed in float64
    from the tensors as returned, so a low-precision dtype's rounding shows in it)."""
    if len(bonds) == 0:
        raise ValueError("truncation_table needs at least one bond (a list of max_bond values)")
    w64 = w.detach().to(torch.float64)                                      # [out, in]
    norm = torch.linalg.norm(w64)
    rows = []
    for b in bonds:
        tensors = mpo_decompose(w, out_factors, in_factors, max_bond=b)
        w_hat = mpo_contract([t.to(torch.float64) for t in tensors])        # [out, in]
        params = mpo_params(tensors)
        err = (torch.linalg.norm(w64 - w_hat) / norm).item() if norm > 0 else 0.0
        rows.append(dict(max_bond=b, params=params, compression=params / w.numel(), rel_error=err))
    return pd.DataFrame(rows, columns=["max_bond", "params", "compression", "rel_error"])


# ------------------------------------------------------------------------------------- the layer

class MPOLinear(nn.Module):
    """A linear layer whose weight is an MPO: the local tensors T_k [d_k, o_k, i_k, d_{k+1}] are the
    nn.Parameters of `self.tensors` (an nn.ParameterList), the bias (or None) a trainable parameter.
    forward contracts the tensors to the dense W_hat [out, in] first and then calls F.linear: the
    simplest correct choice (one code path with mpo_contract, gradients reach every tensor), at the
    cost of rebuilding W_hat each call; contracting x through the chain directly would be cheaper only
    at small bonds. MPOP trains only the auxiliary tensors: `freeze_central()` then an optimizer over
    `auxiliary_parameters()` (or over all parameters: a frozen tensor gets no gradient)."""

    def __init__(self, tensors: Sequence[torch.Tensor], bias: torch.Tensor | None = None):
        super().__init__()
        _check_chain(tensors)
        self.tensors = nn.ParameterList([nn.Parameter(t.detach().clone()) for t in tensors])  # T_k [d_k, o_k, i_k, d_k+1]
        self.out_factors = [t.shape[1] for t in tensors]     # o_k: out_features = prod(out_factors)
        self.in_factors = [t.shape[2] for t in tensors]      # i_k: in_features = prod(in_factors)
        self.out_features = math.prod(self.out_factors)      # rows of W_hat
        self.in_features = math.prod(self.in_factors)        # columns of W_hat
        if bias is not None and bias.shape != (self.out_features,):
            raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())   # [out] or None

    @classmethod
    def from_linear(cls, linear: nn.Linear, parts: int = 3, *, out_factors: Sequence[int] | None = None,
                    in_factors: Sequence[int] | None = None, max_bond: int | None = None) -> MPOLinear:
        """Decompose `linear.weight` [out, in] into an MPOLinear (same device and dtype, bias copied).
        The factors are factorize(out, parts) and factorize(in, parts) unless given; giving only one
        side factorizes the other into as many parts. max_bond=None keeps the full bonds (exact)."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"MPOLinear.from_linear takes an nn.Linear, got {type(linear).__name__}")
        if out_factors is None and in_factors is None:
            out_factors, in_factors = factorize(linear.out_features, parts), factorize(linear.in_features, parts)
        elif out_factors is None:
            out_factors = factorize(linear.out_features, len(in_factors))
        elif in_factors is None:
            in_factors = factorize(linear.in_features, len(out_factors))
        with torch.no_grad():
            tensors = mpo_decompose(linear.weight, out_factors, in_factors, max_bond=max_bond)
        return cls(tensors, linear.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight W_hat [out, in] contracted from the tensors (not detached: gradients flow;
        wrap in torch.no_grad() to inspect it)."""
        return mpo_contract(list(self.tensors))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight                                                     # [out, in]
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))  # [..., out]

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear with the contracted weight and a copy of the bias (what OPF does once
        training is over): same shapes, device and dtype, and the same outputs."""
        w = self.weight.detach()                                            # [out, in]
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=w.device, dtype=w.dtype)
        with torch.no_grad():
            linear.weight.copy_(w)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    @property
    def bonds(self) -> list[int]:
        """The bonds [1, d_1, ..., d_{n-1}, 1] of the chain."""
        return bond_dims(list(self.tensors))

    @property
    def central(self) -> int:
        """The index of the central tensor (the one with the most parameters) in self.tensors."""
        return central_index(list(self.tensors))

    def freeze_central(self) -> MPOLinear:
        """Stop gradients to the central tensor (requires_grad=False) so training moves only the
        auxiliary tensors (and the bias, unless it is frozen too), as MPOP does. Returns self."""
        self.tensors[self.central].requires_grad_(False)
        return self

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        """The auxiliary tensors: every local tensor but the central one, in chain order (the bias is
        not included). Hand these to the optimizer to train only them."""
        c = self.central
        return [t for k, t in enumerate(self.tensors) if k != c]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"out_factors={self.out_factors}, in_factors={self.in_factors}, bonds={self.bonds}, "
                f"central={self.central}, params={mpo_params(list(self.tensors))}, bias={self.bias is not None}")
