"""Encoding records as Avro CloudEvents."""
