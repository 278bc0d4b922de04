"""The per-run store (SPEC §2, API.md "the store"), through the public API only."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

import anyio
import pytest
from helpers import eventually

import asyncflow as af

USER_ID = af.Key("user.id", int)

# A guard against a hang if the library deadlocks; never a timing assertion.
HANG_GUARD = 5.0


class FakeClock:
    """A clock for ``af.Store(clock=...)`` that only moves when told to."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def one_stage(
    *actions: af.Action, concurrency: int = 1, initial: dict[str, Any] | None = None
) -> af.Workflow:
    """A workflow of one stage ``s`` holding ``actions``."""
    return af.Workflow(
        "wf", stages=[af.Stage("s", actions=list(actions), concurrency=concurrency, initial=initial)]
    )


def ttl_store() -> tuple[af.Store, FakeClock]:
    """A store on a fake clock holding ``"short"`` (ttl 10 s) and ``"long"`` (no ttl)."""
    clock = FakeClock()
    store = af.Store(clock=clock)
    store.put("short", 1, ttl=10, tags={"t"}, properties={"p": 1})
    store.put("long", 2, tags={"t"}, properties={"p": 1})
    return store, clock


def expired_store() -> af.Store:
    """A store where ``"short"`` has expired and ``"long"`` is live."""
    store, clock = ttl_store()
    clock.advance(10)
    return store


# ---- put / get / get_or / delete ---------------------------------------------------------


def test_put_then_get_returns_value() -> None:
    """get returns the value that put stored."""
    store = af.Store()
    store.put("k", {"a": 1})
    assert store.get("k") == {"a": 1}


def test_put_overwrites_value() -> None:
    """A second put of the same key replaces the value."""
    store = af.Store()
    store.put("k", 1)
    store.put("k", 2)
    assert store.get("k") == 2


def test_store_constructor_seeds_entries() -> None:
    """af.Store(mapping) starts with the mapping's entries."""
    store = af.Store({"a": 1, "b": 2})
    assert store.snapshot() == {"a": 1, "b": 2}


def test_get_missing_raises_missing_key() -> None:
    """get of an absent key raises af.MissingKey."""
    with pytest.raises(af.MissingKey):
        af.Store().get("nope")


def test_missing_key_is_key_error_and_workflow_error() -> None:
    """af.MissingKey is both a KeyError and an af.WorkflowError."""
    with pytest.raises(af.MissingKey) as info:
        af.Store().get("nope")
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, af.WorkflowError)


def test_missing_key_message_names_key() -> None:
    """The MissingKey message names the missing key."""
    with pytest.raises(af.MissingKey) as info:
        af.Store().get("user.email")
    assert "user.email" in str(info.value)


def test_get_with_matching_type_returns_value() -> None:
    """get(key, type) returns the value when it is of that type."""
    store = af.Store({"n": 3})
    assert store.get("n", int) == 3


def test_get_with_wrong_type_raises_type_mismatch() -> None:
    """get(key, type) raises af.TypeMismatch when the value is of another type."""
    store = af.Store({"n": "three"})
    with pytest.raises(af.TypeMismatch):
        store.get("n", int)


def test_type_mismatch_is_type_error_and_workflow_error() -> None:
    """af.TypeMismatch is both a TypeError and an af.WorkflowError."""
    store = af.Store({"n": "three"})
    with pytest.raises(af.TypeMismatch) as info:
        store.get("n", int)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, af.WorkflowError)


def test_type_mismatch_message_names_key_expected_and_actual() -> None:
    """The TypeMismatch message names the key, the expected type and the actual type."""
    store = af.Store({"retries": "three"})
    with pytest.raises(af.TypeMismatch) as info:
        store.get("retries", int)
    message = str(info.value)
    assert "retries" in message
    assert "int" in message
    assert "str" in message


@pytest.mark.parametrize(
    ("held", "asked", "message"),
    [
        ("one", int, "store key 'k' holds a str, not an int"),
        (1, str, "store key 'k' holds an int, not a str"),
        (1, type, "store key 'k' holds an int, not a type"),
        ([], dict, "store key 'k' holds a list, not a dict"),
        (1.5, Exception, "store key 'k' holds a float, not an Exception"),
        (None, int, "store key 'k' holds a NoneType, not an int"),
    ],
)
def test_type_mismatch_message_reads_with_the_right_article(held: object, asked: type, message: str) -> None:
    """The TypeMismatch message puts "an" before a type name that starts with a vowel, "a" before others."""
    with pytest.raises(af.TypeMismatch) as info:
        af.Store({"k": held}).get("k", asked)
    assert str(info.value) == message


def test_type_mismatch_message_names_each_type_of_a_tuple_with_its_article() -> None:
    """A tuple of types asked for reads "an int or a str" in the TypeMismatch message."""
    with pytest.raises(af.TypeMismatch) as info:
        af.Store({"k": b"x"}).get("k", (int, str))  # type: ignore[arg-type]  # isinstance takes a tuple
    assert str(info.value) == "store key 'k' holds a bytes, not an int or a str"


def test_get_with_type_on_missing_key_raises_missing_key() -> None:
    """get(key, type) of an absent key raises MissingKey, not TypeMismatch."""
    with pytest.raises(af.MissingKey):
        af.Store().get("nope", int)


def test_get_or_returns_default_for_missing_key() -> None:
    """get_or returns the default when the key is absent."""
    assert af.Store().get_or("nope", 7) == 7


def test_get_or_returns_value_for_present_key() -> None:
    """get_or returns the stored value, not the default, when the key is present."""
    store = af.Store({"k": 1})
    assert store.get_or("k", 7) == 1


def test_get_or_returns_default_for_missing_key_with_type() -> None:
    """get_or(key, default, type) returns the default when the key is absent."""
    assert af.Store().get_or("nope", 7, int) == 7


def test_get_or_raises_type_mismatch_for_present_value_of_wrong_type() -> None:
    """get_or raises af.TypeMismatch naming the key, the type asked for and the one held."""
    store = af.Store({"k": "one"})
    with pytest.raises(af.TypeMismatch, match="store key 'k' holds a str, not an int") as info:
        store.get_or("k", 7, int)
    assert (info.value.key, info.value.expected, info.value.actual) == ("k", int, "one")


def test_delete_present_key_returns_true() -> None:
    """delete of a present key returns True."""
    store = af.Store({"k": 1})
    assert store.delete("k") is True


def test_delete_removes_key() -> None:
    """After delete the key is gone."""
    store = af.Store({"k": 1})
    store.delete("k")
    assert "k" not in store


def test_delete_missing_key_returns_false() -> None:
    """delete of an absent key returns False and raises nothing."""
    assert af.Store().delete("nope") is False


def test_put_of_none_is_a_present_value() -> None:
    """None is a value like any other: stored, found, and returned by get_or over the default."""
    store = af.Store()
    store.put("k", None)
    assert "k" in store
    assert store.get_or("k", 7) is None


