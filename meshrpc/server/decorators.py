"""Decorators that mark what a daemon exposes and how it runs it, and the metadata derived from them."""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from typing import Any, Callable, TypeVar

from ..errors import DaemonError

T = TypeVar("T")

INSTANCE_MODES = ("single", "session", "percall")


def expose(target: T) -> T:
    """Expose a class (all its public methods and properties), a method, or a property."""
    if isinstance(target, property):
        if target.fget is not None:
            target.fget._pyroExposed = True  # type: ignore[attr-defined]
        return target
    if isinstance(target, (staticmethod, classmethod)):
        # the method object is wrapped already: this order cannot mark it reliably (as in Pyro5)
        raise AttributeError(f"@expose must be done after @{type(target).__name__}: put @expose below it "
                             f"(method {target.__func__.__name__!r})")
    if inspect.isclass(target) or callable(target):
        name = getattr(target, "__name__", "")
        if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
            raise AttributeError(f"private name {name!r} cannot be exposed (names starting with _ are private)")
        if inspect.isclass(target):
            _mark_members_exposed(target)
        target._pyroExposed = True  # type: ignore[attr-defined]
        return target
    raise TypeError(f"@expose applies to classes, methods and properties, not {type(target).__name__}")


def _mark_members_exposed(cls: type) -> None:
    """A class-level @expose marks its own public methods and properties too (as Pyro5 does, so code
    that checks `Class.method._pyroExposed` sees them)."""
    for name, member in vars(cls).items():
        if is_private_attribute(name):
            continue
        if isinstance(member, property):
            funcs = [f for f in (member.fget, member.fset, member.fdel) if f is not None]
        else:
            func = getattr(member, "__func__", member)
            funcs = [func] if inspect.isfunction(func) else []
        for func in funcs:
            try:
                func._pyroExposed = True
            except AttributeError:
                pass


def oneway(method: T) -> T:
    """The caller does not wait for this method: no result, no exception comes back."""
    method._pyroOneway = True  # type: ignore[attr-defined]
    return method


def callback(method: T) -> T:
    """A method called back from a remote peer: its exceptions are also logged where it runs."""
    method._pyroCallback = True  # type: ignore[attr-defined]
    return method


def idempotent(method: T) -> T:
    """Running this method twice has the effect of running it once: proxies may re-send it after a
    connection failure (announced to proxies in the object's metadata)."""
    method._meshIdempotent = True  # type: ignore[attr-defined]
    return method


def behavior(instance_mode: str = "session", instance_creator: Callable[[type], Any] | None = None) -> Callable[[T], T]:
    """How a registered class is instantiated: once ("single"), per connection ("session", the default),
    or per call ("percall"); `instance_creator(cls)` builds instances when given."""
    if not isinstance(instance_mode, str):  # used bare as @behavior
        raise SyntaxError("@behavior is missing arguments: use @behavior(instance_mode=...) with parentheses")

    def mark(cls: T) -> T:
        if not inspect.isclass(cls):
            raise TypeError("@behavior applies to classes")
        if instance_mode not in INSTANCE_MODES:
            raise ValueError(f"instance_mode must be one of {INSTANCE_MODES}, not {instance_mode!r}")
        if instance_creator is not None and not callable(instance_creator):
            raise TypeError("instance_creator must be callable")
        cls._pyroInstancing = (instance_mode, instance_creator)  # type: ignore[attr-defined]
        return cls
    return mark


# dunder methods a class-level @expose never exposes: object lifecycle, identity, comparison and
# attribute protocol hooks are the server's own business (container and numeric dunders are exposed)
_NEVER_EXPOSED_DUNDERS = frozenset("""
    __init__ __new__ __del__ __call__ __repr__ __str__ __format__ __bool__ __eq__ __ne__ __hash__
    __lt__ __le__ __gt__ __ge__ __dir__ __enter__ __exit__ __copy__ __deepcopy__ __sizeof__
    __getattr__ __setattr__ __getattribute__ __delattr__ __getstate__ __setstate__ __reduce__
    __reduce_ex__ __init_subclass__ __class_getitem__ __subclasshook__ __instancecheck__
    __subclasscheck__ __getnewargs__ __getnewargs_ex__ __set_name__ __get__ __set__ __delete__
    __wire_dict__ __class__ __module__ __weakref__ __dict__ __doc__
    __nonzero__ __coerce__ __cmp__ __hasattr__ __getinitargs__
""".split())


def is_private_attribute(attr_name: str) -> bool:
    """True for names a daemon never serves: `_private` and `__mangled` names, and the dunders of
    object lifecycle, identity, comparison and attribute access (other `__dunder__`s may be exposed)."""
    if attr_name in _NEVER_EXPOSED_DUNDERS:
        return True
    if not attr_name.startswith("_"):
        return False
    return not (len(attr_name) > 4 and attr_name.startswith("__") and attr_name.endswith("__"))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _exposed_flag(member: Any) -> bool:
    target = member.fget if isinstance(member, property) else member
    target = getattr(target, "__func__", target)
    return bool(getattr(target, "_pyroExposed", False))


