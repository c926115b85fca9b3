"""Modelfiles: Ollama's grammar and messages, the JSON create form, and `ollama show` output."""

import logging

import pytest

from corral.gocompat import quote as go_quote
from corral.store.modelfile import (
    Command,
    ModelfileError,
    blob_reference,
    format_modelfile,
    format_parameters,
    go_format,
    parse_modelfile,
)

HEX = "a" * 64

FULL = '''# A comment line
FROM llama3.2
PARAMETER temperature 0.7
PARAMETER num_ctx 4096
PARAMETER stop <|im_start|>
PARAMETER stop "<|im_end|>"
TEMPLATE """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}<|im_start|>user
{{ .Prompt }}<|im_end|>
"""
SYSTEM You are Mario from   Super Mario Bros.
MESSAGE user Is Toronto in Canada?
MESSAGE assistant "yes"
LICENSE """MIT
with "quotes" inside"""
LICENSE Apache-2.0
'''


def test_full_modelfile_to_create_request():
    request = parse_modelfile(FULL).to_create_request()
    assert request == {
        "from": "llama3.2",
        "parameters": {"temperature": 0.7, "num_ctx": 4096, "stop": ["<|im_start|>", "<|im_end|>"]},
        "template": (
            "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
            "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n"
        ),
        "system": "You are Mario from   Super Mario Bros.",
        "messages": [{"role": "user", "content": "Is Toronto in Canada?"}, {"role": "assistant", "content": "yes"}],
        "license": ['MIT\nwith "quotes" inside', "Apache-2.0"],
    }


def test_commands_are_stored_as_ollama_stores_them():
    commands = parse_modelfile("FROM m\nPARAMETER top_k 5\nMESSAGE user hi").commands
    assert commands == [Command("model", "m"), Command("top_k", "5"), Command("message", "user: hi")]


def test_instructions_are_case_insensitive_and_bom_crlf_tolerated():
    text = "\ufefffrom llama3.2\r\nsystem be brief\r\nParameter temperature 1\r\n"
    assert parse_modelfile(text).to_create_request() == {
        "from": "llama3.2",
        "system": "be brief",
        "parameters": {"temperature": 1.0},
    }


def test_non_printable_characters_outside_quotes_are_dropped():
    assert parse_modelfile("FROM m\nSYSTEM a\x01b\u200bc").to_create_request()["system"] == "abc"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no FROM line"),
        ("# only a comment\n", "no FROM line"),
        ("SYSTEM hi\n", "no FROM line"),
        (
            "FROM m\nBOGUS x\n",
            (
                '(line 2): command must be one of "from", "license", "template", "system", "adapter", "draft", '
                '"renderer", "parser", "parameter", "message", or "requires"'
            ),
        ),
        (
            "FROM\n",
            (
                '(line 2): command must be one of "from", "license", "template", "system", "adapter", "draft", '
                '"renderer", "parser", "parameter", "message", or "requires"'
            ),
        ),
        ("FROM m\nMESSAGE tool hi\n", '(line 2): message role must be one of "system", "user", or "assistant"'),
        ('FROM m\nTEMPLATE """never closed\n', "unexpected EOF"),
        ('FROM m\nSYSTEM "never closed', "unexpected EOF"),
        ("FROM m\nSYSTEM", "unexpected EOF"),
        ("FROM m\nPARAMETER num-ctx 1\n", "unexpected EOF: num"),
        ("FROM m\nPARAMETER nonsense 1\n", "unknown parameter 'nonsense'"),
        ("FROM m\nPARAMETER Temperature 1\n", "unknown parameter 'Temperature'"),
        ("FROM m\nPARAMETER num_ctx lots\n", "invalid int value [lots]"),
        ("FROM m\nPARAMETER temperature hot\n", "invalid float value [hot]"),
        ("FROM m\nPARAMETER use_mmap maybe\n", "invalid bool value [maybe]"),
    ],
)
def test_errors_carry_ollamas_messages(text, message):
    with pytest.raises(ModelfileError) as info:
        parse_modelfile(text)
    assert info.value.message == message
    assert info.value.status == 400


def test_deprecated_parameters_are_dropped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        modelfile = parse_modelfile("FROM m\nPARAMETER mirostat 1\nPARAMETER use_mlock true\nPARAMETER top_k 3")
    assert modelfile.to_create_request()["parameters"] == {"top_k": 3}
    assert "mirostat is deprecated" in caplog.text


@pytest.mark.parametrize(
    ("from_line", "expected"),
    [
        (f"@sha256:{HEX}", {"files": {"model.gguf": f"sha256:{HEX}"}}),
        (f"sha256:{HEX}", {"files": {"model.gguf": f"sha256:{HEX}"}}),
        (f"@sha256-{HEX.upper()}", {"files": {"model.gguf": f"sha256:{HEX}"}}),
        ("llama3.2:1b", {"from": "llama3.2:1b"}),
        ("./model.gguf", {"from": "./model.gguf"}),
    ],
)
def test_from_blob_references_become_files(from_line, expected):
    assert parse_modelfile(f"FROM {from_line}").to_create_request() == expected


