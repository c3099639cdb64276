"""The JSON Schema of the policy language (schema/claimgate-policy.schema.json), as an editor
uses it: every example names it with Taplo's `#:schema` directive and validates against it
(TOML read by Python's tomllib, validated by the independent `jsonschema` package), and the
schema refuses the mistakes the compiler refuses (unknown keys, wrong types, bad values).
Taplo itself (the TOML toolkit behind VS Code's "Even Better TOML") follows the directive: it
accepts every example and refuses a misspelt key. The shipped file equals what the source types
generate (`claimgate schema`, and a cargo test)."""

import json
import shutil
import subprocess
import tomllib

import jsonschema
import pytest

import harness as h

ROOT = h.ROOT
SCHEMA_PATH = ROOT / "schema" / "claimgate-policy.schema.json"
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
DIRECTIVE = "#:schema ../schema/claimgate-policy.schema.json"
TAPLO = ROOT / ".tools" / "venv" / "bin" / "taplo"

MINIMAL = """
version = 1
[issuers.kc]
issuer = "https://kc/realms/ml"
audiences = ["api"]
algorithms = ["RS256"]
[issuers.kc.jwks]
uri = "https://kc/realms/ml/certs"
refresh = "1h30m"
[[rules]]
name = "score"
paths = ["/score"]
allow = { issuers = ["kc"], roles_any = ["scorer"] }
[[rules]]
name = "health"
paths = ["/health"]
allow = "anyone"
"""


def schema():
    return json.loads(SCHEMA_PATH.read_text())


def validator():
    return jsonschema.Draft7Validator(schema())


def errors_of(text):
    return sorted(validator().iter_errors(tomllib.loads(text)), key=lambda e: list(e.absolute_path))


def test_the_schema_is_a_valid_draft_7_schema():
    jsonschema.Draft7Validator.check_schema(schema())
    assert schema()["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_the_shipped_schema_is_what_claimgate_prints():
    out = subprocess.run([h.CLAIMGATE, "schema"], check=True, capture_output=True, text=True).stdout
    assert out == SCHEMA_PATH.read_text()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_names_the_schema_and_validates(example):
    text = example.read_text()
    assert text.splitlines()[0] == DIRECTIVE
    assert (example.parent / DIRECTIVE.split()[1]).resolve() == SCHEMA_PATH.resolve()
    problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator().iter_errors(tomllib.loads(text))]
    assert problems == []


def test_a_minimal_policy_validates():
    assert errors_of(MINIMAL) == []


@pytest.mark.parametrize(
    "change, path",
    [
        # A misspelt key, at the top, in a rule, in an issuer, in a principal table.
        (("version = 1", "version = 1\nmdoe = \"audit\""), []),
        (("name = \"score\"", "nmae = \"score\""), ["rules", 0]),
        (("algorithms = [\"RS256\"]", "algorithms = [\"RS256\"]\nalgorithm = \"RS256\""), ["issuers", "kc"]),
        (("roles_any = [\"scorer\"]", "roles = [\"scorer\"]"), ["rules", 0, "allow"]),
        # A key written after a table header lands in that table.
        (("refresh = \"1h30m\"", "refresh = \"1h30m\"\nclock_skew = \"30s\""), ["issuers", "kc", "jwks"]),
        # Wrong types.
        (("issuer = \"https://kc/realms/ml\"", "issuer = 3"), ["issuers", "kc", "issuer"]),
        (("paths = [\"/score\"]", "paths = \"/score\""), ["rules", 0, "paths"]),
        (("version = 1", "version = \"1\""), ["version"]),
        # Bad values.
        (("version = 1", "version = 1\nmode = \"enforcee\""), ["mode"]),
        (("allow = \"anyone\"", "allow = \"everyone\""), ["rules", 1, "allow"]),
        (("refresh = \"1h30m\"", "refresh = \"ten minutes\""), ["issuers", "kc", "jwks", "refresh"]),
        # A name twice (the compiler refuses it as `duplicate`).
        (("version = 1", "version = 1\n[token]\nidentity_headers = [\"subject\", \"subject\"]"), ["token", "identity_headers"]),
    ],
)
def test_the_schema_refuses_wrong_policies(change, path):
    old, new = change
    assert old in MINIMAL
    errors = errors_of(MINIMAL.replace(old, new, 1))
    assert errors, f"the schema accepted {new!r}"
    # One place each (`nmae` is also a missing `name`, at the same place).
    assert {tuple(e.absolute_path) for e in errors} == {tuple(path)}, [e.message for e in errors]


