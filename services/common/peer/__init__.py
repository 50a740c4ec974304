"""Peer-call kit: TLS, caller identity, call context, guard and server.

The implementation lives in :mod:`services.common.peer.server`; this package re-exports the
names the rest of the tree imports.
"""

from services.common.peer.server import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_PURPOSES,
    DENIAL_TRAILER,
    PURPOSE_METADATA,
    Denied,
    Handler,
    LatencySink,
    PeerCall,
    PeerCallGuard,
    PeerIdentity,
    PeerSecurity,
    PeerServer,
    ServiceBinding,
    TlsFiles,
    current_call,
    deny,
    secure_channel,
    start_peer_server,
)

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_PURPOSES",
    "DENIAL_TRAILER",
    "PURPOSE_METADATA",
    "Denied",
    "Handler",
    "LatencySink",
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
