"""Mutual TLS: a city's certificate files, and channels to a peer with them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from services.common.certs import DEFAULT_OUT, ensure_role_certificate, service_host
from services.common.roles import Role


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of one party: the region root CA it trusts, its certificate followed by its
    city CA (the chain its peers verify), and its key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def for_city(cls, city: str, directory: Path = DEFAULT_OUT) -> TlsFiles:
        """The files ``make certs`` writes for ``city``."""
        return cls(
            ca=directory / "ca.crt", cert=directory / f"{city}.crt", key=directory / f"{city}.key"
        )

    @classmethod
    def for_role(cls, role: Role, directory: Path = DEFAULT_OUT) -> TlsFiles:
        """A department's or regulator's development files in ``directory``, issued by its
        city's CA there when missing or stale (``certs.ensure_role_certificate``)."""
        cert, key = ensure_role_certificate(directory, role)
        return cls(ca=directory / "ca.crt", cert=cert, key=key)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server side: present our certificate and its chain, *require* a client certificate
        that chains to the root (and, checked by the guard, comes from its own city's CA)."""
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.ca.read_bytes(),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client side: trust only the region CA and present our certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )


def secure_channel(
    target: str,
    tls: TlsFiles,
    *,
    expect_city: str,
    service: str,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[Any] = (),
) -> grpc.aio.Channel:
    """An mTLS channel to ``service`` (``lists``, ``scores``, ``alerts``, ``intake``) of
    ``expect_city``, at ``target``.

    The handshake checks the server certificate for ``<service>.<city>.creditlink.local``
    (``grpc.ssl_target_name_override``), whatever host ``target`` names: only that city's CA
    may issue a certificate for the name (its name constraints, ``services/common/certs.py``),
    so a server presenting another city's certificate fails the handshake. Certificates name
    no loopback address; a node reached at ``127.0.0.1`` is checked the same way.

    ``interceptors``: a node's :class:`~services.common.peer.outbound.OutboundEvidence`,
    which records each call it makes on the channel.
    """
    all_options = [*options, ("grpc.ssl_target_name_override", service_host(expect_city, service))]
    return grpc.aio.secure_channel(
        target,
        tls.channel_credentials(),
        options=all_options,
        interceptors=list(interceptors) or None,
    )