def test_the_compiler_refuses_what_the_schema_refuses(tmp_path):
    """Editor and compiler agree: the mistakes above all fail `claimgate check`, in one run."""
    text = (
        MINIMAL.replace("name = \"score\"", "nmae = \"score\"")
        .replace("issuer = \"https://kc/realms/ml\"", "issuer = 3")
        .replace("allow = \"anyone\"", "allow = \"everyone\"")
        .replace("version = 1", "version = 1\nmode = \"enforcee\"")
    )
    assert len({tuple(e.absolute_path) for e in errors_of(text)}) == 4
    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    out = subprocess.run([h.CLAIMGATE, "check", "--json", policy], capture_output=True, text=True)
    assert out.returncode == 3, out.stderr
    report = json.loads(out.stdout)
    kinds = sorted(d["kind"] for d in report["diagnostics"])
    assert kinds == ["bad_principal", "bad_value", "unknown_field", "wrong_type"], report


def taplo_lint(*files, cwd):
    # --no-auto-config: only the `#:schema` directive selects the schema.
    return subprocess.run(
        [TAPLO, "lint", "--no-auto-config", *files], cwd=cwd, capture_output=True, text=True
    )


def test_taplo_follows_the_directive_of_every_example():
    out = taplo_lint(*[str(p.relative_to(ROOT)) for p in EXAMPLES], cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_taplo_refuses_a_misspelt_key_through_the_directive(tmp_path):
    (tmp_path / "schema").mkdir()
    shutil.copy(SCHEMA_PATH, tmp_path / "schema" / SCHEMA_PATH.name)
    (tmp_path / "examples").mkdir()
    example = ROOT / "examples" / "vault.toml"
    (tmp_path / "examples" / "ok.toml").write_text(example.read_text())
    (tmp_path / "examples" / "bad.toml").write_text(example.read_text().replace("version = 1", "version = 1\nmdoe = \"audit\"", 1))
    assert taplo_lint("examples/ok.toml", cwd=tmp_path).returncode == 0
    out = taplo_lint("examples/bad.toml", cwd=tmp_path)
    assert out.returncode != 0
    assert "'mdoe' was unexpected" in out.stderr


def _reference_section():
    readme = (ROOT / "README.md").read_text()
    head = "\n## Policy reference\n"
    assert head in readme, "README has no '## Policy reference' section"
    return readme.split(head, 1)[1].split("\n## ", 1)[0]


def _schema_names(schema):
    """Every field name and every word value (`const`) the schema defines."""
    fields, words = set(), set()

    def walk(node):
        if isinstance(node, dict):
            fields.update(node.get("properties", {}).keys())
            if isinstance(node.get("const"), str):
                words.add(node["const"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return fields, words


def test_the_readme_policy_reference_names_every_field_and_word():
    section = _reference_section()
    fields, words = _schema_names(json.loads(SCHEMA_PATH.read_text()))
    assert len(fields) > 40 and len(words) > 10, (len(fields), len(words))
    missing_fields = sorted(f for f in fields if f"`{f}`" not in section)
    missing_words = sorted(w for w in words if f'"{w}"' not in section)
    assert not missing_fields, f"fields missing from the README's policy reference: {missing_fields}"
    assert not missing_words, f"values missing from the README's policy reference: {missing_words}"
