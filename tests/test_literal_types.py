"""Each ``Literal`` type of a string choice names exactly the values its runtime tuple validates against."""

from typing import get_args

import pytest

from lightning_prune.core import bitpack, export, quantize, schedules, sensitivity
from lightning_prune.core.channel import importance


@pytest.mark.parametrize(
    ("alias", "allowed"),
    [
        (schedules.ScheduleName, schedules.SCHEDULES),
        (importance.ImportanceName, importance.IMPORTANCES),
        (export.ExportFormat, export.FORMATS),
        (export.ExportFormat, tuple(set(export.SUFFIXES.values()))),
        (sensitivity.SensitivityKind, sensitivity.KINDS),
        (sensitivity.SensitivityNorm, sensitivity.SENSITIVITY_NORMS),
        (bitpack.BitOrder, tuple(bitpack._SHIFTS)),
        (quantize.Observer, quantize.OBSERVERS),
    ],
)
def test_literal_alias_matches_the_runtime_choices(alias, allowed):
    assert sorted(get_args(alias)) == sorted(set(allowed))
    assert len(set(allowed)) == len(allowed)
