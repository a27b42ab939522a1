"""Finding the configured sound devices through PortAudio, and ``kioskd devices``.

A device is configured by index or by name. Names are matched the way sounddevice matches them (exact name
first, then space-separated substrings in order, e.g. ``"USB Audio"``), plus ALSA's own spellings of a
hardware device, ``hw:1,0`` / ``plughw:CARD=seeed4micvoicec,DEV=0``, which PortAudio lists as
``"<card>: <pcm> (hw:1,0)"``. Indexes move when devices are plugged in a different order, so names are the
better choice on a fleet.

PortAudio reads the device list once, when it is initialised; :func:`rescan` re-reads it (a USB microphone
plugged in later, a sound server started after us). Every PortAudio call kioskd makes from its own threads
holds :data:`PORTAUDIO_LOCK`, because PortAudio is not safe to call from two threads at once.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from kioskd.config import Settings

Kind = Literal["input", "output"]
PORTAUDIO_LOCK = threading.RLock()
_HW_RE = re.compile(
    r"^(?:plug)?hw:(?:CARD=)?(?P<card>[^,]+)(?:,(?:DEV=)?(?P<dev>\d+))?$",
    re.IGNORECASE,
)
PROC_ASOUND = Path("/proc/asound")
# Stands in for the realtime endpoint in commands that never connect (a loopback URL needs no key).
_UNUSED_ENDPOINT = "ws://127.0.0.1:9"


class DeviceError(Exception):
    """The configured device cannot be used; the message says why and what there is instead."""


class PortAudioUnavailable(DeviceError):
    """The PortAudio library itself could not be loaded."""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: int

    def channels(self, kind: Kind) -> int:
        return self.max_input_channels if kind == "input" else self.max_output_channels


def _sounddevice() -> Any:
    """sounddevice, imported on first use so that a missing libportaudio is an error message, not a crash."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError when libportaudio2 is missing
        raise PortAudioUnavailable(
            f"PortAudio is not available ({exc}); install the libportaudio2 package"
        ) from None
    return sounddevice


def list_devices() -> list[DeviceInfo]:
    """Every device PortAudio knows, in index order."""
    sd = _sounddevice()
    with PORTAUDIO_LOCK:
        raw = sd.query_devices()
        hostapis = sd.query_hostapis()
    return [
        DeviceInfo(
            index=int(d["index"]),
            name=str(d["name"]),
            hostapi=str(hostapis[d["hostapi"]]["name"]),
            max_input_channels=int(d["max_input_channels"]),
            max_output_channels=int(d["max_output_channels"]),
            default_samplerate=int(d["default_samplerate"]),
        )
        for d in raw
    ]


def rescan() -> None:
    """Re-initialise PortAudio so that its device list is current. Closes every open stream."""
    sd = _sounddevice()
    with PORTAUDIO_LOCK:
        sd._terminate()
        sd._initialize()


def _alsa_card_index(card: str, proc_asound: Path) -> int | None:
    """ALSA card number for ``1`` or for a card id like ``seeed4micvoicec`` (``/proc/asound/<id>`` -> cardN)."""
    if card.isdigit():
        return int(card)
    try:
        target = (proc_asound / card).resolve(strict=True).name
    except OSError:
        return None
    return int(target[4:]) if target.startswith("card") and target[4:].isdigit() else None


def _hw_match(spec: str, devices: Sequence[DeviceInfo], proc_asound: Path) -> list[DeviceInfo]:
    match = _HW_RE.match(spec.strip())
    if not match:
        return []
    card = _alsa_card_index(match.group("card"), proc_asound)
    if card is None:
        return []
    dev = int(match.group("dev") or 0)
    suffixes = (f"(hw:{card},{dev})", f"(plughw:{card},{dev})")
    return [d for d in devices if d.name.endswith(suffixes)]


def _substring_match(spec: str, devices: Sequence[DeviceInfo]) -> tuple[list[DeviceInfo], list[DeviceInfo]]:
    """(exact, partial) matches, with sounddevice's rule: words of ``spec`` appear in order in the name."""
    query = spec.lower()
    words = query.split()
    exact, partial = [], []
    for d in devices:
        full = f"{d.name}, {d.hostapi}".lower()
        pos = 0
        for word in words:
            pos = full.find(word, pos)
            if pos < 0:
                break
            pos += len(word)
        else:
            partial.append(d)
            if query in (d.name.lower(), full):
                exact.append(d)
    return exact, partial


