"""The Ansible role on a bare Debian, then the real ``kioskd run`` under that tree's own systemd.

A ``debootstrap --variant=minbase bookworm`` tree is provisioned through the chroot connection (the test
device's sound card first: PulseAudio null sinks, see ansible/tests/audio-rig.yml), the role is run twice
(the second run must change nothing), then the tree is booted with ``systemd-nspawn --boot`` and kioskd is
checked the way an operator would: ``systemctl``, ``/readyz``, ``journalctl``, a visitor saying the wake word,
a hung event loop, a broken config. See tests/ops/chroot_harness.py for how.

Needs root, debootstrap, systemd-nspawn (systemd-container), unshare and nsenter; a missing one fails the
test with the package to install. About two minutes with warm caches (/var/cache/kioskd-test); a machine's
first run adds debootstrap and the downloads (about three minutes here, where the mirrors are fast).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from kioskd.sim.options import SimOptions
from kioskd.sim.server import SimServerThread
from tests.conftest import Speak
from tests.ops.chroot_harness import (
    TEST_KEY,
    Container,
    HarnessError,
    Provisioned,
    Report,
    booted,
    free_port,
    provision,
    run_directory,
)
from tests.ops.tools import assert_no_secret

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "unshare": "util-linux",
         "nsenter": "util-linux", "setpriv": "util-linux", "chroot": "coreutils"}
UNIT = ("ActiveState", "SubState", "Result", "NRestarts", "MainPID", "ExecMainStatus", "InvocationID")
# The role's default is 30 s; the test inventory sets kioskd_watchdog_sec so a kill comes sooner.
WATCHDOG = "10s"


def require_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root: debootstrap, chroot and systemd-nspawn", pytrace=False)
    missing = sorted({package for program, package in TOOLS.items()
                      if shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None})
    if missing:
        pytest.fail(f"needs apt-get install {' '.join(missing)} (scripts/bootstrap test installs them)",
                    pytrace=False)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServerThread]:
    """The realtime simulator on this machine's 127.0.0.1, which the container shares; it takes only TEST_KEY."""
    with SimServerThread(SimOptions(api_key=TEST_KEY)) as server:
        yield server


@pytest.fixture(scope="module")
def provisioned(sim: SimServerThread) -> Iterator[Provisioned]:
    require_root_and_tools()
    with run_directory() as work:
        try:
            done = provision(work, Report(), endpoint=sim.url, health_port=free_port())
        except HarnessError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield done


@pytest.fixture(scope="module")
def container(provisioned: Provisioned) -> Iterator[Container]:
    try:
        with booted(provisioned.root, provisioned.health_port) as box:
            box.wait_booted()
            yield box
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)


def wait_active(box: Container) -> dict[str, str]:
    return box.wait_unit("active (running)", lambda u: (u["ActiveState"], u["SubState"]) == ("active", "running"),
                         *UNIT)


def messages(entries: list[dict[str, object]]) -> list[str]:
    return [str(e.get("MESSAGE", "")) for e in entries]


# -- provisioning ------------------------------------------------------------------------------------------------

def test_the_role_converges_on_a_bare_debian_and_a_second_run_changes_nothing(provisioned: Provisioned) -> None:
    recaps = provisioned.recaps
    for name in ("bootstrap", "audio-rig", "first", "second"):
        assert (recaps[name]["failed"], recaps[name]["unreachable"]) == (0, 0), (name, recaps[name])
    assert recaps["first"]["changed"] > 0
    assert recaps["second"]["changed"] == 0, "the second run of site.yml must change nothing"


def test_the_tree_has_the_user_the_credential_the_config_and_an_enabled_unit(provisioned: Provisioned) -> None:
    checks = provisioned.checks
    assert checks["is-enabled"] == "enabled" and checks["rig-enabled"] == "enabled"
    assert "audio" in checks["groups"].split()
    assert checks["credential"] == "600 root:root" and checks["config_dir"] == "750 root:kioskd"
    assert checks["imports"] == "ok" and checks["verify"] == "(silent)"
    assert 'input_device = "pulse"' in checks["config"] and 'output_device = "pulse"' in checks["config"]
    assert f"port = {provisioned.health_port}" in checks["config"]
    assert TEST_KEY not in checks["config"], "the key goes through the credential, never the config file"


# -- under the tree's own systemd -----------------------------------------------------------------------------

