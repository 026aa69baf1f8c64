"""Running the app: ``d3po label`` in the foreground, uvicorn in a thread (tests, the toy
annotator), or ``d3po label`` in a process of its own (the benchmark, crash tests)."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import uvicorn

from d3po.errors import ConfigError
from d3po.labelling.app import create_app
from d3po.labelling.guard import is_loopback


def serve(
    samples_dir: Path,
    judgements: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    **options,
) -> None:
    """Serve until Ctrl-C, printing the URLs to open (with the token when one is needed)."""
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    listening = _listen(host, port)  # first: a port in use leaves no empty judgements file
    app = create_app(samples_dir, judgements, token=token, host=host, **options)
    base = f"http://{_url_host(host)}:{port}/"
    query = f"?token={token}" if token else ""
    labeller = app.state.labeller
    print(
        f"d3po label: {len(labeller.samples.tasks)} prompts, protocol {labeller.protocol}, "
        f"record {judgements}\n    open {base}{query}\n    report {base}report{query}",
        flush=True,
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    with suppress(KeyboardInterrupt):  # Ctrl-C stops it, as uvicorn.run has it
        uvicorn.Server(config).run(sockets=[listening])


def _url_host(host: str) -> str:
    """The bound address as the printed URLs name it: this machine's name for a wildcard bind
    (0.0.0.0 is not an address a colleague can open), an IPv6 address in brackets."""
    if is_loopback(host):
        return "localhost"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a host name
    if address.is_unspecified:
        return socket.gethostname()
    return f"[{host}]" if address.version == 6 else host


def _listen(host: str, port: int) -> socket.socket:
    """The app's socket, bound here: a port in use or an address this machine lacks is then a
    one-line error before any URL is printed (uvicorn would log it after, and exit with 3)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as error:  # socket.gaierror too: a host name that does not resolve
        raise ConfigError(f"--host {host} --port {port}: cannot listen: {error.strerror}") from None


@contextmanager
def running(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` from a thread on a free port (``port=0``); yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the labelling app did not start")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def app_process(
    samples_dir: Path, judgements: Path, *options: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``d3po label`` in a process of its own (benchmark, crash tests): (base URL, process).

    ``options`` are more command-line arguments (``--protocol best`` ...). The process is
    killed on exit if it is still running.
    """
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "d3po", "label", str(samples_dir), "--judgements",
               str(judgements), "--host", "127.0.0.1", "--port", str(port), *options]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def _wait_until_up(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"d3po label exited with status {process.returncode}")
        try:
            # any answer (401 without the token included) means the server is up
            httpx.get(f"{url}/api/config", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"d3po label did not answer at {url} within {seconds:.0f} s")
