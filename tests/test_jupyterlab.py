"""A notebook opened and run in a real JupyterLab, in headless Chromium, as a person would.

Slower than the rest and needing Debian's chromium and the ``browser`` extra (playwright), it is
its own target: ``.venv/bin/python -m pytest -m browser``.  The server binds to 127.0.0.1, works
on a copy of the notebooks (JupyterLab autosaves, and the committed sources must not change) and
runs the notebook under the smoke profile; the screenshot goes to ``build/jupyterlab/``.
"""
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "02_feature_shift"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on loopback over a copy of notebooks/, opening .py files as notebooks."""
    work = tmp_path / "work"
    shutil.copytree(ROOT / "notebooks", work / "notebooks")
    settings = tmp_path / "settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    # What `jupytext-config set-default-viewer python` sets for a user: .py opens as a notebook.
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"defaultViewers": {"python": "Jupytext Notebook"}}))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "PURIFY_PROFILE": "smoke", "PURIFY_ZOO": str(tmp_path / "zoo"), "PURIFY_BUILD": str(tmp_path / "build"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings")}
    server = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                               f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
                               *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI machines run as root
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start: " + (tmp_path / "server.log").read_text()[-2000:])
        yield url, token
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.browser
def test_notebook_opens_and_runs_in_jupyterlab(jupyterlab):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser extra is not installed (pip install -e '.[browser]')")
    url, token = jupyterlab
    shot = ROOT / "build" / "jupyterlab" / f"{NOTEBOOK}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/lab/tree/notebooks/{NOTEBOOK}.py?token={token}")
        page.wait_for_selector(".jp-NotebookPanel .jp-MarkdownCell", timeout=120_000)
        cells = page.locator(".jp-NotebookPanel .jp-Cell")
        assert "jp-MarkdownCell" in cells.nth(0).get_attribute("class"), cells.nth(0).inner_text()
        first_code = page.locator(".jp-NotebookPanel .jp-CodeCell").first
        assert 'profile = ""' in first_code.inner_text()  # the parameters cell comes first
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        page.wait_for_selector("text=claims reproduced under profile 'smoke'", timeout=900_000)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] >> text=Traceback").count()
        page.locator(".jp-NotebookPanel .jp-Cell").last.scroll_into_view_if_needed()
        page.screenshot(path=str(shot))
        browser.close()
    assert errors == 0
    assert shot.exists() and shot.stat().st_size > 10_000
