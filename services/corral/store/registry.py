"""Ollama's registry protocol, the Docker Registry HTTP API v2 subset (docs/api-coverage.md,
"Registry protocol"): the client.

Blocking by design, run from threads (``asyncio.to_thread``). Blob bodies are the whole
cost of a pull, and only ``http.client`` reading into one reused buffer keeps up with the
network: on loopback against Distribution it moved 330-550 MB/s where curl did 420-560,
httpx's sync client ~200 and its async client ~120.

What this module owns: addresses (``Repository``, mirrors), one request with bearer-token
auth and proxies, and the verbs the stores need (manifests, blob HEAD/GET/upload/mount,
catalog, tags). Transfers with progress, retries and resume live in ``transfer.py``.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import re
import secrets
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode, urljoin, urlsplit

from corral.api.errors import CorralError, NotFoundError, UpstreamError
from corral.store.manifest import MEDIA_MANIFEST
from corral.store.names import ModelName

logger = logging.getLogger(__name__)

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT_MANIFEST = f"{MEDIA_MANIFEST}, {MEDIA_OCI_MANIFEST}"

USER_AGENT = "corral/0.1 (ollama-compatible)"
# A socket that moves nothing for this long is stalled (Ollama's stall detection is 30 s).
STALL_TIMEOUT = 30.0
# Manifests, token replies and error bodies are small; anything bigger is refused, not buffered.
MAX_SMALL_BODY = 8 << 20
MAX_REDIRECTS = 8
# Uploads send and downloads read in slices this big.
CHUNK = 1 << 20
# A token without expires_in is good for 60 s (the Docker token spec's default).
DEFAULT_TOKEN_SECONDS = 60

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(UpstreamError):
    """A registry answered badly or not at all; ``http_status`` is its status, if any."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class InsecureProtocolError(CorralError):
    # Ollama fails the pull itself (500, or the stream's error line), not the request.
    def __init__(self) -> None:
        super().__init__("insecure protocol http")


# --- addresses --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Repository:
    """One repository on one registry: ``base`` is ``scheme://host[:port]``, ``path`` ``ns/model``."""

    base: str
    path: str
    username: str | None = None
    password: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.base).netloc

    def url(self, *parts: str, query: Mapping[str, str] | None = None) -> str:
        tail = "/".join(quote(part, safe=":") for part in parts)
        url = f"{self.base}/v2/{self.path}/{tail}"
        return f"{url}?{urlencode(query)}" if query else url

    def sibling(self, path: str) -> Repository:
        return Repository(self.base, path, self.username, self.password)


def parse_registry_url(url: str) -> tuple[str, str | None, str | None]:
    """``scheme://[user:pass@]host[:port]`` -> (base without credentials, user, password)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
    return base, parts.username, parts.password


def parse_mirrors(text: str) -> dict[str, str]:
    """``CORRAL_REGISTRY_MIRRORS``: ``host=url[,host=url...]``; keys are registry hosts."""
    mirrors: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, sep, url = item.partition("=")
        if not sep or not host.strip() or not url.strip():
            raise ValueError(f"expected host=url, got {item!r}")
        parse_registry_url(url)
        mirrors[host.strip().lower()] = url.strip()
    return mirrors


def repository_for(name: ModelName, *, insecure: bool, mirrors: Mapping[str, str] | None = None) -> Repository:
    """Where ``name`` lives upstream: its own host (https, or http when ``insecure``) or a mirror.

    A mirror URL carries its own scheme and credentials; the name keeps its host, so a model
    pulled through a mirror is stored and shown under the name the user asked for.
    """
    if name.scheme == "http" and not insecure:
        raise InsecureProtocolError()
    path = f"{name.namespace}/{name.model}"
    mirror = (mirrors or {}).get(name.host.lower())
    if mirror:
        base, user, password = parse_registry_url(mirror)
        return Repository(base, path, user, password)
    scheme = "http" if insecure else "https"
    return Repository(f"{scheme}://{name.host}", path)


# --- responses --------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    url: str

    def header(self, key: str) -> str | None:
        return self.headers.get(key)


class BlobStream:
    """An open blob GET: read with ``readinto``; ``ranged`` says whether the Range was honoured."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, ranged: bool) -> None:
        self._conn = conn
        self._response = response
        self.ranged = ranged
        length = response.getheader("Content-Length")
        self.length = int(length) if length and length.isdigit() else None

    def readinto(self, buffer: memoryview) -> int:
        return self._response.readinto(buffer)

    def close(self) -> None:
        with suppress(Exception):
            self._response.close()
        with suppress(Exception):
            self._conn.close()


