"""The per-run key-value store, typed keys, and per-action write buffers.

Each run owns one :class:`Store`. An action sees the run's store through an
*overlay*: its writes and deletes land in the overlay (so the action reads
them at once), and become visible to the rest of the run only when the
action completes. When the action fails, the overlay is dropped, so a failed
action leaves no trace in the store. That is the unit retries and durable
checkpoints build on.
"""

from __future__ import annotations

import builtins
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Generic, Literal, TypeVar, overload

from .errors import MissingKey, StoreConflict, TypeMismatch

T = TypeVar("T")

# What the store reads the time from for TTLs: a Clock's ``now`` (asyncflow has one Clock type).
Now = Callable[[], float]
# Checks a value for a key (durable runs: that it is JSON), raising if it is not.
ValueCheck = Callable[[str, Any], Any]


class Key(Generic[T]):
    """A typed store key: ``USER_ID = af.Key("user.id", int)``.

    ``store[USER_ID]`` is an ``int`` to mypy, and writes and reads through the
    key check the value's type at run time too.
    """

    __slots__ = ("name", "type")

    name: str
    type: builtins.type[T]

    def __init__(self, name: str, type: builtins.type[T]) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"af.Key name must be a non-empty string, got {name!r}")
        if not isinstance(type, builtins.type):
            raise TypeError(f"af.Key {name!r} needs a class as its type, got {type!r}")
        self.name = name
        self.type = type

    def __repr__(self) -> str:
        return f"Key({self.name!r}, {self.type.__qualname__})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other.name == self.name and other.type is self.type

    def __hash__(self) -> int:
        return hash((self.name, self.type))


#: What a store can be filled from: a mapping keyed by strings, by :class:`Key` objects,
#: or by both (a literal that mixes them needs ``dict[str | af.Key[Any], Any]``).
StoreData = Mapping[str, Any] | Mapping["Key[Any]", Any] | Mapping["str | Key[Any]", Any]


class Meta:
    """TTL and metadata of one entry; only entries that have some carry one (internal)."""

    __slots__ = ("expires", "properties", "tags")

    def __init__(self, expires: float | None, tags: frozenset[str], properties: dict[str, Any]) -> None:
        self.expires = expires
        self.tags = tags
        self.properties = properties


_MISSING: Any = object()
_NO_KEYS: set[str] = set()  # (never changed: the deletes of an overlay that deleted nothing)


def typed_name(key: object, value: Any) -> str:
    """The name of ``key`` that ``value`` is written under; a typed key's value must be of its type."""
    if type(key) is str:  # (once per store write: the common case first)
        return key
    if isinstance(key, Key):
        if not isinstance(value, key.type):
            raise TypeMismatch(key.name, key.type, value)
        return key.name
    return _key_name(key)


def _key_name(key: object) -> str:
    if type(key) is str:
        return key
    if isinstance(key, Key):
        return key.name
    if isinstance(key, str):
        return str(key)
    raise TypeError(f"store keys must be str or af.Key, got {type(key).__name__} {key!r}")


def _ttl_seconds(ttl: float | timedelta, key: str) -> float:
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"ttl of store key {key!r} must be seconds or a timedelta, got {ttl!r}")
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(
            f"ttl of store key {key!r} must be a positive, finite number of seconds, got {ttl!r}"
        )
    return float(seconds)