# ---- mapping protocol -------------------------------------------------------------------


def test_setitem_then_getitem() -> None:
    """store[k] = v then store[k] returns v."""
    store = af.Store()
    store["k"] = "v"
    assert store["k"] == "v"


def test_getitem_missing_raises_missing_key() -> None:
    """store[k] of an absent key raises af.MissingKey."""
    with pytest.raises(af.MissingKey):
        af.Store()["nope"]


def test_getitem_missing_is_caught_by_except_key_error() -> None:
    """A missing store[k] is caught by a plain `except KeyError`."""
    store = af.Store()
    try:
        store["nope"]
    except KeyError:
        caught = True
    else:
        caught = False
    assert caught


def test_delitem_removes_key() -> None:
    """del store[k] removes a present key."""
    store = af.Store({"k": 1, "j": 2})
    del store["k"]
    assert store.snapshot() == {"j": 2}


def test_delitem_missing_raises_missing_key() -> None:
    """del store[k] of an absent key raises af.MissingKey naming the key."""
    store = af.Store()
    with pytest.raises(af.MissingKey, match="ghost"):
        del store["ghost"]


def test_contains() -> None:
    """`in` is True for a present key and False for an absent one."""
    store = af.Store({"k": 1})
    assert "k" in store
    assert "nope" not in store


def test_len_counts_entries() -> None:
    """len is the number of entries."""
    store = af.Store()
    assert len(store) == 0
    store["a"] = 1
    store["b"] = 2
    assert len(store) == 2


def test_iteration_is_insertion_order() -> None:
    """Iterating a store yields its keys in insertion order."""
    store = af.Store()
    for key in ["zeta", "alpha", "mid"]:
        store[key] = key
    assert list(store) == ["zeta", "alpha", "mid"]


def test_overwrite_keeps_position_in_iteration() -> None:
    """Overwriting a key keeps its place in iteration order, as in a dict."""
    store = af.Store({"a": 1, "b": 2})
    store["a"] = 10
    assert list(store) == ["a", "b"]


def test_delete_then_put_moves_key_to_end() -> None:
    """A key deleted and put again goes to the end of iteration order, as in a dict."""
    store = af.Store({"a": 1, "b": 2})
    del store["a"]
    store["a"] = 3
    assert list(store) == ["b", "a"]


def test_keys_items_values_in_insertion_order() -> None:
    """keys, items and values list the entries in insertion order."""
    store = af.Store()
    store["b"] = 2
    store["a"] = 1
    assert list(store.keys()) == ["b", "a"]
    assert list(store.items()) == [("b", 2), ("a", 1)]
    assert list(store.values()) == [2, 1]


# ---- bad keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [3, None, 2.5, ("a",)])
def test_put_with_non_str_key_raises_type_error_naming_it(bad: Any) -> None:
    """put with a key that is neither str nor af.Key raises TypeError naming the key."""
    with pytest.raises(TypeError, match=re.escape(repr(bad))):
        af.Store().put(bad, 1)


@pytest.mark.parametrize("bad", [3, None])
def test_get_with_non_str_key_raises_type_error_naming_it(bad: Any) -> None:
    """get with a key that is neither str nor af.Key raises TypeError naming the key."""
    with pytest.raises(TypeError, match=repr(bad)):
        af.Store().get(bad)


@pytest.mark.parametrize("bad", [3, None])
def test_setitem_with_non_str_key_raises_type_error(bad: Any) -> None:
    """store[bad] = v raises TypeError naming the key and stores nothing."""
    store = af.Store()
    with pytest.raises(TypeError, match=repr(bad)):
        store[bad] = 1
    assert len(store) == 0


@pytest.mark.parametrize("bad", [3, None])
def test_getitem_with_non_str_key_raises_type_error(bad: Any) -> None:
    """store[bad] raises TypeError (not MissingKey) naming the key."""
    store = af.Store()
    with pytest.raises(TypeError, match=repr(bad)) as info:
        store[bad]
    assert not isinstance(info.value, KeyError)


@pytest.mark.parametrize("bad", [3, None])
def test_delete_with_non_str_key_raises_type_error(bad: Any) -> None:
    """delete and del with a bad key raise TypeError naming the key."""
    store = af.Store()
    with pytest.raises(TypeError, match=repr(bad)):
        store.delete(bad)
    with pytest.raises(TypeError, match=repr(bad)):
        del store[bad]


def test_get_or_with_non_str_key_raises_type_error() -> None:
    """get_or with a bad key raises TypeError instead of returning the default."""
    with pytest.raises(TypeError, match="None"):
        af.Store().get_or(None, 1)


def test_contains_with_non_str_key_is_false() -> None:
    """`bad in store` is False (like a dict), not an error."""
    store = af.Store({"3": 1})
    assert 3 not in store


# ---- TTL ----------------------------------------------------------------------------------


def test_ttl_entry_readable_before_expiry() -> None:
    """An entry with a ttl reads normally before the ttl passes."""
    store, clock = ttl_store()
    clock.advance(9.9)
    assert store.get("short") == 1


def test_ttl_expired_get_raises_missing_key() -> None:
    """get of an expired entry raises af.MissingKey."""
    with pytest.raises(af.MissingKey, match="short"):
        expired_store().get("short")


def test_ttl_expired_missing_key_says_it_expired() -> None:
    """The af.MissingKey for an expired entry says it has expired (and is marked so)."""
    with pytest.raises(af.MissingKey) as info:
        expired_store().get("short")
    assert info.value.expired is True
    assert str(info.value) == "store key 'short' has expired"


def test_a_key_of_a_str_subclass_is_stored_under_its_text() -> None:
    """A key that is an instance of a str subclass is stored under the same text."""

    class Name(str):
        pass

    store = af.Store()
    store.delete(Name("a"))
    store.put(Name("a"), 1)
    assert store.snapshot() == {"a": 1}
    assert store.delete(Name("a")) is True


def test_ttl_expired_getitem_raises_missing_key() -> None:
    """store[k] of an expired entry raises af.MissingKey."""
    with pytest.raises(af.MissingKey):
        expired_store()["short"]


def test_ttl_expired_get_or_returns_default() -> None:
    """get_or of an expired entry returns the default."""
    assert expired_store().get_or("short", "dflt") == "dflt"


def test_ttl_expired_not_in_store() -> None:
    """An expired entry is not `in` the store."""
    assert "short" not in expired_store()


def test_ttl_expired_not_counted_by_len() -> None:
    """len does not count an expired entry."""
    assert len(expired_store()) == 1


def test_ttl_expired_not_iterated() -> None:
    """Iteration, keys, items and values skip an expired entry."""
    store = expired_store()
    assert list(store) == ["long"]
    assert list(store.keys()) == ["long"]
    assert list(store.items()) == [("long", 2)]
    assert list(store.values()) == [2]


