"""Registry addressing, manifest checks, and the resumable blob copy, without a network.

The network half (real registries: auth, redirects, uploads) is in
tests/integration/test_pull_push.py and test_cluster_store.py.
"""

import base64
import hashlib
from contextlib import contextmanager
from pathlib import Path

import pytest

from corral.api.errors import InvalidNameError
from corral.store.names import ModelName
from corral.store.oci import name_for, repository_path
from corral.store.pull import PullError, manifest_layers
from corral.store.registry import (
    InsecureProtocolError,
    RegistryError,
    _OllamaKey,
    parse_mirrors,
    parse_registry_url,
    repository_for,
)
from corral.store.transfer import DigestMismatchError, FileSource, PartialFile, copy_blob


def name(text: str) -> ModelName:
    return ModelName.parse(text)


# --- addresses -------------------------------------------------------------------------------


def test_default_names_go_to_ollamas_registry_over_https():
    repo = repository_for(name("llama3.2"), insecure=False)
    assert repo.base == "https://registry.ollama.ai"
    assert repo.path == "library/llama3.2"
    assert repo.url("manifests", "latest") == "https://registry.ollama.ai/v2/library/llama3.2/manifests/latest"


def test_insecure_switches_to_http_and_an_http_name_needs_it():
    assert repository_for(name("host:5000/team/m:v1"), insecure=True).base == "http://host:5000"
    with pytest.raises(InsecureProtocolError) as err:
        repository_for(name("http://host:5000/team/m:v1"), insecure=False)
    assert err.value.message == "insecure protocol http"
    assert repository_for(name("http://host:5000/team/m:v1"), insecure=True).base == "http://host:5000"


def test_a_mirror_serves_its_host_and_keeps_credentials_apart():
    mirrors = parse_mirrors("registry.ollama.ai=http://u:p@10.0.0.5:5000 , HF.co=https://hf-mirror.local")
    assert set(mirrors) == {"registry.ollama.ai", "hf.co"}
    repo = repository_for(name("qwen3:7b"), insecure=False, mirrors=mirrors)
    assert (repo.base, repo.path, repo.username, repo.password) == ("http://10.0.0.5:5000", "library/qwen3", "u", "p")
    assert repository_for(name("hf.co/user/repo:Q4_K_M"), insecure=False, mirrors=mirrors).base == (
        "https://hf-mirror.local"
    )
    # other hosts are untouched
    assert repository_for(name("other.io/a/b"), insecure=False, mirrors=mirrors).base == "https://other.io"


@pytest.mark.parametrize("bad", ["nohost", "registry.ollama.ai=", "=http://x", "a=ftp://x"])
def test_bad_mirror_settings_are_refused(bad):
    with pytest.raises(ValueError):
        parse_mirrors(bad)


def test_registry_urls_lose_their_credentials_and_trailing_slash():
    assert parse_registry_url("http://user:pw@127.0.0.1:5000/") == ("http://127.0.0.1:5000", "user", "pw")
    with pytest.raises(ValueError):
        parse_registry_url("127.0.0.1:5000")


# --- cluster repository names ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, path, tag",
    [
        ("llama3.2", "registry.ollama.ai/library/llama3.2", "latest"),
        ("Team/My-Model:V1", "registry.ollama.ai/team/my-model", "v1"),
        ("127.0.0.1:5000/library/smollm2:135m", "127.0.0.1__5000/library/smollm2", "135m"),
    ],
)
def test_model_names_map_onto_repositories_and_back(text, path, tag):
    parsed = name(text)
    assert repository_path(parsed) == path
    back = name_for(path, tag)
    assert back is not None and back.casefold_key() == parsed.casefold_key()


def test_names_a_registry_cannot_hold_are_a_clear_400_and_foreign_repos_are_skipped():
    with pytest.raises(InvalidNameError, match="cannot be stored in the cluster registry"):
        repository_path(name("_private"))
    assert name_for("corral/blobs", "latest") is None
    assert name_for("a/b/c/d", "latest") is None


# --- manifests -------------------------------------------------------------------------------

DIGEST = "sha256:" + "ab" * 32
CONFIG = "sha256:" + "cd" * 32


def test_manifest_layers_lists_layers_then_config_once():
    data = (
        b'{"config":{"digest":"%s","size":10},"layers":[{"digest":"%s","size":5},{"digest":"%s","size":5}]}'
        % (CONFIG.encode(), DIGEST.encode(), DIGEST.encode())
    )
    layers = manifest_layers(data)
    assert [(layer.digest, layer.size) for layer in layers] == [(DIGEST, 5), (CONFIG, 10)]
    assert layers[0].short == "ab" * 6


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"layers":[{"digest":"sha256:../../etc/passwd","size":1}]}',
        b'{"layers":[{"digest":"md5:abc","size":1}]}',
        b'{"layers":[{"digest":"%s","size":-1}]}' % DIGEST.encode(),
        b'{"layers":["x"]}',
    ],
)
def test_a_manifest_that_could_escape_the_store_is_refused(data):
    with pytest.raises(PullError):
        manifest_layers(data)


