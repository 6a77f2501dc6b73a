"""A synthetic HR source: a realistic organisation of N people, the same for the same seed.

For demos and benchmarks. Every person has an identity, one directory account and a handful
of group memberships; chunks are cut by person so memory stays bounded whatever N is.
"""

from __future__ import annotations

import random
from typing import ClassVar

from ..base import ConfigurationError, Connector, register
from ..protocol.v1 import (
    Capabilities,
    RemoteAccount,
    RemoteEntitlement,
    RemoteGrant,
    RemoteIdentity,
    SyncRequest,
    SyncResponse,
    TestConnectionRequest,
    TestConnectionResponse,
)

FIRST = ["Alex", "Bo", "Charlie", "Dana", "Eli", "Fran", "Gus", "Hana", "Ivo", "Jo", "Kai", "Lea", "Max", "Nina",
         "Oscar", "Pia", "Quin", "Rosa", "Sam", "Tess", "Uma", "Vic", "Wim", "Xena", "Yves", "Zara"]
LAST = ["Adams", "Baker", "Claes", "Dubois", "Evans", "Fischer", "Garcia", "Hermans", "Ivanov", "Janssens",
        "Kowalski", "Lambert", "Martin", "Novak", "Olsen", "Peeters", "Quinn", "Rossi", "Smit", "Tanaka"]
DEPARTMENTS = ["Engineering", "Sales", "Finance", "HR", "Support", "Marketing", "Legal", "Operations"]
LOCATIONS = ["Brussels", "Ghent", "Antwerp", "Amsterdam", "Paris", "Berlin"]


@register
class SyntheticConnector(Connector):
    type = "synthetic"
    capabilities: ClassVar[Capabilities] = Capabilities(
        sync_identities=True, sync_accounts=True, sync_entitlements=True, sync_grants=True, paging=True,
        authoritative=True,
    )

    @classmethod
    def validate_config(cls, config: dict, auth_config: dict) -> None:
        people = config.get("people")
        if not isinstance(people, int) or isinstance(people, bool) or not 1 <= people <= 5_000_000:
            raise ConfigurationError("config.people must be an integer from 1 to 5000000")
        seed = config.get("seed", 1)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigurationError("config.seed must be an integer")
        groups = config.get("groups", max(10, people // 50))
        if not isinstance(groups, int) or not 1 <= groups <= 1_000_000:
            raise ConfigurationError("config.groups must be an integer from 1 to 1000000")

    def test_connection(self, request: TestConnectionRequest) -> TestConnectionResponse:
        try:
            self.validate_config(request.config, request.auth_config)
        except ConfigurationError as exc:
            return TestConnectionResponse(success=False, message=str(exc))
        return TestConnectionResponse(success=True, message="synthetic source ready",
                                      details={"people": request.config["people"]})

    @staticmethod
    def _person(seed: int, index: int, people: int, groups: int, grants_per_person: int):
        rng = random.Random(seed * 1_000_003 + index)  # noqa: S311 - synthetic data, not security
        external_id = f"syn-{index:07d}"
        # A tree: person i reports to (i - 1) // 8, giving depth log8(N) (about 6 for 100k).
        manager = None if index == 0 else f"syn-{(index - 1) // 8:07d}"
        first, last = rng.choice(FIRST), rng.choice(LAST)
        identity = RemoteIdentity(
            external_id=external_id, email=f"{first}.{last}.{index}@synthetic.example".lower(),
            first_name=first, last_name=last, department=DEPARTMENTS[index % len(DEPARTMENTS)],
            title="Manager" if index * 8 + 1 < people else "Staff", location=rng.choice(LOCATIONS),
            employment_type="employee", status="active", manager_external_id=manager,
        )
        account = RemoteAccount(native_id=f"uid={external_id}", username=f"{first}.{last}{index}".lower(),
                                identity_external_id=external_id)
        chosen = rng.sample(range(groups), min(grants_per_person, groups))
        grants = [RemoteGrant(entitlement_value=f"grp-{g:05d}", account_native_id=account.native_id)
                  for g in sorted(chosen)]
        return identity, account, grants

    def sync(self, request: SyncRequest) -> SyncResponse:
        self.validate_config(request.config, request.auth_config)
        people = request.config["people"]
        seed = request.config.get("seed", 1)
        groups = request.config.get("groups", max(10, people // 50))
        grants_per_person = request.config.get("grants_per_person", 10)
        limit = min(people, request.max_records or people)
        start = int(request.cursor or 0)
        end = min(start + request.chunk_size, limit)
        response = SyncResponse(success=True, total_estimate=limit)
        if start == 0:
            response.entitlements = [
                RemoteEntitlement(value=f"grp-{g:05d}", display_name=f"Group {g}", type="group")
                for g in range(groups)
            ]
        for index in range(start, end):
            identity, account, grants = self._person(seed, index, people, groups, grants_per_person)
            response.identities.append(identity)
            response.accounts.append(account)
            response.grants.extend(grants)
        response.has_more = end < limit
        response.next_cursor = str(end) if response.has_more else None
        return response
