"""Notebook 06 in JupyterLab in a real browser: Run All succeeds and the adaptation explorer reacts.

JupyterLab is started from this environment (so its `python3` kernel is the one with `workbench`)
on a temporary folder that holds a copy of the notebook with its outputs cleared; the notebook
writes its tables and figures into a temporary $WORKBENCH_OUTPUT that holds a copy of the
committed data/snapshots/, so nothing in the checkout is modified. Playwright drives Debian's
chromium. Takes a minute or two on an idle machine; deselect with `-m "not browser"`.
Screenshots: tests/artifacts/browser/.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "06_quantize_then_adapt.ipynb"
EXPLORER_CALL = "adaptation_explorer(first_seed"       # the source of the cell that shows the explorer
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"
RUN_ALL_TIMEOUT_S = 15 * 60                          # generous: the CPU may be shared
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SETTINGS = {                                         # JupyterLab user settings for the test's server
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {
        "windowingMode": "none",                     # every cell in the DOM
        "autoStartDefaultKernel": True,              # no "Select Kernel" dialog when the kernel specs load late
    },
}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on the PATH: apt-get install chromium"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_without_outputs(src: Path, dst: Path):
    nb = json.loads(src.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb["metadata"].pop("widgets", None)              # no saved widget state to render stale views from
    dst.write_text(json.dumps(nb, indent=1))


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a copy of the notebook; yields (base url, token); always killed."""
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    root, output, settings = tmp_path / "lab", tmp_path / "output", tmp_path / "lab-settings"
    root.mkdir()
    _copy_without_outputs(ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    shutil.copytree(ROOT / "data" / "snapshots", output / "data" / "snapshots")
    for plugin, values in SETTINGS.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {**os.environ, "WORKBENCH_OUTPUT": str(output), "WORKBENCH_RESULTS": str(tmp_path / "results"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"), "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"), "IPYTHONDIR": str(tmp_path / "ipython"),
           "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", f"--ServerApp.token={token}",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}", "--allow-root",
           f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp_path / 'lab-workspaces'}",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log_path = tmp_path / "lab.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api?token={token}", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"JupyterLab did not answer on {url}/api (exit code {server.poll()}); "
                                       f"its log ends with:\n{tail}") from None
                time.sleep(1)
        yield url, token
    finally:
        os.killpg(server.pid, signal.SIGTERM)        # the server and its kernel: their own session
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _prompts(page) -> list[str]:
    return page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()


def _dialogs(page) -> list[str]:
    """The text of every JupyterLab dialog now open (a dialog blocks every click behind it)."""
    return [t.strip() for t in page.locator(".jp-Dialog").all_inner_texts()]


def _run_all_cells(page, tries: int = 3):
    """Menu Run > Run All Cells, again if no cell got queued (a click can land before the
    notebook's commands are enabled). A dialog in the way fails the test with its text."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(tries):
        try:
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click(timeout=30_000)
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click(timeout=30_000)
        except PlaywrightTimeout:
            open_dialogs = _dialogs(page)
            if not open_dialogs:
                raise
            page.screenshot(path=ARTIFACTS / "dialog.png")
            raise AssertionError(f"a JupyterLab dialog is in the way (screenshot {ARTIFACTS / 'dialog.png'}): "
                                 f"{open_dialogs}") from None
        for _ in range(30):
            if any(re.search(r"[*\d]", t) for t in _prompts(page)):
                return
            time.sleep(1)
        page.keyboard.press("Escape")
    raise AssertionError(f"Run > Run All Cells did not start the notebook: {_prompts(page)}")


def test_notebook_runs_in_jupyterlab_and_the_explorer_reacts(lab):
    from playwright.sync_api import expect, sync_playwright

    url, token = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots = {name: ARTIFACTS / f"{name}.png" for name in ("notebook", "explorer_before", "explorer_after")}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(f"{url}/lab/tree/{NOTEBOOK}?reset&token={token}")
            expect(page.locator(".jp-Toolbar-kernelName")).to_have_text(re.compile("Python 3"), timeout=180_000)
            expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(1, timeout=180_000)

            start = time.monotonic()
            _run_all_cells(page)
            while True:                              # done: every cell numbered, or stopped at an error
                prompts = _prompts(page)
                errors = page.locator(".jp-OutputArea-output", has_text="Traceback")
                if not any("*" in t for t in prompts) and (errors.count() or all(re.search(r"\d", t) for t in prompts)):
                    break
                assert time.monotonic() - start < RUN_ALL_TIMEOUT_S, f"Run All unfinished after {RUN_ALL_TIMEOUT_S} s: {prompts}"
                time.sleep(2)
            print(f"\nRun All Cells took {time.monotonic() - start:.0f} s")
            page.screenshot(path=shots["notebook"])
            assert errors.count() == 0, "\n\n".join(errors.all_inner_texts())
            assert all(re.search(r"\d", t) for t in prompts), f"not every cell ran: {prompts}"

            output = page.locator(".jp-CodeCell", has_text=EXPLORER_CALL).locator(".jp-Cell-outputArea")
            selects = output.locator(".widget-dropdown select")
            expect(selects).to_have_count(3)         # method, bits, budget
            plot = output.locator(".widget-output img")
            expect(plot).to_have_count(1)
            method = selects.first
            before_src, before_text = plot.get_attribute("src"), output.inner_text()
            output.screenshot(path=shots["explorer_before"])

            options = method.locator("option").all_inner_texts()
            old, new = method.evaluate("s => s.options[s.selectedIndex].text"), options[-1]
            assert new != old, f"the method menu offers only {options}"
            method.select_option(label=new)
            expect(plot).not_to_have_attribute("src", before_src, timeout=60_000)
            expect(output).not_to_have_text(before_text)
            page.wait_for_timeout(500)               # let the new image paint before the screenshot
            output.screenshot(path=shots["explorer_after"])
            print(f"method {old!r} -> {new!r}; screenshots:", *shots.values(), sep="\n  ")
        finally:
            browser.close()
