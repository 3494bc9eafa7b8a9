"""Tests for nodehost.bindings: binding paths, get/set/merge, scope prefixes."""

from __future__ import annotations

import copy
import pickle
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodehost.bindings import (
    BindingPath,
    BindingPathError,
    MissingValue,
    ScopeRef,
    get_value,
    merge_into,
    parse_path,
    parse_scope_prefix,
    scope_from_parts,
    set_value,
)

# --- parse_path: the two forms ------------------------------------------------------------


@pytest.mark.parametrize(
    ("pointer", "dotted"),
    [
        ("/parameters/a/b", "parameters.a.b"),
        ("/results/x/0", "results.x.0"),
        ("/results", "results"),
        ("/parameters", "parameters"),
        ("/results/a.b", 'results["a.b"]'),
        ("/results/a.b/c", "results['a.b'].c"),
    ],
)
def test_pointer_and_dotted_forms_agree(pointer: str, dotted: str) -> None:
    """Equivalent pointer and dotted paths parse to the same BindingPath."""
    assert parse_path(pointer) == parse_path(dotted)


def test_parse_pointer_segments() -> None:
    """A pointer splits into a root and string segments."""
    assert parse_path("/parameters/a/b") == BindingPath("parameters", ("a", "b"))
    assert parse_path("/results/x/0") == BindingPath("results", ("x", "0"))


def test_root_only_paths_have_no_segments() -> None:
    """A bare root in either form has empty segments."""
    assert parse_path("results") == BindingPath("results", ())
    assert parse_path("/parameters") == BindingPath("parameters", ())


def test_pointer_unescapes_tilde_sequences() -> None:
    """~1 becomes / and ~0 becomes ~, with ~01 meaning the literal ~1."""
    assert parse_path("/results/a~1b/c~0d/~01").segments == ("a/b", "c~d", "~1")


def test_pointer_keeps_empty_keys() -> None:
    """An empty pointer token is the empty key, as in RFC 6901."""
    assert parse_path("/results/").segments == ("",)
    assert parse_path("/results//x").segments == ("", "x")


@pytest.mark.parametrize("path", ["/results/a~2", "/results/a~", "/results/~x/b"])
def test_pointer_rejects_bad_tilde(path: str) -> None:
    """A ~ not followed by 0 or 1 is a syntax error naming the path."""
    with pytest.raises(BindingPathError, match=re.escape(repr(path))):
        parse_path(path)


def test_dotted_bracket_index_is_int() -> None:
    """A bracketed integer is an explicit list index, a bare digit segment stays a string."""
    assert parse_path("results.items[0]").segments == ("items", 0)
    assert parse_path("results.items[0].name").segments == ("items", 0, "name")
    assert parse_path("results.matrix[1][2]").segments == ("matrix", 1, 2)
    assert parse_path("results.items.0").segments == ("items", "0")
    assert parse_path("results[3]").segments == (3,)


def test_dotted_negative_index() -> None:
    """Negative bracketed indexes parse as negative ints."""
    assert parse_path("results.items[-1]").segments == ("items", -1)


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ('results["a.b"]', ("a.b",)),
        ("results['a.b']", ("a.b",)),
        ('results["a.b"].c', ("a.b", "c")),
        ('results.x["y"][0]', ("x", "y", 0)),
        (r'results["say \"hi\""]', ('say "hi"',)),
        (r"results['it\'s']", ("it's",)),
        (r'results["back\\slash"]', ("back\\slash",)),
        ('results["it\'s"]', ("it's",)),
        ('results["a/b~c"]', ("a/b~c",)),
        ('results[""]', ("",)),
        ('results["0"]', ("0",)),
    ],
)
def test_dotted_quoted_keys(path: str, segments: tuple[str, ...]) -> None:
    """Quoted bracket keys may contain dots, slashes, tildes and escaped quotes."""
    assert parse_path(path).segments == segments


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("results..b", "empty segment"),
        ("results.a.", "empty segment"),
        ("results.", "empty segment"),
        ("results.[0]", "empty segment"),
        ("results[", "malformed bracket"),
        ("results[a]", "malformed bracket"),
        ("results[01]", "malformed list index"),
        ("results[-0]", "malformed list index"),
        ("results[ 0 ]", "malformed bracket"),
        ('results["a]', "malformed bracket"),
        ('results["a\\n"]', "malformed bracket"),
        ("results]", "unexpected"),
        ("results[0]x", "unexpected"),
    ],
)
def test_dotted_syntax_errors(path: str, message: str) -> None:
    """Malformed dotted paths raise with a description and the quoted path."""
    with pytest.raises(BindingPathError, match=re.escape(message)) as info:
        parse_path(path)
    assert repr(path) in str(info.value)


