"""Classifying a valid record as new, duplicate or correction against the ledger."""
