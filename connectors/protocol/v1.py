"""ConnectorProtocol v1: the envelope every connector speaks (hosted or through the agent).

The first six models are the public contract, field for field. Everything after them is a
backward-compatible addition within v1: optional fields with defaults on the contract models
(paging), and new models for provisioning, test-connection and capability declaration. A
connector written against the bare contract keeps working: it ignores the cursor, returns
everything at once, and leaves ``has_more`` false.

Pure Python: no Django import here, ever.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = "1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False)


# --- the contract ---------------------------------------------------------------------------


class RemoteIdentity(_Model):
    """A person as the source system describes them."""

    external_id: str = Field(min_length=1, max_length=200)
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    display_name: str | None = None
    department: str | None = None
    title: str | None = None
    location: str | None = None
    employment_type: str | None = None
    status: str | None = None
    start_date: str | None = None
    end_date: str | None = None
    manager_external_id: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class RemoteAccount(_Model):
    """A login in the connected application."""

    native_id: str = Field(min_length=1, max_length=500)
    username: str | None = None
    status: Literal["active", "disabled", "deleted"] = "active"
    identity_external_id: str | None = Field(
        default=None, description="When the source knows the owner; otherwise correlation rules decide."
    )
    last_login_at: datetime | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class RemoteEntitlement(_Model):
    """Something grantable in the application: a group, a permission, a licence."""

    value: str = Field(min_length=1, max_length=500)
    display_name: str | None = None
    type: Literal["group", "permission", "license", "role", "other"] = "group"
    description: str | None = None
    risk_level: Literal["low", "medium", "high", "critical"] | None = None
    requestable: bool | None = None


class RemoteGrant(_Model):
    """An account (or identity) holding an entitlement in the application."""

    entitlement_value: str = Field(min_length=1, max_length=500)
    account_native_id: str | None = None
    identity_external_id: str | None = None


class SyncRequest(_Model):
    connector_business_id: str
    incremental: bool
    last_sync_at: datetime | None
    auth_config: dict[str, Any]
    # v1 additions: paging for large directories.
    cursor: str | None = Field(default=None, description="Opaque: where the previous chunk ended.")
    chunk_size: int = Field(default=1000, ge=1, le=50000)
    max_records: int | None = Field(default=None, ge=1)
    config: dict[str, Any] = Field(default_factory=dict, description="Non-secret connector settings.")


class RecordError(_Model):
    """One record the connector could not read; the sync reports it and goes on."""

    kind: Literal["identity", "account", "entitlement", "grant"]
    key: str | None = None
    location: str | None = Field(default=None, description="e.g. file and line, or DN.")
    error: str


class SyncResponse(_Model):
    success: bool
    identities: list[RemoteIdentity] = Field(default_factory=list)
    accounts: list[RemoteAccount] = Field(default_factory=list)
    entitlements: list[RemoteEntitlement] = Field(default_factory=list)
    grants: list[RemoteGrant] = Field(default_factory=list)
    error: str | None = None
    # v1 additions: paging.
    next_cursor: str | None = None
    has_more: bool = False
    total_estimate: int | None = Field(default=None, description="Records expected overall, for progress.")
    record_errors: list[RecordError] = Field(default_factory=list)

    @property
    def record_count(self) -> int:
        return len(self.identities) + len(self.accounts) + len(self.entitlements) + len(self.grants)


# --- v1 additions: provisioning, test connection, capabilities --------------------------------


class OperationKind(StrEnum):
    CREATE_ACCOUNT = "create_account"
    ENABLE_ACCOUNT = "enable_account"
    DISABLE_ACCOUNT = "disable_account"
    DELETE_ACCOUNT = "delete_account"
    ADD_GRANT = "add_grant"
    REMOVE_GRANT = "remove_grant"


class ProvisioningOperation(_Model):
    operation_id: str = Field(min_length=1, description="Caller's id, echoed in the result.")
    kind: OperationKind
    account_native_id: str | None = None
    username: str | None = None
    identity: RemoteIdentity | None = Field(default=None, description="For create_account: who it is for.")
    entitlement_value: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class ProvisioningRequest(_Model):
    connector_business_id: str
    auth_config: dict[str, Any]
    config: dict[str, Any] = Field(default_factory=dict)
    operations: list[ProvisioningOperation]


class OperationResult(_Model):
    operation_id: str
    success: bool
    account_native_id: str | None = Field(default=None, description="Set by create_account.")
    error: str | None = None
    retryable: bool = False


class ProvisioningResponse(_Model):
    results: list[OperationResult]


class TestConnectionRequest(_Model):
    connector_business_id: str
    auth_config: dict[str, Any]
    config: dict[str, Any] = Field(default_factory=dict)


class TestConnectionResponse(_Model):
    success: bool
    message: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class Capabilities(_Model):
    """What a connector can do; the dispatcher refuses what it cannot."""

    protocol_version: str = PROTOCOL_VERSION
    sync_identities: bool = False
    sync_accounts: bool = False
    sync_entitlements: bool = False
    sync_grants: bool = False
    incremental: bool = False
    paging: bool = False
    authoritative: bool = Field(default=False, description="An HR source: its identities drive lifecycle events.")
    operations: list[OperationKind] = Field(default_factory=list)


class ResultChunk(_Model):
    """Part of a SyncResponse's record lists, as an agent uploads it (``POST /agent/jobs/{id}/chunks``).

    A large page travels as several chunks; the server concatenates them in sequence order.
    """

    identities: list[RemoteIdentity] = Field(default_factory=list)
    accounts: list[RemoteAccount] = Field(default_factory=list)
    entitlements: list[RemoteEntitlement] = Field(default_factory=list)
    grants: list[RemoteGrant] = Field(default_factory=list)
    record_errors: list[RecordError] = Field(default_factory=list)

    @property
    def record_count(self) -> int:
        return len(self.identities) + len(self.accounts) + len(self.entitlements) + len(self.grants)


ENVELOPE_MODELS: tuple[type[BaseModel], ...] = (
    SyncRequest, SyncResponse, RemoteIdentity, RemoteAccount, RemoteEntitlement, RemoteGrant,
    RecordError, ProvisioningRequest, ProvisioningOperation, ProvisioningResponse, OperationResult,
    TestConnectionRequest, TestConnectionResponse, Capabilities, ResultChunk,
)


def json_schema() -> dict[str, Any]:
    """The JSON schema of the whole envelope, for connector authors (``python -m connectors.protocol.v1``)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"RapidValue ConnectorProtocol v{PROTOCOL_VERSION}",
        "$defs": {model.__name__: model.model_json_schema() for model in ENVELOPE_MODELS},
    }


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2, default=str))
