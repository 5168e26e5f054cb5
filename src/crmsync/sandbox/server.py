"""Running the sandbox: `serve()` for the CLI, `SandboxServer` for tests and benchmarks.

`serve(host, port, config)` prints where the fakes are, their credentials and the `.env` lines
that point crmsync at them, then runs uvicorn (uvloop + httptools, access log off) until
interrupted. `crmsync sandbox` and `python -m crmsync.sandbox` both end up here.

`SandboxServer` starts the app on a free 127.0.0.1 port in a background thread (default; cheap,
and `.sandbox` gives direct access to the state) or in a subprocess (`subprocess=True`; the
sandbox gets its own interpreter and core, which benchmarks need). See its docstring.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import subprocess as _subprocess
import sys
import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from crmsync.netutil import bind_tcp
from crmsync.sandbox.app import Sandbox, create_app
from crmsync.sandbox.config import VENDORS, SandboxConfig, options_dict

log = logging.getLogger(__name__)


class _QuietOnPurpose(logging.Filter):
    """Hide uvicorn's error lines for what the sandbox does on purpose: connections dropped by
    `timeout_action=drop`, and requests still hanging on a timeout fault when it shuts down."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "without completing response" in message or "graceful shutdown exceeded" in message:
            return False
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


def _uvicorn_config(app: Any, *, log_config: Any = None, **kwargs: Any) -> uvicorn.Config:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietOnPurpose) for f in logger.filters):
        logger.addFilter(_QuietOnPurpose())
    return uvicorn.Config(
        app,
        access_log=False,
        log_level="warning",
        log_config=log_config,
        lifespan="off",
        ws="none",  # no websockets here; also keeps their deprecation warnings away from tests
        # A fault may hold requests for timeout_ms: don't let that hold up a shutdown.
        timeout_graceful_shutdown=1,
        **kwargs,
    )


def sandbox_env(base_url: str, config: SandboxConfig | None = None) -> dict[str, str]:
    """Environment variables that point crmsync's settings at a sandbox at `base_url`."""
    config = config or SandboxConfig()
    base = base_url.rstrip("/")
    env = {
        "BREVO_API_BASE_URL": f"{base}/brevo/v3",
        "BREVO_API_KEY": config.brevo_api_key,
        "HUBSPOT_API_BASE_URL": f"{base}/hubspot",
        "HUBSPOT_ACCESS_TOKEN": config.hubspot_access_token,
        "MAUTIC_BASE_URL": f"{base}/mautic",
        "MAUTIC_USERNAME": config.mautic_username,
        "MAUTIC_PASSWORD": config.mautic_password,
        "N8N_WEBHOOK_URL": f"{base}/n8n/webhook/{config.n8n_webhooks[0]}"
        if config.n8n_webhooks
        else f"{base}/n8n/webhook/crmsync",
        "N8N_WEBHOOK_SECRET": config.n8n_secret,
    }
    if config.n8n_auth == "header" and (
        config.n8n_auth_header_name.lower() != "authorization"
        or config.n8n_auth_header_value is not None
    ):
        env["N8N_AUTH_HEADER_NAME"] = config.n8n_auth_header_name
        env["N8N_AUTH_HEADER_VALUE"] = config.n8n_expected_header
    return env


