"""A small network of hosts on one machine, for tests of what crosses a network.

Linux network namespaces joined by veth pairs: a `hub` namespace with a bridge, where the shared
services run (a PostgreSQL of the lab's own, the vendor sandbox), and one namespace per host,
each on the bridge through its own veth pair, the link a test can cut. The test process itself
reaches the hub over one more veth pair, on a private /30 of its own. Nothing else on the
machine is touched; `close()` deletes every namespace and interface it made.

Needs root, iproute2 and PostgreSQL's server binaries; `unavailable()` says why not, for a skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BRIDGE_NET = "10.231.0"  # inside the lab only: hub .1, host N .(10+N)
PG_PORT = 5432


def _control_net(pid: int) -> tuple[str, str]:
    """The /30 of the test's own link to the hub: (its end, the hub's end). This one lives in
    the machine's namespace, so it differs per process: two test sessions may run labs at once."""
    base = 4 * (pid % 64)
    third = (pid // 64) % 256
    return f"10.232.{third}.{base + 1}", f"10.232.{third}.{base + 2}"


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else None


def unavailable() -> str | None:
    """Why a lab cannot be made here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if shutil.which("runuser") is None or _pg_bin("postgres") is None:
        return "PostgreSQL's server binaries (/usr/lib/postgresql/*/bin) are not installed"
    probe = f"crmsync-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Lab:
    """`Lab(hosts=3)`: namespaces `<tag>hub`, `<tag>h1`..; close() removes them."""

    hosts: int
    tag: str = field(default_factory=lambda: f"cs{os.getpid() % 100000}")
    _namespaces: list[str] = field(default_factory=list)
    _links: list[str] = field(default_factory=list)
    _pg_dir: Path | None = None
    _pg: subprocess.Popen[bytes] | None = None

    def ns(self, name: str) -> str:
        return f"{self.tag}{name}"

    def host_ip(self, n: int) -> str:
        return f"{BRIDGE_NET}.{10 + n}"

    @property
    def hub_ip(self) -> str:
        """The hub as the hosts see it."""
        return f"{BRIDGE_NET}.1"

    @property
    def control_ip(self) -> str:
        """The hub as the test process sees it."""
        return _control_net(os.getpid())[1]

    def up(self) -> Lab:
        hub = self.ns("hub")
        run("ip", "netns", "add", hub)
        self._namespaces.append(hub)
        run("ip", "-n", hub, "link", "set", "lo", "up")
        run("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", hub, "addr", "add", f"{self.hub_ip}/24", "dev", "br0")
        run("ip", "-n", hub, "link", "set", "br0", "up")
        for n in range(1, self.hosts + 1):
            host = self.ns(f"h{n}")
            run("ip", "netns", "add", host)
            self._namespaces.append(host)
            run("ip", "-n", host, "link", "set", "lo", "up")
            # Made in the host's namespace, so no name is ever taken in the machine's own.
            run("ip", "-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{n}",
                "netns", hub)  # fmt: skip
            run("ip", "-n", host, "addr", "add", f"{self.host_ip(n)}/24", "dev", "eth0")
            run("ip", "-n", host, "link", "set", "eth0", "up")
            run("ip", "-n", hub, "link", "set", f"p{n}", "master", "br0")
            run("ip", "-n", hub, "link", "set", f"p{n}", "up")
        control = f"{self.tag}c"
        mine, hubs = _control_net(os.getpid())
        run("ip", "link", "add", control, "type", "veth", "peer", "name", "c0", "netns", hub)
        self._links.append(control)
        run("ip", "addr", "add", f"{mine}/30", "dev", control)
        run("ip", "link", "set", control, "up")
        run("ip", "-n", hub, "addr", "add", f"{hubs}/30", "dev", "c0")
        run("ip", "-n", hub, "link", "set", "c0", "up")
        return self

    def cut(self, n: int) -> None:
        """Cut host n's link: its packets are dropped, its connections stall (nothing resets)."""
        run("ip", "-n", self.ns("hub"), "link", "set", f"p{n}", "down")

    def restore(self, n: int) -> None:
        run("ip", "-n", self.ns("hub"), "link", "set", f"p{n}", "up")

    def command(self, where: str, argv: list[str], hostname: str | None = None) -> list[str]:
        """`argv` run in namespace `where` ("hub", "h1", ...), with its own host name if given."""
        prefix = ["ip", "netns", "exec", self.ns(where)]
        if hostname is None:
            return [*prefix, *argv]
        # Its own UTS namespace, so that the worker's id (host:pid:...) names this host.
        return [*prefix, "unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"',
                "sh", *argv]  # fmt: skip

    # --- PostgreSQL on the hub ----------------------------------------------------------

    def start_postgres(self) -> str:
        """A throwaway cluster on the hub (trust auth); returns its URL as the hosts see it."""
        pg_dir = Path(tempfile.mkdtemp(prefix="crmsync-netlab-pg-"))
        self._pg_dir = pg_dir
        shutil.chown(pg_dir, "postgres", "postgres")
        data = pg_dir / "data"
        initdb = _pg_bin("initdb")
        assert initdb is not None
        run("runuser", "-u", "postgres", "--", initdb, "-D", str(data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync")  # fmt: skip
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 10.231.0.0/16 trust\nhost all all 10.232.0.0/16 trust\n")
        postgres = _pg_bin("postgres")
        assert postgres is not None
        argv = ["runuser", "-u", "postgres", "--", postgres, "-D", str(data),
                "-c", "listen_addresses=*", "-c", f"port={PG_PORT}",
                "-c", f"unix_socket_directories={pg_dir}", "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=200"]  # fmt: skip
        with (pg_dir / "postgres.log").open("wb") as log:
            self._pg = subprocess.Popen(self.command("hub", argv), stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        ready = _pg_bin("pg_isready")
        assert ready is not None
        while subprocess.run([ready, "-q", "-h", self.control_ip, "-p", str(PG_PORT)]).returncode:
            if self._pg.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the lab's PostgreSQL did not start:\n" + self.postgres_log())
            time.sleep(0.1)
        return f"postgresql+asyncpg://postgres@{self.hub_ip}:{PG_PORT}/postgres"

    def postgres_log(self) -> str:
        if self._pg_dir is None:
            return ""
        return (self._pg_dir / "postgres.log").read_text(errors="replace")

    def control_url(self, url: str) -> str:
        """A URL of a service on the hub, as the test process (not the hosts) reaches it."""
        return url.replace(f"{self.hub_ip}:", f"{self.control_ip}:")

    def close(self) -> None:
        if self._pg is not None and self._pg.poll() is None:
            self._pg.terminate()
            try:
                self._pg.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._pg.kill()
                self._pg.wait(timeout=10)
        for link in self._links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        for name in reversed(self._namespaces):
            # Kill what still runs in it first: a namespace with processes in it lingers.
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for pid in pids.stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        if self._pg_dir is not None:
            shutil.rmtree(self._pg_dir, ignore_errors=True)
