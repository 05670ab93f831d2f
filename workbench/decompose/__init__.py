"""Weight decompositions: a weight matrix rewritten as a product of smaller factors.

    from workbench.decompose import factorize, mpo_decompose, mpo_contract, MPOLinear
    tensors = mpo_decompose(W, factorize(576, 3), factorize(1536, 3), max_bond=64)   # T_k [d_k, o_k, i_k, d_k+1]
    layer = MPOLinear.from_linear(linear, parts=3, max_bond=64).freeze_central()       # MPOP

    mpo.py   the matrix product operator (tensor-train) format of MPOP / MPOBERT / MPOE / OPF:
             factorize, mpo_decompose, mpo_contract, bond_dims, full_bond_dims, central_index,
             mpo_params, truncation_table, MPOLinear
"""

from workbench.decompose.mpo import (MPOLinear, bond_dims, central_index, factorize, full_bond_dims,
                                     mpo_contract, mpo_decompose, mpo_params, truncation_table)

__all__ = ["MPOLinear", "bond_dims", "central_index", "factorize", "full_bond_dims", "mpo_contract", "mpo_decompose",
           "mpo_params", "truncation_table"]