class Store:
    """A run's key-value store, with TTLs, tags and properties per entry.

    Reads raise :class:`~asyncflow.MissingKey` (a ``KeyError``) for an absent
    or expired key and :class:`~asyncflow.TypeMismatch` (a ``TypeError``) when
    a type is asked for and the value is not of it. The mapping protocol works
    as for a dict.
    """

    __slots__ = ("_check", "_clock", "_deleted", "_meta", "_parent", "_values")

    def __init__(
        self,
        data: StoreData | None = None,
        *,
        clock: Now = time.time,
    ) -> None:
        self._values: dict[str, Any] = {}
        self._meta: dict[str, Meta] = {}
        self._parent: Store | None = None
        self._deleted: set[str] | None = None
        self._clock = clock
        self._check: ValueCheck | None = None
        if data:
            for key, value in data.items():
                self.put(key, value)

    # ---- overlays ---------------------------------------------------------

    def overlay(self) -> Store:
        """A child store whose writes stay private until :meth:`commit` (an action's view; internal)."""
        child = Store.__new__(Store)
        child._values = {}
        child._meta = {}
        child._parent = self
        child._deleted = set()
        child._clock = self._clock
        child._check = self._check
        return child

    def commit(self) -> None:
        """Apply this overlay's writes and deletes to its parent, atomically (internal)."""
        parent = self._parent
        assert parent is not None
        if self._deleted:
            for key in self._deleted:
                parent._drop(key)
        pvalues, pmeta = parent._values, parent._meta
        for key, value in self._values.items():
            pvalues[key] = value
            meta = self._meta.get(key)
            if meta is None:
                pmeta.pop(key, None)
            else:
                pmeta[key] = meta
        self._values = {}
        self._meta = {}
        self._deleted = set()

    def changes(self) -> tuple[set[str], dict[str, Any], dict[str, Meta]]:
        """This overlay's deleted keys, written values and their metadata, as they stand (internal).

        What a durable run checkpoints when the action completes; the
        collections are the overlay's own: read them, do not change them.
        """
        return self._deleted or _NO_KEYS, self._values, self._meta

    def load(self, key: str, value: Any, meta: Meta | None) -> None:
        """Put back an entry as a backend kept it: no type or value check, no new TTL (internal)."""
        self._values[key] = value
        if meta is not None:
            self._meta[key] = meta

    def now(self) -> float:
        """The time on this store's clock, which its TTLs are measured on (internal)."""
        return self._clock()

    def check_values(self, check: ValueCheck) -> None:
        """Check every value written from now on with ``check`` (durable runs: that it is JSON; internal)."""
        self._check = check

    def _drop(self, key: str) -> None:
        self._values.pop(key, None)
        self._meta.pop(key, None)
        if self._deleted is not None:
            self._deleted.add(key)

    # ---- lookup -----------------------------------------------------------

    def _lookup(self, key: str) -> tuple[Any, Meta | None]:
        """The live value of ``key`` and its metadata; raise MissingKey if absent/expired."""
        store: Store | None = self
        while store is not None:
            value = store._values.get(key, _MISSING)
            if value is not _MISSING:
                meta = store._meta.get(key) if store._meta else None
                if meta is not None and meta.expires is not None and meta.expires <= self._clock():
                    raise MissingKey(key, expired=True)
                return value, meta
            if store._deleted and key in store._deleted:
                break
            store = store._parent
        raise MissingKey(key)

    def live_items(self) -> Iterator[tuple[str, Any, Meta | None]]:
        """Every live entry as (key, value, meta), in first-insertion order (internal)."""
        chain: list[Store] = []
        store: Store | None = self
        while store is not None:
            chain.append(store)
            store = store._parent
        now = self._clock() if any(s._meta for s in chain) else 0.0
        seen: set[str] = set()
        for depth in range(len(chain) - 1, -1, -1):
            level = chain[depth]
            nearer = chain[:depth]
            for key in level._values:
                if key in seen:
                    continue
                # A nearer level that deleted the key hides this entry; if it wrote
                # the key again, that write is yielded at its own (later) position.
                if any(near._deleted and key in near._deleted for near in nearer):
                    continue
                owner = next((near for near in nearer if key in near._values), level)
                seen.add(key)
                value = owner._values[key]
                meta = owner._meta.get(key) if owner._meta else None
                if meta is not None and meta.expires is not None and meta.expires <= now:
                    continue
                yield key, value, meta

    # ---- the API ------------------------------------------------------------

    def put(
        self,
        key: str | Key[Any],
        value: Any,
        *,
        ttl: float | timedelta | None = None,
        tags: Iterable[str] = (),
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        """Set ``key`` to ``value``, replacing the entry and its metadata.

        Args:
            ttl: seconds (or a timedelta) after which the entry reads as missing.
            tags: strings to find the entry by (:meth:`find`).
            properties: name/value pairs to find the entry by.
        """
        name = typed_name(key, value)
        meta: Meta | None = None
        if ttl is not None or tags or properties:
            if isinstance(tags, str):
                raise TypeError(
                    f"tags of store key {name!r} must be a collection of strings, not the string {tags!r}"
                )
            frozen = frozenset(tags)
            for tag in frozen:
                if not isinstance(tag, str):
                    raise TypeError(f"tags of store key {name!r} must be strings, got {tag!r}")
            expires = self._clock() + _ttl_seconds(ttl, name) if ttl is not None else None
            meta = Meta(expires, frozen, dict(properties or {}))
        if self._check is not None:
            if properties:
                self._check(f"{name} (its properties)", dict(properties))
            # Checked at the write, to fail where the mistake is; encoded again at the
            # checkpoint, since the value may be mutated before the action ends.
            self._check(name, value)
        values = self._values
        if name in values and self._meta:
            old = self._meta.get(name)
            if old is not None and old.expires is not None and old.expires <= self._clock():
                # An expired entry is gone: writing the key again makes it a new, last entry.
                del values[name]
        values[name] = value
        if meta is not None:
            self._meta[name] = meta
        elif self._meta:
            self._meta.pop(name, None)

    @overload
    def get(self, key: Key[T], type: None = None) -> T: ...
    @overload
    def get(self, key: str | Key[Any], type: builtins.type[T]) -> T: ...
    @overload
    def get(self, key: str, type: None = None) -> Any: ...

    def get(self, key: str | Key[Any], type: builtins.type[Any] | None = None) -> Any:
        """The value of ``key``.

        Raises:
            MissingKey: no such key, or it has expired.
            TypeMismatch: ``type`` (or the key's type) is given and the value is not of it.
        """
        name = _key_name(key)
        value, _ = self._lookup(name)
        expected = type if type is not None else (key.type if isinstance(key, Key) else None)
        if expected is not None and not isinstance(value, expected):
            raise TypeMismatch(name, expected, value)
        return value

    @overload
    def get_or(self, key: Key[T], default: T, type: None = None) -> T: ...
    @overload
    def get_or(self, key: str | Key[Any], default: T, type: builtins.type[T]) -> T: ...
    @overload
    def get_or(self, key: str, default: Any, type: None = None) -> Any: ...

    def get_or(self, key: str | Key[Any], default: Any, type: builtins.type[Any] | None = None) -> Any:
        """The value of ``key``, or ``default`` when it is missing or expired.

        Raises:
            TypeMismatch: the key is present and its value is not of ``type``.
        """
        name = _key_name(key)
        try:
            value, _ = self._lookup(name)
        except MissingKey:
            return default
        expected = type if type is not None else (key.type if isinstance(key, Key) else None)
        if expected is not None and not isinstance(value, expected):
            raise TypeMismatch(name, expected, value)
        return value

    def delete(self, key: str | Key[Any]) -> bool:
        """Remove ``key``; return whether a live entry was there."""
        name = _key_name(key)
        try:
            self._lookup(name)
            present = True
        except MissingKey:
            present = False
        self._values.pop(name, None)
        self._meta.pop(name, None)
        if self._deleted is not None:
            self._deleted.add(name)
        return present

    def find(
        self,
        *,
        tag: str | None = None,
        any_tags: Iterable[str] | None = None,
        all_tags: Iterable[str] | None = None,
        property: tuple[str, Any] | None = None,
    ) -> list[str]:
        """Keys of live entries matching every criterion given, in insertion order.

        ``tag``: carries this tag; ``any_tags``: carries at least one of them;
        ``all_tags``: carries all of them; ``property``: ``(name, value)`` is
        among its properties.
        """
        any_set = frozenset(any_tags) if any_tags is not None else None
        all_set = frozenset(all_tags) if all_tags is not None else None
        found: list[str] = []
        for key, _, meta in self.live_items():
            tags = meta.tags if meta is not None else frozenset()
            if tag is not None and tag not in tags:
                continue
            if any_set is not None and not (tags & any_set):
                continue
            if all_set is not None and not all_set <= tags:
                continue
            if property is not None:
                props = meta.properties if meta is not None else {}
                pname, pvalue = property
                if pname not in props or props[pname] != pvalue:
                    continue
            found.append(key)
        return found

    def tags_of(self, key: str | Key[Any]) -> frozenset[str]:
        """The tags of ``key``'s entry (MissingKey if absent)."""
        _, meta = self._lookup(_key_name(key))
        return meta.tags if meta is not None else frozenset()

    def properties_of(self, key: str | Key[Any]) -> dict[str, Any]:
        """A copy of the properties of ``key``'s entry (MissingKey if absent)."""
        _, meta = self._lookup(_key_name(key))
        return dict(meta.properties) if meta is not None else {}

    def snapshot(self) -> dict[str, Any]:
        """A plain dict of every live entry (values are not copied)."""
        return {key: value for key, value, _ in self.live_items()}

    def clone(self) -> Store:
        """An independent store with the same live entries and metadata.

        It checks no values, even if this one does: the run that gets it decides (a durable
        run's store handed to ``af.run`` starts an in-memory run, which keeps any object).
        """
        copy = Store(clock=self._clock)
        for key, value, meta in self.live_items():
            copy._values[key] = value
            if meta is not None:
                copy._meta[key] = Meta(meta.expires, meta.tags, dict(meta.properties))
        return copy

    def merge(
        self,
        other: Store | StoreData,
        *,
        on_conflict: Literal["overwrite", "keep", "error"] = "overwrite",
    ) -> None:
        """Copy the entries of ``other`` (a Store keeps its metadata) into this store.

        ``on_conflict`` decides for keys present on both sides: ``"overwrite"``
        takes ``other``'s, ``"keep"`` keeps ours, ``"error"`` raises
        :class:`StoreConflict` and merges nothing.
        """
        if on_conflict not in ("overwrite", "keep", "error"):
            raise ValueError(f"on_conflict must be 'overwrite', 'keep' or 'error', got {on_conflict!r}")
        if isinstance(other, Store):
            incoming = list(other.live_items())
        elif isinstance(other, Mapping):
            incoming = [(typed_name(k, v), v, None) for k, v in other.items()]
        else:
            raise TypeError(f"Store.merge takes a Store or a mapping, got {other!r}")
        if on_conflict == "error":
            clashes = [key for key, _, _ in incoming if key in self]
            if clashes:
                raise StoreConflict(clashes)
        for key, value, meta in incoming:
            if on_conflict == "keep" and key in self:
                continue
            if self._check is not None:
                self._check(key, value)
            self._values[key] = value
            if meta is not None:
                self._meta[key] = Meta(meta.expires, meta.tags, dict(meta.properties))
            else:
                self._meta.pop(key, None)

    # ---- mapping protocol -------------------------------------------------

    @overload
    def __getitem__(self, key: Key[T]) -> T: ...
    @overload
    def __getitem__(self, key: str) -> Any: ...

    def __getitem__(self, key: str | Key[Any]) -> Any:
        return self.get(key)

    @overload
    def __setitem__(self, key: Key[T], value: T) -> None: ...
    @overload
    def __setitem__(self, key: str, value: Any) -> None: ...

    def __setitem__(self, key: str | Key[Any], value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: str | Key[Any]) -> None:
        if not self.delete(key):
            raise MissingKey(_key_name(key))

    def __contains__(self, key: object) -> bool:
        try:
            self._lookup(_key_name(key))
        except (MissingKey, TypeError):
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter([key for key, _, _ in self.live_items()])

    def __len__(self) -> int:
        return sum(1 for _ in self.live_items())

    def keys(self) -> list[str]:
        """The live keys, in insertion order."""
        return [key for key, _, _ in self.live_items()]

    def items(self) -> list[tuple[str, Any]]:
        """The live (key, value) pairs, in insertion order."""
        return [(key, value) for key, value, _ in self.live_items()]

    def values(self) -> list[Any]:
        """The live values, in insertion order."""
        return [value for _, value, _ in self.live_items()]

    def __repr__(self) -> str:
        return f"Store({self.snapshot()!r})"