@functools.lru_cache(maxsize=1024)
def exposed_members_of_class(cls: type) -> dict[str, frozenset[str]]:
    """{"methods", "oneway", "attrs", "idempotent"} of a class, as announced in handshakes."""
    class_exposed = bool(cls.__dict__.get("_pyroExposed", False)) or any(
        getattr(base, "__dict__", {}).get("_pyroExposed", False) for base in cls.__mro__[1:-1])
    methods, oneways, attrs, idempotents = set(), set(), set(), set()
    for name in dir(cls):
        if _is_private(name):
            continue
        member = inspect.getattr_static(cls, name)
        if name.startswith("__"):
            # dunders: explicitly exposed ones, or, for an exposed class, the ones it defines itself
            exposed = _exposed_flag(member) or (class_exposed and name not in _NEVER_EXPOSED_DUNDERS
                                                 and not hasattr(object, name))
        else:
            exposed = _exposed_flag(member) or class_exposed
        if not exposed:
            continue
        if isinstance(member, property):
            attrs.add(name)
            continue
        func = getattr(member, "__func__", member)
        if not callable(func) or inspect.isclass(func):
            continue
        methods.add(name)
        if getattr(func, "_pyroOneway", False):
            oneways.add(name)
        if getattr(func, "_meshIdempotent", False):
            idempotents.add(name)
    return {"methods": frozenset(methods), "oneway": frozenset(oneways), "attrs": frozenset(attrs),
            "idempotent": frozenset(idempotents)}


def exposed_members(obj: Any) -> dict[str, frozenset[str]]:
    return exposed_members_of_class(obj if inspect.isclass(obj) else type(obj))


class Registration:
    """An object or class registered in a daemon, and how to get the instance for a call.

    `owner`: the daemon (a weak proxy of it); instances it creates for a registered class get `_pyroId` and `_pyroDaemon`
    as the registered objects do (code in exposed methods calls `self._pyroDaemon.register(...)`).
    A weak registration (`weakref.ref` target) lasts as long as the object does."""

    __slots__ = ("object_id", "_target", "weak", "mode", "creator", "name", "metadata", "members", "owner",
                 "_single", "_lock", "shared")

    def __init__(self, object_id: str, target: Any, name: str | None, metadata: frozenset[str],
                 owner: Any = None, weak: bool = False) -> None:
        self.object_id = object_id
        self.weak = weak
        self._target = weakref.ref(target) if weak else target
        self.name = name
        self.metadata = metadata
        self.owner = owner
        self._single: Any = None
        self._lock = threading.Lock()
        if inspect.isclass(target):
            self.mode, self.creator = getattr(target, "_pyroInstancing", ("session", None))
        else:
            self.mode, self.creator = "instance", None
        # the instance every call runs on when that never depends on the call (a registered object,
        # held strongly): instance() without a call; None: ask instance()
        self.shared = target if self.mode == "instance" and not weak else None
        self.members = exposed_members(target)  # computed once: every call checks against it

    @property
    def target(self) -> Any:
        """The registered object or class (None when a weakly registered object is gone)."""
        return self._target() if self.weak else self._target

    def refresh_members(self) -> None:
        """Compute the exposed members again (the class changed since it was registered)."""
        target = self.target
        exposed_members_of_class.cache_clear()
        self.members = exposed_members(target)

    def instance(self, session: dict[str, Any]) -> Any:
        """The object a call runs on; `session` holds the per-connection instances."""
        if self.mode == "instance":
            if self.weak:
                target = self._target()
                if target is None:
                    raise DaemonError(f"object {self.object_id!r} is gone (it was registered weakly)")
                return target
            return self._target
        if self.mode == "percall":
            return self._create()
        if self.mode == "single":
            if self._single is None:
                with self._lock:
                    if self._single is None:
                        self._single = self._create()
            return self._single
        obj = session.get(self.object_id)
        if obj is None:
            obj = session[self.object_id] = self._create()
        return obj

    def _create(self) -> Any:
        try:
            obj = self.creator(self._target) if self.creator else self._target()
        except Exception as exc:
            raise DaemonError(f"could not create an instance of {self._target.__name__} for "
                              f"{self.object_id!r}: {exc}") from exc
        if self.owner is not None:
            try:
                obj._pyroId, obj._pyroDaemon = self.object_id, self.owner
            except AttributeError:
                pass  # __slots__ without those names: served, not autoproxied
        return obj


class _AnnotationText(str):
    """An annotation kept as text (`from __future__ import annotations`): shown as written, not quoted."""

    def __repr__(self) -> str:
        return str(self)


def _signature_text(func: Any) -> str:
    """`(on: bool, fade: float = 0.0) -> str`, without self; "(...)" when Python cannot tell."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return "(...)"

    def as_text(annotation: Any) -> Any:
        return _AnnotationText(annotation) if isinstance(annotation, str) else annotation

    parameters = [parameter.replace(annotation=as_text(parameter.annotation))
                  for parameter in signature.parameters.values()]
    if parameters and parameters[0].name == "self":
        parameters = parameters[1:]
    return str(signature.replace(parameters=parameters, return_annotation=as_text(signature.return_annotation)))


def describe_members(obj: Any) -> dict[str, Any]:
    """What `meshrpc describe` shows of an exposed object: its class, docstring, and per exposed method
    its signature (without self), docstring and flags, per exposed property its docstring and whether
    it can be set. Sent only when asked (`get_metadata(id, detailed=True)`), as extra keys."""
    cls = obj if inspect.isclass(obj) else type(obj)
    members = exposed_members_of_class(cls)
    methods = {}
    for name in sorted(members["methods"]):
        func = inspect.getattr_static(cls, name)
        func = getattr(func, "__func__", func)
        signature = _signature_text(func)
        methods[name] = {"signature": signature, "doc": inspect.getdoc(func) or "",
                         "oneway": name in members["oneway"], "idempotent": name in members["idempotent"]}
    attrs = {}
    for name in sorted(members["attrs"]):
        prop = inspect.getattr_static(cls, name)
        attrs[name] = {"doc": inspect.getdoc(prop) or "", "writable": getattr(prop, "fset", None) is not None}
    return {"class": cls.__name__, "doc": inspect.getdoc(cls) or "", "methods": methods, "attrs": attrs}

