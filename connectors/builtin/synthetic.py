"""A synthetic HR source: a realistic organisation of N people, the same for the same seed.

For demos and benchmarks. Every person has an identity, one directory account and a handful
of group memberships; chunks are cut by person so memory stays bounded whatever N is.
"""

from __future__ import annotations

from functools import lru_cache
from math import gcd
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
_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of an integer (deterministic, not secret)."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


@lru_cache(maxsize=16)
def _group_names(groups: int) -> tuple[str, ...]:
    return tuple(f"grp-{g:05d}" for g in range(groups))


@lru_cache(maxsize=16)
def _coprime_steps(groups: int) -> list[int]:
    """Steps coprime with ``groups``: k * step mod groups then never repeats within ``groups`` steps."""
    return [step for step in range(1, max(2, min(groups, 4096))) if gcd(step, groups) == 1] or [1]


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
    def _person(seed: int, index: int, people: int, groups: int, grants_per_person: int, steps: list[int]):
        # One 64-bit hash per person instead of a seeded random.Random and rng.sample: seeding a
        # Mersenne Twister and sampling cost ~40 us a person, most of a 100k-person chunk's time.
        h = _mix64(seed * 1_000_003 + index)
        external_id = f"syn-{index:07d}"
        # A tree: person i reports to (i - 1) // 8, giving depth log8(N) (about 6 for 100k).
        manager = None if index == 0 else f"syn-{(index - 1) // 8:07d}"
        first, last = FIRST[h % len(FIRST)], LAST[(h >> 8) % len(LAST)]
        identity = RemoteIdentity(
            external_id=external_id, email=f"{first}.{last}.{index}@synthetic.example".lower(),
            first_name=first, last_name=last, department=DEPARTMENTS[index % len(DEPARTMENTS)],
            title="Manager" if index * 8 + 1 < people else "Staff", location=LOCATIONS[(h >> 16) % len(LOCATIONS)],
            employment_type="employee", status="active", manager_external_id=manager,
        )
        native_id = f"uid={external_id}"
        account = RemoteAccount(native_id=native_id, username=f"{first}.{last}{index}".lower(),
                                identity_external_id=external_id)
        # Distinct groups: an arithmetic progression modulo `groups` with a step coprime to it.
        start, step = (h >> 24) % groups, steps[(h >> 44) % len(steps)]
        chosen = sorted((start + k * step) % groups for k in range(min(grants_per_person, groups)))
        names = _group_names(groups)
        grants = [RemoteGrant(entitlement_value=names[g], account_native_id=native_id) for g in chosen]
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
                RemoteEntitlement(value=name, display_name=f"Group {g}", type="group")
                for g, name in enumerate(_group_names(groups))
            ]
        steps = _coprime_steps(groups)
        for index in range(start, end):
            identity, account, grants = self._person(seed, index, people, groups, grants_per_person, steps)
            response.identities.append(identity)
            response.accounts.append(account)
            response.grants.extend(grants)
        response.has_more = end < limit
        response.next_cursor = str(end) if response.has_more else None
        return response
