"""The Ansible role run for real: a debootstrapped Debian tree, provisioned through a chroot, then booted.

    sudo .venv/bin/python -m tests.ops.chroot_harness [--boot] [--keep]

1. a pristine ``debootstrap --variant=minbase bookworm`` tree, made once and cached in
   /var/cache/kioskd-test/rootfs-pristine (TEST_KIOSKD_CACHE moves the cache);
2. a copy of it, this machine's extra CA certificates added (pip's TLS goes through them);
3. ``ansible/tests/chroot-bootstrap.yml`` (python3, python3-apt, systemd), then ``site.yml`` through the
   ``community.general.chroot`` connection with a wheel built from this repository, then ``site.yml``
   again, which must change nothing;
4. checks on the result: unit enabled, user in ``audio``, credential root-only, venv imports;
5. ``--boot``: the tree booted with ``systemd-nspawn --boot`` (its own systemd as PID 1). Until
   ``kioskd.daemon`` exists the unit runs tests/ops/drivers/unit_probe.py through a drop-in that replaces
   ExecStart=, so the real unit, sandbox, credential, sd_notify and health endpoint are exercised.

Needs root, debootstrap, systemd-container and network access to the Debian mirror and PyPI.
Every step is bounded by a timeout; processes started here are stopped by their own pid.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.ops.ansible_tools import ANSIBLE_DIR, CACHE, ansible_env, ansible_venv

REPO = Path(__file__).resolve().parents[2]
PRISTINE = CACHE / "rootfs-pristine"
MIRROR = "http://deb.debian.org/debian"
TEST_KEY = "sk-chroot-test-key-8c1f0a"
PROBE = Path(__file__).parent / "drivers" / "unit_probe.py"
LEAKY_ENV = ("PIP_", "SSL_CERT_", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PYTHON", "VIRTUAL_ENV")


class HarnessError(RuntimeError):
    pass


@dataclass
class Report:
    steps: list[str] = field(default_factory=list)
    recaps: list[dict[str, int]] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)

    def step(self, text: str) -> None:
        self.steps.append(text)
        print(f"[chroot-harness {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], *, timeout_s: float, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s, env=env, cwd=cwd,
                          check=False)
    if done.returncode != 0:
        raise HarnessError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}):\n{done.stdout[-4000:]}"
                           f"\n{done.stderr[-4000:]}")
    return done


def pristine_rootfs(report: Report) -> Path:
    if (PRISTINE / "usr/bin/apt-get").exists():
        return PRISTINE
    report.step(f"debootstrap --variant=minbase bookworm into {PRISTINE} (about a minute, cached afterwards)")
    partial = PRISTINE.with_name(PRISTINE.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    run(["debootstrap", "--variant=minbase", "bookworm", str(partial), MIRROR], timeout_s=900)
    partial.rename(PRISTINE)
    return PRISTINE


def build_wheel(out: Path) -> Path:
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)], timeout_s=600)
    wheels = sorted(out.glob("kioskd-*.whl"))
    if not wheels:
        raise HarnessError("pip wheel produced no kioskd wheel")
    return wheels[-1]


def add_host_ca_certificates(root: Path) -> None:
    """The machine's extra CAs, picked up when the tree's ca-certificates package is configured."""
    target = root / "usr/local/share/ca-certificates"
    target.mkdir(parents=True, exist_ok=True)
    for cert in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy2(cert, target / cert.name)


def playbook_env(root: Path, wheel: Path) -> dict[str, str]:
    env = ansible_env(ansible_venv(), TEST_KIOSKD_ROOTFS=str(root), TEST_KIOSKD_WHEEL=str(wheel),
                      TEST_KIOSKD_API_KEY=TEST_KEY)
    return {k: v for k, v in env.items() if not k.startswith(LEAKY_ENV)}


def play(playbook: str, env: dict[str, str]) -> dict[str, int]:
    """Run a playbook against the tree (the test inventory names it through TEST_KIOSKD_ROOTFS)."""
    cmd = [str(Path(env["PATH"].split(os.pathsep)[0]) / "ansible-playbook"), "-i", "inventories/test/hosts.yml",
           playbook]
    done = run(cmd, timeout_s=1800, env=env, cwd=ANSIBLE_DIR)
    match = re.search(r"chroot_bookworm\s*:\s*(.+)", done.stdout)
    if not match:
        raise HarnessError(f"no play recap in:\n{done.stdout[-3000:]}")
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def in_root(root: Path, *cmd: str, timeout_s: float = 120) -> str:
    return run(["chroot", str(root), *cmd], timeout_s=timeout_s).stdout.strip()


def check_tree(root: Path, report: Report) -> None:
    report.checks["is-enabled"] = in_root(root, "systemctl", "is-enabled", "kioskd.service")
    report.checks["groups"] = in_root(root, "id", "-nG", "kioskd")
    report.checks["credential"] = in_root(root, "stat", "-c", "%a %U:%G", "/etc/credstore/kioskd.azure-openai-api-key")
    report.checks["config_dir"] = in_root(root, "stat", "-c", "%a %U:%G", "/etc/kioskd")
    report.checks["imports"] = in_root(
        root, "/opt/kioskd/venv/bin/python", "-c",
        "from systemd import daemon, journal; import sounddevice, websockets, openwakeword, kioskd.service; "
        "print('ok')",
    )
    report.checks["verify"] = run(
        ["chroot", str(root), "systemd-analyze", "verify", "--man=no", "/etc/systemd/system/kioskd.service"],
        timeout_s=120).stderr.strip() or "(silent)"


def install_probe(root: Path) -> None:
    """A drop-in running the probe instead of ``kioskd run`` (kioskd.daemon does not exist yet)."""
    shutil.copy2(PROBE, root / "opt/kioskd/unit_probe.py")
    dropin = root / "etc/systemd/system/kioskd.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "50-probe.conf").write_text(
        "[Service]\nExecStart=\n"
        "ExecStart=/opt/kioskd/venv/bin/python /opt/kioskd/unit_probe.py /etc/kioskd/kioskd.toml\n"
    )


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text().split() if (task / "children").exists() else []
        found += [int(p) for p in text]
    return found


@contextmanager
def booted(root: Path) -> Iterator[int]:
    """``systemd-nspawn --boot`` of ``root``; yields the container's PID 1 as seen from here."""
    script = ('mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn && '
              'exec systemd-nspawn -D "$1" --register=no --keep-unit --boot --console=passive --machine=kioskd-test')
    with tempfile.TemporaryFile() as log:
        yield from _boot(root, script, log)


