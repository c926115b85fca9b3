"""Errors every service raises, and the one table that turns them into responses.

    CorralError                 500  anything we did not expect to go wrong
    ├── BadRequestError         400  the request itself is wrong
    │   ├── InvalidNameError         400 "invalid model name" (and friends)
    │   ├── OptionError              400 an option of the wrong type
    │   └── CapabilityError          400 the model can't do what was asked
    ├── UnauthorizedError       401  no API key, or one the cluster does not know (CORRAL_AUTH=keys)
    ├── ForbiddenError          403  a key asking for a model or route it may not use
    ├── NotFoundError           404  unknown model, blob or route object
    ├── PayloadTooLargeError    413  a body over CORRAL_MAX_REQUEST_BODY
    ├── RateLimitError          429  a key over its requests or tokens per minute (adds Retry-After)
    ├── RequestCanceledError    499  the client left while the request waited
    ├── ServerBusyError         503  a bounded queue is full (adds Retry-After)
    ├── UpstreamError           502  a registry or worker could not be reached
    └── UpstreamTimeoutError    504  a registry or worker did not answer in time

Every error a module defines for itself derives from one of these (GGUFError, RegistryError,
EngineError, TemplateError...), so the table below maps each to a status, and a handler that
catches CorralError misses none. Exceptions private to one module (a parser's own signals,
named with a leading underscore) never leave it.

Messages are Ollama's, byte for byte, because clients match on them. Library
exceptions are translated where they enter (``raise ... from exc``) so that
nothing here has to guess a status from exception text.
"""

from __future__ import annotations

import secrets
from typing import Any


class CorralError(Exception):
    status = 500
    # Under /v1, OpenAI's envelope: its "type" follows the status unless a class names its own,
    # and its "code" is set where OpenAI sets one (the SDKs read both).
    openai_type: str | None = None
    openai_code: str | None = None

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def headers(self) -> dict[str, str]:
        return {}


class BadRequestError(CorralError):
    status = 400


class InvalidNameError(BadRequestError):
    def __init__(self, message: str = "invalid model name") -> None:
        super().__init__(message)


class OptionError(BadRequestError):
    pass


class CapabilityError(BadRequestError):
    pass


class UnauthorizedError(CorralError):
    status = 401
    openai_type = "invalid_request_error"
    openai_code = "invalid_api_key"

    def __init__(self, message: str = "unauthorized") -> None:
        super().__init__(message)


class ForbiddenError(CorralError):
    status = 403
    openai_type = "invalid_request_error"
    openai_code = "permission_denied"


class NotFoundError(CorralError):
    status = 404


class PayloadTooLargeError(CorralError):
    status = 413

    def __init__(self, message: str = "http: request body too large") -> None:  # Go's MaxBytesError
        super().__init__(message)


class RateLimitError(CorralError):
    status = 429
    openai_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int, limit: str) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)
        self.openai_type = limit  # OpenAI's own: "requests" or "tokens"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RequestCanceledError(CorralError):
    status = 499

    def __init__(self, message: str = "request canceled") -> None:
        super().__init__(message)


class ServerBusyError(CorralError):
    status = 503

    def __init__(
        self,
        message: str = "server busy, please try again.  maximum pending requests exceeded",
        *,
        retry_after: int = 1,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class UpstreamError(CorralError):
    status = 502


class UpstreamTimeoutError(CorralError):
    status = 504


def model_not_found(model: str) -> NotFoundError:
    """The generate/chat/show/delete flavour of "not found"."""
    return NotFoundError(f"model '{model}' not found")


def embed_model_not_found(model: str) -> NotFoundError:
    """/api/embed and /api/embeddings word it differently in Ollama."""
    return NotFoundError(f'model "{model}" not found, try pulling it first')


# /v1 error envelope: the type follows the status, as Ollama's middleware does.
def openai_error_type(status: int) -> str:
    if status in (400, 413):
        return "invalid_request_error"
    if status == 404:
        return "not_found_error"
    return "api_error"


def ollama_error_body(message: str) -> dict[str, Any]:
    return {"error": message}


def openai_error_body(status: int, message: str, *, type: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": type or openai_error_type(status),
            "param": None,
            "code": code,
        }
    }


# /v1/messages: Anthropic's envelope, its type following the status as Ollama's anthropic package
# maps it (413 included, which Anthropic itself calls request_too_large).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
        "request_id": f"req_{secrets.token_hex(12)}",
    }


# Which envelope a route's errors take: Ollama's, OpenAI's (/v1/*) or Anthropic's (/v1/messages).
OLLAMA, OPENAI, ANTHROPIC = "ollama", "openai", "anthropic"


def error_format(path: str) -> str:
    if not path.startswith("/v1/"):
        return OLLAMA
    return ANTHROPIC if path == "/v1/messages" else OPENAI


def error_body(exc: CorralError, *, path: str) -> dict[str, Any]:
    """``exc`` as the route at ``path`` words its errors."""
    kind = error_format(path)
    if kind == OPENAI:
        return openai_error_body(exc.status, exc.message, type=exc.openai_type, code=exc.openai_code)
    if kind == ANTHROPIC:
        return anthropic_error_body(exc.status, exc.message)
    return ollama_error_body(exc.message)
