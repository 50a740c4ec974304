"""The audit chain writer of every node, against the real broker.

What a node relies on: every appended entry becomes one record of one unbroken chain, also
entries made when their batch is sent; an append returns once the broker has the record,
and fails when the broker does not acknowledge it; a writer started again continues the
chain. (A writer that cannot extend its chain makes the guard refuse calls:
tests/integration/test_peer_security.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.audit import (
    AUDIT_TOPIC,
    GENESIS_HASH,
    SCHEMA,
    AuditChainWriter,
    AuditEntry,
    AuditUnavailable,
    chain_hash,
    cli,
    format_key,
    read_audit_topic,
    verify_chain,
)
from services.common.audit.signing import (
    AuditKeyring,
    AuditSigner,
    key_id_of,
    load_audit_signer,
    new_audit_key_files,
)
from services.common.avro import AvroSerde
from services.common.kafka import make_producer
from services.common.settings import Settings
from tests.peer_kit import ORG, audit_node_settings

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

SUZHOU = "320500"


@pytest.fixture
async def settings(kafka_bootstrap: str) -> Settings:
    return await audit_node_settings(kafka_bootstrap)


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    producer = make_producer(settings, client_id="audit-writer-test")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


Writer = Callable[..., AuditChainWriter]


@pytest.fixture
def writer_for(settings: Settings, producer: AIOKafkaProducer) -> Writer:
    def make(chain: str = "lists", **options: object) -> AuditChainWriter:
        return AuditChainWriter(
            settings,
            AvroSerde(),
            producer,
            node_city=SUZHOU,
            chain=chain,
            service="lists",
            **options,  # type: ignore[arg-type]
        )

    return make


@pytest.fixture
async def writer(writer_for: Writer) -> AuditChainWriter:
    writer = writer_for()
    await writer.start()
    return writer


def _entry(n: int) -> AuditEntry:
    return AuditEntry(
        caller_city="320200",
        callee_city=SUZHOU,
        method="/creditlink.peer.v1.CreditCheckService/CheckSubject",
        purpose=f"call {n}",
        status_code="OK",
        latency_ms=n % 7,
        at=datetime.now(UTC),
        subject_key=ORG,
    )


async def _records(settings: Settings) -> list[dict[str, object]]:
    serde = AvroSerde()
    messages = await read_audit_topic(settings, settings.topic(AUDIT_TOPIC))
    assert verify_chain(messages).ok
    return [serde.decode(m.value) for m in messages]


async def test_every_entry_is_one_record_of_one_unbroken_chain(
    settings: Settings, writer: AuditChainWriter
) -> None:
    appended = []
    for n in range(150):
        appended.append(asyncio.create_task(writer.append(_entry(n))))
        if n % 40 == 0:
            await asyncio.sleep(0.03)  # several batches, not one
    # An entry made when its batch is sent.
    appended.append(asyncio.create_task(writer.append(lambda: _entry(150))))
    await asyncio.gather(*appended)
    assert writer.head[0] == 151
    records = await _records(settings)
    assert [r["seq"] for r in records] == list(range(1, 152))
    assert [r["purpose"] for r in records] == [f"call {n}" for n in range(151)]
    assert records[-1]["hash"] == writer.head[1]


async def test_an_append_returns_once_the_broker_has_the_record(
    settings: Settings, writer: AuditChainWriter
) -> None:
    await writer.append(_entry(1))
    assert writer.head[0] == 1
    records = await _records(settings)  # no flush: the record is there already
    assert [r["purpose"] for r in records] == ["call 1"]


async def test_a_call_that_goes_away_does_not_take_its_batch_with_it(
    settings: Settings, writer: AuditChainWriter
) -> None:
    """The calls of one batch wait on one delivery: a call cancelled while it waits (its
    caller went away) leaves the others' wait, and its own record, alone."""
    gone = asyncio.create_task(writer.append(_entry(1)))
    stays = asyncio.create_task(writer.append(_entry(2)))
    await asyncio.sleep(0)  # both queued, in one batch
    gone.cancel()
    await stays
    assert writer.healthy
    assert [r["purpose"] for r in await _records(settings)] == ["call 1", "call 2"]


