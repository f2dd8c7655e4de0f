"""Skip profiles: the tuned skip set and draft settings for one model, stored as JSON."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from vllm_selfspec.core.adaptive_exit import DEFAULT_TARGET_ACCEPTANCE, check_target_acceptance
from vllm_selfspec.core.draft_settings import DraftSettings
from vllm_selfspec.core.draft_vocab import check_draft_vocab_size, draft_vocab
from vllm_selfspec.core.skip_set import SelfSkipConfigError, SkipSet

PROFILE_FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)
"""Version 3 holds the draft's settings as one ``draft`` value; versions 1 and 2 (flat fields) read as before."""
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
    """Figures measured when a profile was tuned, side by side with decoding without drafts."""

    acceptance_rate: float
    """Accepted draft tokens per drafted token."""
    mean_acceptance_length: float
    """Tokens emitted per verification step (accepted drafts plus the bonus token)."""
    tokens_per_s: float
    baseline_tokens_per_s: float
    """Decoding without drafts on the same prompts in the same run (``tune``: K = 0 in its engine)."""
    draft_step_ms: float | None = None
    machine: str = ""
    tokens_per_s_by_batch_size: dict[int, dict[int, float]] = {}
    """Batch size → draft length K → tokens/s (K = 0: speculation off), behind the schedule."""


class SearchSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a profile was found."""

    method: str
    """E.g. ``optuna-tpe`` or ``hand-picked``."""
    budget: int = 0
    trials_done: int = 0
    calibration_prompts: str = ""
    max_tokens: int = 0
    seed: int = 0
    objective: str = ""
    """What each trial maximised, e.g. greedy batch-1 tokens/s through the vLLM engine."""
    search_space: str = ""
    enforce_eager: bool = False
    study: str = ""
    """The Optuna journal file a later ``tune`` run resumes from."""


class SkipProfile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A skip profile file: the draft's tuned settings for one model, and how they were found."""

    model: ModelIdentity
    draft: DraftSettings
    format_version: int = PROFILE_FORMAT_VERSION
    draft_vocab_ranking: list[int] = []
    """Token ids by measured frequency, most frequent first: another ``draft_vocab_size`` takes its head."""
    measured: Measurement | None = None
    search: SearchSettings | None = None
    notes: str = ""

    def skip_set(self) -> SkipSet:
        """The validated skip set of this profile."""
        return self.draft.skip_set(self.model.num_layers)


class _FlatProfile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Format versions 1 and 2: the draft's settings as top-level fields."""

    model: ModelIdentity
    skip_attn: list[int]
    skip_mlp: list[int]
    num_speculative_tokens: int
    format_version: int = 2
    draft_vocab_size: int = 0
    draft_vocab_ranking: list[int] = []
    adaptive_exit: bool = False
    draft_exit_target_acceptance: float = DEFAULT_TARGET_ACCEPTANCE
    num_speculative_tokens_per_batch_size: list[tuple[int, int, int]] | None = None
    measured: Measurement | None = None
    search: SearchSettings | None = None
    notes: str = ""

    def upgraded(self) -> SkipProfile:
        """The same profile in the current layout (the draft head resolved from size and ranking)."""
        check_draft_vocab_size(self.draft_vocab_size, self.model.vocab_size)
        schedule = self.num_speculative_tokens_per_batch_size
        draft = DraftSettings(
            skip_attn=tuple(self.skip_attn), skip_mlp=tuple(self.skip_mlp),
            num_speculative_tokens=self.num_speculative_tokens,
            draft_vocab=tuple(draft_vocab(self.draft_vocab_size, self.model.vocab_size, self.draft_vocab_ranking)),
            adaptive_exit=self.adaptive_exit, draft_exit_target_acceptance=self.draft_exit_target_acceptance,
            num_speculative_tokens_per_batch_size=None if schedule is None else tuple(map(tuple, schedule)),
        )
        return SkipProfile(model=self.model, draft=draft, draft_vocab_ranking=self.draft_vocab_ranking,
                           measured=self.measured, search=self.search, notes=self.notes)


