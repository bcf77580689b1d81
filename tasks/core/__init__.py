"""What every runbook shares: the database gateway (db), typed errors, Slack threads and publishing, findings,
version capabilities, session and relation reads. Imports no runbook package."""
