"""The analysis measurements, the published-number lookup, the run record, claims and the plan's pricing."""
import json

import numpy as np
import pytest
import torch

from purify_lib import analysis
from purify_lib.models import make_model
from purify_lib.train import Recipe
from purify_lib.zoo import get_victim

TINY = dict(profile="smoke", width=4, train_size=300, test_size=100, progress=False)


@pytest.fixture
def victim(isolated_cache):
    return get_victim("badnets", 0.1, recipe=Recipe(epochs=1, batch_size=100, lr=0.05, schedule="onecycle"), **TINY)


def same_weights(a, b):
    return all(torch.equal(x.cpu(), y.cpu()) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_interpolation_ends_and_weight_change():
    torch.manual_seed(0)
    start, end = make_model("preactresnet18", 10, width=4), make_model("preactresnet18", 10, width=4)
    assert same_weights(analysis.interpolate(start, end, 0.0), start)
    at_one = analysis.interpolate(start, end, 1.0)
    for (name, a), b in zip(at_one.state_dict().items(), end.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    middle = analysis.interpolate(start, end, 0.5)
    head = dict(middle.named_parameters())["head.weight"]
    assert torch.allclose(head, (dict(start.named_parameters())["head.weight"] + dict(end.named_parameters())["head.weight"]) / 2)
    assert np.abs(analysis.weight_change(start, start)).max() == 0
    head_only = analysis.weight_change(start, end, ["head"])
    assert head_only.size == 10 * start.head.in_features + 10  # weight and bias


def test_extrapolation_keeps_batchnorm_variances_positive():
    torch.manual_seed(0)
    start, end = make_model("preactresnet18", 10, width=4), make_model("preactresnet18", 10, width=4)
    with torch.no_grad():
        for module in end.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.fill_(0.25)  # a linear step to t = 2 would give 1 + 2 (0.25 - 1) < 0
    beyond = analysis.interpolate(start, end, 2.0)
    variances = [m.running_var for m in beyond.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.allclose(v, torch.full_like(v, 0.0625)) for v in variances)
    assert torch.isfinite(beyond(torch.rand(4, 3, 32, 32))).all()
    with torch.no_grad():
        next(m for m in start.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var[0] = 0.0  # a dead channel
    assert all(torch.isfinite(m.running_var).all() for m in analysis.interpolate(start, end, 0.5).modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def test_separation_tells_apart_separate_groups_only():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (100, 16))
    assert analysis.separation(a, rng.normal(3, 1, (100, 16))) > 0.5
    assert abs(analysis.separation(a, rng.normal(0, 1, (100, 16)))) < 0.05


def test_feature_groups_and_penultimate(victim):
    groups = analysis.feature_groups(victim, per_group=10)
    assert {len(g) for g in groups.values()} == {10}
    target = victim.attack.target
    assert (groups["clean target"].labels == target).all() and (groups["other classes"].labels != target).all()
    assert (groups["triggered"].labels != target).all()  # triggered images keep their true, non-target labels
    features = analysis.penultimate(victim.model, groups["triggered"].images)
    assert features.shape == (10, victim.model.head.in_features)
    assert analysis.tsne(np.random.default_rng(0).normal(size=(30, 8))).shape == (30, 2)


def test_published_numbers_lookup():
    from purify_lib import paper_tables

    if paper_tables.tables_dir() is None:
        pytest.skip("../shared/paper_tables is not beside this checkout")
    frame = paper_tables.load()
    d3 = paper_tables.published(frame, "badnets", 0.1, "d3")
    assert set(d3["paper"]) == {"D3"} and (d3["ASR"] == 0.74).all()
    pad = paper_tables.published(frame, "badnets", 0.1, "pad_ft")
    assert pad["ASR"].tolist() == [6.62]
    assert paper_tables.published(frame, "badnets", 0.1, "no_such_defense").empty
    assert not frame["setting"].fillna("").str.contains("statistic=").any()


def test_figure_and_claims_carry_the_run_record(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from PIL import Image

    from purify_lib import claims as claims_module
    from purify_lib import paths, plots

    monkeypatch.setenv("PURIFY_BUILD", str(tmp_path))
    assert paths.figures_dir("cpu") == tmp_path / "figures" / "cpu"  # never the committed folder from tests
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    png, pdf = plots.save_figure(fig, "line", tmp_path, {"commit": "abc", "profile": "smoke"})
    assert json.loads(Image.open(png).text["Description"]) == {"commit": "abc", "profile": "smoke"}
    assert pdf.read_bytes().startswith(b"%PDF")
    claims = claims_module.Claims("nb", "smoke")
    claims.check("a holds", True, "1")
    claims.check("b holds", False, "2")
    assert [row["passed"] for row in claims.report()] == [True, False]
    saved = json.loads((tmp_path / "claims" / "nb.smoke.json").read_text())
    assert [c["claim"] for c in saved["claims"]] == ["a holds", "b holds"]


def test_markdown_keeps_small_numbers_readable():
    import pandas as pd

    from purify_lib.plots import markdown

    table = markdown(pd.DataFrame({"rate": [0.005, 0.1], "acc": [76.23, float("nan")], "defense": ["ft", None]}))
    assert table.splitlines()[2:] == ["| 0.005 | 76.2 | ft |", "| 0.1 |  |  |"]
    assert markdown(pd.DataFrame({"claim": ["a | b"]})).splitlines()[2] == "| a \\| b |"


def test_finished_section_lists_its_verdicts_beside_its_figures(tmp_path, monkeypatch):
    from purify_lib.section import Section

    monkeypatch.setenv("PURIFY_BUILD", str(tmp_path))
    section = Section("nb", "smoke")
    section.claims.check("a holds", True, "1%")
    with pytest.raises(ValueError, match="only one that differs"):
        section.claims.diagnose("a passing claim has nothing to explain")
    section.claims.check("b holds", False, "2%")
    section.claims.diagnose("b needs more epochs: 3% at 10, 1% at 20")
    section.finish()
    table = (section.figures / "claims_nb.md").read_text().splitlines()
    assert table[2:6] == ["| verdict | claim | measured | diagnosis |", "|---|---|---|---|", "| PASS | a holds | 1% |  |",
                          "| DIFFERS | b holds | 2% | b needs more epochs: 3% at 10, 1% at 20 |"]
    needs = json.loads((section.figures / "needs_nb.json").read_text())
    assert needs["items"] == [] and needs["requested"] == {"device": "auto", "seed": 0, "victim_seed": 0}
    manifest = json.loads((section.figures / "manifest.json").read_text())
    assert manifest["claims_nb.md"]["notebook"] == "nb" and manifest["claims_nb.csv"]["profile"] == "smoke"


def test_every_deviation_switch_is_a_real_parameter():
    """docs/deviations.md names a switch for each deviation; each must be a parameter that exists and accepts that value."""
    import ast
    import re
    from dataclasses import fields
    from pathlib import Path

    from purify_lib.attacks import ATTACKS, make_attack
    from purify_lib.defenses import DEFENSES, parameters_of
    from purify_lib.profiles import Profile

    text = (Path(__file__).resolve().parent.parent / "docs" / "deviations.md").read_text()
    switch_cells = [line.rstrip(" |").rsplit("|", 1)[-1] for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    calls = [(name, args) for cell in switch_cells for name, args in re.findall(r"`(\w+)\(([^`]*)\)`", cell)]
    assert len(calls) >= 15, calls
    for name, args in calls:
        keywords = {k.arg: ast.literal_eval(k.value) for k in ast.parse(f"f({args})").body[0].value.keywords}
        if name == "Profile":
            assert set(keywords) <= {f.name for f in fields(Profile)}, (name, keywords)
        elif name in ATTACKS:
            assert make_attack(name, **keywords).params(), (name, keywords)
        else:
            assert name in DEFENSES, name
            assert set(keywords) <= set(parameters_of(name)), (name, keywords, parameters_of(name))


def test_plan_prices_a_diagnosis_that_has_not_run(tmp_path, monkeypatch):
    """A declared diagnosis whose claim held is in the needs record, not run: --plan prices it from the recorded
    run of the same defense, scaled by the budget it changes (epochs 20 against the 2 that run used)."""
    from purify_lib import execution

    monkeypatch.setenv("PURIFY_ZOO", str(tmp_path / "zoo"))
    monkeypatch.setenv("PURIFY_BUILD", str(tmp_path / "build"))
    (tmp_path / "zoo" / "defended").mkdir(parents=True)
    (tmp_path / "zoo" / "defended" / "v--d3-abc.json").write_text(json.dumps({"params": {"epochs": 2, "lr": 0.01}}))
    record = {"requested": {}, "defense_code": {}, "seconds": 100.0, "items": [
        {"kind": "defense", "victim": "badnets:0.1", "defense": "d3", "params": {"seed": 0}, "entry": "v--d3-abc", "cached": False,
         "seconds": 30.0, "cost": 30.0},
        {"kind": "diagnosis", "claim": "d3 holds", "victim": "badnets:0.1", "defense": "d3", "params": {"seed": 0, "epochs": 20}, "ran": False},
        {"kind": "diagnosis", "claim": "nc holds", "victim": "badnets:0.1", "defense": "nc", "params": {"seed": 0}, "ran": False}]}
    monkeypatch.setattr(execution, "needs_record", lambda name, profile: record)
    plan = execution.plan([("06_main_tables", {})], "smoke", {}, force=True)
    assert "diagnosis defense d3 on badnets:0.1 (epochs=20)" in plan and "runs if its claim differs: about 5.0 min" in plan
    assert "no run of this defense recorded to price it from" in plan  # nc: nothing to price it from, and it says so
    assert "plus up to 5.0 min of diagnoses, run only where their claims differ" in plan.splitlines()[-1]


def test_a_verdict_a_seed_could_flip_says_within_noise(tmp_path, monkeypatch):
    from purify_lib.section import Section

    monkeypatch.setenv("PURIFY_BUILD", str(tmp_path))
    section = Section("nb", "smoke")
    noise = {"asr": 2.0, "acc": 0.0}
    section.claim("passes by 0.1", True, "5.4 against 5.5", margins={"asr": 0.1}, noise=noise)
    section.claim("passes by 30", True, "ASR 0%", margins={"asr": 30.0}, noise=noise)
    section.claim("fails by 1 on ASR and by 20 on ACC", False, "", margins={"asr": -1.0, "acc": -20.0}, noise={"asr": 2.0, "acc": 3.0})
    section.claim("fails by 1", False, "", margins={"asr": -1.0}, noise=noise)
    section.claim("fails at a threshold no seed moves", False, "", margins={"acc": 0.0}, noise=noise)
    rows = section.claims.rows
    assert [r["within_noise"] for r in rows] == [True, False, False, True, False]
    assert rows[0]["measured"] == "5.4 against 5.5 (within noise: asr +0.1 from the threshold against a seed spread of 2.0)"
