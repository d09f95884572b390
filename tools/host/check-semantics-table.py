#!/usr/bin/env python3
"""check-semantics-table.py — the documented differences and the asserted ones are the same list.

Specs/nfs-semantics.md, section "Where it differs from a local file system", has one table row per
difference of the NFS backend from a local file system; tools/host/posix_check.py asserts each as the
backend behaves (--semantics nfs3). A row without a case is a claim nothing checks; a case without
a row is a behaviour nobody was told about. This compares the two lists and fails on any
difference, naming it.

Usage: check-semantics-table.py [--spec Specs/nfs-semantics.md] [--semantics nfs3]
       check-semantics-table.py --self-test   (a row added and a row dropped must both be caught)
Exit status: 0 equal, 1 different (or the self-test missed something), 2 on a setup error.
"""
import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SECTION = "## Where it differs from a local file system"


def documented(text):
    """The first-column case names of the table under SECTION."""
    start = text.find(SECTION)
    if start < 0:
        raise SystemExit(f"check-semantics-table: no section '{SECTION}'")
    names = []
    for line in text[start + len(SECTION):].splitlines():
        if line.startswith("## "):
            break
        match = re.match(r"^\|\s*`([^`]+)`\s*\|", line)
        if match:
            names.append(match.group(1))
    if not names:
        raise SystemExit("check-semantics-table: the section has no table rows naming a case")
    return names


def asserted(semantics):
    listing = subprocess.run([sys.executable, os.path.join(HERE, "posix_check.py"), "--semantics", semantics,
                              "--list-semantics"], capture_output=True, text=True)
    if listing.returncode != 0:
        raise SystemExit(f"check-semantics-table: posix_check --list-semantics failed: {listing.stderr.strip()}")
    return [line.strip() for line in listing.stdout.splitlines() if line.strip()]


def differences(rows, cases):
    problems = [f"documented in the spec, asserted by no case: {name}" for name in rows if name not in cases]
    problems += [f"asserted by posix_check, missing from the spec: {name}" for name in cases if name not in rows]
    problems += [f"documented twice: {name}" for name in sorted(set(rows)) if rows.count(name) > 1]
    return problems


def self_test(rows, cases):
    missed = []
    if not differences(rows + ["a_claim_nothing_checks"], cases):
        missed.append("a row without a case")
    if not differences(rows[1:], cases):
        missed.append("a case without a row")
    if not differences(rows + rows[:1], cases):
        missed.append("a row twice")
    return missed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default=os.path.join(HERE, "..", "..", "Specs", "nfs-semantics.md"))
    ap.add_argument("--semantics", default="nfs3")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    with open(args.spec) as spec:
        rows = documented(spec.read())
    cases = asserted(args.semantics)
    if args.self_test:
        missed = self_test(rows, cases)
        print(f"check-semantics-table: self-test {'FAILED, not caught: ' + ', '.join(missed) if missed else 'ok: all three caught'}")
        return 1 if missed else 0
    problems = differences(rows, cases)
    for problem in problems:
        print(f"FAIL {problem}")
    print(f"check-semantics-table: {len(rows)} rows, {len(cases)} cases, {len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
