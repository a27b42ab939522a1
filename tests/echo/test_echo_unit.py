"""The uplink's echo stage on known signals: what the canceller removes, what it keeps, what it costs nothing.

The echo here is made in numpy (a delayed, attenuated, coloured copy of espeak speech plus noise), fed
through :class:`UplinkEcho` exactly as the daemon feeds it: reference blocks through the tap at the output
device's rate with their times, microphone blocks at 24 kHz, on a clock the test advances.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kioskd.audio.dsp import resample
from kioskd.audio.echo import (
    FRAME,
    CancellerUnavailable,
    EchoGate,
    ReferenceTap,
    StreamClock,
    UplinkEcho,
    WebRtcCanceller,
    build_uplink_echo,
)
from kioskd.config import AudioConfig
from tests.conftest import Speak
from tests.echo_rig import active_dbfs, read_mono

RATE = 24_000


def webrtc() -> WebRtcCanceller:
    try:
        return WebRtcCanceller()
    except CancellerUnavailable as exc:
        pytest.fail(f"the builtin canceller must be installed for these tests: {exc}")


def speech(speak: Speak, text: str, voice: str = "en-us") -> np.ndarray:
    pcm, rate = read_mono(speak(text, voice=voice))
    return resample(pcm, rate, RATE)


def room(far: np.ndarray, delay_ms: int = 40, gain_db: float = -6.0, noise_dbfs: float = -65.0) -> np.ndarray:
    """The far end as it reaches the microphone: delayed, attenuated, a reflection, a little noise."""
    d = RATE * delay_ms // 1000
    echo = np.zeros(len(far))
    echo[d:] = far[: len(far) - d]
    r = RATE * 11 // 1000
    echo[r:] += 0.35 * echo[: len(echo) - r]
    noise = np.random.default_rng(3).normal(0, 10 ** (noise_dbfs / 20), len(far))
    return echo * 10 ** (gain_db / 20) + noise


def to_i16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)


def run(echo: UplinkEcho, far: np.ndarray, mic: np.ndarray, *, out_rate: int = 48_000, block_ms: int = 20,
        lead_ms: int = 60, mic_ppm: float = 0.0, mic_lost: tuple[int, int] = (0, 0),
        jitter_ms: float = 0.0) -> np.ndarray:
    """Play ``far`` through the tap and capture ``mic``, block by block, as the devices would hand them over.

    The output device asks for each block ``lead_ms`` before its sound reaches the room (its buffer); the
    microphone's blocks arrive as they are recorded, by a clock ``mic_ppm`` slower (or, negative, faster)
    than the output's. ``mic_lost = (k, n)``: the microphone lost ``n`` blocks' worth of time before block
    ``k`` (an overflow): every later block arrives that much later. ``jitter_ms``: each callback of
    either device comes up to that much late (scheduling), never early.
    """
    rng = np.random.default_rng(11)
    now = [0.0]
    echo._clock = echo.tap._clock = lambda: now[0]  # the test's clock, for the tap's times too
    far_out = resample(np.asarray(far, dtype=np.float32), RATE, out_rate)
    out_block = out_rate * block_ms // 1000
    in_block = RATE * block_ms // 1000
    out: list[np.ndarray] = []
    n_in = len(mic) // in_block
    pushed = 0
    for k in range(n_in):
        t = (k + 1) * block_ms / 1000
        while pushed * block_ms / 1000 <= t + lead_ms / 1000 and (pushed + 1) * out_block <= len(far_out):
            now[0] = pushed * block_ms / 1000 - lead_ms / 1000 + rng.uniform(0, jitter_ms / 1000)
            echo.tap.push(to_i16(far_out[pushed * out_block : (pushed + 1) * out_block]), out_rate)
            pushed += 1
        now[0] = (t * (1 + mic_ppm * 1e-6) + (mic_lost[1] * block_ms / 1000 if k >= mic_lost[0] else 0.0)
                  + rng.uniform(0, jitter_ms / 1000))
        out.append(echo.process(to_i16(mic[k * in_block : (k + 1) * in_block])))
    return np.concatenate(out).astype(np.float64) / 32768


def longest_run(flags: np.ndarray) -> int:
    best = run_ = 0
    for flag in flags:
        run_ = run_ + 1 if flag else 0
        best = max(best, run_)
    return best


def frame_levels(x: np.ndarray) -> np.ndarray:
    n = len(x) // FRAME * FRAME
    levels: np.ndarray = 10 * np.log10(np.mean(x[:n].reshape(-1, FRAME) ** 2, axis=1) + 1e-20)
    return levels


@pytest.fixture(scope="module")
def reply(speech_dir: Path) -> np.ndarray:
    from tests.rig import synthesize

    pcm, rate = read_mono(synthesize("The museum closes at six o'clock this evening. The last entry is at half "
                                     "past five, and the cafe stays open until then.", speech_dir))
    return np.concatenate([resample(pcm, rate, RATE), np.zeros(RATE // 2, dtype=np.float32)])


def test_the_canceller_removes_the_echo_of_what_was_played(reply: np.ndarray) -> None:
    mic = room(reply)
    echo = UplinkEcho(ReferenceTap(), canceller=webrtc(), delay_ms=40)
    out = run(echo, reply, mic)
    levels = frame_levels(out)
    echo_levels = frame_levels(mic[: len(out)])
    erle = 10 * np.log10(np.mean(mic[: len(out)] ** 2) / np.mean(out**2))
    assert erle > 25, f"only {erle:.1f} dB of echo removed"
    # The simulator's VAD (threshold 0.5) opens a turn on 30 ms of frames above -45 dBFS; the echo alone
    # was far above that, the residual never is for that long.
    assert longest_run(echo_levels > -45) > 10
    assert longest_run(levels > -45) < 3, f"residual frames up to {levels.max():.1f} dBFS"
    assert echo.stats.processed_ms > 0.9 * len(out) / RATE * 1000


def test_a_visitor_speaking_over_the_reply_stays_audible(reply: np.ndarray, speak: Speak) -> None:
    visitor = speech(speak, "Sorry, where is the exit?", voice="en-gb")
    at = RATE * 2
    level = active_dbfs(reply, RATE) - 20  # 20 dB quieter than the playback, 14 dB under the echo
    near = np.zeros(len(reply))
    near[at : at + len(visitor)] = visitor[: len(reply) - at] * 10 ** ((level - active_dbfs(visitor, RATE)) / 20)
    out = run(UplinkEcho(ReferenceTap(), canceller=webrtc()), reply, room(reply) + near)
    heard = out[at : at + len(visitor)]
    spoken = near[at : at + len(visitor)]
    assert active_dbfs(heard, RATE) > active_dbfs(spoken, RATE) - 8
    assert np.count_nonzero(frame_levels(heard) > -45) > 0.3 * np.count_nonzero(frame_levels(spoken) > -45)


def test_while_nothing_plays_the_uplink_passes_untouched_and_the_canceller_is_idle(speak: Speak) -> None:
    visitor = speech(speak, "Hey Jarvis, what time is it?")

    class Counting:
        name = "counting"
        calls = 0

        def render(self, frame: np.ndarray) -> None:
            self.calls += 1

        def capture(self, frame: np.ndarray, delay_ms: int) -> np.ndarray:
            self.calls += 1
            return np.zeros_like(frame)

    canceller = Counting()
    echo = UplinkEcho(ReferenceTap(), canceller=canceller)
    silence = np.zeros(len(visitor))
    out = run(echo, silence, visitor)
    assert np.array_equal(to_i16(out), to_i16(visitor[: len(out)]))
    assert canceller.calls == 0
    assert not echo.active


@pytest.mark.parametrize("block_ms", [10, 20, 25, 30])
def test_blocks_keep_their_length_and_the_signal_its_order(block_ms: int) -> None:
    """Any block size: the same number of samples out as in, the signal delayed by less than a frame."""
    echo = UplinkEcho(ReferenceTap(), canceller=None, gate=EchoGate(0.0, 100))
    t = np.arange(RATE) / RATE
    tone = 0.1 * np.sin(2 * np.pi * 440 * t)
    block = RATE * block_ms // 1000
    outs = [echo.process(to_i16(tone[i : i + block])) for i in range(0, len(tone) - block + 1, block)]
    assert all(len(o) == block for o in outs)
    out = np.concatenate(outs).astype(np.float64) / 32768
    lag = int(np.argmax(np.correlate(out[1000:3000], tone[1000:2000], "valid")))
    assert 0 <= lag < FRAME


def test_the_gate_silences_echo_and_lets_a_louder_visitor_through(reply: np.ndarray, speak: Speak) -> None:
    visitor = speech(speak, "Stop, stop please")
    at = RATE * 2
    near = np.zeros(len(reply))
    near[at : at + len(visitor)] = visitor[: len(reply) - at] * 10 ** (6 / 20)  # louder than the playback
    gate = EchoGate(0.0, 40 + 250)
    echo = UplinkEcho(ReferenceTap(), canceller=None, gate=gate)
    out = run(echo, reply, room(reply, gain_db=-10) + near)
    before = frame_levels(out[RATE // 2 : at])
    assert before.max() < -45, "echo passed the gate"
    during = frame_levels(out[at : at + len(visitor)])
    assert np.count_nonzero(during > -45) > 10
    assert gate.closed_frames > 0 and echo.describe_gate().startswith("on")


def test_a_late_output_callback_is_not_an_underrun_but_lost_time_is() -> None:
    clock = StreamClock(48_000, confirm_s=0.1)
    block = 960
    for n in range(20):
        clock.note(block, n * 0.02 + (0.05 if n == 10 else 0.0))  # one callback 50 ms late, then on time
    assert clock.shifts == 0
    for n in range(20, 40):
        clock.note(block, n * 0.02 + 0.08)  # from block 20 on, 80 ms late for good: the device played silence
    assert clock.shifts == 1
    assert clock.time_of(31 * block) == pytest.approx(30 * 0.02 + 0.08, abs=0.002)  # block 30 ends at 31
    assert clock.time_of(6 * block) == pytest.approx(5 * 0.02, abs=0.002)


def lag_of(played: np.ndarray, chunk: np.ndarray, at: int) -> int:
    """Where in ``played`` the ``chunk`` found at sample ``at`` of a copy of it starts, relative to ``at``."""
    window = played[max(0, at - RATE // 10) : at + len(chunk) + RATE // 10]
    corr = np.correlate(window, chunk, mode="valid")
    return int(np.argmax(corr)) + max(0, at - RATE // 10) - at


class _RecordingCanceller:
    """Cancels nothing (whatever it lets through, only the onset guard can stop); notes what it is fed, in
    order: "r" for a reference frame, "c" for a microphone frame."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.reference: list[np.ndarray] = []

    def render(self, frame: np.ndarray) -> None:
        self.calls.append("r")
        self.reference.append(frame.copy())

    def capture(self, frame: np.ndarray, delay_ms: int) -> np.ndarray:
        self.calls.append("c")
        return frame