def auth_headers(config: SandboxConfig, crm: str) -> dict[str, str]:
    """Headers that authenticate to one fake with the config's credentials (Mautic: basic)."""
    if crm == "brevo":
        return {"api-key": config.brevo_api_key}
    if crm == "hubspot":
        return {"Authorization": f"Bearer {config.hubspot_access_token}"}
    if crm == "mautic":
        return {"Authorization": _basic(config.mautic_username, config.mautic_password)}
    if crm == "n8n":
        if config.n8n_auth == "basic":
            return {"Authorization": _basic(config.n8n_basic_user, config.n8n_secret)}
        if config.n8n_auth == "header":
            return {config.n8n_auth_header_name: config.n8n_expected_header}
        return {}
    raise ValueError(f"unknown CRM {crm!r}; expected one of {', '.join(VENDORS)}")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def describe(base_url: str, config: SandboxConfig) -> str:
    """The banner `serve` prints: URLs, credentials, non-default options, `.env` lines."""
    base = base_url.rstrip("/")
    n8n_auth = {
        "header": f"{config.n8n_auth_header_name}: {config.n8n_expected_header}",
        "basic": f"basic {config.n8n_basic_user} / {config.n8n_secret}",
        "none": "no auth",
    }[config.n8n_auth]
    lines = [
        f"crmsync sandbox on {base}",
        f"  Brevo    {base}/brevo/v3   api-key: {config.brevo_api_key}",
        f"  HubSpot  {base}/hubspot    Authorization: Bearer {config.hubspot_access_token}",
        f"  Mautic   {base}/mautic     basic {config.mautic_username} / {config.mautic_password}"
        f"; OAuth2 client {config.mautic_client_id} / {config.mautic_client_secret}",
    ]
    for path in config.n8n_webhooks:
        lines.append(f"  n8n      {base}/n8n/webhook/{path}   {n8n_auth}")
    lines.append(f"  control  {base}/_sandbox/stats  (see crmsync.sandbox.control)")
    changed = []
    for vendor in VENDORS:
        start = options_dict(config.initial_options(vendor))
        default = options_dict(type(config.initial_options(vendor))())
        diff = {k: v for k, v in start.items() if default[k] != v}
        if diff:
            changed.append(f"  {vendor}: " + ", ".join(f"{k}={v}" for k, v in diff.items()))
    if changed:
        lines += ["Options changed from the defaults:", *changed]
    if not config.custom_fields:
        lines += [
            "A fresh account: create crmsync's custom fields first with",
            "  crmsync setup brevo; crmsync setup hubspot; crmsync setup mautic",
            "(or start the sandbox with --custom-fields).",
        ]
    lines += ["", "Point crmsync at it (.env):"]
    lines += [f"{key}={value}" for key, value in sandbox_env(base, config).items()]
    lines += [
        f"# or OAuth2 for Mautic: MAUTIC_CLIENT_ID={config.mautic_client_id} "
        f"MAUTIC_CLIENT_SECRET={config.mautic_client_secret}"
    ]
    return "\n".join(lines)


def serve(
    host: str = "127.0.0.1",
    port: int = 8900,
    config: SandboxConfig | None = None,
    *,
    fd: int | None = None,
    quiet: bool = False,
) -> None:
    """Print the banner, then run the sandbox with uvicorn until interrupted.

    `fd` serves on an already listening socket inherited from a parent (`SandboxServer`).
    """
    config = config or SandboxConfig()
    app = create_app(config)
    if fd is not None:
        sock = socket.socket(fileno=fd)
        host, port = sock.getsockname()[:2]
    if not quiet:
        print(describe(f"http://{host}:{port}", config), flush=True)
    server = uvicorn.Server(_uvicorn_config(app, log_config=uvicorn.config.LOGGING_CONFIG))
    if fd is not None:
        server.run(sockets=[sock])
    else:
        server.config.host, server.config.port = host, port
        server.run()


