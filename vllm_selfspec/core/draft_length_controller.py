"""The online draft-length controller: per batch-size bucket, the K that decodes fastest, measured.

The never-slower guard for engines without a tuned schedule. A small bandit per
batch-size bucket (1, 2-3, 4-7, 8-15, ...) over the arms K = 0 (no drafts) to K_max:

- **What it measures:** output tokens per second of wall time. Each engine step is one
  sample for the K it booked: the wall time since the previous step completed (its
  verification and drafting, and the engine's own work between steps) and its tokens
  (one per request plus the accepted drafts).
  An arm's speed is the ratio of its exponentially decayed token and time sums, so it
  follows a workload that changes. The first step after a change of K is not counted:
  it verifies the drafts of the previous K, and may carry one-time costs of a new
  verification shape (a compile, kernel selection).
- **Warm-up climbs:** K = 0, 1, 2, ... each run ``warmup_steps`` steps, until a K is
  slower than the one before by more than the hysteresis margin, or K_max is reached
  (speed rises with K while drafts pay for themselves, then falls; where drafting does
  not pay the climb stops at K = 1). Then the fastest arm measured becomes the
  incumbent, K = 0 unless another beats it by the margin for starting to draft (below).
- **No drafting carries upward:** a bucket that has not started drafting, above a bucket
  that chose K = 0, takes K = 0 without a warm-up: drafting pays less as batches grow
  (verification's extra tokens cost more, the step is less memory-bound), so where one
  batch size does not pay, larger ones rarely do. Exploration still tries K = 1
  there, and the bucket climbs if it pays after all.
- **Exploitation with hysteresis:** the incumbent is replaced only by an arm faster by
  more than ``HYSTERESIS`` (3%), so noise does not make it flap.
- **Starting to draft takes more:** a bucket that does not draft starts only for a K
  faster than K = 0 by more than ``START_DRAFTING_MARGIN`` (10%), and a bucket that
  drafts stops once its K is no longer faster than K = 0 by more than ``HYSTERESIS``
  (K = 0 replaces it when faster than ``1 / (1 + HYSTERESIS)`` of its speed). The two
  errors cost differently: drafting where it does not pay makes the engine slower than
  plain vLLM, while not drafting where it pays by under 10% forgoes a small gain. On a
  near-tie, short measurements on a noisy machine make a K > 0 win a 3% margin by chance
  now and then, and with a symmetric margin the bucket then drafts until chance brings it
  back; measured on this project's CPU, that cost 3-5% (docs/controller-cpu).
- **A switch is confirmed first, side by side:** an arm whose estimate beats the
  incumbent's by the margin (often one measured in a slow spell of the machine, which
  slows every arm alike) is not adopted on that estimate. A trial measures both afresh in
  four ``decision_steps`` intervals, incumbent-challenger-challenger-incumbent (or the
  mirror order, to start with the K running), so that a drift in the machine's speed
  falls on both alike, and adopts the challenger only if it wins by the margin in each
  half (one interval of each arm): a win from one lucky interval, or from a stretch of
  text that drafts unusually well, does not count. This includes the choice at the end
  of the warm-up.
- **Exploration:** now and then one decision interval (``decision_steps``, 8) runs the
  next arm of a rotation over K = 0 and the incumbent's neighbours K ± 1, measured
  afresh, so one exploration corrects an estimate that a slow spell spoiled. K = 0 comes
  back in every rotation, so the controller notices when drafting stops paying; the
  neighbours let it climb further.
- **A clear loss ends early:** a warm-up K, or an explored one, measured under
  ``CLEAR_LOSS`` (0.75) of the speed it is compared with (the K below it, the
  incumbent) over ``CLEAR_LOSS_STEPS`` (3) counted steps stops at once, without waiting
  for the decision: where a draft step costs twice a plain one, each step of a doomed
  warm-up or exploration costs half a step, and a loss that large is no noise.
- **Exploration cost, bounded:** an arm last measured at a ratio r of the incumbent's
  speed is explored after ``decision_steps × (1 − r) / EXPLORATION_BUDGET`` steps of the
  bucket, and never sooner than ``explore_every`` (128): so exploration costs at most
  ``EXPLORATION_BUDGET`` (1%) of speed, whether the explored arm is 2% slower (explored
  every 128 steps) or 60% slower (every 480 steps). A slow arm still comes back within
  ``decision_steps / EXPLORATION_BUDGET`` (800) steps. A trial that keeps the incumbent
  has run the challenger for two more intervals, so the next exploration also waits for
  their cost, and the bound holds (a slow arm then comes back within 2400 steps).

Warm-up runs ``warmup_steps`` steps per K it climbs through: 32 steps in the smallest
bucket where drafting does not pay and none in the buckets above it, at most
``(K_max + 1) × warmup_steps`` per bucket, and a trial of ``4 × decision_steps`` steps
when a K > 0 measured fastest.

Decisions are made every ``decision_steps`` engine steps (:meth:`DraftLengthController.replan`),
in the engine-core process (:mod:`vllm_selfspec.core.draft_booking`), so every
tensor-parallel rank drafts the K that vLLM's scheduler booked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec

from vllm_selfspec.core.skip_set import SelfSkipConfigError

DECISION_STEPS = 8
"""Engine steps between decisions, by default."""
EXPLORATION_BUDGET = 0.01
"""The most speed exploration may cost, by default: slower arms are explored less often."""
HYSTERESIS = 0.03
"""An arm replaces the incumbent only when it is this much faster (see ``required_speedup``)."""
START_DRAFTING_MARGIN = 0.10
"""A bucket that does not draft starts only for a K this much faster than K = 0."""
SPEED_MEMORY = 0.9
"""Decay of an arm's token and time sums per new step measured for it."""
NUM_BUCKETS = 16
"""Batch-size buckets 1, 2-3, 4-7, ..., 32768-65535."""
CLEAR_LOSS = 0.75
"""A warm-up or explored K measured under this fraction of its reference's speed stops at once..."""
CLEAR_LOSS_STEPS = 3
"""...once it has this many counted steps."""


class ControllerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The controller's settings; K_max is the draft's ``num_speculative_tokens``."""

    warmup_steps: int = 16
    """Steps each K runs in a bucket while the controller warms up (the first is not counted)."""
    explore_every: int = 128
    """A bucket's fewest steps between explorations of another K (at least twice
    ``decision_steps``); slower arms wait longer (``EXPLORATION_BUDGET``)."""
    decision_steps: int = DECISION_STEPS
    """Engine steps between decisions; an exploration runs this long (no option: tests set 1)."""
    exploration_budget: float = EXPLORATION_BUDGET
    """The most speed exploration may cost (no option: tests raise it to explore every
    ``explore_every`` steps whatever an arm's speed)."""

    def check(self) -> ControllerSettings:
        """Raise naming the option when a value is out of range."""
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 1:
            raise SelfSkipConfigError(
                f"draft_controller_warmup_steps: expected an integer of at least 1, got {self.warmup_steps!r}")
        if (isinstance(self.explore_every, bool) or not isinstance(self.explore_every, int)
                or self.explore_every < 2 * self.decision_steps):
            raise SelfSkipConfigError(
                f"draft_controller_explore_every: expected an integer of at least {2 * self.decision_steps} "
                f"(steps; each exploration runs {self.decision_steps}), got {self.explore_every!r}")
        return self


def required_speedup(incumbent: int, challenger: int) -> float:
    """How many times the incumbent K's speed the challenger K must reach to replace it."""
    if incumbent == 0:
        return 1 + START_DRAFTING_MARGIN
    if challenger == 0:
        return 1 / (1 + HYSTERESIS)  # drafting stays only while it pays by the margin
    return 1 + HYSTERESIS


def batch_bucket(batch_size: int) -> int:
    """The bucket of a batch size: 0 for 1, 1 for 2-3, 2 for 4-7, ..."""
    return min(max(batch_size, 1).bit_length() - 1, NUM_BUCKETS - 1)


def describe_bucket(bucket: int) -> str:
    """``"batch 1"``, ``"batch 2-3"``, ..."""
    low, high = 2**bucket, 2 ** (bucket + 1) - 1
    return f"batch {low}" if low == high else f"batch {low}-{high}"


@dataclass
class ArmSpeed:
    """Decayed sums of one arm's output tokens and seconds."""

    tokens: float = 0.0
    seconds: float = 0.0
    steps: int = 0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens = SPEED_MEMORY * self.tokens + tokens
        self.seconds = SPEED_MEMORY * self.seconds + seconds
        self.steps += 1

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Trial:
    """A paired comparison of the incumbent and a challenger in four intervals: the K of
    each, and each interval's undecayed token and time sums and counted steps."""

    incumbent: int
    challenger: int
    order: tuple[int, int, int, int]
    measured: list[list[float]] = field(default_factory=lambda: [[0.0, 0.0, 0]])
    """[tokens, seconds, steps] of each interval so far, the running one last."""

    @classmethod
    def start(cls, incumbent: int, challenger: int, current: int) -> Trial:
        """A trial whose first interval runs ``current`` when it is one of the two arms."""
        first, second = (challenger, incumbent) if current == challenger else (incumbent, challenger)
        return cls(incumbent, challenger, (first, second, second, first))

    @property
    def running(self) -> int:
        """The K of the running interval."""
        return self.order[len(self.measured) - 1]

    @property
    def counted_steps(self) -> int:
        """Steps counted in the running interval."""
        return self.measured[-1][2]

    def add(self, tokens: float, seconds: float) -> None:
        interval = self.measured[-1]
        interval[0] += tokens
        interval[1] += seconds
        interval[2] += 1

    def next_interval(self) -> bool:
        """Start the next interval; False when the four are done."""
        if len(self.measured) == len(self.order):
            return False
        self.measured.append([0.0, 0.0, 0])
        return True

    def sums(self, k: int, intervals: range = range(4)) -> tuple[float, float]:
        """Arm ``k``'s tokens and seconds over ``intervals``."""
        chosen = [self.measured[i] for i in intervals if self.order[i] == k]
        return sum(m[0] for m in chosen), sum(m[1] for m in chosen)

    def challenger_wins(self, required: float) -> bool:
        """Whether the challenger reached ``required`` times the incumbent's speed in each
        half (one interval of each arm): a win from one lucky interval does not count."""
        for half in (range(0, 2), range(2, 4)):
            (incumbent_tokens, incumbent_s), (tokens, seconds) = (
                self.sums(self.incumbent, half), self.sums(self.challenger, half))
            if not (seconds > 0 and incumbent_s > 0 and tokens / seconds > required * incumbent_tokens / incumbent_s):
                return False
        return True


@dataclass
class BucketState:
    """One bucket's arms, its incumbent (``None`` while warming up) and the K it runs now."""

    arms: list[ArmSpeed]
    incumbent: int | None = None
    current: int = 0
    """The K this bucket runs now."""
    steps_on_current: int = 0
    """Steps measured since ``current`` was last chosen; the first is not counted (see ``observe``)."""
    steps_since_exploration: int = 0
    explorations: int = 0
    trial: Trial | None = None
    """The side-by-side comparison under way before the incumbent may change."""

    def exploration_rotation(self) -> list[int]:
        """The arms explored in turn: K = 0 and the incumbent's neighbours."""
        k_max = len(self.arms) - 1
        return [k for k in dict.fromkeys((0, self.incumbent - 1, self.incumbent + 1))
                if 0 <= k <= k_max and k != self.incumbent]


@dataclass
class DraftLengthController:
    """Chooses K per batch-size bucket from measured tokens per second (see the module docstring)."""

    k_max: int
    settings: ControllerSettings = field(default_factory=ControllerSettings)
    buckets: list[BucketState] = field(init=False)

    def __post_init__(self) -> None:
        if self.k_max < 1:
            raise SelfSkipConfigError(f"num_speculative_tokens: the controller's K_max must be at least 1, "
                                      f"got {self.k_max}")
        self.buckets = [BucketState([ArmSpeed() for _ in range(self.k_max + 1)]) for _ in range(NUM_BUCKETS)]

    def draft_length(self, batch_size: int) -> int:
        """K for a step of ``batch_size`` requests, as the current plan says."""
        return self.buckets[batch_bucket(batch_size)].current

    def observe(self, batch_size: int, k: int, tokens: int, seconds: float) -> None:
        """One engine step of ``batch_size`` requests drafted with ``k``: ``tokens`` out in ``seconds``."""
        if seconds <= 0 or not 0 <= k <= self.k_max:
            return
        bucket = self.buckets[batch_bucket(batch_size)]
        bucket.steps_since_exploration += 1
        if k != bucket.current:
            bucket.arms[k].add(tokens, seconds)
            return
        bucket.steps_on_current += 1
        if bucket.steps_on_current > 1:
            # The first step after a change of K is left out: it may carry one-time costs
            # of the new verification shape (a compile, kernel selection), not its speed.
            bucket.arms[k].add(tokens, seconds)
            if bucket.trial is not None and bucket.trial.running == k:
                bucket.trial.add(tokens, seconds)
            if self._clearly_losing(bucket):
                self._decide(bucket)

    def _clearly_losing(self, bucket: BucketState) -> bool:
        """Whether the K a bucket warms up or explores runs under ``CLEAR_LOSS`` of its
        reference (the K below it, the incumbent) over ``CLEAR_LOSS_STEPS`` counted steps."""
        k = bucket.current
        if bucket.trial is not None or bucket.steps_on_current - 1 < CLEAR_LOSS_STEPS:
            return False
        if bucket.incumbent is None:
            if k == 0 or bucket.steps_on_current >= self.settings.warmup_steps:
                return False
            reference = k - 1
        elif k != bucket.incumbent and bucket.steps_on_current < self.settings.decision_steps:
            reference = bucket.incumbent
        else:
            return False
        return bucket.arms[k].tokens_per_s < CLEAR_LOSS * bucket.arms[reference].tokens_per_s

    def replan(self) -> None:
        """Decide each bucket's K for the next ``decision_steps`` steps."""
        no_drafting_below = False
        for bucket in self.buckets:
            if bucket.incumbent is None and bucket.current == 0 and no_drafting_below:
                bucket.incumbent, bucket.steps_since_exploration = 0, 0  # see "No drafting carries upward"
            self._decide(bucket)
            no_drafting_below = no_drafting_below or (bucket.incumbent == 0 and bucket.trial is None)

    def _decide(self, bucket: BucketState) -> None:
        warmup = self.settings.warmup_steps
        if bucket.incumbent is None:
            k = bucket.current
            if bucket.steps_on_current < warmup and not self._clearly_losing(bucket):
                return
            slower = k > 0 and bucket.arms[k].tokens_per_s * (1 + HYSTERESIS) < bucket.arms[k - 1].tokens_per_s
            if k < self.k_max and not slower:
                self._run(bucket, k + 1)
                return
            bucket.incumbent = 0
            bucket.steps_since_exploration = 0
        elif bucket.trial is not None:
            if not self._advance_trial(bucket):
                return
        elif (bucket.current != bucket.incumbent and bucket.steps_on_current < self.settings.decision_steps
              and not self._clearly_losing(bucket)):
            return  # an exploration still running
        incumbent = bucket.incumbent
        best = max((k for k in range(len(bucket.arms)) if k != incumbent),
                   key=lambda k: bucket.arms[k].tokens_per_s / required_speedup(incumbent, k))
        if bucket.arms[best].tokens_per_s > required_speedup(incumbent, best) * bucket.arms[incumbent].tokens_per_s:
            bucket.trial = Trial.start(incumbent, best, bucket.current)
            self._run(bucket, bucket.trial.running)
            return
        rotation = bucket.exploration_rotation()
        if rotation:
            explored = rotation[bucket.explorations % len(rotation)]
            if bucket.steps_since_exploration >= self._exploration_interval(bucket, explored):
                bucket.steps_since_exploration = 0
                bucket.arms[explored] = ArmSpeed(steps=bucket.arms[explored].steps)  # measured afresh
                self._run(bucket, explored)
                bucket.explorations += 1
                return
        self._run(bucket, bucket.incumbent)

    def _advance_trial(self, bucket: BucketState) -> bool:
        """Move the bucket's trial on to its next interval once the running one has counted
        its steps; at the end, adopt the challenger if it won by the margin. True when the
        trial is over."""
        trial = bucket.trial
        if trial.counted_steps < max(self.settings.decision_steps - 1, 1):
            return False
        if trial.next_interval():
            self._run(bucket, trial.running)
            return False
        bucket.trial = None
        for k in (trial.incumbent, trial.challenger):
            # The paired measurements replace the estimates that started the trial.
            bucket.arms[k] = ArmSpeed(*trial.sums(k), steps=bucket.arms[k].steps)
        if trial.challenger_wins(required_speedup(trial.incumbent, trial.challenger)):
            bucket.incumbent = trial.challenger
        elif bucket.arms[trial.incumbent].tokens_per_s > 0:
            # Kept: the challenger's two intervals were exploration too; wait for their cost.
            shortfall = max(0.0, 1 - bucket.arms[trial.challenger].tokens_per_s
                            / bucket.arms[trial.incumbent].tokens_per_s)
            bucket.steps_since_exploration = -math.ceil(
                2 * self.settings.decision_steps * shortfall / self.settings.exploration_budget)
        return True

    def _exploration_interval(self, bucket: BucketState, k: int) -> int:
        """Steps before exploring ``k``: long enough that its measured shortfall against the
        incumbent costs at most the exploration budget, and at least ``explore_every``."""
        incumbent, explored = bucket.arms[bucket.incumbent].tokens_per_s, bucket.arms[k].tokens_per_s
        shortfall = 1 - explored / incumbent if incumbent > 0 and explored > 0 else 0.0
        return max(self.settings.explore_every,
                   math.ceil(self.settings.decision_steps * shortfall / self.settings.exploration_budget))

    @staticmethod
    def _run(bucket: BucketState, k: int) -> None:
        if bucket.current != k:
            bucket.current, bucket.steps_on_current = k, 0

    def incumbents(self) -> dict[str, int | None]:
        """Each measured bucket's chosen K (``None`` while it warms up), by ``describe_bucket``."""
        return {describe_bucket(index): bucket.incumbent for index, bucket in enumerate(self.buckets)
                if any(arm.steps for arm in bucket.arms)}

    def summary(self) -> str:
        """The measured buckets: chosen K and each arm's tokens/s (for the periodic INFO line)."""
        parts = []
        for index, bucket in enumerate(self.buckets):
            if not any(arm.steps for arm in bucket.arms):
                continue
            speeds = ", ".join(f"K={k} {arm.tokens_per_s:.1f}" for k, arm in enumerate(bucket.arms) if arm.steps)
            state = f"K={bucket.incumbent}" if bucket.incumbent is not None else f"warming up (K={bucket.current})"
            if bucket.trial is not None:
                state += f", trying K={bucket.trial.challenger} side by side"
            parts.append(f"{describe_bucket(index)}: {state}; tok/s {speeds}")
        return "; ".join(parts) or "no steps measured yet"
