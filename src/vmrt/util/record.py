"""Frozen records for the CLI's path, without `dataclasses`.

Container managers run `vmrt state`, `create`, `start` and `kill` as fresh
processes, many times a second, so every millisecond of import is paid again
and again. `import dataclasses` alone costs ≈10 ms here (it imports inspect,
ast, dis and tokenize) and every `@dataclass` ≈0.5 ms more (it compiles its
methods with `exec`): together a third of `vmrt state`. A `@record` class
gets the same frozen, keyword-friendly shape from one shared `__init__` and
no code generation.

What it keeps of `@dataclass(frozen=True)`: fields from the class's own
annotations in order (a base record's first), defaults and
`field(default_factory=..., compare=...)`, `__eq__`/`__hash__` over the
compared fields, `__repr__`, immutability, `__post_init__`. `replace`,
`fields` and `asdict` here also accept real dataclasses (of the modules off
the CLI's path), so callers need not know which they hold.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs `vmrt state` ≈1.5 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:
    def dataclass_transform(**_: object) -> object:
        return lambda decorator: decorator

_MISSING: Any = object()


class Field:
    """One field of a record; `fields()` returns these (name, default, compare)."""

    __slots__ = ("compare", "default", "default_factory", "name")

    def __init__(self, name: str, default: Any = _MISSING,
                 default_factory: Callable[[], Any] | None = None, compare: bool = True) -> None:
        self.name = name
        self.default = default
        self.default_factory = default_factory
        self.compare = compare

    def value(self, cls: type) -> Any:
        if self.default_factory is not None:
            return self.default_factory()
        if self.default is _MISSING:
            raise TypeError(f"{cls.__name__}() missing required argument: {self.name!r}")
        return self.default


class _FieldSpec:
    """What `field(...)` leaves in the class body until `@record` reads it."""

    __slots__ = ("compare", "default", "default_factory")

    def __init__(self, default: Any, default_factory: Callable[[], Any] | None,
                 compare: bool) -> None:
        self.default = default
        self.default_factory = default_factory
        self.compare = compare


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None,
          compare: bool = True) -> Any:
    return _FieldSpec(default, default_factory, compare)


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    fields_: tuple[Field, ...] = cls.__record_fields__
    if len(args) > len(fields_):
        raise TypeError(f"{cls.__name__}() takes {len(fields_)} arguments, got {len(args)}")
    for f, value in zip(fields_, args, strict=False):
        if f.name in kwargs:
            raise TypeError(f"{cls.__name__}() got multiple values for {f.name!r}")
        object.__setattr__(self, f.name, value)
    for f in fields_[len(args):]:
        value = kwargs.pop(f.name) if f.name in kwargs else f.value(cls)
        object.__setattr__(self, f.name, value)
    if kwargs:
        raise TypeError(f"{cls.__name__}() got unexpected arguments: {', '.join(kwargs)}")
    post_init = getattr(self, "__post_init__", None)
    if post_init is not None:
        post_init()


def _key(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, f.name) for f in self.__record_fields__ if f.compare)


def _eq(self: Any, other: object) -> Any:  # bool, or NotImplemented
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _key(self) == _key(other)


def _hash(self: Any) -> int:
    return hash(_key(self))


def _repr(self: Any) -> str:
    inner = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self.__record_fields__)
    return f"{type(self).__name__}({inner})"


def _frozen(self: Any, name: str, *_: Any) -> None:
    raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T]) -> type[T]:
    own: list[Field] = []
    # Not inspect.get_annotations: importing inspect is what this module avoids.
    annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    for name, annotation in annotations.items():
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        default = cls.__dict__.get(name, _MISSING)
        if isinstance(default, _FieldSpec):
            own.append(Field(name, default.default, default.default_factory, default.compare))
            if default.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, default.default)
        else:
            own.append(Field(name, default))
    inherited = getattr(cls, "__record_fields__", ())
    names = {f.name for f in own}
    record_fields = (*(f for f in inherited if f.name not in names), *own)
    attrs: dict[str, Any] = {
        "__record_fields__": record_fields, "__init__": _init, "__eq__": _eq,
        "__hash__": _hash, "__repr__": _repr, "__setattr__": _frozen, "__delattr__": _frozen,
        "__match_args__": tuple(f.name for f in record_fields),
    }
    for key, value in attrs.items():
        setattr(cls, key, value)
    return cls


def is_record(obj: object) -> bool:
    return hasattr(obj, "__record_fields__")


def fields(obj: Any) -> tuple[Any, ...]:
    """The fields of a record (or of a dataclass), each with `.name`."""
    if is_record(obj):
        return tuple(obj.__record_fields__)
    import dataclasses

    return dataclasses.fields(obj)


def replace(obj: T, **changes: Any) -> T:
    """A copy of `obj` (a record or a dataclass) with `changes`."""
    if not is_record(obj):
        import dataclasses

        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {', '.join(sorted(unknown))}")
    values.update(changes)
    return type(obj)(**values)


def asdict(obj: Any) -> Any:
    """Records and dataclasses as dicts, recursively through lists, tuples, dicts and each
    other (a dataclass holding a record included), as `dataclasses.asdict` does."""
    if is_record(obj):
        return {f.name: asdict(getattr(obj, f.name)) for f in obj.__record_fields__}
    if hasattr(type(obj), "__dataclass_fields__"):
        return {f.name: asdict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(asdict(v) for v in obj)
    if isinstance(obj, dict):
        return {asdict(k): asdict(v) for k, v in obj.items()}
    return obj
