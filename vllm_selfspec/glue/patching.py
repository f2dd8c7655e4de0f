"""A small, explicit patch mechanism in the style of ArcticInference's ``ArcticPatch``."""

from __future__ import annotations

from typing import Any, ClassVar


class VllmPatch:
    """Replaces named attributes of ``target`` with this subclass's, keeping the originals.

    Subclasses set ``target`` and ``replaces`` (the attribute names), and document why
    the patch exists, how it works and when it can be removed. ``apply`` is idempotent,
    because vLLM loads general plugins once per process and sometimes more than once.
    """

    target: ClassVar[type]
    replaces: ClassVar[tuple[str, ...]]
    _originals: ClassVar[dict[str, Any]]

    @classmethod
    def apply(cls) -> None:
        """Install the replacements on ``target`` (a no-op when already installed)."""
        if cls.is_applied():
            return
        originals = {name: cls.target.__dict__.get(name) for name in cls.replaces}
        for name in cls.replaces:
            setattr(cls.target, name, cls.__dict__[name])
        cls._originals = originals

    @classmethod
    def is_applied(cls) -> bool:
        """Whether ``apply`` has run in this process."""
        return "_originals" in cls.__dict__

    @classmethod
    def original(cls, name: str) -> Any:
        """The target's attribute as it was before ``apply``, unwrapped from static/class methods."""
        attr = cls._originals[name]
        return attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
