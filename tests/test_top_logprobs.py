"""Reading label distributions from top_logprobs, on responses in OpenAI's documented format.

Each case is a Chat Completions response body (``choices[0].logprobs.content[]`` with
``token``, ``bytes``, ``logprob`` and ``top_logprobs``), parsed by the backend's
``parse_response`` and read by :func:`surelabel.top_logprobs.read_value`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from surelabel import methods
from surelabel.backends.base import Generation
from surelabel.backends.openai import parse_response
from surelabel.errors import MissingLogprobsError, OffSchemaError
from surelabel.task import Task
from surelabel.testing import FakeBackend as TestingFakeBackend
from surelabel.top_logprobs import read_value

Tok = str | bytes
Step = tuple[Tok, float, Sequence[tuple[Tok, float]]]


def _entry(token: Tok, logprob: float) -> dict[str, Any]:
    raw = token if isinstance(token, bytes) else token.encode("utf-8")
    text = raw.decode("utf-8", errors="replace")
    return {"token": text, "bytes": list(raw), "logprob": logprob}


def response(steps: Sequence[Step], *, with_bytes: bool = True) -> dict[str, Any]:
    """A Chat Completions response whose answer is the given tokens."""
    content = []
    for token, logprob, top in steps:
        item = _entry(token, logprob)
        item["top_logprobs"] = [_entry(t, lp) for t, lp in top]
        if not with_bytes:
            item["bytes"] = None
            for alt in item["top_logprobs"]:
                alt["bytes"] = None
        content.append(item)
    raw = b"".join(t if isinstance(t, bytes) else t.encode() for t, _, _ in steps)
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": raw.decode("utf-8")},
                "logprobs": {"content": content, "refusal": None},
            }
        ],
        "usage": {"prompt_tokens": 50, "completion_tokens": len(steps), "total_tokens": 60},
    }


def fixed(token: str, logprob: float = 0.0) -> Step:
    """A structural token the model is sure of."""
    return (token, logprob, [(token, logprob)])


def gen(steps: Sequence[Step], **kw: Any) -> Generation:
    return parse_response(response(steps, **kw))


LN_HALF = -0.6931498


def test_source_example_string_true() -> None:
    # The source technique's example: `{"`, `contains`, `Pineapple`, `":"`, `true` at -0.6931498.
    g = gen([
        fixed('{"'), fixed("contains"), fixed("Pineapple"), fixed('":"'),
        ("true", LN_HALF, [("true", LN_HALF), ("false", -0.71)]),
        fixed('"}'),
    ])
    assert g.text == '{"containsPineapple":"true"}'
    r = read_value(g, ["containsPineapple"], {"true": True, "false": False})
    assert r.value == "true"
    assert r.chosen_logprob == pytest.approx(LN_HALF)
    p_true, p_false = math.exp(LN_HALF), math.exp(-0.71)
    assert r.distribution.as_dict()["true"] == pytest.approx(p_true / (p_true + p_false))
    assert r.distribution.label_mass == pytest.approx(p_true + p_false)
    assert r.distribution.unseen == ()


def test_source_example_boolean() -> None:
    g = gen([
        fixed('{"'), fixed("contains"), fixed("Pineapple"), fixed('":'),
        ("true", LN_HALF, [("true", LN_HALF), ("false", -0.8), (" true", -3.0)]),
        fixed("}"),
    ])
    r = read_value(g, ["containsPineapple"], {"true": True, "false": False})
    assert r.value is True
    p = {"true": math.exp(LN_HALF) + math.exp(-3.0), "false": math.exp(-0.8)}
    total = sum(p.values())
    assert r.distribution.as_dict()["true"] == pytest.approx(p["true"] / total)
    assert r.distribution.label == "true"


def test_seed_method_reads_first_value_token_only() -> None:
    """The comparison method gives exp(-0.6931498) = 0.5 for the source example."""
    g = gen([
        fixed('{"'), fixed("contains"), fixed("Pineapple"), fixed('":'),
        ("true", LN_HALF, [("true", LN_HALF), ("false", -0.71)]),
        fixed("}"),
    ])
    task = Task.from_dict({
        "name": "p", "instructions": "Pineapple?", "kind": "binary",
        "field": "containsPineapple", "labels": ["true", "false"], "reason": False,
    })
    result = methods.seed(FakeBackend(g), task, "Hawaiian pizza", False)
    assert result.distribution is not None
    assert result.distribution.as_dict()["true"] == pytest.approx(0.5, abs=1e-5)
    topk = methods.topk(FakeBackend(g), task, "Hawaiian pizza", False)
    assert topk.distribution is not None
    assert topk.distribution.as_dict()["true"] > 0.5
    assert topk.info["confidence_source"] == "logprobs"


def test_merged_punctuation_and_value() -> None:
    # One token holds the colon, the opening quote and the label: `":"spam`.
    g = gen([
        fixed('{"'), fixed("label"),
        ('":"spam', -0.2, [('":"spam', -0.2), ('":"ham', -1.9), ('": "ham', -4.0), ('":', -5.0)]),
        fixed('"}'),
    ])
    r = read_value(g, ["label"], {"spam": "spam", "ham": "ham"})
    assert r.value == "spam"
    ham = math.exp(-1.9) + math.exp(-4.0)
    assert r.distribution.as_dict()["ham"] == pytest.approx(ham / (ham + math.exp(-0.2)))
    # `":` alone may still lead to either label: it is not counted as label mass.
    assert r.distribution.label_mass == pytest.approx(math.exp(-0.2) + ham)


def test_multi_token_value_confidence_uses_value_tokens_only() -> None:
    # `":"` is structural; the value is `health` + ` and` + ` wellness` (84.5%, not 69%).
    g = gen([
        fixed('{"', -0.006), fixed("category"),
        ('":"', -0.2, [('":"', -0.2), ('":', -1.7)]),
        ("health", -0.168, [("health", -0.168), ("sports", -1.9), ("tech", -3.2)]),
        (" and", 0.0, [(" and", 0.0)]),
        (" wellness", 0.0, [(" wellness", 0.0)]),
        fixed('"}'),
    ])
    labels = {n: n for n in ("health and wellness", "sports", "technology")}
    r = read_value(g, ["category"], labels)
    assert math.exp(r.chosen_logprob) == pytest.approx(0.845, abs=1e-3)
    d = r.distribution.as_dict()
    # `tech` is a prefix of technology seen off the generated path: an upper bound.
    assert r.bounded == ("technology",)
    assert r.unseen == ()
    assert d["health and wellness"] > d["sports"] > d["technology"]


def test_labels_sharing_first_token_follow_into_next_position() -> None:
    g = gen([
        fixed('{"'), fixed("type"), fixed('":'),
        (' "', -0.01, [(' "', -0.01)]),
        ("veget", -0.4, [("veget", -0.4), ("fruit", -1.5), ("herb", -3.0)]),
        ("able", -0.1, [("able", -0.1), ("arian", -2.4), ("ables", -5.0)]),
        fixed('"}'),
    ])
    labels = {n: n for n in ("vegetable", "vegetarian", "fruit", "herb")}
    r = read_value(g, ["type"], labels)
    lp = {
        "vegetable": -0.4 - 0.1,
        "vegetarian": -0.4 - 2.4,
        "fruit": -1.5,
        "herb": -3.0,
    }
    total = sum(math.exp(v) for v in lp.values())
    for name, v in lp.items():
        assert r.distribution.as_dict()[name] == pytest.approx(math.exp(v) / total)
    assert r.distribution.logprobs is not None
    assert r.distribution.logprobs[0] == pytest.approx(-0.5)
    assert r.distribution.label_mass == pytest.approx(
        math.exp(-0.4) + math.exp(-1.5) + math.exp(-3.0)
    )


def test_label_prefix_of_another_needs_its_closing_quote() -> None:
    g = gen([
        fixed('{"'), fixed("kind"), fixed('":'),
        (' "', 0.0, [(' "', 0.0)]),
        ("herb", -0.2, [("herb", -0.2), ("fruit", -2.0)]),
        ('"}', -0.5, [('"}', -0.5), ("al", -1.2), ('",', -3.0), ('"xyz', -4.0)]),
    ])
    labels = {"herb": "herb", "herbal": "herbal", "fruit": "fruit"}
    r = read_value(g, ["kind"], labels)
    assert r.distribution.logprobs is not None
    herb, herbal, fruit = r.distribution.logprobs
    # herb = P(herb) * P(closing quote then punctuation): `"}` and `",`, not `"xyz`.
    assert herb == pytest.approx(-0.2 + math.log(math.exp(-0.5) + math.exp(-3.0)))
    assert herbal == pytest.approx(-0.2 - 1.2)
    assert fruit == pytest.approx(-2.0)


def test_unseen_label_gets_documented_upper_bound() -> None:
    top = [("pos", -0.1), ("neg", -2.6), ("N", -4.0)]
    g = gen([fixed('{"'), fixed("s"), fixed('":"'), ("pos", -0.1, top), fixed('"}')])
    labels = {"pos": "pos", "neg": "neg", "mixed": "mixed"}
    r = read_value(g, ["s"], labels)
    assert r.unseen == ("mixed",)
    listed = sum(math.exp(lp) for _, lp in top)
    bound = min(math.exp(-4.0), 1 - listed)
    raw = {"pos": math.exp(-0.1), "neg": math.exp(-2.6), "mixed": bound}
    total = sum(raw.values())
    assert r.distribution.as_dict()["mixed"] == pytest.approx(bound / total)
    assert r.distribution.logprobs is not None
    assert r.distribution.logprobs[2] is None
    assert "mixed" in r.distribution.unseen
    assert any("upper bound" in w for w in r.warnings)


def test_bytes_field_rebuilds_split_utf8() -> None:
    # "café" split inside the two-byte "é": only the bytes fields rebuild it.
    g = gen([
        fixed('{"'), fixed("drink"), fixed('":"'),
        (b"caf\xc3", -0.3, [(b"caf\xc3", -0.3), (b"tea", -1.4)]),
        (b"\xa9", 0.0, [(b"\xa9", 0.0)]),
        fixed('"}'),
    ])
    r = read_value(g, ["drink"], {"café": "café", "tea": "tea"})
    assert r.value == "café"
    assert r.distribution.as_dict()["café"] == pytest.approx(
        math.exp(-0.3) / (math.exp(-0.3) + math.exp(-1.4))
    )


def test_token_strings_without_bytes() -> None:
    g = gen(
        [fixed('{"'), fixed("t"), fixed('":'),
         (" false", -0.4, [(" false", -0.4), (" true", -1.2)]), fixed("}")],
        with_bytes=False,
    )
    r = read_value(g, ["t"], {"true": True, "false": False})
    assert r.distribution.label == "false"
    assert r.distribution.as_dict()["true"] == pytest.approx(
        math.exp(-1.2) / (math.exp(-1.2) + math.exp(-0.4))
    )


def test_generated_token_missing_from_top_k_is_still_counted() -> None:
    # A grammar-constrained server reports the raw distribution; its pick may be outside.
    g = gen([
        fixed('{"'), fixed("t"), fixed('":"'),
        ("herb", -3.5, [("fruit", -0.5), ("nut", -1.0)]),
        fixed('"}'),
    ])
    r = read_value(g, ["t"], {"fruit": "fruit", "herb": "herb"})
    assert r.distribution.logprobs is not None
    assert r.distribution.logprobs[1] == pytest.approx(-3.5)


def test_multilabel_values_each_read_at_their_own_tokens() -> None:
    g = gen([
        fixed('{"'), fixed("emotions"), fixed('":'), fixed(' {"'), fixed("joy"), fixed('":'),
        (" true", -0.1, [(" true", -0.1), (" false", -2.4)]),
        fixed(',"'), fixed("anger"),
        ('":false', -0.3, [('":false', -0.3), ('":true', -1.5), ('":', -6.0)]),
        fixed("}}"),
    ])
    joy = read_value(g, ["emotions", "joy"], {"true": True, "false": False})
    anger = read_value(g, ["emotions", "anger"], {"true": True, "false": False})
    assert joy.distribution.label == "true"
    assert anger.distribution.label == "false"
    assert anger.distribution.as_dict()["true"] == pytest.approx(
        math.exp(-1.5) / (math.exp(-1.5) + math.exp(-0.3))
    )


def test_no_logprobs_and_no_label_raise() -> None:
    with pytest.raises(MissingLogprobsError):
        read_value(Generation('{"t": true}'), ["t"], {"true": True, "false": False})
    g = gen([fixed('{"'), fixed("t"), fixed('":"'), ("maybe", -0.1, [("maybe", -0.1)]),
             fixed('"}')])
    with pytest.raises(OffSchemaError):
        read_value(g, ["t"], {"yes": "yes", "no": "no"})


def FakeBackend(generation: Generation) -> TestingFakeBackend:
    """A backend returning a fixed generation: for method-level tests of the parser alone."""
    return TestingFakeBackend(
        generation=generation, capabilities={"max_top_logprobs": 20, "json_schema": True}
    )
