"""Tests for corral.gotemplate, a Python port of Go's text/template.

Expected outputs are derived by hand from Go's semantics (and, for the model
templates, agree with the renderings in ollama/ollama's template testdata).
"""

import dataclasses
import datetime
import re
import time

import pytest

from corral.gocompat import marshal as go_json
from corral.gotemplate import MISSING, Template, TemplateError, TemplateExecError


def render(source, data=None, **funcs):
    return Template(source, funcs=funcs or None).render({} if data is None else data)


# ---------------------------------------------------------------------------
# Real model templates

LLAMA3 = """\
{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

You have tools: {{ range .Tools }}{{ json . }}
{{ end }}
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""

H = "<|start_header_id|>{}<|end_header_id|>"
EOT = "<|eot_id|>"


class JSONArgs(dict):
    """Like Ollama's ToolCallFunctionArguments: a map whose String() is JSON."""

    def __str__(self):
        return go_json(self)


def test_llama3_plain_chat():
    data = {
        "System": "You are helpful.",
        "Messages": [
            {"Role": "user", "Content": "Hi"},
            {"Role": "assistant", "Content": "Hello!"},
            {"Role": "user", "Content": "Bye"},
        ],
    }
    assert Template(LLAMA3).render(data) == (
        H.format("system")
        + "\n\nYou are helpful."
        + EOT
        + H.format("user")
        + "\n\nHi"
        + EOT
        + H.format("assistant")
        + "\n\nHello!"
        + EOT
        + H.format("user")
        + "\n\nBye"
        + EOT
        + H.format("assistant")
        + "\n\n"
    )


def test_llama3_without_system_omits_system_block():
    data = {
        "System": "",
        "Tools": None,
        "Messages": [{"Role": "user", "Content": "Hi"}],
    }
    assert Template(LLAMA3).render(data) == (
        H.format("user") + "\n\nHi" + EOT + H.format("assistant") + "\n\n"
    )


def test_llama3_tools_tool_calls_and_tool_results():
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get <weather> & more",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    data = {
        "System": "S",
        "Tools": [tool],
        "Messages": [
            {"Role": "user", "Content": "Weather in Paris?"},
            {
                "Role": "assistant",
                "Content": "",
                "ToolCalls": [
                    {
                        "Function": {
                            "Name": "get_weather",
                            "Arguments": JSONArgs(city="Paris", days=2),
                        }
                    }
                ],
            },
            {"Role": "tool", "Content": "sunny"},
        ],
    }
    tool_json = (
        '{"type":"function","function":{"name":"get_weather",'
        '"description":"Get \\u003cweather\\u003e \\u0026 more",'
        '"parameters":{"type":"object","properties":{"city":{"type":"string"}},'
        '"required":["city"]}}}'
    )
    assert Template(LLAMA3).render(data) == (
        H.format("system")
        + "\n\nS\n\nYou have tools: "
        + tool_json
        + "\n"
        + EOT
        + H.format("user")
        + "\n\nWeather in Paris?"
        + EOT
        + H.format("assistant")
        + '\n{"name": "get_weather", "parameters": {"city":"Paris","days":2}}'
        + EOT
        + H.format("ipython")
        + "\n\nsunny"
        + EOT
        + H.format("assistant")
        + "\n\n"
    )


def test_plain_dict_prints_like_a_go_map():
    # Without a Stringer, Go prints a map[string]any as map[k:v] with sorted keys.
    out = render(
        "{{ .Function.Arguments }}", {"Function": {"Arguments": {"z": 1, "a": "x y"}}}
    )
    assert out == "map[a:x y z:1]"


def test_llama3_variables():
    assert Template(LLAMA3).variables() == {"System", "Tools", "Messages"}


CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)
LEGACY = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>"
)


def test_chatml_messages():
    data = {
        "Messages": [
            {"Role": "system", "Content": "S"},
            {"Role": "user", "Content": "Hi"},
        ]
    }
    assert Template(CHATML).render(data) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert Template(CHATML).render({"Messages": []}) == "<|im_start|>assistant\n"


def test_legacy_prompt_response():
    t = Template(LEGACY)
    assert t.render({"System": "S", "Prompt": "P", "Response": ""}) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nP<|im_end|>\n"
        "<|im_start|>assistant\n<|im_end|>"
    )
    # Missing keys are zero values: falsy, and render as "" rather than <no value>.
    assert t.render({"Prompt": "P"}) == (
        "<|im_start|>user\nP<|im_end|>\n<|im_start|>assistant\n<|im_end|>"
    )
    assert t.render({"Prompt": "P", "Response": "R"}).endswith("assistant\nR<|im_end|>")
    assert t.variables() == {"System", "Prompt", "Response"}


