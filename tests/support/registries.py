"""Real OCI registries on loopback for tests of pull and push: no mocks.

* ``RegistryServer``: Debian's ``/usr/bin/docker-registry`` (CNCF Distribution 2.8) on a free
  port, filesystem storage in a tmp dir, deletes enabled, plain http; optionally token auth.
* ``TokenServer``: a Docker-style bearer token server (RS256 JWTs) that records its requests.
* ``seed_model`` / ``push_blob``: push a model in Ollama's manifest format with plain httpx.
* ``TCPProxy``: a TCP proxy in front of a registry that counts requests and cuts responses.

The fixtures ``registry``, ``token_server``, ``token_registry`` and ``upstream`` (conftest.py)
give a test its own.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import random
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, urlsplit

import httpx

from corral.store.manifest import file_digest
from corral.supervise import Child
from tests.support.servers import free_port

REGISTRY_BINARY = "/usr/bin/docker-registry"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_PARAMS = "application/vnd.ollama.image.params"
# What Ollama writes into a model's config blob, for the SmolLM2 test model.
DEFAULT_CONFIG = {
    "model_format": "gguf",
    "model_family": "llama",
    "model_families": ["llama"],
    "model_type": "134.52M",
    "file_type": "Q4_1",
    "architecture": "amd64",
    "os": "linux",
}
DEFAULT_PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"]}
CHUNK = 1 << 20


def _compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class OwnedServer:
    """Stops on leaving a ``with`` block; owns a temp dir (removed on stop) when given none."""

    tmp: Path
    _tmp_finalizer: weakref.finalize | None = None

    def _use_tmp(self, tmp: Path | None, prefix: str) -> None:
        if tmp is None:
            tmp = Path(tempfile.mkdtemp(prefix=prefix))
            # made before the process's finalizer, so at exit it runs after it
            self._tmp_finalizer = weakref.finalize(self, shutil.rmtree, tmp, ignore_errors=True)
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)

    def _drop_tmp(self) -> None:
        if self._tmp_finalizer:
            self._tmp_finalizer()

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- token server ---------------------------------------------------------------------------


@dataclass
class TokenRequest:
    """One request the token server got."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    user: str | None  # the HTTP Basic user, when it sent valid credentials

    @property
    def scopes(self) -> list[str]:
        """As sent; the registry lists a scope's actions in no fixed order ("push,pull")."""
        return [s for value in self.query.get("scope", []) for s in value.split()]

    def actions(self, name: str, kind: str = "repository") -> set[str]:
        """The actions asked for on ``name``, e.g. {"pull", "push"}."""
        return {a for k, n, acts in map(_parse_scope, self.scopes) if (k, n) == (kind, name) for a in acts}


def _parse_scope(scope: str) -> tuple[str, str, list[str]]:
    """``type:name:actions`` where a name may hold ':' (a host with a port)."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return kind, name, [a for a in actions.split(",") if a]


# (user, type, name, requested actions) -> granted actions
Grant = Callable[[str | None, str, str, list[str]], list[str]]


class TokenServer(OwnedServer):
    """A Docker registry token server on loopback (``GET /token?service=..&scope=..``).

    Tokens are RS256 JWTs signed by a key generated here, whose self-signed certificate
    (``cert_path``) is the registry's ``rootcertbundle``. The signing key is named in the JWT
    header by ``x5c`` (the certificate itself, the default) or ``kid`` (libtrust key id); both
    verify with Distribution 2.8. With ``username``/``password`` it demands HTTP Basic
    credentials (401 otherwise). ``grant`` decides what to grant; by default all that's asked.
    Every request is recorded in ``requests``.
    """

    def __init__(
        self,
        tmp: Path | None = None,
        *,
        service: str = "corral-test-registry",
        issuer: str = "corral-test-token-issuer",
        username: str | None = None,
        password: str | None = None,
        grant: Grant | None = None,
        expires_in: int = 300,
        key_hint: str = "x5c",
    ) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        if key_hint not in ("x5c", "kid"):
            raise ValueError("key_hint is 'x5c' or 'kid'")
        self._use_tmp(tmp, "corral-token-")
        self.service, self.issuer = service, issuer
        self.username, self.password = username, password
        self.grant = grant
        self.expires_in = expires_in
        self.key_hint = key_hint
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral test token signer")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = self.tmp / "token-signer.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        spki = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # libtrust's KeyID: base32 of the first 240 bits of sha256(SPKI DER), in groups of 4.
        b32 = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode().rstrip("=")
        self.kid = ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.realm = self.url + "/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="token-server", daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, self._httpd.shutdown)

    def issue(self, access: list[dict], subject: str = "") -> str:
        """A signed token granting ``access`` ([{"type","name","actions"}]) to ``subject``."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256"}
        header |= {"x5c": [self._x5c]} if self.key_hint == "x5c" else {"kid": self.kid}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64url(_compact(header))}.{_b64url(_compact(claims))}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def access_for(self, scopes: list[str], user: str | None) -> list[dict]:
        access = []
        for kind, name, wanted in map(_parse_scope, scopes):
            if not kind or not name:
                continue
            granted = self.grant(user, kind, name, wanted) if self.grant else wanted
            access.append({"type": kind, "name": name, "actions": list(granted)})
        return access

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def stop(self) -> None:
        self._finalizer()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._drop_tmp()


