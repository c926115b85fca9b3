"""The ``corral`` client commands as real subprocesses, against the session's server (a worker,
and a cluster from ``corral up``) and a real registry: what they print, on which stream, and
their exit status, as ``ollama``'s commands of the same names."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.model import MODEL_NAME
from tests.support.servers import Server, free_port
from tests.support.vision import MODEL as VISION_MODEL
from tests.support.vision import PROMPT, RED, b64

pytestmark = pytest.mark.integration

ANSWER_OPTIONS = "PARAMETER temperature 0\nPARAMETER num_predict 8\n"


def corral(server_url: str, *args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OLLAMA_HOST": server_url}
    return subprocess.run(
        [sys.executable, "-m", "corral.cli", *args],
        input=stdin if stdin is not None else "",
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def on_a_terminal(server_url: str, *args: str, timeout: float = 300) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (where the progress bars are drawn); stdout piped."""
    master, slave = pty.openpty()
    env = {**os.environ, "OLLAMA_HOST": server_url, "COLUMNS": "100", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    out = proc.communicate(timeout=30)[0]
    return proc.wait(), out.decode(), screen.decode(errors="replace")


def no_traceback(done: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in done.stderr, done.stderr


@pytest.fixture
def modelfile(tmp_path: Path, gguf_path: Path) -> Path:
    (tmp_path / "smol.gguf").symlink_to(gguf_path)
    path = tmp_path / "Modelfile"
    path.write_text(f'FROM ./smol.gguf\nSYSTEM "You answer in one word."\n{ANSWER_OPTIONS}')
    return path


def test_create_list_show_run_cp_rm(worker: Server, serving: str, modelfile: Path) -> None:
    name = f"cli-made-{serving}"
    try:
        _create_list_show_run_cp_rm(worker, name, modelfile)
    finally:  # the session's server is shared: other tests list its models
        for leftover in (name, name + "-copy"):
            corral(worker.url, "rm", leftover)


def _create_list_show_run_cp_rm(worker: Server, name: str, modelfile: Path) -> None:
    made = corral(worker.url, "create", name, "-f", str(modelfile))
    assert made.returncode == 0, made.stderr
    steps = made.stderr.splitlines()  # not a terminal: one line per step, on stderr
    assert steps[0] == f"{name}: gathering model components", steps
    assert any(re.fullmatch(rf"{name}: copying file sha256:[0-9a-f]{{64}}", s) for s in steps), steps
    assert f"{name}: parsing GGUF" in steps and steps[-1] == f"{name}: success", steps
    assert made.stdout == ""

    listed = corral(worker.url, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert re.fullmatch(r"NAME +ID +SIZE +MODIFIED +", lines[0]) and lines[0].endswith(" "), lines
    row = next(line for line in lines if line.startswith(f"{name}:latest "))
    assert re.fullmatch(rf"{name}:latest +[0-9a-f]{{12}} +\d+(\.\d)? MB +(Less than a second|1 second|\d+ seconds) ago +", row)
    filtered = corral(worker.url, "ls", "CLI-MADE").stdout.splitlines()[1:]  # a prefix, in any case
    assert [line.split()[:4] for line in filtered] == [row.split()[:4]], filtered

    shown = corral(worker.url, "show", name)
    assert shown.returncode == 0, shown.stderr
    assert "  Model\n    architecture        llama    " in shown.stdout, shown.stdout
    assert "  System\n    You answer in one word.    \n" in shown.stdout
    assert re.search(r"  Parameters\n(    \S+ +\S+ +\n)+", shown.stdout)
    assert "temperature    0 " in shown.stdout
    assert corral(worker.url, "show", name, "--system").stdout == "You answer in one word."
    assert "FROM " in corral(worker.url, "show", name, "--modelfile").stdout
    both = corral(worker.url, "show", name, "--system", "--template")
    assert both.returncode == 1 and both.stderr.startswith("Error: only one of '--license', '--modelfile'")

    answered = corral(worker.url, "run", name, "Name", "a", "colour.")
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.strip() and answered.stdout.endswith("\n\n"), repr(answered.stdout)
    again = corral(worker.url, "run", name, "Name a colour.")
    assert again.stdout == answered.stdout  # temperature 0: the same words
    piped = corral(worker.url, "run", name, "--verbose", stdin="Name a colour.")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip(), piped.stderr
    stats = dict(line.split(":", 1) for line in piped.stderr.splitlines() if ":" in line)
    assert re.fullmatch(r" +[1-8] token\(s\)", stats["eval count"]), piped.stderr  # num_predict 8
    assert re.fullmatch(r" +\d+\.\d\d tokens/s", stats["eval rate"]), piped.stderr
    assert re.fullmatch(r"total duration: {7}\S+s", piped.stderr.splitlines()[0]), piped.stderr

    copied = corral(worker.url, "cp", name, name + "-copy")
    assert (copied.returncode, copied.stdout) == (0, f"copied '{name}' to '{name}-copy'\n"), copied.stderr
    removed = corral(worker.url, "rm", name, name + "-copy")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == f"deleted '{name}'\ndeleted '{name}-copy'\n"
    assert name not in corral(worker.url, "list").stdout


def test_ps_before_and_after_stop(worker: Server, serving: str) -> None:
    # Loaded without a question (empty stdin): the test model's answers have no length bound.
    loaded = corral(worker.url, "run", MODEL_NAME, "--keepalive", "10m", stdin="")
    assert (loaded.returncode, loaded.stdout) == (0, ""), loaded.stderr
    ps = corral(worker.url, "ps")
    assert ps.returncode == 0, ps.stderr
    header, *rows = ps.stdout.splitlines()
    cluster = serving == "cluster"
    expected = ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"] + (["WORKERS"] if cluster else [])
    assert header.split() == expected, ps.stdout
    row = next(r for r in rows if r.startswith(MODEL_NAME + " "))
    assert re.search(r" 100% CPU +\d+ +(9|10) minutes from now ", row), row
    if cluster:
        assert re.search(r"from now +\S+ +$", row), row  # the worker holding it
    stopped = corral(worker.url, "stop", MODEL_NAME)
    assert (stopped.returncode, stopped.stdout) == (0, ""), stopped.stderr
    deadline = time.monotonic() + 30
    while MODEL_NAME in corral(worker.url, "ps").stdout:
        assert time.monotonic() < deadline, "still loaded after stop"
        time.sleep(0.5)
    missing = corral(worker.url, "stop", "no-such-model")
    assert (missing.returncode, missing.stderr) == (1, 'Error: couldn\'t find model "no-such-model" to stop\n')


def test_pull_and_push_through_a_registry(worker: Server, serving: str, upstream) -> None:
    registry, seeded = upstream
    reference = seeded.reference
    pushed_name = f"{reference.rsplit(':', 1)[0]}:pushed-{serving}"
    try:
        pulled = corral(worker.url, "pull", "--insecure", reference)
        assert pulled.returncode == 0, pulled.stderr
        steps = pulled.stderr.splitlines()
        assert steps[0] == f"{reference}: pulling manifest" and steps[-1] == f"{reference}: success", steps
        assert len(steps) < 20, "one line per step, not one per progress tick"
        assert reference in corral(worker.url, "list").stdout

        # On a terminal: ollama's bars (the layers are there now: pulled again, each at 100%).
        code, out, screen = on_a_terminal(worker.url, "pull", "--insecure", reference)
        assert code == 0 and out == "", screen
        assert re.search(r"pulling [0-9a-f]{12}: 100% ▕█+▏ +\d", screen), screen
        assert "writing manifest" in screen and "success" in screen

        assert corral(worker.url, "cp", reference, pushed_name).returncode == 0
        pushed = corral(worker.url, "push", "--insecure", pushed_name)
        assert pushed.returncode == 0, pushed.stderr
        assert pushed.stderr.splitlines()[-1] == f"{pushed_name}: success", pushed.stderr
        assert pushed.stdout == f"\nYou can find your model at:\n\n\t{pushed_name}\n"
        tags = httpx.get(f"{registry.url}/v2/{seeded.repo}/tags/list", timeout=30).json()["tags"]
        assert f"pushed-{serving}" in tags
    finally:
        for leftover in (pushed_name, reference):
            corral(worker.url, "rm", leftover)
    missing = corral(worker.url, "pull", "--insecure", reference.rsplit(":", 1)[0] + ":no-such-tag")
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[-1] == "Error: pull model manifest: file does not exist", missing.stderr


def test_errors_read_as_ollama_says_them(worker: Server, tmp_path: Path) -> None:
    unknown = corral(worker.url, "show", "no-such-model")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert re.fullmatch(r"Error: model 'no-such-model(:latest)?' not found\n", unknown.stderr), unknown.stderr
    no_traceback(unknown)
    gone = corral(f"127.0.0.1:{free_port()}", "list")
    assert (gone.returncode, gone.stderr) == (1, "Error: could not connect to ollama server, run 'ollama serve' to start it\n")
    bad = tmp_path / "Modelfile"
    bad.write_text("FROM smollm2:135m\nFOO bar\n")
    unparsed = corral(worker.url, "create", "x", "-f", str(bad))
    assert unparsed.returncode == 1 and unparsed.stderr.startswith("Error: (line 2): command must be one of "), unparsed.stderr
    no_traceback(unparsed)
    missing_file = corral(worker.url, "create", "x", "-f", str(tmp_path / "nothing-here"))
    assert (missing_file.returncode, missing_file.stderr) == (1, "Error: no Modelfile or safetensors files found\n")
    think = corral(worker.url, "run", MODEL_NAME, "--think=sometimes", "hi")
    assert think.stderr == 'Error: invalid value for --think: "sometimes" (must be true, false, high, medium, low, or max)\n'
    keepalive = corral(worker.url, "run", MODEL_NAME, "--keepalive", "soon", "hi")
    assert keepalive.stderr == 'Error: time: invalid duration "soon"\n'
    usage = corral(worker.url, "show")  # a usage mistake is an error like any other: status 1
    assert (usage.returncode, usage.stderr) == (1, "Error: the following arguments are required: model\n")


def test_a_server_answering_garbage_is_an_error_not_a_traceback() -> None:
    """A proxy's HTML page, a cut line: the user gets ``Error: ...`` and status 1."""
    import http.server
    import threading

    class Garbage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # /api/tags
            self._answer(b"<html>not json</html>", "text/html")

        def do_POST(self) -> None:  # /api/pull streams NDJSON: one good line, then a broken one
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._answer(b'{"status":"pulling manifest"}\n{"status": "pul\n', "application/x-ndjson")

        def _answer(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for args in (["list"], ["pull", "x"]):
            done = corral(url, *args)
            last = done.stderr.splitlines()[-1]  # after pull's progress lines
            assert done.returncode == 1 and last.startswith("Error: invalid JSON from the server: "), done
            no_traceback(done)
    finally:
        server.shutdown()


def test_version(worker: Server) -> None:
    done = corral(worker.url, "--version")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"ollama version is \d+\.\d+\.\d+", lines[0]), lines
    assert re.fullmatch(r"corral version is \S+", lines[-1]), lines
    down = corral(f"127.0.0.1:{free_port()}", "-v")
    assert down.stdout.splitlines()[0] == "Warning: could not connect to a running Ollama instance"


class Tmux:
    """A real terminal: a tmux session running one command; keys in, the screen out."""

    def __init__(self, tmp_path: Path, command: str, env: dict[str, str]) -> None:
        self.name = f"corral-{os.getpid()}-{time.monotonic_ns()}"
        self.socket = str(tmp_path / "tmux.sock")
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        shell = f"env {exports} {command}; echo EXIT=$?; sleep 600"
        self.tmux("new-session", "-d", "-s", self.name, "-x", "120", "-y", "40", shell)

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.name, "-l", text)
        self.keys("Enter")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name, "-S", "-200")

    def wait_for(self, predicate, what: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            assert time.monotonic() < deadline, f"waited {timeout}s for {what}; the screen:\n{screen}"
            time.sleep(0.2)

    def say(self, text: str, what: str, timeout: float = 60) -> str:
        """Type a chat line; what the chat printed for it once it waits for the next one."""
        line = ">>> " + text + "\n"
        before = self.screen().count(line)
        self.type(text)
        screen = self.wait_for(lambda s: s.count(line) > before and after(s, line[:-1]) is not None, what, timeout)
        return after(screen, line[:-1]) or ""

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=30)


IDLE = ">>> Send a message (/? for help)"  # the empty prompt shows the placeholder


def after(screen: str, typed: str) -> str | None:
    """What the chat printed after the last ``typed`` line, once it waits for the next message
    (None while it is still busy)."""
    head, found, tail = screen.rpartition(typed + "\n")
    if not found:
        return None
    lines = [line for line in tail.splitlines() if line.strip()]
    if not lines or not lines[-1].startswith(IDLE):
        return None
    return "\n".join(lines[:-1])


def test_interactive_chat_in_a_terminal(worker: Server, tmp_path: Path) -> None:
    env = {"OLLAMA_HOST": worker.url, "TERM": "xterm-256color", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    term = Tmux(tmp_path, f"{sys.executable} -m corral.cli run {MODEL_NAME}", env)

    try:
        term.wait_for(lambda s: s.strip().startswith(IDLE), "the first prompt")
        assert term.say("/set parameter temperature 0", "the parameter") == "Set parameter 'temperature' to '0'"
        assert term.say("/set parameter num_predict 12", "num_predict") == "Set parameter 'num_predict' to '12'"
        first = term.say("Name a colour.", "the first answer")
        assert term.say("/clear", "/clear") == "Cleared session context"
        second = term.say("Name a colour.", "the second answer")
        assert first and first == second  # temperature 0, the same conversation: the same words

        term.type('"""Say the word')
        # Typed only once the chat asks for the next line (typed earlier, the terminal echoes it
        # before the "... " prompt is drawn, and the screen no longer shows what was asked).
        term.wait_for(lambda s: [line for line in s.splitlines() if line.strip()][-1].startswith("..."), 'the "..." prompt')
        term.type('yes."""')
        term.wait_for(lambda s: after(s, '... yes."""') is not None, 'an answer to the """ message')
        assert re.search(r'>>> """Say the word\n+\.\.\. yes\."""\n', term.screen()), term.screen()
        assert after(term.screen(), '... yes."""'), "answered"

        assert term.say("/set parameter num_predict 4000", "num_predict 4000") == "Set parameter 'num_predict' to '4000'"
        story = "Tell me a very long story about a cat."
        term.type(story)
        term.wait_for(lambda s: len(s.rpartition(story)[2].strip()) > 40, "the story to start")
        # A person reads a little first. (A Ctrl-C within the first few hundred ms of an answer,
        # sent by tmux, can reach the terminal before prompt_toolkit has handed it back, and is lost.)
        time.sleep(1.5)
        assert after(term.screen(), ">>> " + story) is None  # still answering (4000 tokens take ~30 s here)
        term.keys("C-c")
        term.wait_for(lambda s: after(s, ">>> " + story) is not None, "Ctrl-C to stop the answer", timeout=15)

        shown = term.say("/show parameters", "/show parameters")
        assert "User defined parameters:" in shown and re.search(r"temperature +0\b", shown), shown
        term.type("/bye")
        term.wait_for(lambda s: "EXIT=0" in s, "/bye to exit 0")
        assert "Traceback" not in term.screen()
    finally:
        term.close()


def test_interactive_chat_sends_the_images_a_line_names(worker: Server, vision: Path, tmp_path: Path) -> None:
    """In the chat too: a line naming an image (even one starting with its path, which would
    otherwise be a /command) sends it, and the next turn still carries it."""
    picture = tmp_path / "red.png"
    picture.write_bytes(RED)
    env = {"OLLAMA_HOST": worker.url, "TERM": "xterm-256color", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    term = Tmux(tmp_path, f"{sys.executable} -m corral.cli run {VISION_MODEL} --verbose", env)

    try:
        term.wait_for(lambda s: s.strip().startswith(IDLE), "the first prompt")
        assert term.say("/set parameter num_predict 4", "num_predict") == "Set parameter 'num_predict' to '4'"
        counts = []
        for line in (f"{picture} {PROMPT}", "And now?"):
            shown = term.say(line, f"the answer to {line!r}")
            counts.append(int(re.search(r"prompt eval count: +(\d+) token", shown).group(1)))
            if line != "And now?":
                assert f"Added image '{picture}'" in shown, shown
        text_only = term.say(PROMPT, "a text-only answer")
        assert "Added image" not in text_only
        # The image's 16 embeddings are in both turns' prompts (the second resends the first).
        assert counts[0] >= 16 and counts[1] > counts[0], counts
        term.type("/bye")
        term.wait_for(lambda s: "EXIT=0" in s, "/bye to exit 0")
        assert "Traceback" not in term.screen()
    finally:
        term.close()


def test_the_client_needs_no_server_extras(worker: Server) -> None:
    """``pip install corral`` without extras is a working client: no command of it loads
    llama.cpp or the router's libraries."""
    probe = (
        "import sys\n"
        "from corral.cli import main\n"
        "for argv in (['list'], ['ps'], ['show', sys.argv[1]], ['--version']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, argv\n"
        "extras = ('llama_cpp', 'numpy', 'gunicorn', 'uvicorn_worker', 'hiredis')\n"
        "print('LOADED', [m for m in extras if m in sys.modules])\n"
    )
    env = {**os.environ, "OLLAMA_HOST": worker.url}
    done = subprocess.run([sys.executable, "-c", probe, MODEL_NAME], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "LOADED []", done.stdout


def test_create_quantize_gets_the_servers_answer(worker: Server, modelfile: Path) -> None:
    done = corral(worker.url, "create", "cli-quantized", "-f", str(modelfile), "--quantize", "q4_K_M")
    assert done.returncode == 1
    no_traceback(done)
    assert done.stderr.splitlines()[-1] == (  # a streamed call's error, with its status line, as ollama shows it
        "Error: 400 Bad Request: quantization is not supported; quantize GGUF models with llama.cpp tools before "
        "importing"
    ), done.stderr


def test_ctrl_c_stops_a_pull_and_run_pulls_a_missing_model_first(worker: Server, upstream) -> None:
    _, seeded = upstream
    reference = seeded.reference
    corral(worker.url, "rm", reference)  # absent, whatever ran before
    env = {**os.environ, "OLLAMA_HOST": worker.url}
    pulling = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "pull", "--insecure", reference],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    first = pulling.stderr.readline()
    assert first == f"{reference}: pulling manifest\n", first
    pulling.send_signal(signal.SIGINT)
    code = pulling.wait(timeout=30)
    rest = pulling.stderr.read()
    pulling.stdout.close()
    pulling.stderr.close()
    assert code in (0, 130), rest  # stopped (130, as a shell reports Ctrl-C), or it had just finished
    assert "Traceback" not in rest, rest
    # With its blobs cached by an earlier test, the pull can finish before the signal lands
    # (even when the client still exits 130): the model is removed again, so that run has one to pull.
    corral(worker.url, "rm", reference)
    try:
        # Nothing asked (empty stdin): the pulled model is only loaded, whose answers have no length bound.
        ran = corral(worker.url, "run", "--insecure", reference, stdin="")
        assert ran.returncode == 0, ran.stderr
        steps = ran.stderr.splitlines()
        assert steps[0] == f"{reference}: pulling manifest" and f"{reference}: success" in steps, steps
        assert reference in corral(worker.url, "list").stdout
        assert reference in corral(worker.url, "ps").stdout  # and loaded
    finally:
        corral(worker.url, "rm", reference)


def test_run_sends_the_images_a_prompt_names(worker: Server, vision: Path, tmp_path: Path) -> None:
    """As `ollama run` with a vision model: paths of images in the prompt are read, taken out of
    the text and sent as images; a path to no file stays text; a file of another type is an error."""
    picture = tmp_path / "red picture.png"
    picture.write_bytes(RED)
    short = "smolvision-short:latest"  # answers bounded: `run` has no num_predict flag
    r = httpx.post(worker.url + "/api/create", json={"model": short, "from": VISION_MODEL, "stream": False,
                                                     "parameters": {"num_predict": 8, "temperature": 0}}, timeout=120)
    assert r.status_code == 200, r.text
    try:
        ask = {"model": short, "prompt": PROMPT, "images": [b64(RED)], "stream": False}
        expected = httpx.post(worker.url + "/api/generate", json=ask, timeout=120).json()["prompt_eval_count"]
        escaped = str(picture).replace(" ", "\\ ")
        done = corral(worker.url, "run", short, "--verbose", f"{PROMPT} {escaped}")
        no_traceback(done)
        assert done.returncode == 0, done.stderr
        assert f"Added image '{picture}'" in done.stderr
        # The prompt the model read is the text without the path, plus the image's embeddings.
        count = re.compile(rf"^prompt eval count: +{expected} token\(s\)$", re.M)
        assert count.search(done.stderr), (expected, done.stderr)
        # A path to nothing stays in the prompt, as text.
        missing = corral(worker.url, "run", short, "--verbose", f"{PROMPT} {tmp_path}/nothing.png")
        assert missing.returncode == 0 and "Added" not in missing.stderr, missing.stderr
        assert not count.search(missing.stderr)
        fake = tmp_path / "notes.png"
        fake.write_text("not a picture")
        wrong = corral(worker.url, "run", short, f"{PROMPT} {fake}")
        assert (wrong.returncode, wrong.stderr) == (
            1, "Couldn't process file: \"invalid file type: text/plain; charset=utf-8\"\n"
               "Error: invalid file type: text/plain; charset=utf-8\n")
    finally:
        httpx.request("DELETE", worker.url + "/api/delete", json={"model": short}, timeout=60)
