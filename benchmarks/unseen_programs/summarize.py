"""Summarise the QA runs: one line per output file in qa/out/ (program, seed, kind, counts, WARNING/ERROR codes).

cd qa && for f in [hbt]*.py; do PYTHONPATH=/work/main python $f > out/${f%.py}.txt 2>&1; done; python summarize.py
"""

from __future__ import annotations

import re
from pathlib import Path


def main() -> None:
    for path in sorted(Path(__file__).with_name("out").glob("[hbt]*.txt")):
        text = path.read_text()
        kind = re.search(r"^=== \S+: (\w+)", text, re.M)
        summary = re.search(r"^--- summary: (\{.*?\})", text, re.M)
        codes = re.findall(r"^  (ERROR|WARNING) +(\S+)", text, re.M)
        crashed = "Traceback" in text
        internal = "sanity.internal_error" in text
        flags = " CRASH" if crashed else ""
        flags += " INTERNAL_ERROR" if internal else ""
        loud = ", ".join(f"{sev[0]}:{code}" for sev, code in codes) or "-"
        print(
            f"{path.stem:48} {kind.group(1) if kind else '?':8} {summary.group(1) if summary else 'NO REPORT':45} "
            f"{loud}{flags}"
        )


if __name__ == "__main__":
    main()