async def test_a_record_the_broker_does_not_acknowledge_fails_its_append_and_the_writer(
    settings: Settings,
    writer_for: Writer,
    producer: AIOKafkaProducer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer = writer_for("refused")
    await writer.start()

    async def unacknowledged(*_: object, **__: object) -> asyncio.Future[None]:
        delivery = asyncio.get_running_loop().create_future()
        delivery.set_exception(KafkaTimeoutError("no acknowledgement"))
        return delivery

    monkeypatch.setattr(producer, "send_batch", unacknowledged)
    with pytest.raises(AuditUnavailable, match="not delivered"):
        await writer.append(_entry(1))
    assert not writer.healthy
    with pytest.raises(AuditUnavailable, match="failed"):
        await writer.append(_entry(2))


async def test_a_writer_started_again_continues_the_chain(
    settings: Settings, writer: AuditChainWriter, writer_for: Writer
) -> None:
    await asyncio.gather(*(writer.append(_entry(n)) for n in range(5)))
    again = writer_for()
    await again.start()
    assert again.head == writer.head
    assert again.head[0] == 5
    await again.append(_entry(5))
    records = await _records(settings)
    assert [r["seq"] for r in records] == list(range(1, 7))


async def test_a_writer_continues_a_chain_written_with_schema_v1(
    settings: Settings, producer: AIOKafkaProducer, writer_for: Writer
) -> None:
    """A node upgraded to PeerCallAudit v2 (the denial code) extends the chain its older
    release wrote with v1; the whole chain verifies, each record under its own schema."""
    serde = AvroSerde()
    previous = GENESIS_HASH
    for seq in (1, 2):
        old: dict[str, object] = {
            "seq": seq,
            "node_city": SUZHOU,
            "direction": "INBOUND",
            "caller_city": "320400",
            "callee_city": SUZHOU,
            "method": "/creditlink.peer.v1.CreditCheckService/CheckSubjects",
            "subject_key": None,
            "purpose": "CREDIT_CHECK",
            "consent_reference": None,
            "status_code": "PERMISSION_DENIED",
            "latency_ms": 1,
            "trace_id": None,
            "peer_certificate_sha256": None,
            "at": datetime.now(UTC),
            "prev_hash": previous,
            "hash": "",
        }
        old["hash"] = previous = chain_hash(serde, old, version=1)
        await producer.send_and_wait(
            settings.topic(AUDIT_TOPIC),
            key=format_key("lists", seq).encode(),
            value=serde.encode(SCHEMA, old, version=1),
            partition=0,
        )
    writer = writer_for()
    await writer.start()
    assert writer.head == (2, previous)
    refused = _entry(3)
    refused.status_code, refused.denial_code = "PERMISSION_DENIED", "policy-denied"
    await asyncio.gather(writer.append(refused), writer.append(_entry(4)))
    messages = await read_audit_topic(settings, settings.topic(AUDIT_TOPIC))
    # One chain, two schema versions of it (v1 and the latest): each hashed under its own.
    latest = serde.writer_schema(SCHEMA).version
    assert [serde.writer_of(m.value).version for m in messages] == [1, 1, latest, latest]
    records = await _records(settings)
    assert [(r["seq"], r["status_code"], r["denial_code"]) for r in records] == [
        (1, "PERMISSION_DENIED", None),  # written before the code was recorded
        (2, "PERMISSION_DENIED", None),
        (3, "PERMISSION_DENIED", "policy-denied"),
        (4, "OK", None),
    ]


async def test_signed_heads_vouch_for_the_chain_and_a_forged_extension_is_unsigned(
    settings: Settings, producer: AIOKafkaProducer, writer_for: Writer
) -> None:
    """Each batch ends with a record signed by the city's audit key; a verifier with the
    published keys accepts the chain, and names the position of records appended by someone
    who can write the topic (valid hashes, no key) and of a signature under another key."""
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keyring = AuditKeyring(
        {
            key_id_of(old.public_key()): (SUZHOU, old.public_key()),
            key_id_of(new.public_key()): (SUZHOU, new.public_key()),
        }
    )
    # Records signed with a key since rotated away stay verifiable.
    writer = writer_for("signed", signer=AuditSigner(SUZHOU, old))
    await writer.start()
    await asyncio.gather(*(writer.append(_entry(n)) for n in range(30)))
    rotated = writer_for("signed", signer=AuditSigner(SUZHOU, new))
    await rotated.start()
    appended = []
    for n in range(30, 60):
        appended.append(asyncio.create_task(rotated.append(_entry(n))))
        if n % 10 == 0:
            await asyncio.sleep(0.03)
    await asyncio.gather(*appended)
    messages = await read_audit_topic(settings, settings.topic(AUDIT_TOPIC))
    assert sum(m.signature is not None for m in messages) >= 2
    assert verify_chain(messages, keyring=keyring).ok
    # The writer of an unsigned chain (the same topic) extends "signed" with valid hashes.
    forger = writer_for("signed")
    await forger.start()
    await asyncio.gather(*(forger.append(_entry(n)) for n in range(60, 63)))
    messages = await read_audit_topic(settings, settings.topic(AUDIT_TOPIC))
    report = verify_chain(messages, keyring=keyring)
    assert verify_chain(messages).ok  # the hashes alone cannot tell
    [problem] = report.problems
    assert (problem.kind, problem.seq) == ("unsigned", 61)
    assert problem.offset == messages[-3].offset
    # A head signed by another city's key is named where it is.
    wuxi = Ed25519PrivateKey.generate()
    keyring = AuditKeyring(
        {**keyring.keys, key_id_of(wuxi.public_key()): ("320200", wuxi.public_key())}
    )
    impostor = writer_for("signed", signer=AuditSigner(SUZHOU, wuxi))
    await impostor.start()
    await impostor.append(_entry(63))
    messages = await read_audit_topic(settings, settings.topic(AUDIT_TOPIC))
    problems = verify_chain(messages, keyring=keyring).problems
    assert [(p.kind, p.seq) for p in problems] == [("unsigned", 61), ("bad-signature", 64)]
    assert "320200's key" in problems[1].detail


async def test_audit_verify_names_unsigned_records_from_the_command_line(
    settings: Settings, writer_for: Writer, tmp_path: Path
) -> None:
    new_audit_key_files(tmp_path, "suzhou")
    writer = writer_for("cli", signer=load_audit_signer(tmp_path, "suzhou", SUZHOU))
    await writer.start()
    await writer.append(_entry(1))
    argv = ["verify", "--bootstrap", settings.kafka_bootstrap, "--topic", writer.topic]
    signed = ["--keys", str(tmp_path), "--region", str(settings.region_file)]
    assert await asyncio.to_thread(cli.main, [*argv, *signed]) == 0
    forger = writer_for("cli")
    await forger.start()
    await forger.append(_entry(2))
    assert await asyncio.to_thread(cli.main, argv) == 0  # without keys the hashes pass
    assert await asyncio.to_thread(cli.main, [*argv, *signed]) == 1


async def test_audit_query_from_the_command_line(
    settings: Settings, writer: AuditChainWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    await writer.append(_entry(1))
    argv = ["query", "--bootstrap", settings.kafka_bootstrap, "--topic", writer.topic]
    assert await asyncio.to_thread(cli.main, [*argv, "--subject", ORG]) == 0
    out = capsys.readouterr().out
    assert "1 call(s) about the subject" in out
    assert "320200 - -> 320500 CheckSubject  purpose 'call 1'  OK" in out
    # An ID number is refused, and not echoed.
    assert await asyncio.to_thread(cli.main, [*argv, "--subject", "L:32050519900307123X"]) == 2
    captured = capsys.readouterr()
    assert "32050519900307123X" not in captured.out + captured.err
