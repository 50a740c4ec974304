"""Test kits: sample data, fakes and region runners that tests, benches and the demo share.

Nothing under ``services/`` imports from here.
"""
