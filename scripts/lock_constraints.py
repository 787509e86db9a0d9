"""Write constraints.txt: the exact version of every package that `pip install -e ".[book,test]"`
installed into this environment (droplab's requirements and theirs, all the way down).

    python -m venv .venv && . .venv/bin/activate
    pip install -e ".[book,test]"              # the newest releases pyproject.toml admits
    python scripts/lock_constraints.py         # check them, then pin them in constraints.txt

pyproject.toml says what droplab needs (ranges); constraints.txt says what CI, Binder and the
conda route install (`pip install -c constraints.txt ...`), so a new release of anything changes
the book only when this file changes. Refuses, naming them, installed versions that
pyproject.toml's own ranges (or a dependency's) exclude: install again before locking.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("book", "test")
HEADER = """\
# The exact versions CI installs (.ci/run), and Binder and the conda route with it: the one place
# where droplab's dependencies are pinned. pyproject.toml states the ranges droplab works with.
#   pip install -c constraints.txt -e ".[book,test]"
# Made by `python scripts/lock_constraints.py` from an environment installed from pyproject.toml.
"""


def closure(roots: list[Requirement]) -> tuple[dict[str, str], list[str]]:
    """Installed versions of ``roots`` and everything they require (markers evaluated here),
    and the requirements that the installed versions do not satisfy."""
    versions: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}
    problems: list[str] = []
    todo = [(req, "pyproject.toml") for req in roots]
    while todo:
        req, wanted_by = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            problems.append(f"{req} (wanted by {wanted_by}) is not installed")
            continue
        version = dist.version
        if not req.specifier.contains(Version(version).public, prereleases=True):
            problems.append(f"{name} {version} is installed, but {wanted_by} wants {req}")
        known = extras_seen.get(name)
        if known is not None and set(req.extras) <= known:
            continue
        extras_seen[name] = (known or set()) | set(req.extras)
        versions[name] = Version(version).public        # PyPI serves no local versions (+cu130, +cpu)
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras_seen[name] or {""}):
                todo.append((sub, f"{name} {version}"))
    return versions, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "constraints.txt")
    args = parser.parse_args(argv)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = [Requirement(r) for r in project["dependencies"]]
    roots += [Requirement(r) for extra in EXTRAS for r in project["optional-dependencies"][extra]]
    versions, problems = closure(roots)
    if problems:
        print("lock_constraints: this environment is not one pyproject.toml admits:", file=sys.stderr)
        for problem in sorted(set(problems)):
            print(f"  {problem}", file=sys.stderr)
        print('install it again (pip install -e ".[book,test]") and rerun', file=sys.stderr)
        return 1
    versions.pop("droplab", None)
    lines = [f"{name}=={version}" for name, version in sorted(versions.items())]
    args.output.write_text(HEADER + "\n".join(lines) + "\n")
    print(f"{args.output}: {len(lines)} packages pinned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