@dataclass
class UploadSession:
    """An open blob upload: its current location (it changes after every PATCH) and size."""

    location: str
    confirmed: int | None = 0  # bytes the registry acknowledged; None = ask it

    def update(self, reply: Reply) -> None:
        location = reply.header("Location")
        if location:
            self.location = urljoin(self.location, location)
        match = re.fullmatch(r"(?:bytes=)?0-(\d+)", (reply.header("Range") or "").strip())
        # Distribution reports 0 and 1 byte both as "0-0"; only a size it gave counts.
        self.confirmed = int(match.group(1)) + 1 if match and int(match.group(1)) > 0 else 0


# --- the client -------------------------------------------------------------------------------


class RegistryClient:
    """Talks to any number of registries; thread-safe; tokens cached per repository and scope."""

    def __init__(
        self,
        *,
        timeout: float = STALL_TIMEOUT,
        key_path: Path | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.timeout = timeout
        self.user_agent = user_agent
        self._signer = _OllamaKey.load(key_path if key_path is not None else Path("~/.ollama/id_ed25519").expanduser())
        self._ssl = ssl.create_default_context()
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    # -- manifests

    def get_manifest(self, repo: Repository, reference: str) -> bytes:
        """The exact manifest bytes; ``NotFoundError("file does not exist")`` on 404."""
        reply = self.request("GET", repo, repo.url("manifests", reference), headers={"Accept": ACCEPT_MANIFEST})
        if reply.status == 404:
            raise NotFoundError("file does not exist")
        _check(reply, 200)
        return reply.body

    def head_manifest(self, repo: Repository, reference: str) -> str | None:
        """The manifest digest a tag points at, or None."""
        reply = self.request("HEAD", repo, repo.url("manifests", reference), headers={"Accept": ACCEPT_MANIFEST})
        if reply.status == 404:
            return None
        _check(reply, 200)
        return reply.header("Docker-Content-Digest")

    def put_manifest(self, repo: Repository, tag: str, data: bytes) -> None:
        media_type = MEDIA_MANIFEST
        with suppress(ValueError, AttributeError):
            media_type = json.loads(data).get("mediaType") or MEDIA_MANIFEST
        reply = self.request(
            "PUT", repo, repo.url("manifests", tag), headers={"Content-Type": media_type}, body=data, write=True
        )
        _check(reply, 201)

    def delete_manifest(self, repo: Repository, digest: str) -> bool:
        """Delete by digest (Distribution 2.8 has no delete by tag); False if it was not there."""
        reply = self.request("DELETE", repo, repo.url("manifests", digest), write=True)
        if reply.status == 404:
            return False
        _check(reply, 202)
        return True

    # -- listing

    def catalog(self, base_repo: Repository) -> list[str]:
        """Every repository of a registry, following ``Link`` pagination."""
        names: list[str] = []
        url: str | None = f"{base_repo.base}/v2/_catalog?n=1000"
        while url:
            reply = self.request("GET", base_repo, url, scope="registry:catalog:*")
            _check(reply, 200)
            names += json.loads(reply.body).get("repositories") or []
            url = _next_link(reply, base_repo.base)
        return names

    def list_tags(self, repo: Repository) -> list[str]:
        tags: list[str] = []
        url: str | None = repo.url("tags", "list", query={"n": "1000"})
        while url:
            reply = self.request("GET", repo, url)
            if reply.status == 404:
                return tags
            _check(reply, 200)
            tags += json.loads(reply.body).get("tags") or []
            url = _next_link(reply, repo.base)
        return tags

    # -- blobs

    def blob_size(self, repo: Repository, digest: str) -> int | None:
        """The size of a blob in ``repo`` (HEAD), or None when it is not there."""
        reply = self.request("HEAD", repo, repo.url("blobs", digest))
        if reply.status == 404:
            return None
        _check(reply, 200)
        length = reply.header("Content-Length")
        return int(length) if length and length.isdigit() else 0

    def open_blob(self, repo: Repository, digest: str, *, offset: int = 0, end: int | None = None) -> BlobStream:
        """GET a blob from ``offset`` (inclusive) to ``end`` (exclusive), following redirects.

        A redirect to another host (blob storage, a CDN) is followed without our credentials.
        """
        headers = {}
        if offset or end is not None:
            headers["Range"] = f"bytes={offset}-" + (str(end - 1) if end is not None else "")
        url = repo.url("blobs", digest)
        auth, authorized = self._auth_header(repo, None), False
        for _ in range(MAX_REDIRECTS):
            send = dict(headers)
            if auth and urlsplit(url).netloc == repo.host:
                send["Authorization"] = auth
            conn, response = self._open(("GET", url), send)
            if response.status == 401 and not authorized:
                reply = _drain(response, url)
                conn.close()
                auth, authorized = self._authorize(repo, reply, None), True
                continue
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location") or ""
                _drain(response, url)
                conn.close()
                url = urljoin(url, location)
                continue
            if response.status == 404:
                _drain(response, url)
                conn.close()
                raise NotFoundError(f"blob {digest} not found in {repo.path}")
            if response.status not in (200, 206):
                reply = _drain(response, url)
                conn.close()
                _check(reply, 200)
            return BlobStream(conn, response, ranged=response.status == 206)
        raise RegistryError(f'GET "{url}": stopped after {MAX_REDIRECTS} redirects')

    def mount_blob(self, repo: Repository, digest: str, source_path: str) -> bool:
        """Cross-repository mount (no bytes move); False when the registry wants an upload."""
        location, mounted = self._start_upload(repo, query={"mount": digest, "from": source_path})
        if not mounted and location:
            # An unused upload session expires on its own; cancel it to be tidy.
            with suppress(RegistryError):
                self.request("DELETE", repo, location, write=True)
        return mounted

    def start_upload(self, repo: Repository) -> UploadSession:
        location, _ = self._start_upload(repo)
        if not location:
            raise RegistryError(f"registry at {repo.base} gave no upload location")
        return UploadSession(location)

    def upload_offset(self, repo: Repository, session: UploadSession) -> int:
        """How many bytes the registry holds for this upload (its ``Range: 0-<last>``)."""
        if session.confirmed is not None:
            return session.confirmed
        reply = self.request("GET", repo, session.location, write=True)
        if reply.status == 404:
            raise RegistryError("upload session expired", http_status=404)
        _check(reply, 204)
        session.update(reply)
        return session.confirmed or 0

    def append_upload(
        self,
        repo: Repository,
        session: UploadSession,
        chunks: Iterator[bytes | memoryview],
        *,
        progress: Callable[[int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        """One PATCH streaming ``chunks`` (chunked encoding) onto the upload.

        If ``chunks`` fails (the source of a pass-through pull broke), the body is ended
        cleanly so the registry keeps what it got; the caller resumes from ``upload_offset``.
        """
        url = session.location
        conn = self._connection(url)
        source_error: BaseException | None = None
        session.confirmed = None
        try:
            conn.putrequest("PATCH", self._target(conn, urlsplit(url)), skip_accept_encoding=True)
            headers = {
                "User-Agent": self.user_agent,
                "Content-Type": "application/octet-stream",
                "Transfer-Encoding": "chunked",
            }
            auth = self._auth_header(repo, "push")
            if auth:
                headers["Authorization"] = auth
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders()
            try:
                for chunk in chunks:
                    if cancelled is not None and cancelled():
                        raise _Cancelled()
                    conn.send(b"%x\r\n" % len(chunk))
                    conn.send(chunk)
                    conn.send(b"\r\n")
                    if progress is not None:
                        progress(len(chunk))
            except (RegistryError, OSError, _Cancelled) as exc:
                source_error = exc
            conn.send(b"0\r\n\r\n")
            reply = _drain(conn.getresponse(), url, method="PATCH")
        except (OSError, http.client.HTTPException) as exc:
            raise _network_error("PATCH", url, exc) from exc
        finally:
            conn.close()
        _check(reply, 202)
        session.update(reply)
        if source_error is not None:
            raise source_error

    def finish_upload(self, repo: Repository, session: UploadSession, digest: str) -> None:
        separator = "&" if "?" in session.location else "?"
        url = f"{session.location}{separator}{urlencode({'digest': digest})}"
        reply = self.request("PUT", repo, url, body=b"", write=True)
        _check(reply, 201)

    def _start_upload(self, repo: Repository, query: Mapping[str, str] | None = None) -> tuple[str | None, bool]:
        url = f"{repo.base}/v2/{repo.path}/blobs/uploads/"
        if query:
            url += "?" + urlencode(query)
        reply = self.request("POST", repo, url, body=b"", write=True)
        if reply.status not in (201, 202):
            _check(reply, 202)
        location = reply.header("Docker-Upload-Location") or reply.header("Location")
        return (urljoin(url, location) if location else None), reply.status == 201

    # -- one request

    def request(
        self,
        method: str,
        repo: Repository,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        write: bool = False,
        scope: str | None = None,
    ) -> Reply:
        """One small request with its whole reply; retried once with a token after a 401.

        GET and HEAD follow redirects (a registry in front of blob storage or a CDN), as Go's
        client does for Ollama; our credentials go only to the registry's own host.
        """
        scope_key = scope or ("push" if write else None)
        auth = self._auth_header(repo, scope_key)
        authorized = False
        for _ in range(MAX_REDIRECTS):
            send = dict(headers or {})
            if auth and urlsplit(url).netloc == repo.host:
                send["Authorization"] = auth
            reply = self._exchange(method, url, send, body)
            if reply.status == 401 and not authorized:
                authorized = True
                auth = self._authorize(repo, reply, scope_key)
                if auth is None:
                    return reply
                continue
            location = reply.header("Location")
            if method in ("GET", "HEAD") and reply.status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                continue
            return reply
        raise RegistryError(f'{method.capitalize()} "{url}": stopped after {MAX_REDIRECTS} redirects')

    def _exchange(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> Reply:
        conn, response = self._open((method, url), headers, body)
        try:
            return _drain(response, url, method=method)
        finally:
            conn.close()

    def _open(
        self, request: tuple[str, str], headers: Mapping[str, str], body: bytes | None = None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        method, url = request
        conn = self._connection(url)
        try:
            send = {"User-Agent": self.user_agent, **headers}
            if body is not None:
                send.setdefault("Content-Length", str(len(body)))
            conn.request(method, self._target(conn, urlsplit(url)), body=body, headers=send)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _network_error(method, url, exc) from exc

    def _connection(self, url: str) -> http.client.HTTPConnection:
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        host = parts.hostname or ""
        proxy = _proxy_for(parts.scheme, host)
        if proxy is None:
            if secure:
                return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._ssl)
            return http.client.HTTPConnection(host, port, timeout=self.timeout)
        proxy_parts = urlsplit(proxy)
        proxy_host, proxy_port = proxy_parts.hostname or "", proxy_parts.port or 80
        if secure:
            tunnel = http.client.HTTPSConnection(proxy_host, proxy_port, timeout=self.timeout, context=self._ssl)
            tunnel.set_tunnel(host, port)
            return tunnel
        conn = http.client.HTTPConnection(proxy_host, proxy_port, timeout=self.timeout)
        conn._corral_absolute = True  # type: ignore[attr-defined]  # plain http via proxy: absolute URIs
        return conn

    @staticmethod
    def _target(conn: http.client.HTTPConnection, parts) -> str:
        path = parts.path or "/"
        target = f"{path}?{parts.query}" if parts.query else path
        if getattr(conn, "_corral_absolute", False):
            return f"{parts.scheme}://{parts.netloc}{target}"
        return target

    # -- auth

    def _auth_header(self, repo: Repository, scope_key: str | None) -> str | None:
        with self._lock:
            entry = self._tokens.get((repo.base, f"{repo.path}|{scope_key}"))
        if entry and entry[1] > time.monotonic():
            return f"Bearer {entry[0]}"
        # Credentials go first as Basic; a token registry answers with a Bearer challenge.
        return _basic(repo.username, repo.password or "") if repo.username is not None else None

    def _authorize(self, repo: Repository, reply: Reply, scope_key: str | None) -> str | None:
        """Answer a 401: a Bearer challenge gets a token; Basic gets the repository's credentials."""
        challenge = reply.header("WWW-Authenticate") or ""
        kind, _, params_text = challenge.partition(" ")
        if kind.lower() == "basic":
            return _basic(repo.username, repo.password or "") if repo.username is not None else None
        if kind.lower() != "bearer":
            return None
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        realm = params.get("realm")
        if not realm:
            return None
        token, lifetime = self._fetch_token(repo, realm, params.get("service", ""), params.get("scope", ""))
        with self._lock:
            self._tokens[(repo.base, f"{repo.path}|{scope_key}")] = (token, time.monotonic() + lifetime - 5)
        return f"Bearer {token}"

    def _fetch_token(self, repo: Repository, realm: str, service: str, scope: str) -> tuple[str, float]:
        # A mount is challenged with two scopes ("repository:dst:pull,push repository:src:pull"):
        # the token spec sends each as its own parameter.
        query = [("service", service), *(("scope", part) for part in scope.split())]
        query += [("ts", str(int(time.time()))), ("nonce", secrets.token_urlsafe(16))]
        url = f"{realm}{'&' if '?' in realm else '?'}{urlencode(query)}"
        headers: dict[str, str] = {}
        if repo.username is not None:
            headers["Authorization"] = _basic(repo.username, repo.password or "")
        elif self._signer is not None and urlsplit(realm).hostname == urlsplit(repo.base).hostname:
            # Ollama's own registry: sign the request with the user's ~/.ollama key. Only
            # to the registry's own host, so the signature never goes to a third party.
            headers["Authorization"] = self._signer.authorization("GET", url)
        reply = self._exchange("GET", url, headers, None)
        if reply.status != 200:
            raise RegistryError(
                f"{reply.status}: token request to {realm} failed: {_short(reply.body)}", http_status=reply.status
            )
        try:
            answer = json.loads(reply.body)
            token = answer.get("token") or answer.get("access_token")
            lifetime = float(answer.get("expires_in") or DEFAULT_TOKEN_SECONDS)
        except (ValueError, AttributeError, TypeError):
            token, lifetime = None, 0.0
        if not token:
            raise RegistryError(f"token server {realm} answered without a token")
        return token, max(lifetime, 10.0)


# --- Ollama's key-signed token requests ---------------------------------------------------------


class _OllamaKey:
    """``~/.ollama/id_ed25519``: Ollama signs token requests to its registry with this key."""

    def __init__(self, private_key, public_b64: str) -> None:
        self._key = private_key
        self._public = public_b64

    @classmethod
    def load(cls, path: Path) -> _OllamaKey | None:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            from cryptography.hazmat.primitives import serialization
        except ImportError:  # the key is only needed for registry.ollama.ai accounts
            logger.warning("found %s but the cryptography package is missing; token requests are unsigned", path)
            return None
        try:
            key = serialization.load_ssh_private_key(data, password=None)
            public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        except (ValueError, TypeError, AttributeError) as exc:
            logger.warning("cannot use %s to sign registry requests: %s", path, exc)
            return None
        return cls(key, public.split()[1].decode())

    def authorization(self, method: str, url: str) -> str:
        body_hash = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
        signature = self._key.sign(f"{method},{url},{body_hash}".encode())
        return f"{self._public}:{base64.b64encode(signature).decode()}"


# --- helpers -------------------------------------------------------------------------------------


class _Cancelled(Exception):
    """The transfer's owner gave up; raised out of blocking loops, never shown to a user."""


def _basic(user: str | None, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _drain(response: http.client.HTTPResponse, url: str, *, method: str = "GET") -> Reply:
    try:
        body = b"" if method == "HEAD" else response.read(MAX_SMALL_BODY + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise _network_error(method, url, exc) from exc
    if len(body) > MAX_SMALL_BODY:
        raise RegistryError(f'{method} "{url}": reply larger than {MAX_SMALL_BODY} bytes')
    return Reply(response.status, response.headers, body, url)


def _check(reply: Reply, expected: int) -> None:
    if reply.status == expected or (expected == 200 and reply.status == 206):
        return
    raise RegistryError(f"{reply.status}: {_short(reply.body)}", http_status=reply.status)


def _short(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text if len(text) <= 512 else text[:512] + "…"


def _network_error(method: str, url: str, exc: BaseException) -> RegistryError:
    """Go's wording, which users of Ollama know: ``Get "<url>": connect: connection refused``."""
    if isinstance(exc, ConnectionRefusedError):
        reason = "connect: connection refused"
    elif isinstance(exc, socket.timeout | TimeoutError):
        reason = "i/o timeout"
    elif isinstance(exc, socket.gaierror):
        reason = f"lookup {urlsplit(url).hostname}: no such host"
    elif isinstance(exc, ssl.SSLError):
        reason = f"tls: {exc.reason or exc}"
    else:
        reason = str(exc) or type(exc).__name__
    return RegistryError(f'{method.capitalize()} "{url}": {reason}')


def _next_link(reply: Reply, base: str) -> str | None:
    link = reply.header("Link") or ""
    match = re.match(r"\s*<([^>]+)>", link)
    return urljoin(base + "/", match.group(1)) if match else None


def _proxy_for(scheme: str, host: str) -> str | None:
    proxies = urllib.request.getproxies()
    if host in ("127.0.0.1", "localhost", "::1") or urllib.request.proxy_bypass(host):
        return None
    return proxies.get(scheme)


__all__ = [
    "ACCEPT_MANIFEST",
    "MEDIA_MANIFEST",
    "BlobStream",
    "InsecureProtocolError",
    "RegistryClient",
    "RegistryError",
    "Repository",
    "parse_mirrors",
    "parse_registry_url",
    "repository_for",
]
