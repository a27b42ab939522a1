"""A virtual audio rig: a private PulseAudio server whose null sinks stand in for a microphone and a speaker.

kioskd opens ALSA's ``pulse`` device through sounddevice/PortAudio exactly as it would a sound card; the
server behind it is ours:

* the microphone is the monitor of the null sink ``rig_mic_in``, remapped as the source ``rig_mic``. The
  server clocks it, so capture runs in real time and delivers silence when nothing plays; a test speaks into
  it with ``paplay -d rig_mic_in`` (:meth:`AudioRig.play`). (``module-pipe-source`` is not clocked: a
  stream with no writer hangs on stop, so it is not used.)
* the speaker is the null sink ``rig_speaker``; :meth:`AudioRig.record_speaker` reads back what was played
  from ``rig_speaker.monitor``.

The environment (:attr:`AudioRig.env`) points libpulse at this server and names the source and sink
explicitly (``PULSE_SOURCE``/``PULSE_SINK``), so a removed microphone is an error for the client, as an
unplugged USB microphone would be, rather than a silent switch to another source. A daemon subprocess
inherits :attr:`AudioRig.env`. The server runs in the foreground, started with ``subprocess.Popen``, in a
temporary ``XDG_RUNTIME_DIR``/``HOME``, and is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

RATE = 48_000
MIC_SINK = "rig_mic_in"
MIC = "rig_mic"
SPEAKER = "rig_speaker"
ALSA_DEVICE = "pulse"
DEFAULT_RATE = 160  # espeak-ng words per minute for test speech
REQUIRED_TOOLS = ("pulseaudio", "pactl", "pacmd", "paplay", "parecord", "espeak-ng")

_CONFIG = f"""\
load-module module-native-protocol-unix auth-anonymous=1
load-module module-cli-protocol-unix
load-module module-null-sink sink_name={SPEAKER} rate={RATE} channels=2 sink_properties=device.description=rig-speaker
load-module module-null-sink sink_name={MIC_SINK} rate={RATE} channels=1 sink_properties=device.description=rig-mic-in
load-module module-remap-source source_name={MIC} master={MIC_SINK}.monitor
set-default-sink {SPEAKER}
set-default-source {MIC}
"""


class RigError(RuntimeError):
    pass


PROCESS_ENV = ("XDG_RUNTIME_DIR", "PULSE_SERVER", "PULSE_SOURCE", "PULSE_SINK")
"""What this process's environment must say for sounddevice, used in-process, to find the rig."""


