"""``rapidvalue-agent``: enroll, run, status, rotate-token."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from . import __version__, log
from .client import Client, ServerRefused, Stopped
from .config import AgentConfig, ConfigError, load_config, read_state, write_state


def _state_path(args) -> Path:
    if getattr(args, "state", None):
        return Path(args.state)
    if getattr(args, "config", None):
        return load_config(args.config).state_file
    return Path("state.json")


def cmd_enroll(args) -> int:
    client = Client(args.url, verify=not args.insecure)
    try:
        body = client.request("POST", "/api/v1/agent/register", retry=False,
                              json={"code": args.code, "version": __version__, "hostname": platform.node()}).json()
    except ServerRefused as exc:
        log.error("enroll.refused", status=exc.status, error_code=exc.code)
        return 2
    except Stopped as exc:
        log.error("enroll.unreachable", problem=str(exc))
        return 3
    path = _state_path(args)
    write_state(path, {"server_url": args.url.rstrip("/"), "token": body["token"], "agent_id": body["agent_id"],
                       "name": body["name"], "tenant": body["tenant"],
                       "enrolled_at": datetime.now(UTC).isoformat()})
    log.info("enroll.ok", agent_id=body["agent_id"], name=body["name"], tenant=body["tenant"], state_file=str(path))
    return 0


def _load(args) -> tuple[AgentConfig, dict]:
    config = load_config(args.config)
    state = read_state(config.state_file)
    if not state.get("token"):
        raise ConfigError(f"not enrolled: run 'rapidvalue-agent enroll' first (no token in {config.state_file})")
    return config, state


def cmd_run(args) -> int:
    from .runtime import AgentRuntime

    config, state = _load(args)
    url = config.server_url or state["server_url"]
    return AgentRuntime(config, url, state["token"]).run()


def cmd_status(args) -> int:
    """What this agent is, whether the server knows it, and which connectors it can run (no secrets)."""
    config, state = _load(args)
    url = config.server_url or state["server_url"]
    report = {"version": __version__, "server_url": url, "agent_id": state.get("agent_id"),
              "name": state.get("name"), "tenant": state.get("tenant"), "enrolled_at": state.get("enrolled_at"),
              "connectors": {cid: c.type for cid, c in sorted(config.connectors.items())}}
    client = Client(url, state["token"], verify=config.verify_tls)
    try:
        whoami = client.request("GET", "/api/v1/agent/whoami", retry=False).json()
        report.update(server="reachable", token="accepted", server_agent_id=whoami.get("agent_id"))
        code = 0
    except ServerRefused as exc:
        report.update(server="reachable", token=f"refused ({exc.code})")
        code = 1
    except Stopped as exc:
        report.update(server=f"unreachable ({exc})")
        code = 1
    print(json.dumps(report, indent=2))
    return code


def cmd_rotate(args) -> int:
    config, state = _load(args)
    url = config.server_url or state["server_url"]
    client = Client(url, state["token"], verify=config.verify_tls)
    try:
        token = client.request("POST", "/api/v1/agent/token/rotate", retry=False).json()["token"]
    except (ServerRefused, Stopped) as exc:
        log.error("token.rotate_failed", error=str(exc))
        return 1
    write_state(config.state_file, {**state, "token": token, "rotated_at": datetime.now(UTC).isoformat()})
    log.info("token.rotated", state_file=str(config.state_file))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rapidvalue-agent", description="RapidValue on-premises agent.")
    parser.add_argument("--version", action="version", version=f"rapidvalue-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    enroll = sub.add_parser("enroll", help="trade a one-time enrollment code for this agent's token")
    enroll.add_argument("--url", required=True, help="RapidValue base URL, e.g. https://acme.rapidvalue.example")
    enroll.add_argument("--code", required=True, help="the one-time code shown when the agent was created")
    enroll.add_argument("--config", help="config file (its state_file receives the token)")
    enroll.add_argument("--state", help="state file to write (default: the config's, else ./state.json)")
    enroll.add_argument("--insecure", action="store_true", help="do not verify TLS (testing only)")
    for name, helptext in (("run", "heartbeat, pull jobs and run connectors until stopped"),
                           ("status", "print this agent's enrollment and the server's view of it"),
                           ("rotate-token", "replace the agent token (the old one stops working at once)")):
        command = sub.add_parser(name, help=helptext)
        command.add_argument("--config", required=True, help="the agent's TOML config file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"enroll": cmd_enroll, "run": cmd_run, "status": cmd_status, "rotate-token": cmd_rotate}
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        log.error("config.invalid", error=str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
