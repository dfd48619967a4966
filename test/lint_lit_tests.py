#!/usr/bin/env python3
"""Fails on lit test files that cannot fail.

A test file (`.mlir` or `.test` under the given folder, `Inputs/` excluded) is
rejected when
  * a line looks like a RUN line but lacks its colon (`// RUN foo`): lit
    silently skips it, so the test would run nothing;
  * it has no RUN line at all;
  * it contains no FileCheck directive (`CHECK...:`) and no `expected-...`
    diagnostic, so nothing it prints is ever compared.

Usage: lint_lit_tests.py FOLDER...   (prints one line per problem; exit 1)
"""

import pathlib
import re
import sys

RUN_WITHOUT_COLON = re.compile(r"^\s*(//|#|;)\s*RUN\b(?!:)")
RUN_LINE = re.compile(r"^\s*(//|#|;)\s*RUN:")
CHECK_LINE = re.compile(r"\b[A-Z][A-Z0-9_-]*(-NEXT|-SAME|-NOT|-DAG|-LABEL|-EMPTY)?:")
EXPECTED = re.compile(r"expected-(error|warning|remark|note)")
CHECKED_BY_PREFIX = re.compile(r"--check-prefix(?:es)?[= ]([A-Za-z0-9_,-]+)")


def problems(path):
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    found = []
    for number, line in enumerate(lines, 1):
        if RUN_WITHOUT_COLON.match(line):
            found.append(f"{path}:{number}: RUN line without its colon never runs")
    if not any(RUN_LINE.match(line) for line in lines):
        found.append(f"{path}: no RUN line")
    prefixes = {"CHECK"}
    for match in CHECKED_BY_PREFIX.finditer(text):
        prefixes.update(match.group(1).split(","))
    has_check = any(re.search(rf"\b{re.escape(p)}(-[A-Z]+)?:", text) for p in prefixes)
    if not has_check and not EXPECTED.search(text):
        found.append(f"{path}: no CHECK line and no expected-* diagnostic")
    return found


def main(folders):
    count = 0
    failures = []
    for folder in folders:
        for path in sorted(pathlib.Path(folder).rglob("*")):
            relative = path.relative_to(folder).parts
            if path.suffix not in (".mlir", ".test") or "Inputs" in relative:
                continue
            count += 1
            failures += problems(path)
    for failure in failures:
        print(failure)
    print(f"checked {count} test files, {len(failures)} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["."]))