def test_ttl_expired_not_in_snapshot() -> None:
    """snapshot leaves out an expired entry."""
    assert expired_store().snapshot() == {"long": 2}


def test_ttl_expired_not_found_by_tag_or_property() -> None:
    """find by tag or property leaves out an expired entry."""
    store = expired_store()
    assert store.find(tag="t") == ["long"]
    assert store.find(property=("p", 1)) == ["long"]


def test_ttl_expired_delete_returns_false() -> None:
    """delete of an expired entry returns False, as for a missing key."""
    assert expired_store().delete("short") is False


def test_ttl_expired_delitem_raises_missing_key() -> None:
    """del store[k] of an expired entry raises af.MissingKey."""
    store = expired_store()
    with pytest.raises(af.MissingKey):
        del store["short"]


def test_ttl_expired_tags_of_raises_missing_key() -> None:
    """tags_of and properties_of of an expired entry raise af.MissingKey."""
    store = expired_store()
    with pytest.raises(af.MissingKey):
        store.tags_of("short")
    with pytest.raises(af.MissingKey):
        store.properties_of("short")


def test_ttl_expired_not_in_clone() -> None:
    """clone leaves out an expired entry."""
    assert expired_store().clone().snapshot() == {"long": 2}


def test_ttl_expired_not_merged() -> None:
    """merge from a store leaves out its expired entries."""
    target = af.Store()
    target.merge(expired_store())
    assert target.snapshot() == {"long": 2}


def test_ttl_expired_key_does_not_conflict_in_merge() -> None:
    """An expired entry on our side is no conflict for merge(on_conflict="error")."""
    store = expired_store()
    store.merge({"short": 5}, on_conflict="error")
    assert store.get("short") == 5


def test_ttl_expired_key_is_replaced_by_merge_keep() -> None:
    """merge(on_conflict="keep") fills in a key whose entry on our side has expired."""
    store = expired_store()
    store.merge({"short": 5}, on_conflict="keep")
    assert store.get("short") == 5


def test_ttl_expired_key_put_again_goes_to_end() -> None:
    """A key put again after its entry expired goes to the end of iteration, like a new key."""
    store = expired_store()
    store.put("short", 3)
    assert list(store) == ["long", "short"]


def test_ttl_as_timedelta() -> None:
    """A timedelta ttl works like the same number of seconds."""
    clock = FakeClock()
    store = af.Store(clock=clock)
    store.put("k", 1, ttl=timedelta(minutes=1))
    clock.advance(59)
    assert "k" in store
    clock.advance(1)
    assert "k" not in store


def test_ttl_fractional_seconds() -> None:
    """A float ttl below one second is honoured."""
    clock = FakeClock()
    store = af.Store(clock=clock)
    store.put("k", 1, ttl=0.05)
    clock.advance(0.04)
    assert "k" in store
    clock.advance(0.02)
    assert "k" not in store


async def test_ttl_on_real_clock_expires() -> None:
    """With the default clock, an entry is there until its ttl has passed, then reads as missing."""
    store = af.Store()
    put_at = time.monotonic()
    store.put("k", 1, ttl=0.2)
    assert "k" in store
    await eventually(lambda: "k" not in store)
    assert time.monotonic() - put_at >= 0.2 * 0.99  # (the store's clock is the wall clock)


def test_put_without_ttl_clears_previous_ttl() -> None:
    """Putting a key again without ttl makes it permanent."""
    store, clock = ttl_store()
    store.put("short", 1)
    clock.advance(1_000)
    assert store.get("short") == 1


def test_ttl_counts_from_latest_put() -> None:
    """Putting a key again with a ttl restarts its ttl from that put."""
    store, clock = ttl_store()
    clock.advance(8)
    store.put("short", 1, ttl=10)
    clock.advance(8)
    assert "short" in store


@pytest.mark.parametrize("bad", [0, -1, -0.5, timedelta(0), timedelta(seconds=-3)])
def test_non_positive_ttl_rejected_naming_key(bad: Any) -> None:
    """A zero or negative ttl is a ValueError whose message names the key."""
    with pytest.raises(ValueError, match=r"session\.token"):
        af.Store().put("session.token", 1, ttl=bad)


@pytest.mark.parametrize("bad", ["10", [1], True])
def test_non_numeric_ttl_rejected_naming_key(bad: Any) -> None:
    """A ttl that is not seconds or a timedelta is a TypeError whose message names the key."""
    with pytest.raises(TypeError, match=r"session\.token"):
        af.Store().put("session.token", 1, ttl=bad)


def test_rejected_ttl_leaves_new_key_absent() -> None:
    """A put rejected for its ttl does not store the key."""
    store = af.Store()
    with pytest.raises(ValueError):
        store.put("k", 1, ttl=0)
    assert "k" not in store


def test_rejected_ttl_leaves_existing_entry_unchanged() -> None:
    """A put rejected for its ttl leaves the previous value of the key in place."""
    store = af.Store({"k": "old"})
    with pytest.raises(TypeError):
        store.put("k", "new", ttl="soon")
    assert store.get("k") == "old"


def test_rejected_tags_leave_store_unchanged() -> None:
    """A put rejected because tags is a bare string stores nothing."""
    store = af.Store()
    with pytest.raises(TypeError, match="k"):
        store.put("k", 1, tags="urgent")
    assert "k" not in store


# ---- tags and properties ------------------------------------------------------------------


def tagged_store() -> af.Store:
    """A store of four entries with assorted tags and properties."""
    store = af.Store()
    store.put("a", 1, tags={"red", "big"}, properties={"source": "api", "v": 1})
    store.put("b", 2, tags={"red"}, properties={"source": "db"})
    store.put("c", 3, tags={"blue", "big"})
    store.put("d", 4)
    return store


def test_find_by_tag() -> None:
    """find(tag=t) returns the keys carrying t, in insertion order."""
    assert tagged_store().find(tag="red") == ["a", "b"]


def test_find_by_unknown_tag_is_empty() -> None:
    """find(tag=t) of a tag no entry carries returns an empty list."""
    assert tagged_store().find(tag="green") == []


def test_find_by_any_tags() -> None:
    """find(any_tags=...) returns keys carrying at least one of the tags."""
    assert tagged_store().find(any_tags={"blue", "red"}) == ["a", "b", "c"]


def test_find_by_all_tags() -> None:
    """find(all_tags=...) returns keys carrying every one of the tags."""
    assert tagged_store().find(all_tags=["red", "big"]) == ["a"]


def test_find_by_property() -> None:
    """find(property=(name, value)) returns keys whose property has that value."""
    assert tagged_store().find(property=("source", "api")) == ["a"]


def test_find_by_property_value_must_match() -> None:
    """find(property=...) does not match an entry whose property has another value."""
    assert tagged_store().find(property=("v", 2)) == []


