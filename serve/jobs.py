"""One generation request as the service tracks it: parameters, state, progress and result."""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from sdtrt.engine.weights.lora import LoraSource
from sdtrt.runtime.request import Controls, Request, SizeConditioning
from sdtrt.runtime.task_setup import ImageInputs

log = logging.getLogger(__name__)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # passed its deadline

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class ImageTask:
    """Image to image (an image) and inpainting (an image and a mask): what every call of the
    job starts from. `strength` None: diffusers' default for the model and task."""

    image: Image.Image
    mask: Image.Image | None = None
    strength: float | None = None
    padding_mask_crop: int | None = None


@dataclass(frozen=True)
class ControlArguments:
    """ControlNets for a job, as diffusers' ControlNet pipelines take them (runtime/controlnet.py
    checks them against the model): a hint per ControlNet, and per ControlNet a name (None:
    every built one), a scale (None: the task's default), and where it starts and ends."""

    images: tuple[Image.Image, ...]
    names: tuple[str, ...] | None = None
    scales: tuple[float, ...] | None = None
    starts: tuple[float, ...] | None = None
    ends: tuple[float, ...] | None = None
    guess_mode: bool = False


@dataclass(frozen=True)
class GenerationParams:
    """What a client asks for; checked against the engines' ranges when submitted.

    `per_image_seeds` makes each image its own pipeline call seeded `seed + i` (the A1111
    convention, so every image can be remade alone from its seed); otherwise the `images` come
    from one batched call whose noise is drawn from `seed` as diffusers draws it.
    """

    prompt: str
    negative_prompt: str = ""
    steps: int = 50
    guidance: float | None = None  # the model's default
    seed: int | None = None
    height: int | None = None
    width: int | None = None
    scheduler: str | None = None
    images: int = 1
    per_image_seeds: bool = False
    task: ImageTask | None = None  # None: text to image
    # SDXL: the second text encoder's prompts, and the micro-conditioning (diffusers' names).
    prompt_2: str | None = None
    negative_prompt_2: str | None = None
    sizes: SizeConditioning | None = None
    # SD 3: T5's prompts and length (diffusers' names).
    prompt_3: str | None = None
    negative_prompt_3: str | None = None
    max_sequence_length: int | None = None
    skip_guidance_layers: tuple[int, ...] | None = None
    loras: tuple[LoraSource, ...] = ()  # applied for this job; () the built weights
    prompt_syntax: str = "diffusers"  # "a1111": A1111's weights, BREAK and long prompts
    # SDXL's ensemble of experts (diffusers' names): the base model stops at `denoising_end`
    # and hands its latents over; the refiner starts at `denoising_start` from `latents`, one
    # array per call.
    denoising_end: float | None = None
    denoising_start: float | None = None
    latents: list[np.ndarray] | None = None
    control: ControlArguments | None = None
    vae: str = "full"  # or "tiny": the tiny VAE built beside the model


@dataclass
class JobResult:
    pngs: list[bytes]  # each with its settings in the `parameters` text chunk
    seeds: list[int]
    infotexts: list[str]
    timings: dict[str, float]  # seconds per stage, summed over the job's pipeline calls
    latents: list[np.ndarray] = field(default_factory=list)  # per call, where it ends early


Listener = Callable[[], None]


@dataclass(eq=False)
class Job:
    """Mutated only by the service (under its lock or by the one worker that runs it)."""

    calls: list[Request]
    owner: str
    deadline: float | None  # time.monotonic() value, or None
    # Per call, what it starts from (image to image, inpainting, a refiner's latents): loaded.
    call_inputs: list[ImageInputs | None] = field(default_factory=list)
    strength: float | None = None
    loras: tuple[LoraSource, ...] = ()
    denoising_start: float | None = None
    denoising_end: float | None = None  # set: the job's result is latents, not images
    controls: Controls | None = None  # the ControlNets of every call, checked
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: JobState = JobState.QUEUED
    step: int = 0  # denoising steps done, over all calls
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished_at: float | None = None
    result: JobResult | None = None
    error: str | None = None
    version: int = 0  # bumped on every visible change, so watchers can tell what is new
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    _listeners: list[Listener] = field(default_factory=list)
    _listeners_lock: threading.Lock = field(default_factory=threading.Lock)

    # Model calls per pipeline call: `steps` at first, then what the scheduler reports (PNDM's
    # PLMS warm-up, for one, runs one call more than its steps).
    call_steps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.call_steps:
            self.call_steps = [call.steps for call in self.calls]

    @property
    def total_steps(self) -> int:
        return sum(self.call_steps)

    @property
    def result_bytes(self) -> int:
        return sum(len(png) for png in self.result.pngs) if self.result else 0

    @property
    def images(self) -> int:
        return sum(call.batch for call in self.calls)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` (from a worker thread) after each change; returns the unsubscriber."""
        with self._listeners_lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._listeners_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def changed(self) -> None:
        self.version += 1
        if self.state.finished:
            self.done.set()
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001 - a watcher's failure is its own, not the worker's
                log.exception("a listener of job %s failed; the job goes on", self.id)
