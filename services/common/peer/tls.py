"""Mutual TLS: a city's certificate files, and channels to a peer with them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from services.common.certs import DEFAULT_OUT


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of one party: the region CA it trusts, its certificate and its key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def for_city(cls, city: str, directory: Path = DEFAULT_OUT) -> TlsFiles:
        """The files ``make certs`` writes for ``city``."""
        return cls(
            ca=directory / "ca.crt", cert=directory / f"{city}.crt", key=directory / f"{city}.key"
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server side: present our certificate, *require* a client certificate from the CA."""
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
    server_name: str | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An mTLS channel to a peer. ``server_name`` overrides the name checked in its certificate
    (for example ``wuxi.creditlink.local`` when dialling an IP the certificate does not list).
    """
    all_options = list(options)
    if server_name:
        all_options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=all_options)
