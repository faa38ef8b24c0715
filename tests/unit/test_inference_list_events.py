"""Inference reads a sequence feature's events from the online reply's list values
(the feature store's LAST_N features, oldest first, ADR 0021)."""

from __future__ import annotations

from lathe.feature_store.v1 import message_pb2 as fs
from services.inference.app.model import LoadedModel


def test_list_values_of_the_online_reply_are_a_sequence_s_events() -> None:
    model = object.__new__(LoadedModel)  # _events reads nothing of the model for lists
    amounts = fs.Value(float64_list_value=fs.Float64List(values=[1.5, 2.0]))
    merchants = fs.Value(string_list_value=fs.StringList(values=["m1", "m2"]))
    empty = fs.Value()
    empty.int64_list_value.SetInParent()
    assert model._events(amounts, 0) == [1.5, 2.0]
    assert model._events(merchants, 0) == ["m1", "m2"]
    assert model._events(empty, 0) == []
    assert model._events(fs.Value(), 0) is None
