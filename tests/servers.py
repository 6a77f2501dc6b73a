"""A real application server for end-to-end tests: gunicorn on a loopback port, serving the test database.

gthread workers, so that long polls (the agent spine) do not starve other requests. The server can
be killed and started again on the same port (restart tests); its log is kept for assertions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from django.conf import settings

from tests.ldap_server import free_port

REPO = Path(__file__).resolve().parent.parent


class Server:
    def __init__(self, database_url: str, log_dir: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.log_dir = log_dir
        self.env = env or {}
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Server:
        self.starts += 1
        env = {**os.environ, **self.env, "DATABASE_URL": self.database_url, "REDIS_URL": settings.REDIS_URL,
               "DJANGO_SETTINGS_MODULE": "rapidvalue.settings", "PYTHONUNBUFFERED": "1"}
        log = (self.log_dir / f"server-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "rapidvalue.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
             "--workers", "1", "--worker-class", "gthread", "--threads", "8", "--timeout", "60",
             "--graceful-timeout", "2", "--log-level", "warning"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, self.log()
            time.sleep(0.2)
        raise AssertionError(f"server did not start\n{self.log()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.log_dir.glob("server-*.log")))
