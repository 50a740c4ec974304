"""Validating a submission against the disclosure rules."""