FIM = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>{{- else }}{{ .Prompt }}{{- end }}"


def test_fill_in_the_middle():
    t = Template(FIM)
    assert (
        t.render({"Prompt": "def f(", "Suffix": "return x"})
        == "<PRE> def f( <SUF>return x <MID>"
    )
    assert t.render({"Prompt": "def f(", "Suffix": ""}) == "def f("
    assert t.render({"Prompt": "def f("}) == "def f("
    assert t.variables() == {"Suffix", "Prompt"}


def test_command_r_style_property_loop_and_continue():
    source = (
        "{{- range .Tools }}def {{ .Function.Name }}("
        "{{- range $name, $p := .Function.Parameters.Properties }}{{ $name }}: {{ $p.Type }}, {{ end }})\n"
        "{{- end }}"
        '{{- range .Messages }}{{- if eq .Role "system" }}{{- continue }}{{- end }}[{{ .Content }}]{{- end }}'
    )
    data = {
        "Tools": [
            {
                "Function": {
                    "Name": "f",
                    "Parameters": {
                        "Properties": {"b": {"Type": "int"}, "a": {"Type": "string"}}
                    },
                }
            }
        ],
        "Messages": [
            {"Role": "system", "Content": "s"},
            {"Role": "user", "Content": "u"},
        ],
    }
    assert render(source, data) == "def f(a: string, b: int, )[u]"


# ---------------------------------------------------------------------------
# Text, trimming and comments


def test_trim_markers_remove_all_adjacent_whitespace():
    assert render("a  \n\t{{- 1 -}}\n\n b") == "a1b"
    assert render("a {{- 1 }} b") == "a1 b"
    assert render("a {{ 1 -}} \n b") == "a 1b"
    # "-" without a following space is a negative number, not a trim marker.
    assert render("a {{-3}} b") == "a -3 b"


def test_comments():
    assert render("a {{/* a comment */}} b") == "a  b"
    assert render("a \n{{- /* trimmed */ -}}\n b") == "ab"
    assert render("x{{/* multi\nline\n*/}}y") == "xy"


def test_text_without_actions_and_empty_template():
    assert render("plain text\n") == "plain text\n"
    assert render("") == ""


# ---------------------------------------------------------------------------
# Literals and printing


def test_literals():
    assert render('{{ "a\\tb\\u00e9\\x41\\101" }}') == "a\tbéAA"
    assert render("{{ `raw\\n` }}") == "raw\\n"
    assert (
        render("{{ 42 }} {{ -7 }} {{ 0x1F }} {{ 0o17 }} {{ 017 }} {{ 1_000 }}")
        == "42 -7 31 15 15 1000"
    )
    assert render("{{ 'a' }} {{ '\\n' }}") == "97 10"
    assert render("{{ true }} {{ false }}") == "true false"


def test_float_printing_matches_go_percent_v():
    assert render(
        "{{ 1.5 }} {{ 2.0 }} {{ 1e6 }} {{ 1e3 }} {{ 0.0001 }} {{ 0.00001 }}"
    ) == ("1.5 2 1e+06 1000 0.0001 1e-05")
    data = {"a": 123456.0, "b": 1234567.0, "c": 1e21, "d": -0.5, "e": 0.1 + 0.2}
    assert render("{{ .a }} {{ .b }} {{ .c }} {{ .d }} {{ .e }}", data) == (
        "123456 1.234567e+06 1e+21 -0.5 0.30000000000000004"
    )


def test_printing_values():
    data = {
        "L": [1, "a", True, None, 2.5],
        "M": {"b": [1, 2], "a": {"x": 1}},
        "N": None,
        "E": [],
        "D": {},
    }
    assert render("{{ .L }}|{{ .M }}|{{ .E }}|{{ .D }}", data) == (
        "[1 a true <nil> 2.5]|map[a:map[x:1] b:[1 2]]|[]|map[]"
    )
    # A nil interface prints as <no value>; a missing field as "".
    assert (
        render("[{{ .N }}][{{ .Missing }}][{{ .Missing.Deeper }}]", data)
        == "[<no value>][][]"
    )