def _boot(root: Path, script: str, log: IO[bytes]) -> Iterator[int]:
    nspawn = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(root)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        init = None
        while init is None and time.monotonic() < deadline:
            for sh in [nspawn.pid, *children(nspawn.pid)]:
                for kid in children(sh):
                    if Path(f"/proc/{kid}/comm").read_text().strip() == "systemd":
                        init = kid
            if nspawn.poll() is not None:
                break
            time.sleep(0.2)
        if init is None:
            log.seek(0)
            raise HarnessError(f"the container did not boot:\n{log.read().decode(errors='replace')[-3000:]}")
        yield init
    finally:
        if nspawn.poll() is None:
            os.kill(nspawn.pid, signal.SIGTERM)  # nspawn powers the container off cleanly
            try:
                nspawn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(nspawn.pid, signal.SIGKILL)
                nspawn.wait()


def in_container(init: int, *cmd: str, timeout_s: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = ["nsenter", "-t", str(init), "-a", *cmd]
    if check:
        return run(full, timeout_s=timeout_s)
    return subprocess.run(full, capture_output=True, text=True, timeout=timeout_s, check=False)


def check_boot(root: Path, report: Report) -> None:
    install_probe(root)
    with booted(root) as init:
        in_container(init, "systemctl", "is-system-running", "--wait", timeout_s=120, check=False)
        state = in_container(init, "systemctl", "show", "kioskd.service", "-p",
                             "ActiveState,SubState,StatusText,WatchdogUSec,NRestarts", check=False).stdout
        report.checks["unit"] = " ".join(state.split())
        readyz = in_container(init, "/opt/kioskd/venv/bin/python", "-c",
                              "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8787/readyz').read()"
                              ".decode())", check=False)
        report.checks["readyz"] = (readyz.stdout or readyz.stderr).strip()
        journal = in_container(init, "journalctl", "-u", "kioskd", "-o", "json", "--no-pager", check=False).stdout
        entries = [json.loads(line) for line in journal.splitlines() if line.startswith("{")]
        report.checks["journal_fields"] = json.dumps(
            [{k: e.get(k) for k in ("KIOSKD_EVENT", "SESSION_ID", "COST_USD")} for e in entries if "KIOSKD_EVENT" in e])
        report.checks["key_in_journal"] = str(TEST_KEY in journal)


def provision(work: Path, report: Report, *, boot: bool) -> Report:
    root = work / "rootfs"
    pristine = pristine_rootfs(report)
    report.step(f"copying {pristine} to {root}")
    run(["cp", "-a", str(pristine), str(root)], timeout_s=600)
    add_host_ca_certificates(root)
    wheel = build_wheel(work / "dist")
    env = playbook_env(root, wheel)
    report.step("bootstrap: python3, python3-apt, systemd")
    play("tests/chroot-bootstrap.yml", env)
    report.step("site.yml, first run")
    report.recaps.append(play("site.yml", env))
    report.step("site.yml, second run (must change nothing)")
    report.recaps.append(play("site.yml", env))
    check_tree(root, report)
    if boot:
        report.step("systemd-nspawn --boot")
        check_boot(root, report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--boot", action="store_true", help="also boot the tree with systemd-nspawn")
    parser.add_argument("--keep", action="store_true", help="keep the provisioned tree for inspection")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("chroot harness: needs root (debootstrap, chroot, mounts)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
    report = Report()
    try:
        provision(work, report, boot=args.boot)
    except (HarnessError, subprocess.TimeoutExpired) as exc:
        print(f"chroot harness: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"chroot harness: tree kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"recaps": report.recaps, "checks": report.checks}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
