"""Backdoor attacks, one module each, behind the ``Attack`` interface in ``base.py``."""
from __future__ import annotations

from ..errors import PurifyError, choose
from .adaptive_blend import AdaptiveBlend
from .badnets import BadNets
from .base import Attack, Poisoned
from .blended import Blended
from .iad import IAD
from .lc import LC
from .lf import LF
from .sig import SIG
from .ssba import SSBA
from .trojannn import TrojanNN
from .wanet import WaNet

ATTACKS = {cls.name: cls for cls in (BadNets, Blended, SIG, LF, WaNet, LC, AdaptiveBlend, TrojanNN, IAD, SSBA)}


def make_attack(name: str, **params) -> Attack:
    """Build an attack by name; unknown names or parameters fail with a one-line error."""
    cls = ATTACKS[choose("attack", name, ATTACKS)]
    try:
        return cls(**params)
    except TypeError as exc:
        raise PurifyError(f"bad parameters for attack {name!r}: {exc}") from None


__all__ = ["ATTACKS", "Attack", "Poisoned", "make_attack"]
