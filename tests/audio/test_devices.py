"""Finding the configured devices, and ``kioskd devices``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kioskd.audio.devices import DeviceError, DeviceInfo, choose_device
from tests.rig import ALSA_DEVICE, AudioRig

ROOT = Path(__file__).resolve().parents[2]
LISTED = [
    DeviceInfo(0, "bcm2835 Headphones: - (hw:0,0)", "ALSA", 0, 8, 44100),
    DeviceInfo(1, "seeed-4mic-voicecard: bcm2835-i2s-ac10x-codec0 ac10x-codec.1-003b-0 (hw:1,0)", "ALSA", 4, 0,
               16000),
    DeviceInfo(2, "USB PnP Sound Device: Audio (hw:2,0)", "ALSA", 1, 2, 48000),
    DeviceInfo(3, "pulse", "ALSA", 32, 32, 44100),
    DeviceInfo(4, "default", "ALSA", 32, 32, 44100),
]


@pytest.fixture
def proc_asound(tmp_path: Path) -> Path:
    """/proc/asound as ALSA lays it out: card ids are links to cardN."""
    root = tmp_path / "asound"
    for n, card_id in enumerate(["Headphones", "seeed4micvoicec", "Device"]):
        (root / f"card{n}").mkdir(parents=True)
        (root / card_id).symlink_to(f"card{n}")
    return root


@pytest.mark.parametrize(
    ("spec", "kind", "index"),
    [
        (3, "input", 3),
        ("3", "output", 3),
        ("pulse", "input", 3),
        ("default", "output", 4),
        ("USB PnP", "input", 2),
        ("usb audio", "output", 2),
        ("seeed", "input", 1),
        ("hw:1,0", "input", 1),
        ("plughw:CARD=seeed4micvoicec,DEV=0", "input", 1),
        ("plughw:Device", "output", 2),
        ("hw:CARD=Headphones,DEV=0", "output", 0),
    ],
)
def test_a_device_is_found_by_index_name_part_or_alsa_name(
    spec: str | int, kind: str, index: int, proc_asound: Path
) -> None:
    assert choose_device(spec, kind, LISTED, proc_asound=proc_asound).index == index  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "kind", "message"),
    [
        ("nothing like it", "input", r"no input device matches 'nothing like it'; input devices: \[1\] seeed"),
        ("hw", "input", r"'hw' matches several input devices \(\[1\] seeed.*\[2\] USB"),
        (0, "input", r"device 0 \(bcm2835 Headphones.*\) has no input channels"),
        (9, "output", r"there is no device with index 9; output devices: \[0\] bcm2835"),
        ("hw:CARD=missing,DEV=0", "input", r"no input device matches 'hw:CARD=missing,DEV=0'"),
        ("", "output", r"the output device name is empty"),
    ],
)
def test_a_device_that_is_not_there_is_a_clear_error(spec: str | int, kind: str, message: str,
                                                      proc_asound: Path) -> None:
    with pytest.raises(DeviceError, match=message):
        choose_device(spec, kind, LISTED, proc_asound=proc_asound)  # type: ignore[arg-type]


def kioskd_devices(tmp_path: Path, config: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "kioskd.toml"
    path.write_text(config)
    clean = {k: v for k, v in env.items() if not k.startswith(("KIOSKD_", "AZURE_OPENAI_"))}
    return subprocess.run([sys.executable, "-m", "kioskd", "devices", "--config", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=clean, check=False)


@pytest.mark.rig
def test_kioskd_devices_lists_the_rig_and_marks_the_configured_ones(audio_rig: AudioRig, tmp_path: Path) -> None:
    result = kioskd_devices(
        tmp_path, f'[audio]\ninput_device = "{ALSA_DEVICE}"\noutput_device = "{ALSA_DEVICE}"\n', audio_rig.env
    )
    assert result.returncode == 0, result.stderr
    inputs, outputs = result.stdout.split("Output devices:")
    assert f"* [ 0] {ALSA_DEVICE}  (ALSA" in inputs and f"* [ 0] {ALSA_DEVICE}  (ALSA" in outputs
    assert "[ 1] default" in inputs and "* [ 1] default" not in result.stdout
    assert "Hz)" in inputs


@pytest.mark.rig
def test_kioskd_devices_says_when_the_configured_device_is_missing(audio_rig: AudioRig, tmp_path: Path) -> None:
    result = kioskd_devices(tmp_path, '[audio]\ninput_device = "ReSpeaker"\n', audio_rig.env)
    assert result.returncode == 1
    assert "configured input device: no input device matches 'ReSpeaker'" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_kioskd_devices_explains_an_empty_device_list(tmp_path: Path) -> None:
    if Path("/dev/snd").exists():
        pytest.skip("this machine has sound cards, so PortAudio's list cannot be made empty here")
    env = {**os.environ, "PULSE_SERVER": f"unix:{tmp_path}/no-server"}
    result = kioskd_devices(tmp_path, "", env)
    assert result.returncode == 1
    assert "PortAudio finds no audio devices" in result.stderr
    assert "Traceback" not in result.stderr
