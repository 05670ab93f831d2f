"""How far the committed snapshots move when recomputed with another CPU's arithmetic.

Reruns tests/test_snapshots.py (a sample of every snapshot, recomputed from scratch) once per
setting below: the AVX2 kernels that `workbench.numerics` selects by default, the same with one
thread instead of two, and this machine's own kernels (`WORKBENCH_NUMERICS=native`: AVX-512
where the CPU has it), which is what another CPU does to a library that does not pin them.
Every check of workbench/reproducibility.py logs what it measured; this script collects those
logs into data/results/numerics_spread.csv (one row per setting and kind of check: the largest
relative difference from the committed number, or the most items that flipped), the evidence
behind numerics.py's pinning and reproducibility.py's tolerances.

    python tools/numerics_spread.py [LOG_DIR]   # about 4 minutes per setting on 2 cores
                                                # LOG_DIR keeps every check's record (JSON lines)
    python tools/numerics_spread.py --gptq      # notebook 01's GPTQ act-order W3 row per setting

`--gptq` writes data/results/numerics_spread_gptq.csv instead: the perplexity of notebook 01's
GPTQ act-order W3 row (same model, windows and calibration) recomputed under each setting with
an empty results cache, and its relative difference from the default. Notebook 01 shows it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BASE_ENV = dict(os.environ)                   # before `import workbench` pins this process's kernels
SETTINGS = {                                  # name -> environment
    "AVX2 (default)": {},
    "AVX2, one thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "native kernels": {"WORKBENCH_NUMERICS": "native"},
}
KERNELS = "import workbench, torch; print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())"


def kernels(env: dict) -> str:
    """The ATen kernels and thread count a workbench process uses under `env`."""
    return subprocess.run([sys.executable, "-c", KERNELS], cwd=ROOT, env={**BASE_ENV, **env},
                          capture_output=True, text=True, check=True).stdout.strip()


def run(name: str, env: dict, log: Path) -> int:
    """Run the snapshot tests under `env`, logging every reproducibility check to `log`."""
    full = {**BASE_ENV, **env, "WORKBENCH_REPRO_LOG": str(log)}
    print(f"== {name}: {env or 'this CPU as it is'}", flush=True)
    return subprocess.run([sys.executable, "-m", "pytest", "tests/test_snapshots.py", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, env=full).returncode


def summarize(logs: dict[str, Path]) -> pd.DataFrame:
    """One row per setting and kind of check: how many checks, the largest spread seen."""
    rows = []
    for name, log in logs.items():
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        for r in records:
            rows.append({"setting": name, "kind": r["kind"], "what": r["what"],
                         "max_rel": r.get("max_rel"), "flips": r.get("flips", r.get("items")), "n": r.get("n")})
    df = pd.DataFrame(rows)
    return (df.groupby(["setting", "kind"], sort=False)
              .agg(checks=("what", "size"), max_rel=("max_rel", "max"), max_flips=("flips", "max"))
              .reset_index())


GPTQ_ROW = """
from workbench.evaluate import perplexity_sweep
from workbench.models import load_model
from workbench.quant import QuantConfig
model, tokenizer, record = load_model("smollm2-135m")           # notebook 01's parameters
spec = QuantConfig(bits=3, group_size=128, method="gptq", act_order=True)
df = perplexity_sweep(model, tokenizer, record, {"GPTQ act-order W3": spec}, corpus="lee", seqlen=512,
                      max_windows=4, calibration={"corpus": "lee", "n_samples": 8, "seqlen": 256, "seed": 0},
                      progress=False)
print(repr(float(df.perplexity.iloc[0])))
"""


def gptq_rows() -> pd.DataFrame:
    """Notebook 01's GPTQ act-order W3 perplexity under each setting (no results cache)."""
    rows = []
    for name, env in SETTINGS.items():
        print(f"== {name}: {env or 'this CPU as it is'}", flush=True)
        out = subprocess.run([sys.executable, "-c", GPTQ_ROW], cwd=ROOT, capture_output=True, text=True, check=True,
                             env={**BASE_ENV, **env, "WORKBENCH_NO_CACHE": "1", "TQDM_DISABLE": "1"})
        rows.append({"setting": name, "perplexity": float(out.stdout.strip().splitlines()[-1])})
    df = pd.DataFrame(rows)
    df["rel_to_default"] = df.perplexity / df.perplexity.iloc[0] - 1
    df["kernels, threads"] = [kernels(env) for env in SETTINGS.values()]
    return df


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from workbench.report import save_table

    if "--gptq" in sys.argv:
        table = gptq_rows()
        save_table(table, "numerics_spread_gptq")
        print(table.to_string(index=False))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = sys.argv[1] if len(sys.argv) > 1 else tmp
        Path(tmp).mkdir(parents=True, exist_ok=True)
        logs = {name: Path(tmp) / f"{i}.jsonl" for i, name in enumerate(SETTINGS)}
        codes = {name: run(name, env, logs[name]) for name, env in SETTINGS.items()}
        table = summarize(logs)
    table["tests_passed"] = table.setting.map(lambda s: codes[s] == 0)
    table["kernels, threads"] = table.setting.map({name: kernels(env) for name, env in SETTINGS.items()})
    out = ROOT / "data" / "results" / "numerics_spread.csv"
    save_table(table, "numerics_spread")
    print(table.to_string(index=False))
    print(f"written: {out.relative_to(ROOT)}")
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
