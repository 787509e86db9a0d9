"""Time every chapter notebook end to end and write the table into README.md.

    python scripts/time_chapters.py                 # smoke and class scale, all chapters
    python scripts/time_chapters.py --scales smoke  # one scale
    python scripts/time_chapters.py --only 03       # chapters whose name contains 03

Each notebook is executed in a fresh kernel with ``DROPLAB_SCALE`` set; the
measured wall times replace the rows between the ``chapter-timings`` markers of
README.md, together with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- chapter-timings -->", "<!-- /chapter-timings -->"


def chapters() -> list[Path]:
    return sorted(p for p in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


def run(notebook: Path, scale: str) -> float:
    env = dict(os.environ, DROPLAB_SCALE=scale, MPLBACKEND="Agg")
    env.pop("CI", None)
    with tempfile.TemporaryDirectory() as tmp:
        env.setdefault("DROPLAB_RESULTS", tmp)  # fresh records: time the training, not a cache hit
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                        "--ExecutePreprocessor.timeout=1800", "--output-dir", tmp, str(notebook)],
                       env=env, check=True, capture_output=True, cwd=notebook.parent)
        return time.perf_counter() - start


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="+", default=["smoke", "class"], choices=["smoke", "class", "paper"])
    parser.add_argument("--only", default="")
    args = parser.parse_args(argv)

    text = README.read_text()
    old = dict(re.findall(r"^\| `([^`]+)` \| (.*) \|$", text, flags=re.MULTILINE))
    rows = {}
    for nb in chapters():
        cells = [c.strip() for c in old.get(nb.stem, "– | –").split("|")]
        times = dict(zip(["smoke", "class"], cells + ["–"] * (2 - len(cells))))
        if args.only in nb.stem:
            for scale in args.scales:
                seconds = run(nb, scale)
                times[scale] = fmt(seconds)
                print(f"{nb.stem:32s} {scale:6s} {fmt(seconds):>8s}", flush=True)
        rows[nb.stem] = times
    import datetime

    import torch

    from droplab import repro

    threads = os.environ.get("OMP_NUM_THREADS", "torch's default")
    machine = (f"{repro.cpu_model()} ({torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} cores, "
               f"{threads} torch thread(s), torch {torch.__version__}, no GPU used, "
               f"{datetime.date.today().isoformat()}")
    table = "\n".join(["| chapter | smoke | class |", "|---|---|---|"]
                      + [f"| `{stem}` | {t['smoke']} | {t['class']} |" for stem, t in rows.items()])
    block = f"{START}\n{table}\n\nMeasured on: {machine}.\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), block, text, flags=re.DOTALL)
    else:
        text = text.replace(START, block)
    README.write_text(text)


if __name__ == "__main__":
    main()
