"""``VllmPatch``: replaces what it names, keeps the originals, refuses a target that lacks an attribute
or already has one it adds."""

import logging
import types

import pytest

from vllm_selfspec.glue.patching import PatchTargetMissing, VllmPatch


class Base:
    def inherited(self):
        return "base"


class Target(Base):
    def method(self):
        return "original"

    @staticmethod
    def helper(x):
        return x + 1


def make_patch(target, replaces, **attrs):
    return type("PatchUnderTest", (VllmPatch,), {"target": target, "replaces": replaces, **attrs})


def test_replaces_and_keeps_the_originals(caplog):
    target = type("Fresh", (Target,), {})

    def method(self):
        return "patched+" + patch.original("method")(self)

    def inherited(self):
        return "patched+" + patch.original("inherited")(self)

    patch = make_patch(target, ("method", "inherited", "helper"), method=method, inherited=inherited,
                       helper=staticmethod(lambda x: patch.original("helper")(x) * 10))
    with caplog.at_level(logging.DEBUG, logger="vllm"):
        patch.apply()
    obj = target()
    assert (obj.method(), obj.inherited(), target.helper(1)) == ("patched+original", "patched+base", 20)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG] == [
        f"vllm-selfspec patch PatchUnderTest: replaced Fresh.{name}" for name in ("method", "inherited", "helper")]
    patch.apply()  # idempotent: the originals stay the first ones
    assert obj.method() == "patched+original"


def test_refuses_a_target_without_the_attribute():
    target = type("Renamed", (Target,), {})
    patch = make_patch(target, ("method", "renamed_method"), method=lambda self: "x", renamed_method=lambda self: "y")
    with pytest.raises(PatchTargetMissing, match="'Renamed' has no renamed_method"):
        patch.apply()
    assert not patch.is_applied() and target().method() == "original" and not hasattr(target, "renamed_method")


def test_patches_a_module_attribute():
    module = types.ModuleType("fake_module")
    module.version = lambda name: f"real {name}"

    def version(name):
        return "patched" if name == "x" else patch.original("version")(name)

    patch = make_patch(module, ("version",), version=version)
    patch.apply()
    assert (module.version("x"), module.version("y")) == ("patched", "real y")
    with pytest.raises(PatchTargetMissing, match="'fake_module' has no absent"):
        make_patch(module, ("absent",), absent=1).apply()


def test_adds_an_attribute_the_target_lacks_and_refuses_one_it_has():
    target = type("Grown", (Target,), {})
    patch = type("PatchAdding", (VllmPatch,), {"target": target, "adds": ("new_method",),
                                               "new_method": lambda self: "added"})
    patch.apply()
    assert target().new_method() == "added"
    clash = type("PatchClashing", (VllmPatch,), {"target": target, "adds": ("method",), "method": lambda self: "x"})
    with pytest.raises(PatchTargetMissing, match="'Grown' already has method"):
        clash.apply()
    assert not clash.is_applied() and target().method() == "original"
