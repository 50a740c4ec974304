"""Configuration of the alerts service: rules and SLAs, regulators' webhooks, the process.

* ``deploy/config/alert-rules.yaml`` (or ``CREDITLINK_ALERT_RULES``): every rule with its id,
  domain, severity, a summary and the explanation template regulators read, its parameters;
  the acknowledgement/resolution SLAs per severity; escalation and peer-delivery retry timing.
* ``deploy/config/alert-subscriptions.yaml`` (or ``CREDITLINK_ALERT_SUBSCRIPTIONS``): the
  regulators' HTTP webhooks per city, with their filters and retry budget.
* Environment: ``CREDITLINK_ALERTS_BIND`` (default: this city's ``alerts`` endpoint in the
  region file), ``CREDITLINK_TLS_DIR`` (default ``deploy/local/certs``).

Both files are validated as a whole when loaded, so a node refuses to start with a rule
parameter misspelt or a webhook without a secret, and says which entry is wrong.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import yaml

from services.alerts.model import (
    AlertsConfigError,
    Domain,
    RetryPolicy,
    RuleConfig,
    RulesConfig,
    Severity,
    SlaPolicy,
)
from services.alerts.rules import RULE_TYPES
from services.common.settings import REPO_ROOT

DEFAULT_RULES_FILE: Final = REPO_ROOT / "deploy" / "config" / "alert-rules.yaml"
DEFAULT_SUBSCRIPTIONS_FILE: Final = REPO_ROOT / "deploy" / "config" / "alert-subscriptions.yaml"
DEFAULT_TLS_DIR: Final = REPO_ROOT / "deploy" / "local" / "certs"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any, where: str) -> timedelta:
    """``"30s"``, ``"5m"``, ``"4h"``, ``"3d"``, ``"250ms"`` or a number of seconds."""
    if isinstance(value, bool):
        raise AlertsConfigError(f"{where}: {value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise AlertsConfigError(f"{where}: {value!r} is not a duration like 30s, 4h, 3d")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise AlertsConfigError(f"{where}: a duration must be positive")
    return timedelta(seconds=seconds)


# --- rules ---------------------------------------------------------------------------------


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise AlertsConfigError(f"{where}: expected a mapping")
    return value


def _severity(value: Any, where: str) -> Severity:
    try:
        return Severity(str(value))
    except ValueError:
        known = ", ".join(s.value for s in Severity)
        raise AlertsConfigError(f"{where}: severity {value!r} is not one of {known}") from None


def _domain(value: Any, where: str) -> Domain:
    try:
        return Domain(str(value))
    except ValueError:
        known = ", ".join(d.value for d in Domain)
        raise AlertsConfigError(f"{where}: domain {value!r} is not one of {known}") from None


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def parse_rules(raw: Any, *, source: str) -> RulesConfig:
    """Parse and validate a rules document (see ``deploy/config/alert-rules.yaml``)."""
    doc = _mapping(raw, source)
    if doc.get("version") != 1:
        raise AlertsConfigError(f"{source}: expected 'version: 1'")
    sla_raw = _mapping(doc.get("sla") or {}, f"{source}: sla")
    ack_raw = _mapping(sla_raw.get("ack") or {}, f"{source}: sla.ack")
    resolve_raw = _mapping(sla_raw.get("resolve") or {}, f"{source}: sla.resolve")
    ack: dict[Severity, timedelta] = {}
    resolve: dict[Severity, timedelta | None] = {}
    for severity in Severity:
        if severity.value not in ack_raw:
            raise AlertsConfigError(f"{source}: sla.ack.{severity.value} is required")
        ack[severity] = parse_duration(ack_raw[severity.value], f"{source}: sla.ack.{severity}")
        value = resolve_raw.get(severity.value)
        resolve[severity] = (
            None if value is None else parse_duration(value, f"{source}: sla.resolve.{severity}")
        )
    unknown = set(ack_raw) - {s.value for s in Severity}
    if unknown:
        raise AlertsConfigError(f"{source}: sla.ack has unknown severities {sorted(unknown)}")
    escalation = _mapping(sla_raw.get("escalation") or {}, f"{source}: sla.escalation")
    max_level = escalation.get("max_level", 3)
    if not isinstance(max_level, int) or isinstance(max_level, bool) or max_level < 0:
        raise AlertsConfigError(f"{source}: sla.escalation.max_level must be an integer >= 0")
    sla = SlaPolicy(
        ack=ack,
        resolve=resolve,
        max_level=max_level,
        check_interval=parse_duration(
            escalation.get("check_interval", "30s"), f"{source}: sla.escalation.check_interval"
        ),
    )
    delivery_raw = _mapping(doc.get("delivery") or {}, f"{source}: delivery")
    delivery = RetryPolicy(
        initial=parse_duration(
            delivery_raw.get("retry_initial", "1s"), f"{source}: delivery.retry_initial"
        ),
        maximum=parse_duration(
            delivery_raw.get("retry_max", "5m"), f"{source}: delivery.retry_max"
        ),
    )

    rules: list[RuleConfig] = []
    entries = doc.get("rules")
    if not isinstance(entries, list) or not entries:
        raise AlertsConfigError(f"{source}: 'rules' must be a non-empty list")
    seen: set[str] = set()
    for index, entry_raw in enumerate(entries):
        where = f"{source}: rules[{index}]"
        entry = _mapping(entry_raw, where)
        rule_id = str(entry.get("id", ""))
        where = f"{source}: rule {rule_id!r}"
        rule_type = RULE_TYPES.get(rule_id)
        if rule_type is None:
            known = ", ".join(sorted(RULE_TYPES))
            raise AlertsConfigError(f"{where}: no such rule is implemented (known: {known})")
        if rule_id in seen:
            raise AlertsConfigError(f"{where}: configured twice")
        seen.add(rule_id)
        for required in ("severity", "summary", "explanation"):
            if not entry.get(required):
                raise AlertsConfigError(f"{where}: {required!r} is required")
        explanation = str(entry["explanation"])
        unknown_facts = template_fields(explanation) - set(rule_type.facts)
        if unknown_facts:
            raise AlertsConfigError(
                f"{where}: explanation uses {sorted(unknown_facts)}; this rule offers "
                f"{sorted(rule_type.facts)}"
            )
        parameters = dict(_mapping(entry.get("parameters") or {}, f"{where}: parameters"))
        unknown_parameters = set(parameters) - set(rule_type.defaults)
        if unknown_parameters:
            raise AlertsConfigError(
                f"{where}: unknown parameters {sorted(unknown_parameters)}; this rule takes "
                f"{sorted(rule_type.defaults)}"
            )
        domain_raw = entry.get("domain")
        config = RuleConfig(
            id=rule_id,
            enabled=bool(entry.get("enabled", True)),
            severity=_severity(entry["severity"], where),
            domain=None if domain_raw is None else _domain(domain_raw, where),
            summary=" ".join(str(entry["summary"]).split()),
            explanation=explanation,
            parameters={**rule_type.defaults, **parameters},
        )
        rule_type.validate(config, where)
        rules.append(config)
    return RulesConfig(rules=tuple(rules), sla=sla, delivery=delivery, source=source)


def load_rules(path: Path | None = None) -> RulesConfig:
    chosen = path or Path(os.environ.get("CREDITLINK_ALERT_RULES", DEFAULT_RULES_FILE))
    try:
        raw = yaml.safe_load(chosen.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise AlertsConfigError(f"{chosen}: cannot read: {exc}") from exc
    return parse_rules(raw, source=str(chosen))


# --- webhooks ------------------------------------------------------------------------------

EVENT_KINDS: Final = frozenset({"alert", "status"})


@dataclass(frozen=True, slots=True)
class Webhook:
    """A regulator's HTTP endpoint and what it wants to receive."""

    id: str
    url: str
    secret: bytes = field(repr=False)
    domains: frozenset[Domain] = frozenset()
    min_severity: Severity = Severity.LOW
    events: frozenset[str] = frozenset({"alert"})
    max_attempts: int = 8
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: timedelta = timedelta(seconds=10)
    regulator: str | None = None
    description: str = ""

    def wants(self, kind: str, domain: Domain, severity: Severity) -> bool:
        return (
            kind in self.events
            and (not self.domains or domain in self.domains)
            and severity.rank >= self.min_severity.rank
        )