def test_find_criteria_combine_with_and() -> None:
    """Several find criteria must all match."""
    store = tagged_store()
    assert store.find(tag="big", property=("source", "api")) == ["a"]
    assert store.find(tag="red", all_tags={"big"}) == ["a"]


@pytest.mark.parametrize(
    "criteria",
    [{"tag": "blue"}, {"any_tags": {"blue"}}, {"all_tags": {"blue"}}, {"property": ("source", "db")}],
    ids=["tag", "any_tags", "all_tags", "property"],
)
def test_find_looks_past_entries_that_do_not_match(criteria: dict[str, Any]) -> None:
    """find goes on past the entries that do not match to the ones after them that do."""
    store = af.Store()
    store.put("first", 0, tags={"red"}, properties={"source": "api"})
    store.put("later", 1, tags={"blue"}, properties={"source": "db"})
    assert store.find(**criteria) == ["later"]


def test_find_returns_list_of_str() -> None:
    """find returns a list of key names."""
    result = tagged_store().find(tag="big")
    assert isinstance(result, list)
    assert result == ["a", "c"]


def test_tags_of_returns_tags() -> None:
    """tags_of returns the entry's tags as a frozenset."""
    assert tagged_store().tags_of("a") == frozenset({"red", "big"})


def test_tags_of_untagged_is_empty() -> None:
    """tags_of an entry without tags is empty."""
    assert tagged_store().tags_of("d") == frozenset()


def test_properties_of_returns_properties() -> None:
    """properties_of returns the entry's properties."""
    assert tagged_store().properties_of("a") == {"source": "api", "v": 1}


def test_properties_of_is_a_copy() -> None:
    """Changing the dict properties_of returns does not change the entry."""
    store = tagged_store()
    store.properties_of("a")["source"] = "hacked"
    assert store.properties_of("a")["source"] == "api"


def test_properties_of_an_entry_without_metadata_is_empty() -> None:
    """properties_of an entry put without tags or properties is an empty dict."""
    assert tagged_store().properties_of("d") == {}


def test_tags_of_missing_key_raises_missing_key() -> None:
    """tags_of and properties_of of an absent key raise af.MissingKey."""
    store = af.Store()
    with pytest.raises(af.MissingKey):
        store.tags_of("nope")
    with pytest.raises(af.MissingKey):
        store.properties_of("nope")


def test_put_replaces_metadata() -> None:
    """put replaces the entry's tags and properties, it does not add to them."""
    store = tagged_store()
    store.put("a", 10, tags={"green"})
    assert store.tags_of("a") == frozenset({"green"})
    assert store.properties_of("a") == {}
    assert store.find(tag="red") == ["b"]


def test_setitem_clears_metadata() -> None:
    """store[k] = v replaces the entry with one without tags or properties."""
    store = tagged_store()
    store["a"] = 10
    assert store.tags_of("a") == frozenset()
    assert store.find(property=("source", "api")) == []


def test_delete_removes_metadata() -> None:
    """A key deleted and put again without tags carries none."""
    store = tagged_store()
    store.delete("a")
    store.put("a", 1)
    assert store.tags_of("a") == frozenset()


def test_properties_are_copied_at_put() -> None:
    """Changing the properties dict after put does not change the entry."""
    props = {"source": "api"}
    store = af.Store()
    store.put("k", 1, properties=props)
    props["source"] = "db"
    assert store.find(property=("source", "api")) == ["k"]


# ---- snapshot / clone / merge -------------------------------------------------------------


def test_snapshot_is_plain_dict() -> None:
    """snapshot returns a plain dict of the entries."""
    snap = af.Store({"a": 1, "b": 2}).snapshot()
    assert type(snap) is dict
    assert snap == {"a": 1, "b": 2}


def test_snapshot_is_a_copy() -> None:
    """Changing a snapshot does not change the store, and vice versa."""
    store = af.Store({"a": 1})
    snap = store.snapshot()
    snap["b"] = 2
    store["c"] = 3
    assert store.snapshot() == {"a": 1, "c": 3}
    assert snap == {"a": 1, "b": 2}


def test_snapshot_keeps_insertion_order() -> None:
    """snapshot lists keys in insertion order."""
    store = af.Store()
    store["z"] = 1
    store["a"] = 2
    assert list(store.snapshot()) == ["z", "a"]


def test_clone_has_same_entries() -> None:
    """clone returns a store with the same entries."""
    store = af.Store({"a": 1, "b": 2})
    clone = store.clone()
    assert isinstance(clone, af.Store)
    assert clone.snapshot() == {"a": 1, "b": 2}


def test_clone_writes_do_not_reach_original() -> None:
    """Writes and deletes on a clone do not show in the original."""
    store = af.Store({"a": 1, "b": 2})
    clone = store.clone()
    clone["c"] = 3
    clone["a"] = 10
    del clone["b"]
    assert store.snapshot() == {"a": 1, "b": 2}


def test_original_writes_do_not_reach_clone() -> None:
    """Writes and deletes on the original do not show in the clone."""
    store = af.Store({"a": 1, "b": 2})
    clone = store.clone()
    store["c"] = 3
    store["a"] = 10
    del store["b"]
    assert clone.snapshot() == {"a": 1, "b": 2}


def test_clone_keeps_metadata() -> None:
    """clone keeps each entry's tags and properties."""
    clone = tagged_store().clone()
    assert clone.find(tag="red") == ["a", "b"]
    assert clone.properties_of("a") == {"source": "api", "v": 1}


def test_clone_keeps_ttl() -> None:
    """An entry with a ttl still expires in a clone."""
    store, clock = ttl_store()
    clone = store.clone()
    clock.advance(10)
    assert "short" not in clone
    assert "long" in clone


def test_clone_metadata_is_independent() -> None:
    """Replacing an entry's tags in the original does not change the clone's."""
    store = tagged_store()
    clone = store.clone()
    store.put("a", 1, tags={"green"})
    assert clone.tags_of("a") == frozenset({"red", "big"})


def test_merge_mapping_adds_entries() -> None:
    """merge(mapping) adds the mapping's entries."""
    store = af.Store({"a": 1})
    store.merge({"b": 2})
    assert store.snapshot() == {"a": 1, "b": 2}


def test_merge_of_a_typed_key_with_a_value_of_another_type_merges_nothing() -> None:
    """merge({af.Key("n", int): "x", "other": 1}) is af.TypeMismatch, as store[key] = "x" is; no merge."""
    store = af.Store()
    with pytest.raises(af.TypeMismatch, match="'n'"):
        store.merge({"other": 1, af.Key("n", int): "x"})
    assert dict(store) == {}


def test_merge_of_a_typed_key_with_a_value_of_its_type_merges_it() -> None:
    """merge({af.Key("n", int): 5}) writes 5 under "n"."""
    store = af.Store()
    store.merge({af.Key("n", int): 5})
    assert store.snapshot() == {"n": 5}