def load_profile(path: str | Path) -> SkipProfile:
    """Read and validate a profile file; errors name the file and the offending field."""
    path = Path(path)
    if not path.is_file():
        raise SelfSkipConfigError(f"skip_profile: file {str(path)!r} does not exist")
    try:
        version = msgspec.json.decode(path.read_bytes(), type=_FormatVersion).format_version
        if version not in READABLE_FORMAT_VERSIONS:
            raise SelfSkipConfigError(
                f"skip_profile: {str(path)!r} has format_version {version}; "
                f"this vllm-selfspec reads versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))}"
            )
        if version < 3:
            profile = msgspec.json.decode(path.read_bytes(), type=_FlatProfile).upgraded()
        else:
            profile = msgspec.json.decode(path.read_bytes(), type=SkipProfile)
    except msgspec.ValidationError as exc:
        raise SelfSkipConfigError(f"skip_profile: {str(path)!r} is not a valid profile: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise SelfSkipConfigError(f"skip_profile: {str(path)!r} is not valid JSON: {exc}") from exc
    draft = profile.draft
    if draft.num_speculative_tokens < 1:
        raise SelfSkipConfigError(
            f"skip_profile: {str(path)!r} has num_speculative_tokens "
            f"{draft.num_speculative_tokens}; it must be at least 1"
        )
    try:
        profile.skip_set()
        check_draft_vocab_size(len(draft.draft_vocab), profile.model.vocab_size)
        if list(draft.draft_vocab) != sorted(set(draft.draft_vocab)) or any(
                not 0 <= token < profile.model.vocab_size for token in draft.draft_vocab):
            raise SelfSkipConfigError("draft.draft_vocab: token ids must be distinct, ascending and in the vocabulary")
        check_target_acceptance(draft.draft_exit_target_acceptance)
        if draft.num_speculative_tokens_per_batch_size is not None:
            check_batch_size_schedule(draft.num_speculative_tokens_per_batch_size)
    except SelfSkipConfigError as exc:
        raise SelfSkipConfigError(f"skip_profile {str(path)!r}: {exc}") from exc
    return profile


class _FormatVersion(msgspec.Struct):
    """Just the version field, read first to pick the layout (version 1 files lack it)."""

    format_version: int = 1


def save_profile(profile: SkipProfile, path: str | Path) -> None:
    """Write a profile atomically, pretty-printed so that diffs stay readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    text = msgspec.json.format(msgspec.json.encode(profile), indent=2).decode()
    # Lists of numbers on one line each (a draft-vocabulary ranking holds thousands).
    text = re.sub(r"\[\s+(-?\d+(?:,\s+-?\d+)*)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    tmp.write_text(text + "\n")
    tmp.replace(path)


def find_shipped_profile(identity: ModelIdentity) -> tuple[Path, SkipProfile] | None:
    """The profile shipped with the package for exactly this model, and its path, if any."""
    for candidate in sorted(SHIPPED_PROFILES_DIR.glob("*.json")):
        profile = load_profile(candidate)
        if not profile.model.mismatches(identity):
            return candidate, profile
    return None


def check_batch_size_schedule(schedule: object) -> list[tuple[int, int, int]]:
    """Validate ``num_speculative_tokens_per_batch_size`` as vLLM reads it: sorted, disjoint, from batch size 1."""
    field = "num_speculative_tokens_per_batch_size"
    if not isinstance(schedule, (list, tuple)) or not schedule:
        raise SelfSkipConfigError(f"{field}: expected a non-empty list of (first, last, K), got {schedule!r}")
    checked: list[tuple[int, int, int]] = []
    previous_end = 0
    for entry in schedule:
        if (
            not isinstance(entry, (list, tuple))
            or len(entry) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in entry)
        ):
            raise SelfSkipConfigError(f"{field}: entry {entry!r} is not three integers (first, last, K)")
        start, end, k = entry
        if start <= previous_end or (not checked and start != 1) or end < start or k < 0:
            raise SelfSkipConfigError(
                f"{field}: entry {list(entry)} is out of order; ranges must start at batch size 1, "
                "be sorted and disjoint, end at or after their start, and have K >= 0"
            )
        checked.append((start, end, k))
        previous_end = end
    return checked
