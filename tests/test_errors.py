"""The error catalogue: what reaches a client besides the JSON body."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import rolebroker
from rolebroker import errors
from rolebroker.errors import MAX_RETRY_AFTER, BrokerError, StsRefused, StsUnavailable


def test_retry_after_tells_the_backoff_but_never_a_long_sleep() -> None:
    # aws-sdk-js v2 sleeps for Retry-After between attempts: a 60 s backoff must not
    # become minutes of a hanging client.
    assert StsUnavailable("down", retry_after=0.2).headers() == {"Retry-After": "1"}
    assert StsUnavailable("down", retry_after=1.5).headers() == {"Retry-After": "2"}
    assert StsUnavailable("down", retry_after=60).headers() == {"Retry-After": str(MAX_RETRY_AFTER)}
    assert StsRefused("no").headers() == {}


# -- one catalogue: errors.py and the README's table agree -------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"


def catalogue() -> dict[str, type[BrokerError]]:
    """Every BrokerError subclass, by code; the base class is never raised itself."""
    found: dict[str, type[BrokerError]] = {}
    pending = list(BrokerError.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        assert cls.code not in found or found[cls.code] is cls, f"{cls.code} is the code of two classes"
        found[cls.code] = cls
    return found


def readme_table() -> dict[str, int]:
    """The README's error table: ``| status | `Code`, `Code` | meaning |`` rows."""
    text = README.read_text()
    start = text.index("| status | code | meaning |")
    rows: dict[str, int] = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        status, codes = (cell.strip() for cell in line.strip("|").split("|")[:2])
        for code in re.findall(r"`([A-Za-z]+)`", codes):
            assert code not in rows, f"{code} is listed twice in the README's error table"
            rows[code] = int(status)
    return rows


def test_every_error_class_lives_in_errors_py_with_its_documentation() -> None:
    # Importing every module first: a BrokerError subclass defined anywhere else would show.
    for module in pkgutil.walk_packages(rolebroker.__path__, "rolebroker."):
        if module.name not in ("rolebroker.demo", "rolebroker.__main__"):
            importlib.import_module(module.name)
    for cls in catalogue().values():
        assert cls.__module__ == errors.__name__, f"{cls.__name__} is defined outside errors.py"
        assert cls.__dict__.get("__doc__"), f"{cls.__name__}: say when it happens and what to do"
        assert "code" in cls.__dict__, f"{cls.__name__} inherits the code of its parent"


def test_readme_error_table_and_catalogue_agree() -> None:
    documented = readme_table()
    classes = {code: cls.status for code, cls in catalogue().items()}
    assert sorted(set(classes) - set(documented)) == [], "codes missing from the README's error table"
    assert sorted(set(documented) - set(classes)) == [], "README codes without a class in errors.py"
    wrong = {c: (documented[c], status) for c, status in classes.items() if documented[c] != status}
    assert wrong == {}, "README status != class status"


def test_no_error_carries_an_ad_hoc_code() -> None:
    # The constructor takes no code or status: a class is the only way to a code.
    with pytest.raises(TypeError):
        StsRefused("x", code="Whatever")  # type: ignore[call-arg]
    error = StsRefused("STS refused AssumeRole: RegionDisabledException: ...")
    assert error.to_json()["code"] == "StsRefused" and error.copy().code == "StsRefused"
