"""This node's copy of one peer's consent revocations (services/common/revocations.py).

Follows the peer's ``ConsentService.StreamRevocations`` for ever and writes each revocation it
does not hold yet to the node's ``consent.revocations.v1``, from where every local process that
verifies consent reads it. A peer may revoke only its own tokens: a revocation naming another
issuer is dropped (and logged), so no city can withdraw consent another city gave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC

import grpc
import structlog

from creditlink.peer.v1 import consent_pb2, consent_pb2_grpc
from services.common.kafka import EventPublisher
from services.common.region import City
from services.common.revocations import Revocation, Revocations, publish_revocation
from services.lists.mirror import Backoff

log = structlog.get_logger("revocation-mirror")


class RevocationMirror:
    def __init__(
        self,
        peer: City,
        channel_factory: Callable[[], grpc.aio.Channel],
        revocations: Revocations,
        publisher: EventPublisher,
    ) -> None:
        self.peer = peer
        self._channel_factory = channel_factory
        self._revocations = revocations
        self._publisher = publisher
        self._backoff = Backoff(initial=0.2, maximum=5.0)
        self.caught_up = asyncio.Event()

    async def follow(self) -> None:
        """Follow the peer's revocations for ever, reconnecting with backoff."""
        failures = 0
        while True:
            try:
                await self._follow_once()
                failures = 0
            except grpc.aio.AioRpcError as exc:
                failures += 1
                log.info(
                    "peer_revocations_broken",
                    peer=self.peer.key,
                    code=exc.code().name,
                    attempt=failures,
                )
                await asyncio.sleep(self._backoff.delay(failures))

    async def _follow_once(self) -> None:
        async with self._channel_factory() as channel:
            stub = consent_pb2_grpc.ConsentServiceStub(channel)
            stream = stub.StreamRevocations(consent_pb2.StreamRevocationsRequest(follow=True))
            async for message in stream:
                if message.caught_up:
                    self.caught_up.set()
                    continue
                if message.HasField("revocation"):
                    await self._apply(message.revocation)

    async def _apply(self, message: consent_pb2.ConsentRevocation) -> None:
        if message.issuer_city != self.peer.admin_code:
            log.warning(
                "peer_revocation_of_another_city_dropped",
                peer=self.peer.key,
                issuer_city=message.issuer_city,
            )
            return
        if message.token_id in self._revocations:
            return
        revocation = Revocation(
            token_id=message.token_id,
            issuer_city=message.issuer_city,
            revoked_at=message.revoked_at.ToDatetime(tzinfo=UTC),
            expires_at=message.expires_at.ToDatetime(tzinfo=UTC),
        )
        await publish_revocation(self._publisher, revocation)
        self._revocations.add(revocation)
