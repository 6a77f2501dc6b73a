"""Running one job locally: the connector call, then the upload of its result in chunks."""

from __future__ import annotations

import threading
from typing import Any

from connectors import builtin  # noqa: F401 - registers the built-in connector types
from connectors.base import Connector, ConnectorError, connector_class, has_path
from connectors.protocol.v1 import (
    ProvisioningRequest,
    SyncRequest,
    TestConnectionRequest,
)

from . import log
from .client import Client, ServerRefused, Stopped
from .config import AgentConfig

LIST_KEYS = ("identities", "accounts", "entitlements", "grants", "record_errors")


class JobAbandoned(Exception):
    """The server took the lease back (expired, revoked, cancelled): stop working on this job."""


def _local(config: AgentConfig, job: dict[str, Any]):
    connector = job["connector"]
    local = config.connectors.get(str(connector["id"]))
    if local is None:
        raise ConnectorError(f"connector {connector['id']} ({connector['name']}) is not configured on this agent")
    if local.type != connector["type"]:
        raise ConnectorError(f"connector {connector['id']} is '{connector['type']}' on the server but "
                             f"'{local.type}' in the agent's config")
    return local


def effective_config(cls: type[Connector], server: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    """The server's settings (mapping, filters, paging) under the agent's own config.

    Where the credentials go (URLs, TLS settings) and which local files are read are the
    agent's decision alone: the server may repeat the local value but never supply one, else a
    compromised or mistaken cloud side could send on-premises credentials to a host it chooses.
    """
    merged = {**server, **local}
    for path in cls.local_only_paths(merged):
        if has_path(server, path) and not has_path(local, path):
            raise ConnectorError(f"the server's config sets {'.'.join(path)}, which the agent takes only from its "
                                 "local config: set it there (connection targets never come from the server)")
    return merged


def run_connector(config: AgentConfig, job: dict[str, Any]) -> dict[str, Any]:
    """The protocol response of the job's call, with the agent's own credentials added here."""
    local = _local(config, job)
    cls = connector_class(local.type)
    request = dict(job["request"])
    request["auth_config"] = local.auth_config
    request["config"] = effective_config(cls, request.get("config") or {}, local.config)
    instance = cls()
    if job["kind"] == "sync":
        return instance.sync(SyncRequest.model_validate(request)).model_dump(mode="json")
    if job["kind"] == "test_connection":
        return instance.test_connection(TestConnectionRequest.model_validate(request)).model_dump(mode="json")
    if job["kind"] == "provision":
        return instance.provision(ProvisioningRequest.model_validate(request)).model_dump(mode="json")
    raise ConnectorError(f"unknown job kind {job['kind']}")


def chunks_of(result: dict[str, Any], size: int):
    """Split the record lists into chunks of at most ``size`` records, in a stable order."""
    chunk: dict[str, list] = {}
    count = 0
    for key in LIST_KEYS:
        for item in result.get(key) or []:
            chunk.setdefault(key, []).append(item)
            count += 1
            if count == size:
                yield chunk
                chunk, count = {}, 0
    if chunk:
        yield chunk


def report_failure(client: Client, job: dict[str, Any], message: str) -> bool:
    """Tell the server the job failed (so it is not leased again and again); best effort."""
    try:
        client.request("POST", f"/api/v1/agent/jobs/{job['id']}/fail",
                       json={"lease_id": job["lease"]["id"], "error": message[:4000]})
        return True
    except (ServerRefused, Stopped) as exc:
        log.warning("job.fail_not_reported", job=job["id"], error=str(exc))
        return False


def execute(client: Client, config: AgentConfig, job: dict[str, Any], stop: threading.Event) -> str:
    """Run the job and report it: chunks, then complete (or fail). Returns the outcome for the log.

    Outcomes: ``complete``, ``failed`` (reported to the server), ``unreported`` (failed, but the
    server could not be told: a shutdown hands it back), ``abandoned`` (the server took the lease
    back). A result the server refuses (400, 413) is reported as the job's failure.
    """
    job_id, lease_id = job["id"], job["lease"]["id"]
    base = f"/api/v1/agent/jobs/{job_id}"
    try:
        result = run_connector(config, job)
    except (ConnectorError, ValueError) as exc:
        message = f"{exc.__class__.__name__}: {exc}"
        log.warning("job.connector_error", job=job_id, error=message)
        return "failed" if report_failure(client, job, message) else "unreported"
    try:
        sequence = 0
        for chunk in chunks_of(result, config.upload_chunk_records):
            # Re-sending the same sequence after a network error is harmless: the server keeps the first.
            client.request("POST", f"{base}/chunks", json={"lease_id": lease_id, "sequence": sequence,
                                                          "payload": chunk})
            sequence += 1
        meta = {k: v for k, v in result.items() if k not in LIST_KEYS}
        client.request("POST", f"{base}/complete", json={"lease_id": lease_id, "chunk_count": sequence,
                                                        "result": meta})
        log.info("job.complete", job=job_id, kind=job["kind"], chunks=sequence,
                 records=sum(len(result.get(k) or []) for k in LIST_KEYS))
        return "complete"
    except ServerRefused as exc:
        if exc.status in (404, 409):
            log.warning("job.abandoned", job=job_id, reason=str(exc))
            return "abandoned"
        if exc.status in (400, 413, 422):
            # The result itself is refused: sending it again would be refused again.
            log.warning("job.result_refused", job=job_id, error=str(exc))
            return "failed" if report_failure(client, job, f"the server refused the result: {exc}") else "unreported"
        raise