@pytest.mark.parametrize(
    "path",
    ["inputs.a", "/inputs/a", "/", "Results.a", '["results"]', ".results", "[0]", " results"],
)
def test_path_must_start_with_a_root(path: str) -> None:
    """Paths not rooted at parameters or results are rejected, quoting the path."""
    with pytest.raises(
        BindingPathError, match="binding path must start with 'parameters' or 'results'"
    ) as info:
        parse_path(path)
    assert repr(path) in str(info.value)


def test_empty_path_is_an_error() -> None:
    """The empty string is not a binding path."""
    with pytest.raises(BindingPathError, match="empty"):
        parse_path("")


def test_parse_path_returns_equal_results_on_repeat() -> None:
    """Parsing the same path twice gives equal, immutable results."""
    first = parse_path("results.a[0]")
    assert parse_path("results.a[0]") == first
    with pytest.raises(AttributeError):
        first.root = "parameters"  # type: ignore[misc]


def test_binding_path_error_is_value_error() -> None:
    """BindingPathError can be caught as ValueError."""
    with pytest.raises(ValueError):
        parse_path("nope")


# --- BindingPath.pointer ------------------------------------------------------------------


def test_pointer_escapes_and_str() -> None:
    """pointer() escapes ~ and / and str() is the pointer."""
    path = BindingPath("results", ("a/b", 0, "c~d"))
    assert path.pointer() == "/results/a~1b/0/c~0d"
    assert str(path) == "/results/a~1b/0/c~0d"
    assert BindingPath("results", ()).pointer() == "/results"


def test_pointer_of_dotted_path() -> None:
    """A dotted path's pointer is its canonical JSON pointer."""
    assert parse_path('parameters["x/y"].items[2]').pointer() == "/parameters/x~1y/items/2"


KEY = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)


@given(
    root=st.sampled_from(["parameters", "results"]),
    keys=st.lists(KEY, max_size=6),
)
def test_pointer_round_trip(root: str, keys: list[str]) -> None:
    """For any text keys, parsing pointer() gives back the same path."""
    path = BindingPath(root, tuple(keys))  # type: ignore[arg-type]
    assert parse_path(path.pointer()) == path


@given(
    keys=st.lists(KEY, min_size=1, max_size=6),
    value=st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)),
)
def test_set_then_get_round_trip(keys: list[str], value: object) -> None:
    """set_value then get_value returns the value for any text keys."""
    segments = parse_path(BindingPath("results", tuple(keys)).pointer()).segments
    data: dict = {}
    assert set_value(data, segments, value) is data
    assert get_value(data, segments) == value


# --- get_value ----------------------------------------------------------------------------

DATA = {
    "a": {"b": 1, "": "empty", "0": "zero-key"},
    "items": [{"name": "x"}, {"name": "y"}, None],
    "matrix": [[1, 2, 3], [4, 5, 6]],
    "s": "text",
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("results", DATA),
        ("results.a.b", 1),
        ("/results/a/", "empty"),
        ("results.a.0", "zero-key"),
        ("/results/a/0", "zero-key"),
        ("results.items[1].name", "y"),
        ("/results/items/1/name", "y"),
        ("results.items.1.name", "y"),
        ("results.items[2]", None),
        ("results.items[-1]", None),
        ("results.items[-3].name", "x"),
        ("results.matrix[1][2]", 6),
        ("/results/matrix/0/1", 2),
    ],
)
def test_get_value_finds(path: str, expected: object) -> None:
    """get_value walks dicts by key and lists by index in both path forms."""
    assert get_value(DATA, parse_path(path).segments) == expected