def test_the_canceller_gets_the_reference_frame_by_frame_while_the_clocks_drift_apart() -> None:
    """The echo's delay the canceller sees must not jump while the microphone's clock drifts against the
    speaker's (here 800 ppm, 16 ms over 20 s) and both devices' callbacks wobble by up to 5 ms: one
    reference frame before each microphone frame, each the 10 ms after the previous one, sample for sample.
    Only lost time (a microphone overflow) moves the reference, once."""
    seconds = 20
    far = np.random.default_rng(5).normal(0, 0.1, RATE * seconds).astype(np.float32)
    canceller = _RecordingCanceller()
    echo = UplinkEcho(ReferenceTap(), canceller=canceller)
    run(echo, far, np.zeros(len(far)), mic_ppm=-800, jitter_ms=5)
    calls = "".join(canceller.calls)
    assert calls == "rc" * (len(calls) // 2), "a microphone frame got no reference frame, or two"
    fed = np.concatenate(canceller.reference).astype(np.float64) / 32768
    lags = {lag_of(far, fed[k * RATE : (k + 1) * RATE], k * RATE) for k in range(1, seconds - 1)}
    assert len(lags) == 1, f"the reference the canceller saw jumped against what was played: {sorted(lags)}"
    assert echo.resyncs == 1

    canceller = _RecordingCanceller()
    echo = UplinkEcho(ReferenceTap(), canceller=canceller)
    run(echo, far[: RATE * 4], np.zeros(RATE * 4), mic_lost=(100, 3))  # 60 ms lost two seconds in
    assert echo.resyncs == 2, "lost time beyond the tolerance moves the reference to match, once"


def test_the_tap_is_bounded_and_counts_what_it_dropped() -> None:
    tap = ReferenceTap(max_blocks=4)
    for _ in range(6):
        tap.push(np.ones(960, dtype=np.int16), 48_000)
    assert tap.dropped == 2
    assert len(tap.drain()) == 4
    assert tap.drain() == []


def test_configuration_decides_what_runs_and_status_says_what_is_active() -> None:
    builtin = build_uplink_echo(AudioConfig(echo_cancellation="builtin"), make_canceller=webrtc)
    assert builtin.describe() == "builtin (webrtc)" and builtin.needs_reference
    assert builtin.describe_gate() == "off"
    off = build_uplink_echo(AudioConfig(echo_cancellation="off"))
    assert off.describe() == "off" and not off.needs_reference
    system = build_uplink_echo(AudioConfig(echo_cancellation="system", echo_gate="on", echo_gate_db=-3))
    assert system.describe().startswith("system") and system.describe_gate() == \
        "on (uplink must exceed playback -3 dB)"


def test_a_canceller_that_cannot_start_leaves_the_daemon_running_and_says_so(caplog: pytest.LogCaptureFixture
                                                                              ) -> None:
    def missing() -> WebRtcCanceller:
        raise CancellerUnavailable("the WebRTC canceller needs the livekit package (pip install livekit)")

    echo = build_uplink_echo(AudioConfig(echo_cancellation="builtin"), make_canceller=missing)
    assert echo.describe().startswith("off (builtin unavailable: the WebRTC canceller needs the livekit package")
    pcm = np.arange(480, dtype=np.int16)
    assert np.array_equal(echo.process(pcm), pcm)
    assert "running without echo cancellation" in caplog.text


def test_a_canceller_that_fails_midway_is_switched_off_not_raised(reply: np.ndarray) -> None:
    class Breaks:
        name = "breaks"

        def render(self, frame: np.ndarray) -> None:
            raise RuntimeError("native library error")

        def capture(self, frame: np.ndarray, delay_ms: int) -> np.ndarray:
            return frame

    echo = UplinkEcho(ReferenceTap(), canceller=Breaks())
    out = run(echo, reply[: RATE * 2], room(reply[: RATE * 2]))
    assert len(out) > 0 and echo.canceller is None and echo.failures == 1
    assert echo.describe() == "off (breaks failed: native library error)"


def test_the_onset_guard_covers_the_start_of_each_reply_after_a_pause(reply: np.ndarray) -> None:
    """For ``echo_onset_guard_ms`` after playback resumes from a pause, echo quieter than the playback is
    silenced; a comma's short pause does not re-arm the guard, a pause between replies does."""
    cfg = AudioConfig(echo_onset_guard_ms=500)
    echo = build_uplink_echo(cfg, make_canceller=_RecordingCanceller)
    tone = reply[: RATE * 2]
    comma = np.zeros(RATE * 150 // 1000, dtype=np.float32)
    between = np.zeros(RATE, dtype=np.float32)
    far = np.concatenate([tone, comma, tone, between, tone, between])
    out = run(echo, far, room(far))
    starts = (0, len(tone) + len(comma), 2 * len(tone) + len(comma) + len(between))
    lead = RATE * 150 // 1000  # the echo's delay, the device's lead and a frame or two
    for start, guarded in zip(starts, (True, False, True), strict=True):
        first = frame_levels(out[start + lead : start + RATE * 400 // 1000])
        later = frame_levels(out[start + RATE * 700 // 1000 : start + RATE * 1500 // 1000])
        assert later.max() > -30, "after the guard the leaky canceller's echo passes: the guard has ended"
        if guarded:
            assert first.max() < -60, f"echo passed during the onset guard of the reply at {start / RATE:.2f} s"
        else:
            assert first.max() > -30, "a comma's pause re-armed the guard"
    assert echo.counters()["echo_gated_frames"] > 0


def test_a_visitor_louder_than_the_playback_passes_the_onset_guard(reply: np.ndarray, speak: Speak) -> None:
    visitor = speech(speak, "Stop, stop please")
    near = np.zeros(len(reply))
    near[RATE // 10 : RATE // 10 + len(visitor)] = visitor[: len(reply) - RATE // 10] * 10 ** (6 / 20)
    echo = build_uplink_echo(AudioConfig(echo_onset_guard_ms=500), make_canceller=_RecordingCanceller)
    out = run(echo, reply, room(reply, gain_db=-10) + near)
    during = frame_levels(out[RATE * 150 // 1000 : RATE // 2])
    assert np.count_nonzero(during > -45) > 10, "the visitor was silenced by the onset guard"
