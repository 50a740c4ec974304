"""The importing process's helpers for worker processes: partitions and chunks."""

from __future__ import annotations

import io

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from services.intake.prepare import split_file
from services.intake.publish.partitioning import partition_for


@settings(max_examples=2000)
@given(st.binary(max_size=90), st.integers(1, 64))
def test_partition_for_is_the_default_partitioners(key: bytes, count: int) -> None:
    partitions = list(range(count))
    assert partition_for(key, count) == DefaultPartitioner()(key, partitions, partitions)


def test_subject_key_shapes_and_short_tails_partition_as_aiokafka_does() -> None:
    # aiokafka's murmur2 is a port of the Java client's Utils.murmur2.
    partitions = list(range(6))
    for key in (b"L:91320500MA1W8XY409", b"N:" + b"ab" * 32, b"", b"a", b"ab", b"abc"):
        assert partition_for(key, 6) == DefaultPartitioner()(key, partitions, partitions)


def test_plain_lines_and_quoted_records_split_at_the_same_places() -> None:
    """Lines without quotes are records by themselves; a quoted field spanning lines keeps
    its record whole across the chunk size."""
    data = b'decision_number,violation\nA1,x\nA2,"spans\ntwo lines"\nA3,y\r\nA4,"q""uote"\nA5,z\n'
    chunks = list(split_file(io.BytesIO(data), "csv", "f.csv", chunk_lines=2))
    assert [(c.first_line, c.body) for c in chunks] == [
        (2, b'A1,x\nA2,"spans\ntwo lines"\n'),
        (5, b'A3,y\nA4,"q""uote"\n'),
        (7, b"A5,z\n"),
    ]
    assert {c.header for c in chunks} == {b"decision_number,violation\n"}


@pytest.mark.parametrize("read_size", [1, 2, 3, 5, 8, 13, 64])
def test_chunks_do_not_depend_on_how_the_body_is_read(read_size: int) -> None:
    """The body is read in blocks; plain blocks are taken many lines at a time, the others
    line by line. Block edges (inside a line, a quoted record, a CR LF) change nothing."""
    data = (
        b"\xef\xbb\xbfdecision_number,violation\r\n"
        b'A1,x\nA2,"spans\ntwo lines"\nA3,y\r\nA4,"q""uote"\n\nA5,z\nA6,\xe4\xb8\xad\nA7,w'
    )
    for chunk_lines in (1, 2, 3, 100):
        whole = list(split_file(io.BytesIO(data), "csv", "f.csv", chunk_lines))
        pieces = list(split_file(io.BytesIO(data), "csv", "f.csv", chunk_lines, read_size))
        assert pieces == whole
    body = b'A1,x\nA2,"spans\ntwo lines"\nA3,y\nA4,"q""uote"\n\nA5,z\nA6,\xe4\xb8\xad\nA7,w\n'
    assert [(c.first_line, c.body) for c in whole] == [(2, body)]
