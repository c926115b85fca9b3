"""``corral run MODEL [PROMPT]``: an answer, or a chat, as ``ollama run`` gives them.

With a prompt (or stdin piped in) it prints the streamed answer and exits; otherwise it opens
an interactive chat (``corral.cli.chat``). A model the server lacks is pulled first, with the
same display as ``corral pull``.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from corral.api.durations import DurationError, parse_go_duration
from corral.cli import media
from corral.cli.client import Api, CliError
from corral.cli.transfer import transfer
from corral.cli.units import go_duration


@dataclass
class Session:
    """What a run (or a chat) sends with each request; the chat's commands change it."""

    model: str
    options: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    format: str = ""
    keep_alive: str | None = None
    think: bool | str | None = None
    hide_thinking: bool = False
    verbose: bool = False
    word_wrap: bool = True
    multimodal: bool = False  # the model takes images (or audio): files named in prompts are sent
    messages: list[dict[str, Any]] = field(default_factory=list)

    def body(self, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "stream": True, **extra}
        if self.options:
            body["options"] = dict(self.options)
        if self.format:
            body["format"] = self.format
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        if self.think is not None:
            body["think"] = self.think
        return body


def load(api: Api, session: Session) -> None:
    """Load the session's model (with its keep-alive) without asking it anything."""
    api.request("POST", "/api/generate", session.body(prompt="", stream=False))


def ensure_model(api: Api, model: str, *, insecure: bool = False) -> dict[str, Any]:
    """The model's ``/api/show``; a model the server lacks is pulled first."""
    try:
        return api.json("POST", "/api/show", {"model": model})
    except CliError as exc:
        if exc.status != 404:
            raise
    transfer(api, "/api/pull", model, insecure=insecure)
    return api.json("POST", "/api/show", {"model": model})


class Printer:
    """Streamed text on a terminal, wrapped at word boundaries to its width (``--nowordwrap``
    turns that off; a pipe or a file gets the text as it came)."""

    def __init__(self, out: TextIO, wrap: bool) -> None:
        self.out = out
        self.width = shutil.get_terminal_size().columns if wrap else 0
        self.column = 0
        self.word = ""

    def write(self, text: str) -> None:
        if not self.width:
            self.out.write(text)
            self.out.flush()
            return
        for ch in text:
            if ch == "\n":
                self._flush_word()
                self.out.write("\n")
                self.column = 0
            elif ch == " ":
                self._flush_word()
                if self.column < self.width:
                    self.out.write(" ")
                    self.column += 1
            else:
                self.word += ch
        self.out.flush()

    def _flush_word(self) -> None:
        if not self.word:
            return
        if self.column and self.column + len(self.word) > self.width:
            self.out.write("\n")
            self.column = 0
        self.out.write(self.word)
        self.column += len(self.word)
        self.word = ""

    def end(self) -> None:
        self._flush_word()
        self.out.flush()


def answer(api: Api, session: Session, path: str, body: dict[str, Any], out: TextIO = sys.stdout) -> str:
    """Stream one answer to ``out``; returns its text. Thinking is shown between "Thinking..."
    and "...done thinking." unless hidden. ``--verbose`` adds the timings ollama prints."""
    printer = Printer(out, session.word_wrap and out.isatty())
    thinking, content, final = False, [], {}
    for event in api.stream(path, body):
        piece = event.get("message", event) if path == "/api/chat" else event
        thought = piece.get("thinking") or ""
        text = piece.get("content", "") if path == "/api/chat" else event.get("response", "")
        if thought and not session.hide_thinking:
            if not thinking:
                printer.write("Thinking...\n")
                thinking = True
            printer.write(thought)
        if text:
            if thinking:
                printer.write("\n...done thinking.\n\n")
                thinking = False
            printer.write(text)
            content.append(text)
        if event.get("done"):
            final = event
    if thinking:
        printer.write("\n...done thinking.\n\n")
    printer.end()
    out.write("\n\n")
    out.flush()
    if session.verbose and final:
        print_stats(final)
    return "".join(content)


