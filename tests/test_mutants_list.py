"""scripts/mutants.py (the mutation check) stays applicable: each mutant's text occurs
exactly once in its file. Code moved or rewritten without updating the list would make the
mutant "stale" only when someone runs the ~35-minute check; this says so in every test run."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _mutants_module():
    spec = importlib.util.spec_from_file_location("mutants", REPO / "scripts" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_MUTANTS = _mutants_module()
ALL = _MUTANTS.PYTHON_MUTANTS + _MUTANTS.NATIVE_MUTANTS


@pytest.mark.parametrize("mutant", ALL, ids=[m[0] for m in ALL])
def test_mutant_text_occurs_once_in_its_file(mutant):
    mid, rel, old, new, _tests = mutant
    count = (REPO / rel).read_text().count(old)
    assert count == 1, f"{mid}: its text occurs {count} times in {rel}: update or drop it"
    assert new != old, f"{mid} changes nothing"


def test_mutant_ids_are_unique():
    ids = [m[0] for m in ALL]
    assert len(ids) == len(set(ids))
