"""Consent tokens: a natural person's permission for one city to see their data.

docs/design.md §5.3: data of a natural person crosses a border only with the subject's consent
token. The subject grants consent in their home city (the city holding their records); the
home city's consent service signs a token that names the subject (by pseudonym), the city
allowed to ask (the audience), the purpose the subject agreed to, and an expiry. The requesting
city presents it with each call.

**Who may give consent.** Only the person's home city, the city the division code of their
pseudonym names (services/common/pseudonym.py); never another city, however genuine its
signature: a city cannot open other cities' residents to itself by signing for them
(docs/trust.md). The serving city checks the ``pur`` claim against the purpose catalogue
(``deploy/config/consent-purposes.yaml``): the method called and its scenario must be ones the
purpose covers. Lifetimes are capped (30 days unless ``CREDITLINK_CONSENT_MAX_DAYS`` says
less or more, at most 366).

**Why Ed25519 and not HMAC.** The city that checks a token is often not the city that issued
it: Wuxi answers ``CheckSubject`` for a Suzhou resident from the list entries it mirrors, so
Wuxi must verify a token Suzhou signed. With HMAC every verifying city would hold Suzhou's
secret and could mint Suzhou consent at will; with Ed25519 each city keeps its private key
and publishes its public key, so verifying needs no secret and a compromised verifier cannot
forge consent. Signatures are 64 bytes and verification is ~50 µs, cheap per call.

**Format** (contracts/README.md, "Consent tokens")::

    clc1.<base64url(payload)>.<base64url(signature)>

no padding; ``payload`` is UTF-8 JSON with sorted keys and no spaces::

    {"aud":"320200","exp":1767225600,"iat":1764633600,"iss":"320500",
     "jti":"4f0c…","kid":"9a1b…","pur":"credit-check","sub":"N:<pseudonym>","v":1}

``iss`` is the issuing (home) city's code, ``aud`` the code of the city allowed to present
it, ``sub`` the subject key, ``iat``/``exp`` Unix seconds, ``jti`` the token's id (recorded
in the audit log as the consent reference), ``kid`` the first 16 hex characters of the
SHA-256 of the issuer's raw public key, ``pur`` the code of the purpose the subject agreed to
(a key of the purpose catalogue).
The signature is Ed25519 over the ASCII bytes ``clc1.<base64url(payload)>``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import secrets
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

TOKEN_PREFIX = "clc1"  # noqa: S105 - a format tag, not a secret
CLOCK_SKEW_SECONDS = 60
DAY_SECONDS = 24 * 3600
#: The default cap on a token's lifetime, and the ceiling no configuration may pass.
DEFAULT_MAX_LIFETIME_SECONDS = 30 * DAY_SECONDS
CEILING_LIFETIME_SECONDS = 366 * DAY_SECONDS


class ConsentFailure(StrEnum):
    """Why a token was refused; the value is the ``creditlink-denial`` code callers see."""

    MISSING = "consent-missing"
    MALFORMED = "consent-malformed"
    UNKNOWN_ISSUER = "consent-unknown-issuer"
    BAD_SIGNATURE = "consent-bad-signature"
    EXPIRED = "consent-expired"
    NOT_YET_VALID = "consent-not-yet-valid"
    WRONG_CITY = "consent-wrong-city"
    WRONG_SUBJECT = "consent-wrong-subject"
    #: The token is genuine but was issued by a city other than the subject's home city.
    WRONG_ISSUER = "consent-wrong-issuer"
    #: The subject's key names no home city in the region, so nobody may consent for it.
    NO_HOME_CITY = "consent-no-home-city"
    #: The purpose the subject agreed to does not cover this method or scenario.
    WRONG_PURPOSE = "consent-wrong-purpose"
    #: The token lives longer than the serving city accepts.
    LIFETIME_TOO_LONG = "consent-lifetime-too-long"
    #: The home city has withdrawn the token (services/common/revocations.py).
    REVOKED = "consent-revoked"


class ConsentError(Exception):
    """A token that does not grant what was asked; ``failure`` says why."""

    def __init__(self, failure: ConsentFailure, message: str) -> None:
        super().__init__(message)
        self.failure = failure


@dataclass(frozen=True, slots=True)
class ConsentGrant:
    """What a verified token grants."""

    token_id: str
    issuer_city: str
    audience_city: str
    subject_key: str
    purpose: str
    issued_at: int
    expires_at: int


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class ConsentIssuer:
    """A city's consent service: signs tokens with the city's private key."""

    city_code: str
    private_key: Ed25519PrivateKey

    def issue(
        self,
        *,
        subject_key: str,
        audience_city: str,
        lifetime_seconds: int,
        purpose: str,
        now: int | None = None,
        token_id: str | None = None,
    ) -> str:
        """A signed token; ``token_id`` (its ``jti``) is random unless the caller chose it."""
        issued_at = int(time.time()) if now is None else now
        payload = {
            "v": 1,
            "iss": self.city_code,
            "aud": audience_city,
            "sub": subject_key,
            "pur": purpose,
            "iat": issued_at,
            "exp": issued_at + lifetime_seconds,
            "jti": token_id or secrets.token_hex(16),
            "kid": key_id(self.private_key.public_key()),
        }
        body = _b64encode(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
        signing_input = f"{TOKEN_PREFIX}.{body}".encode("ascii")
        return f"{TOKEN_PREFIX}.{body}.{_b64encode(self.private_key.sign(signing_input))}"


class ConsentKeyring:
    """The public keys of every city's consent service, by key id, and the longest lifetime
    the serving city accepts."""

    def __init__(
        self,
        keys: Mapping[str, Ed25519PublicKey] | None = None,
        *,
        max_lifetime_seconds: int = DEFAULT_MAX_LIFETIME_SECONDS,
    ) -> None:
        if not 0 < max_lifetime_seconds <= CEILING_LIFETIME_SECONDS:
            raise ValueError(
                f"consent lifetime cap must be 1..{CEILING_LIFETIME_SECONDS} s, "
                f"got {max_lifetime_seconds}"
            )
        self.max_lifetime_seconds = max_lifetime_seconds
        # kid -> (issuer city code, key)
        self._keys: dict[str, tuple[str, Ed25519PublicKey]] = {}
        for city_code, key in (keys or {}).items():
            self.add(city_code, key)

    def add(self, city_code: str, key: Ed25519PublicKey) -> None:
        self._keys[key_id(key)] = (city_code, key)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_directory(
        cls,
        directory: Path,
        city_codes: Mapping[str, str],
        *,
        max_lifetime_seconds: int = DEFAULT_MAX_LIFETIME_SECONDS,
    ) -> ConsentKeyring:
        """Load ``<city key>.consent.pub`` (PEM) files; ``city_codes`` maps key -> code."""
        keyring = cls(max_lifetime_seconds=max_lifetime_seconds)
        for path in sorted(directory.glob("*.consent.pub")):
            city = path.name.removesuffix(".consent.pub")
            if city not in city_codes:
                continue
            key = serialization.load_pem_public_key(path.read_bytes())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"{path}: not an Ed25519 public key")
            keyring.add(city_codes[city], key)
        return keyring

    def signed_claims(self, token: str | None) -> dict[str, Any]:
        """The claims of ``token`` once its signature verifies under a known consent key of
        the city its ``iss`` names; :class:`ConsentError` otherwise. The signature is checked
        before any claim is believed."""
        if not token:
            raise ConsentError(ConsentFailure.MISSING, "no consent token")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            raise ConsentError(ConsentFailure.MALFORMED, "not a clc1 consent token")
        try:
            payload = json.loads(_b64decode(parts[1]))
            signature = _b64decode(parts[2])
        except (binascii.Error, ValueError):
            raise ConsentError(
                ConsentFailure.MALFORMED, "token is not valid base64url JSON"
            ) from None
        if not isinstance(payload, dict) or not _has_claims(payload):
            raise ConsentError(ConsentFailure.MALFORMED, "token lacks required claims")
        entry = self._keys.get(payload["kid"])
        if entry is None or entry[0] != payload["iss"]:
            raise ConsentError(ConsentFailure.UNKNOWN_ISSUER, "token signed by an unknown key")
        try:
            entry[1].verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"))
        except InvalidSignature:
            raise ConsentError(ConsentFailure.BAD_SIGNATURE, "signature does not verify") from None
        return payload

    def verify(
        self,
        token: str | None,
        *,
        audience_city: str,
        subject_key: str,
        home_city: str | None,
        purposes: Collection[str],
        now: int | None = None,
    ) -> ConsentGrant:
        """The grant of ``token`` for ``audience_city`` asking about ``subject_key``, whose home
        city is ``home_city`` (None: outside the region), for a call that ``purposes`` cover.

        Raises :class:`ConsentError` with a distinct :class:`ConsentFailure` per reason. The
        signature is checked before any claim, so an attacker learns nothing from the claims
        of a forged token.
        """
        payload = self.signed_claims(token)
        issuer_city = payload["iss"]
        current = int(time.time()) if now is None else now
        if payload["exp"] - payload["iat"] > self.max_lifetime_seconds:
            raise ConsentError(
                ConsentFailure.LIFETIME_TOO_LONG,
                f"token lives longer than {self.max_lifetime_seconds // DAY_SECONDS} days",
            )
        if current > payload["exp"] + CLOCK_SKEW_SECONDS:
            raise ConsentError(ConsentFailure.EXPIRED, "consent has expired")
        if current + CLOCK_SKEW_SECONDS < payload["iat"]:
            raise ConsentError(ConsentFailure.NOT_YET_VALID, "token is issued in the future")
        if payload["aud"] != audience_city:
            raise ConsentError(ConsentFailure.WRONG_CITY, "consent was given to another city")
        if payload["sub"] != subject_key:
            raise ConsentError(ConsentFailure.WRONG_SUBJECT, "consent is for another subject")
        if home_city is None:
            raise ConsentError(
                ConsentFailure.NO_HOME_CITY, "the subject has no home city that may consent"
            )
        if issuer_city != home_city:
            raise ConsentError(
                ConsentFailure.WRONG_ISSUER,
                f"only the subject's home city {home_city} may consent, not {issuer_city}",
            )
        if payload["pur"] not in purposes:
            raise ConsentError(
                ConsentFailure.WRONG_PURPOSE,
                "the purpose consented to does not cover this call",
            )
        return ConsentGrant(
            token_id=payload["jti"],
            issuer_city=issuer_city,
            audience_city=payload["aud"],
            subject_key=payload["sub"],
            purpose=payload["pur"],
            issued_at=payload["iat"],
            expires_at=payload["exp"],
        )


def _has_claims(payload: dict[str, Any]) -> bool:
    text = ("iss", "aud", "sub", "jti", "kid", "pur")
    return (
        payload.get("v") == 1
        and all(isinstance(payload.get(name), str) for name in text)
        and all(type(payload.get(name)) is int for name in ("iat", "exp"))
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def main(argv: list[str] | None = None) -> int:
    """``issue``: a dev token signed with ``<certs>/<city>.consent.key`` (demo and manual tests)."""
    from services.common.consent_purposes import load_purposes
    from services.common.region import load_region
    from services.common.settings import REPO_ROOT

    parser = argparse.ArgumentParser(prog="python -m services.common.consent")
    sub = parser.add_subparsers(dest="command", required=True)
    issue = sub.add_parser("issue", help="sign a consent token with a city's dev key")
    issue.add_argument("--home", required=True, help="issuing city key, e.g. suzhou")
    issue.add_argument("--audience", required=True, help="city key allowed to present it")
    issue.add_argument("--subject", required=True, help="subject key N:<pseudonym>")
    issue.add_argument("--days", type=int, default=30)
    issue.add_argument(
        "--purpose", required=True, help="a purpose code of deploy/config/consent-purposes.yaml"
    )
    issue.add_argument("--certs", type=Path, default=REPO_ROOT / "deploy/local/certs")
    issue.add_argument("--region", type=Path, default=REPO_ROOT / "deploy/config/region.yaml")
    args = parser.parse_args(argv)
    if args.purpose not in (purposes := load_purposes()):
        parser.error(f"--purpose: not one of {', '.join(purposes.codes())}")
    region = load_region(args.region)
    issuer = ConsentIssuer(
        region.city(args.home).admin_code,
        load_private_key(args.certs / f"{args.home}.consent.key"),
    )
    print(
        issuer.issue(
            subject_key=args.subject,
            audience_city=region.city(args.audience).admin_code,
            lifetime_seconds=args.days * 86400,
            purpose=args.purpose,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
