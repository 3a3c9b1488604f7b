"""A secured Kafka broker and a secured Redis of the module's own, made at test time.

Certificates come from openssl: a CA, a server certificate for 127.0.0.1/localhost signed by it
(the broker's and Redis's), a client certificate, and a second CA that signed nothing the servers
use (the "untrusted CA" case). The broker is the one `tickcast services up` runs (the same jars,
tools/localinfra.py), one KRaft node on free ports with two listeners: SASL_SSL for the clients
under test (SCRAM-SHA-512 and SCRAM-SHA-256, client certificates required), SSL (mutual TLS: the
client certificate is the credential), and PLAINTEXT for the controller and inter-broker traffic
only. Its SCRAM users are created by the broker's own storage
tool (`format --add-scram`) before it first starts. The same listener takes OAUTHBEARER tokens from
a small OIDC identity provider run by the tests (client credentials at its token endpoint, RS256
JWTs signed with openssl), which the broker checks against the provider's JWKS. Redis is Debian's redis-server with TLS only
(`--port 0 --tls-port`), the default user off and an ACL user limited to one key prefix.

The shared broker and Redis are never touched.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient

from tests.e2e.harness import ROOT
from tools import localinfra

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    #: certificate + key in one file: the broker's PEM keystore
    server_keystore: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"openssl {' '.join(args)}: {proc.stderr[-500:]}"


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", str(key), "-out", str(cert), cwd=folder,
    )  # fmt: skip
    return cert, key


def _signed(folder: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    extfile = folder / f"{name}.ext"
    extfile.write_text(ext + "\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", str(key), "-out", str(csr), cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "2", "-extfile", str(extfile), "-out", str(cert), cwd=folder,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    assert shutil.which("openssl"), "openssl is needed to make the test certificates"
    folder = tmp_path_factory.mktemp("pki")
    ca = _ca(folder, "tickcast-test-ca")
    server = _signed(
        folder,
        "server",
        ca,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth",
    )
    client = _signed(folder, "client", ca, "extendedKeyUsage=clientAuth")
    other_ca, _ = _ca(folder, "some-other-ca")
    keystore = folder / "server-keystore.pem"
    keystore.write_text(server[0].read_text() + server[1].read_text())
    return Pki(ca[0], server[0], server[1], keystore, client[0], client[1], other_ca)


# ---------------------------------------------------------------- an OIDC identity provider


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass
class Idp:
    """Client credentials in, an RS256 JWT out (`POST /token`), as Keycloak or Okta would."""

    port: int
    client_id: str
    client_secret: str
    key: Path
    #: the public key as a JWKS file, which the broker reads (a file:// URL)
    jwks: Path
    server: ThreadingHTTPServer | None = None
    issued: int = 0

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def token(self, subject: str, scope: str) -> str:
        now = int(time.time())
        header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "test"}).encode())
        claims: dict[str, object] = {
            "sub": subject,
            "iat": now,
            "exp": now + 3600,
            "iss": "tickcast-test-idp",
        }
        if scope:
            claims["scope"] = scope
        signing_input = f"{header}.{_b64url(json.dumps(claims).encode())}"
        signed = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        )
        self.issued += 1
        return f"{signing_input}.{_b64url(signed.stdout)}"


def _token_handler(idp: Idp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            client_id = form.get("client_id", [""])[0]
            secret = form.get("client_secret", [""])[0]
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            grant = form.get("grant_type", [""])[0]
            if grant != "client_credentials" or (client_id, secret) != (
                idp.client_id,
                idp.client_secret,
            ):
                self._send(401, {"error": "invalid_client"})
                return
            token = idp.token(client_id, form.get("scope", [""])[0])
            self._send(200, {"access_token": token, "token_type": "bearer", "expires_in": 3600})

        def _send(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    folder = tmp_path_factory.mktemp("idp")
    key = folder / "signing.key"
    _openssl("genrsa", "-out", str(key), "2048", cwd=folder)
    modulus = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-noout", "-modulus"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    n = bytes.fromhex(modulus.split("=", 1)[1])
    jwks = folder / "jwks.json"
    jwks.write_text(
        json.dumps(
            {
                "keys": [
                    {"kty": "RSA", "kid": "test", "use": "sig", "alg": "RS256",
                     "n": _b64url(n), "e": "AQAB"}
                ]
            }
        )
    )  # fmt: skip
    provider = Idp(0, "tickcast-oidc", secrets.token_urlsafe(16), key, jwks)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(provider))
    provider.port = server.server_address[1]
    provider.server = server
    thread = threading.Thread(target=server.serve_forever, name="test-idp", daemon=True)
    thread.start()
    yield provider
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- Kafka, SASL_SSL


#: SCRAM users the broker's storage tool writes into the cluster metadata before the first start
SCRAM_USERS = {"SCRAM-SHA-512": "tickcast", "SCRAM-SHA-256": "tickcast256"}


@dataclass
class SecureKafka:
    layout: localinfra.Layout
    #: the SASL_SSL listener, for the clients under test
    bootstrap: str
    #: the PLAINTEXT listener (controller and inter-broker traffic; the tests' own set-up)
    internal: str
    password: str
    pki: Pki
    idp: Idp
    #: the SSL listener: mutual TLS, no SASL
    tls_bootstrap: str = ""
    process: subprocess.Popen[bytes] | None = None

    def env(self, mechanism: str = "SCRAM-SHA-512", **overrides: str) -> dict[str, str]:
        """tickcast's settings for this broker: SASL_SSL, SCRAM, the test CA, a client
        certificate (the listener requires one)."""
        return {
            "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "TICKCAST_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "TICKCAST_KAFKA__SASL_MECHANISM": mechanism,
            "TICKCAST_KAFKA__SASL_USERNAME": SCRAM_USERS[mechanism],
            "TICKCAST_KAFKA__SASL_PASSWORD": self.password,
            "TICKCAST_KAFKA__SSL_CA_LOCATION": str(self.pki.ca),
            "TICKCAST_KAFKA__SSL_CERTIFICATE_LOCATION": str(self.pki.client_cert),
            "TICKCAST_KAFKA__SSL_KEY_LOCATION": str(self.pki.client_key),
            **overrides,
        }

    def mtls_env(self, **overrides: str) -> dict[str, str]:
        """Mutual TLS on the SSL listener: the client certificate is the credential."""
        return {
            "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": self.tls_bootstrap,
            "TICKCAST_KAFKA__SECURITY_PROTOCOL": "SSL",
            "TICKCAST_KAFKA__SSL_CA_LOCATION": str(self.pki.ca),
            "TICKCAST_KAFKA__SSL_CERTIFICATE_LOCATION": str(self.pki.client_cert),
            "TICKCAST_KAFKA__SSL_KEY_LOCATION": str(self.pki.client_key),
            **overrides,
        }

    def oidc_env(self, **overrides: str) -> dict[str, str]:
        """OAUTHBEARER with OIDC client credentials instead of SCRAM."""
        env = {k: v for k, v in self.env().items() if "__SASL_" not in k}
        return {
            **env,
            "TICKCAST_KAFKA__SASL_MECHANISM": "OAUTHBEARER",
            "TICKCAST_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": self.idp.token_url,
            "TICKCAST_KAFKA__SASL_OAUTHBEARER_CLIENT_ID": self.idp.client_id,
            "TICKCAST_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET": self.idp.client_secret,
            "TICKCAST_KAFKA__SASL_OAUTHBEARER_SCOPE": "kafka",
            **overrides,
        }

    @property
    def log(self) -> Path:
        return self.layout.logs / "kafka.log"


def _secure_server_properties(data: Path, pki: Pki, idp: Idp, ports: dict[str, int]) -> str:
    sasl_port, ssl_port, plain_port = ports["sasl_ssl"], ports["ssl"], ports["plaintext"]
    controller_port = ports["controller"]
    scram_jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    oauth_jaas = "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"
    oauth_validator = (
        "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler"
    )
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=SASL_SSL://127.0.0.1:{sasl_port},SSL://127.0.0.1:{ssl_port},"
            f"PLAINTEXT://127.0.0.1:{plain_port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{sasl_port},SSL://127.0.0.1:{ssl_port},"
            f"PLAINTEXT://127.0.0.1:{plain_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
            "SASL_SSL:SASL_SSL,SSL:SSL",
            # SASL_SSL: SCRAM over TLS, and the client's certificate must be signed by the CA
            "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,"
            "OAUTHBEARER",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram_jaas}",
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram_jaas}",
            # OAUTHBEARER: JWTs checked against the identity provider's keys (signature, expiry)
            f"listener.name.sasl_ssl.oauthbearer.sasl.jaas.config={oauth_jaas}",
            f"listener.name.sasl_ssl.oauthbearer.sasl.server.callback.handler.class={oauth_validator}",
            f"sasl.oauthbearer.jwks.endpoint.url={idp.jwks.as_uri()}",
            "sasl.oauthbearer.expected.issuer=tickcast-test-idp",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={pki.server_keystore}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={pki.ca}",
            "ssl.client.auth=required",
            f"log.dirs={data}",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "default.replication.factor=1",
            "min.insync.replicas=1",
            "offsets.topic.num.partitions=1",
            "transaction.state.log.num.partitions=1",
            "group.initial.rebalance.delay.ms=0",
            "log.cleaner.dedupe.buffer.size=16777216",
            "num.network.threads=2",
            "num.io.threads=2",
            "auto.create.topics.enable=false",
            "",
        ]
    )


def _answers(bootstrap: str) -> bool:
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 1000})
    try:
        admin.list_topics(timeout=2)
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def secure_kafka(
    pki: Pki, idp: Idp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureKafka]:
    main = localinfra.Layout(Path(os.environ.get("TICKCAST_LOCAL_DIR", ROOT / ".local")))
    localinfra.ensure_kafka_jars(main)  # cached: returns at once when the marker is there
    root = tmp_path_factory.mktemp("secure-kafka")
    layout = localinfra.Layout(root)
    (root / "kafka").mkdir(parents=True)
    layout.libs.symlink_to(main.libs.resolve(), target_is_directory=True)
    layout.logs.mkdir(parents=True)
    names = ("sasl_ssl", "ssl", "plaintext", "controller")
    ports = dict(zip(names, (localinfra.free_port() for _ in names), strict=True))
    while len(set(ports.values())) < len(names):
        ports = dict(zip(names, (localinfra.free_port() for _ in names), strict=True))
    plain_port = ports["plaintext"]
    props = root / "kafka" / "server.properties"
    props.write_text(_secure_server_properties(layout.kafka_data, pki, idp, ports))
    (root / "kafka" / "log4j2.properties").write_text(localinfra.LOG4J2)
    password = secrets.token_urlsafe(16)
    cluster_id = "-"
    while cluster_id.startswith("-"):
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    scram = [
        arg
        for mechanism, user in SCRAM_USERS.items()
        for arg in ("--add-scram", f"{mechanism}=[name={user},password={password}]")
    ]
    log = layout.logs / "kafka.log"
    with log.open("a") as out:
        fmt = subprocess.run(
            localinfra._java(
                layout, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
                *scram,
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )  # fmt: skip
    assert fmt.returncode == 0, f"kafka storage format failed; see {log}"
    broker = SecureKafka(
        layout,
        f"127.0.0.1:{ports['sasl_ssl']}",
        f"127.0.0.1:{plain_port}",
        password,
        pki,
        idp,
        tls_bootstrap=f"127.0.0.1:{ports['ssl']}",
    )
    with log.open("a") as out, warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        broker.process = subprocess.Popen(
            localinfra._java(
                layout,
                # Kafka >= 4.0 reads an OAuth URL only when it is on this list.
                f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={idp.jwks.as_uri()}",
                "kafka.Kafka",
                str(props),
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 90
        while not (localinfra.port_open(plain_port) and _answers(broker.internal)):
            code = broker.process.poll()
            assert code is None, f"the secured broker exited with {code}; see {log}"
            assert time.monotonic() < deadline, f"the secured broker did not start; see {log}"
            time.sleep(0.25)
        yield broker
    finally:
        broker.process.send_signal(signal.SIGTERM)
        try:
            broker.process.wait(20)
        except subprocess.TimeoutExpired:
            broker.process.kill()
            broker.process.wait(10)


# ---------------------------------------------------------------- Redis, TLS and ACL


@dataclass
class SecureRedis:
    port: int
    user: str
    password: str
    key_prefix: str
    pki: Pki
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def env(self, **overrides: str) -> dict[str, str]:
        return {
            "TICKCAST_REDIS__URL": self.url,
            "TICKCAST_REDIS__USERNAME": self.user,
            "TICKCAST_REDIS__PASSWORD": self.password,
            "TICKCAST_REDIS__TLS_CA_FILE": str(self.pki.ca),
            "TICKCAST_REDIS__KEY_PREFIX": self.key_prefix,
            **overrides,
        }

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            username=self.user,
            password=self.password,
            ssl=True,
            ssl_ca_certs=str(self.pki.ca),
        )


@pytest.fixture(scope="module")
def secure_redis(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    server = localinfra.ensure_redis_server()
    folder = tmp_path_factory.mktemp("secure-redis")
    port = localinfra.free_port()
    password = secrets.token_urlsafe(16)
    prefix = f"sec-{uuid.uuid4().hex[:8]}"
    args = [
        server,
        "--port", "0",
        "--tls-port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(folder),
        "--save", "",
        "--appendonly", "no",
        "--tls-cert-file", str(pki.server_cert),
        "--tls-key-file", str(pki.server_key),
        "--tls-ca-cert-file", str(pki.ca),
        "--tls-auth-clients", "no",
        # No anonymous access; the service's user may touch its own keys only.
        "--user", "default", "off",
        "--user", "tickcast", "on", f">{password}", f"~{prefix}:*", "&*", "+@all", "-@admin",
    ]  # fmt: skip
    log = folder / "redis.log"
    with log.open("w") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    secured = SecureRedis(port, "tickcast", password, prefix, pki, process)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, f"redis-server exited: {log.read_text()[-500:]}"
            client = secured.client()
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, f"TLS redis did not start: {log}"
                time.sleep(0.05)
            finally:
                client.close()
        yield secured
    finally:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
