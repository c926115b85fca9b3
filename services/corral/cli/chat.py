"""The interactive chat of ``corral run MODEL``: ``ollama run``'s, on ``prompt_toolkit``.

It keeps the conversation and sends it whole with each message (``/api/chat``). Lines that
start with ``/`` are commands (``/?`` lists them); a line that starts with ``\"\"\"`` opens a
message that runs until the next ``\"\"\"``. Ctrl-C stops the answer being written (the
session goes on) or clears the line being typed; Ctrl-D or ``/bye`` ends the chat.
"""

from __future__ import annotations

import base64
import json
import signal
import sys
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import InMemoryHistory

from corral.api.errors import CorralError
from corral.api.options import parse_parameter
from corral.cli import media
from corral.cli.client import Api, CliError
from corral.cli.models import show_info
from corral.cli.run import Session, answer, load
from corral.gocompat import format_float

PROMPT = ">>> "
CONTINUE = "... "
PLACEHOLDER = "Send a message (/? for help)"
QUOTES = '"""'

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message.
"""
HELP_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
"""
HELP_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""


class Chat:
    def __init__(self, api: Api, session: Session) -> None:
        self.api = api
        self.session = session
        self.prompt: PromptSession[str] = PromptSession(history=InMemoryHistory())

    def read(self) -> str | None:
        """One message or command; None at Ctrl-D. A ``\"\"\"`` line opens a multi-line message."""
        while True:
            try:
                line = self.prompt.prompt(PROMPT, placeholder=FormattedText([("fg:ansibrightblack", PLACEHOLDER)]))
            except KeyboardInterrupt:
                print("Use Ctrl + d or /bye to exit.")
                continue
            except EOFError:
                print()
                return None
            if not line.lstrip().startswith(QUOTES):
                return line
            text = line.lstrip()[len(QUOTES) :]
            lines = []
            while True:
                if QUOTES in text:
                    lines.append(text[: text.index(QUOTES)])
                    return "\n".join(lines)
                lines.append(text)
                try:
                    text = self.prompt.prompt(CONTINUE)
                except KeyboardInterrupt:
                    break  # the message is dropped, as a Ctrl-C clears a line
                except EOFError:
                    return None

    def run(self) -> int:
        while True:
            line = self.read()
            if line is None:
                return 0
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("/") and not stripped.startswith("//") and not self._names_a_file(stripped):
                if self.command(stripped) == "bye":
                    return 0
                continue
            self.send(line)

    def _names_a_file(self, line: str) -> bool:
        """A line that starts with a media file's path is a prompt, not a command (as in ollama)."""
        first = line.split()[0]
        return self.session.multimodal and any(name.startswith(first) for name in media.file_names(line))

    def send(self, text: str) -> None:
        session = self.session
        messages = list(session.messages)
        if session.system is not None and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": session.system})
        message: dict = {"role": "user", "content": text}
        if session.multimodal:
            try:
                message["content"], files = media.extract(text)
            except CliError as exc:
                print(f"Error: {exc}")
                return
            if files:
                message["images"] = [base64.b64encode(f).decode() for f in files]
        messages.append(message)
        try:
            reply = answer(self.api, session, "/api/chat", session.body(messages=messages))
        except KeyboardInterrupt:
            print()  # the answer stops here; what was asked is not kept
            return
        except CliError as exc:
            print(f"Error: {exc}")
            return
        session.messages = [*messages, {"role": "assistant", "content": reply}]

    def command(self, line: str) -> str:
        words = line.split()
        name, rest = words[0], words[1:]
        session = self.session
        if name.startswith(("/bye", "/exit")):  # by prefix, as ollama matches them
            return "bye"
        if name in ("/?", "/help"):
            topic = rest[0] if rest else ""
            print(HELP_SET if topic == "set" else HELP_SHOW if topic == "show" else HELP)
        elif name.startswith("/clear"):
            session.messages = []  # the system message is the session's, kept
            print("Cleared session context")
        elif name.startswith("/set"):
            self.set(line, rest)
        elif name.startswith("/show"):
            self.show(rest[0] if rest else "")
        elif name.startswith("/load"):
            if len(rest) != 1:
                print("Usage:\n  /load <modelname>")
            else:
                print(f"Loading model '{rest[0]}'")
                try:
                    info = self.api.json("POST", "/api/show", {"model": rest[0]})
                except CliError as exc:
                    print(f"Couldn't find model '{rest[0]}'" if exc.status == 404 else f"Error: {exc}")
                    return ""
                session.model = rest[0]
                capabilities = info.get("capabilities") or []
                session.multimodal = "vision" in capabilities or "audio" in capabilities
                session.messages = []
                try:
                    load(self.api, session)
                except CliError as exc:
                    print(f"Error: {exc}")
        else:
            print(f"Unknown command '{name}'. Type /? for help")
        return ""

    def set(self, line: str, rest: list[str]) -> None:
        session = self.session
        what = rest[0] if rest else ""
        if what == "parameter":
            if len(rest) < 3:
                print("Usage: /set parameter <name> <value>")
                return
            name, values = rest[1], rest[2:]
            try:
                typed = [parse_parameter(name, v) for v in values]
            except (CorralError, ValueError) as exc:
                print(f"Couldn't set parameter: {json.dumps(getattr(exc, 'message', str(exc)))}")
                return
            session.options[name] = typed if name == "stop" else typed[0]
            print(f"Set parameter '{name}' to '{', '.join(values)}'")
        elif what == "system":
            text = line.split("system", 1)[1].strip().strip('"')
            session.system = text
            session.messages = [m for m in session.messages if m["role"] != "system"]
            print("Set system message.")
        elif what == "format" and rest[1:] == ["json"]:
            session.format = "json"
            print("Set format to 'json' mode.")
        elif what == "noformat":
            session.format = ""
            print("Disabled format.")
        elif what in ("verbose", "quiet"):
            session.verbose = what == "verbose"
            print("Set 'verbose' mode." if session.verbose else "Set 'quiet' mode.")
        elif what == "format":
            print("Invalid or missing format. For 'json' mode use '/set format json'")
        elif what == "think" and rest[1:2] and rest[1] in ("low", "medium", "high", "max"):
            session.think = rest[1]
            print(f"Set 'think' mode to '{rest[1]}'.")
        elif what in ("think", "nothink"):
            session.think = what == "think"
            print("Set 'think' mode." if session.think else "Set 'nothink' mode.")
        elif what in ("wordwrap", "nowordwrap"):
            session.word_wrap = what == "wordwrap"
            print(f"Set '{what}' mode.")
        elif not what:
            print(HELP_SET)
        else:
            print(f"Unknown command '/set {what}'. Type /? for help")

    def show(self, what: str) -> None:
        try:
            info: dict[str, Any] = self.api.json("POST", "/api/show", {"model": self.session.model})
        except CliError:
            print("error: couldn't get model")
            return
        options = self.session.options
        if what == "info":
            show_info(info, out=sys.stderr)
        elif what == "license":
            print(info.get("license") or "No license was specified for this model.")
        elif what == "modelfile":
            print(info.get("modelfile", ""))
        elif what == "parameters":
            print("Model defined parameters:")
            lines = [line for line in (info.get("parameters") or "").splitlines() if line.strip()]
            for line in lines or ["No additional parameters were specified for this model."]:
                print(f"  {line}")
            print()
            if options:
                print("User defined parameters:")
                for name, value in options.items():
                    print(f"  {name:<30} {_go_value(value)}")
                print()
        elif what == "system":
            system = self.session.system or info.get("system") or ""
            print(f"{system}\n" if system else "No system message was specified for this model.")
        elif what == "template":
            print(info.get("template") or "No prompt template was specified for this model.")
        elif not what:
            print(HELP_SHOW)
        else:
            print(f"Unknown command '/show {what}'. Type /? for help")


def _go_value(value: Any) -> str:
    """A parameter as Go's %v prints it: ``0``, ``0.7``, ``[a b]``."""
    if isinstance(value, list):
        return "[" + " ".join(_go_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_float(float(value), plain=True)
    return str(value)


def chat(api: Api, session: Session) -> int:
    # Ctrl-C must reach the answer being written even when whatever started this process
    # (a service manager, a test harness) had SIGINT ignored: Python would then never raise it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Load the model first, as ollama does, so the first answer does not wait for it.
    load(api, session)
    return Chat(api, session).run()
