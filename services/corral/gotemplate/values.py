"""What the executor and the functions agree on: errors, MISSING, and Go's truth."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.api.errors import CorralError
from corral.gocompat import type_name


class TemplateError(CorralError, ValueError):
    """The template could not be parsed (or, as TemplateExecError, rendered)."""


class TemplateExecError(TemplateError):
    """Rendering failed, e.g. ``index`` out of range or an undefined template."""


class FuncError(CorralError):
    """Raised by builtin functions; the executor prefixes 'error calling NAME:'."""


class _MissingType:
    """The value of an absent map key or attribute (see module docstring)."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "MISSING"

    def __json__(self) -> None:  # the json function writes a zero-valued field as null
        return None


MISSING = _MissingType()
# Go's "missingVal": marks that no value is being piped into a command.
NO_ARG = object()


def truth(v: Any) -> bool:
    """Go's isTrue: zero values and empty containers are false, structs true."""
    t = type(v)
    if t is str or t is bool or t is list or t is dict or t is int:
        return bool(v)
    if v is None or v is MISSING:
        return False
    if isinstance(v, (bool, int, float, str, list, tuple, Mapping, bytes, set, frozenset)):
        return bool(v)
    return True


def is_stringer(v: Any) -> bool:
    """True when v's class defines its own __str__ (Go's fmt.Stringer)."""
    return type(v).__str__ is not object.__str__


def go_type(v: Any) -> str:
    """The Go type name of a template value, for error messages (MISSING is a nil field)."""
    return type_name(None if v is MISSING else v, decoded=False)
