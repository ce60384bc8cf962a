"""Command-line entry points: bad input is one line on stderr, exit code 2, nothing written."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("script, args, message", [
    ("train_victims.py", ["--profile", "huge"], "error: unknown profile 'huge'; allowed: cpu, paper, smoke"),
    ("train_victims.py", ["badnets:ten"], "error: victim 'badnets:ten' must be ATTACK:RATE, e.g. badnets:0.1"),
    ("train_victims.py", ["--profile", "smoke", "nope:0.1"], "error: unknown attack 'nope'; allowed: adaptive_blend, badnets, blended, iad, lc, lf, sig, ssba, trojannn, wanet"),
    ("train_victims.py", ["--profile", "smoke", "badnets:0.1", "badnets:2"], r"error: poison_rate=2.0 is outside (0, 1]"),
    ("run_defenses.py", ["--profile", "smoke", "--defenses", "magic"], "error: unknown defense 'magic'; allowed: anp, d3"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, script, args, message):
    monkeypatch.setenv("PURIFY_ZOO", str(tmp_path / "zoo"))
    result = run(script, *args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not (tmp_path / "zoo").exists() or not any((tmp_path / "zoo").iterdir())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--trial", "{epochs: 3}"], "error: --trial '{epochs: 3}' is not JSON"),
    (["--trial", "[3]"], "error: --trial '[3]' is not a JSON object"),
    (["--trial", '{"epochs": 3, "colour": 1}'], "error: --trial has unknown field(s) colour; allowed: width, train_size, augment, batch_size"),
    (["--trial", '{"schedule": "zigzag"}'], "error: unknown schedule 'zigzag'; allowed: constant, cosine, onecycle, triangle"),
])
def test_search_recipe_bad_trial_is_one_line_and_exit_2(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("PURIFY_ZOO", str(tmp_path / "zoo"))
    result = run("search_recipe.py", "--profile", "smoke", "--trial", '{"epochs": 1}', *args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not (tmp_path / "zoo").exists()  # the good first trial did not train before the bad one was checked


def test_unusable_precision_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("PURIFY_ZOO", str(tmp_path / "zoo"))
    monkeypatch.setenv("PURIFY_PRECISION", "fp8")
    result = run("train_victims.py", "--profile", "smoke", "badnets:0.1", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: PURIFY_PRECISION='fp8' is not a precision; allowed: auto, bf16, fp16, fp32"
    assert not (tmp_path / "zoo").exists() and not (tmp_path / "out").exists()


def test_profiles():
    from purify_lib.errors import PurifyError
    from purify_lib.profiles import PROFILES, get_profile

    assert get_profile("paper").width == 64 and get_profile("paper").recipe.epochs == 100
    assert get_profile("smoke", width=4).width == 4
    with pytest.raises(PurifyError, match="unknown profile setting.*colour"):
        get_profile("cpu", colour="red")
    from purify_lib.defenses import DEFENSES, budget, parameters_of

    for profile in PROFILES.values():  # every budget names a real parameter
        for name in DEFENSES:
            assert set(budget(name, profile)) <= set(parameters_of(name)), (profile.name, name)
    assert budget("nc", get_profile("cpu")) == {"reverse_epochs": 20, "epochs": 10}  # the budget nc.py declares for cpu
    assert budget("nc", get_profile("cpu", defense_settings={"nc": {"epochs": 3}})) == {"reverse_epochs": 20, "epochs": 3}
    assert budget("nc", get_profile("paper")) == {}


def test_gpu_check_prints_its_report_on_a_cpu_under_smoke(tmp_path):
    """scripts/gpu_check.py is meant for a GPU; at the smoke profile it must run anywhere and print every section."""
    script = ROOT / "scripts" / "gpu_check.py"
    env = {**os.environ, "PURIFY_ZOO": str(tmp_path / "zoo")}
    done = subprocess.run([sys.executable, str(script), "--profile", "smoke", "--device", "cpu", "--time-limit", "30"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = done.stdout
    for section in ("# GPU check, profile `smoke`", "- precision chosen:", "## Victims", "| badnets | 1 |", "| wanet | 1 |", "| iad | 1 |",
                    "## Host synchronisations in one WaNet epoch", "## Deterministic mode", "## Defenses on the short-trained"):
        assert section in report, section
    assert "Every defense ran." in report or "The time guard" in report
    bad = subprocess.run([sys.executable, str(script), "--epochs", "0"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --epochs 0") and len(bad.stderr.strip().splitlines()) == 1
