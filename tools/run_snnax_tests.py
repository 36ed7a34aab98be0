#!/usr/bin/env python
"""Run snnax's own test suite against snnkern (every ``snnax.*`` module aliased to ``snnkern.*``).

    git clone https://github.com/PGI15/snnax /tmp/snnax && git -C /tmp/snnax checkout b7a55c6
    .venv/bin/python tools/run_snnax_tests.py /tmp/snnax/tests [extra pytest args]

Prints "N of M pass" and the failures; a failure of a test listed in ``SNNAX_BUG_TESTS`` (it asserts
snnax behaviour that is a bug; docs/migrating.md says why) is reported as such. Exit status 0 when
every other test passes. snnax's tests are not part of this repository.
"""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from snnkern import snnax_alias  # noqa: E402

# test id (file::name) -> why it fails by design
SNNAX_BUG_TESTS = {
    "composed_test.py::test_gen_feed_forward_struct":
        "it compares with ((0), (), ...), which Python reads as (0, (), ...) (`(0)` is 0, not a tuple); "
        "gen_feed_forward_struct returns tuples of tuples, ((0,), (), ...), in snnax too",
}


class _Results:
    def __init__(self):
        self.passed, self.failed, self.skipped = [], [], []

    def pytest_runtest_logreport(self, report):
        name = report.nodeid.split("/")[-1]
        if report.when == "call" or (report.when == "setup" and not report.passed):
            if report.passed:
                self.passed.append(name)
            elif report.skipped:
                self.skipped.append(name)
            else:
                self.failed.append(name)

    def pytest_collectreport(self, report):
        if report.failed:
            self.failed.append(f"{report.nodeid} (collection error)")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    tests, extra = argv[0], argv[1:]
    if not os.path.isdir(tests):
        print(f"{tests}: not a directory (give the path of snnax's tests/ folder)")
        return 2
    snnax_alias.install()
    res = _Results()
    # -o addopts=: snnax's setup.cfg asks for pytest-cov options; --rootdir keeps its ini out
    pytest.main([tests, "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", tests,
                 "--continue-on-collection-errors", "-W", "ignore::pytest.PytestAssertRewriteWarning", *extra],
                plugins=[res])
    total = len(res.passed) + len(res.failed)
    print(f"\nsnnax's tests through the snnax -> snnkern alias: {len(res.passed)} of {total} pass"
          + (f" ({len(res.skipped)} skipped)" if res.skipped else ""))
    unexpected = []
    for name in res.failed:
        why = SNNAX_BUG_TESTS.get(name.split("[")[0])
        print(f"  FAILED {name}" + (f": asserts a snnax bug: {why}" if why else ""))
        if why is None:
            unexpected.append(name)
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
