"""``kioskd demo``: one whole conversation with no sound card and no Azure account.

The bundled simulator serves the realtime protocol on 127.0.0.1; a speech WAV stands in for the microphone
(by default one made with espeak-ng: the wake word and a question in one breath, a pause, then the visitor
talking over the answer) and a WAV file stands in for the speaker. In between runs the daemon itself —
the same state machine, wake detector, realtime client, budget and jitter buffer as ``kioskd run`` — and
the demo prints its timeline. Exit 0 when the conversation went the whole way: wake, answer, barge-in,
idle close, back to listening.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kioskd.audio.capture import FileCapture
from kioskd.audio.earcons import Earcons
from kioskd.audio.playback import FilePlayback, JitterBuffer
from kioskd.audio.wav import WavError, read_wav, write_wav
from kioskd.config import ConfigError, Settings, load_settings, report_problems
from kioskd.daemon import Daemon, DaemonEvent, State
from kioskd.logs import setup_logging
from kioskd.runtime import Parts, run_daemon
from kioskd.sim.options import SimOptions
from kioskd.sim.server import SimServer
from kioskd.sim.voice import ReplyVoice

DEMO_KEY = "demo-key-for-the-local-simulator"
RATE = 24_000
# (seconds of silence before, words) — the visitor's side of the conversation.
SCRIPT: tuple[tuple[float, str, str], ...] = (
    (1.0, "Hey Jarvis, what time does the museum close today?", "What time does the museum close today?"),
    (2.6, "Sorry, where is the exit?", "Sorry, where is the exit?"),
)
REPLIES = (
    "The museum closes at six o'clock this evening. The last entry is at half past five, and the cafe "
    "on the first floor stays open until the museum closes.",
    "The exit is straight ahead, past the gift shop, on your right.",
)
TRAILING_SILENCE_S = 3.0
EX_FAILED = 1


def make_script_wav(path: Path, voice: ReplyVoice) -> float:
    """Write the visitor's side as a WAV (24 kHz); return its length in seconds."""
    pieces: list[np.ndarray] = []
    for pause, words, _ in SCRIPT:
        pieces.append(np.zeros(int(pause * RATE), dtype=np.int16))
        pieces.append(np.frombuffer(voice.pcm(words), dtype="<i2"))
    pieces.append(np.zeros(int(TRAILING_SILENCE_S * RATE), dtype=np.int16))
    pcm = np.concatenate(pieces)
    write_wav(path, pcm, RATE)
    return len(pcm) / RATE


@dataclass
class Timeline:
    """Prints the daemon's events as they happen and keeps what the verdict needs."""

    start: float
    out: Callable[[str], None] = print
    seen: dict[str, int] = field(default_factory=dict)
    closes: list[dict[str, Any]] = field(default_factory=list)
    barge_in_at: float | None = None
    silent_after_ms: float | None = None

    def line(self, t: float, text: str) -> None:
        self.out(f"[{t - self.start:6.2f} s] {text}")

    def on_event(self, event: DaemonEvent) -> None:
        self.seen[event.name] = self.seen.get(event.name, 0) + 1
        f = event.fields
        match event.name:
            case "wake":
                self.line(event.t, f"wake word '{f['model']}' (score {f['score']:.2f}) -> chime")
            case "connected":
                self.line(event.t, f"connected; sent the {f['preroll_ms']} ms said since the wake word")
            case "transcript":
                self.line(event.t, f"{f['role']} said: {f['text']}")
            case "speech_started":
                self.line(event.t, "server VAD: visitor speaking")
            case "barge_in":
                self.barge_in_at = event.t
                self.line(event.t, f"barge-in: playback flushed after {f['played_ms']} ms of the reply")
            case "truncated":
                self.line(event.t, f"server truncated the reply at {f['audio_end_ms']} ms (what was heard)")
            case "server_error":
                self.line(event.t, f"server error {f['code']}: {f['message']}")
            case "connect_failed":
                self.line(event.t, f"connect failed: {f['error']}")
            case "session_close":
                self.closes.append(f)
                self.line(event.t, f"session closed ({f['reason']}) after {f['duration_s']:.1f} s: "
                                   f"{f['tokens_in']} tokens in ({f['cached_in']} cached), {f['tokens_out']} out, "
                                   f"${f['cost_usd']:.4f}")
            case "state" if f["state"] == State.LISTENING.value and self.closes:
                self.line(event.t, "listening again")

    def on_output(self, block: np.ndarray) -> None:
        """The speaker's blocks: when did it fall silent after the barge-in?"""
        if self.barge_in_at is not None and self.silent_after_ms is None and not np.any(block):
            self.silent_after_ms = (time.monotonic() - self.barge_in_at) * 1000


