"""Confidence from token logprobs, with logprob lists built by hand the way vLLM returns them."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.dataset import example_data
from service.guard import ConfidenceFields, Leaf, leaf_spans, score_free, score_json


def token(text: str, logprob: float = 0.0, *, raw: bytes | None = None) -> dict[str, Any]:
    """One item of vLLM's chat `logprobs.content`."""
    data = raw if raw is not None else text.encode()
    return {"token": text, "logprob": logprob, "bytes": list(data), "top_logprobs": []}


def tokens(*pieces: tuple[str, float]) -> list[dict[str, Any]]:
    return [token(text, logprob) for text, logprob in pieces]


TRIAGE = '{"category":"technical","urgency":2}'


def triage_tokens(key: list[str], grammar: float = 0.0) -> list[dict[str, Any]]:
    """The answer as an engine under a schema returns it: grammar forced, values chosen."""
    return tokens(
        ('{"', grammar),
        *((part, grammar) for part in key),
        ('":"', grammar),
        ("technical", -0.0),
        ('","', grammar),
        ("urg", grammar),
        ("ency", grammar),
        ('":', grammar),
        ("2", -0.99),
        ("}", grammar),
    )


def test_each_field_scores_its_value_tokens_and_the_answer_takes_the_minimum() -> None:
    confidence = score_json(TRIAGE, triage_tokens(["category"]))
    assert confidence is not None
    assert confidence.method == "json_values"
    assert confidence.fields == {"/category": 1.0, "/urgency": pytest.approx(math.exp(-0.99))}
    assert confidence.score == pytest.approx(math.exp(-0.99))


def test_grammar_tokens_do_not_count() -> None:
    forced = score_json(TRIAGE, triage_tokens(["category"]))
    unsure_grammar = score_json(TRIAGE, triage_tokens(["category"], grammar=-4.0))
    assert forced == unsure_grammar


def test_how_a_key_is_split_into_tokens_does_not_matter() -> None:
    one = score_json(TRIAGE, triage_tokens(["category"]))
    four = score_json(TRIAGE, triage_tokens(["cat", "e", "go", "ry"]))
    assert one == four


def test_the_least_likely_token_of_a_value_sets_its_score() -> None:
    text = '{"next_action":"Reset the router"}'
    pieces = tokens(
        ('{"next_action":"', 0.0), ("Reset", -0.1), (" the", -0.02), (" router", -1.5), ('"}', 0.0)
    )
    confidence = score_json(text, pieces)
    assert confidence is not None
    assert confidence.fields == {"/next_action": pytest.approx(math.exp(-1.5))}


def test_a_token_spanning_two_values_counts_for_both() -> None:
    confidence = score_json("[1,2,3]", tokens(("[", 0.0), ("1,2", -1.0), (",", -3.0), ("3]", 0.0)))
    assert confidence is not None
    assert confidence.fields == {
        "/0": pytest.approx(math.exp(-1.0)),
        "/1": pytest.approx(math.exp(-1.0)),
        "/2": 1.0,
    }


def test_nested_fields_are_json_pointers() -> None:
    text = '{"items":[{"name":"a/b","n":1.5e3}],"ok":true,"x":null}'
    pieces = tokens(
        ('{"items":[{"name":"', 0.0), ("a/b", -0.5), ('","n":', 0.0), ("1.5e3", -0.2),
        ('}],"ok":', 0.0), ("true", -0.3), (',"x":', 0.0), ("null", -0.1), ("}", 0.0),
    )  # fmt: skip
    confidence = score_json(text, pieces)
    assert confidence is not None
    assert confidence.fields == pytest.approx(
        {"/items/0/name": math.exp(-0.5), "/items/0/n": math.exp(-0.2), "/ok": math.exp(-0.3),
         "/x": math.exp(-0.1)}
    )  # fmt: skip
    assert confidence.score == pytest.approx(math.exp(-0.5))


def test_the_empty_string_is_scored_by_the_token_that_closed_it() -> None:
    confidence = score_json('{"note":""}', tokens(('{"note":"', 0.0), ('"', -0.7), ("}", 0.0)))
    assert confidence is not None
    assert confidence.fields == {"/note": pytest.approx(math.exp(-0.7))}


def test_a_multi_byte_character_split_across_tokens_maps_through_bytes() -> None:
    text = '{"city":"Zürich","n":1}'
    u_umlaut = "ü".encode()
    pieces = [
        token('{"city":"'),
        token("Z", -0.1),
        # vLLM shows a token holding part of a character as "bytes:\\x..": only `bytes` is exact
        token("bytes:\\xc3", -2.0, raw=u_umlaut[:1]),
        token("bytes:\\xbc", -0.0, raw=u_umlaut[1:]),
        token("rich", -0.05),
        token('","n":'),
        token("1", -0.3),
        token("}"),
    ]
    confidence = score_json(text, pieces)
    assert confidence is not None
    assert confidence.fields == {
        "/city": pytest.approx(math.exp(-2.0)),
        "/n": pytest.approx(math.exp(-0.3)),
    }


