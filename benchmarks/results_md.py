"""The one writer of benchmarks/RESULTS.md: each measuring script owns a block between
``<!-- NAME:BEGIN -->`` and ``<!-- NAME:END -->`` and replaces only that block."""
from __future__ import annotations

import pathlib

RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"


def write_block(name: str, text: str, heading: str = "") -> None:
    """Replace the text between <!-- NAME:BEGIN --> and <!-- NAME:END --> in RESULTS.md
    (appending ``heading`` and the markers at the end when they are missing)."""
    begin, end = f"<!-- {name}:BEGIN -->", f"<!-- {name}:END -->"
    doc = RESULTS.read_text() if RESULTS.exists() else ""
    if begin not in doc:
        doc += f"\n{heading}\n\n{begin}\n{end}\n" if heading else f"\n{begin}\n{end}\n"
    head, rest = doc.split(begin, 1)
    RESULTS.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")