# --- the resumable copy ----------------------------------------------------------------------


class FlakySource:
    """A file source whose first ``failures`` opens break after ``cut`` bytes."""

    def __init__(self, path: Path, *, failures: int, cut: int, seekable: bool = True) -> None:
        self.inner = FileSource(path)
        self.failures = failures
        self.cut = cut
        self.seekable = seekable
        self.opened_at: list[int] = []

    @contextmanager
    def open(self, offset):
        self.opened_at.append(offset)
        start = offset if self.seekable else 0
        with self.inner.open(start) as (begin, chunks):
            if self.failures:
                self.failures -= 1
                yield begin, self._broken(chunks)
            else:
                yield begin, chunks

    def _broken(self, chunks):
        sent = 0
        for chunk in chunks:
            take = chunk[: max(0, self.cut - sent)]
            if take:
                sent += len(take)
                yield take
            if sent >= self.cut:
                raise RegistryError("connection reset by peer")


@pytest.fixture
def blob(tmp_path):
    data = bytes(range(256)) * 12_000  # ~3 MB: several read chunks
    path = tmp_path / "source.bin"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest(), len(data)


def test_an_interrupted_copy_resumes_where_it_stopped(tmp_path, blob, monkeypatch):
    monkeypatch.setattr("corral.store.transfer.BACKOFF", (0,))
    path, hex_digest, size = blob
    source = FlakySource(path, failures=2, cut=1_000_000)
    target = PartialFile(tmp_path / "blobs", hex_digest, size)
    moved = []
    copy_blob(source, target, size, moved.append, lambda: False)
    assert source.opened_at == [0, 1_000_000, 2_000_000]
    assert sum(moved) == size  # every byte crossed once
    final = tmp_path / "blobs" / f"sha256-{hex_digest}"
    assert final.read_bytes() == path.read_bytes()
    assert not (tmp_path / "blobs" / f"sha256-{hex_digest}-partial").exists()


def test_a_source_that_cannot_seek_starts_over_cleanly(tmp_path, blob, monkeypatch):
    monkeypatch.setattr("corral.store.transfer.BACKOFF", (0,))
    path, hex_digest, size = blob
    source = FlakySource(path, failures=1, cut=500_000, seekable=False)
    target = PartialFile(tmp_path / "blobs", hex_digest, size)
    moved = []
    copy_blob(source, target, size, moved.append, lambda: False)
    assert sum(moved) == size
    assert (tmp_path / "blobs" / f"sha256-{hex_digest}").read_bytes() == path.read_bytes()


def test_a_partial_file_left_by_a_crash_is_resumed_and_checked(tmp_path, blob):
    path, hex_digest, size = blob
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / f"sha256-{hex_digest}-partial").write_bytes(path.read_bytes()[:123_456])
    source = FlakySource(path, failures=0, cut=0)
    copy_blob(source, PartialFile(blobs, hex_digest, size), size, lambda n: None, lambda: False)
    assert source.opened_at == [123_456]
    assert (blobs / f"sha256-{hex_digest}").read_bytes() == path.read_bytes()


def test_bytes_that_do_not_match_the_digest_never_become_the_blob(tmp_path, blob):
    path, _, size = blob
    wrong = "00" * 32
    with pytest.raises(DigestMismatchError) as err:
        copy_blob(FileSource(path), PartialFile(tmp_path / "blobs", wrong, size), size, lambda n: None, lambda: False)
    assert err.value.message.startswith(f"digest mismatch, file must be downloaded again: want sha256:{wrong}, got ")
    assert list((tmp_path / "blobs").iterdir()) == []  # neither the blob nor its partial


def test_the_copy_gives_up_after_its_attempts(tmp_path, blob, monkeypatch):
    monkeypatch.setattr("corral.store.transfer.BACKOFF", (0,))
    path, hex_digest, size = blob
    source = FlakySource(path, failures=100, cut=10)
    with pytest.raises(RegistryError, match="connection reset"):
        copy_blob(source, PartialFile(tmp_path / "blobs", hex_digest, size), size, lambda n: None, lambda: False)
    assert len(source.opened_at) == 6


# --- Ollama's signed token requests ------------------------------------------------------------


def test_token_requests_are_signed_as_ollama_signs_them(tmp_path):
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    key = Ed25519PrivateKey.generate()
    path = tmp_path / "id_ed25519"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    signer = _OllamaKey.load(path)
    url = "https://registry.ollama.ai/v2/token?scope=repository%3Alibrary%2Fx%3Apull&service=ollama.com&ts=1"
    header = signer.authorization("GET", url)
    public_b64, signature_b64 = header.split(":")
    wire = base64.b64decode(public_b64)
    assert wire[4:15] == b"ssh-ed25519"
    public = Ed25519PublicKey.from_public_bytes(wire[-32:])
    body_hash = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
    public.verify(base64.b64decode(signature_b64), f"GET,{url},{body_hash}".encode())  # raises if wrong


def test_no_key_file_means_unsigned_requests(tmp_path):
    assert _OllamaKey.load(tmp_path / "missing") is None