def _describe(devices: Sequence[DeviceInfo], kind: Kind) -> str:
    usable = [d for d in devices if d.channels(kind) > 0]
    if not usable:
        return f"PortAudio lists no {kind} devices"
    names = ", ".join(f"[{d.index}] {d.name}" for d in usable)
    return f"{kind} devices: {names}"


def choose_device(
    spec: str | int,
    kind: Kind,
    devices: Sequence[DeviceInfo],
    *,
    proc_asound: Path = PROC_ASOUND,
) -> DeviceInfo:
    """The one device ``spec`` names among ``devices``, or :class:`DeviceError` listing the candidates."""
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec.strip())
    if isinstance(spec, int):
        for d in devices:
            if d.index == spec:
                if d.channels(kind) <= 0:
                    raise DeviceError(f"device {spec} ({d.name}) has no {kind} channels; {_describe(devices, kind)}")
                return d
        raise DeviceError(f"there is no device with index {spec}; {_describe(devices, kind)}")
    usable = [d for d in devices if d.channels(kind) > 0]
    if not spec.strip():
        raise DeviceError(f"the {kind} device name is empty; {_describe(devices, kind)}")
    candidates = _hw_match(spec, usable, proc_asound)
    if len(candidates) == 1:
        return candidates[0]
    exact, partial = _substring_match(spec, usable)
    if len(exact) == 1:
        return exact[0]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise DeviceError(f"no {kind} device matches {spec!r}; {_describe(devices, kind)}")
    names = ", ".join(f"[{d.index}] {d.name}" for d in partial)
    raise DeviceError(f"{spec!r} matches several {kind} devices ({names}); use a longer name or the index")


def resolve_device(spec: str | int, kind: Kind) -> DeviceInfo:
    """The configured device as PortAudio knows it now, or :class:`DeviceError`."""
    return choose_device(spec, kind, list_devices())


def _print_table(devices: Sequence[DeviceInfo], kind: Kind, chosen: DeviceInfo | None, problem: str) -> None:
    print(f"{kind.capitalize()} devices:")
    rows = [d for d in devices if d.channels(kind) > 0]
    if not rows:
        print("  (none)")
    for d in rows:
        mark = "*" if chosen is not None and d.index == chosen.index else " "
        print(
            f" {mark} [{d.index:>2}] {d.name}  ({d.hostapi}, {d.channels(kind)} ch, {d.default_samplerate} Hz)"
        )
    if problem:
        print(f"  configured {kind} device: {problem}")


def load_local_settings(path: Path | None) -> Settings:
    """Settings for commands that use only this machine's sound and wake word (``devices``, ``wake-test``).

    Such a command does not connect anywhere, so a realtime section that is not filled in yet (no endpoint,
    no key: someone tuning the wake word on a laptop) is not an error for it; every other problem is.
    """
    from kioskd.config import ConfigError, load_settings

    try:
        return load_settings(path)
    except ConfigError as exc:
        local = [problem for problem in exc.problems if not problem.startswith("realtime.")]
        if local:
            raise ConfigError(local) from None
    return load_settings(path, overrides={"realtime": {"endpoint": _UNUSED_ENDPOINT}})


def cli_devices(args: argparse.Namespace) -> int:
    """``kioskd devices``: list what PortAudio sees and mark the configured input and output with ``*``."""
    from kioskd.config import ConfigError, report_problems

    try:
        settings = load_local_settings(getattr(args, "config", None))
    except ConfigError as exc:
        return report_problems(exc.problems, getattr(args, "config", None))
    try:
        devices = list_devices()
    except PortAudioUnavailable as exc:
        print(f"kioskd: {exc}", file=sys.stderr)
        return 1
    if not devices:
        print(
            "PortAudio finds no audio devices. Check that a sound card is present (aplay -l, arecord -l), that "
            "this user is in the 'audio' group, and, for PulseAudio/PipeWire, that the server is running and "
            "libasound2-plugins is installed.",
            file=sys.stderr,
        )
        return 1
    status = 0
    configured: list[tuple[Kind, str | int]] = [
        ("input", settings.audio.input_device),
        ("output", settings.audio.output_device),
    ]
    for kind, spec in configured:
        chosen: DeviceInfo | None = None
        problem = ""
        try:
            chosen = choose_device(spec, kind, devices)
        except DeviceError as exc:
            problem = str(exc)
            status = 1
        _print_table(devices, kind, chosen, problem)
        print()
    print(f"configured: input_device = {settings.audio.input_device!r}, output_device = "
          f"{settings.audio.output_device!r} (marked *)")
    return status