def parse_subscriptions(
    raw: Any, *, city: str, source: str, environ: Mapping[str, str] | None = None
) -> tuple[Webhook, ...]:
    """The webhooks of ``city`` from a subscriptions document.

    Secrets never live in the file: each webhook names the environment variable holding
    its HMAC key (``secret_env``). With ``CREDITLINK_DEV=1`` a missing variable falls back
    to a published development secret (the demo); otherwise the node refuses to start.
    """
    env = os.environ if environ is None else environ
    doc = _mapping(raw, source)
    if doc.get("version") != 1:
        raise AlertsConfigError(f"{source}: expected 'version: 1'")
    defaults = _mapping(doc.get("defaults") or {}, f"{source}: defaults")
    cities = _mapping(doc.get("cities") or {}, f"{source}: cities")
    city_doc = _mapping(cities.get(city) or {}, f"{source}: cities.{city}")
    hooks: list[Webhook] = []
    seen: set[str] = set()
    for index, entry_raw in enumerate(city_doc.get("webhooks") or []):
        entry = {**defaults, **_mapping(entry_raw, f"{source}: cities.{city}.webhooks[{index}]")}
        hook_id = str(entry.get("id", ""))
        where = f"{source}: cities.{city}.webhooks {hook_id!r}"
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", hook_id):
            raise AlertsConfigError(f"{where}: id must be lower-kebab-case")
        if hook_id in seen:
            raise AlertsConfigError(f"{where}: configured twice")
        seen.add(hook_id)
        url = str(entry.get("url", ""))
        if not url.startswith(("http://", "https://")):
            raise AlertsConfigError(f"{where}: url must be http(s)://")
        secret_env = str(entry.get("secret_env", ""))
        if not secret_env:
            raise AlertsConfigError(
                f"{where}: secret_env (the variable holding the key) is required"
            )
        secret = env.get(secret_env, "")
        if not secret:
            if env.get("CREDITLINK_DEV", "") != "1":
                raise AlertsConfigError(
                    f"{where}: environment variable {secret_env} is not set "
                    "(CREDITLINK_DEV=1 uses a published development secret)"
                )
            secret = f"creditlink-dev-webhook-secret:{hook_id}"
        events = frozenset(str(e) for e in entry.get("events") or ["alert"])
        if not events or events - EVENT_KINDS:
            raise AlertsConfigError(f"{where}: events must be a subset of {sorted(EVENT_KINDS)}")
        max_attempts = entry.get("max_attempts", 8)
        if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
            raise AlertsConfigError(f"{where}: max_attempts must be a positive integer")
        hooks.append(
            Webhook(
                id=hook_id,
                url=url,
                secret=secret.encode("utf-8"),
                domains=frozenset(_domain(d, where) for d in entry.get("domains") or []),
                min_severity=_severity(entry.get("min_severity", "LOW"), where),
                events=events,
                max_attempts=max_attempts,
                retry=RetryPolicy(
                    initial=parse_duration(entry.get("retry_initial", "1s"), where),
                    maximum=parse_duration(entry.get("retry_max", "10m"), where),
                ),
                timeout=parse_duration(entry.get("timeout", "10s"), where),
                regulator=entry.get("regulator"),
                description=str(entry.get("description", "")),
            )
        )
    return tuple(hooks)


def load_subscriptions(city: str, path: Path | None = None) -> tuple[Webhook, ...]:
    chosen = path or Path(
        os.environ.get("CREDITLINK_ALERT_SUBSCRIPTIONS", DEFAULT_SUBSCRIPTIONS_FILE)
    )
    try:
        raw = yaml.safe_load(chosen.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise AlertsConfigError(f"{chosen}: cannot read: {exc}") from exc
    return parse_subscriptions(raw, city=city, source=str(chosen))
