"""Adding a method is one file: a defense or an attack registered from a module outside the package is found
everywhere the library looks one up, and a parameter that would escape checking and the cache key is refused."""
from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest

from purify_lib import execution, paper_tables
from purify_lib.attacks import ATTACKS
from purify_lib.defenses import DEFENSES, budget, parameters_of
from purify_lib.errors import PurifyError
from purify_lib.profiles import get_profile

TOY = '''
import copy

from purify_lib.attacks.base import Attack
from purify_lib.defenses.base import Defended, defense


@defense(fraction=0.04, published={"Toy Defense"}, smoke={"steps": 1}, cpu=({"steps": 2}, "two toy steps"))
def toy_defense(model, data, evaluator=None, *, steps=3, seed=0, progress=False):
    """Returns the victim unchanged, saying how much data it got."""
    return Defended(copy.deepcopy(model).eval(), "toy_defense", {"steps": steps, "images": len(data)})


class ToyAttack(Attack):
    """A 2x2 corner patch of one grey level."""

    name = "toy_attack"
    published = frozenset({"Toy Attack"})
    budgets = {"smoke": ({"value": 7}, "a dim patch for the smoke profile")}

    def __init__(self, *, target: int = 0, value: int = 255, pool: str = "all"):
        super().__init__(target=target, pool=pool)
        self.value = value

    def apply(self, images):
        out = images.clone()
        out[:, :, :2, :2] = self.value
        return out
'''


def _load(tmp_path, name: str, source: str):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "toy_methods", None)  # restored (removed) after the test
    module = _load(tmp_path, "toy_methods", TOY)
    yield module
    DEFENSES.pop("toy_defense", None)
    ATTACKS.pop("toy_attack", None)


def test_a_defense_and_an_attack_from_a_module_of_their_own_are_found_everywhere(toy, isolated_cache):
    from purify_lib.defend import code_files, defend
    from purify_lib.zoo import get_victim

    assert parameters_of("toy_defense") == {"steps": 3, "seed": 0, "progress": False}
    assert budget("toy_defense", get_profile("cpu")) == {"steps": 2} and budget("toy_defense", get_profile("paper")) == {}
    assert paper_tables.defense_names("toy_defense") == {"Toy Defense"} and paper_tables.attack_names("toy_attack") == {"Toy Attack"}
    assert any(path.name == "toy_methods.py" for path in code_files("toy_defense"))  # its code is in its cache key

    victim = get_victim("toy_attack", 0.1, "smoke", width=4, train_size=300, test_size=100, progress=False)
    assert victim.attack.value == 7 and victim.attack.params()["value"] == 7  # the smoke budget, and in the key
    result = defend(victim, "toy_defense")
    assert result.params == {"steps": 1, "images": round(0.04 * 300)}  # its smoke budget and its declared data fraction
    assert defend(victim, "toy_defense").cache_hit

    record = {"requested": {}, "defense_code": {}, "seconds": 5.0,
              "items": [{"kind": "victim", "victim": "toy_attack:0.1", "entry": victim.path.stem, "cached": False, "seconds": 2.0, "cost": 2.0},
                        {"kind": "defense", "victim": "toy_attack:0.1", "defense": "toy_defense", "params": {"seed": 0},
                         "entry": result.cache_entry, "cached": False, "seconds": 1.0, "cost": 1.0}]}
    original = execution.needs_record
    try:
        execution.needs_record = lambda name, profile: record
        plan = execution.plan([("01_fine_tuning", {})], "smoke", {}, force=True)
    finally:
        execution.needs_record = original
    assert "victim  toy_attack:0.1" in plan and "defense toy_defense on toy_attack:0.1" in plan
    assert "the code of toy_defense changed since" in plan  # recorded under no digest: its runs would be redone


def test_a_parameter_that_is_not_keyword_only_is_refused_when_registered(tmp_path):
    with pytest.raises(PurifyError, match=r"defense bad_defense .* takes model, data, evaluator, steps before its keyword-only"):
        _load(tmp_path, "bad_defense_module", '''
            from purify_lib.defenses.base import defense

            @defense()
            def bad_defense(model, data, evaluator=None, steps=3):
                pass
            ''')
    with pytest.raises(PurifyError, match=r"attack bad_attack .*: constructor parameter\(s\) target, value must be keyword-only"):
        _load(tmp_path, "bad_attack_module", '''
            from purify_lib.attacks.base import Attack

            class BadAttack(Attack):
                name = "bad_attack"

                def __init__(self, target=0, value=1):
                    super().__init__(target=target)
            ''')
    with pytest.raises(PurifyError, match=r"defense typo .*budget sets unknown parameter\(s\) stepz"):
        _load(tmp_path, "typo_module", '''
            from purify_lib.defenses.base import defense

            @defense(smoke={"stepz": 1})
            def typo(model, data, evaluator=None, *, steps=3):
                pass
            ''')
    assert {"bad_defense", "typo"}.isdisjoint(DEFENSES) and "bad_attack" not in ATTACKS


def test_every_attack_keeps_each_constructor_parameter_in_its_victim_key():
    """Changing any one setting changes the key (no stale victim served for another setting)."""
    from purify_lib.attacks import make_attack

    candidates = {int: lambda v: [v + 1, v * 4, v // 2], float: lambda v: [v / 2], bool: lambda v: [not v]}
    for name, cls in ATTACKS.items():
        defaults = make_attack(name).params()
        for field in cls.fields():
            default = cls.__init__.__kwdefaults__[field]
            if field.endswith("_path") or type(default) not in candidates:
                continue  # a file (its pattern's digest is the key), or a choice among names (tested where it is made)
            for value in candidates[type(default)](default):
                try:
                    other = make_attack(name, **{field: value})
                except PurifyError:  # not a value this attack takes (pieces must make a square grid)
                    continue
                assert other.params() != defaults, (name, field)
                break
            else:
                pytest.fail(f"no other value of {name}.{field} was accepted")