def test_merge_of_something_else_is_a_type_error_showing_it() -> None:
    """merge(42) raises TypeError saying what merge takes and showing what it got."""
    with pytest.raises(TypeError, match=r"Store\.merge takes a Store or a mapping, got 42"):
        af.Store().merge(42)  # type: ignore[arg-type]


def test_merge_of_a_store_keeps_each_entry_s_time_to_live() -> None:
    """An entry merged from another store expires when it would have there."""
    source, clock = ttl_store()
    target = af.Store(clock=clock)
    target.merge(source)
    clock.advance(10)
    assert target.snapshot() == {"long": 2}


async def test_run_refuses_an_initial_store_with_a_mistyped_typed_key() -> None:
    """af.run(wf, store={af.Key("n", int): "x"}) raises af.TypeMismatch before any action runs."""
    ran: list[bool] = []

    @af.action
    async def mark(ctx: af.ActionContext) -> None:
        ran.append(True)

    with pytest.raises(af.TypeMismatch, match="'n'"):
        await af.run(af.Workflow("w", stages=[af.Stage("s", actions=[mark])]), store={af.Key("n", int): "x"})  # type: ignore[dict-item]
    assert ran == []


def test_merge_overwrite_is_default() -> None:
    """merge without on_conflict overwrites keys present on both sides."""
    store = af.Store({"a": 1, "b": 2})
    store.merge({"a": 10, "c": 3})
    assert store.snapshot() == {"a": 10, "b": 2, "c": 3}


def test_merge_overwrite_explicit() -> None:
    """merge(on_conflict="overwrite") takes the other side's value."""
    store = af.Store({"a": 1})
    store.merge({"a": 10}, on_conflict="overwrite")
    assert store.get("a") == 10


def test_merge_keep_keeps_ours() -> None:
    """merge(on_conflict="keep") keeps our value and still adds new keys."""
    store = af.Store({"a": 1})
    store.merge({"a": 10, "b": 2}, on_conflict="keep")
    assert store.snapshot() == {"a": 1, "b": 2}


def test_merge_error_raises_store_conflict() -> None:
    """merge(on_conflict="error") raises af.StoreConflict on a key present on both sides."""
    store = af.Store({"a": 1})
    with pytest.raises(af.StoreConflict):
        store.merge({"a": 10}, on_conflict="error")


def test_store_conflict_is_value_error_and_workflow_error() -> None:
    """af.StoreConflict is a ValueError and an af.WorkflowError."""
    store = af.Store({"a": 1})
    with pytest.raises(af.StoreConflict) as info:
        store.merge({"a": 10}, on_conflict="error")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, af.WorkflowError)


def test_store_conflict_names_conflicting_keys() -> None:
    """The StoreConflict message names every conflicting key and no other."""
    store = af.Store({"alpha": 1, "beta": 2, "gamma": 3})
    with pytest.raises(af.StoreConflict) as info:
        store.merge({"alpha": 0, "gamma": 0, "delta": 0}, on_conflict="error")
    message = str(info.value)
    assert "alpha" in message
    assert "gamma" in message
    assert "delta" not in message
    assert "beta" not in message


def test_merge_error_merges_nothing() -> None:
    """merge(on_conflict="error") that conflicts leaves the store unchanged, new keys included."""
    store = af.Store({"a": 1})
    with pytest.raises(af.StoreConflict):
        store.merge({"new1": 1, "a": 10, "new2": 2}, on_conflict="error")
    assert store.snapshot() == {"a": 1}


def test_merge_error_without_conflict_merges() -> None:
    """merge(on_conflict="error") with no common key merges everything."""
    store = af.Store({"a": 1})
    store.merge({"b": 2}, on_conflict="error")
    assert store.snapshot() == {"a": 1, "b": 2}


@pytest.mark.parametrize("bad", ["replace", "OVERWRITE", None])
def test_merge_bad_on_conflict_rejected(bad: Any) -> None:
    """An unknown on_conflict value is a ValueError naming it, and nothing is merged."""
    store = af.Store({"a": 1})
    with pytest.raises(ValueError, match=repr(bad)):
        store.merge({"b": 2}, on_conflict=bad)
    assert store.snapshot() == {"a": 1}


def test_merge_from_store_keeps_metadata() -> None:
    """merge from an af.Store brings the other side's tags and properties."""
    store = af.Store()
    store.merge(tagged_store())
    assert store.find(tag="red") == ["a", "b"]
    assert store.properties_of("b") == {"source": "db"}


def test_merge_from_store_respects_on_conflict() -> None:
    """merge from an af.Store honours on_conflict="keep"."""
    store = af.Store({"a": "ours"})
    store.merge(af.Store({"a": "theirs", "z": 1}), on_conflict="keep")
    assert store.snapshot() == {"a": "ours", "z": 1}


def test_merge_does_not_change_other_store() -> None:
    """merge leaves the other store as it was."""
    other = af.Store({"b": 2})
    store = af.Store({"a": 1})
    store.merge(other)
    store["b"] = 20
    assert other.snapshot() == {"b": 2}


def test_merge_mapping_overwrite_replaces_metadata() -> None:
    """Overwriting a tagged entry by merging a plain mapping drops its old tags."""
    store = tagged_store()
    store.merge({"a": 10})
    assert store.tags_of("a") == frozenset()


def test_merge_rejects_non_mapping() -> None:
    """merge of something that is neither a Store nor a mapping is a TypeError."""
    with pytest.raises(TypeError):
        af.Store().merge([("a", 1)])


def test_merge_mapping_with_bad_key_rejected() -> None:
    """merge of a mapping with a non-str key raises TypeError naming the key, merging nothing."""
    store = af.Store()
    with pytest.raises(TypeError, match="42"):
        store.merge({"ok": 1, 42: 2})
    assert store.snapshot() == {}


# ---- typed keys ---------------------------------------------------------------------------


def test_key_setitem_getitem_round_trip() -> None:
    """store[KEY] = v then store[KEY] returns v."""
    store = af.Store()
    store[USER_ID] = 3
    assert store[USER_ID] == 3


def test_key_and_its_name_address_the_same_entry() -> None:
    """An af.Key and its name string read and write the same entry."""
    store = af.Store()
    store[USER_ID] = 3
    assert store["user.id"] == 3
    assert USER_ID in store
    assert list(store) == ["user.id"]


def test_key_write_of_wrong_type_raises_type_mismatch() -> None:
    """Writing a str through an int Key raises af.TypeMismatch and stores nothing."""
    store = af.Store()
    with pytest.raises(af.TypeMismatch) as info:
        store[USER_ID] = "three"
    assert "user.id" in str(info.value)
    assert "user.id" not in store