def test_an_emoji_split_in_bytes_does_not_shift_the_fields_after_it() -> None:
    text = '{"mood":"ok 🙂","level":3}'
    emoji = "🙂".encode()
    pieces = [
        token('{"mood":"'),
        token("ok", -0.2),
        token(" bytes:\\xf0\\x9f", -0.4, raw=b" " + emoji[:2]),
        token("bytes:\\x99\\x82", -0.0, raw=emoji[2:]),
        token('","level":', -5.0),  # forced grammar, even at a low logprob
        token("3", -1.1),
        token("}"),
    ]
    confidence = score_json(text, pieces)
    assert confidence is not None
    assert confidence.fields == {
        "/mood": pytest.approx(math.exp(-0.4)),
        "/level": pytest.approx(math.exp(-1.1)),
    }


def test_tokens_without_bytes_use_their_text() -> None:
    pieces = [{"token": t, "logprob": lp, "bytes": None} for t, lp in [('{"c":"', 0.0),
              ("Zürich", -0.3), ('"}', 0.0)]]  # fmt: skip
    confidence = score_json('{"c":"Zürich"}', pieces)
    assert confidence is not None
    assert confidence.fields == {"/c": pytest.approx(math.exp(-0.3))}


def test_a_confidence_the_model_writes_is_never_read() -> None:
    text = '{"label":"spam","confidence":0.99}'
    pieces = tokens(
        ('{"label":"', 0.0), ("spam", -2.3), ('","confidence":', 0.0), ("0.99", -0.1), ("}", 0.0)
    )
    confidence = score_json(text, pieces)
    assert confidence is not None
    assert confidence.score == pytest.approx(math.exp(-2.3))
    assert confidence.fields["/confidence"] == pytest.approx(math.exp(-0.1))


# --- which fields count ------------------------------------------------------------------------

TICKET = '{"category":"billing","urgency":2,"next_action":"Refund the charge"}'


def ticket_tokens(category: float, urgency: float, action: float) -> list[dict[str, Any]]:
    return tokens(
        ('{"category":"', 0.0), ("billing", category), ('","urgency":', 0.0), ("2", urgency),
        (',"next_action":"', 0.0), ("Refund", action), (" the", -0.01), (" charge", -0.2),
        ('"}', 0.0),
    )  # fmt: skip


def ticket_schema(**next_action: Any) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(example_data("tickets.schema.json").read_text())
    schema["properties"]["next_action"].update(next_action)
    return schema


def test_a_free_text_field_is_scored_but_does_not_pull_the_answer_down() -> None:
    fields = ConfidenceFields(ticket_schema())
    confidence = score_json(TICKET, ticket_tokens(-0.05, -0.1, -2.0), fields.counts)
    assert confidence is not None and confidence.method == "json_values"
    assert confidence.fields == pytest.approx(
        {"/category": math.exp(-0.05), "/urgency": math.exp(-0.1), "/next_action": math.exp(-2.0)}
    )
    assert confidence.counted == ("/category", "/urgency")
    assert confidence.score == pytest.approx(math.exp(-0.1))


def test_an_unsure_categorical_field_still_sets_the_score() -> None:
    fields = ConfidenceFields(ticket_schema())
    confidence = score_json(TICKET, ticket_tokens(-1.2, -0.1, -2.0), fields.counts)
    assert confidence is not None
    assert confidence.score == pytest.approx(math.exp(-1.2))


def test_the_annotation_makes_a_free_text_field_count() -> None:
    fields = ConfidenceFields(ticket_schema(**{"x-loragate-confidence": True}))
    confidence = score_json(TICKET, ticket_tokens(-0.05, -0.1, -2.0), fields.counts)
    assert confidence is not None
    assert confidence.counted == ("/category", "/urgency", "/next_action")
    assert confidence.score == pytest.approx(math.exp(-2.0))


def test_a_policy_list_replaces_the_default() -> None:
    fields = ConfidenceFields(ticket_schema(), ["/next_action"])
    confidence = score_json(TICKET, ticket_tokens(-1.5, -0.1, -0.3), fields.counts)
    assert confidence is not None
    assert confidence.counted == ("/next_action",)
    assert confidence.score == pytest.approx(math.exp(-0.3))


