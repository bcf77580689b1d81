"""Runbooks 4.1 and 5.2: the high-load response (plan, guarded signals, scaling, report) and the alert actions'
remediation and disk-pressure steps."""