@pytest.mark.parametrize(
    ("path", "pointer"),
    [
        ("results.nope", "/nope"),
        ("results.a.nope.deeper", "/a/nope"),
        ("results.items[3]", "/items/3"),
        ("results.items[-4]", "/items/-4"),
        ("/results/items/01", "/items/01"),
        ("/results/items/-1", "/items/-1"),
        ("/results/items/x", "/items/x"),
        ("/results/items/-", "/items/-"),
        ("results.a[0]", "/a/0"),
        ("results.s.x", "/s/x"),
        ("results.items[2].name", "/items/2/name"),
        ('results["a/b"].c', "/a~1b"),
    ],
)
def test_get_value_missing(path: str, pointer: str) -> None:
    """A missing location raises MissingValue carrying its pointer in the message."""
    with pytest.raises(MissingValue, match=re.escape(repr(pointer))) as info:
        get_value(DATA, parse_path(path).segments)
    assert info.value.pointer == pointer
    assert isinstance(info.value, LookupError)


def test_missing_value_pickles() -> None:
    """MissingValue survives pickling with its pointer intact."""
    with pytest.raises(MissingValue) as info:
        get_value({}, ("x",))
    clone = pickle.loads(pickle.dumps(info.value))
    assert clone.pointer == "/x"
    assert str(clone) == str(info.value)


def test_get_value_does_not_mutate() -> None:
    """get_value leaves the data untouched, even on a miss."""
    before = copy.deepcopy(DATA)
    get_value(DATA, ("items", 0, "name"))
    with pytest.raises(MissingValue):
        get_value(DATA, ("a", "x", "y"))
    assert before == DATA


# --- set_value ----------------------------------------------------------------------------


def test_set_value_creates_intermediate_dicts() -> None:
    """Missing dict keys along the path are created as dicts."""
    data: dict = {"keep": 1}
    assert set_value(data, ("a", "b", "c"), 5) is data
    assert data == {"keep": 1, "a": {"b": {"c": 5}}}


def test_set_value_digit_string_creates_dict_key() -> None:
    """A digit string segment under a missing key creates a dict key, not a list."""
    data: dict = {}
    set_value(data, parse_path("/results/a/0").segments, "v")
    assert data == {"a": {"0": "v"}}


def test_set_value_replaces_existing_leaf() -> None:
    """An existing value at the target, of any type, is replaced."""
    data: dict = {"a": {"b": [1, 2]}}
    set_value(data, ("a", "b"), "now a string")
    assert data == {"a": {"b": "now a string"}}


def test_set_value_in_list_replaces_and_appends() -> None:
    """In a list, index < len replaces and index == len or '-' appends."""
    data: dict = {"xs": [1, 2]}
    set_value(data, parse_path("results.xs[0]").segments, 10)
    set_value(data, parse_path("results.xs[2]").segments, 3)
    set_value(data, parse_path("/results/xs/3").segments, 4)
    set_value(data, parse_path("/results/xs/-").segments, 5)
    set_value(data, parse_path("results.xs.-").segments, 6)
    assert data == {"xs": [10, 2, 3, 4, 5, 6]}


def test_set_value_walks_into_list_items() -> None:
    """Writes can go through list items into nested dicts."""
    data: dict = {"items": [{"name": "x"}]}
    set_value(data, parse_path("results.items[0].tags.first").segments, "t")
    set_value(data, parse_path("/results/items/0/name").segments, "renamed")
    assert data == {"items": [{"name": "renamed", "tags": {"first": "t"}}]}


