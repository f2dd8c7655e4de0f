"""Skip profiles: the tuned skip set and draft settings for one model, stored as JSON."""

from __future__ import annotations

from pathlib import Path

import msgspec

from vllm_selfspec.core.skip_set import SelfSkipConfigError, SkipSet

PROFILE_FORMAT_VERSION = 1
SHIPPED_PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


class ModelIdentity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What identifies the model a profile was made for."""

    name: str
    """The model's folder or hub name without its parent path, e.g. ``SmolLM2-135M-Instruct``."""
    architecture: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_kv_heads: int
    vocab_size: int

    def mismatches(self, other: ModelIdentity) -> list[str]:
        """The fields in which ``other`` differs from this identity, as readable strings."""
        return [
            f"{field}: profile has {getattr(self, field)!r}, model has {getattr(other, field)!r}"
            for field in self.__struct_fields__
            if getattr(self, field) != getattr(other, field)
        ]


class Measurement(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Figures measured when a profile was tuned, side by side with plain vLLM."""

    acceptance_rate: float
    """Accepted draft tokens per drafted token."""
    mean_acceptance_length: float
    """Tokens emitted per verification step (accepted drafts plus the bonus token)."""
    tokens_per_s: float
    baseline_tokens_per_s: float
    """Plain vLLM on the same prompts in the same run."""
    draft_step_ms: float | None = None
    machine: str = ""


class SearchSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a profile was found."""

    method: str
    """E.g. ``optuna-tpe`` or ``hand-picked``."""
    budget: int = 0
    trials_done: int = 0
    calibration_prompts: str = ""
    max_tokens: int = 0
    seed: int = 0


class SkipProfile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A skip profile file: which sublayers to skip for one model, and how far to draft."""

    model: ModelIdentity
    skip_attn: list[int]
    skip_mlp: list[int]
    num_speculative_tokens: int
    format_version: int = PROFILE_FORMAT_VERSION
    measured: Measurement | None = None
    search: SearchSettings | None = None
    notes: str = ""

    def skip_set(self) -> SkipSet:
        """The validated skip set of this profile."""
        return SkipSet.build(self.model.num_layers, self.skip_attn, self.skip_mlp)


def load_profile(path: str | Path) -> SkipProfile:
    """Read and validate a profile file; errors name the file and the offending field."""
    path = Path(path)
    if not path.is_file():
        raise SelfSkipConfigError(f"skip_profile: file {str(path)!r} does not exist")
    try:
        profile = msgspec.json.decode(path.read_bytes(), type=SkipProfile)
    except msgspec.ValidationError as exc:
        raise SelfSkipConfigError(f"skip_profile: {str(path)!r} is not a valid profile: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise SelfSkipConfigError(f"skip_profile: {str(path)!r} is not valid JSON: {exc}") from exc
    if profile.format_version != PROFILE_FORMAT_VERSION:
        raise SelfSkipConfigError(
            f"skip_profile: {str(path)!r} has format_version {profile.format_version}; "
            f"this vllm-selfspec reads version {PROFILE_FORMAT_VERSION}"
        )
    if profile.num_speculative_tokens < 1:
        raise SelfSkipConfigError(
            f"skip_profile: {str(path)!r} has num_speculative_tokens "
            f"{profile.num_speculative_tokens}; it must be at least 1"
        )
    try:
        profile.skip_set()
    except SelfSkipConfigError as exc:
        raise SelfSkipConfigError(f"skip_profile {str(path)!r}: {exc}") from exc
    return profile


def save_profile(profile: SkipProfile, path: str | Path) -> None:
    """Write a profile atomically, pretty-printed so that diffs stay readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(profile), indent=2) + b"\n")
    tmp.replace(path)


def find_shipped_profile(identity: ModelIdentity) -> tuple[Path, SkipProfile] | None:
    """The profile shipped with the package for exactly this model, and its path, if any."""
    for candidate in sorted(SHIPPED_PROFILES_DIR.glob("*.json")):
        profile = load_profile(candidate)
        if not profile.model.mismatches(identity):
            return candidate, profile
    return None
