"""Runs MySQL Connector/Python's unittests.py unchanged, recording every test's outcome.

usage: mysql_connector_runner.py SDIST RESULTS_JSON [unittests.py options...]

unittests.py prints results interleaved with its own logging, which is hard to parse; this
wraps its test runner so that each outcome is also written to RESULTS_JSON as
{"tests.test_x.Class.test_y": "passed" | "failed" | "skipped"}. With COMPAT_ONLY set (a file
of such ids), exactly those tests are loaded instead of the modules unittests.py would pick.
"""

import json
import os
import re
import signal
import sys
import unittest

sdist, results_path = sys.argv[1], sys.argv[2]
sys.argv = [os.path.join(sdist, "unittests.py")] + sys.argv[3:]
os.chdir(sdist)
sys.path.insert(0, sdist)

import unittests  # noqa: E402  (the sdist's runner; importing it only sets up paths)

OUTCOMES = {}
# A test that waits for an answer that never comes (a client that forces compression on a
# server that did not offer it, say) fails after this long instead of stopping the suite.
TEST_TIMEOUT = int(os.environ.get("COMPAT_TEST_TIMEOUT", "120"))


class TestTimeout(Exception):
    pass


def on_alarm(signum, frame):
    raise TestTimeout(f"the test took over {TEST_TIMEOUT} s")


signal.signal(signal.SIGALRM, on_alarm)


def record(test, outcome):
    test_id = test.id()
    # A failing sub-test fails its test; a class-level error (setUpClass) is its own entry.
    if OUTCOMES.get(test_id) == "failed":
        return
    OUTCOMES[test_id] = outcome


class RecordingResult(unittests.BasicTestResult):
    def startTest(self, test):
        signal.alarm(TEST_TIMEOUT)
        super().startTest(test)

    def stopTest(self, test):
        signal.alarm(0)
        super().stopTest(test)

    def addSuccess(self, test):
        super().addSuccess(test)
        record(test, "passed")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        record(test, "failed")

    def addError(self, test, err):
        super().addError(test, err)
        record(test, "failed")

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        record(test, "skipped")

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        # As pytest's junit report counts an xfail: not run as a pass.
        record(test, "skipped")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        record(test, "failed")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            OUTCOMES[test.id()] = "failed"


# The runner class itself stays (its __init__ names itself in super()); only its results change.
unittests.BasicTestRunner.resultclass = RecordingResult

only = os.environ.get("COMPAT_ONLY")
if only:
    with open(only) as f:
        # Tests run once per connection class are named "... (using MySQLConnection)"; the
        # loader wants the plain method name.
        wanted = sorted({re.sub(r" \(using \w+\)$", "", line.strip()) for line in f
                         if line.strip()})
    load = unittest.TestLoader.loadTestsFromNames

    def load_wanted(self, names, module=None):
        return load(self, wanted, module)

    unittest.TestLoader.loadTestsFromNames = load_wanted

try:
    unittests.main()
finally:
    with open(results_path, "w") as f:
        json.dump(OUTCOMES, f, indent=0, sort_keys=True)
