"""The Dockerfile parser, variable substitution and the metadata instruction forms."""

from __future__ import annotations

import pytest

from agent.build import instructions as ins
from agent.build import variables
from agent.build.errors import BuildError
from agent.build.parser import parse, parse_line


def test_continuations_comments_and_blank_lines() -> None:
    text = (
        "# a comment\n"
        "FROM busybox AS base\n"
        "\n"
        "RUN echo a \\\n"
        "  # a comment inside the continuation\n"
        "\n"
        "  && echo b\n"
        "  # indented comment\n"
        'CMD ["sh", "-c", "echo hi"]\n'
    )
    dockerfile = parse(text)
    keywords = [i.keyword for i in dockerfile.instructions]
    assert keywords == ["FROM", "RUN", "CMD"]
    run = dockerfile.instructions[1]
    assert run.args == "echo a   && echo b"
    assert run.line == 4
    assert run.exec_form is None
    assert dockerfile.instructions[2].exec_form == ["sh", "-c", "echo hi"]


def test_escape_directive_and_syntax() -> None:
    text = "# syntax=docker/dockerfile:1\n# escape=`\nFROM busybox\nRUN echo a `\n  b\\c\n"
    dockerfile = parse(text)
    assert dockerfile.escape == "`"
    assert dockerfile.directives == {"syntax": "docker/dockerfile:1", "escape": "`"}
    assert dockerfile.instructions[1].args == "echo a   b\\c"


def test_directives_only_at_the_top() -> None:
    dockerfile = parse("FROM busybox\n# escape=`\nRUN echo a \\\n b\n")
    assert dockerfile.escape == "\\"
    assert dockerfile.instructions[1].args == "echo a  b"


def test_bad_escape_directive_and_unknown_instruction() -> None:
    with pytest.raises(BuildError, match="invalid escape token"):
        parse("# escape=x\nFROM busybox\n")
    with pytest.raises(BuildError, match="line 2: unknown instruction: FORM"):
        parse("FROM busybox\nFORM x\n")
    with pytest.raises(BuildError, match="cannot be empty"):
        parse("# only a comment\n\n")


def test_flags_and_invalid_json_falls_back_to_shell_form() -> None:
    copy = parse_line("COPY --from=build --chown=1:2 /a /b", 1)
    assert copy.flags == {"from": "build", "chown": "1:2"}
    assert copy.args == "/a /b"
    run = parse_line('RUN [ "echo", oops ]', 1)
    assert run.exec_form is None and run.args == '[ "echo", oops ]'
    with pytest.raises(BuildError, match="unknown flag: nope"):
        parse_line("COPY --nope=1 a b", 3)
    with pytest.raises(BuildError, match="BuildKit"):
        parse_line("RUN --mount=type=cache,target=/x true", 3)
    assert parse_line("from --platform=linux/amd64 busybox", 1).flag("platform") == "linux/amd64"


ENV = {"A": "alpha", "EMPTY": "", "SP": "x y"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$A", "alpha"),
        ("${A}-b", "alpha-b"),
        ("${MISSING:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${A:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${MISSING+alt}", ""),
        ("${MISSING:-${A}}", "alpha"),
        ("'$A'", "$A"),
        ('"$A b"', "alpha b"),
        ('"a\\"b"', 'a"b'),
        ('"a\\nb"', "a\\nb"),
        ("\\$A", "$A"),
        ("a\\ b", "a b"),
        ("$", "$"),
        ("$1", "$1"),
        ("cost: $ 5", "cost: $ 5"),
    ],
)
def test_substitution(text: str, expected: str) -> None:
    assert variables.substitute(text, ENV) == expected


def test_words_split_on_unquoted_whitespace_and_expansions() -> None:
    assert variables.words('a "b c" $SP \'d e\' ""', ENV) == ["a", "b c", "x", "y", "d e", ""]
    assert variables.words('"$SP"', ENV) == ["x y"]


def test_substitution_errors() -> None:
    with pytest.raises(BuildError, match="MISSING: must be set"):
        variables.substitute("${MISSING:?must be set}", ENV)
    with pytest.raises(BuildError, match="missing '}'"):
        variables.substitute("${A:-x", ENV)
    with pytest.raises(BuildError, match="double-quote"):
        variables.substitute('"open', ENV)
    with pytest.raises(BuildError, match="bad substitution"):
        variables.substitute("${}", ENV)


def test_backtick_escape() -> None:
    assert variables.substitute("a` b `$A", ENV, escape="`") == "a b $A"
    assert variables.substitute("C:\\path", ENV, escape="`") == "C:\\path"


def test_env_and_label_forms() -> None:
    env = {"V": "1"}
    pairs = ins.key_values(parse_line('ENV A=$V B="two words" C=${V}x', 1), env, "\\")
    assert pairs == [("A", "1"), ("B", "two words"), ("C", "1x")]
    assert ins.key_values(parse_line("ENV LEGACY some  value $V", 1), env, "\\") == [
        ("LEGACY", "some  value 1")
    ]
    with pytest.raises(BuildError, match="two arguments"):
        ins.key_values(parse_line("ENV ONLY", 1), env, "\\")
    with pytest.raises(BuildError, match="names can not be blank"):
        ins.key_values(parse_line("LABEL =x", 1), env, "\\")


def test_arg_expose_and_commands() -> None:
    assert ins.arg_declaration(parse_line("ARG A B=${X:-d}", 1), {}, "\\") == [
        ("A", None),
        ("B", "d"),
    ]
    assert ins.exposed_ports(["80", "53/udp", "7000-7001/TCP"]) == [
        "80/tcp",
        "53/udp",
        "7000/tcp",
        "7001/tcp",
    ]
    with pytest.raises(BuildError, match="invalid containerPort"):
        ins.exposed_ports(["http"])
    assert ins.command(parse_line("CMD echo hi", 1), None) == ["/bin/sh", "-c", "echo hi"]
    assert ins.command(parse_line("CMD echo hi", 1), ["/bin/bash", "-xc"]) == [
        "/bin/bash",
        "-xc",
        "echo hi",
    ]
    assert ins.command(parse_line('ENTRYPOINT ["top", "-b"]', 1), None) == ["top", "-b"]
    assert ins.go_list(["sh", "-c", 'echo "x"']) == '["sh" "-c" "echo \\"x\\""]'
    with pytest.raises(BuildError, match="JSON form"):
        ins.shell_form(parse_line("SHELL /bin/bash -c", 1))