@contextlib.contextmanager
def running_rig(root: Path, set_env: Callable[[str, str], None]) -> Iterator[AudioRig]:
    """Start a rig under ``root``, point this process at it through ``set_env`` (which the caller undoes)
    and re-initialise PortAudio to see it; stop it and re-initialise again on the way out."""
    from kioskd.audio.devices import rescan

    rig = AudioRig(root, set_env=set_env)
    for key in PROCESS_ENV:
        set_env(key, rig.env[key])
    rig.start()
    rescan()
    try:
        yield rig
    finally:
        rig.stop()
        rescan()


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Wait for an external process to reach a state there is no event for (a server socket, a stream)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RigError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class SpeakerRecording:
    """``parecord`` on the speaker's monitor, as mono 16-bit at ``rate``; :meth:`stop` returns float32."""

    def __init__(self, env: Mapping[str, str], rate: int = 24_000, source: str = f"{SPEAKER}.monitor") -> None:
        self.rate = rate
        self._chunks: list[bytes] = []
        self._started = threading.Event()
        self._proc = subprocess.Popen(
            ["parecord", "--raw", "-d", source, f"--rate={rate}", "--channels=1", "--format=s16le",
             "--latency-msec=20"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=dict(env),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._started.wait(10):
            self._proc.kill()
            raise RigError("parecord delivered nothing within 10 s")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        while True:
            data = self._proc.stdout.read1(65536)  # type: ignore[attr-defined]
            if not data:
                return
            self._chunks.append(data)
            self._started.set()

    def snapshot(self) -> np.ndarray:
        """What has been recorded so far (mono float32), without stopping."""
        raw = b"".join(list(self._chunks))
        raw = raw[: len(raw) - len(raw) % 2]
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0

    def stop(self) -> np.ndarray:
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(5)
        raw = b"".join(self._chunks)
        raw = raw[: len(raw) - len(raw) % 2]
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


class AudioRig:
    """One private PulseAudio server and the tools to talk to it. See the module docstring."""

    def __init__(self, root: Path, *, set_env: Callable[[str, str], None] | None = None) -> None:
        self.root = root
        self.runtime_dir = root / "run"
        self.home = root / "home"
        self.config = root / "rig.pa"
        self.log = root / "pulseaudio.log"
        self._set_env = set_env
        self._proc: subprocess.Popen[bytes] | None = None
        self._keepers: list[subprocess.Popen[bytes]] = []
        self._extra_modules: dict[str, list[str]] = {}
        self.env: dict[str, str] = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "HOME": str(self.home),
            "PULSE_SERVER": f"unix:{self.runtime_dir}/pulse/native",
            "PULSE_SOURCE": MIC,
            "PULSE_SINK": SPEAKER,
        }
        for key in ("PULSE_COOKIE", "PULSE_PROP", "PULSE_CLIENTCONFIG"):
            self.env.pop(key, None)

    # -- the server ------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.config.write_text(_CONFIG)
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                ["pulseaudio", "-n", "-F", str(self.config), "--daemonize=no", "--exit-idle-time=-1",
                 "--disallow-exit", "--log-target=stderr"],
                stdout=log, stderr=log, env=self.env, cwd=self.root,
            )
        try:
            wait_until(self._answers, 15, "the PulseAudio server to answer")
            self._warm_up()
        except BaseException:
            self.stop()  # a rig that failed to start leaves nothing running
            raise

    def _warm_up(self) -> None:
        """Make the null sinks behave like sound cards from the first stream on.

        An idle null sink sleeps for up to 2 s between wake-ups and notices a new stream only at the next
        one, so the first stream a client opens (on the sink or its monitor) would wait 1-2 s before any
        audio moves. A low-latency reader on each monitor, then a suspend/resume of each sink (which re-arms
        its timer at the readers' latency), settles that before the test starts.
        """
        for sink in (SPEAKER, MIC_SINK):
            self._keepers.append(subprocess.Popen(
                ["parecord", "--raw", "-d", f"{sink}.monitor", "--latency-msec=10", "--rate=8000", "--channels=1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env,
            ))
        wait_until(lambda: all(self.recording_streams(f"{sink}.monitor") for sink in (SPEAKER, MIC_SINK)), 15,
                   "the rig's monitor readers to connect")
        for sink in (SPEAKER, MIC_SINK):
            self.pactl("suspend-sink", sink, "1")
            self.pactl("suspend-sink", sink, "0")

    def _answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RigError(f"pulseaudio exited with {self._proc.returncode}: {self.log.read_text()[-2000:]}")
        return self.pactl_ok("info")

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL if it does not go)."""
        keepers, self._keepers = self._keepers, []
        for keeper in keepers:
            if keeper.poll() is None:
                keeper.terminate()
        for keeper in keepers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                keeper.wait(5)
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart(self) -> None:
        """Stop and start the server: every client loses its streams; extra microphones are gone."""
        self.stop()
        self._extra_modules.clear()
        self.start()

    # -- pactl -----------------------------------------------------------------------------------------

    def pactl(self, *args: str) -> str:
        result = subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, timeout=15,
                                check=False)
        if result.returncode != 0:
            raise RigError(f"pactl {' '.join(args)}: {result.stderr.strip() or result.returncode}")
        return result.stdout

    def pactl_ok(self, *args: str) -> bool:
        return subprocess.run(["pactl", *args], env=self.env, capture_output=True, timeout=15,
                              check=False).returncode == 0

    def _load(self, module: str, *params: str) -> str:
        return self.pactl("load-module", module, *params).strip()

    def sources(self) -> list[str]:
        return [line.split("\t")[1] for line in self.pactl("list", "short", "sources").splitlines() if line]

    def recording_streams(self, source: str) -> list[str]:
        """Indexes of the recording streams (source outputs) on ``source``."""
        index = {line.split("\t")[1]: line.split("\t")[0]
                 for line in self.pactl("list", "short", "sources").splitlines() if line}
        wanted = index.get(source)
        return [line.split("\t")[0] for line in self.pactl("list", "short", "source-outputs").splitlines()
                if line and line.split("\t")[1] == wanted]

    def pacmd(self, *args: str) -> str:
        """The server's command line (for what pactl cannot do, such as ending a stream)."""
        result = subprocess.run(["pacmd", *args], env=self.env, capture_output=True, text=True, timeout=15,
                                check=False)
        if result.returncode != 0 or result.stdout.startswith(">>> "):
            raise RigError(f"pacmd {' '.join(args)}: {(result.stderr or result.stdout).strip()}")
        return result.stdout

    def set_env(self, key: str, value: str) -> None:
        self.env[key] = value
        if self._set_env is not None:
            self._set_env(key, value)

    # -- microphones -----------------------------------------------------------------------------------

    def add_mic(self, name: str, channels: int, channel_map: Sequence[str] | None = None) -> str:
        """A further microphone ``name`` with ``channels`` channels; returns the sink to play into."""
        sink = f"{name}_in"
        cmap = ",".join(channel_map) if channel_map else None
        sink_args = [f"sink_name={sink}", f"rate={RATE}", f"channels={channels}"]
        if cmap:
            sink_args.append(f"channel_map={cmap}")
        modules = [self._load("module-null-sink", *sink_args)]
        source_args = [f"source_name={name}", f"master={sink}.monitor"]
        if cmap:
            source_args += [f"channels={channels}", f"channel_map={cmap}", f"master_channel_map={cmap}"]
        modules.append(self._load("module-remap-source", *source_args))
        self._extra_modules[name] = modules
        return sink

    def use_mic(self, name: str) -> None:
        """Make ``name`` the source that clients (kioskd included) record from."""
        self.pactl("set-default-source", name)
        self.set_env("PULSE_SOURCE", name)

    def unplug_mic(self, name: str = MIC) -> None:
        """Remove the microphone source, and cut off the clients that were recording from it.

        PulseAudio would quietly move those streams to another source; an ALSA device that disappears
        fails its stream instead, which is what this imitates.
        """
        attached = self.recording_streams(name)
        for line in self.pactl("list", "short", "modules").splitlines():
            fields = line.split("\t")
            if len(fields) > 2 and fields[1] == "module-remap-source" and f"source_name={name} " in fields[2] + " ":
                self.pactl("unload-module", fields[0])
        for stream in attached:
            try:
                self.pacmd("kill-source-output", stream)
            except RigError:
                still_there = any(line.split("\t")[0] == stream
                                  for line in self.pactl("list", "short", "source-outputs").splitlines() if line)
                if still_there:
                    raise

    def replug_mic(self) -> None:
        """Bring back the default microphone after :meth:`unplug_mic`."""
        self._load("module-remap-source", f"source_name={MIC}", f"master={MIC_SINK}.monitor")
        self.pactl("set-default-source", MIC)

    def suspend_mic(self, suspended: bool, name: str = MIC) -> None:
        """A source that stops delivering without an error (a wedged driver)."""
        self.pactl("suspend-source", name, "1" if suspended else "0")

    # -- sound in and out ------------------------------------------------------------------------------

    def play(self, wav: Path, *, sink: str = MIC_SINK, channel_map: Sequence[str] | None = None
             ) -> subprocess.Popen[bytes]:
        """Start ``paplay`` of ``wav`` into ``sink`` (by default: speak into the microphone)."""
        args = ["paplay", "-d", sink]
        if channel_map:
            args.append(f"--channel-map={','.join(channel_map)}")
        return subprocess.Popen([*args, str(wav)], env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)

    def play_and_wait(self, wav: Path, *, sink: str = MIC_SINK, channel_map: Sequence[str] | None = None,
                      timeout: float = 120) -> None:
        proc = self.play(wav, sink=sink, channel_map=channel_map)
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RigError(f"paplay {wav} failed: {err.decode(errors='replace').strip()}")

    def record_speaker(self, rate: int = 24_000) -> SpeakerRecording:
        """Start recording what the speaker plays; ``.stop()`` returns it (mono float32 at ``rate``)."""
        return SpeakerRecording(self.env, rate)


def synthesize(text: str, directory: Path, *, voice: str = "en-us", rate: int = DEFAULT_RATE) -> Path:
    """espeak-ng speech as a WAV in ``directory``, reused when the same words were asked for before."""
    key = hashlib.sha1(f"{voice}|{rate}|{text}".encode()).hexdigest()[:16]
    path = directory / f"speech-{voice}-{rate}-{key}.wav"
    if not path.exists():
        tmp = path.with_suffix(".tmp.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(tmp), text], check=True,
                       capture_output=True, timeout=60)
        tmp.replace(path)
    return path
