"""HTTP benchmark: ProxyStore's own client against a real ProxyStore endpoint and this site.

    .venv/bin/python bench/http.py [--quick]

Every server runs in a process of its own under uvicorn, with no access log:
ProxyStore's ``proxystore-endpoint`` (Quart) with its DictStorage and with its
SQLite storage (``--persist``), and this site's ProxyStore routes
(``blobstore.contrib.proxystore``) on our DictStorage, SQLiteStorage and
ORMStorage (SQLite file). ProxyStore's ``EndpointConnector`` is the one client:
1 KiB put/get/exists/evict in operations per second (the median of rounds
that take turns across servers), 100 MiB put/get in MiB/s, and each server's
peak resident memory. Then httpx against our REST routes. Ratios are ours over
theirs, from this one run.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder leads sys.path, and this file's name
# would hide the standard library's http package from everything imported.
# Put the repository there instead, for the bench package and the demo site.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import argparse  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import httpx  # noqa: E402
from proxystore.connectors.endpoint import EndpointConnector  # noqa: E402

from bench.ceiling import UUID as CEILING_UUID  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SMALL = os.urandom(1024)
MIB = 1024 * 1024


@dataclass
class Server:
    """One endpoint server process: ProxyStore's ("theirs") or this site ("ours")."""

    label: str
    kind: str
    backend: str
    home: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    uuid: str = ""
    token: str = ""
    results: dict[str, list[float]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "PROXYSTORE_HOME": str(self.home),
            "BLOBSTORE_VAR_DIR": str(self.home / self.label),
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "BLOBSTORE_BENCH_BACKEND": self.backend,
            "DJANGO_SUPERUSER_PASSWORD": "bench",
            "BLOBSTORE_BENCH_UUID": str(
                uuid.UUID(bytes=uuid.uuid5(uuid.NAMESPACE_URL, self.label).bytes, version=4)
            ),
        }

    def run(self, *command: str | Path) -> str:
        done = subprocess.run(
            [str(part) for part in command],
            cwd=ROOT,
            env=self.environment(),
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    def start(self) -> None:
        command: list[str | Path]
        if self.kind == "ceiling":
            config = self.home / self.label / "config.toml"
            config.parent.mkdir(parents=True)
            config.write_text(f'name = "{self.label}"\nuuid = "{CEILING_UUID}"\n'
                              f'host = "127.0.0.1"\nport = {self.port}\n')  # fmt: skip
            command = [sys.executable, "-m", "uvicorn", "bench.ceiling:app", "--host",
                       "127.0.0.1", "--port", str(self.port), "--no-access-log"]  # fmt: skip
        elif self.kind == "theirs":
            persist = ["--persist"] if self.backend == "sqlite" else []
            self.run(
                BIN / "proxystore-endpoint", "configure", self.label, "--host", "127.0.0.1",
                "--port", str(self.port), "--no-relay-server", *persist,
            )  # fmt: skip
            # Its default limit, 10**8 bytes, is less than the 100 MiB blob.
            config = self.home / self.label / "config.toml"
            config.write_text(
                config.read_text().replace(
                    "max_object_size = 100000000", "max_object_size = 1073741824"
                )
            )
            command = [BIN / "proxystore-endpoint", "start", self.label, "--no-detach"]
        else:
            manage = [sys.executable, "manage.py"]
            self.run(*manage, "migrate", "--verbosity=0")
            self.run(*manage, "blobstore", "proxystore-config", self.label, "--host", "127.0.0.1",
                     "--port", str(self.port), "--proxystore-home", self.home)  # fmt: skip
            self.run(*manage, "createsuperuser", "--noinput", "--username=bench", "--email=b@x.org")
            self.token = self.run(*manage, "blobstore", "token", "bench").strip()
            command = [sys.executable, "-m", "uvicorn", "project.asgi:application", "--host",
                       "127.0.0.1", "--port", str(self.port), "--no-access-log", "--log-level",
                       "warning"]  # fmt: skip
        self.process = subprocess.Popen(
            [str(part) for part in command],
            cwd=ROOT,
            env=self.environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.uuid = self._wait_for_uuid()

    def _wait_for_uuid(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                return str(httpx.get(f"{self.url}/endpoint", timeout=2).json()["uuid"])
            except (httpx.TransportError, ValueError):
                time.sleep(0.2)
        raise SystemExit(f"{self.label} did not start within 60 s")

    def peak_rss_mib(self) -> float:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
        return int(kib) / 1024

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)

    def record(self, name: str, value: float) -> None:
        self.results.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.results[name]) if name in self.results else float("nan")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def timed(operation: Callable[[], object], count: int) -> float:
    """Return operations per second of count calls."""
    start = time.perf_counter()
    for _ in range(count):
        operation()
    return count / (time.perf_counter() - start)


def small_round(server: Server, connector: EndpointConnector, count: int) -> None:
    keys = [connector.put(SMALL) for _ in range(count // 4)]  # warm up and seed
    start = time.perf_counter()
    keys += [connector.put(SMALL) for _ in range(count)]
    server.record("put", count / (time.perf_counter() - start))
    probe = iter(keys * 2)
    server.record("get", timed(lambda: connector.get(next(probe)), count))
    server.record("exists", timed(lambda: connector.exists(next(probe)), count))
    victims = iter(keys)
    server.record("evict", timed(lambda: connector.evict(next(victims)), count))


def large_round(server: Server, connector: EndpointConnector, blob: bytes) -> None:
    start = time.perf_counter()
    key = connector.put(blob)
    server.record("put 100 MiB", len(blob) / MIB / (time.perf_counter() - start))
    start = time.perf_counter()
    data = connector.get(key)
    server.record("get 100 MiB", len(blob) / MIB / (time.perf_counter() - start))
    assert data == blob
    connector.evict(key)


def rest_round(server: Server, count: int) -> None:
    headers = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=f"{server.url}/blobs/", headers=headers) as client:
        keys = [f"rest/{n}" for n in range(count)]
        calls: dict[str, Callable[[str], httpx.Response]] = {
            "REST PUT": lambda key: client.put(key, content=SMALL),
            "REST GET": client.get,
            "REST HEAD": client.head,
            "REST DELETE": client.delete,
        }
        for name, call in calls.items():
            names = iter(keys)
            server.record(name, timed(lambda: call(next(names)), count))  # noqa: B023 - run at once


def report(servers: list[Server], blob_mib: int) -> None:
    theirs = {server.backend: server for server in servers if server.kind == "theirs"}
    ours = [server for server in servers if server.kind == "ours"]
    ops = ["put", "get", "exists", "evict", "put 100 MiB", "get 100 MiB"]
    print("\nceiling: a raw ASGI app that answers at once (bench/ceiling.py): the client's limit")
    print(f"\n{'median':<14}" + "".join(f"{server.label:>15}" for server in servers))
    for op in ops:
        unit = "MiB/s" if "MiB" in op else "ops/s"
        row = "".join(f"{server.median(op):>15,.0f}" for server in servers)
        print(f"{op + ' ' + unit:<14}{row}")
    print(f"{'peak RSS MiB':<14}" + "".join(f"{s.peak_rss_mib():>15,.0f}" for s in servers))
    ceiling = next(server for server in servers if server.kind == "ceiling")
    print("\nratios, ours / theirs (same kind: dict/dict; SQLite and ORM / their SQLite)")
    checks: list[tuple[str, bool]] = []
    for server in ours:
        other = theirs["dict" if server.backend == "dict" else "sqlite"]
        ratios = {op: server.median(op) / other.median(op) for op in ops}
        print(f"  {server.label:<14} vs {other.label:<14}"
              + "  ".join(f"{op} {ratio:.2f}x" for op, ratio in ratios.items()))  # fmt: skip
        small_target = 1.0 if server.backend == "dict" else 2.0
        for op in ops[:4]:
            reachable = other.median(op) * small_target <= ceiling.median(op)
            note = "" if reachable else f" (above the ceiling, {ceiling.median(op):,.0f}/s)"
            checks.append(
                (f"{server.label} {op} >= {small_target}x{note}", ratios[op] >= small_target)
            )
        for op in ops[4:]:
            checks.append((f"{server.label} {op} >= 1.0x", ratios[op] >= 1.0))
        peak = server.peak_rss_mib()
        checks.append((f"{server.label} peak RSS {peak:.0f} MiB < 2.5 x {blob_mib} MiB",
                       peak < 2.5 * blob_mib))  # fmt: skip
    print("\nhttpx against our REST routes (1 KiB, ops/s, median)")
    for server in ours:
        print(f"  {server.label:<14}"
              + "  ".join(f"{op} {server.median(op):,.0f}" for op in server.results
                          if op.startswith("REST")))  # fmt: skip
    print("\ntargets (issue 3)")
    for text, passed in checks:
        print(f"  {'PASS' if passed else 'MISS'}  {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds and a 10 MiB blob")
    arguments = parser.parse_args()
    rounds, count, blob_mib = (1, 100, 10) if arguments.quick else (5, 300, 100)
    print(f"python {sys.version.split()[0]}; {' '.join(sys.argv)}")
    print(f"{rounds} rounds of {count} ops per 1 KiB operation; {blob_mib} MiB blob")
    with tempfile.TemporaryDirectory(dir=ROOT / "var" if (ROOT / "var").exists() else None) as home:
        servers = [
            Server("ceiling", "ceiling", "none", Path(home), free_port()),
            Server("theirs-dict", "theirs", "dict", Path(home), free_port()),
            Server("theirs-sqlite", "theirs", "sqlite", Path(home), free_port()),
            Server("ours-dict", "ours", "dict", Path(home), free_port()),
            Server("ours-sqlite", "ours", "sqlite", Path(home), free_port()),
            Server("ours-orm", "ours", "orm", Path(home), free_port()),
        ]
        try:
            for server in servers:
                server.start()
            connectors = {
                server.label: EndpointConnector([server.uuid], proxystore_dir=home)
                for server in servers
            }
            for server in servers:  # each client talks to its own server, not a namesake
                assert connectors[server.label].address == server.url, server.label
            blob = os.urandom(blob_mib * MIB)
            for number in range(rounds):
                turn = servers[number % len(servers) :] + servers[: number % len(servers)]
                for server in turn:
                    small_round(server, connectors[server.label], count)
                    if server.kind != "ceiling":
                        large_round(server, connectors[server.label], blob)
                    if server.kind == "ours":
                        rest_round(server, count)
            report(servers, blob_mib)
        finally:
            for server in servers:
                server.stop()


if __name__ == "__main__":
    main()
