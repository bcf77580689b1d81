"""Runbook 4.2: failover and switchover (model, plan, steps, run context and journal, hooks, locks, followers),
the backstop, rejoin, and the node and endpoint adapters."""
