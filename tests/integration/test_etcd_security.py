"""The registry's etcd connection against a real etcd with TLS and with authentication.

TLS: etcd serves https with a certificate from a throw-away test CA and requires a client
certificate from that CA (``--client-cert-auth``). Auth: etcd has a root user and
authentication enabled. Each test starts its own etcd and removes it afterwards.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions
import grpc
import pytest
from aetcd import rpc

from fleetd.registry.etcd import Etcd, EtcdConfig, EtcdError, WatchEvent, WatchRefused
from fleetlab.etcd import (
    EtcdCluster,
    EtcdNotFound,
    OpensslNotFound,
    TlsFiles,
    make_test_pki,
    member_healthy,
)

pytestmark = pytest.mark.integration

ROOT_PASSWORD = "correct horse battery staple"
PREFIX = "/security/"
# Every refusal must come well within this; the client's own timeout is 1 s.
REFUSAL_BOUND = 5.0


@dataclass(frozen=True)
class Pki:
    ours: TlsFiles  # the CA etcd trusts, its server certificate and a client certificate
    other: TlsFiles  # an unrelated CA with its own certificates


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    with tempfile.TemporaryDirectory(prefix="fleet-pki-") as directory:
        try:
            made = Pki(make_test_pki(Path(directory, "ours")), make_test_pki(Path(directory, "other")))
        except OpensslNotFound as exc:  # pragma: no cover - CI images have openssl
            pytest.skip(str(exc))
        yield made


def _new_cluster(**kwargs: object) -> EtcdCluster:
    try:
        return EtcdCluster(**kwargs)  # type: ignore[arg-type]
    except EtcdNotFound as exc:  # pragma: no cover - CI installs etcd
        pytest.skip(str(exc))


@pytest.fixture
def tls_etcd(pki: Pki) -> Iterator[EtcdCluster]:
    with _new_cluster(tls=pki.ours) as cluster:
        yield cluster


async def enable_auth(cluster: EtcdCluster, root_password: str) -> None:
    """Create user ``root`` with ``root_password``, grant it role root, enable auth.

    Done through etcd's gRPC Auth service, over TLS with the client certificate when the
    cluster has TLS.
    """
    url = urlsplit(cluster.endpoints[0])
    target = f"{url.hostname}:{url.port}"
    if cluster.tls is None:
        channel = grpc.aio.insecure_channel(target)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(cluster.tls.ca_file).read_bytes(),
            private_key=Path(cluster.tls.client_key_file).read_bytes(),
            certificate_chain=Path(cluster.tls.client_cert_file).read_bytes(),
        )
        channel = grpc.aio.secure_channel(target, credentials)
    async with channel:
        auth = rpc.AuthStub(channel)
        await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=root_password), timeout=5)
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=5)
        await auth.AuthEnable(rpc.AuthEnableRequest(), timeout=5)


@pytest.fixture
async def auth_etcd() -> AsyncIterator[EtcdCluster]:
    with _new_cluster() as cluster:
        await enable_auth(cluster, ROOT_PASSWORD)
        yield cluster


@pytest.fixture
async def short_token_auth_etcd() -> AsyncIterator[EtcdCluster]:
    """Auth enabled, and etcd forgets an auth token after 1 s without use."""
    with _new_cluster(extra_args=("--auth-token-ttl", "1")) as cluster:
        await enable_auth(cluster, ROOT_PASSWORD)
        yield cluster


def _tls_config(cluster: EtcdCluster, files: TlsFiles, **kwargs: object) -> EtcdConfig:
    return EtcdConfig(
        endpoints=tuple(cluster.endpoints),
        ca_file=files.ca_file,
        cert_file=files.client_cert_file,
        key_file=files.client_key_file,
        request_timeout=1,
        **kwargs,  # type: ignore[arg-type]
    )


def _password_config(cluster: EtcdCluster, password: str | None) -> EtcdConfig:
    return EtcdConfig(
        endpoints=tuple(cluster.endpoints),
        username=None if password is None else "root",
        password=password,
        request_timeout=1,
    )


async def _next_batch(watch: AsyncIterator[list[WatchEvent]]) -> list[WatchEvent]:
    async with asyncio.timeout(5):
        return await anext(watch)


async def _exercise(etcd: Etcd) -> None:
    """put/get/get_prefix, a transaction, a lease and a watch all work on ``etcd``."""
    await etcd.put(f"{PREFIX}a", b"1")
    got = await etcd.get(f"{PREFIX}a")
    assert got is not None and got.value == b"1"

    ok, _ = await etcd.txn([etcd.cmp_absent(f"{PREFIX}b")], [etcd.op_put(f"{PREFIX}b", b"2")])
    assert ok
    ok, _ = await etcd.txn([etcd.cmp_absent(f"{PREFIX}b")], [etcd.op_put(f"{PREFIX}b", b"3")])
    assert not ok
    items, revision = await etcd.get_prefix(PREFIX)
    assert {kv.key: kv.value for kv in items} == {f"{PREFIX}a": b"1", f"{PREFIX}b": b"2"}

    lease = await etcd.grant(30)
    await etcd.put(f"{PREFIX}leased", b"x", lease=lease)
    assert await etcd.keepalive(lease) > 0
    leased = await etcd.get(f"{PREFIX}leased")
    assert leased is not None and leased.lease == lease

    watch = etcd.watch_prefix(PREFIX, revision + 1)
    try:
        await etcd.put(f"{PREFIX}c", b"4")
        seen: list[WatchEvent] = []
        while not any(event.key == f"{PREFIX}c" for event in seen):
            seen += await _next_batch(watch)
        assert [e.key for e in seen][:2] == [f"{PREFIX}leased", f"{PREFIX}c"]
    finally:
        await watch.aclose()


async def _assert_refused(config: EtcdConfig) -> EtcdError:
    """A first operation with ``config`` fails with an etcd client error, and fast."""
    etcd = Etcd(config)
    started = time.monotonic()
    try:
        async with asyncio.timeout(REFUSAL_BOUND):
            with pytest.raises(EtcdError) as raised:
                await etcd.put(f"{PREFIX}refused", b"x")
    finally:
        await etcd.close()
    assert time.monotonic() - started < REFUSAL_BOUND
    return raised.value


# -- TLS -------------------------------------------------------------------------------


async def test_tls_client_with_ca_and_client_cert_works(tls_etcd: EtcdCluster, pki: Pki) -> None:
    assert all(url.startswith("https://127.0.0.1:") for url in tls_etcd.endpoints)
    assert member_healthy(tls_etcd.endpoints[0], tls=pki.ours)
    assert not member_healthy(tls_etcd.endpoints[0])  # no CA, no client certificate
    etcd = Etcd(_tls_config(tls_etcd, pki.ours))
    try:
        await _exercise(etcd)
    finally:
        await etcd.close()


def _no_client_cert(cluster: EtcdCluster, pki: Pki) -> EtcdConfig:
    return EtcdConfig(tuple(cluster.endpoints), ca_file=pki.ours.ca_file, request_timeout=1)


def _client_cert_from_other_ca(cluster: EtcdCluster, pki: Pki) -> EtcdConfig:
    return EtcdConfig(
        tuple(cluster.endpoints),
        ca_file=pki.ours.ca_file,
        cert_file=pki.other.client_cert_file,
        key_file=pki.other.client_key_file,
        request_timeout=1,
    )


def _wrong_ca(cluster: EtcdCluster, pki: Pki) -> EtcdConfig:
    return _tls_config(cluster, pki.other)


def _plaintext(cluster: EtcdCluster, pki: Pki) -> EtcdConfig:
    urls = tuple(url.replace("https://", "http://") for url in cluster.endpoints)
    return EtcdConfig(urls, request_timeout=1)


@pytest.mark.parametrize(
    "make_config, detail",
    [
        (_no_client_cert, ""),
        (_client_cert_from_other_ca, ""),
        (_wrong_ca, "certificate"),  # the client rejects the server
        (_plaintext, ""),
    ],
    ids=["no-client-cert", "client-cert-from-other-ca", "wrong-ca", "plaintext"],
)
async def test_tls_refuses_a_client_without_the_right_certificates(
    tls_etcd: EtcdCluster,
    pki: Pki,
    make_config: Callable[[EtcdCluster, Pki], EtcdConfig],
    detail: str,
) -> None:
    error = await _assert_refused(make_config(tls_etcd, pki))
    assert isinstance(error, aetcd.exceptions.ConnectionFailedError), repr(error)
    assert detail in str(error).lower()


async def test_tls_and_password_together(pki: Pki) -> None:
    with _new_cluster(tls=pki.ours) as cluster:
        await enable_auth(cluster, ROOT_PASSWORD)
        etcd = Etcd(_tls_config(cluster, pki.ours, username="root", password=ROOT_PASSWORD))
        try:
            await _exercise(etcd)
        finally:
            await etcd.close()
        # The client certificate alone (CN fleet-test-client, no such user) is not enough.
        error = await _assert_refused(_tls_config(cluster, pki.ours))
        assert not isinstance(error, aetcd.exceptions.ConnectionFailedError), repr(error)


# -- username and password -------------------------------------------------------------


async def test_auth_right_password_works(auth_etcd: EtcdCluster) -> None:
    etcd = Etcd(_password_config(auth_etcd, ROOT_PASSWORD))
    try:
        await _exercise(etcd)
    finally:
        await etcd.close()


async def test_auth_wrong_password_is_refused(auth_etcd: EtcdCluster) -> None:
    error = await _assert_refused(_password_config(auth_etcd, "wrong password"))
    assert "authentication failed" in str(error)


async def test_auth_anonymous_client_is_refused(auth_etcd: EtcdCluster) -> None:
    error = await _assert_refused(_password_config(auth_etcd, None))
    assert "user name is empty" in str(error)

    etcd = Etcd(_password_config(auth_etcd, None))
    try:
        async with asyncio.timeout(REFUSAL_BOUND):
            with pytest.raises(EtcdError, match="user name is empty"):
                await etcd.get(f"{PREFIX}a")
            with pytest.raises(EtcdError, match="user name is empty"):
                await etcd.get_prefix(PREFIX)
            # etcd refuses the watch too; the client must say so rather than hang on it.
            client = await etcd.client()
            with pytest.raises(WatchRefused, match="user name is empty"):
                await client.watch_prefix(PREFIX.encode())
    finally:
        await etcd.close()


async def test_auth_expired_token_is_renewed(short_token_auth_etcd: EtcdCluster) -> None:
    cluster = short_token_auth_etcd
    writer = Etcd(_password_config(cluster, ROOT_PASSWORD))
    watcher = Etcd(_password_config(cluster, ROOT_PASSWORD))
    url = urlsplit(cluster.endpoints[0])
    probe = aetcd.Client(url.hostname or "", url.port or 0, "root", ROOT_PASSWORD, timeout=5)
    try:
        await writer.put(f"{PREFIX}a", b"1")
        _, revision = await watcher.get_prefix(PREFIX)
        await probe.connect()
        await asyncio.sleep(3)  # > the 1 s token TTL plus etcd's 1 s expiry tick
        with pytest.raises(aetcd.exceptions.UnauthenticatedError, match="invalid auth token"):
            await probe.get(f"{PREFIX}a".encode())  # the tokens really are gone

        async with asyncio.timeout(10):
            await writer.put(f"{PREFIX}b", b"2")  # authenticates again and retries
            got = await writer.get(f"{PREFIX}b")
            assert got is not None and got.value == b"2"
            watch = watcher.watch_prefix(PREFIX, revision + 1)  # refused, then renewed
            try:
                batch = await _next_batch(watch)
            finally:
                await watch.aclose()
        assert [(event.key, event.value) for event in batch] == [(f"{PREFIX}b", b"2")]
    finally:
        await probe.close()
        await writer.close()
        await watcher.close()
