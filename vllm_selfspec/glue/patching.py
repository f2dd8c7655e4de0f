"""A small, explicit patch mechanism in the style of ArcticInference's ``ArcticPatch``,
and the environment switches of the test-only shims."""

from __future__ import annotations

import inspect
import logging
from typing import Any, ClassVar

logger = logging.getLogger(f"vllm.{__name__}")  # under "vllm", so vLLM's handlers and level apply

RAY_ON_CPU_TEST_SHIM_ENV_VAR = "VLLM_SELFSPEC_TEST_ONLY_RAY_ON_CPU"
"""``1`` installs the test-only shim in :mod:`vllm_selfspec.glue.ray_cpu_test_shim` (CPU only)."""
ASYNC_ON_CPU_TEST_SHIM_ENV_VAR = "VLLM_SELFSPEC_TEST_ONLY_ASYNC_ON_CPU"
"""``1`` installs the test-only shim in :mod:`vllm_selfspec.glue.async_on_cpu_test_shim` (CPU only),
and keeps it acting while set."""
DRAFT_CYCLE_TEST_SHIM_ENV_VAR = "VLLM_SELFSPEC_TEST_ONLY_DRAFT_CYCLE"
"""Draft lengths (``3,0,2,1``) install the test-only shim in :mod:`vllm_selfspec.glue.draft_cycle_test_shim`
(CPU only): each engine step books the next."""


class PatchTargetMissing(RuntimeError):
    """A patch's target lacks an attribute it replaces: the installed vLLM is not the one it was written for."""


class VllmPatch:
    """Replaces named attributes of ``target`` (a class or module) with this subclass's, keeping the
    originals, and adds new ones.

    Subclasses set ``target``, ``replaces`` and ``adds`` (attribute names), and document why
    the patch exists, how it works and when it can be removed; each is listed in
    :mod:`vllm_selfspec.glue.patches`. ``apply`` is idempotent, because vLLM loads
    general plugins once per process and sometimes more than once, and it refuses a
    target that lacks a replaced attribute (inherited ones count), so a renamed vLLM
    method fails loudly instead of gaining a dead twin, and one that already has an added
    attribute, so a vLLM that grew the same name is not silently overridden.
    """

    target: ClassVar[Any]
    replaces: ClassVar[tuple[str, ...]] = ()
    adds: ClassVar[tuple[str, ...]] = ()
    _originals: ClassVar[dict[str, Any]]

    @classmethod
    def apply(cls) -> None:
        """Install the replacements on ``target`` (a no-op when already installed)."""
        if cls.is_applied():
            return
        missing = [name for name in cls.replaces if not hasattr(cls.target, name)]
        if missing:
            raise PatchTargetMissing(
                f"{cls.__name__}: {getattr(cls.target, '__name__', cls.target)!r} has no "
                f"{', '.join(missing)}; this vLLM differs from the one vllm-selfspec was written for "
                "(vllm_selfspec.compat.SUPPORTED_VLLM_SERIES)"
            )
        present = [name for name in cls.adds if hasattr(cls.target, name)]
        if present:
            raise PatchTargetMissing(
                f"{cls.__name__}: {getattr(cls.target, '__name__', cls.target)!r} already has "
                f"{', '.join(present)}; this vLLM differs from the one vllm-selfspec was written for "
                "(vllm_selfspec.compat.SUPPORTED_VLLM_SERIES)"
            )
        originals = {name: _current(cls.target, name) for name in cls.replaces}
        for name in (*cls.replaces, *cls.adds):
            setattr(cls.target, name, cls.__dict__[name])
            logger.debug("vllm-selfspec patch %s: %s %s.%s", cls.__name__,
                         "replaced" if name in cls.replaces else "added",
                         getattr(cls.target, "__name__", cls.target), name)
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


def _current(target: Any, name: str) -> Any:
    """``target.name`` as stored: a class's raw descriptor (found along its MRO), a module's value."""
    return inspect.getattr_static(target, name) if isinstance(target, type) else getattr(target, name)


def install_test_only_shim(shim: str, shim_patches: tuple[type[VllmPatch], ...], on_cpu: bool,
                           platform_name: str, what_it_does: str) -> None:
    """Apply a TEST-ONLY shim's patches (once), on the CPU platform only; elsewhere log and do nothing."""
    if not on_cpu:
        logger.warning("The test-only shim %s never activates on %s; ignored.", shim, platform_name)
        return
    if all(patch.is_applied() for patch in shim_patches):
        return
    for patch in shim_patches:
        patch.apply()
    logger.warning("TEST-ONLY shim active (%s): %s", shim, what_it_does)