def test_adapter_blob_reference_and_second_from_blob():
    other = "b" * 64
    request = parse_modelfile(f"FROM @sha256:{HEX}\nFROM @sha256:{other}\nADAPTER @sha256:{other}").to_create_request()
    assert request["files"] == {"model.gguf": f"sha256:{HEX}", "model-2.gguf": f"sha256:{other}"}
    assert request["adapters"] == {"adapter.gguf": f"sha256:{other}"}


def test_adapter_path_cannot_be_read_by_the_server():
    with pytest.raises(ModelfileError):
        parse_modelfile("FROM m\nADAPTER ./lora.gguf").to_create_request()


def test_renderer_parser_requires():
    request = parse_modelfile("FROM m\nRENDERER qwen3\nPARSER qwen3\nREQUIRES v0.12.0").to_create_request()
    assert request == {"from": "m", "renderer": "qwen3", "parser": "qwen3", "requires": "0.12.0"}
    with pytest.raises(ModelfileError, match="semver"):
        parse_modelfile("FROM m\nREQUIRES soon").to_create_request()


def test_blob_reference():
    assert blob_reference(f"@sha256:{HEX}") == f"sha256:{HEX}"
    assert blob_reference("llama3") is None
    assert blob_reference("sha256:abc") is None


@pytest.mark.parametrize(
    ("command", "line"),
    [
        (Command("model", "/blobs/sha256-x"), "FROM /blobs/sha256-x"),
        (Command("system", "plain"), "SYSTEM plain"),
        (Command("system", " edge"), 'SYSTEM " edge"'),
        (Command("template", "a\nb"), 'TEMPLATE "a\nb"'),
        (Command("template", 'a\n"b"'), 'TEMPLATE """a\n"b""""'),
        (Command("stop", "<|eot_id|>"), "PARAMETER stop <|eot_id|>"),
        (Command("message", "user: hi there"), "MESSAGE user hi there"),
        (Command("license", "MIT"), "LICENSE MIT"),
    ],
)
def test_command_lines(command, line):
    assert str(command) == line


def test_format_modelfile_as_ollama_show_prints_it():
    text = format_modelfile(
        from_="/models/blobs/sha256-abc",
        template="{{ .Prompt }}",
        system="Be brief.",
        parameters={"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2, "num_ctx": 4096},
        messages=[{"role": "user", "content": "hi"}],
        license=["MIT"],
        adapters=["/models/blobs/sha256-lora"],
        short_name="smol:latest",
    )
    assert text == (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        "# FROM smol:latest\n"
        "\n"
        "FROM /models/blobs/sha256-abc\n"
        "ADAPTER /models/blobs/sha256-lora\n"
        "TEMPLATE {{ .Prompt }}\n"
        "SYSTEM Be brief.\n"
        "PARAMETER stop <|im_start|>\n"
        "PARAMETER stop <|im_end|>\n"
        "PARAMETER temperature 0.2\n"
        "PARAMETER num_ctx 4096\n"
        "LICENSE MIT\n"
        "MESSAGE user hi\n"
    )


def test_show_modelfile_parses_back_to_the_same_model():
    template = '{{ if .System }}{{ .System }}\n{{ end }}"{{ .Prompt }}"'
    text = format_modelfile(
        from_="llama3.2",
        template=template,
        system=" padded system ",
        parameters={"stop": ["a", "b"], "top_p": 0.5, "use_mmap": True},
        messages=[{"role": "assistant", "content": "multi\nline"}],
        license=["L1", "L2\nmore"],
    )
    assert parse_modelfile(text).to_create_request() == {
        "from": "llama3.2",
        "template": template,
        "system": " padded system ",
        "parameters": {"stop": ["a", "b"], "top_p": 0.5, "use_mmap": True},
        "messages": [{"role": "assistant", "content": "multi\nline"}],
        "license": ["L1", "L2\nmore"],
    }


def test_format_parameters_is_gos_percent_30s_percent_hash_v():
    text = format_parameters(
        {"stop": ["<|eot_id|>", 'say "hi"\n'], "temperature": 0.7, "num_ctx": 4096, "use_mmap": False}
    )
    assert text.splitlines() == [
        'stop                           "<|eot_id|>"',
        'stop                           "say \\"hi\\"\\n"',
        "temperature                    0.7",
        "num_ctx                        4096",
        "use_mmap                       false",
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.7, "0.7"),
        (1.0, "1"),
        (4096, "4096"),
        (100000, "100000"),
        (1000000, "1e+06"),
        (1234567, "1.234567e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-2.5, "-2.5"),
        (0, "0"),
        (True, "true"),
        ("text", "text"),
    ],
)
def test_go_format(value, text):
    assert go_format(value) == text


def test_go_quote():
    assert go_quote('a"b\\c\n\t\x00é\u200b') == '"a\\"b\\\\c\\n\\t\\x00é\\u200b"'
