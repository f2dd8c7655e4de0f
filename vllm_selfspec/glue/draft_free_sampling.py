"""Steps without drafts sampled as plain vLLM samples them (a worker-side patch)."""

from __future__ import annotations

from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from vllm_selfspec.glue.config import SELF_SKIP_METHOD
from vllm_selfspec.glue.patching import VllmPatch


class PatchRunnerSamplesDraftFreeStepsPlainly(VllmPatch):
    """Sample a self_skip step in which no request has a draft with vLLM's plain sampler.

    Why: with a speculative config, vLLM 0.32's runner sends every step through the
    rejection sampler, even one without a single draft (after the scheduler booked K = 0,
    the controller's choice wherever drafting does not pay). For random sampling that
    step still draws recovered-token noise over the whole vocabulary for every request
    (``sample_recovered_tokens``) and processes the logits twice; on this project's CPU
    it made a draft-free step of 8 requests at temperature 1 about 11% slower than plain
    vLLM's. Without drafts the rejection sampler outputs the bonus token alone, sampled
    by the plain sampler from the same logits with the same random draws (requests' own
    generators included), so the plain sampler's token is the one it would output.
    How: applied by each worker's ``SelfSkipProposer``; for a self_skip runner, ``_sample``
    passes ``spec_decode_metadata=None`` to the original when ``max_spec_len == 0`` (a host
    integer from the scheduler's output, the same on every rank: no synchronisation), which
    then samples as plain vLLM does; steps with drafts are untouched.
    Remove when: vLLM skips the rejection sampler for steps without drafts.
    """

    target = GPUModelRunner
    replaces = ("_sample",)

    def _sample(self, logits, spec_decode_metadata):
        original = PatchRunnerSamplesDraftFreeStepsPlainly.original("_sample")
        if (spec_decode_metadata is not None and spec_decode_metadata.max_spec_len == 0
                and getattr(self.speculative_config, "method", None) == SELF_SKIP_METHOD):
            spec_decode_metadata = None
        return original(self, logits, spec_decode_metadata)
