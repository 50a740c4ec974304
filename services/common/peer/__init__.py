"""Peer-call kit: TLS, caller identity, call context, the serving city's decisions, the guard
and the server.

In reading order: ``names`` (the contract's trailers and limits), ``tls``, ``identity``,
``call`` (the call being served and :func:`deny`), ``security``, ``guard`` and ``server``.
This package re-exports their public names.

The gRPC bootstrap every peer-facing service uses: mTLS, identity, authorization, consent,
audit, health, reflection and graceful shutdown, so a servicer only implements its methods.

A service's node starts it through the node bootstrap (``services/common/node.py``), which
also stops it on SIGTERM or SIGINT. By hand::

    security = PeerSecurity.from_files(settings, region)           # policy + consent keyring
    audit = AuditChainWriter(settings, serde, producer, node_city="320500", chain="lists")
    await audit.start()
    server = await start_peer_server(
        bind="127.0.0.1:24151",
        tls=TlsFiles.for_city("suzhou"),
        services=[ServiceBinding(CheckServicer(...), add_CreditCheckServiceServicer_to_server,
                                 "creditlink.peer.v1.CreditCheckService")],
        security=security,
        audit=audit,
    )
    await server.stop(grace)                  # NOT_SERVING, drain, stop, flush the audit

**Who is calling.** The calling city comes only from the client certificate the TLS
handshake verified against the region CA (``context.auth_context()``): its one URI SAN
``spiffe://creditlink/city/<key>`` (never the CN; a certificate with none or several is
refused). It must be a city of the region registry, and the city CA that issued the
certificate must be that city's (``issuers.py``). No request field or metadata can change it.
A client names the city and service it dials (:func:`secure_channel`) and the handshake checks
the server's certificate for them.

**What a call may do.** :class:`PeerCallGuard` asks the policy
(``policy.py``) whether the caller may call the method, and for a request about one subject
(a top-level ``subject_key`` field) whether it may see that subject's data class. A
natural-person subject also needs a valid consent token for the caller (the request's
``consent_token`` field). Refusals are ``PERMISSION_DENIED`` (``UNAUTHENTICATED`` when the
certificate names no known city, ``INVALID_ARGUMENT`` for a malformed subject key) with a
``creditlink-denial`` trailer carrying a stable code.
Batch methods check each item in the servicer with :meth:`PeerSecurity.check_subject`.

**What is audited.** :class:`PeerCallGuard` writes one hash-chained record per peer call,
allowed or refused (``services/common/audit/``); a refused call's record carries the
denial code :func:`deny` sent, whoever refused, the guard or the servicer. The subject key
is the request's top-level ``subject_key`` once it is known to be well formed (none for a
malformed key, which may be a raw ID number, and none for batch and stream requests); the
purpose is, in this order: the ``scenario`` enum name and/or the ``purpose`` text of the
request (``"TENDERING: WXZB-2024-1"``), the ``creditlink-purpose`` metadata entry, or the
method's default (``LIST_SYNC`` …). A call is answered only once the broker has
acknowledged its record, so a crash loses no record of a call that was served.
Health and reflection calls are neither authorized nor audited.
"""

from __future__ import annotations

from services.common.peer.call import Denied, PeerCall, current_call, deny
from services.common.peer.guard import PeerCallGuard
from services.common.peer.identity import PeerIdentity
from services.common.peer.names import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_PURPOSES,
    DENIAL_TRAILER,
    PURPOSE_METADATA,
    Handler,
    LatencySink,
)
from services.common.peer.outbound import OutboundChains, OutboundEvidence
from services.common.peer.security import PeerSecurity
from services.common.peer.server import PeerServer, ServiceBinding, start_peer_server
from services.common.peer.tls import TlsFiles, secure_channel

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_PURPOSES",
    "DENIAL_TRAILER",
    "PURPOSE_METADATA",
    "Denied",
    "Handler",
    "LatencySink",
    "OutboundChains",
    "OutboundEvidence",
    "PeerCall",
    "PeerCallGuard",
    "PeerIdentity",
    "PeerSecurity",
    "PeerServer",
    "ServiceBinding",
    "TlsFiles",
    "current_call",
    "deny",
    "secure_channel",
    "start_peer_server",
]