def _token_handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _reply(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
            data = _compact(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _basic_user(self) -> str | None:
            value = self.headers.get("Authorization", "")
            if not value.lower().startswith("basic "):
                return None
            try:
                user, _, password = base64.b64decode(value[6:]).decode().partition(":")
            except ValueError:
                return None
            if server.username is not None and (user, password) != (server.username, server.password):
                return None
            return user

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query, keep_blank_values=True)
            user = self._basic_user()
            server._record(TokenRequest(
                "GET", parts.path, query, {k.lower(): v for k, v in self.headers.items()}, user
            ))
            if parts.path != "/token":
                return self._reply(404, {"errors": [{"code": "NOT_FOUND", "message": parts.path}]})
            if server.username is not None and user is None:
                return self._reply(
                    401,
                    {"errors": [{"code": "UNAUTHORIZED", "message": "bad or missing credentials"}]},
                    {"WWW-Authenticate": f'Basic realm="{server.realm}"'},
                )
            if query.get("service", [server.service])[0] != server.service:
                return self._reply(400, {"errors": [{"code": "DENIED", "message": "unknown service"}]})
            scopes = [s for value in query.get("scope", []) for s in value.split()]
            subject = user or query.get("account", [""])[0]
            token = server.issue(server.access_for(scopes, user), subject)
            issued = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._reply(200, {"token": token, "access_token": token,
                              "expires_in": server.expires_in, "issued_at": issued})

    return Handler


# -- registry -------------------------------------------------------------------------------


class RegistryServer(OwnedServer):
    """``docker-registry serve`` on 127.0.0.1:<free port>; returns once ``GET /v2/`` answers.

    Storage, config and log live in ``tmp`` (a fresh temp dir, removed on stop, if not given).
    With ``token_server`` the registry demands bearer tokens from it.
    """

    def __init__(
        self,
        tmp: Path | None = None,
        *,
        token_server: TokenServer | None = None,
        log_level: str = "info",
        start_timeout: float = 10.0,
    ) -> None:
        if not os.access(REGISTRY_BINARY, os.X_OK):
            raise RuntimeError(f"{REGISTRY_BINARY} missing: apt-get install docker-registry (./scripts/test does)")
        self._use_tmp(tmp, "corral-registry-")
        self.token_server = token_server
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.storage = self.tmp / f"registry-{self.port}-storage"
        self.config_path = self.tmp / f"registry-{self.port}.yml"
        self.log_path = self.tmp / f"registry-{self.port}.log"
        config: dict = {
            "version": "0.1",
            "log": {"level": log_level, "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": uuid.uuid4().hex},
        }
        if token_server is not None:
            config["auth"] = {"token": {
                "realm": token_server.realm,
                "service": token_server.service,
                "issuer": token_server.issuer,
                "rootcertbundle": str(token_server.cert_path),
            }}
        # YAML is a superset of JSON, so no YAML writer is needed.
        self.config_path.write_text(json.dumps(config, indent=2))
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.process = Child("registry-watchdog", [REGISTRY_BINARY, "serve", str(self.config_path)], env=env,
                             log=self.log_path, watched=True).start(append=False)
        self._finalizer = weakref.finalize(self, self.process.stop)
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise RuntimeError(f"docker-registry exited with {self.process.exit_code}:\n{self.process.tail()}")
            try:
                r = httpx.get(self.url + "/v2/", timeout=1)
                if "docker-distribution-api-version" in r.headers:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"docker-registry did not answer within {timeout}s:\n{self.process.tail()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def auth(self) -> BearerAuth:
        """Auth for plain httpx clients of this registry (Basic credentials of its token server)."""
        ts = self.token_server
        return BearerAuth(ts.username, ts.password) if ts else BearerAuth()

    def client(self, **kwargs: object) -> httpx.Client:
        return registry_client(self.url, self.auth(), **kwargs)

    def stop(self) -> None:
        self._finalizer()
        self._drop_tmp()


# -- client side: bearer auth, blobs, manifests ----------------------------------------------

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_REPO_PATH = re.compile(r"^/v2/(.+?)/(?:blobs|manifests|tags)/")


def parse_bearer_challenge(header: str) -> dict[str, str] | None:
    """``Bearer realm="..",service="..",scope=".."`` -> {"realm":.., ...}; None if not Bearer."""
    if not header.lower().startswith("bearer "):
        return None
    return dict(_CHALLENGE_PARAM.findall(header))


class BearerAuth(httpx.Auth):
    """The Docker token flow for httpx clients, sync or async.

    On a 401 with a Bearer challenge it fetches a token from the realm (with HTTP Basic
    credentials when given) and retries once; later requests to the same repository get that
    token up front, so a streamed upload body is never sent twice. ``token_fetches`` counts.
    """

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        self.username, self.password = username, password
        self._tokens: dict[str, str] = {}
        self.token_fetches = 0

    @staticmethod
    def _key(request: httpx.Request) -> str:
        m = _REPO_PATH.match(request.url.path)
        return m.group(1) if m else request.url.path

    def _flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        key = self._key(request)
        if "authorization" not in request.headers and key in self._tokens:
            request.headers["Authorization"] = f"Bearer {self._tokens[key]}"
        response = yield request
        challenge = parse_bearer_challenge(response.headers.get("www-authenticate", ""))
        if response.status_code != 401 or challenge is None or "realm" not in challenge:
            return
        params = [("service", challenge["service"])] if "service" in challenge else []
        params += [("scope", s) for s in challenge.get("scope", "").split()]
        token_request = httpx.Request("GET", challenge["realm"], params=params)
        if self.username is not None:
            basic = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            token_request.headers["Authorization"] = f"Basic {basic}"
        token_response = yield token_request
        self.token_fetches += 1
        if token_response.status_code != 200:
            return
        body = token_response.json()
        self._tokens[key] = body.get("token") or body["access_token"]
        request.headers["Authorization"] = f"Bearer {self._tokens[key]}"
        yield request

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        flow, response = self._flow(request), None
        while True:
            try:
                sent = flow.send(response)
            except StopIteration:
                return
            response = yield sent
            if sent is not request:  # the token request: its body is needed now
                response.read()

    async def async_auth_flow(self, request: httpx.Request):  # type: ignore[override]
        flow, response = self._flow(request), None
        while True:
            try:
                sent = flow.send(response)
            except StopIteration:
                return
            response = yield sent
            if sent is not request:
                await response.aread()


def registry_client(url: str, auth: httpx.Auth | None = None, **kwargs: object) -> httpx.Client:
    """An httpx client for a registry that follows the token flow (``auth`` or a bare BearerAuth)."""
    return httpx.Client(base_url=url, auth=auth or BearerAuth(), timeout=kwargs.pop("timeout", 60), **kwargs)


_digest_cache: dict[tuple[str, int, int], str] = {}


def cached_digest(path: Path) -> str:
    """``file_digest`` of a file, cached by (path, size, mtime): seeded blobs are hashed once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digest_cache:
        _digest_cache[key] = file_digest(path)
    return _digest_cache[key]


def make_blob_file(path: Path, size: int, seed: int = 0) -> str:
    """Write ``size`` pseudo-random bytes to ``path`` fast; returns their ``sha256:`` digest.

    A random 1 MiB block with each chunk's index stamped into its first 8 bytes: no two chunks
    alike, and no random generator in the loop (1 GB takes about as long as hashing it).
    """
    base = bytearray(random.Random(seed).randbytes(CHUNK))
    h = hashlib.sha256()
    with path.open("wb") as f:
        written, index = 0, 0
        while written < size:
            base[:8] = index.to_bytes(8, "little")
            chunk = memoryview(base)[: min(CHUNK, size - written)]
            h.update(chunk)
            f.write(chunk)
            written += len(chunk)
            index += 1
    digest = "sha256:" + h.hexdigest()
    st = path.stat()
    _digest_cache[(str(path.resolve()), st.st_size, st.st_mtime_ns)] = digest  # push_blob needn't rehash
    return digest


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            yield block


def _push_blob(client: httpx.Client, repo: str, data: Path | bytes) -> tuple[str, int]:
    if isinstance(data, bytes):
        digest, size = "sha256:" + hashlib.sha256(data).hexdigest(), len(data)
    else:
        digest, size = cached_digest(data), data.stat().st_size
    if client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
        return digest, size
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    if r.status_code != 202:
        raise RuntimeError(f"starting an upload to {repo}: {r.status_code} {r.text}")
    location = r.url.join(r.headers["location"]).copy_merge_params({"digest": digest})
    body = data if isinstance(data, bytes) else _file_chunks(data)
    r = client.put(location, content=body,
                   headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
    if r.status_code != 201:
        raise RuntimeError(f"uploading {digest} to {repo}: {r.status_code} {r.text}")
    return digest, size


def push_blob(registry_url: str, repo: str, data: Path | bytes, *, auth: httpx.Auth | None = None) -> str:
    """Upload a blob (POST then a monolithic PUT, a file streamed from disk); returns its digest."""
    with registry_client(registry_url, auth) as client:
        return _push_blob(client, repo, data)[0]


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass
class SeededModel:
    registry_url: str
    repo: str
    tag: str
    manifest: bytes  # exactly what was PUT, and what a GET returns
    digest: str  # sha256 of ``manifest``: the registry's Docker-Content-Digest
    config: Layer
    layers: list[Layer] = field(default_factory=list)

    @property
    def reference(self) -> str:
        """``127.0.0.1:PORT/ns/model:tag``: the name to pull it by."""
        return f"{httpx.URL(self.registry_url).netloc.decode()}/{self.repo}:{self.tag}"

    @property
    def model_layer(self) -> Layer:
        return self.layers[0]


def seed_model(
    registry: str | RegistryServer,
    repo: str = "library/smollm2",
    tag: str = "135m",
    *,
    gguf: Path | bytes,
    params: dict | None = DEFAULT_PARAMS,
    extra_layers: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
    config: dict | None = None,
    auth: httpx.Auth | None = None,
) -> SeededModel:
    """Push a model the way Ollama lays it out: config blob, model layer, ``extra_layers``,
    then a params layer (omitted when ``params`` is None), and a schema-2 manifest at ``tag``.

    ``registry`` is a URL (then 401s are answered by an anonymous token flow unless ``auth`` is
    given) or a RegistryServer (whose token server's credentials are used).
    """
    if isinstance(registry, RegistryServer):
        url, auth = registry.url, auth or registry.auth()
    else:
        url = registry
    with registry_client(url, auth, timeout=120) as client:
        config_digest, config_size = _push_blob(client, repo, _compact(config or DEFAULT_CONFIG))
        layers = [Layer(OLLAMA_MODEL, *_push_blob(client, repo, gguf))]
        blobs = list(extra_layers) + ([(OLLAMA_PARAMS, _compact(params))] if params is not None else [])
        layers += [Layer(media_type, *_push_blob(client, repo, data)) for media_type, data in blobs]
        config_layer = Layer(CONFIG_V1, config_digest, config_size)
        manifest = _compact({
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": config_layer.descriptor(),
            "layers": [layer.descriptor() for layer in layers],
        })
        r = client.put(f"/v2/{repo}/manifests/{tag}", content=manifest, headers={"Content-Type": MANIFEST_V2})
        if r.status_code != 201:
            raise RuntimeError(f"putting manifest {repo}:{tag}: {r.status_code} {r.text}")
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    if r.headers.get("docker-content-digest", digest) != digest:
        raise RuntimeError(f"registry says manifest digest {r.headers['docker-content-digest']}, not {digest}")
    return SeededModel(url, repo, tag, manifest, digest, config_layer, layers)


# -- TCP proxy --------------------------------------------------------------------------------

_REQUEST_LINE = re.compile(rb"^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (\S+) HTTP/1\.[01]$")


class _RequestScanner:
    """Follows a client->server HTTP/1.1 byte stream and reports each request head.

    Bodies are skipped by Content-Length or chunked framing, never searched.
    """

    def __init__(self, on_request: Callable[[str, str], None]) -> None:
        self.on_request = on_request
        self.buf = b""
        self.state = "head"
        self.remaining = 0

    def feed(self, data: bytes) -> None:
        self.buf += data
        while self.buf and self.state != "opaque":
            if not self._step():
                return

    def _skip(self) -> bool:
        n = min(self.remaining, len(self.buf))
        self.buf, self.remaining = self.buf[n:], self.remaining - n
        return self.remaining == 0

    def _line(self) -> bytes | None:
        i = self.buf.find(b"\r\n")
        if i < 0:
            return None
        line, self.buf = self.buf[:i], self.buf[i + 2 :]
        return line

    def _step(self) -> bool:  # False: wait for more bytes
        if self.state == "head":
            self.buf = self.buf.lstrip(b"\r\n")
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 1 << 16:
                    self.state = "opaque"
                return False
            head, self.buf = self.buf[:end].split(b"\r\n"), self.buf[end + 4 :]
            m = _REQUEST_LINE.match(head[0])
            if not m:
                self.state = "opaque"
                return False
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            self.on_request(m.group(1).decode(), m.group(2).decode())
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                self.state = "chunk-size"
            elif int(headers.get(b"content-length", b"0") or 0) > 0:
                self.state, self.remaining = "body", int(headers[b"content-length"])
            return True
        if self.state in ("body", "chunk-data"):
            if not self._skip():
                return False
            self.state = "head" if self.state == "body" else "chunk-size"
            return True
        line = self._line()
        if line is None:
            return False
        if self.state == "chunk-size":
            size = int(line.split(b";")[0].strip() or b"0", 16)
            self.state, self.remaining = ("trailers", 0) if size == 0 else ("chunk-data", size + 2)
        elif line == b"":  # end of trailers
            self.state = "head"
        return True


@dataclass
class _Cut:
    path_substring: str
    nbytes: int
    times: int
    method: str | None


class _Exchange:
    """The response to the latest request on one proxied connection."""

    def __init__(self, method: str, path: str, cut: _Cut | None) -> None:
        self.method, self.path, self.cut = method, path, cut
        self.head = b""  # response bytes until the end of its header block
        self.body_sent: int | None = None  # None while the header block is still coming


class TCPProxy(OwnedServer):
    """A TCP proxy on 127.0.0.1:<free port> in front of ``target`` ("host:port" or a URL).

    It counts the HTTP requests passing through per (method, path without query) and the
    bytes sent back to the client per path, and can cut responses short (``cut_after``).
    Requests are assumed not pipelined (each response precedes the next request on its
    connection), which holds for httpx and Go's net/http.
    """

    def __init__(self, target: str) -> None:
        netloc = urlsplit(target).netloc if "://" in target else target
        host, _, port = netloc.rpartition(":")
        self.target = (host, int(port))
        self.requests: Counter[tuple[str, str]] = Counter()
        self.request_log: list[tuple[str, str]] = []  # (method, full target), in order
        self.bytes_to_client: Counter[str] = Counter()
        self.connections = 0
        self.cuts_done = 0
        self._cuts: list[_Cut] = []
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._accept_thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._accept_thread.start()
        self._finalizer = weakref.finalize(self, self._listener.close)

    # - public -

    def cut_after(self, path_substring: str, nbytes: int, times: int = 1, method: str | None = None) -> None:
        """Cut the next ``times`` responses to requests whose path contains ``path_substring``
        (and of ``method``, if given) after ``nbytes`` bytes of the response *body* have been
        forwarded: both sockets are closed mid-body. A response that ends before that is left
        alone and does not count."""
        with self._lock:
            self._cuts.append(_Cut(path_substring, nbytes, times, method))

    def count(self, method: str | None = None, path_contains: str = "") -> int:
        with self._lock:
            return sum(n for (m, p), n in self.requests.items()
                       if (method is None or m == method) and path_contains in p)

    def bytes_sent(self, path_contains: str = "") -> int:
        with self._lock:
            return sum(n for p, n in self.bytes_to_client.items() if path_contains in p)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.request_log.clear()
            self.bytes_to_client.clear()
            self.connections = self.cuts_done = 0

    def stop(self) -> None:
        self._stopping = True
        _shut(self._listener)  # wakes the thread blocked in accept(); close alone doesn't
        self._finalizer()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            _shut(s)
        self._accept_thread.join(timeout=5)
        for t in list(self._threads):
            t.join(timeout=5)

    # - internals -

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(client,), name="tcp-proxy-conn", daemon=True)
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._socks |= {client, upstream}
            self.connections += 1
        exchange: list[_Exchange | None] = [None]

        def on_request(method: str, target: str) -> None:
            path = target.split("?", 1)[0]
            with self._lock:
                self.requests[(method, path)] += 1
                self.request_log.append((method, target))
                cut = next((c for c in self._cuts if c.times > 0 and c.path_substring in path
                            and c.method in (None, method)), None)
            exchange[0] = _Exchange(method, path, cut)

        scanner = _RequestScanner(on_request)
        up = threading.Thread(target=self._pump_up, args=(client, upstream, scanner), daemon=True)
        up.start()
        try:
            self._pump_down(upstream, client, exchange)
        finally:  # the server is done (or the response was cut): end both sides
            for s in (client, upstream):
                _shut(s)
            up.join(timeout=10)
            for s in (client, upstream):
                s.close()
            with self._lock:
                self._socks -= {client, upstream}

    def _pump_up(self, client: socket.socket, upstream: socket.socket, scanner: _RequestScanner) -> None:
        try:
            while data := client.recv(CHUNK):
                scanner.feed(data)
                upstream.sendall(data)
        except OSError:
            pass
        try:
            upstream.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _pump_down(self, upstream: socket.socket, client: socket.socket, exchange: list[_Exchange | None]) -> None:
        try:
            while data := upstream.recv(CHUNK):
                ex = exchange[0]
                if ex is not None and ex.cut is not None:
                    keep = self._cut_point(ex, data)
                    if keep is not None:
                        client.sendall(data[:keep])
                        with self._lock:
                            self.bytes_to_client[ex.path] += keep
                        return  # _serve closes both sockets
                with self._lock:
                    self.bytes_to_client[ex.path if ex else ""] += len(data)
                client.sendall(data)
        except OSError:
            pass
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _cut_point(self, ex: _Exchange, data: bytes) -> int | None:
        """How many bytes of ``data`` to forward before cutting, or None to forward it all."""
        offset = 0
        if ex.body_sent is None:
            before = len(ex.head)
            ex.head += data
            end = ex.head.find(b"\r\n\r\n")
            if end < 0:
                return None
            offset, ex.body_sent, ex.head = end + 4 - before, 0, b""
        body = len(data) - offset
        assert ex.cut is not None and ex.body_sent is not None
        if ex.body_sent + body < ex.cut.nbytes:
            ex.body_sent += body
            return None
        with self._lock:
            if ex.cut.times <= 0:
                ex.cut = None
                return None
            ex.cut.times -= 1
            self.cuts_done += 1
        return offset + ex.cut.nbytes - ex.body_sent


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# -- redirects ---------------------------------------------------------------------------------


class Redirector:
    """An HTTP server on loopback answering every GET/HEAD with ``307`` to the same path on
    ``target``: what a registry in front of blob storage or a CDN does."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.hits: list[str] = []
        redirector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _redirect(self) -> None:
                redirector.hits.append(self.path)
                self.send_response(307)
                self.send_header("Location", redirector.target + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _redirect

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="redirector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Redirector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
