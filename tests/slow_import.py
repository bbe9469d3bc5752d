"""A module that takes seconds to import: tests/test_warm_starts.py has the warm server import it
ahead, to see that a task is forked without waiting for it."""

import time

time.sleep(10)
