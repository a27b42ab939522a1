"""Sound in and out: the microphone (:mod:`.capture`), the speaker (:mod:`.playback`), and what they share.

Data moves as mono int16 PCM: 16 kHz to the wake-word detector, 24 kHz to and from the realtime service.
Devices are opened through sounddevice/PortAudio on ALSA (:mod:`.devices`), converted in :mod:`.dsp`,
supervised (reopened with backoff when they fail) by :mod:`.supervise`. :mod:`.earcons` makes the chimes,
:mod:`.wav` reads and writes files for the demo and for ``kioskd wake-test``.
"""