def test_set_value_append_builds_nested_dict() -> None:
    """Appending through an intermediate segment appends a fresh dict."""
    data: dict = {"items": []}
    set_value(data, parse_path("/results/items/-/name").segments, "n")
    set_value(data, parse_path("results.items[1].name").segments, "m")
    assert data == {"items": [{"name": "n"}, {"name": "m"}]}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("results.xs[3]", "beyond the end of the list at '/xs' (length 2)"),
        ("/results/xs/7/a", "beyond the end of the list at '/xs' (length 2)"),
        ("results.xs[-1]", "negative list index -1"),
    ],
)
def test_set_value_list_index_errors(path: str, message: str) -> None:
    """Indexes past the end or negative indexes cannot be written."""
    data: dict = {"xs": [1, 2]}
    with pytest.raises(BindingPathError, match=re.escape(message)):
        set_value(data, parse_path(path).segments, 0)
    assert data == {"xs": [1, 2]}


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        ({"a": "text"}, "results.a.b", "'/a' is of type str"),
        ({"a": 3}, "results.a[0]", "'/a' is of type int"),
        ({"a": None}, "results.a.b", "'/a' is of type null"),
        ({"a": True}, "results.a.b", "'/a' is of type bool"),
        ({"a": {"b": 1.5}}, "results.a.b.c", "'/a/b' is of type float"),
        ({"a": [1]}, "results.a.b", "'/a' is a list, which has no key 'b'"),
        ({"a": [1]}, "/results/a/01", "'/a' is a list, which has no key '01'"),
        ({"a": [[1]]}, "results.a[0][0].x", "'/a/0/0' is of type int"),
        ({"a": {}}, "results.a[0]", "'/a' is an object, which cannot take list index [0]"),
    ],
)
def test_set_value_refuses_to_clobber(data: dict, path: str, message: str) -> None:
    """A non-container intermediate is never replaced; the error names it and its type."""
    before = copy.deepcopy(data)
    with pytest.raises(BindingPathError, match=re.escape(message)) as info:
        set_value(data, parse_path(path).segments, "new")
    assert "cannot set" in str(info.value)
    assert data == before


@pytest.mark.parametrize("path", ["results.a[0]", "results.a.b[0]", "results.a.b[0].c"])
def test_set_value_cannot_index_missing_list(path: str) -> None:
    """An int segment under a missing key fails without creating anything."""
    data: dict = {}
    with pytest.raises(BindingPathError, match="cannot index a missing list"):
        set_value(data, parse_path(path).segments, 1)
    assert data == {}


def test_set_value_root_replacement() -> None:
    """Empty segments replace the root's contents, keeping the same object."""
    data: dict = {"old": 1, "a": {"b": 2}}
    assert set_value(data, (), {"new": 2}) is data
    assert data == {"new": 2}
    assert set_value(data, (), data) == {"new": 2}


def test_set_value_root_replacement_from_nested_value() -> None:
    """The root can be replaced by one of its own children."""
    data: dict = {"inner": {"x": 1}}
    set_value(data, (), data["inner"])
    assert data == {"x": 1}


@pytest.mark.parametrize("value", [[1], "s", None, 3])
def test_set_value_root_requires_object(value: object) -> None:
    """Only a dict can replace the whole root."""
    data: dict = {"keep": 1}
    with pytest.raises(BindingPathError, match="only an object can replace the whole"):
        set_value(data, (), value)
    assert data == {"keep": 1}


# --- merge_into ---------------------------------------------------------------------------


def test_merge_into_deep_merges() -> None:
    """Dicts merge recursively; lists and scalars replace."""
    target = {"a": {"x": 1, "y": {"z": 1}}, "l": [1, 2], "s": "old", "d": {"k": 1}}
    patch = {"a": {"y": {"w": 2}, "n": None}, "l": [3], "s": {"now": "dict"}, "d": 5, "new": 1}
    assert merge_into(target, patch) is target
    assert target == {
        "a": {"x": 1, "y": {"z": 1, "w": 2}, "n": None},
        "l": [3],
        "s": {"now": "dict"},
        "d": 5,
        "new": 1,
    }


def test_merge_into_does_not_alias_patch_dicts() -> None:
    """Later merges into the target never mutate an earlier patch."""
    patch = {"a": {"b": 1}}
    target: dict = {}
    merge_into(target, patch)
    merge_into(target, {"a": {"c": 2}})
    assert patch == {"a": {"b": 1}}
    assert target == {"a": {"b": 1, "c": 2}}


def test_merge_into_empty_patch() -> None:
    """An empty patch leaves the target unchanged."""
    assert merge_into({"a": 1}, {}) == {"a": 1}


# --- scope prefixes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("#node1", ScopeRef("local", (), "node1")),
        ("#n-1_x", ScopeRef("local", (), "n-1_x")),
        ("@a", ScopeRef("subgraph", ("a",), None)),
        ("@a.b", ScopeRef("subgraph", ("a", "b"), None)),
        ("@a.#n", ScopeRef("subgraph", ("a",), "n")),
        ("@a.b.#n", ScopeRef("subgraph", ("a", "b"), "n")),
        ("  #n  ", ScopeRef("local", (), "n")),
        ("", None),
        ("   ", None),
        ("\t\n", None),
    ],
)
def test_parse_scope_prefix_valid(prefix: str, expected: ScopeRef | None) -> None:
    """Valid scope prefixes parse; blank prefixes mean no scope."""
    assert parse_scope_prefix(prefix) == expected


