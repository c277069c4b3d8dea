"""TF Serving's --ssl_config_file (TLS, optional client certificates) and --grpc_socket_path."""

from __future__ import annotations

import asyncio
import datetime
import pathlib

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cluster.errors import InvalidArgument
from cluster.gateway.config_converters import ssl_credentials_from_text
from cluster.gateway.grpc_server import GatewayServer
from protos.tensorflow_serving.apis import prediction_service_pb2_grpc
from tests.cluster.gateway.grpc_testlib import FakeAPI, predict_request


def _self_signed(name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _ssl_text(key: bytes, cert: bytes, ca: bytes = b"", verify: bool = False) -> str:
    def q(b: bytes) -> str:
        return '"' + b.decode().replace("\n", "\\n") + '"'

    text = f"server_key: {q(key)}\nserver_cert: {q(cert)}\n"
    if ca:
        text += f"custom_ca: {q(ca)}\n"
    return text + f"client_verify: {str(verify).lower()}\n"


async def _predict(channel: grpc.aio.Channel) -> float:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = await stub.Predict(predict_request(np.array([1.0], np.float32)), timeout=10)
    return response.outputs["y"].float_val[0]


def test_tls_with_and_without_client_certificates(tmp_path: pathlib.Path) -> None:
    server_key, server_cert = _self_signed("localhost")
    client_key, client_cert = _self_signed("client")

    async def main() -> None:
        server = GatewayServer(FakeAPI(), credentials=ssl_credentials_from_text(_ssl_text(server_key, server_cert)))
        port = await server.start("127.0.0.1", 0)
        creds = grpc.ssl_channel_credentials(root_certificates=server_cert)
        async with grpc.aio.secure_channel(f"localhost:{port}", creds) as channel:
            assert await _predict(channel) == 2.5
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError):
                await _predict(plain)  # plaintext is refused on a TLS port
        await server.stop(0)

        mutual = ssl_credentials_from_text(_ssl_text(server_key, server_cert, ca=client_cert, verify=True))
        server = GatewayServer(FakeAPI(), credentials=mutual)
        port = await server.start("127.0.0.1", 0)
        with_cert = grpc.ssl_channel_credentials(server_cert, client_key, client_cert)
        async with grpc.aio.secure_channel(f"localhost:{port}", with_cert) as channel:
            assert await _predict(channel) == 2.5
        async with grpc.aio.secure_channel(f"localhost:{port}", creds) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await _predict(channel)  # no client certificate
        await server.stop(0)

    asyncio.run(main())


def test_bad_ssl_configs_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="server_key and server_cert"):
        ssl_credentials_from_text('server_cert: "x"')
    with pytest.raises(InvalidArgument, match="custom_ca"):
        ssl_credentials_from_text('server_key: "k" server_cert: "c" client_verify: true')
    with pytest.raises(InvalidArgument, match="Invalid SSLConfig"):
        ssl_credentials_from_text("not a proto")


def test_unix_socket_beside_tcp(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tessera.sock"

    async def main() -> None:
        server = GatewayServer(FakeAPI(), socket_path=str(path))
        port = await server.start("127.0.0.1", 0)
        async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
            assert await _predict(channel) == 2.5
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await _predict(channel) == 2.5
        await server.stop(0)

    asyncio.run(main())