def test_stringer_and_object_fields():
    @dataclasses.dataclass
    class Message:
        Role: str
        Content: str

        def Greet(self, name):
            return f"hi {name} from {self.Role}"

    class Celsius:
        def __init__(self, v):
            self.v = v

        def __str__(self):
            return f"{self.v}°C"

    data = {"M": Message("user", "hello"), "T": Celsius(21)}
    assert render(
        '{{ .M.Role }}: {{ .M.Content }} / {{ .M.Greet "bob" }} / {{ .T }}', data
    ) == ("user: hello / hi bob from user / 21°C")
    assert render("{{ .Role }}-{{ .Nope }}", Message("a", "b")) == "a-"
    with pytest.raises(TemplateExecError, match="unexported"):
        render("{{ .M.__class__ }}", data)


# ---------------------------------------------------------------------------
# Control structures and variables


def test_if_else_if_else():
    t = Template(
        "{{ if eq .N 1 }}one{{ else if eq .N 2 }}two{{ else if gt .N 10 }}big{{ else }}other{{ end }}"
    )
    assert [t.render({"N": n}) for n in (1, 2, 11, 5)] == ["one", "two", "big", "other"]


def test_truthiness():
    t = Template("{{ if . }}T{{ else }}F{{ end }}")
    falsy = [False, 0, 0.0, "", [], {}, None]
    truthy = [True, 1, -1, 0.5, "x", [0], {"a": 0}, object()]
    assert [t.render(v) for v in falsy] == ["F"] * len(falsy)
    assert [t.render(v) for v in truthy] == ["T"] * len(truthy)


def test_with_else_and_else_with():
    t = Template(
        "{{ with .A }}a={{ . }}{{ else with .B }}b={{ . }}{{ else }}none{{ end }}"
    )
    assert t.render({"A": "x"}) == "a=x"
    assert t.render({"B": "y"}) == "b=y"
    assert t.render({"A": "", "B": 0}) == "none"
    assert render("{{ with $x := .A }}{{ $x }}{{ . }}{{ end }}", {"A": 5}) == "55"


def test_range_forms():
    data = {"L": ["a", "b"], "M": {"b": 2, "a": 1, "c": 3}, "E": []}
    assert render("{{ range .L }}<{{ . }}>{{ end }}", data) == "<a><b>"
    assert render("{{ range $e := .L }}{{ $e }}{{ end }}", data) == "ab"
    assert (
        render("{{ range $i, $e := .L }}{{ $i }}={{ $e }},{{ end }}", data)
        == "0=a,1=b,"
    )
    assert (
        render("{{ range $k, $v := .M }}{{ $k }}={{ $v }},{{ end }}", data)
        == "a=1,b=2,c=3,"
    )
    assert render("{{ range .E }}x{{ else }}empty{{ end }}", data) == "empty"
    assert render("{{ range .Missing }}x{{ else }}empty{{ end }}", data) == "empty"
    assert render("{{ range 3 }}{{ . }}{{ end }}", data) == "012"
    assert render("{{ range $i, $e := .L }}{{ $.L }}{{ end }}", data) == "[a b][a b]"


def test_nested_range_with_break_and_continue():
    source = (
        "{{ range $i, $row := .Rows }}{{ if eq $i 2 }}{{ break }}{{ end }}"
        "{{ range $row }}{{ if eq . 0 }}{{ continue }}{{ end }}{{ if eq . 9 }}{{ break }}{{ end }}{{ . }}{{ end }};"
        "{{ else }}never{{ end }}"
    )
    data = {"Rows": [[1, 0, 2], [0, 3, 9, 4], [5], [6]]}
    assert render(source, data) == "12;3;"


def test_variable_scoping_and_assignment():
    data = {"L": [1, 2]}
    # A variable declared in a range body shadows the outer one only inside it.
    assert (
        render(
            '{{ $x := "outer" }}{{ range .L }}{{ $x := . }}{{ $x }}{{ end }}{{ $x }}',
            data,
        )
        == "12outer"
    )
    # Assignment updates the existing variable, even from inside a range.
    assert (
        render("{{ $x := 0 }}{{ range .L }}{{ $x = . }}{{ end }}{{ $x }}", data) == "2"
    )
    # $ is always the data.
    assert (
        render("{{ range .L }}{{ $.Name }}{{ end }}", {"L": [1, 2], "Name": "n"})
        == "nn"
    )
    # A declaration prints nothing.
    assert render("{{ $x := 5 }}[{{ $x }}]") == "[5]"


