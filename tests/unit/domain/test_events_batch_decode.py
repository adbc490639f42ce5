"""``Codec.decode_many``: the strict decoder's verdicts and reasons, batch by batch."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import msgspec.inspect
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from somaagent.domain.events import EVENT_TYPES, MAX_EVENT_BYTES, Codec, ContractError, SlmMetrics

from ._event_examples import examples
from .test_events_codec import MALFORMED, Doc
from .test_events_schemas import mutated_event

CODEC = Codec()


def strict(data: bytes) -> Any:
    """What ``Codec.decode`` says of ``data``: the event's fields, or the reason."""
    try:
        return msgspec.structs.asdict(CODEC.decode(data))
    except ContractError as exc:
        return exc.reason


def batch(values: list[bytes]) -> list[Any]:
    return [
        v.reason if isinstance(v, ContractError) else msgspec.structs.asdict(v)
        for v in CODEC.decode_many(values)
    ]


def docs(index: int, n: int) -> list[Doc]:
    """``n`` valid copies of example ``index`` (event ids differ, the rest repeats)."""
    base: Doc = json.loads(CODEC.encode(examples()[index]))
    return [{**base, "event_id": base["event_id"][:-4] + f"{i:04x}"} for i in range(n)]


def encoded(items: list[Any]) -> list[bytes]:
    return [json.dumps(d).encode() for d in items]


def _patterns(info: Any) -> list[str]:
    """Every string pattern anywhere in a msgspec type."""
    if isinstance(info, msgspec.inspect.StrType):
        return [info.pattern] if info.pattern else []
    found: list[str] = []
    for name in ("type", "types", "item_type", "key_type", "value_type"):
        inner = getattr(info, name, None)
        for part in inner if isinstance(inner, tuple) else [inner] if inner else []:
            found += _patterns(part)
    return found


def test_the_loose_types_are_the_strict_ones_without_their_patterns() -> None:
    checks = CODEC._batch.checks
    assert len(checks) == len(EVENT_TYPES)
    for loose, field_checks in checks.items():
        (strict_cls,) = (c for c in EVENT_TYPES.values() if issubclass(loose, c))
        for key in (
            "tag",
            "tag_field",
            "forbid_unknown_fields",
            "frozen",
            "omit_defaults",
            "array_like",
        ):
            assert getattr(loose.__struct_config__, key) == getattr(
                strict_cls.__struct_config__, key
            )
        strict_fields = msgspec.inspect.type_info(strict_cls).fields  # type: ignore[attr-defined]
        loose_fields = msgspec.inspect.type_info(loose).fields  # type: ignore[attr-defined]
        assert [(f.name, f.required, f.default) for f in loose_fields] == [
            (f.name, f.required, f.default) for f in strict_fields
        ]
        # every pattern moved out of the type is checked on the batch, and none is left in
        assert not any(_patterns(f.type) for f in loose_fields)
        with_patterns = {f.name: _patterns(f.type) for f in strict_fields if _patterns(f.type)}
        assert {c.field: [c.search.__self__.pattern] for c in field_checks} == with_patterns  # type: ignore[attr-defined]


def test_a_valid_batch_decodes_to_the_strict_events() -> None:
    values = [CODEC.encode(e) for e in examples()] * 3
    assert batch(values) == [strict(v) for v in values]
    decoded = CODEC.decode_many(values)
    assert all(isinstance(e, type(x)) for e, x in zip(decoded, examples() * 3, strict=True))
    assert isinstance(decoded[0], SlmMetrics)
    assert decoded[0].event_type == "slm.metrics"


@pytest.mark.parametrize(
    ("index", "mutate"), [case[1:3] for case in MALFORMED], ids=[case[0] for case in MALFORMED]
)
def test_one_malformed_event_among_valid_ones_gets_the_strict_reason(
    index: int, mutate: Any
) -> None:
    items = docs(index, 5)
    mutate(items[2])
    values = encoded(items)
    got = batch(values)
    assert got == [strict(v) for v in values]
    assert isinstance(got[2], str)
    assert all(isinstance(g, dict) for i, g in enumerate(got) if i != 2)


def test_a_bad_value_shared_by_several_events_refuses_each_of_them() -> None:
    items = docs(0, 6)
    for i in (1, 4):
        items[i]["tenant"] = "acme corp"
    items[5]["safety_filters"] = ["pii-redaction", "bad filter"]
    items[3]["error_code"] = "upstream timeout"
    values = encoded(items)
    got = batch(values)
    assert got == [strict(v) for v in values]
    assert [isinstance(g, str) for g in got] == [False, True, False, True, True, True]
    assert got[1].startswith("tenant: ")
    assert got[5].startswith("safety_filters[1]: ")


def test_non_events_oversize_and_empty_batches() -> None:
    big = {**docs(0, 1)[0], "decision_tree": {"pad": "x" * MAX_EVENT_BYTES}}
    values = [b"{not json", b"[]", b"null", json.dumps(big).encode(), *encoded(docs(6, 1))]
    got = batch(values)
    assert got == [strict(v) for v in values]
    assert got[3].startswith("oversize: ")
    assert CODEC.decode_many([]) == []


def test_a_batch_below_four_is_decoded_strictly() -> None:
    values = [CODEC.encode(examples()[0])] * 4
    assert all(type(e) is SlmMetrics for e in CODEC.decode_many(values[:3]))
    loose = CODEC.decode_many(values)
    assert all(type(e) is not SlmMetrics and isinstance(e, SlmMetrics) for e in loose)
    assert batch(values[:3]) == batch(values)[:3] == [strict(values[0])] * 3


def test_a_batch_decoded_event_is_encoded_and_checked_as_the_strict_one() -> None:
    strict_event = examples()[0]
    values = [CODEC.encode(strict_event)] * 4
    loose = CODEC.decode_many(values)[0]
    assert isinstance(loose, SlmMetrics) and type(loose) is not SlmMetrics
    assert CODEC.encode(loose) == values[0]
    reasons = []
    for event in (strict_event, loose):
        with pytest.raises(ContractError) as refused:
            CODEC.encode(msgspec.structs.replace(event, decision_tree=[1]))
        reasons.append(refused.value.reason)
    assert reasons[0] == reasons[1]
    assert reasons[0].startswith("decision_tree: ")


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(mutated_event(), min_size=4, max_size=10))  # 4: batch decoder, not strict
def test_mutated_batches_get_the_strict_verdict_of_every_event(items: list[Any]) -> None:
    values = encoded(items)
    assert batch(values) == [strict(v) for v in values]
