"""``rapidvalue-agent run``: heartbeats, the long-poll loop, one job at a time, clean shutdown.

Threads: the main thread polls and supervises; a heartbeat thread reports presence (and the job
in hand, which keeps its lease alive); a job thread runs the connector and uploads. On SIGTERM or
SIGINT the agent stops polling, lets the job in hand finish for up to ``shutdown_grace_seconds``,
and otherwise hands it back to the server (``release``) so another run picks it up at once.
"""

from __future__ import annotations

import platform
import signal
import threading
from typing import Any

from connectors.base import connector_types

from . import __version__, jobs, log
from .client import Client, ServerRefused, Stopped
from .config import AgentConfig, ConfigError, read_state

FINISHED = ("complete", "failed", "abandoned")


class _Interrupted(Exception):
    pass


class AgentRuntime:
    def __init__(self, config: AgentConfig, server_url: str, token: str):
        self.config = config
        self.stop = threading.Event()
        self.client = Client(server_url, token, verify=config.verify_tls, max_backoff=config.max_backoff_seconds,
                             stop=self.stop, token_source=self._token_on_disk)
        self.heartbeat_seconds = 30.0
        self.current: dict[str, Any] | None = None
        self._polling = False
        self._given_up = threading.Event()  # the server no longer holds the job in hand for us
        self.fatal: str | None = None

    def _token_on_disk(self) -> str | None:
        """``rotate-token`` run beside a running agent writes the new token to the state file."""
        try:
            return read_state(self.config.state_file).get("token")
        except ConfigError:
            return None

    # -- presence ------------------------------------------------------------------------

    def heartbeat_once(self) -> None:
        body = {"version": __version__, "hostname": platform.node(),
                "capabilities": {"connector_types": sorted(connector_types()),
                                 "configured_connectors": sorted(self.config.connectors)},
                "running_jobs": [self.current["id"]] if self.current else []}
        ack = self.client.request("POST", "/api/v1/agent/heartbeat", json=body, retry=False).json()
        self.heartbeat_seconds = float(ack.get("heartbeat_seconds", self.heartbeat_seconds))
        current = self.current
        if current is not None and current["id"] in (ack.get("released_jobs") or []):
            log.warning("job.released_by_server", job=current["id"])
            self._given_up.set()

    def _heartbeats(self) -> None:
        while not self.stop.is_set():
            try:
                self.heartbeat_once()
            except ServerRefused as exc:
                if exc.status == 401:
                    self._fatal(f"the server refused the agent token ({exc.code}); enroll again")
                    return
                log.warning("heartbeat.refused", error=str(exc))
            except Stopped as exc:
                log.warning("heartbeat.failed", problem=str(exc))
            self.stop.wait(self.heartbeat_seconds)

    def _fatal(self, message: str) -> None:
        log.error("agent.fatal", error=message)
        self.fatal = message
        self.stop.set()

    # -- shutdown ------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        log.info("agent.stopping", signal=signal.Signals(signum).name, job=self.current["id"] if self.current else None)
        self.stop.set()
        if self._polling:
            raise _Interrupted()

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("agent.start", version=__version__, server=self.client.base_url,
                 connectors=sorted(self.config.connectors))
        beats = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        beats.start()
        try:
            while not self.stop.is_set():
                job = self._next_job()
                if job is not None:
                    self._run_job(job)
        finally:
            self.client.close()
            log.info("agent.stopped", reason=self.fatal or "signal")
        return 1 if self.fatal else 0

    def _next_job(self) -> dict[str, Any] | None:
        wait = self.config.long_poll_seconds
        self._polling = True
        try:
            response = self.client.request("GET", "/api/v1/agent/jobs/next", params={"wait": wait},
                                           timeout=wait + 15)
        except _Interrupted:
            return None
        except Stopped:
            return None
        except ServerRefused as exc:
            if exc.status == 401:
                self._fatal(f"the server refused the agent token ({exc.code}); enroll again")
            else:
                log.warning("jobs.refused", error=str(exc))
                self.stop.wait(5)
            return None
        finally:
            self._polling = False
        if response.status_code == 204:
            return None
        return response.json()

    def _run_job(self, job: dict[str, Any]) -> None:
        self.current = job
        log.info("job.start", job=job["id"], kind=job["kind"], attempt=job["attempt"], connector=job["connector"]["id"])
        outcome: dict[str, str] = {}

        def work() -> None:
            try:
                outcome["result"] = jobs.execute(self.client, self.config, job, self.stop)
            except Stopped as exc:
                outcome["result"] = f"interrupted: {exc}"
            except Exception as exc:  # a bug or an unexpected answer: report it, keep the agent alive
                message = f"{exc.__class__.__name__}: {exc}"
                log.error("job.crashed", job=job["id"], error=message)
                # Failed on the server rather than leased again and again until AGENT_MAX_ATTEMPTS.
                reported = jobs.report_failure(self.client, job, f"the agent crashed on this job: {message}")
                outcome["result"] = "failed" if reported else "crashed"

        self._given_up.clear()
        worker = threading.Thread(target=work, name=f"job-{job['id']}", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(timeout=0.2)
            if self._given_up.is_set() and worker.is_alive():
                # The server cancelled it (e.g. its caller timed out) while the connector hangs: leave
                # the thread behind (its uploads will be refused) and take new work.
                outcome["result"] = "abandoned"
                break
            if self.stop.is_set() and worker.is_alive():
                worker.join(timeout=self.config.shutdown_grace_seconds)
                break
        given_up = outcome.get("result") == "abandoned"
        if not given_up and (worker.is_alive() or (self.stop.is_set() and outcome.get("result") not in FINISHED)):
            # Still running after the grace period, or cut short by the shutdown: hand it back so
            # another run of the agent takes it at once instead of after the lease expires.
            self._hand_back(job)
        log.info("job.end", job=job["id"], outcome=outcome.get("result", "running"))
        self.current = None

    def _hand_back(self, job: dict[str, Any]) -> None:
        # A client of its own: the main one is stopping (it gives up retries once stop is set).
        client = Client(self.client.base_url, self.client.token, verify=self.config.verify_tls)
        try:
            client.request("POST", f"/api/v1/agent/jobs/{job['id']}/release", json={"lease_id": job["lease"]["id"]},
                           retry=False)
            log.info("job.released", job=job["id"])
        except (ServerRefused, Stopped) as exc:
            log.warning("job.release_failed", job=job["id"], error=str(exc))
        finally:
            client.close()
