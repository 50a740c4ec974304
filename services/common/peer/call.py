"""The call being served, and the one way a servicer refuses it (:func:`deny`)."""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc

from services.common.audit.chain import ExchangeDigest
from services.common.cloudevents import is_valid_traceparent
from services.common.consent import ConsentGrant
from services.common.peer.identity import PeerIdentity
from services.common.peer.names import DENIAL_TRAILER
from services.common.peer.purpose import _metadata_value, _purpose
from services.common.policy import Decision


@dataclass(slots=True)
class PeerCall:
    """What the peer-call guard learnt about the current call; servicers read it.

    ``purpose`` and ``traceparent`` are worked out from the request and its metadata when
    first read: the audit record needs them, and it is made after the call is answered.
    """

    method: str
    started: float
    identity: PeerIdentity | None = None
    decision: Decision | None = None
    subject_key: str | None = None
    consent: ConsentGrant | None = None
    request: object = None
    metadata: Sequence[tuple[str, Any]] = ()
    #: The calling city whose slot of calls in progress this call holds
    #: (``services/common/peer/limits.py``), until the guard hands it back.
    limited_as: str | None = None
    #: The denial code of the refusal that ended the call (:func:`deny`), for its audit
    #: record: every refusal is audited with its reason (docs/design.md §3.2).
    denial: str | None = None
    #: The subjects of a batch call as the servicer answered each (:meth:`answered`), for
    #: the audit record's per-subject evidence.
    subjects: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    #: The exchange as served so far (request, responses), for the record and the receipt;
    #: None when the node gives no receipts.
    exchange: ExchangeDigest | None = None
    _purpose: str | None = None
    _traceparent: tuple[str | None] | None = None

    def answered(self, subject_key: str, consent: ConsentGrant | None, denial: str | None) -> None:
        """Note one subject of a batch call: its (well-formed) key, the consent honoured for
        it, or why it was not answered."""
        self.subjects.append((subject_key, consent.token_id if consent else None, denial))

    def may_see(self, data_class: str) -> bool:
        return self.decision is not None and self.decision.permits(data_class)

    @property
    def purpose(self) -> str:
        if self._purpose is None:
            self._purpose = _purpose(self.request, self.metadata, self.method)
        return self._purpose

    @property
    def traceparent(self) -> str | None:
        """The caller's W3C ``traceparent``, if it sent a valid one."""
        if self._traceparent is None:
            raw = _metadata_value(self.metadata, "traceparent")
            self._traceparent = (raw if raw is not None and is_valid_traceparent(raw) else None,)
        return self._traceparent[0]


_current_call: contextvars.ContextVar[PeerCall | None] = contextvars.ContextVar(
    "creditlink_peer_call", default=None
)


def current_call() -> PeerCall:
    """The call being served; only inside a servicer method behind the peer-call guard."""
    call = _current_call.get()
    if call is None:
        raise RuntimeError("current_call() outside a peer call (not served by start_peer_server?)")
    return call


async def deny(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, denial: str, details: str
) -> NoReturn:
    """End a peer call refused: the status ``code`` and ``details`` for people, and the
    contract's ``creditlink-denial`` trailer with ``denial``, the stable lower-kebab reason
    a peer's code can act on. The one way every servicer refuses a call.

    The code is also noted on the call being served, so that the guard's audit record of the
    call carries it, whoever refused: the guard itself or the servicer. Behind the guard the
    refusal is raised to it (:class:`Refused`): the guard sends it only once the broker has
    acknowledged its record, as it answers every call (services/common/peer/guard.py).
    """
    call = _current_call.get()
    if call is not None:
        call.denial = denial
        raise Refused(Denied(code, denial, details))
    await send_refusal(context, code, denial, details)


async def send_refusal(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, denial: str, details: str
) -> NoReturn:
    """Send a refusal now: its status, ``details`` and the ``creditlink-denial`` trailer."""
    await context.abort(code, details, trailing_metadata=((DENIAL_TRAILER, denial),))
    raise AssertionError("context.abort returned")  # abort always raises


class Denied(Exception):
    """A refusal with its status and stable denial code."""

    def __init__(self, code: grpc.StatusCode, denial: str, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.denial = denial
        self.details = details

    async def abort(self, context: grpc.aio.ServicerContext) -> NoReturn:
        await deny(context, self.code, self.denial, self.details)


class Refused(Exception):
    """A refusal made behind the peer-call guard, on its way to the guard (:func:`deny`),
    which records it, waits for the record's acknowledgement, then sends it."""

    def __init__(self, denied: Denied) -> None:
        super().__init__(denied.details)
        self.denied = denied
