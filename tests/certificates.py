"""Certificates made per test with `cryptography`: a CA, a server certificate for 127.0.0.1, client
certificates signed by it, by another CA, or expired."""
import datetime
import ipaddress
import os
from typing import Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_NOW = datetime.datetime.now(datetime.timezone.utc)


class Authority:
    def __init__(self, name: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                            .not_valid_before(_NOW - datetime.timedelta(days=1))
                            .not_valid_after(_NOW + datetime.timedelta(days=30))
                            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                            .sign(self.key, hashes.SHA256()))

    def issue(self, common_name: str, server: bool = False, expired: bool = False):
        key = ec.generate_private_key(ec.SECP256R1())
        start, end = ((_NOW - datetime.timedelta(days=10), _NOW - datetime.timedelta(days=1)) if expired
                      else (_NOW - datetime.timedelta(minutes=5), _NOW + datetime.timedelta(days=7)))
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key

    def write(self, folder: str, name: str = "ca.crt") -> str:
        return _write(os.path.join(folder, name), self.certificate.public_bytes(serialization.Encoding.PEM))


def write_pair(folder: str, stem: str, certificate, key) -> Tuple[str, str]:
    cert = _write(os.path.join(folder, f"{stem}.crt"), certificate.public_bytes(serialization.Encoding.PEM))
    key_path = _write(os.path.join(folder, f"{stem}.key"), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert, key_path


def _write(path: str, data: bytes, mode: Optional[int] = 0o600) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)
    return path