def test_key_put_of_wrong_type_raises_type_mismatch() -> None:
    """put through an int Key with a str value raises af.TypeMismatch."""
    with pytest.raises(af.TypeMismatch):
        af.Store().put(USER_ID, "three")


def test_key_read_checks_type() -> None:
    """Reading through a Key raises af.TypeMismatch when the stored value is of another type."""
    store = af.Store({"user.id": "three"})
    with pytest.raises(af.TypeMismatch, match=r"user\.id"):
        store[USER_ID]
    with pytest.raises(af.TypeMismatch):
        store.get(USER_ID)


def test_key_get_or_checks_type() -> None:
    """get_or through a Key raises TypeMismatch for a present value of the wrong type."""
    store = af.Store({"user.id": "three"})
    with pytest.raises(af.TypeMismatch):
        store.get_or(USER_ID, 0)


def test_key_get_or_returns_default_when_missing() -> None:
    """get_or through a Key returns the default for an absent key."""
    assert af.Store().get_or(USER_ID, 0) == 0


def test_key_missing_raises_missing_key_naming_it() -> None:
    """Reading an absent Key raises af.MissingKey naming the key."""
    with pytest.raises(af.MissingKey, match=r"user\.id"):
        af.Store()[USER_ID]


def test_key_delete() -> None:
    """delete and del work through a Key."""
    store = af.Store({"user.id": 1})
    assert store.delete(USER_ID) is True
    store[USER_ID] = 2
    del store[USER_ID]
    assert len(store) == 0


def test_key_put_with_metadata() -> None:
    """put through a Key takes ttl, tags and properties like a str key."""
    store = af.Store()
    store.put(USER_ID, 3, tags={"user"}, properties={"pii": False})
    assert store.find(tag="user") == ["user.id"]
    assert store.tags_of(USER_ID) == frozenset({"user"})


def test_key_equality_by_name_and_type() -> None:
    """Two Keys with the same name and type are equal and hash alike."""
    assert af.Key("user.id", int) == USER_ID
    assert hash(af.Key("user.id", int)) == hash(USER_ID)
    assert af.Key("user.id", str) != USER_ID


@pytest.mark.parametrize("name", ["", 3, None])
def test_key_rejects_bad_name(name: Any) -> None:
    """af.Key with an empty or non-str name is a TypeError saying what the name must be and showing it."""
    with pytest.raises(
        TypeError, match=f"af.Key name must be a non-empty string, got {re.escape(repr(name))}"
    ):
        af.Key(name, int)


def test_key_rejects_non_class_type() -> None:
    """af.Key whose type is not a class is a TypeError naming the key."""
    with pytest.raises(TypeError, match=r"user\.id"):
        af.Key("user.id", "int")


# ---- run-level semantics ------------------------------------------------------------------


async def test_run_store_seeds_the_store() -> None:
    """af.run(wf, store={...}) puts the mapping's entries in the run's store."""
    seen: list[Any] = []

    @af.action
    async def read(ctx: af.ActionContext) -> None:
        seen.append(ctx.store.get("user.name"))

    await af.run(one_stage(read), store={"user.name": "Alice"})
    assert seen == ["Alice"]


async def test_result_store_is_dict_snapshot_at_end() -> None:
    """result.store is a plain dict of the store's entries at the end of the run."""

    @af.action
    async def write(ctx: af.ActionContext) -> None:
        ctx.store["b"] = 2
        del ctx.store["a"]

    result = await af.run(one_stage(write), store={"a": 1, "c": 3})
    assert type(result.store) is dict
    assert result.store == {"c": 3, "b": 2}


async def test_result_store_empty_without_seed() -> None:
    """A run without store= and without writes ends with an empty result.store."""

    @af.action
    async def noop(ctx: af.ActionContext) -> None:
        pass

    result = await af.run(one_stage(noop))
    assert result.store == {}


async def test_stage_initial_merged_overwriting() -> None:
    """Stage(initial=...) is merged into the store, overwriting seeded keys."""
    seen: dict[str, Any] = {}

    @af.action
    async def read(ctx: af.ActionContext) -> None:
        seen.update(ctx.store.snapshot())

    wf = one_stage(read, initial={"api.timeout": 30, "new": 1})
    await af.run(wf, store={"api.timeout": 5, "kept": True})
    assert seen == {"api.timeout": 30, "kept": True, "new": 1}


async def test_stage_initial_overwrites_earlier_stage_writes() -> None:
    """A later stage's initial data overwrites what an earlier stage's action wrote."""
    seen: list[Any] = []

    @af.action
    async def write(ctx: af.ActionContext) -> None:
        ctx.store["mode"] = "written"

    @af.action
    async def read(ctx: af.ActionContext) -> None:
        seen.append(ctx.store["mode"])

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("first", actions=[write]),
            af.Stage("second", actions=[read], initial={"mode": "initial"}),
        ],
    )
    await af.run(wf)
    assert seen == ["initial"]


async def test_stage_initial_not_merged_before_stage_starts() -> None:
    """A stage's initial data is not in the store while an earlier stage runs."""
    seen: list[bool] = []

    @af.action
    async def probe(ctx: af.ActionContext) -> None:
        seen.append("later" in ctx.store)

    @af.action
    async def noop(ctx: af.ActionContext) -> None:
        pass

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("first", actions=[probe]),
            af.Stage("second", actions=[noop], initial={"later": 1}),
        ],
    )
    result = await af.run(wf)
    assert seen == [False]
    assert result.store == {"later": 1}


async def test_dynamic_stage_initial_merged_when_it_starts() -> None:
    """A dynamically inserted stage's initial data is merged when that stage starts."""
    seen: list[Any] = []

    @af.action
    async def read(ctx: af.ActionContext) -> None:
        seen.append(ctx.store.get_or("dyn", None))

    @af.action
    async def insert(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("dynamic", actions=[read], initial={"dyn": "yes"}))
        seen.append(ctx.store.get_or("dyn", None))

    await af.run(one_stage(insert))
    assert seen == [None, "yes"]


async def test_action_reads_own_writes_at_once() -> None:
    """An action reads its own writes and deletes immediately."""
    seen: list[Any] = []

    @af.action
    async def write_read(ctx: af.ActionContext) -> None:
        ctx.store["k"] = 1
        seen.append(ctx.store["k"])
        ctx.store.put("k", 2, tags={"t"})
        seen.append((ctx.store["k"], ctx.store.find(tag="t")))
        del ctx.store["seeded"]
        seen.append("seeded" in ctx.store)

    await af.run(one_stage(write_read), store={"seeded": 0})
    assert seen == [1, (2, ["k"]), False]


async def test_action_sees_consistent_view_of_its_writes() -> None:
    """Inside an action, len, iteration and snapshot reflect its own writes and deletes."""
    seen: list[Any] = []

    @af.action
    async def write(ctx: af.ActionContext) -> None:
        ctx.store["c"] = 3
        ctx.store["a"] = 10
        del ctx.store["b"]
        seen.append((len(ctx.store), list(ctx.store), ctx.store.snapshot()))

    await af.run(one_stage(write), store={"a": 1, "b": 2})
    assert seen == [(2, ["a", "c"], {"a": 10, "c": 3})]


