"""Victims in other tools' formats: ``backdoorbench`` (its ``attack_result.pt``)."""