def test_an_answer_with_no_categorical_field_takes_the_minimum_over_all_fields() -> None:
    schema = {"type": "object", "properties": {"summary": {"type": "string"},
              "reply": {"type": "string", "maxLength": 500}}}  # fmt: skip
    text = '{"summary":"Card declined","reply":"Try again"}'
    pieces = tokens(('{"summary":"', 0.0), ("Card declined", -0.4), ('","reply":"', 0.0),
                    ("Try again", -0.9), ('"}', 0.0))  # fmt: skip
    confidence = score_json(text, pieces, ConfidenceFields(schema).counts)
    assert confidence is not None
    assert confidence.counted == ("/summary", "/reply")
    assert confidence.score == pytest.approx(math.exp(-0.9))


def test_items_under_a_ref_are_counted_by_their_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"lines": {"type": "array", "items": {"$ref": "#/$defs/Line"}}},
        "$defs": {"Line": {"type": "object", "properties": {
            "sku": {"type": "string", "maxLength": 12}, "note": {"type": "string"}}}},
    }  # fmt: skip
    text = '{"lines":[{"sku":"A-1","note":"fragile"},{"sku":"B-2","note":"gift"}]}'
    pieces = tokens(
        ('{"lines":[{"sku":"', 0.0), ("A-1", -0.2), ('","note":"', 0.0), ("fragile", -3.0),
        ('"},{"sku":"', 0.0), ("B-2", -0.6), ('","note":"', 0.0), ("gift", -2.0), ('"}]}', 0.0),
    )  # fmt: skip
    confidence = score_json(text, pieces, ConfidenceFields(schema).counts)
    assert confidence is not None
    assert confidence.counted == ("/lines/0/sku", "/lines/1/sku")
    assert confidence.score == pytest.approx(math.exp(-0.6))


def test_a_field_mixing_categorical_and_free_text_branches_is_free_text() -> None:
    schema = {"type": "object", "properties": {
        "label": {"anyOf": [{"enum": ["spam", "ham"]}, {"type": "string"}]},
        "n": {"type": "integer"}}}  # fmt: skip
    text = '{"label":"spam","n":3}'
    pieces = tokens(('{"label":"', 0.0), ("spam", -2.0), ('","n":', 0.0), ("3", -0.1), ("}", 0.0))
    confidence = score_json(text, pieces, ConfidenceFields(schema).counts)
    assert confidence is not None
    assert (confidence.counted, confidence.score) == (("/n",), pytest.approx(math.exp(-0.1)))


def test_without_a_selection_every_field_counts() -> None:
    confidence = score_json(TRIAGE, triage_tokens(["category"]))
    assert confidence is not None
    assert confidence.counted == ("/category", "/urgency")


# --- falling back and refusing to guess ---------------------------------------------------------


def test_tokens_that_do_not_add_up_to_the_text_fall_back_to_the_sequence_score() -> None:
    pieces = tokens(('{"category":"', 0.0), ("billing", -1.0), ('"}', 0.0))
    confidence = score_json(TRIAGE, pieces)
    assert confidence is not None
    assert (confidence.method, confidence.fields, confidence.counted) == ("sequence", {}, ())
    assert confidence.score == pytest.approx(math.exp(-1.0 / 3))


def test_a_selection_does_not_change_the_sequence_fallback() -> None:
    pieces = tokens(('{"category":"', 0.0), ("billing", -1.0), ('"}', 0.0))
    fields = ConfidenceFields(ticket_schema())
    assert score_json(TRIAGE, pieces, fields.counts) == score_json(TRIAGE, pieces)


def test_text_that_is_not_json_falls_back_to_the_sequence_score() -> None:
    confidence = score_json("Sure! technical", tokens(("Sure!", -0.5), (" technical", -1.5)))
    assert confidence is not None
    assert confidence.method == "sequence"
    assert confidence.score == pytest.approx(math.exp(-1.0))


def test_an_empty_object_is_a_value_of_its_own() -> None:
    confidence = score_json("{ }", tokens(("{", -0.2), (" }", -0.4)))
    assert confidence is not None
    assert confidence.method == "json_values"
    assert confidence.fields == {"": pytest.approx(math.exp(-0.4))}


def test_the_sequence_score_is_the_length_normalised_probability() -> None:
    confidence = score_free(tokens(("a", -0.1), ("b", -0.5), ("c", -0.3)))
    assert confidence is not None
    assert (confidence.method, confidence.fields) == ("sequence", {})
    assert confidence.score == pytest.approx(math.exp(-0.3))


