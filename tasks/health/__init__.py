"""Runbook 1.1, the health check: reads per node (checks) and the pure decisions and renderings (report)."""