async def test_action_deleting_an_absent_key_completes() -> None:
    """An action that deletes a key the store does not hold gets False and the run completes unchanged."""
    seen: list[bool] = []

    @af.action
    async def tidy(ctx: af.ActionContext) -> None:
        seen.append(ctx.store.delete("never-there"))

    result = await af.run(one_stage(tidy), store={"a": 1})
    assert result.status is af.RunStatus.COMPLETED
    assert seen == [False]
    assert result.store == {"a": 1}


async def test_action_delete_then_put_moves_key_to_end() -> None:
    """Inside an action, a key deleted and put again goes to the end of iteration, as in a dict."""
    seen: list[list[str]] = []

    @af.action
    async def rewrite(ctx: af.ActionContext) -> None:
        del ctx.store["a"]
        ctx.store["a"] = 3
        seen.append(list(ctx.store))

    result = await af.run(one_stage(rewrite), store={"a": 1, "b": 2})
    assert seen == [["b", "a"]]
    assert list(result.store) == ["b", "a"]


async def test_next_sequential_action_sees_previous_writes() -> None:
    """A sequential action sees the writes and deletes of the action before it."""
    seen: list[Any] = []

    @af.action
    async def first(ctx: af.ActionContext) -> None:
        ctx.store["written"] = 1
        del ctx.store["gone"]

    @af.action
    async def second(ctx: af.ActionContext) -> None:
        seen.append((ctx.store.get_or("written", None), "gone" in ctx.store))

    await af.run(one_stage(first, second), store={"gone": 0})
    assert seen == [(1, False)]


async def test_next_stage_sees_previous_stage_writes() -> None:
    """An action of a later stage sees the writes of an earlier stage."""
    seen: list[Any] = []

    @af.action
    async def write(ctx: af.ActionContext) -> None:
        ctx.store["x"] = "from first"

    @af.action
    async def read(ctx: af.ActionContext) -> None:
        seen.append(ctx.store["x"])

    wf = af.Workflow("wf", stages=[af.Stage("first", actions=[write]), af.Stage("second", actions=[read])])
    await af.run(wf)
    assert seen == ["from first"]


