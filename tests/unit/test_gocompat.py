"""Go's formatters in Python (corral.gocompat): the bytes Go writes for the same values."""

import pytest

from corral.gocompat import encode, format_float, marshal, quote, type_name


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("plain", '"plain"'),
        ('a"b\\c', '"a\\"b\\\\c"'),
        ("\a\b\f\n\r\t\v", '"\\a\\b\\f\\n\\r\\t\\v"'),
        ("\x00\x7f", '"\\x00\\x7f"'),
        ("é\u200b\U000e0001", '"é\\u200b\\U000e0001"'),
    ],
)
def test_quote_is_strconv_quote(text, quoted):
    assert quote(text) == quoted


def test_quote_rune_escapes_the_single_quote_only():
    assert quote("'", "'") == "'\\''"
    assert quote('"', "'") == "'\"'"


@pytest.mark.parametrize(
    ("value", "v", "json"),
    [
        (1.0, "1", "1"),
        (0.1, "0.1", "0.1"),
        (-0.0, "-0", "-0"),
        (123456.0, "123456", "123456"),
        (1234567.0, "1.234567e+06", "1234567"),
        (1e-5, "1e-05", "0.00001"),
        (1e-7, "1e-07", "1e-7"),
        (1e21, "1e+21", "1e+21"),
        (1e20, "1e+20", "100000000000000000000"),
        (float("inf"), "+Inf", "+Inf"),
        (float("nan"), "NaN", "NaN"),
    ],
)
def test_format_float(value, v, json):
    assert format_float(value) == v
    assert format_float(value, json=True) == json


def test_type_name_of_decoded_and_template_values():
    assert [type_name(v) for v in (None, True, 1, 1.5, "s", [], {})] == [
        "<nil>",
        "bool",
        "float64",
        "float64",
        "string",
        "[]interface {}",
        "map[string]interface {}",
    ]
    assert type_name(1, decoded=False) == "int"
    assert type_name(object()) == "object"


def test_marshal_escapes_as_go_does():
    assert marshal({"a": "<b>&\u2028\n\x01", "n": [1, 2.5, None, True]}) == (
        '{"a":"\\u003cb\\u003e\\u0026\\u2028\\n\\u0001","n":[1,2.5,null,true]}'
    )
    # A lone surrogate is what invalid UTF-8 decodes to; Go writes the replacement character.
    assert marshal("\ud800") == '"\\ufffd"'
    assert marshal(b"\x00\xff") == '"AP8="'


def test_marshal_keeps_or_sorts_keys():
    assert marshal({"b": 1, "a": {"d": 1, "c": 2}}) == '{"b":1,"a":{"d":1,"c":2}}'
    assert marshal({"b": 1, "a": {"d": 1, "c": 2}}, sort_keys=True) == '{"a":{"c":2,"d":1},"b":1}'
    assert marshal({1: "x", 2.5: "z"}) == '{"1":"x","2.5":"z"}'


def test_marshal_refuses_what_go_refuses():
    with pytest.raises(ValueError, match=r"unsupported value: NaN"):
        marshal({"x": float("nan")})
    with pytest.raises(ValueError, match="unsupported type"):
        marshal(object.__new__(type("Slotted", (), {"__slots__": ()})))


def test_marshal_uses_json_hooks():
    class Raw:
        def __json__(self):
            return {"k": [1]}

    assert marshal([Raw()]) == '[{"k":[1]}]'


def test_encode_gives_ollamas_params_layer():
    # The params layer of a model created with PARAMETER temperature 0.7 and stop "<|end|>":
    # the bytes Go's json.Encoder writes for Ollama's map, and so the same digest.
    data = encode({"temperature": 0.7, "stop": ["<|end|>"]}, sort_keys=True)
    assert data == b'{"stop":["\\u003c|end|\\u003e"],"temperature":0.7}\n'
