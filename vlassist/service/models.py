"""The process's current model: the models one can switch to, who may switch, and the switch itself.

One ModelSlot per server process owns the answerer every session uses and the answer service in front of it.
Loading (the first one, or a switch) runs on a thread of its own and reports its stage and progress in a
LoadState every page can draw; a page that closes or reruns meanwhile cannot interrupt it.

A switch: new requests are refused with a message naming the coming model; questions still waiting in the queue
end at once with a message saying to send them again (each stored answer names the model it was asked of, so a
waiting question is not quietly answered by another model); the running answer ends on the old model; the old
model is unloaded (its memory freed before the new one needs it); the new one is loaded with progress; the
service resumes on it. If the new model cannot be loaded, the old one is loaded again and the page says why.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from vlassist.adapter_folder import CONFIG_FILE
from vlassist.backends import check_local_fit
from vlassist.checkpoint import inspect_checkpoint, model_id
from vlassist.config import Settings
from vlassist.conversation import Answerer
from vlassist.errors import ModelNotFoundError, VlassistError
from vlassist.fit import Fit, assess, checkpoint_format_of
from vlassist.service.answering import Admission, AnswerService
from vlassist.service.limits import default_admission

log = logging.getLogger(__name__)

Progress = Callable[[str, float, str], None]  # (stage, fraction of the load done, what happens, in words)
Loader = Callable[[Settings, Progress], Answerer]


@dataclass(frozen=True)
class ModelChoice:
    """One model the page offers: the name shown, where it is (a folder or a server's model id), its family."""

    name: str
    target: str
    family: str | None
    remote: bool = False
    quant: str = "none"  # int8 | int4: a 16-bit checkpoint quantized at load (the page's Weights choice)
    fit: Fit | None = None  # format, size on disk and memory estimate of a local checkpoint (fit.py)
    adapter: str | None = None  # a LoRA adapter folder applied to a local checkpoint at load


@dataclass(frozen=True)
class LoadState:
    """Where loading stands, for every page to draw: what, which stage, how far, who started it, how it ended."""

    phase: str = "idle"  # idle | loading (the first model) | switching | ready | failed
    target: str = ""  # the model being loaded (its name)
    stage: str = ""  # start, read, weights, device, warmup, ready; wait and unload during a switch
    fraction: float = 0.0
    detail: str = ""
    started: float = 0.0  # time.monotonic() when it began
    by: str | None = None  # the page session that started it
    who: str | None = None  # the user who started a switch, when users are named
    error: BaseException | None = None  # why the last load failed (phase "failed")
    notice: str = ""  # how the last switch went: what was cancelled, or why the old model is back
    cancelled: int = 0  # questions that were waiting when the last switch began, told to send again

    @property
    def busy(self) -> bool:
        """True while a model is being loaded or switched."""
        return self.phase in ("loading", "switching")

    @property
    def elapsed_s(self) -> float:
        """Seconds since this load began."""
        return time.monotonic() - self.started if self.started else 0.0


def list_checkpoints(models_dir: Path, settings: Settings | None = None) -> list[ModelChoice]:
    """Complete, supported checkpoint folders directly under `models_dir`, by name; anything else is skipped.

    With `settings`, each carries its fit: format, size on disk, memory estimate and whether it fits this machine.
    """
    try:
        folders = sorted((p for p in Path(models_dir).iterdir() if p.is_dir()), key=lambda p: p.name.lower())
    except OSError:
        return []
    found = []
    for folder in folders:
        try:
            family = inspect_checkpoint(folder)
        except ModelNotFoundError:
            continue  # not a checkpoint (or an incomplete one): nothing to offer
        fit = None
        if settings is not None:
            fit = assess(folder, None if settings.device == "cpu" else settings.gpu_memory_gb, settings.decode_context,
                         settings.max_image_tokens, settings.quant)
            if settings.device == "cpu":  # the GPU budget does not bind a CPU-only server
                fit = Fit(fit.weights_format, fit.disk_bytes, fit.estimate, True)
        found.append(ModelChoice(folder.name, str(folder), family.model_type, fit=fit))
    return found


def list_server_models(answerer: Answerer, settings: Settings) -> list[ModelChoice]:
    """The models a remote answerer's server lists on /v1/models (empty if it cannot be asked)."""
    client = getattr(answerer, "client", None)
    if client is None:
        return []
    from vlassist.remote.answerer import guess_family

    try:
        ids = [model.id for model in client.models.list()]
    except Exception:  # the server went away: the page still shows the model in use
        log.warning("could not list the server's models", exc_info=True)
        return []
    return [ModelChoice(i, i, guess_family(i) or settings.backend_family, remote=True) for i in ids]


def choice_of(answerer: Answerer) -> ModelChoice:
    """The answerer's own model as a choice (what the page shows as current)."""
    info = answerer.info
    remote = getattr(info, "server", None) is not None
    adapter = None if remote else getattr(info, "adapter", "") or None
    name = info.model_dir if remote else model_id(info.model_dir, adapter)
    quant = getattr(info, "weights_format", "")
    return ModelChoice(name, info.model_dir, info.family, remote, quant if quant in ("int8", "int4") else "none",
                       adapter=adapter)


def with_adapter(choice: ModelChoice, adapter: str | None) -> ModelChoice:
    """`choice` (a local checkpoint) with `adapter` applied at load, named `<base>+<adapter>`; None: without one."""
    return replace(choice, name=model_id(choice.target, adapter), adapter=adapter or None)


def list_adapters(models_dir: Path) -> list[tuple[str, str]]:
    """LoRA adapter folders (holding adapter_config.json) directly under `models_dir`: (name, path), by name."""
    try:
        folders = sorted((p for p in Path(models_dir).iterdir() if p.is_dir()), key=lambda p: p.name.lower())
    except OSError:
        return []
    return [(folder.name, str(folder)) for folder in folders if (folder / CONFIG_FILE).is_file()]


def answer_model(answerer: Answerer) -> dict:
    """What a stored answer records of the model that wrote it: family, base checkpoint, weight format, adapter."""
    info = answerer.info
    weights_format = getattr(info, "weights_format", "") or None
    if weights_format is None and getattr(info, "server", None) is None:
        with contextlib.suppress(VlassistError):  # a local checkpoint's format, as its config.json declares it
            weights_format = checkpoint_format_of(Path(info.model_dir))
    return {"model_family": info.family, "model": info.model_dir, "weights_format": weights_format,
            "adapter": getattr(info, "adapter", "") or None}


def same_model(a: ModelChoice, b: ModelChoice) -> bool:
    """Whether two choices name the same model (the same folder, however its path is written, or server id)."""
    if a.remote or b.remote:
        return a.remote == b.remote and a.target == b.target
    adapters = [Path(c.adapter).resolve() if c.adapter else None for c in (a, b)]
    return (Path(a.target).resolve() == Path(b.target).resolve() and a.quant == b.quant
            and adapters[0] == adapters[1])


def may_switch(settings: Settings, owner: str) -> bool:
    """Whether `owner` may switch the model: anyone on a single-user install, else only VLASSIST_ADMIN_USERS."""
    if not settings.user_header:
        return True
    return owner in settings.admin_users


def _load_answerer(settings: Settings, progress: Progress) -> Answerer:
    from vlassist.backends import load_answerer  # the engine (torch) is imported only when a model is loaded

    return load_answerer(settings, progress)


class ModelSlot:
    """The process-wide current model and its answer service; loads and switches on a thread of its own."""

    def __init__(self, settings: Settings, loader: Loader | None = None,
                 admission: Callable[[Answerer, Settings], Sequence[Admission]] = default_admission):
        self.settings = settings
        self._load = loader or _load_answerer
        self._admission = admission
        self._lock = threading.Lock()
        self._answerer: Answerer | None = None
        self._loaded_with: Settings = settings  # the settings the current answerer was loaded with
        self._service: AnswerService | None = None
        self._state = LoadState()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> Answerer | None:
        """The answerer every session uses now (None before the first load has finished)."""
        return self._answerer

    @property
    def service(self) -> AnswerService | None:
        """The one answer service of this process (None before the first load has finished)."""
        return self._service

    @property
    def state(self) -> LoadState:
        """A snapshot of where loading stands."""
        return self._state

    def start_load(self, by: str | None = None) -> bool:
        """Begin loading the configured model unless it is loaded or loading; True if this call began it.

        After a failed load a new call tries again (the model may have been copied into place since).
        """
        with self._lock:
            if self._state.busy or self._answerer is not None:
                return False
            target = self.settings.backend_model or self.settings.backend_url or self.settings.model_dir.name
            self._state = LoadState("loading", target, "start", 0.0, "Starting", time.monotonic(), by)
            self._thread = threading.Thread(target=self._first_load, name="vlassist-load", daemon=True)
            self._thread.start()
            return True

    def switch(self, choice: ModelChoice, by: str | None = None, who: str | None = None) -> None:
        """Begin switching every session to `choice`; VlassistError if it cannot start (at once, nothing changed)."""
        if not choice.remote:
            inspect_checkpoint(Path(choice.target))  # a broken folder is refused before anything is unloaded
            check_local_fit(self._settings_for(choice))  # and so is one that would not fit the GPU memory budget
        with self._lock:
            if self._state.busy:
                raise VlassistError(f"the model is already being switched to {self._state.target}; wait for it")
            if self._service is None or self._answerer is None:
                raise VlassistError("no model is loaded yet")
            if same_model(choice, choice_of(self._answerer)):
                raise VlassistError(f"{choice.name} is already the model in use")
            self._state = LoadState("switching", choice.name, "wait", 0.0, "Waiting for the running answer to "
                                    "finish", time.monotonic(), by, who)
            old_name = choice_of(self._answerer).name
            # From here on new questions are refused and waiting ones are told: nothing is queued for a model
            # that is about to go away.
            cancelled = self._service.pause(
                f"the model is being switched to {choice.name}; send your question again when it is loaded",
                f"not answered: the model was switched from {old_name} to {choice.name} while this question "
                f"waited in the queue. Send it again to ask {choice.name}.")
            self._thread = threading.Thread(target=self._switch, args=(choice, len(cancelled)), name="vlassist-switch",
                                            daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the load or switch under way has ended; True if none is running any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self._state.busy

    def close(self) -> None:
        """End the service and unload the model (at process exit, and in tests)."""
        self.wait()
        if self._service is not None:
            self._service.close()
        _unload(self._answerer)
        self._answerer = self._service = None

    # ---- the loading thread ----

    def _progress(self, stage: str, fraction: float, detail: str) -> None:
        with self._lock:
            self._state = replace(self._state, stage=stage, fraction=min(1.0, max(0.0, fraction)), detail=detail)

    def _first_load(self) -> None:
        try:
            answerer = self._load(self.settings, self._progress)
            admission = self._admission(answerer, self.settings)
            service = self._service
            if service is None:
                service = AnswerService(answerer, admission=admission)
            else:  # a switch left no model at all: the paused service goes on with this one
                service.replace_answerer(answerer, admission)
                service.resume()
        except BaseException as exc:  # shown on every page that waits; the next page load tries again
            log.warning("loading the model failed: %s", exc)
            with self._lock:
                self._state = replace(self._state, phase="failed", error=exc)
            return
        with self._lock:
            self._answerer, self._service, self._loaded_with = answerer, service, self.settings
            self._state = replace(self._state, phase="ready", stage="ready", fraction=1.0, detail="Ready")

    def _settings_for(self, choice: ModelChoice) -> Settings:
        if choice.remote:
            return self.settings.with_(backend_model=choice.target, backend_family=choice.family)
        return self.settings.with_(model_dir=Path(choice.target), quant=choice.quant,
                                   adapter_dir=Path(choice.adapter) if choice.adapter else None)

    def _switch(self, choice: ModelChoice, cancelled: int) -> None:
        service, old = self._service, self._answerer
        old_name = choice_of(old).name
        notice = (f"{cancelled} waiting question(s) were cancelled by the switch and say so; "
                  "they can be sent again." if cancelled else "")
        service.wait_idle()  # the running answer ends on the model it started on
        self._progress("unload", 0.0, f"Unloading {old_name}")
        _unload(old)
        with self._lock:
            self._answerer = None  # pages wait for the switch; nothing may use the unloaded model
        settings = self._settings_for(choice)
        try:
            new = self._load(settings, self._progress)
        except BaseException as exc:
            log.warning("switching to %s failed: %s", choice.name, exc)
            notice = f"{choice.name} could not be loaded ({exc}); {old_name} was loaded again. " + notice
            with self._lock:
                self._state = replace(self._state, target=old_name)
            settings = self._loaded_with
            try:
                new = self._load(settings, self._progress)
            except BaseException as again:  # nothing to answer with: every page shows why
                log.error("reloading %s failed too: %s", old_name, again)
                with self._lock:
                    self._state = replace(self._state, phase="failed", error=again, notice=notice,
                                          cancelled=cancelled)
                return
        service.replace_answerer(new, self._admission(new, settings))
        with self._lock:
            self._answerer, self._loaded_with = new, settings
            self._state = replace(self._state, phase="ready", stage="ready", fraction=1.0, detail="Ready",
                                  notice=notice.strip(), cancelled=cancelled)
        service.resume()


def _unload(answerer: Answerer | None) -> None:
    close = getattr(answerer, "close", None)
    if close is not None:
        close()
