"""Everything that shapes the simulator's behaviour, as plain data.

``SimOptions`` is read afresh for every connection, so a test can change ``faults`` (or the key) between two
connections of one running server, e.g. to make the first connect fail with 429 and the retry succeed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

DEFAULT_REPLIES: tuple[str, ...] = (  # each 3.4–4.5 s when spoken by espeak-ng
    "Welcome! I can help you find your way, or check opening hours.",
    "The information desk is on the ground floor, past the main entrance on your left.",
    "You are welcome. Is there anything else I can help you with?",
)
DEFAULT_USER_TRANSCRIPTS: tuple[str, ...] = ("Where can I find the information desk?",)
AZURE_SESSION_CAP_S = 30 * 60
# Deployments whose model cannot serve a realtime socket: the handshake fails with 400 (§1.2).
NON_REALTIME_DEPLOYMENTS = frozenset({"gpt-realtime-whisper", "whisper-1", "gpt-4o-transcribe"})

BearerCheck = Collection[str] | Callable[[str], bool]


@dataclass
class Faults:
    """Failures to inject. Counts (``..._after_events``) are server events sent on that connection.

    ``handshake_status`` answers the upgrade with that HTTP status (401, 403, 404, 429 with ``Retry-After``,
    500...) instead of accepting it; ``handshake_failures`` limits that to the first N attempts (None: all).
    Session faults apply to every session, or to the first ``session_failures`` sessions.
    """

    handshake_status: int | None = None
    handshake_failures: int | None = None
    retry_after_s: int = 2
    handshake_delay_s: float = 0.0
    event_latency_s: float = 0.0
    drop_after_events: int | None = None
    malformed_after_events: int | None = None
    error_after_events: int | None = None
    error_code: str = "server_error"
    close_after_events: int | None = None
    close_code: int = 1011
    fail_responses: str | None = None  # "server_error" | "rate_limit_exceeded": every response.done failed
    session_failures: int | None = None


@dataclass
class SimOptions:
    """How the simulator behaves; every field has a demo-friendly default.

    * ``api_key``: the only key accepted (``api-key`` header or query, or ``Authorization: Bearer``);
      None accepts any key, though one must still be sent.
    * ``accepted_bearer_tokens``: when set, the bearer tokens accepted (a set, or a callable deciding), e.g. the
      tokens an Entra test's token server issued.
    * ``replies``: reply texts, used in turn within a session; spoken by espeak-ng (tones without it).
    * ``user_transcripts``: what input transcription reports for user turns, in turn (when enabled).
    * ``speed``: how much faster than real time reply audio is streamed (the service bursts ahead of playback).
    * ``session_cap_s``: the session's maximum length; at ``expires_at`` the socket closes with 1001.
    * ``keep_event_log`` / ``keep_sessions``: what a long-running server remembers (tests want everything;
      ``kioskd sim`` keeps no event log and the last few sessions).
    """

    api_key: str | None = None
    accepted_bearer_tokens: BearerCheck | None = None
    replies: Sequence[str] = DEFAULT_REPLIES
    user_transcripts: Sequence[str] = DEFAULT_USER_TRANSCRIPTS
    speed: float = 4.0
    session_cap_s: float = AZURE_SESSION_CAP_S
    first_delta_delay_s: float = 0.05
    transcription_delay_s: float = 0.2
    rate_limit_tokens: int = 40_000
    use_espeak: bool | None = None  # None: espeak-ng when installed
    non_realtime_deployments: Collection[str] = NON_REALTIME_DEPLOYMENTS
    seed: int | None = None
    keep_event_log: bool = True  # every client and server event in SessionRecord (audio included)
    keep_sessions: int | None = None  # how many finished sessions' records to keep (None: all)
    faults: Faults = field(default_factory=Faults)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when a value cannot work."""
        if not self.speed > 0:
            raise ValueError("SimOptions.speed must be above 0 (use float('inf') for no pacing)")
        if not self.session_cap_s > 0:
            raise ValueError("SimOptions.session_cap_s must be above 0")
        if not self.replies or not all(isinstance(r, str) and r.strip() for r in self.replies):
            raise ValueError("SimOptions.replies must be a non-empty list of non-empty texts")
        if not self.user_transcripts:
            raise ValueError("SimOptions.user_transcripts must not be empty")
        if self.keep_sessions is not None and self.keep_sessions < 0:
            raise ValueError("SimOptions.keep_sessions must not be negative")
        if self.first_delta_delay_s < 0 or self.transcription_delay_s < 0:
            raise ValueError("SimOptions delays must not be negative")
