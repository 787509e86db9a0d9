"""Write the README's table of one-click links (Colab and Binder, one row a chapter) from _config.yml.

    python scripts/launch_links.py           # rewrite the table between the launch-links markers
    python scripts/launch_links.py --check   # exit 1 if the README's table is not what _config.yml says

The repository's address is written once, as ``repository: url`` (and ``branch``) in _config.yml;
this table is made from it, so a fork that changes the address runs this script (a test checks
the README agrees).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- launch-links -->", "<!-- /launch-links -->"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
BINDER_BADGE = "https://mybinder.org/badge_logo.svg"


def chapters() -> list[str]:
    """The chapter notebooks of _toc.yml, in reading order, as paths relative to the repository."""
    from sphinx_external_toc.parsing import parse_toc_yaml

    return [f"{e}.ipynb" for e in parse_toc_yaml(ROOT / "_toc.yml") if (ROOT / f"{e}.ipynb").exists()]


def block() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    url, branch = config["repository"]["url"].rstrip("/"), config["repository"].get("branch", "main")
    owner_name = url.removeprefix("https://github.com/")
    binder = config.get("launch_buttons", {}).get("binderhub_url", "https://mybinder.org").rstrip("/")
    rows = ["| chapter | Colab | Binder (JupyterLab) |", "|---|---|---|"]
    for path in chapters():
        colab = f"https://colab.research.google.com/github/{owner_name}/blob/{branch}/{path}"
        lab = f"{binder}/v2/gh/{owner_name}/{branch}?urlpath=lab/tree/{path}"
        rows.append(f"| `{Path(path).stem}` | [![Open in Colab]({COLAB_BADGE})]({colab}) "
                    f"| [![Launch Binder]({BINDER_BADGE})]({lab}) |")
    colab_env = (f"On Colab, add a cell above the first one with `%env DROPLAB_REPOSITORY={url}` and run the "
                 "chapter: its first cell then installs droplab from that repository (Colab already has torch).")
    return "\n".join([START, *rows, "", colab_env, END])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check the README; exit 1 if it differs")
    args = parser.parse_args(argv)
    text = README.read_text()
    if START not in text or END not in text:
        sys.exit(f"README.md has no {START} ... {END} markers: add them where the table belongs")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    new = before + block() + after
    if args.check:
        if new != text:
            print("README.md's launch links differ from _config.yml: run python scripts/launch_links.py",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
