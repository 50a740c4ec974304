"""Figures and queries over what intake has recorded: disclosure quality, overdue days."""
