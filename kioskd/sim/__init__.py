"""A local imitation of the Azure OpenAI realtime API (GA WebSocket protocol), for demos, tests and benchmarks.

It answers on ``ws://127.0.0.1:PORT/openai/v1/realtime?model=<deployment>`` like the service: the same
handshake rules and HTTP failures, ``session.created``/``session.updated``, server VAD on the audio it is sent,
spoken replies streamed faster than real time, barge-in cancellation, truncation, usage with cached tokens, the
session time cap, and faults on demand. A client that works against it should work against Azure.

Use ``SimServer`` from asyncio code (``async with SimServer(SimOptions(api_key="k")) as sim: sim.url``),
``SimServerThread`` from synchronous code, or ``kioskd sim`` from a shell. ``SimCore`` is the protocol logic
without I/O.
"""

from kioskd.sim.core import Close, SimCore
from kioskd.sim.options import DEFAULT_REPLIES, Faults, SimOptions
from kioskd.sim.records import ResponseRecord, SessionRecord, Truncation
from kioskd.sim.server import HandshakeRecord, SimServer, SimServerThread, cli_sim
from kioskd.sim.usage import PromptCache, Tokens, Usage
from kioskd.sim.vad import EnergyVad, threshold_to_dbfs
from kioskd.sim.voice import ReplyVoice

__all__ = [
    "DEFAULT_REPLIES",
    "Close",
    "EnergyVad",
    "Faults",
    "HandshakeRecord",
    "PromptCache",
    "ReplyVoice",
    "ResponseRecord",
    "SessionRecord",
    "SimCore",
    "SimOptions",
    "SimServer",
    "SimServerThread",
    "Tokens",
    "Truncation",
    "Usage",
    "cli_sim",
    "threshold_to_dbfs",
]
