"""The notebooks' shared loop and tables (``purify_lib.sweep``) on a stand-in section, no training."""
from types import SimpleNamespace

import pytest

from purify_lib.defenses.base import Defended
from purify_lib.sweep import arm, backdoored, per, sweep, wide, with_averages


class StandIn:
    """What ``sweep`` asks of a section: victims and (here, made-up) defense results, with the calls recorded."""

    def __init__(self):
        self.calls = []

    def victim(self, attack, rate):
        return SimpleNamespace(attack=SimpleNamespace(name=attack, variant="backdoorbench"), poison_rate=rate, backdoored=rate > 0.05,
                               metrics={"acc": 80.0, "asr": 90.0, "ra": 5.0})

    def defend(self, victim, name, **params):
        self.calls.append((victim.attack.name, name, params))
        asr = 10.0 * params.get("lr", 1)
        return Defended(None, name, params, seconds=2.0 if name == "ft" else 6.0, history=[{"acc": 70.0, "asr": asr, "ra": 60.0}],
                        extra={"kept_poisoned": 3})


def test_every_arm_on_every_victim_after_its_own_row():
    section = StandIn()
    frame = sweep(section, [("badnets", 0.1), ("sig", 0.01)], ["ft", arm("lp", lr=2), arm("ft", name="ft (other)", show=False, lr=3)],
                  extra={"kept": "kept_poisoned"}, notebook="test")
    assert list(frame["defense"]) == ["none", "ft", "lp", "ft (other)"] * 2
    assert section.calls[:3] == [("badnets", "ft", {}), ("badnets", "lp", {"lr": 2}), ("badnets", "ft", {"lr": 3})]
    assert list(frame["lr"].fillna(0))[:4] == [0, 0, 2, 0]  # a shown parameter is a column; a hidden one is not
    assert list(frame["time vs FT"].fillna(0))[:4] == [0, 1.0, 3.0, 1.0] and list(frame["kept"])[1:4] == [3, 3, 3]
    assert (frame["notebook"] == "test").all() and list(frame["victim"].unique()) == ["badnets 0.1", "sig 0.01 (not learned)"]
    assert frame.loc[1, "der"] == pytest.approx(0.5 * (max(90 - 10, 0) / 100 - max(80 - 70, 0) / 100 + 1))
    assert len(backdoored(frame)) == 3  # the learned victim's defense rows only


def test_tables_without_groupby_in_the_notebooks():
    frame = sweep(StandIn(), [("badnets", 0.1)], [arm("ft", lr=1), arm("lp", lr=2)])
    assert wide(frame, by=["attack", "rate"], order=["none", "ft", "lp"]).columns.tolist() == [
        "attack", "rate", "none ACC", "none ASR", "ft ACC", "ft ASR", "lp ACC", "lp ASR"]
    assert per(frame, "defense", "asr", "min") == {"ft": 10.0, "lp": 20.0, "none": 90.0}
    averaged = with_averages(frame, "average")
    assert averaged.iloc[-2:]["attack"].tolist() == ["average", "average"] and averaged.iloc[-1]["asr"] == 20.0


def test_several_seeds_give_each_cell_its_mean_and_spread():
    class Seeded(StandIn):
        def defend(self, victim, name, **params):
            result = super().defend(victim, name, **params)
            result.history[-1]["asr"] = 10.0 + params["seed"]  # seeds 0, 1, 2: ASR 10, 11, 12
            return result

    section = Seeded()
    frame = sweep(section, [("badnets", 0.1)], ["ft"], seeds=[0, 1, 2])
    row = frame.iloc[1]
    assert [params["seed"] for *_, params in section.calls] == [0, 1, 2]
    assert row["asr"] == 11.0 and row["asr ±"] == 1.0 and row["acc ±"] == 0.0 and row["seeds"] == 3
