"""Copy the markdown cells of a freshly built notebook into its executed copy, keeping the outputs.

    python tools/sync_markdown.py notebooks/02_outliers.ipynb   # after editing only narrative in tools/build_02_*.py

Refuses (exit 1) when any code cell differs: then the notebook must be executed again.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

target = Path(sys.argv[1])
builder = next(Path(__file__).parent.glob(f"build_{target.stem}.py"))
executed = nbformat.read(target, 4)
with tempfile.TemporaryDirectory() as tmp:
    backup = Path(tmp) / target.name
    backup.write_bytes(target.read_bytes())
    subprocess.run([sys.executable, str(builder)], check=True)
    fresh = nbformat.read(target, 4)
    target.write_bytes(backup.read_bytes())
if len(fresh.cells) != len(executed.cells) or any(
        a.cell_type != b.cell_type or (a.cell_type == "code" and a.source != b.source)
        for a, b in zip(fresh.cells, executed.cells)):
    sys.exit(f"{target}: code cells changed; execute the notebook again")
for a, b in zip(fresh.cells, executed.cells):
    if a.cell_type == "markdown":
        b.source = a.source
nbformat.write(executed, target)
print(f"{target}: markdown updated, outputs kept")
