"""The environment the tests run in is exactly what the locks pin.

``make setup`` installs ``requirements.lock`` and ``installer.lock`` with hash checks and
no resolution. These tests fail loudly when the two drift apart: a package installed
that the locks do not pin (or pin at another version), a pin that was not installed (a
partial install), a requirement or extra of an installed package that nothing installed
meets (a lock compiled without it), or a dependency of ``pyproject.toml`` the lock does
not satisfy (``make lock`` not run after an edit); and an install that left no bytecode.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO

LOCKS = ("requirements.lock", "installer.lock")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
PROJECT = "modelset"


def pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of every ``name==version`` line of a lock file."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            found[canonicalize_name(match[1])] = match[2]
    return found


def locked() -> dict[str, str]:
    merged: dict[str, str] = {}
    for name in LOCKS:
        merged.update(pins(REPO / name))
    return merged


def installed() -> dict[str, str]:
    return {
        canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()
    }


def test_the_locks_pin_every_file_with_a_hash() -> None:
    for name in LOCKS:
        text = (REPO / name).read_text()
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        for block in blocks:
            if PIN.match(block):
                assert "--hash=sha256:" in block, f"{name}: {block.splitlines()[0]} has no hash"


def test_every_installed_package_is_pinned_at_its_installed_version() -> None:
    pinned = locked()
    drift = {
        name: (version, pinned.get(name, "not in the locks"))
        for name, version in installed().items()
        if name != PROJECT and pinned.get(name) != version
    }
    assert drift == {}, f"installed vs locked: {drift}"


def test_every_pin_is_installed() -> None:
    present = installed()
    missing = {name: version for name, version in locked().items() if present.get(name) != version}
    assert missing == {}, f"pinned but not installed at that version: {missing}"
    assert PROJECT in present


def unmet_requirements() -> list[str]:
    """What an installed package (or an extra another one asks of it) requires and no
    installed version meets: ``pip check``, extras included."""
    present = installed()
    environment = {key: str(value) for key, value in default_environment().items()}
    unmet: list[str] = []
    # The project is installed without its extra, but its tests run with it.
    todo: list[tuple[str, str]] = [(name, "") for name in present] + [(PROJECT, "dev")]
    seen: set[tuple[str, str]] = set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for line in metadata.distribution(name).requires or []:
            requirement = Requirement(line)
            marker_env = {**environment, "extra": extra}
            if requirement.marker is not None and not requirement.marker.evaluate(marker_env):
                continue
            if extra and (requirement.marker is None or "extra" not in str(requirement.marker)):
                continue  # the package's own requirements, checked without an extra
            target = canonicalize_name(requirement.name)
            version = present.get(target)
            if version is None or not requirement.specifier.contains(
                Version(version), prereleases=True
            ):
                unmet.append(f"{name}{f'[{extra}]' if extra else ''} needs {requirement}")
                continue
            todo.extend((target, wanted) for wanted in requirement.extras)
    return sorted(unmet)


def test_every_requirement_and_extra_of_an_installed_package_is_met() -> None:
    assert unmet_requirements() == []


def test_the_lock_satisfies_the_projects_dependencies() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    pinned = locked()
    unsatisfied = []
    for line in wanted:
        requirement = Requirement(line)
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            unsatisfied.append(f"{line} (locked: {version})")
    assert unsatisfied == [], "run `make lock`: " + ", ".join(unsatisfied)


def test_the_installed_packages_are_compiled_to_bytecode() -> None:
    # Where PYTHONDONTWRITEBYTECODE is set, nothing but the install writes a .pyc: without
    # it every process (each flow run on a worker, each subprocess of the suite) compiles
    # every module it imports, about half of such a process's CPU.
    import prefect.engine

    source = Path(prefect.engine.__file__)
    compiled = Path(importlib.util.cache_from_source(str(source)))
    assert compiled.is_file(), f"{source} has no bytecode: install with --compile-bytecode"


def test_malloc_arenas_are_capped_unless_the_user_chose_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelset.memory import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_malloc_arenas() is False  # theirs stands
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert limit_malloc_arenas() is True  # this machine's Python runs on glibc
