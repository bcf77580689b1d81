"""Runbook 5.1: alert rules, the pure for:-evaluator, sampling, state per cluster, Slack per episode, and the
actions an alert starts."""
