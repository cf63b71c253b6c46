"""Run tradeloop services as separate processes (the demo and the end-to-end tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SERVICES = ("registry", "trainer", "inference", "ingest")


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """GET ``url`` and return the status (None when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback URLs only
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class ServiceProcess:
    """One running service."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class ServiceGroup:
    """Start, watch and stop service processes that share one environment."""

    env: dict[str, str]
    log_dir: Path
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    def start(self, name: str, extra_env: dict[str, str] | None = None, instance: str | None = None) -> ServiceProcess:
        """Start ``python -m services.<name>`` on a free port."""
        key = instance or name
        port = free_port()
        env = {**os.environ, **self.env, **(extra_env or {}), "TRADELOOP_HTTP_PORT": str(port)}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{key}.log"
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"], env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
        self.processes[key] = ServiceProcess(key, port, process, log_path)
        return self.processes[key]

    def wait_ready(self, timeout: float = 60.0, names: list[str] | None = None) -> None:
        """Wait until every (or each named) service answers ``/health/ready`` with 200."""
        deadline = time.monotonic() + timeout
        for key in names or list(self.processes):
            service = self.processes[key]
            while http_status(f"{service.base_url}/health/ready") != 200:
                if service.process.poll() is not None:
                    raise RuntimeError(f"{key} exited with {service.process.returncode}:\n{service.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{key} not ready after {timeout:g} s:\n{service.log_tail()}")
                time.sleep(0.2)

    def kill(self, key: str) -> None:
        """SIGKILL one service (a crash)."""
        service = self.processes.pop(key)
        service.process.kill()
        service.process.wait(timeout=10)

    def stop(self, key: str, timeout: float = 20.0, signalled: bool = False) -> int:
        """SIGINT one service and wait for a graceful exit (SIGKILL after ``timeout``)."""
        service = self.processes.pop(key)
        if service.process.poll() is None:
            if not signalled:
                service.process.send_signal(signal.SIGINT)
            try:
                service.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait(timeout=10)
        return int(service.process.returncode)

    def stop_all(self, timeout: float = 20.0) -> dict[str, int]:
        """Stop every service; return their exit codes."""
        for service in self.processes.values():
            if service.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    service.process.send_signal(signal.SIGINT)
        return {key: self.stop(key, timeout, signalled=True) for key in list(self.processes)}