def test_variable_declared_in_if_is_out_of_scope_after_end():
    with pytest.raises(TemplateError, match='undefined variable "\\$y"'):
        Template("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}")


def test_define_template_and_block():
    source = (
        '{{ define "T" }}[{{ .Name }}|{{ $.Name }}]{{ end }}'
        '{{ template "T" .User }}{{ template "T" }}'
        '{{ block "B" . }}default {{ .X }}{{ end }}'
    )
    assert render(source, {"User": {"Name": "bob"}, "X": 1}) == "[bob|bob][|]default 1"


def test_template_does_not_inherit_variables():
    with pytest.raises(TemplateError, match="undefined variable"):
        Template('{{ $x := 1 }}{{ define "T" }}{{ $x }}{{ end }}')


def test_recursive_template():
    source = '{{ define "tree" }}{{ .N }}{{ range .C }}({{ template "tree" . }}){{ end }}{{ end }}{{ template "tree" . }}'
    data = {"N": 1, "C": [{"N": 2, "C": [{"N": 3}]}, {"N": 4}]}
    assert render(source, data) == "1(2(3))(4)"


def test_redefining_an_empty_template_is_allowed_but_not_a_full_one():
    assert (
        render('{{ define "a" }} {{ end }}{{ define "a" }}x{{ end }}{{ template "a" }}')
        == "x"
    )
    with pytest.raises(TemplateError, match='multiple definition of template "a"'):
        Template('{{ define "a" }}x{{ end }}{{ define "a" }}y{{ end }}')


# ---------------------------------------------------------------------------
# Functions


def test_and_or_not_short_circuit_and_return_operands():
    data = {"L": [1]}
    assert (
        render('{{ and 1 0 2 }}|{{ and 1 2 }}|{{ or 0 "" "x" }}|{{ or 0 "" }}', data)
        == "0|2|x|"
    )
    # The unevaluated operand would fail: index out of range.
    assert render("{{ or 1 (index .L 99) }}|{{ and 0 (index .L 99) }}", data) == "1|0"
    assert render("{{ not .Missing }} {{ not 1 }}", data) == "true false"
    assert render("{{ if and .A (not .B) }}yes{{ end }}", {"A": 1, "B": ""}) == "yes"


def test_comparisons():
    assert (
        render('{{ eq 2 1 2 3 }} {{ eq 2 1 3 }} {{ eq "a" "a" }} {{ ne 1 2 }}')
        == "true false true true"
    )
    assert (
        render('{{ lt 1 2 }} {{ le 2 2 }} {{ gt 1.5 2.5 }} {{ ge "b" "a" }}')
        == "true true false true"
    )
    assert render('{{ eq .Missing "x" }} {{ eq .N nil }}', {"N": None}) == "false true"
    with pytest.raises(TemplateExecError, match="incompatible types for comparison"):
        render('{{ eq 1 "1" }}')
    with pytest.raises(TemplateExecError, match="incompatible types for comparison"):
        render("{{ lt 1 1.5 }}")


def test_len_index_slice():
    data = {"M": {"a": 1, "b": {"c": [10, 20]}}, "L": ["x", "y", "z"], "S": "héllo"}
    assert (
        render("{{ len .M }} {{ len .L }} {{ len .S }} {{ len .Missing }}", data)
        == "2 3 6 0"
    )
    assert render(
        '{{ index .M "a" }} {{ index .L 1 }} {{ index .M "b" "c" 1 }} [{{ index .M "zz" }}]',
        data,
    ) == ("1 y 20 []")
    assert render('{{ index "abc" 1 }}') == "98"  # a byte, as in Go
    assert (
        render('{{ slice "hello" 1 3 }} {{ slice "hello" 2 }} {{ slice "hello" }}')
        == "el llo hello"
    )
    assert (
        render("{{ slice .L 1 }} {{ slice .L 0 1 }} {{ slice .L 1 2 3 }}", data)
        == "[y z] [x] [y]"
    )
    with pytest.raises(
        TemplateExecError, match="error calling index: index out of range: 5"
    ):
        render("{{ index .L 5 }}", data)
    with pytest.raises(TemplateExecError, match="invalid slice index: 2 > 1"):
        render("{{ slice .L 2 1 }}", data)


