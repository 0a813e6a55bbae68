"""TLS for the peer link with nothing to configure: a key made at start, pinned through etcd.

Each fleetd makes a fresh key pair and a self-signed certificate when it starts, serves its
peer listener over TLS with them, and publishes the certificate in its machine record. A
relaying fleetd trusts exactly that certificate for that machine and nothing else, so
journal text is encrypted, and a machine on the path cannot pose as the peer: it would
need a record in etcd, which it cannot write. The private key never leaves the process
(it touches the disk only for the moment ``ssl`` needs a file, in a private directory).
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetd.model.limits import MAX_PEER_CERT_BYTES

VALID_FOR = datetime.timedelta(days=3650)  # the key lives as long as the process


@dataclass(frozen=True)
class PeerIdentity:
    """This fleetd's peer certificate (PEM, published) and the server context using it."""

    cert_pem: str
    server_context: ssl.SSLContext


def make_identity(machine_id: str) -> PeerIdentity:
    """A new P-256 key and a self-signed certificate naming the machine."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fleetd-peer-{machine_id}"[:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # machines' clocks differ a little
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="fleetd-peer-") as private:  # mode 0700
        cert_path, key_path = os.path.join(private, "cert.pem"), os.path.join(private, "key.pem")
        with open(cert_path, "wb") as out:
            out.write(cert_pem)
        with open(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            out.write(key_pem)
        context.load_cert_chain(cert_path, key_path)
    return PeerIdentity(cert_pem.decode(), context)


@lru_cache(maxsize=1024)
def pinned_context(cert_pem: str) -> ssl.SSLContext:
    """A client context that trusts only ``cert_pem`` (one machine's published
    certificate). The name is not checked: the certificate itself is the identity.
    Raises ``ValueError`` for a certificate that cannot be loaded."""
    if len(cert_pem) > MAX_PEER_CERT_BYTES:
        raise ValueError(f"peer certificate of {len(cert_pem)} bytes (at most {MAX_PEER_CERT_BYTES})")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    try:
        context.load_verify_locations(cadata=cert_pem)
    except ssl.SSLError as exc:
        raise ValueError(f"unusable peer certificate: {exc}") from None
    return context


__all__ = ["PeerIdentity", "make_identity", "pinned_context"]
