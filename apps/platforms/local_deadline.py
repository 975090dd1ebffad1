"""Fail fast on the local model: how much output fits a deadline at this machine's measured speed, and the
refusal that says what it would take when nothing useful fits (local_model.py calls these)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from apps.platforms.errors import PlatformError

if TYPE_CHECKING:
    from llama_cpp import Llama

PROVIDER = "local"
#: Share of the calibrated speed counted on (the machine's load varies between calibration and the run).
SAFETY = 0.8
#: Every fail-fast refusal starts with this.
REFUSAL_PREFIX = "the local model is too slow for this run's deadline"


@dataclass(frozen=True, slots=True)
class Speed:
    """Tokens per second of this model on this machine, measured when it loads and refreshed by each run."""

    prompt_tps: float
    decode_tps: float

    def seconds(self, prompt_tokens: int, output_tokens: int) -> float:
        return prompt_tokens / self.prompt_tps + output_tokens / self.decode_tps


def affordable(speed: Speed, deadline: float | None, llama: Llama, prompt: list[int]) -> int | None:
    """Output tokens that fit before `deadline` (time.monotonic()) at calibrated speeds (None: no deadline)."""
    if deadline is None:
        return None
    from apps.platforms.local_sampling import cached_prefix

    # Both speeds discounted: a long prompt evaluates slower per token than the calibration's short one,
    # and the machine's load may have risen since.
    prompt_seconds = speed.seconds(len(prompt) - cached_prefix(llama, prompt), 0) / SAFETY
    left = deadline - time.monotonic() - prompt_seconds
    return max(0, int(left * speed.decode_tps * SAFETY))


def refuse(
    path: str,
    speed: Speed,
    deadline: float,
    halved: bool,
    llama: Llama,
    prompt: list[int],
    output_tokens: int,
) -> NoReturn:
    """Fail fast: the run cannot finish by its deadline at this machine's calibrated speeds. `halved`: the
    deadline given is half the time left, the other half being kept for a possible re-ask."""
    from apps.platforms.local_sampling import cached_prefix

    to_evaluate = len(prompt) - cached_prefix(llama, prompt)
    need = speed.seconds(to_evaluate, output_tokens) / SAFETY
    left = deadline - time.monotonic()
    if halved:  # as much again for the re-ask this schema may need
        need, left = 2 * need, 2 * left
    raise PlatformError(
        f"{REFUSAL_PREFIX}: {Path(path).name} would need about {need:.0f} s for this request "
        f"({to_evaluate} prompt tokens at {speed.prompt_tps:.0f}/s, at least {output_tokens} output "
        f"tokens at {speed.decode_tps:.0f}/s{', twice: a re-ask may follow' if halved else ''}) "
        f"but {max(left, 0):.0f} s are left. Configure a provider key (OPENAI_API_KEY, ANTHROPIC_API_KEY or "
        "GEMINI_API_KEY), point LOCAL_MODEL_PATH at a bigger or faster GGUF model, or raise the agent's "
        f"timeout_seconds to {math.ceil(need) + 5} or more",
        provider=PROVIDER,
        kind="unavailable",
        retryable=False,
    )
