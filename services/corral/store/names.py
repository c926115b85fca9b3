"""Ollama model names: ``[scheme://][host/][namespace/]model[:tag]`` (docs/api-coverage.md,
"Model names").

A name is also a path on disk (``manifests/<host>/<namespace>/<model>/<tag>``), so the
character rules below are what keeps every manifest inside the store: no part may be
empty, start with a dot, or contain a slash, and ``..`` never appears.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from corral.api.errors import InvalidNameError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_SCHEME = "https"

# First character [A-Za-z0-9_], then [A-Za-z0-9_.-]; dots are not allowed in a
# namespace and ":" only in a host (its port). Lengths are Ollama's: 80, host 350.
_MODEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}")
_TAG = _MODEL
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,79}")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,349}")


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = DEFAULT_SCHEME

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Parse and fill defaults; raises ``InvalidNameError("invalid model name")``."""
        name = _parse(text)
        if name is None:
            raise InvalidNameError()
        return name

    @property
    def display(self) -> str:
        """The shortest form, always with the tag: ``llama3.2:latest``, ``user/m:tag``."""
        if self.host.lower() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        else:
            prefix = ""
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def full(self) -> str:
        """``host/namespace/model:tag``, the form Ollama prints in capability errors."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def manifest_relpath(self) -> PurePosixPath:
        return PurePosixPath(self.host, self.namespace, self.model, self.tag)

    def casefold_key(self) -> str:
        # Names are ASCII by construction, so lower() is Go's ASCII-only fold.
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()

    def __str__(self) -> str:
        return self.display


def is_valid_name(text: str) -> bool:
    return _parse(text) is not None


def _parse(text: str) -> ModelName | None:
    if not isinstance(text, str):
        return None
    scheme = DEFAULT_SCHEME
    if text.startswith("http://"):
        scheme, text = "http", text[len("http://") :]
    elif text.startswith("https://"):
        text = text[len("https://") :]

    tag = DEFAULT_TAG
    colon, slash = text.rfind(":"), text.rfind("/")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG.fullmatch(tag):
            return None

    parts = text.split("/")
    if len(parts) > 3:
        return None
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
    if not (_MODEL.fullmatch(model) and _NAMESPACE.fullmatch(namespace) and _HOST.fullmatch(host)):
        return None
    if ".." in host or ".." in model or ".." in tag:
        return None
    return ModelName(host=host, namespace=namespace, model=model, tag=tag, scheme=scheme)
