"""One float32 arithmetic on every x86-64 CPU: the kernels the committed numbers were made with.

PyTorch picks its CPU kernels by the processor: ATen's vectorized operations and reductions,
MKL's matrix products and oneDNN's kernels each run with AVX-512 where the CPU has it, else
AVX2. Sixteen-wide lanes add in another order than eight-wide ones, so the same code gives
other last bits on another CPU; GPTQ's error feedback and every training run carry those bits
into visible differences. Every committed number (data/snapshots, data/results, the notebooks'
outputs) was computed with the AVX2 kernels, which every x86-64 CPU of the last decade has;
importing `workbench` selects them, so a recomputation on an AVX-512 machine gives the same
bits. Measured with `tools/numerics_spread.py` (data/results/numerics_spread.csv): the snapshot
samples, made on an AVX2 machine, are reproduced bit for bit on an AMD EPYC with AVX-512 with
these settings; with its own AVX-512 kernels evaluations move by 1.7e-7, training losses by up
to 2e-3 and GPTQ's perplexity by 3%. The thread count matters too, less: with one thread instead
of two, evaluations are the same bits and training losses move by up to 3e-5 (the backward
pass's reductions are split differently), so a machine with more cores than 2 agrees with the
committed numbers within workbench.reproducibility's tolerances, not bit for bit.

`WORKBENCH_NUMERICS=native` keeps the machine's own kernels (no faster on the AMD EPYC above:
perplexity 396 tokens/s against 401 with AVX2, `benchmarks/bench_foundation.py --repeats 3`);
committed numbers then agree only within the tolerances of
`workbench.reproducibility`. A variable the user has set (e.g. ATEN_CPU_CAPABILITY) is never
overridden. The selection must happen before torch runs its first operation: import workbench
first (a warning says when that was too late).
"""

from __future__ import annotations

import os
import sys
import warnings

PINNED = {                        # environment read once by each library, before its first kernel
    "ATEN_CPU_CAPABILITY": "avx2",      # ATen's vectorized kernels (elementwise, reductions, softmax)
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # MKL's GEMM (every nn.Linear on the CPU)
    "ONEDNN_MAX_CPU_ISA": "AVX2",       # oneDNN (mkldnn) kernels
}


def pin() -> dict[str, str]:
    """Select the AVX2 kernels (unless WORKBENCH_NUMERICS=native); return the settings in force.

    Sets each variable of PINNED that the user has not set. When torch has already run an
    operation with other kernels, warns: results then differ from the committed ones in the
    last bits (and, for GPTQ and training, by more)."""
    if os.environ.get("WORKBENCH_NUMERICS", "avx2").lower() == "native":
        return {}
    for key, value in PINNED.items():
        os.environ.setdefault(key, value)
    if "torch" in sys.modules:                      # imported before us: has it dispatched already?
        capability = sys.modules["torch"].backends.cpu.get_cpu_capability()
        wanted = os.environ["ATEN_CPU_CAPABILITY"].upper()
        if capability != wanted and capability.startswith("AVX512"):   # too late: chosen at first dispatch
            warnings.warn(f"torch already runs its {capability} kernels: import workbench before running any "
                          "torch code (or set ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2), else "
                          "results differ from the committed ones in the last bits", stacklevel=3)
    return {key: os.environ[key] for key in PINNED}


def in_force() -> dict[str, str]:
    """The kernel selection torch uses now: its ATen capability and the variables of PINNED."""
    import torch

    return {"aten": torch.backends.cpu.get_cpu_capability(), **{k: os.environ.get(k, "") for k in PINNED}}
