"""The producer's check (``Codec.encode``) rejects exactly what a consumer's decode rejects."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from somaagent.domain.events import EVENT_TYPES, Codec, ContractError, SlmMetrics
from somaagent.domain.events._model_events import EscalationInvocation

from ._event_examples import examples
from .test_events_codec import MALFORMED, Doc


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def _verdict(decode: Any, data: bytes) -> str:
    try:
        decode(data)
    except ContractError as exc:
        return exc.reason
    return "accepted"


def _checked(codec: Codec) -> Any:
    """What ``Codec.encode`` runs on its bytes."""
    return lambda data: codec._validate(data, codec._check.decoder)


def _doc(codec: Codec, index: int) -> Doc:
    doc: Doc = json.loads(codec.encode(examples()[index]))
    return doc


def test_every_free_form_object_field_is_checked_on_the_object_side(codec: Codec) -> None:
    """A new JSON-object field is found by its type, so none is left unchecked."""
    strict = set(EVENT_TYPES.values())  # the batch decoder's subclasses share these rules
    found = {
        cls.__name__: dict(fields) for cls, fields in codec._check._objects.items() if cls in strict
    }
    assert found == {
        "SlmMetrics": {"decision_tree": True},
        "EscalationInvocation": {
            "decision_tree": True,
            "source_slm_snapshot": False,
            "router_metadata": True,
        },
    }


@pytest.mark.parametrize(
    ("index", "mutate"),
    [case[1:3] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_the_check_decoder_rejects_every_malformed_event_with_the_consumers_reason(
    codec: Codec, index: int, mutate: Any
) -> None:
    doc = _doc(codec, index)
    mutate(doc)
    data = json.dumps(doc).encode()
    consumer = _verdict(codec.decode, data)
    assert consumer != "accepted"
    assert _verdict(_checked(codec), data) == consumer


@pytest.mark.parametrize("index", range(len(examples())))
def test_the_check_decoder_accepts_every_valid_event(codec: Codec, index: int) -> None:
    data = codec.encode(examples()[index])
    assert _verdict(_checked(codec), data) == "accepted"
    assert _verdict(codec.decode, data) == "accepted"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({f"k{i}": i for i in range(65)}, "decision_tree"),
        ([1, 2], "decision_tree"),
        ("tree", "decision_tree"),
        (None, "decision_tree"),
        ({f"k{i}": i for i in range(65)}, "router_metadata"),
        ({f"k{i}": i for i in range(65)}, "source_slm_snapshot"),
        ([], "source_slm_snapshot"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)
def test_free_form_objects_are_rejected_on_encode_as_the_consumer_rejects_their_bytes(
    codec: Codec, value: Any, field: str
) -> None:
    event = next(e for e in examples() if hasattr(e, field))
    broken = msgspec.structs.replace(event, **{field: value})
    with pytest.raises(ContractError) as on_encode:
        codec.encode(broken)
    doc = json.loads(codec.encode(event))
    doc[field] = value
    with pytest.raises(ContractError) as on_decode:
        codec.decode(json.dumps(doc).encode())
    assert on_encode.value.reason == on_decode.value.reason


def test_objects_at_the_limit_and_an_absent_snapshot_are_accepted(codec: Codec) -> None:
    slm = next(e for e in examples() if isinstance(e, SlmMetrics))
    full = msgspec.structs.replace(slm, decision_tree={f"k{i}": [i] for i in range(64)})
    assert codec.decode(codec.encode(full)) == full
    esc = next(e for e in examples() if isinstance(e, EscalationInvocation))
    bare = msgspec.structs.replace(esc, source_slm_snapshot=None)
    assert codec.decode(codec.encode(bare)) == bare


def test_the_check_scans_the_objects_bytes_for_valid_json(codec: Codec) -> None:
    """Raw fields are still parsed as JSON: broken bytes inside one are not accepted."""
    data = codec.encode(examples()[0])
    broken = data.replace(b'"decision_tree":{', b'"decision_tree":{,', 1)
    assert broken != data
    assert _verdict(_checked(codec), broken).startswith("not JSON")
    assert _verdict(codec.decode, broken).startswith("not JSON")
