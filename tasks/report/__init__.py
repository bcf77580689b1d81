"""Runbooks 1.2, 3.1 and 3.2: the daily performance report (its reads, deltas and store) and both
troubleshooters' rules."""
