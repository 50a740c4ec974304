"""Partition discovery for the topics a node reads with manual assignment."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition


async def topic_partitions(
    bootstrap: str, topics: Sequence[str], *, wait_s: float = 30.0
) -> list[TopicPartition]:
    """Every partition of ``topics`` (physical names), waiting up to ``wait_s`` for topics
    that were just provisioned and are not in the metadata yet. Raises ``RuntimeError``
    naming the topics still missing after that."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="alerts-metadata")
    try:
        # Inside the try: a node stopped while starting cancels us here, and the half-open
        # bootstrap connection must still be closed.
        await admin.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            described = await admin.describe_topics(list(topics))
            found = {
                t["topic"]: sorted(p["partition"] for p in t["partitions"])
                for t in described
                if t["error_code"] == 0 and t["partitions"]
            }
            missing = [t for t in topics if t not in found]
            if not missing:
                return [TopicPartition(t, p) for t in topics for p in found[t]]
            if loop.time() > deadline:
                raise RuntimeError(
                    f"topics missing: {', '.join(missing)} (provision them: make topics)"
                )
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
