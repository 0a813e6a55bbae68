"""fleetctl's global options (flags, ``FLEETCTL_*`` environment, defaults) and endpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from fleetctl.errors import FleetctlError, UsageError

DEFAULT_ENDPOINT = "unix:///var/run/fleet.sock"
DEFAULT_ETCD_ENDPOINT = "http://127.0.0.1:2379"
DEFAULT_ETCD_KEY_PREFIX = "/_coreos.com/fleet/"
DEFAULT_KNOWN_HOSTS = "~/.fleetctl/known_hosts"
# The TCP port of fleetd's API (units/fleetd.socket); used for a machine's own API when
# fleetctl talks to the cluster through a unix socket or etcd, and for http://host without
# a port.
AGENT_API_PORT = 54728
DRIVERS = ("api", "etcd")


@dataclass
class Config:
    """The global options, after defaults < environment < command line."""

    endpoint: str = DEFAULT_ENDPOINT
    endpoint_given: bool = False  # set by flag or environment (not the default)
    driver: str = "api"
    etcd_key_prefix: str = DEFAULT_ETCD_KEY_PREFIX
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    request_timeout: float = 3.0
    tunnel: str | None = None
    ssh_username: str = "core"
    known_hosts_file: str = DEFAULT_KNOWN_HOSTS
    strict_host_key_checking: bool = True
    ssh_timeout: float = 10.0
    debug: bool = False
    # The secret stays out of repr(): a printed Config must not leak it.
    api_token: str | None = field(default=None, repr=False)
    # The token read from a file (--api-token-file, FLEETCTL_API_TOKEN_FILE) when it is needed,
    # so the secret need not be on the command line, where every user can read it.
    api_token_file: str | None = None
    _file_token: str | None = field(default=None, repr=False, compare=False)

    def bearer_token(self) -> str | None:
        """The API token: ``api_token``, else the content of ``api_token_file`` (minus
        one trailing newline). A file that cannot be read is an error, never "no token"."""
        if self.api_token or not self.api_token_file:
            return self.api_token or None
        if self._file_token is None:
            path = expand_path(self.api_token_file)
            try:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise FleetctlError(f"cannot read the API token from --api-token-file {path}: {reason}") from None
            text = text[:-1] if text.endswith("\n") else text
            text = text[:-1] if text.endswith("\r") else text
            if not text.strip():
                raise FleetctlError(f"--api-token-file {path} is empty")
            self._file_token = text
        return self._file_token

    def endpoints(self) -> list[str]:
        """The endpoint list (comma separated, tried in order). With ``--driver etcd`` and
        no endpoint given, etcd's usual local address instead of fleetd's socket."""
        text = self.endpoint
        if self.driver == "etcd" and not self.endpoint_given:
            text = DEFAULT_ETCD_ENDPOINT
        items = [part.strip() for part in text.split(",") if part.strip()]
        if not items:
            raise UsageError("--endpoint is empty: give at least one URL, e.g. unix:///var/run/fleet.sock")
        return items


@dataclass(frozen=True)
class Endpoint:
    """One place to reach fleetd's API: a unix socket ``path`` or ``host:port`` over
    http(s)."""

    url: str
    scheme: str  # "unix", "http" or "https"
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return self.scheme == "unix"

    @property
    def is_tls(self) -> bool:
        return self.scheme == "https"

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 in brackets) or the socket path."""
        if self.is_unix:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def same_address(self, other: Endpoint) -> bool:
        """Whether ``other`` is this endpoint: same scheme, host and port (or socket path)."""
        if self.is_unix or other.is_unix:
            return self.is_unix and other.is_unix and self.path == other.path
        return (self.scheme, self.host.lower(), self.port) == (other.scheme, other.host.lower(), other.port)

    def on_host(self, host: str, port: int | None = None) -> Endpoint:
        """The same kind of TCP endpoint on another host (a machine's own API)."""
        scheme = "http" if self.is_unix else self.scheme
        port = port or (AGENT_API_PORT if self.is_unix else self.port)
        bracketed = f"[{host}]" if ":" in host else host
        return Endpoint(f"{scheme}://{bracketed}:{port}", scheme, host, port)


def parse_endpoint(text: str) -> Endpoint:
    """``unix:///var/run/fleet.sock``, ``/path/to.sock``, ``http(s)://host[:port]`` or
    ``host:port``. A TCP endpoint without a port uses fleetd's API port 54728."""
    raw = text.strip()
    if raw.startswith("/"):
        return Endpoint(f"unix://{raw}", "unix", path=raw)
    if "://" not in raw:
        raw = f"http://{raw}"
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme == "unix":
        path = unquote(parts.path or "")
        if parts.netloc and not path:
            path = parts.netloc
        elif parts.netloc:  # unix://relative/path: keep the whole thing
            path = f"{parts.netloc}{path}"
        if not path:
            raise UsageError(
                f'invalid endpoint "{text}": a unix endpoint needs a path, e.g. unix:///var/run/fleet.sock'
            )
        return Endpoint(f"unix://{path}", "unix", path=path)
    if scheme not in ("http", "https"):
        raise UsageError(f'invalid endpoint "{text}": use unix:///path, http://host:port or https://host:port')
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f'invalid endpoint "{text}": bad port') from None
    if not parts.hostname:
        raise UsageError(f'invalid endpoint "{text}": no host')
    port = port or AGENT_API_PORT
    host = parts.hostname
    bracketed = f"[{host}]" if ":" in host else host
    return Endpoint(f"{scheme}://{bracketed}:{port}", scheme, host, port)


def expand_path(path: str) -> str:
    return os.path.expanduser(path)


__all__ = [
    "AGENT_API_PORT",
    "Config",
    "DEFAULT_ENDPOINT",
    "DEFAULT_ETCD_ENDPOINT",
    "DEFAULT_ETCD_KEY_PREFIX",
    "DEFAULT_KNOWN_HOSTS",
    "DRIVERS",
    "Endpoint",
    "expand_path",
    "parse_endpoint",
]