async def test_dynamic_action_sees_inserting_action_writes() -> None:
    """A dynamic action inserted by A runs after A completes, so it sees A's writes."""
    seen: list[Any] = []

    @af.action
    async def child(ctx: af.ActionContext) -> None:
        seen.append(ctx.store.get_or("parent", None))

    @af.action
    async def parent(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(child)
        ctx.store["parent"] = "wrote"

    await af.run(one_stage(parent))
    assert seen == ["wrote"]


def sibling_actions(seen: dict[str, Any]) -> tuple[af.Action, af.Action, af.Action]:
    """Actions A, B, C for a stage of concurrency 2, ordered by events, not by time.

    A writes ``x`` and waits until B has looked; B looks while A runs, then waits
    for C, which the runner starts only once A has completed, and looks again.
    """
    a_wrote = anyio.Event()
    b_looked = anyio.Event()
    c_started = anyio.Event()

    @af.action(name="a")
    async def a(ctx: af.ActionContext) -> None:
        ctx.store["x"] = "from a"
        del ctx.store["seed"]
        a_wrote.set()
        await b_looked.wait()

    @af.action(name="b")
    async def b(ctx: af.ActionContext) -> None:
        await a_wrote.wait()
        seen["during"] = (ctx.store.get_or("x", None), "seed" in ctx.store, list(ctx.store))
        b_looked.set()
        await c_started.wait()
        seen["after"] = (ctx.store.get_or("x", None), "seed" in ctx.store)

    @af.action(name="c")
    async def c(ctx: af.ActionContext) -> None:
        c_started.set()

    return a, b, c


async def test_concurrent_sibling_does_not_see_write_before_completion() -> None:
    """A concurrently running sibling does not see A's writes or deletes while A still runs."""
    seen: dict[str, Any] = {}
    with anyio.fail_after(HANG_GUARD):
        await af.run(one_stage(*sibling_actions(seen), concurrency=2), store={"seed": 0})
    assert seen["during"] == (None, True, ["seed"])


async def test_concurrent_sibling_sees_write_after_completion() -> None:
    """Once A has completed, a still-running sibling sees A's writes and deletes."""
    seen: dict[str, Any] = {}
    with anyio.fail_after(HANG_GUARD):
        await af.run(one_stage(*sibling_actions(seen), concurrency=2), store={"seed": 0})
    assert seen["after"] == ("from a", False)


async def test_concurrent_distinct_writes_all_land() -> None:
    """Concurrent actions writing distinct keys all land in the store."""
    count = 20
    started = 0
    all_started = anyio.Event()

    def make(i: int) -> af.Action:
        @af.action(name=f"w{i}")
        async def write(ctx: af.ActionContext) -> None:
            nonlocal started
            ctx.store[f"k{i}"] = i
            started += 1
            if started == count:
                all_started.set()
            await all_started.wait()  # every action is in flight before any completes
            ctx.store[f"k{i}.done"] = True

        return write

    with anyio.fail_after(HANG_GUARD):
        result = await af.run(one_stage(*[make(i) for i in range(count)], concurrency=count))
    expected = {}
    for i in range(count):
        expected[f"k{i}"] = i
        expected[f"k{i}.done"] = True
    assert result.store == expected


async def test_failed_action_writes_discarded() -> None:
    """The writes of an action that fails are not in the store afterwards."""

    @af.action
    async def ok(ctx: af.ActionContext) -> None:
        ctx.store["ok"] = 1

    @af.action
    async def boom(ctx: af.ActionContext) -> None:
        ctx.store["new"] = 2
        ctx.store["ok"] = 99
        ctx.store.put("tagged", 3, tags={"t"})
        raise RuntimeError("boom")

    with pytest.raises(af.ActionFailed) as info:
        await af.run(one_stage(ok, boom))
    assert info.value.result is not None
    assert info.value.result.store == {"ok": 1}


async def test_failed_action_deletes_discarded() -> None:
    """The deletes of an action that fails are undone: the keys are still there."""

    @af.action
    async def boom(ctx: af.ActionContext) -> None:
        del ctx.store["a"]
        assert ctx.store.delete("b")
        raise RuntimeError("boom")

    with pytest.raises(af.ActionFailed) as info:
        await af.run(one_stage(boom), store={"a": 1, "b": 2})
    assert info.value.result is not None
    assert info.value.result.store == {"a": 1, "b": 2}


async def test_failed_action_in_concurrent_stage_discarded() -> None:
    """In a concurrent stage a failing action's writes and deletes are dropped, a done sibling's kept."""
    c_started = anyio.Event()

    @af.action(name="a")
    async def a(ctx: af.ActionContext) -> None:
        ctx.store["a"] = "kept"

    @af.action(name="b")
    async def b(ctx: af.ActionContext) -> None:
        ctx.store["b"] = "discarded"
        del ctx.store["seed"]
        await c_started.wait()  # the runner starts c only after a has completed
        raise RuntimeError("boom")

    @af.action(name="c")
    async def c(ctx: af.ActionContext) -> None:
        c_started.set()

    with anyio.fail_after(HANG_GUARD), pytest.raises(af.ActionFailed) as info:
        await af.run(one_stage(a, b, c, concurrency=2), store={"seed": 0})
    assert info.value.action_name == "b"
    assert info.value.result is not None
    assert info.value.result.store == {"seed": 0, "a": "kept"}


async def test_cancelled_sibling_writes_discarded() -> None:
    """In a concurrent stage, a sibling cancelled by another's failure leaves no writes."""
    a_wrote = anyio.Event()

    @af.action(name="a")
    async def a(ctx: af.ActionContext) -> None:
        ctx.store["a"] = "discarded"
        a_wrote.set()
        await anyio.sleep_forever()

    @af.action(name="b")
    async def b(ctx: af.ActionContext) -> None:
        await a_wrote.wait()
        raise RuntimeError("boom")

    with anyio.fail_after(HANG_GUARD), pytest.raises(af.ActionFailed) as info:
        await af.run(one_stage(a, b, concurrency=2))
    assert info.value.result is not None
    assert info.value.result.store == {}


async def test_run_does_not_mutate_seed_mapping() -> None:
    """The mapping passed as store= to af.run is not changed by the run."""
    seed = {"a": 1, "b": 2}

    @af.action
    async def write(ctx: af.ActionContext) -> None:
        ctx.store["a"] = 10
        ctx.store["c"] = 3
        del ctx.store["b"]

    result = await af.run(one_stage(write), store=seed)
    assert seed == {"a": 1, "b": 2}
    assert result.store == {"a": 10, "c": 3}


async def test_run_clones_store_argument() -> None:
    """An af.Store passed to af.run is cloned: the caller's store is not changed."""
    seed = af.Store({"a": 1, "b": 2})

    @af.action
    async def write(ctx: af.ActionContext) -> None:
        ctx.store["a"] = 10
        ctx.store["c"] = 3
        del ctx.store["b"]

    result = await af.run(one_stage(write), store=seed)
    assert seed.snapshot() == {"a": 1, "b": 2}
    assert result.store == {"a": 10, "c": 3}


async def test_run_store_argument_keeps_metadata() -> None:
    """An af.Store passed to af.run brings its tags and properties into the run."""
    seed = af.Store()
    seed.put("k", 1, tags={"t"}, properties={"p": "v"})
    seen: list[Any] = []

    @af.action
    async def read(ctx: af.ActionContext) -> None:
        seen.append((ctx.store.find(tag="t"), ctx.store.properties_of("k")))

    await af.run(one_stage(read), store=seed)
    assert seen == [(["k"], {"p": "v"})]


async def test_store_is_per_run_not_per_workflow() -> None:
    """Two runs of the same workflow each start from their own store."""

    @af.action
    async def bump(ctx: af.ActionContext) -> None:
        ctx.store["n"] = ctx.store.get_or("n", 0, int) + 1

    wf = one_stage(bump)
    first = await af.run(wf)
    second = await af.run(wf)
    assert first.store == {"n": 1}
    assert second.store == {"n": 1}


async def test_concurrent_runs_do_not_share_store() -> None:
    """Concurrent runs of one workflow do not see each other's writes."""
    both_wrote = anyio.Event()
    wrote = 0
    results: dict[str, dict[str, Any]] = {}

    @af.action
    async def write(ctx: af.ActionContext) -> None:
        nonlocal wrote
        ctx.store["mine"] = ctx.store["who"]
        wrote += 1
        if wrote == 2:
            both_wrote.set()
        await both_wrote.wait()

    wf = one_stage(write)

    async def go(who: str) -> None:
        results[who] = (await af.run(wf, store={"who": who})).store

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as group:
            group.start_soon(go, "x")
            group.start_soon(go, "y")
    assert results == {"x": {"who": "x", "mine": "x"}, "y": {"who": "y", "mine": "y"}}


async def test_bad_key_in_action_fails_the_run_with_type_error() -> None:
    """A bad key used inside an action fails the run with a TypeError cause."""

    @af.action
    async def bad(ctx: af.ActionContext) -> None:
        ctx.store[3] = "x"

    with pytest.raises(af.ActionFailed) as info:
        await af.run(one_stage(bad))
    assert isinstance(info.value.__cause__, TypeError)


async def test_ctx_store_after_action_finished_raises_context_closed() -> None:
    """ctx.store used after its action has finished raises af.ContextClosed."""
    kept: list[af.ActionContext] = []

    @af.action
    async def keep(ctx: af.ActionContext) -> None:
        ctx.store["k"] = 1
        kept.append(ctx)

    await af.run(one_stage(keep))
    with pytest.raises(af.ContextClosed):
        kept[0].store  # noqa: B018


async def test_ctx_store_untouched_during_action_raises_context_closed_after() -> None:
    """ctx.store first touched after its action finished also raises af.ContextClosed."""
    kept: list[af.ActionContext] = []

    @af.action
    async def keep(ctx: af.ActionContext) -> None:
        kept.append(ctx)

    await af.run(one_stage(keep))
    with pytest.raises(af.ContextClosed):
        kept[0].store  # noqa: B018


async def test_ctx_store_of_finished_action_closed_during_run() -> None:
    """A later action using an earlier action's ctx.store gets af.ContextClosed."""
    kept: list[af.ActionContext] = []
    seen: list[type[BaseException]] = []

    @af.action
    async def first(ctx: af.ActionContext) -> None:
        ctx.store["k"] = 1
        kept.append(ctx)

    @af.action
    async def second(ctx: af.ActionContext) -> None:
        try:
            kept[0].store["k"] = 2
        except af.ContextClosed as exc:
            seen.append(type(exc))

    result = await af.run(one_stage(first, second))
    assert seen == [af.ContextClosed]
    assert result.store == {"k": 1}


async def test_ctx_store_after_action_failed_raises_context_closed() -> None:
    """ctx.store of an action that failed raises af.ContextClosed afterwards."""
    kept: list[af.ActionContext] = []

    @af.action
    async def boom(ctx: af.ActionContext) -> None:
        ctx.store["k"] = 1
        kept.append(ctx)
        raise RuntimeError("boom")

    with pytest.raises(af.ActionFailed):
        await af.run(one_stage(boom))
    with pytest.raises(af.ContextClosed):
        kept[0].store  # noqa: B018
