"""Model names: what clients type, how they are shown, and which names never reach the disk."""

from pathlib import PurePosixPath

import pytest

from corral.api.errors import InvalidNameError
from corral.store.names import ModelName, is_valid_name


@pytest.mark.parametrize(
    ("text", "host", "namespace", "model", "tag"),
    [
        ("llama3.2", "registry.ollama.ai", "library", "llama3.2", "latest"),
        ("llama3.2:1b", "registry.ollama.ai", "library", "llama3.2", "1b"),
        ("user/model", "registry.ollama.ai", "user", "model", "latest"),
        ("user/model:q4_K_M", "registry.ollama.ai", "user", "model", "q4_K_M"),
        ("example.com/ns/model:v1.0", "example.com", "ns", "model", "v1.0"),
        ("localhost:5000/ns/m", "localhost:5000", "ns", "m", "latest"),
        ("localhost:5000/ns/m:tag", "localhost:5000", "ns", "m", "tag"),
        ("https://example.com/ns/m:t", "example.com", "ns", "m", "t"),
        (
            "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M",
            "hf.co",
            "bartowski",
            "SmolLM2-135M-Instruct-GGUF",
            "Q4_K_M",
        ),
        ("_under/score_:_", "registry.ollama.ai", "_under", "score_", "_"),
    ],
)
def test_parse_fills_defaults(text, host, namespace, model, tag):
    name = ModelName.parse(text)
    assert (name.host, name.namespace, name.model, name.tag) == (host, namespace, model, tag)
    assert is_valid_name(text)


def test_http_scheme_is_remembered():
    assert ModelName.parse("http://localhost:5000/ns/m").scheme == "http"
    assert ModelName.parse("ns/m").scheme == "https"


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":",
        "x:",
        "/x",
        "x/",
        "a//b",
        "a/b/c/d",
        "ns.dot/model",  # no dots in a namespace
        "model:ta:g/x",
        "mo:del/x:y",  # ":" only in a host
        "-model",
        ".model",
        "model:.tag",
        "..",
        "../etc/passwd",
        "a/../b",
        "host/../m",
        "m..x",
        "model name",
        "model@sha256-abc",
        "model+Q4_0",
        "ftp://host/ns/m",
        "m" * 81,
        "ns/" + "m" * 81,
        "model:" + "t" * 81,
        "h" * 351 + "/ns/m",
    ],
)
def test_invalid_names_are_refused(text):
    assert not is_valid_name(text)
    with pytest.raises(InvalidNameError) as info:
        ModelName.parse(text)
    assert info.value.message == "invalid model name"
    assert info.value.status == 400


def test_part_length_limits():
    assert is_valid_name("m" * 80)
    assert is_valid_name("model:" + "t" * 80)
    assert is_valid_name("h" * 350 + "/ns/m")


def test_non_string_is_invalid():
    assert not is_valid_name(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "display"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("registry.ollama.ai/library/llama3.2:1b", "llama3.2:1b"),
        ("REGISTRY.ollama.ai/Library/Llama3.2", "Llama3.2:latest"),
        ("user/m:tag", "user/m:tag"),
        ("registry.ollama.ai/user/m", "user/m:latest"),
        ("host:5000/ns/m:tag", "host:5000/ns/m:tag"),
        ("host:5000/library/m", "host:5000/library/m:latest"),
    ],
)
def test_display_is_the_shortest_form_with_tag(text, display):
    assert ModelName.parse(text).display == display
    assert str(ModelName.parse(text)) == display


def test_full_name():
    assert ModelName.parse("smollm").full == "registry.ollama.ai/library/smollm:latest"


def test_manifest_relpath():
    assert ModelName.parse("user/m:v1").manifest_relpath() == PurePosixPath("registry.ollama.ai/user/m/v1")
    assert ModelName.parse("host:5000/ns/m").manifest_relpath() == PurePosixPath("host:5000/ns/m/latest")


def test_casefold_key_ignores_case_only():
    assert ModelName.parse("Llama3.2:Latest").casefold_key() == ModelName.parse("llama3.2").casefold_key()
    assert ModelName.parse("llama3.2:1b").casefold_key() != ModelName.parse("llama3.2").casefold_key()


def test_stored_case_is_kept():
    name = ModelName.parse("MyUser/MyModel:V1")
    assert (name.namespace, name.model, name.tag) == ("MyUser", "MyModel", "V1")