def print_stats(final: dict[str, Any], err: TextIO = sys.stderr) -> None:
    def rate(count: int, ns: int) -> str:
        return f"{count / (ns / 1e9):.2f} tokens/s"

    def field(name: str) -> int:
        value = final.get(name)
        return int(value) if isinstance(value, int | float) else 0

    lines = []  # each only when it is more than zero, as ollama prints them
    for name, label in (("total_duration", "total duration"), ("load_duration", "load duration")):
        if field(name) > 0:
            lines.append((label, go_duration(field(name))))
    for prefix, label in (("prompt_eval", "prompt eval"), ("eval", "eval")):
        count, ns = field(f"{prefix}_count"), field(f"{prefix}_duration")
        if count > 0:
            lines.append((f"{label} count", f"{count} token(s)"))
        if ns > 0:
            lines += [(f"{label} duration", go_duration(ns)), (f"{label} rate", rate(count, ns))]
    for name, value in lines:
        print(f"{name + ':':<22}{value}", file=err)


def _think(value: str | None) -> bool | str | None:
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    if lowered in ("low", "medium", "high", "max"):
        return lowered
    raise CliError(f'invalid value for --think: "{value}" (must be true, false, high, medium, low, or max)')


def run(args: argparse.Namespace) -> int:
    if args.keepalive is not None:
        try:
            parse_go_duration(args.keepalive)
        except DurationError:
            raise CliError(f'time: invalid duration "{args.keepalive}"') from None
    session = Session(
        model=args.model,
        format=args.format,
        keep_alive=args.keepalive,
        think=_think(args.think),
        hide_thinking=args.hidethinking,
        verbose=args.verbose,
        word_wrap=not args.nowordwrap,
    )
    prompts = list(args.prompt)
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        if piped:
            prompts.insert(0, piped)
    interactive = not prompts and sys.stdin.isatty() and sys.stdout.isatty()
    with Api() as api:
        info = ensure_model(api, session.model, insecure=args.insecure)
        capabilities = info.get("capabilities") or []
        if session.think is None and "thinking" in capabilities:
            session.think = True
        session.multimodal = "vision" in capabilities or "audio" in capabilities
        if "embedding" in capabilities:
            return embed(api, session, " ".join(prompts))
        if not interactive:
            if not "".join(prompts).strip():
                load(api, session)  # nothing asked (empty stdin): the model is loaded, nothing printed
                return 0
            prompt, files = " ".join(prompts), list[bytes]()
            if session.multimodal:
                prompt, files = media.extract(prompt)
            extra = {"images": [base64.b64encode(f).decode() for f in files]} if files else {}
            try:
                answer(api, session, "/api/generate", session.body(prompt=prompt, **extra))
            except KeyboardInterrupt:
                return 0  # stopped: the answer ends where it was, as ollama's does
            return 0
        from corral.cli.chat import chat  # prompt_toolkit is loaded only for a chat

        return chat(api, session)


def embed(api: Api, session: Session, text: str) -> int:
    if not text.strip():
        raise CliError('embedding models require input text. Usage: ollama run MODEL "your text here"')
    body: dict[str, Any] = {"model": session.model, "input": text}
    if session.keep_alive is not None:
        body["keep_alive"] = session.keep_alive
    reply = api.json("POST", "/api/embed", body)
    print(json.dumps(reply["embeddings"][0], separators=(",", ":")))
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("run", help="run a model: answer a prompt, or chat")
    p.add_argument("model")
    p.add_argument("prompt", nargs="*", help="the prompt (else stdin when piped, else an interactive chat)")
    p.add_argument("--verbose", action="store_true", help="show timings for response")
    p.add_argument("--format", default="", help='response format (e.g. "json")')
    p.add_argument("--keepalive", default=None, help="duration to keep a model loaded (e.g. 5m)")
    p.add_argument(
        "--think", nargs="?", const="true", default=None, help="enable thinking: true, false, low, medium, high or max"
    )
    p.add_argument("--hidethinking", action="store_true", help="hide thinking output (if provided)")
    p.add_argument("--nowordwrap", action="store_true", help="don't wrap words to the next line automatically")
    p.add_argument("--insecure", action="store_true", help="use an insecure registry (when the model is pulled first)")
    p.set_defaults(func=run)