def test_kioskd_is_active_and_ready_under_systemd(container: Container) -> None:
    assert container.run("systemctl", "is-active", "kioskd.service", check=False).stdout.strip() == "active"
    unit = container.show(*UNIT, "Type", "WatchdogUSec", "StatusText", "User")
    assert (unit["ActiveState"], unit["SubState"], unit["NRestarts"]) == ("active", "running", "0"), \
        container.log_tail()
    assert (unit["Type"], unit["WatchdogUSec"], unit["User"]) == ("notify", WATCHDOG, "kioskd")
    assert unit["StatusText"].startswith("listening"), unit["StatusText"]
    assert container.show("ActiveState", unit="kioskd-test-rig.service")["ActiveState"] == "active"

    readyz = container.get("/readyz")
    assert readyz.status == 200, (readyz, container.log_tail())
    assert readyz.body["status"] == "ready"
    checks = readyz.body["checks"]
    assert {"audio_input", "wake_model", "credentials", "budget"} <= set(checks)
    assert all(check["ok"] for check in checks.values()), checks
    status = container.get("/status")
    assert status.status == 200 and status.body["devices"] == {"input": "pulse", "output": "pulse"}


def test_the_journal_has_structured_events_from_kioskd(container: Container) -> None:
    entries = container.journal("_SYSTEMD_UNIT=kioskd.service")
    ready = [e for e in entries if e.get("KIOSKD_EVENT") == "ready"]
    assert ready, messages(entries)
    assert ready[-1]["KIOSKD_STATE"] == "listening" and ready[-1]["SYSLOG_IDENTIFIER"] == "kioskd"
    assert any(e.get("KIOSKD_EVENT") == "state" and e.get("KIOSKD_STATE") == "listening" for e in entries)
    assert not any("Traceback" in m for m in messages(entries))


def test_a_visitor_is_answered_through_a_session_opened_with_the_key_from_the_credential(
        container: Container, sim: SimServerThread, speak: Speak) -> None:
    container.play_into_microphone(speak("Hey Jarvis, what time is it?").read_bytes())
    first = sim.wait_for(lambda: sim.server.handshakes[0] if sim.server.handshakes else None, 60)
    # The simulator takes only TEST_KEY, which nothing but the role's credential gave the container.
    assert (first.status, first.auth) == (101, "api-key-header"), f"kioskd's connection was refused: {first}"
    session = sim.wait_for(lambda: sim.sessions[0] if sim.sessions else None, 30)
    # The question went up from the container's microphone and the (simulated) service answered it.
    reply = sim.wait_for(lambda: session.responses[0] if session.responses else None, 60)
    assert reply.audio_ms > 0 and session.input_ms > 0
    wake = container.wait_event("wake")
    assert wake["WAKE_MODEL"] == "hey_jarvis", wake
    container.wait_event("session_open")


def test_a_hung_event_loop_is_killed_by_the_watchdog_and_restarted(container: Container) -> None:
    before = wait_active(container)
    # SIGSTOP freezes every thread: no more WATCHDOG=1, as with a deadlocked loop.
    container.run("systemctl", "kill", "--kill-who=main", "--signal=SIGSTOP", "kioskd.service")
    after = container.wait_unit(
        "restarted once and active again",
        lambda u: u["NRestarts"] == str(int(before["NRestarts"]) + 1) and u["ActiveState"] == "active"
        and u["MainPID"] not in ("0", before["MainPID"]),
        *UNIT, timeout_s=150,
    )
    hung = container.journal("-u", "kioskd.service", f"INVOCATION_ID={before['InvocationID']}")
    assert [e.get("UNIT_RESULT") for e in hung if e.get("UNIT_RESULT")] == ["watchdog"], messages(hung)
    assert any("Watchdog timeout" in m for m in messages(hung))
    stack = container.journal(f"_SYSTEMD_INVOCATION_ID={before['InvocationID']}")
    assert "Fatal Python error: Aborted" in messages(stack), "faulthandler's stack of the hung process"
    assert after["SubState"] == "running"
    assert container.get("/readyz").status == 200


def test_a_bad_config_exits_78_and_is_not_restarted(container: Container) -> None:
    wait_active(container)
    config = container.root / "etc/kioskd/kioskd.toml"
    config.write_text('[audio]\nblock_ms = "fast"\n')  # same file: mode and owner stay, only the content is bad
    restart = container.run("systemctl", "restart", "kioskd.service", check=False, timeout_s=120)
    assert restart.returncode != 0
    unit = container.show(*UNIT)
    # "failed", not "auto-restart": RestartPreventExitStatus=78 kept systemd from scheduling a restart. A manual
    # (re)start zeroes NRestarts, so 0 here means systemd did not restart it on its own afterwards either.
    assert (unit["ActiveState"], unit["SubState"], unit["Result"]) == ("failed", "failed", "exit-code"), unit
    assert (unit["ExecMainStatus"], unit["NRestarts"]) == ("78", "0"), unit
    said = messages(container.journal(f"_SYSTEMD_INVOCATION_ID={unit['InvocationID']}"))
    assert "kioskd: configuration /etc/kioskd/kioskd.toml is not valid:" in said, said
    assert any(m.strip().startswith("audio.block_ms:") for m in said), said
    assert not any("Traceback" in m for m in said), said


def test_the_key_never_reaches_the_journal(container: Container) -> None:
    assert_no_secret(container.journal_raw(), TEST_KEY)