def demo_settings(config: Path | None, url: str, state_dir: Path) -> Settings:
    return load_settings(config, overrides={
        "realtime": {"endpoint": url, "api_key": DEMO_KEY, "auth": "api-key", "transcription_model": "whisper-1"},
        "budget": {"state_dir": str(state_dir)},
        "health": {"enabled": False},
        "audio": {"echo_cancellation": "off"},
    })


async def run_demo(input_wav: Path | None, output_wav: Path, config: Path | None,
                   out: Callable[[str], None] = print) -> int:
    voice = ReplyVoice()
    with tempfile.TemporaryDirectory(prefix="kioskd-demo-") as tmp:
        tmpdir = Path(tmp)
        if input_wav is None:
            input_wav = tmpdir / "visitor.wav"
            length = make_script_wav(input_wav, voice)
            out(f"visitor's speech: generated with {voice.engine} ({length:.1f} s)")
        else:
            length = read_wav(input_wav).duration_s
        transcripts = [heard for _, _, heard in SCRIPT]
        options = SimOptions(api_key=DEMO_KEY, replies=REPLIES, user_transcripts=transcripts)
        async with SimServer(options) as sim:
            settings = demo_settings(config, sim.url, tmpdir / "state")
            out(f"simulator: {sim.url} (replies spoken by {voice.engine}); "
                f"idle timeout {settings.session.idle_timeout_s:g} s")
            loop = asyncio.get_running_loop()
            timeline = Timeline(start=loop.time(), out=out)
            buffer = JitterBuffer(settings.audio, earcons=Earcons(settings.audio))
            buffer.on_output = timeline.on_output
            speaker = FilePlayback(settings.audio, buffer, path=output_wav)
            holder: dict[str, Daemon] = {}

            def make_input(daemon: Daemon, on_block: Callable[[Any], None]) -> FileCapture:
                return FileCapture(settings.audio, on_block, daemon.on_mic_state, path=input_wav)

            def on_daemon(daemon: Daemon) -> None:
                holder["daemon"] = daemon
                daemon.clock = loop.time
                daemon.listeners.append(timeline.on_event)

                def finish_when_back(state: State, reason: str) -> None:
                    if state is State.LISTENING and timeline.closes:
                        daemon.stop()

                daemon.state_listeners.append(finish_when_back)

            parts = Parts(make_input=make_input, output=speaker, buffer=buffer,
                          devices={"input": str(input_wav), "output": str(output_wav)})
            run = loop.create_task(run_daemon(settings, parts, on_daemon=on_daemon))
            limit = length + 60.0
            try:
                status = await asyncio.wait_for(asyncio.shield(run), limit)
            except TimeoutError:
                out(f"demo: no complete conversation within {limit:.0f} s; stopping")
                if "daemon" in holder:
                    holder["daemon"].stop()
                status = await run
                status = status or EX_FAILED
            await speaker.wait_closed()
    return verdict(status, timeline, output_wav, out)


def verdict(status: int, timeline: Timeline, output_wav: Path, out: Callable[[str], None]) -> int:
    if timeline.silent_after_ms is not None:
        out(f"after the barge-in the speaker was silent within {timeline.silent_after_ms:.0f} ms")
    try:
        played = read_wav(output_wav)
        audible_s = float(np.count_nonzero(np.abs(played.frames) > 0.01)) / played.rate
    except WavError as exc:
        out(f"demo: could not read back {output_wav}: {exc}")
        return EX_FAILED
    out(f"speaker output: {output_wav} ({played.duration_s:.1f} s, {audible_s:.1f} s of it audible)")
    problems = []
    if not timeline.seen.get("wake"):
        problems.append("the wake word was not detected")
    if not timeline.closes:
        problems.append("no session was opened and closed")
    elif timeline.closes[0]["reason"] != "idle":
        problems.append(f"the session closed for {timeline.closes[0]['reason']}, not for idleness")
    if not timeline.seen.get("barge_in"):
        problems.append("the barge-in did not happen")
    if audible_s < 1.0:
        problems.append("the speaker output holds no reply audio")
    if status != 0:
        problems.append(f"the daemon exited with status {status}")
    for problem in problems:
        out(f"demo: FAILED: {problem}")
    if not problems:
        total = timeline.closes[0]
        out(f"demo: OK — one conversation, {total['tokens_in'] + total['tokens_out']} tokens, "
            f"${total['cost_usd']:.4f}")
    return EX_FAILED if problems else 0


def cli_demo(args: argparse.Namespace) -> int:
    setup_logging("warning")
    try:
        return asyncio.run(run_demo(args.input, args.output, args.config))
    except ConfigError as exc:
        return report_problems(exc.problems, args.config)
    except WavError as exc:
        print(f"kioskd demo: {exc}")
        return 2