class SandboxServer:
    """The sandbox on a free 127.0.0.1 port, for tests and benchmarks.

    Thread variant (default) - for tests; `.sandbox` is the live in-process state::

        from crmsync.sandbox import SandboxConfig, SandboxServer

        with SandboxServer(SandboxConfig(no_rate_limits=True)) as sb:
            httpx.post(f"{sb.hubspot_url}/crm/v3/objects/contacts/batch/upsert",
                       headers={"Authorization": f"Bearer {sb.config.hubspot_access_token}"},
                       json={"inputs": [...]})
            sb.contacts("hubspot")          # stored contacts, as GET /_sandbox/hubspot/contacts
            sb.set_faults("hubspot", error_rate=1.0)
            sb.stats()["hubspot"]["5xx"]
            sb.reset(faults=True)           # clean slate between tests

    Subprocess variant - for benchmarks (own interpreter, own core)::

        with SandboxServer(SandboxConfig(no_rate_limits=True), subprocess=True) as sb:
            ...                             # sb.pid is the sandbox process

    Async code can use `async with SandboxServer(...) as sb:` (start/stop run in a worker
    thread). `sb.env()` gives the environment that points crmsync's settings at the sandbox.

    URLs: `url` (base), `brevo_url` (.../brevo/v3), `hubspot_url` (.../hubspot),
    `mautic_url` (.../mautic), `n8n_webhook_url` (.../n8n/webhook/<first path>),
    `control_url` (.../_sandbox).
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        subprocess: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 20.0,
    ) -> None:
        self.config = config or SandboxConfig()
        self.use_subprocess = subprocess
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._process: _subprocess.Popen[bytes] | None = None
        self._sandbox: Sandbox | None = None
        self._client: httpx.Client | None = None

    # --- URLs ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def brevo_url(self) -> str:
        return f"{self.url}/brevo/v3"

    @property
    def hubspot_url(self) -> str:
        return f"{self.url}/hubspot"

    @property
    def mautic_url(self) -> str:
        return f"{self.url}/mautic"

    @property
    def n8n_url(self) -> str:
        return f"{self.url}/n8n"

    @property
    def n8n_webhook_url(self) -> str:
        path = self.config.n8n_webhooks[0] if self.config.n8n_webhooks else "crmsync"
        return f"{self.url}/n8n/webhook/{path}"

    @property
    def control_url(self) -> str:
        return f"{self.url}/_sandbox"

    @property
    def sandbox(self) -> Sandbox:
        """The live state (thread variant only). Touch it only while no request is running."""
        if self._sandbox is None:
            raise RuntimeError("in-process state is only available for a started thread sandbox")
        return self._sandbox

    @property
    def pid(self) -> int:
        """The sandbox's process id (the current process for the thread variant)."""
        return self._process.pid if self._process is not None else os.getpid()

    def env(self) -> dict[str, str]:
        return sandbox_env(self.url, self.config)

    def auth_headers(self, crm: str) -> dict[str, str]:
        return auth_headers(self.config, crm)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> SandboxServer:
        if self._sock is not None:
            raise RuntimeError("sandbox already started")
        sock = bind_tcp(self.host, self.port)
        sock.listen(2048)
        self._sock = sock
        self.port = sock.getsockname()[1]
        try:
            if self.use_subprocess:
                self._start_process(sock)
            else:
                self._start_thread(sock)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_thread(self, sock: socket.socket) -> None:
        app = create_app(self.config)
        self._sandbox = app.state.sandbox
        server = uvicorn.Server(_uvicorn_config(app))
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="crmsync-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not server.started:
            if not self._thread.is_alive():
                raise RuntimeError("sandbox thread exited during startup (see its log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"sandbox did not start within {self.startup_timeout} s")
            time.sleep(0.005)

    def _start_process(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        os.set_inheritable(fd, True)
        command = [
            sys.executable,
            "-m",
            "crmsync.sandbox",
            "--fd",
            str(fd),
            "--config-json",
            self.config.to_json(),
            "--quiet",
        ]
        self._process = _subprocess.Popen(command, pass_fds=(fd,), stdout=_subprocess.DEVNULL)
        # The socket already listens, so the probe simply waits until the child accepts.
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"sandbox process exited with {self._process.returncode}")
            try:
                httpx.get(f"{self.control_url}/health", timeout=1.0).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"sandbox did not start within {self.startup_timeout} s"
                    ) from None
                time.sleep(0.05)
        # The child has its own copy of the socket; ours would only keep the port half-open.
        sock.close()
        self._sock = None

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                log.warning("sandbox thread did not stop within 10 s")
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except _subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        if self._sock is not None:
            self._sock.close()
        self._sock = self._server = self._thread = self._process = self._sandbox = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SandboxServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # --- control API helpers (synchronous, over HTTP) ----------------------------------------

    @property
    def control(self) -> httpx.Client:
        """A small client on `/_sandbox` (closed by `stop`)."""
        if self._client is None:
            self._client = httpx.Client(base_url=self.control_url, timeout=10.0)
        return self._client

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.control.get("/stats").raise_for_status().json()
        return result

    def contacts(self, crm: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (
            self.control.get(f"/{crm}/contacts").raise_for_status().json()
        )
        return result

    def pushes(self, crm: str) -> list[dict[str, Any]]:
        """Every accepted contact write (needs `SandboxConfig(push_log=True)`)."""
        result: list[dict[str, Any]] = self.control.get(f"/{crm}/pushes").raise_for_status().json()
        return result

    def requests(self, crm: str) -> list[dict[str, Any]]:
        """Every request the vendor received (needs `SandboxConfig(request_log=True)`)."""
        result: list[dict[str, Any]] = (
            self.control.get(f"/{crm}/requests").raise_for_status().json()
        )
        return result

    def faults(self, crm: str) -> dict[str, Any]:
        result: dict[str, Any] = self.control.get(f"/{crm}/faults").raise_for_status().json()
        return result

    def set_faults(self, crm: str, **options: Any) -> dict[str, Any]:
        response = self.control.put(f"/{crm}/faults", json=options)
        if response.status_code == 400:
            raise ValueError(response.json()["error"])
        result: dict[str, Any] = response.raise_for_status().json()
        return result

    def reset(self, *, faults: bool = False) -> None:
        self.control.post("/reset", params={"faults": str(faults).lower()}).raise_for_status()
