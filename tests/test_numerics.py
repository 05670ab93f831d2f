"""workbench.numerics: importing workbench selects the AVX2 kernels, respects the user's own
settings and WORKBENCH_NUMERICS=native, and warns when torch had already chosen others.
Each case runs in a fresh interpreter, since the kernels are chosen once per process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

FLAGS = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
PINNED = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "WORKBENCH_NUMERICS")


def _python(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in PINNED}
    return subprocess.run([sys.executable, "-W", "always", "-c", code], env={**clean, **env},
                          capture_output=True, text=True, check=True)


SHOW = "import workbench, torch, os; print(torch.backends.cpu.get_cpu_capability(), os.environ.get('MKL_ENABLE_INSTRUCTIONS'))"


@pytest.mark.skipif(" avx2 " not in FLAGS, reason="this CPU has no AVX2 kernels to select")
def test_importing_workbench_selects_the_avx2_kernels():
    assert _python(SHOW).stdout.split() == ["AVX2", "AVX2"]


@pytest.mark.skipif(" avx512f " not in FLAGS, reason="needs a CPU with AVX-512 to tell the kernels apart")
def test_native_and_the_users_own_choice_are_respected():
    assert _python(SHOW, WORKBENCH_NUMERICS="native").stdout.split() == ["AVX512", "None"]
    assert _python(SHOW, ATEN_CPU_CAPABILITY="default").stdout.split() == ["DEFAULT", "AVX2"]


@pytest.mark.skipif(" avx512f " not in FLAGS, reason="needs a CPU with AVX-512 to tell the kernels apart")
def test_a_warning_when_torch_ran_before_workbench_was_imported():
    late = _python("import torch; torch.ones(3).sum(); import workbench")
    assert "torch already runs its AVX512 kernels: import workbench before" in late.stderr
    assert "already runs" not in _python("import torch; import workbench; torch.ones(3).sum()").stderr