def test_print_printf_println():
    assert render('{{ print "a" 1 2 "b" }}') == "a1 2b"
    assert render('{{ println 1 "a" }}') == "1 a\n"
    assert render("{{ print nil }}") == "<nil>"
    assert render('{{ printf "%q" "hi\\n\\"there\\"" }}') == '"hi\\n\\"there\\""'
    assert render('{{ printf "%d-%s-%v-%t" 3 "x" 1.5 true }}') == "3-x-1.5-true"
    assert render(
        '{{ printf "%5.2f|%-4s|%04d|%x|%X|%+d|%e" 3.14159 "ab" 42 255 "hi" 5 1234.5 }}'
    ) == (" 3.14|ab  |0042|ff|6869|+5|1.234500e+03")
    assert render('{{ printf "100%%" }}') == "100%"
    assert render('{{ printf "%d" }}|{{ printf "%d" "x" }}|{{ printf "a" 1 }}') == (
        "%!d(MISSING)|%!d(string=x)|a%!(EXTRA int=1)"
    )
    assert (
        render('{{ printf "%v %v" .L .M }}', {"L": [1, "a"], "M": {"b": 2, "a": 1}})
        == "[1 a] map[a:1 b:2]"
    )
    assert render('{{ printf "%q" .L }}', {"L": ["a", "b"]}) == '["a" "b"]'


def test_pipelines_and_parentheses():
    data = {"X": "abc", "L": [{"Name": "first"}]}
    assert render('{{ .X | printf "%s!" }}', data) == "abc!"
    assert render('{{ "abc" | len }}', data) == "3"
    assert render('{{ .X | len | printf "%03d" }}', data) == "003"
    assert render("{{ (index .L 0).Name }}", data) == "first"
    assert render('{{ printf "%s-%s" (print "a") (slice .X 1) }}', data) == "a-bc"


def test_escaping_functions():
    assert (
        render("{{ html .S }}", {"S": "<a href='x'>&\""})
        == "&lt;a href=&#39;x&#39;&gt;&amp;&#34;"
    )
    assert (
        render("{{ js .S }}", {"S": "a'b\"<>&=\n"})
        == "a\\'b\\\"\\u003C\\u003E\\u0026\\u003D\\u000A"
    )
    assert render("{{ urlquery .S }}", {"S": "a b&c=d/é~"}) == "a+b%26c%3Dd%2F%C3%A9~"
    assert render("{{ html .N }}", {"N": None}) == "&lt;no value&gt;"


def test_json_function():
    data = {
        "V": {
            "b": [1, 2.5, None, True, False],
            "a": '<&>\u2028\n\t"\\',
            "f": 100.0,
            "e": 1e21,
            "s": 1e-7,
        },
        "NaN": float("nan"),
    }
    assert render("{{ json .V }}", data) == (
        '{"b":[1,2.5,null,true,false],"a":"\\u003c\\u0026\\u003e\\u2028\\n\\t\\"\\\\",'
        '"f":100,"e":1e+21,"s":1e-7}'
    )
    assert (
        render('{{ json .Missing }}|{{ json .NaN }}|{{ json "é" }}', data)
        == 'null||"é"'
    )

    @dataclasses.dataclass
    class Tool:
        Type: str

        def __json__(self):
            return {"type": self.Type}

    assert render("{{ json . }}", [Tool("function")]) == '[{"type":"function"}]'


def test_current_date():
    before = datetime.date.today().strftime("%Y-%m-%d")
    out = render("{{ currentDate }}")
    after = datetime.date.today().strftime("%Y-%m-%d")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", out)
    assert out in (before, after)


def test_custom_funcs():
    t = Template(
        "{{ shout .X }} {{ .X | shout }} {{ shout .Missing }}",
        funcs={"shout": lambda s: f"{s}!".upper()},
    )
    # Custom functions receive None, not the MISSING sentinel.
    assert t.render({"X": "hey"}) == "HEY! HEY! NONE!"

    def boom(x):
        raise RuntimeError("kaput")

    with pytest.raises(TemplateExecError, match="error calling boom: kaput"):
        Template("{{ boom 1 }}", funcs={"boom": boom}).render({})
    with pytest.raises(
        TemplateExecError, match="wrong number of args for len: want 1 got 2"
    ):
        render("{{ len 1 2 }}")
    # funcs may replace a builtin
    assert (
        Template("{{ len .X }}", funcs={"len": lambda x: 99}).render({"X": "a"}) == "99"
    )


