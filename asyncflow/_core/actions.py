"""Actions: the unit of work. Subclass :class:`Action` or decorate a coroutine function."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, overload

from .errors import InvalidDefinition
from .retry import Retry, check_retry, check_timeout

if TYPE_CHECKING:
    from .context import ActionContext

ActionFunc = Callable[["ActionContext"], Awaitable[None]]

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def kebab(name: str) -> str:
    """``ProcessResource`` -> ``process-resource``; ``load_user`` -> ``load-user``."""
    return _CAMEL_BOUNDARY.sub("-", name).replace("_", "-").lower()


def check_id(value: object, what: str) -> str:
    """Return ``value`` if it is a usable id, else raise an error naming ``what``."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__} ({value!r})")
    if not value or value.isspace():
        raise InvalidDefinition(f"{what} must be a non-empty string, got {value!r}")
    check_text(value, what, InvalidDefinition)
    return value


def text_error_at(value: str) -> int | None:
    """Where ``value`` holds a lone surrogate (it is then not Unicode text), or ``None``.

    Such strings come from bytes that are not UTF-8, decoded with
    ``errors="surrogateescape"`` (as ``os.fsdecode`` and ``os.listdir`` do
    for such file names). They cannot be printed, nor written to a database
    or a JSON document as text.
    """
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def check_text(value: str, what: str, error: type[ValueError] = ValueError) -> None:
    """Raise ``error`` naming ``what`` if ``value`` is not Unicode text (see :func:`text_error_at`)."""
    at = text_error_at(value)
    if at is not None:
        raise error(
            f"{what} {value!r} is not valid Unicode text: it holds the lone surrogate "
            f"{value[at]!r} at position {at} (decoding bytes that are not UTF-8 with "
            f"errors='surrogateescape', as os.fsdecode and os.listdir do, makes such strings); make "
            f"it text first, e.g. os.fsencode(name).decode('utf-8', 'backslashreplace')"
        )


def freeze_tags(tags: Iterable[str] | None, what: str) -> frozenset[str]:
    """Normalise ``tags`` to a frozenset of strings, rejecting a bare string."""
    if tags is None:
        return frozenset()
    if isinstance(tags, str):
        raise TypeError(f"tags of {what} must be a collection of strings, not the string {tags!r}")
    frozen = frozenset(tags)
    for tag in frozen:
        if not isinstance(tag, str):
            raise TypeError(f"tags of {what} must be strings, got {tag!r}")
    return frozen