@pytest.mark.parametrize("logprob", [float("-inf"), -9999.0, 0.5, 3.0])
def test_scores_are_clamped_to_zero_and_one(logprob: float) -> None:
    for confidence in (score_free(tokens(("1", logprob))), score_json("1", tokens(("1", logprob)))):
        assert confidence is not None
        assert 0.0 <= confidence.score <= 1.0
        assert all(0.0 <= value <= 1.0 for value in confidence.fields.values())


@pytest.mark.parametrize(
    "pieces",
    [
        None,
        [],
        [{"token": "1", "bytes": None}],
        [{"token": "1", "logprob": "high"}],
        [{"token": "1", "logprob": float("nan")}],
        [{"token": "1", "logprob": True}],
    ],
)
def test_without_usable_logprobs_the_confidence_is_unknown(pieces: Any) -> None:
    assert score_free(pieces) is None
    assert score_json("1", pieces) is None


# --- the span scanner ---------------------------------------------------------------------------


def spans(text: str) -> dict[str, str]:
    return {leaf.pointer: text[leaf.start : leaf.end] for leaf in leaf_spans(text)}


def test_strings_are_spanned_without_their_quotes_and_escapes_are_kept() -> None:
    text = '{"a":"say \\"hi\\"\\n","b":"\\u00fcber \\\\ \\/","c":"Zürich 🙂"}'
    assert spans(text) == {"/a": 'say \\"hi\\"\\n', "/b": "\\u00fcber \\\\ \\/", "/c": "Zürich 🙂"}


def test_numbers_literals_and_empty_containers_are_leaves() -> None:
    text = ' [ -0.5e-10 , 1E+3, 0, true, false, null, {}, [ ], {"k": [[]]} ] '
    assert spans(text) == {
        "/0": "-0.5e-10", "/1": "1E+3", "/2": "0", "/3": "true", "/4": "false", "/5": "null",
        "/6": "{}", "/7": "[ ]", "/8/k/0": "[]",
    }  # fmt: skip


def test_keys_are_escaped_in_pointers() -> None:
    assert spans('{"a/b":{"m~n":1,"":2,"\\"q\\"":3}}') == {
        "/a~1b/m~0n": "1", "/a~1b/": "2", '/a~1b/"q"': "3",
    }  # fmt: skip


def test_the_scanner_does_not_recurse() -> None:
    depth = 20_000
    leaves = leaf_spans("[" * depth + "7" + "]" * depth)
    assert leaves == [Leaf("/0" * depth, depth, depth + 1)]


@pytest.mark.parametrize("text", ["", "[1,]", '{"a" 1}', "[1 2]", '"open', "1 2", "{}}", "tru"])
def test_the_scanner_refuses_what_is_not_json(text: str) -> None:
    with pytest.raises(ValueError):
        leaf_spans(text)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


def expected_leaves(value: object, pointer: str = "") -> list[tuple[str, object]]:
    if isinstance(value, dict) and value:
        return [
            leaf
            for key, child in value.items()
            for leaf in expected_leaves(
                child, f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}"
            )
        ]
    if isinstance(value, list) and value:
        return [
            leaf
            for i, child in enumerate(value)
            for leaf in expected_leaves(child, f"{pointer}/{i}")
        ]
    return [(pointer, value)]


def decode(text: str, leaf: Leaf) -> object:
    piece = text[leaf.start : leaf.end]
    if leaf.start and text[leaf.start - 1] == '"':  # only a string's span follows a quote
        return "" if piece == '"' else json.loads(f'"{piece}"')
    return json.loads(piece)


@given(JSON, st.sampled_from([None, 0, 2]), st.booleans())
def test_every_leaf_is_found_at_its_span(
    value: object, indent: int | None, ascii_only: bool
) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only)
    found = [(leaf.pointer, decode(text, leaf)) for leaf in leaf_spans(text)]
    assert found == expected_leaves(value)


def test_the_end_of_sequence_token_vllm_reports_is_not_part_of_any_field() -> None:
    # Seen from vLLM: the logprobs end with `<|im_end|>`, which the answer text does not hold.
    text = '{"category":"billing"}'
    tokens = [token('{"', 0.0), token("category", 0.0), token('":"', 0.0), token("billing", -0.5),
              token('"}', 0.0), token("<|im_end|>", -3.0)]  # fmt: skip
    result = score_json(text, tokens)
    assert result is not None and result.method == "json_values"
    assert result.fields == {"/category": pytest.approx(math.exp(-0.5))}


def test_tokens_that_run_past_the_text_fall_back_to_the_sequence_score() -> None:
    text = '{"a":1}'
    tokens = [token('{"a":', 0.0), token("1}x", -0.1)]
    result = score_json(text, tokens)
    assert result is not None and result.method == "sequence"
