"""Every notebook, end to end under the smoke profile: through run_all (papermill) and through nbval.

The notebooks share one zoo for the session, as they do for a user: the papermill pass trains each
victim and runs each defense once; the nbval pass then finds them cached.
"""
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

from purify_lib import execution

ROOT = Path(__file__).resolve().parents[1]
NAMES = execution.notebook_names()


@pytest.fixture(scope="module")
def smoke_env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smoke")
    env = {"PURIFY_ZOO": str(folder / "zoo"), "PURIFY_BUILD": str(folder / "build"), "PURIFY_PROFILE": "smoke"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield folder
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("name", NAMES)
def test_source_is_narrative_with_parameters_first_and_claims_last(name):
    notebook = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    cells = notebook.cells
    assert cells[0].cell_type == "markdown" and "**Question.**" in cells[0].source and "![" in cells[0].source
    code = [c for c in cells if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["parameters"]
    assert sum("parameters" in c.metadata.get("tags", []) for c in cells) == 1
    assert all(f"\n{name} = " in "\n" + code[0].source for name in ("profile", "device", "seed", "victim_seed"))
    assert "section.claim(" in code[-1].source and "section.finish()" in code[-1].source
    # the science reads as a paper section: the loops, table munging and diagnoses live in purify_lib
    lines = [line for c in code for line in c.source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= 90, f"{name} has {len(lines)} lines of code"
    assert not any(word in line for line in lines for word in (".groupby(", ".pivot(", ".pivot_table(")), name
    assert "claims.check(" not in notebook_text(name) and "claims.diagnose(" not in notebook_text(name)  # claims are declared


@pytest.mark.parametrize("name", NAMES)
def test_committed_source_round_trips_and_agrees_with_any_paired_ipynb(name):
    source = ROOT / "notebooks" / f"{name}.py"
    text = _without_jupytext_version(source.read_text())
    assert _without_jupytext_version(jupytext.writes(jupytext.reads(text, fmt="py:percent"), fmt="py:percent")) == text
    paired = source.with_suffix(".ipynb")
    if paired.exists():  # a JupyterLab user's paired copy must not drift from the committed source
        synced = _without_jupytext_version(jupytext.writes(jupytext.read(paired), fmt="py:percent"))
        assert synced == text, f"{paired} differs from {source}; run jupytext --sync"


def notebook_text(name):
    return (ROOT / "notebooks" / f"{name}.py").read_text()


def _without_jupytext_version(text):
    # The header records the jupytext release that last wrote the file; any release the project admits may read it.
    return re.sub(r"^#\s+jupytext_version: .*\n", "", text, flags=re.M)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_under_smoke_through_papermill(smoke_env, name):
    result = execution.execute(name, "smoke")
    assert result["status"] == "ran", result.get("error")
    executed = json.loads((smoke_env / "build" / "smoke" / f"{name}.ipynb").read_text())
    assert any("parameters" in c["metadata"].get("tags", []) for c in executed["cells"])
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])
    assert result["claims"], "the closing cell checked no claim"
    stamp = json.loads((smoke_env / "build" / "smoke" / f"{name}.done.json").read_text())
    assert stamp["outputs"] and all(file.endswith((".png", ".pdf", ".csv", ".md", ".json")) for file in stamp["outputs"])
    assert f"needs_{name}.json" in stamp["outputs"]
    parts = result["breakdown"]
    assert set(parts) == {"victims", "defenses", "loads", "other"} and min(parts.values()) >= 0
    assert sum(parts.values()) <= result["seconds"] + 1e-6
    figures = smoke_env / "build" / "figures" / "smoke"
    manifest = json.loads((figures / "manifest.json").read_text())
    for file in stamp["outputs"]:
        assert manifest[file]["notebook"] == name and manifest[file]["profile"] == "smoke"
    # Nothing changed: the second call skips it.
    assert execution.execute(name, "smoke")["status"] == "unchanged"


def test_a_missing_output_or_stamp_means_rerun(smoke_env):
    name = NAMES[0]
    build = smoke_env / "build"
    stamp = build / "smoke" / f"{name}.done.json"
    if not stamp.exists():  # run on its own: execute the notebook first (after the papermill test it is there)
        assert execution.execute(name, "smoke")["status"] == "ran"
    digest = execution.input_digest(name, {"profile": "smoke"})
    assert execution.up_to_date(stamp, digest, name, "smoke")
    assert not execution.up_to_date(stamp, execution.input_digest(name, {"profile": "smoke", "seed": 1}), name, "smoke")
    output = next(iter(json.loads(stamp.read_text())["outputs"]))
    figure = smoke_env / "build" / "figures" / "smoke" / output
    saved = figure.read_bytes()
    figure.write_bytes(saved[: len(saved) // 2])  # a half-written figure is not a finished one
    assert not execution.up_to_date(stamp, digest, name, "smoke")
    figure.write_bytes(saved)
    stamp.write_text("{")  # an interrupted stamp write
    assert not execution.up_to_date(stamp, digest, name, "smoke")


def test_plan_lists_recorded_needs_against_the_zoo_and_runs_nothing(smoke_env, monkeypatch):
    name = "02_feature_shift"
    if execution.needs_record(name, "smoke") is None:  # run on its own: execute the notebook first
        assert execution.execute(name, "smoke")["status"] == "ran"
    record = execution.needs_record(name, "smoke")
    kinds = {item["kind"] for item in record["items"]}
    assert kinds == {"victim", "defense"}, "the record must name the notebook's victims and defense runs"
    for item in (item for item in record["items"] if item["kind"] == "victim"):  # a spec a cluster run trains it from first
        assert execution.train_victim("smoke", {**item["spec"], "victim": item["victim"]}) == {
            "victim": item["victim"], "status": "loaded", "seconds": pytest.approx(0, abs=60), "entry": item["entry"]}
    assert execution.plan([(name, {})], "smoke", {}).splitlines()[1] == f"{name}: up to date, nothing to run"
    forced = execution.plan([(name, {})], "smoke", {}, force=True)
    assert "to train" not in forced and "to run, about" not in forced  # everything it used is in the zoo
    # Remove one defense result from the cache: the plan says it would be rerun, and costs it.
    defense = next(item for item in record["items"] if item["kind"] == "defense")
    entry = smoke_env / "zoo" / "defended" / f"{defense['entry']}.json"
    saved = entry.read_bytes()
    entry.unlink()
    try:
        lines = execution.plan([(name, {})], "smoke", {}, force=True).splitlines()
        assert sum("to run, about" in line for line in lines) == 1
        assert any(line.strip().startswith(f"defense {defense['defense']} on {defense['victim']}") and "to run" in line for line in lines)
        assert not entry.exists(), "planning must not run the defense"
        # Other parameter values than the record's: the plan says its list may not apply.
        assert "recorded with other values of seed" in execution.plan([(name, {})], "smoke", {"seed": 1}, force=True)
    finally:
        entry.write_bytes(saved)
    # One defense's code edited: its runs are redone, the other defenses' stay cached.
    defend_module = importlib.import_module("purify_lib.defend")
    real = defend_module.code_digest
    monkeypatch.setattr(defend_module, "code_digest", lambda method: "edited" if method == defense["defense"] else real(method))
    lines = execution.plan([(name, {})], "smoke", {}, force=True).splitlines()
    assert f"the code of {defense['defense']} changed since" in lines[1]
    redone = [line for line in lines if "to run, about" in line]
    assert redone and all(line.strip().startswith(f"defense {defense['defense']} ") for line in redone)


def test_breakdown_splits_wall_time_by_what_was_computed():
    record = {"items": [{"kind": "victim", "cached": False, "seconds": 30.0}, {"kind": "victim", "cached": True, "seconds": 2.0},
                        {"kind": "defense", "cached": False, "seconds": 10.0}, {"kind": "defense", "cached": True, "seconds": 1.0}]}
    assert execution.breakdown(record, 50.0) == {"victims": 30.0, "defenses": 10.0, "loads": 3.0, "other": 7.0}
    assert execution.breakdown(None, 5.0) == {"victims": 0.0, "defenses": 0.0, "loads": 0.0, "other": 5.0}


def test_nbval_lax_on_a_converted_notebook(smoke_env, tmp_path):
    """nbval runs a notebook as JupyterLab's kernel would, cell by cell: one notebook shows the converted sources
    run that way (the papermill test has executed all of them, with stronger checks, once already)."""
    name = NAMES[1]
    jupytext.write(jupytext.read(ROOT / "notebooks" / f"{name}.py"), tmp_path / f"{name}.ipynb")
    result = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT / "notebooks", env=os.environ.copy())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--profile", "huge"], "error: unknown profile 'huge'; allowed: cpu, paper, smoke"),
    (["--only", "99"], "error: unknown notebook '99'; allowed: 01_fine_tuning"),
    (["-p", "seed"], "error: parameter 'seed' is not name=value"),
    (["-p", "rates=abc"], "error: parameter rates=\"abc\" is a string; 01_fine_tuning expects a JSON list (its default is rates = [])"),
    (["-p", "colour=1"], "error: unknown notebook parameter 'colour' (given colour=1); the parameters of 01_fine_tuning"),
    (["--only", "04", "-p", "path_points=2.5"], "error: parameter path_points=2.5 is a number; 04_distance expects an integer"),
    (["--only", "02", "--grid", "per_group=[20,\"x\"]"], "error: parameter per_group=\"x\" is a string; 02_feature_shift expects an integer"),
    (["--only", "06", "-p", "dataset=\"mnist\""], "error: unknown dataset 'mnist'; allowed: cifar10, cifar100, gtsrb, tiny_imagenet"),
    (["--only", "06", "-p", "imported=[\"nowhere/attack_result.pt\"]"], "error: imported=[\"nowhere/attack_result.pt\"]: 'nowhere/attack_result.pt' is no file"),
])
def test_run_all_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    env = {**os.environ, "PURIFY_BUILD": str(tmp_path / "build"), "PURIFY_ZOO": str(tmp_path / "zoo")}
    result = subprocess.run([sys.executable, str(ROOT / "run_all.py"), *args], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    # nothing ran: a notebook would have made the build folder (how fast it fails is measured, not asserted)
    assert not (tmp_path / "build").exists() and not (tmp_path / "zoo").exists()


@pytest.mark.parametrize("name, content, message", [
    ("p.yaml", "colour: 1\n", "error: unknown notebook parameter 'colour' (given colour=1); the parameters of 01_fine_tuning"),
    ("p.yaml", "01_fine_tuning:\n  rates: abc\n", 'error: parameter rates="abc" is a string; 01_fine_tuning expects a JSON list'),
    ("p.yaml", "04_distance: {path_points: 2.5}\n", "error: parameter path_points=2.5 is a number; 04_distance expects an integer"),
    ("p.yaml", "02_feature_shift: {rates: [0.1]}\n", "error: unknown notebook parameter 'rates' (given rates=[0.1]); the parameters of 02_feature_shift are"),
    ("p.yaml", "[1, 2]\n", "holds a list; expected a mapping of name: value"),
    ("p.yaml", "seed: [1\n", "is not valid YAML at line 2"),
    ("p.json", '{"seed": 1,}', "is not valid JSON at line 1"),
    ("p.yaml", "profile: paper\n", "sets profile; choose the profile with --profile"),
    ("p.yaml", "06_main_tables: 3\n", "06_main_tables must hold a mapping of its parameters, not 3"),
    ("missing.yaml", None, "cannot be read"),
])
def test_run_all_bad_parameters_file_is_one_line_and_exit_2(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    env = {**os.environ, "PURIFY_BUILD": str(tmp_path / "build"), "PURIFY_ZOO": str(tmp_path / "zoo")}
    result = subprocess.run([sys.executable, str(ROOT / "run_all.py"), "-f", str(tmp_path / name)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "build").exists() and not (tmp_path / "zoo").exists()


def test_printed_parameters_are_a_file_run_all_takes(tmp_path):
    """--print-parameters writes each notebook's resolved defaults; -f reads them back, checked, and plans a run."""
    import yaml

    env = {**os.environ, "PURIFY_BUILD": str(tmp_path / "build"), "PURIFY_ZOO": str(tmp_path / "zoo")}
    run = lambda *args: subprocess.run([sys.executable, str(ROOT / "run_all.py"), *args], capture_output=True, text=True, env=env, cwd=tmp_path)
    printed = run("--profile", "smoke", "--print-parameters")
    assert printed.returncode == 0, printed.stderr
    values = yaml.safe_load(printed.stdout)
    assert sorted(k for k in values if k in NAMES) == NAMES and values["seed"] == 0
    assert values["06_main_tables"]["victims"] == execution.profile_defaults("06_main_tables", "smoke")["victims"]
    assert all(set(values[name]) <= set(execution.notebook_parameters(name)) for name in NAMES)  # every key is one of its parameters
    (tmp_path / "params.yaml").write_text(printed.stdout)
    planned = run("--profile", "smoke", "--plan", "-f", "params.yaml")
    assert planned.returncode == 0 and "02_feature_shift: to run" in planned.stdout, planned.stderr


def test_parameters_file_sections_and_p_precedence():
    from_file = {"seed": 3, "per_group": 10, "02_feature_shift": {"per_group": 20, "victims": ["blended:0.1"]}}
    assert execution.for_notebook("02_feature_shift", from_file) == {"seed": 3, "per_group": 20, "victims": ["blended:0.1"]}
    assert execution.for_notebook("04_distance", from_file) == {"seed": 3, "per_group": 10}  # another notebook's section stays there
    merged = execution.merge_parameters(from_file, {"per_group": 30})  # -p wins over the shared value and over the section's
    assert execution.for_notebook("02_feature_shift", merged) == {"seed": 3, "per_group": 30, "victims": ["blended:0.1"]}


def test_left_to_paper_lists_what_the_paper_defaults_run_and_these_do_not():
    from purify_lib.section import left_to_paper

    defaults = {"cpu": {"victims": ["a:0.1"], "points": 9, "sizes": [1]}, "paper": {"victims": ["a:0.1", "b:0.1"], "points": 21, "sizes": [1]}}
    chosen = dict(defaults["cpu"])
    assert left_to_paper(defaults, "cpu", chosen) == {"victims": ["b:0.1"], "points": ["21 (here 9)"]}
    assert left_to_paper(defaults, "paper", defaults["paper"]) == {}
    assert left_to_paper(defaults, "cpu", {**chosen, "victims": ["b:0.1", "a:0.1"], "points": 21}) == {}