class Action:
    """Base class of every action: implement :meth:`execute`.

    Class attributes describe the action; each defaults sensibly::

        class Resize(af.Action):
            name = "resize"                 # default: the class name in kebab-case
            description = "Resize one image"
            tags = frozenset({"images"})
            timeout = 5.0                   # seconds per attempt; default None (no limit)
            retry = af.Retry(attempts=3)    # default None (the stage's or runner's)

            def __init__(self, size: int) -> None:
                self.size = size

            async def execute(self, ctx: af.ActionContext) -> None: ...

    One action instance may appear in many stages and runs at once, so keep
    per-run state in ``ctx.store``, not on ``self``.
    """

    name: str = ""
    description: str = ""
    tags: frozenset[str] = frozenset()
    timeout: float | None = None
    retry: Retry | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = kebab(cls.__name__)
        else:
            check_id(cls.__dict__["name"], f"name of action class {cls.__qualname__}")
        if "tags" in cls.__dict__:
            cls.tags = freeze_tags(cls.__dict__["tags"], f"action class {cls.__qualname__}")
        if "timeout" in cls.__dict__:
            cls.timeout = check_timeout(cls.__dict__["timeout"], f"action class {cls.__qualname__}")
        if "retry" in cls.__dict__:
            cls.retry = check_retry(cls.__dict__["retry"], f"action class {cls.__qualname__}")
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_af_captures", False):
            cls.__init__ = _capturing(init)  # type: ignore[method-assign]
        execute = cls.__dict__.get("execute")
        if execute is not None and not inspect.iscoroutinefunction(execute):
            raise TypeError(
                f"{cls.__qualname__}.execute must be an async method (async def execute(self, ctx))"
            )

    async def execute(self, ctx: ActionContext) -> None:
        """Do the work of this action. Subclasses must override it."""
        raise NotImplementedError(f"{type(self).__qualname__} does not implement execute()")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _capturing(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``__init__`` to keep the arguments an instance was built with.

    Durable runs re-create an action from its class and these arguments, so a
    user never has to write serialization code for an Action subclass.
    """

    @functools.wraps(init)
    def capture_init(self: Action, *args: Any, **kwargs: Any) -> None:
        # The most derived __init__ runs first: it records what the caller passed.
        if "_af_params" not in self.__dict__:
            self.__dict__["_af_params"] = (args, kwargs)
        init(self, *args, **kwargs)

    capture_init._af_captures = True  # type: ignore[attr-defined]
    return capture_init


def constructor_arguments(action: Action) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The ``(args, kwargs)`` an :class:`Action` subclass instance was built with (``None`` if unknown)."""
    captured: tuple[tuple[Any, ...], dict[str, Any]] | None = getattr(action, "__dict__", {}).get(
        "_af_params"
    )
    return captured


class FunctionAction(Action):
    """An action made from a coroutine function by :func:`action`."""

    def __init__(
        self,
        fn: ActionFunc,
        *,
        name: str | None = None,
        description: str | None = None,
        tags: Iterable[str] | None = None,
        timeout: float | timedelta | None = None,
        retry: Retry | None = None,
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            what = getattr(fn, "__qualname__", repr(fn))
            raise TypeError(f"@af.action needs an async function (async def ...), but {what} is not one")
        self.fn = fn
        self.name = check_id(name, "action name") if name is not None else kebab(fn.__name__)
        self.description = description if description is not None else inspect.cleandoc(fn.__doc__ or "")
        self.tags = freeze_tags(tags, f"action {self.name!r}")
        self.timeout = check_timeout(timeout, f"action {self.name!r}")
        self.retry = check_retry(retry, f"action {self.name!r}")

    async def execute(self, ctx: ActionContext) -> None:
        """Call the decorated function with ``ctx``."""
        await self.fn(ctx)

    async def __call__(self, ctx: ActionContext) -> None:
        """Call the decorated function directly (handy in unit tests)."""
        await self.fn(ctx)


@overload
def action(fn: ActionFunc, /) -> FunctionAction: ...
@overload
def action(
    *,
    name: str | None = None,
    description: str | None = None,
    tags: Iterable[str] | None = None,
    timeout: float | timedelta | None = None,
    retry: Retry | None = None,
) -> Callable[[ActionFunc], FunctionAction]: ...


def action(
    fn: ActionFunc | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    tags: Iterable[str] | None = None,
    timeout: float | timedelta | None = None,
    retry: Retry | None = None,
) -> FunctionAction | Callable[[ActionFunc], FunctionAction]:
    """Turn a coroutine function ``async def f(ctx)`` into an :class:`Action`.

    Use it bare (``@af.action``: the name is the function name with dashes for
    underscores) or with options (``@af.action(name="load", tags={"io"})``);
    ``timeout`` (per attempt: seconds, or a ``timedelta``) and ``retry`` (an :class:`~asyncflow.Retry`)
    take precedence over the stage's and the runner's defaults.

    Raises:
        TypeError: ``fn`` is not an ``async def`` function.
    """
    if fn is not None:
        return FunctionAction(fn, name=name, description=description, tags=tags, timeout=timeout, retry=retry)

    def decorate(f: ActionFunc) -> FunctionAction:
        return FunctionAction(f, name=name, description=description, tags=tags, timeout=timeout, retry=retry)

    return decorate
