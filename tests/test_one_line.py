"""failures.one_line_for_failures() leaves standard output as it found it (the lines themselves: test_safeguards.py)."""
import contextlib
import sys

import pytest

import failures


@pytest.mark.parametrize("ending", ["done", "a failure", "a stop"])
def test_standard_output_is_put_back_however_the_block_ends(ending):
    """Within, print() goes through a checking wrapper; after, as before: a caller that goes on (a notebook, the
    tests) must not print through a wrapper of a stream that it may have replaced or closed since."""
    found = sys.stdout
    with contextlib.suppress(SystemExit):
        with failures.one_line_for_failures():
            assert isinstance(sys.stdout, failures.StandardOutput)
            if ending == "a failure":
                raise failures.Failure("error: something")
            if ending == "a stop":
                raise KeyboardInterrupt
    assert sys.stdout is found