# ---------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ if }}", "template: :1: missing value for if"),
        ("{{ range .X }}", "template: :1: unexpected EOF"),
        ("a\n{{ range .X }}\nb", "template: :3: unexpected EOF"),
        ("{{ .X } }}", 'template: :1: unexpected "}" in operand'),
        ("{{ end }}", "template: :1: unexpected {{end}}"),
        ("{{ else }}", "template: :1: unexpected {{else}}"),
        ("{{ }}", "template: :1: missing value for command"),
        ("{{ foo }}", 'template: :1: function "foo" not defined'),
        ("{{ $x }}", 'template: :1: undefined variable "$x"'),
        ("{{ break }}", "template: :1: {{break}} outside {{range}}"),
        (
            "{{ range .L }}{{ else }}{{ continue }}{{ end }}",
            "template: :1: {{continue}} outside {{range}}",
        ),
        ("{{ .X", "unclosed action"),
        ('{{ "abc }}', "unterminated quoted string"),
        ("{{ (.X }}", "unclosed left paren"),
        ("{{/* x }}", "unclosed comment"),
        ("{{ .X | 1 }}", "non executable command in pipeline stage 2"),
        ("{{ if .X }}{{ else }}{{ else }}{{ end }}", "expected end; found {{else}}"),
        ("{{ template .X }}", "unexpected"),
        ("{{ $a, $b := .X }}", "too many declarations in command"),
        ("{{ 1.X }}", "bad number syntax"),
        ("{{ 1 . }}", ""),  # parses; fails at run time (see below)
    ],
)
def test_parse_errors(source, message):
    if source == "{{ 1 . }}":
        with pytest.raises(
            TemplateExecError, match="can't give argument to non-function 1"
        ):
            Template(source).render({})
        return
    with pytest.raises(TemplateError) as info:
        Template(source)
    assert not isinstance(info.value, TemplateExecError)
    assert message in str(info.value)


def test_exec_errors_have_go_style_context():
    with pytest.raises(TemplateExecError) as info:
        render("line1\n  {{ index .L 5 }}", {"L": [1]})
    assert str(info.value) == (
        'template: :2:5: executing "" at <index .L 5>: error calling index: index out of range: 5'
    )
    with pytest.raises(TemplateExecError, match='template "nope" not defined'):
        render('{{ template "nope" }}')
    with pytest.raises(
        TemplateExecError, match="can't evaluate field Foo in type string"
    ):
        render("{{ .S.Foo }}", {"S": "str"})
    with pytest.raises(TemplateExecError, match="range can't iterate over true"):
        render("{{ range .B }}{{ end }}", {"B": True})
    with pytest.raises(
        TemplateExecError, match="Foo is not a method but has arguments"
    ):
        render("{{ .Foo 1 }}", {"Foo": 1})
    with pytest.raises(TemplateExecError, match="exceeded maximum template depth"):
        render('{{ define "r" }}{{ template "r" . }}{{ end }}{{ template "r" . }}')
    assert issubclass(TemplateExecError, TemplateError) and issubclass(
        TemplateError, ValueError
    )


# ---------------------------------------------------------------------------
# variables()


def test_variables_are_top_level_fields_only():
    t = Template(
        "{{ range .Messages }}{{ .Content }}{{ $.Tools }}{{ with .Images }}{{ .X }}{{ end }}{{ end }}"
    )
    assert t.variables() == {"Messages", "Tools"}
    t = Template(
        '{{ define "sys" }}{{ .System }}{{ end }}{{ $r := . }}{{ with .Messages }}{{ $r.Suffix }}{{ end }}'
        '{{ template "sys" . }}{{ index . "Think" }}'
    )
    assert t.variables() == {"System", "Messages", "Suffix", "Think"}
    assert Template("static").variables() == set()


def test_missing_is_falsy_sentinel():
    assert not MISSING
    assert repr(MISSING) == "MISSING"


# ---------------------------------------------------------------------------
# Performance


def test_render_twenty_message_chat_is_fast():
    t = Template(LLAMA3)
    data = {
        "System": "You are a helpful assistant.",
        "Messages": [
            {
                "Role": "user" if i % 2 == 0 else "assistant",
                "Content": f"message number {i}",
            }
            for i in range(20)
        ],
    }
    t.render(data)
    runs = 50
    start = time.perf_counter()
    for _ in range(runs):
        out = t.render(data)
    per_render = (time.perf_counter() - start) / runs
    assert out.count(EOT) == 20  # the final assistant turn is left open
    assert per_render < 0.005, f"{per_render * 1000:.2f} ms per render"