@pytest.mark.parametrize(
    "prefix",
    [
        "@",
        "#",
        "@.x",
        "foo",
        "@a..b",
        "@a.",
        "@a.#n.extra",
        "@#n",
        "#a.b",
        "#a#b",
        "##a",
        "@a b",
        "# a",
        "@a.@b",
        "@a.#",
        "#n@x",
    ],
)
def test_parse_scope_prefix_invalid(prefix: str) -> None:
    """Malformed scope prefixes raise, quoting the prefix."""
    with pytest.raises(BindingPathError, match=re.escape(f"invalid scope prefix {prefix!r}")):
        parse_scope_prefix(prefix)


def test_scope_from_parts_prefix_only() -> None:
    """A prefix alone parses as the scope; nothing at all gives None."""
    assert scope_from_parts("@a.#n", None, None, None) == ScopeRef("subgraph", ("a",), "n")
    assert scope_from_parts(None, None, None, None) is None
    assert scope_from_parts("", None, [], None) is None


def test_scope_from_parts_structured() -> None:
    """Structured fields build local and subgraph scopes."""
    assert scope_from_parts(None, "local", None, "n") == ScopeRef("local", (), "n")
    assert scope_from_parts(None, "subgraph", ["a", "b"], None) == ScopeRef(
        "subgraph", ("a", "b"), None
    )
    assert scope_from_parts("  ", "subgraph", ["a"], "n") == ScopeRef("subgraph", ("a",), "n")


def test_scope_from_parts_agreeing_prefix_and_fields() -> None:
    """A prefix and structured fields that agree are accepted."""
    assert scope_from_parts("#n", "local", None, "n") == ScopeRef("local", (), "n")
    assert scope_from_parts("@a.b.#n", "subgraph", ["a", "b"], "n") == ScopeRef(
        "subgraph", ("a", "b"), "n"
    )


@pytest.mark.parametrize(
    ("prefix", "kind", "aliases", "node_id"),
    [
        ("#n", "local", None, "m"),
        ("#n", "subgraph", ["n"], None),
        ("@a", "subgraph", ["b"], None),
        ("@a", "subgraph", ["a"], "n"),
        ("@a.#n", "subgraph", ["a"], None),
        ("@a.b", "subgraph", ["b", "a"], None),
    ],
)
def test_scope_from_parts_conflict(
    prefix: str, kind: str, aliases: list[str] | None, node_id: str | None
) -> None:
    """A prefix that disagrees with the structured fields is an error."""
    with pytest.raises(BindingPathError, match=re.escape(f"scope prefix {prefix!r} conflicts")):
        scope_from_parts(prefix, kind, aliases, node_id)


@pytest.mark.parametrize(
    ("kind", "aliases", "node_id", "message"),
    [
        ("local", None, None, "'local' scope needs a node_id"),
        ("local", ["a"], "n", "'local' scope needs a node_id and no aliases"),
        ("subgraph", None, "n", "'subgraph' scope needs at least one alias"),
        ("subgraph", [], None, "'subgraph' scope needs at least one alias"),
        ("global", None, "n", "unknown scope kind 'global'"),
        (None, ["a"], None, "unknown scope kind None"),
        (None, None, "n", "unknown scope kind None"),
        ("local", None, "a.b", "invalid scope node id 'a.b'"),
        ("local", None, "", "invalid scope node id ''"),
        ("subgraph", ["a", "#b"], None, "invalid scope alias '#b'"),
        ("subgraph", ["a"], "n m", "invalid scope node id 'n m'"),
    ],
)
def test_scope_from_parts_invalid_structure(
    kind: str | None, aliases: list[str] | None, node_id: str | None, message: str
) -> None:
    """Incomplete, unknown or malformed structured scopes are rejected."""
    with pytest.raises(BindingPathError, match=re.escape(message)):
        scope_from_parts(None, kind, aliases, node_id)


def test_scope_from_parts_invalid_prefix() -> None:
    """A malformed prefix is rejected even alongside structured fields."""
    with pytest.raises(BindingPathError, match=re.escape("invalid scope prefix '@'")):
        scope_from_parts("@", "subgraph", ["a"], None)
