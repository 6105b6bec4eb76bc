"""The Python versions Corral installs on are exactly those its dependencies support."""

import tomllib
from importlib.metadata import PackageNotFoundError, metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.farm import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_corral_accepts_debian_13s_python_and_newer() -> None:
    allowed = SpecifierSet(PROJECT["requires-python"])
    for version in ("3.11", "3.12", "3.13", "3.14"):
        assert allowed.contains(version), version
    assert not allowed.contains("3.10")


def test_no_python_the_dependencies_support_is_refused_and_none_they_refuse_is_allowed() -> None:
    allowed = SpecifierSet(PROJECT["requires-python"])
    for line in PROJECT["dependencies"]:
        name = Requirement(line).name
        try:
            needed = metadata(name).get("Requires-Python")
        except PackageNotFoundError:
            continue
        if not needed:
            continue  # nameko declares none: every version
        theirs = SpecifierSet(needed)
        for minor in range(8, 16):
            version = f"3.{minor}"
            if allowed.contains(version):
                assert theirs.contains(version), f"{name} ({needed}) does not support {version}"
        lowest = min(f"3.{minor}" for minor in range(8, 16) if allowed.contains(f"3.{minor}"))
        assert theirs.contains(lowest)
