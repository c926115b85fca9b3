"""A pure-Python implementation of Go's ``text/template`` language.

Ollama model files carry their chat TEMPLATE in Go template syntax, so to be
Ollama-compatible we must render those templates exactly as Go would.  This
package is a small lexer -> parser (node tree) -> executor, split as Go splits
``text/template`` and ``text/template/parse``: ``lex``, ``node``, ``parse``, ``exec``,
``funcs`` and ``fmt``, and with Go's error messages (``template: :1: unexpected EOF``).

How Python values map onto Go's:

* ``dict`` (any Mapping) is a ``map[string]any``: ``.Key`` looks up ``"Key"``.
* ``list``/``tuple`` are slices; ``str``, ``int``, ``float``, ``bool`` are the
  matching Go kinds.  Strings are measured, indexed and sliced in UTF-8 bytes,
  as in Go.
* ``None`` is a nil interface: printed by an action it renders ``<no value>``
  (``print nil`` gives ``<nil>``), exactly like Go.
* Any other object is a struct: ``.Field`` is ``getattr``; bound methods are
  called with the action's arguments.
* A key or attribute that does not exist yields ``MISSING``.  Ollama executes
  templates against structs whose fields always exist, so ``MISSING`` behaves
  like a zero-valued field: falsy, renders as ``""``, has length 0, ranges zero
  times, and ``.Missing.Deeper`` is ``MISSING`` too.  Custom functions receive
  ``None`` in its place.

Two hooks let callers reproduce Go types that customise their formatting:

* a class that overrides ``__str__`` acts as a ``fmt.Stringer``: printing it
  uses ``str(value)``.  (Ollama's tool-call arguments print themselves as
  JSON, so pass them as a dict subclass whose ``__str__`` returns
  ``corral.gocompat.marshal(self)``.)
* a class with a ``__json__()`` method acts as a ``json.Marshaler`` for the
  ``json`` template function: its return value is encoded instead.

Not supported: ``call``, complex numbers, ``%[n]`` argument indexes in
``printf``, iterating over channels or functions, ``toTypeScriptType``
(callers may add it through ``funcs``).
"""

from corral.gotemplate.template import Template
from corral.gotemplate.values import MISSING, TemplateError, TemplateExecError

__all__ = ["MISSING", "Template", "TemplateError", "TemplateExecError"]
