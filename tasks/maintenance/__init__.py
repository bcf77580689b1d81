"""Runbooks 2.1 to 2.3: vacuum, bloat analysis, index maintenance and the maintenance log they share."""
