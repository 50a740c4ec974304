"""Which of the alerts a node holds one calling city may see (docs/alerts.md, "Who sees
what").

The peer policy already admits only the serving city's regulators to ``SubscribeAlerts``
(``deploy/config/peer-policy.yaml``). This is the servicer's own rule behind it, so a looser
policy file does not widen what a caller sees:

* the serving city sees its feed: the alerts raised here or targeting here; a regulator of
  the serving city (its certificate names the city and its supervision domains,
  docs/trust.md "Roles") only those of its domains;
* any other city sees only the alerts that target it;
* an alert about a natural person only where the policy grants the caller that data class on
  the method (docs/design.md §4.8).

A status change is seen exactly when its alert is.

    audience = Audience.of_call(serving_city="320500", call=current_call())
    if audience.sees(alert):
        ...
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.alerts.model import Alert
from services.common.peer import PeerCall
from services.common.policy import NATURAL_PERSON, data_class_of
from services.common.roles import NODE


@dataclass(frozen=True, slots=True)
class Audience:
    """The calling city of one call, as the alerts it may see are decided."""

    serving_city: str  #: admin code of the node's city
    caller_city: str  #: admin code of the calling city, from its verified certificate
    may_see_persons: bool  #: the policy grants the caller natural persons' data here
    #: The supervision domains of a regulator's certificate; None for a city's node.
    domains: frozenset[str] | None = field(default=None)

    @classmethod
    def of_call(cls, *, serving_city: str, call: PeerCall) -> Audience:
        identity = call.identity
        assert identity is not None  # the peer-call guard identified the caller
        return cls(
            serving_city=serving_city,
            caller_city=identity.city_code,
            may_see_persons=call.may_see(NATURAL_PERSON),
            # A department (or any role but a regulator) of the city sees no alert: the
            # policy lets none call, and a looser policy does not widen it.
            domains=None if identity.role.kind == NODE else identity.role.domains,
        )

    @property
    def is_serving_city(self) -> bool:
        return self.caller_city == self.serving_city

    def sees(self, alert: Alert) -> bool:
        if data_class_of(alert.subject_key) == NATURAL_PERSON and not self.may_see_persons:
            return False
        if self.domains is not None and alert.domain.value not in self.domains:
            return False
        if self.is_serving_city:
            return (
                alert.origin_city == self.serving_city or self.serving_city in alert.target_cities
            )
        return self.caller_city in alert.target_cities
