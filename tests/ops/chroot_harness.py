"""The kioskd role run for real on a bare Debian tree, then that tree booted under its own systemd.

    sudo .venv/bin/python -m tests.ops.chroot_harness [--keep]

tests/ops/test_chroot.py drives the same functions and asserts on each step:

1. a pristine ``debootstrap --variant=minbase bookworm`` tree, made once per machine and cached in
   /var/cache/kioskd-test/rootfs-pristine (TEST_KIOSKD_CACHE moves the cache), copied for every run;
2. through the ``community.general.chroot`` connection: ``ansible/tests/chroot-bootstrap.yml`` (python3,
   python3-apt, systemd), ``ansible/tests/audio-rig.yml`` (the test device's sound card: PulseAudio with a
   null-sink microphone and speaker), then ``site.yml`` with a wheel built from this repository, then
   ``site.yml`` again, which must change nothing;
3. the tree booted with ``systemd-nspawn --boot``: its own systemd as PID 1, this machine's network (so kioskd
   reaches the test's realtime simulator on 127.0.0.1), inspected through ``nsenter`` (:class:`Container`).

Downloads are cached next to the pristine tree, so a second run fetches next to nothing: the Debian package
lists and .deb files the last run used, and a wheelhouse of kioskd's dependencies from which the role installs
with ``--no-index``. (pip's own HTTP cache does not help on this build machine: the responses carry no
caching headers, so pip stores nothing.)

Needs root, debootstrap, systemd-container (systemd-nspawn), util-linux (unshare, nsenter, setpriv) and, while the
caches are cold, the Debian mirror and PyPI. Every step has a timeout. The container and everything in it end
with the nspawn process, stopped by its own pid; its mounts live in a private mount namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.ops.ansible_tools import ANSIBLE_DIR, CACHE, ansible_env, ansible_venv

REPO = Path(__file__).resolve().parents[2]
PRISTINE = CACHE / "rootfs-pristine"
APT_CACHE = CACHE / "apt"
WHEELHOUSE = CACHE / "wheelhouse"
MIRROR = "http://deb.debian.org/debian"
TEST_KEY = "sk-chroot-test-key-8c1f0a"
HTTP_GET = Path(__file__).parent / "drivers" / "http_get.py"
# Where the tree's apt keeps what it fetched, by the name of the cache directory that keeps it between runs.
APT_DIRS = {"archives": "var/cache/apt/archives", "lists": "var/lib/apt/lists"}
TREE_WHEELHOUSE = "/var/cache/kioskd-wheelhouse"
# The tree is Debian 12's CPython 3.11 on this machine's architecture: the wheels must be for that.
TREE_PYTHON = ("--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")
LEAKY_ENV = ("PIP_", "SSL_CERT_", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PYTHON", "VIRTUAL_ENV")
# In-container commands get a clean environment: nothing of this machine's (PULSE_*, PIP_*, ...) leaks in.
CLEAN_ENV = ("env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/root")
VENV_PYTHON = "/opt/kioskd/venv/bin/python"
STALE_RUN_S = 6 * 3600


class HarnessError(RuntimeError):
    """A step failed; the message says which and shows its output (never the test key)."""

    def __init__(self, message: str) -> None:
        super().__init__(message.replace(TEST_KEY, "[test key]"))


@dataclass
class Report:
    steps: list[str] = field(default_factory=list)

    def step(self, text: str) -> None:
        self.steps.append(text)
        print(f"[chroot-harness {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], *, timeout_s: float, env: Mapping[str, str] | None = None, cwd: Path | None = None,
        check: bool = True, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; a non-zero exit (with ``check``) or the timeout is a :class:`HarnessError` with the output."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, timeout=timeout_s, env=env, cwd=cwd, check=False,
                              input=stdin if stdin is not None else b"")
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{' '.join(cmd[:6])} ... did not finish within {timeout_s:.0f} s") from None
    out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    if check and done.returncode != 0:
        raise HarnessError(f"{' '.join(cmd[:6])} ... failed ({done.returncode}):\n{out[-4000:]}\n{err[-4000:]}")
    return subprocess.CompletedProcess(done.args, done.returncode, out, err)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: Callable[[], str],
               interval_s: float = 0.25) -> None:
    """Poll state that only another program knows (systemd, journald) until ``condition`` holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout_s:.0f} s waiting for {what()}")
        time.sleep(interval_s)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the container shares this machine's network)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- caches shared by the runs on this machine -----------------------------------------------------------------

@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """One run at a time fills or swaps a cache; concurrent test runs on one machine wait here."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def pristine_rootfs(report: Report) -> Path:
    with cache_lock("rootfs"):
        if (PRISTINE / "usr/bin/apt-get").exists():
            return PRISTINE
        report.step(f"debootstrap --variant=minbase bookworm into {PRISTINE} (about a minute, cached afterwards)")
        partial = PRISTINE.with_name(PRISTINE.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        run(["debootstrap", "--variant=minbase", "bookworm", str(partial), MIRROR], timeout_s=900)
        partial.rename(PRISTINE)
        return PRISTINE


def link_files(source: Path, target: Path) -> None:
    """Hard-link the plain files directly in ``source`` into ``target``, keeping what ``target`` has.

    Safe for apt's directories: apt and dpkg replace files by renaming new ones over them and never write
    into a fetched file, so a link shared between the cache and a tree is never changed through the tree.
    """
    target.mkdir(parents=True, exist_ok=True)
    if not source.is_dir():
        return
    for item in source.iterdir():
        if item.name != "lock" and item.is_file() and not item.is_symlink() and not (target / item.name).exists():
            os.link(item, target / item.name)


def seed_apt_cache(root: Path) -> None:
    """Give the tree the package lists and .debs of the last run, so apt fetches only what changed."""
    with cache_lock("apt"):
        for name, inside in APT_DIRS.items():
            link_files(APT_CACHE / name, root / inside)


def keep_apt_cache(root: Path) -> None:
    """Make the cache exactly what the tree's apt now holds (what this run needed, nothing stale)."""
    with cache_lock("apt"):
        for name, inside in APT_DIRS.items():
            fresh, kept, old = APT_CACHE / f"{name}.new", APT_CACHE / name, APT_CACHE / f"{name}.old"
            shutil.rmtree(fresh, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
            link_files(root / inside, fresh)
            if kept.exists():
                kept.rename(old)
            fresh.rename(kept)
            shutil.rmtree(old, ignore_errors=True)


def build_wheel(out: Path) -> Path:
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)], timeout_s=600)
    wheels = sorted(out.glob("kioskd-*.whl"))
    if not wheels:
        raise HarnessError("pip wheel produced no kioskd wheel")
    return wheels[-1]


def requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist lines without extras: what the role's pip install resolves."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    lines = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    return sorted(line for line in lines if "extra ==" not in line)


def pip_env() -> dict[str, str]:
    """This machine's pip settings without its own indexes, links and constraints: plain PyPI, as the tree sees it."""
    keep = ("PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_DISABLE_PIP_VERSION_CHECK")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in keep}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def fill_wheelhouse(wheel: Path, report: Report, tree: Path) -> None:
    """Download kioskd's dependencies as wheels for the tree's Python (once per set of requirements) and
    hard-link them into ``tree``'s wheelhouse, where the role's pip finds them."""
    want = "\n".join([*TREE_PYTHON, *requirements(wheel)]) + "\n"
    stamp = WHEELHOUSE / ".requirements"
    with cache_lock("wheelhouse"):
        if not (stamp.exists() and stamp.read_text() == want):
            download_wheels(wheel, report)
            stamp.write_text(want)
        link_files(WHEELHOUSE, tree / TREE_WHEELHOUSE.lstrip("/"))


def download_wheels(wheel: Path, report: Report) -> None:
    report.step(f"downloading kioskd's dependencies into {WHEELHOUSE} (cached afterwards)")
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(WHEELHOUSE), "--only-binary=:all:",
         *TREE_PYTHON, str(wheel)], timeout_s=1200, env=pip_env())
    for own in WHEELHOUSE.glob("kioskd-*.whl"):  # the role installs the wheel it is given, not this copy
        own.unlink()


def add_host_ca_certificates(root: Path) -> None:
    """The machine's extra CAs, picked up when the tree's ca-certificates package is configured."""
    target = root / "usr/local/share/ca-certificates"
    target.mkdir(parents=True, exist_ok=True)
    for cert in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy2(cert, target / cert.name)


@contextmanager
def run_directory() -> Iterator[Path]:
    """A scratch directory in the cache (same file system: trees are hard-linked into), removed afterwards.

    It is held locked while in use, so a later run can remove what a killed run left behind without touching
    one that is still going.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob("run-*"):
        remove_if_abandoned(stale)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
    with open(work / ".in-use", "w") as in_use:
        fcntl.flock(in_use, fcntl.LOCK_EX)
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)


def remove_if_abandoned(work: Path) -> None:
    marker = work / ".in-use"
    if not marker.exists():  # a run between mkdtemp and its lock, or one from before locks: go by age
        if time.time() - work.stat().st_mtime > STALE_RUN_S:
            shutil.rmtree(work, ignore_errors=True)
        return
    with open(marker) as in_use:
        try:
            fcntl.flock(in_use, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        shutil.rmtree(work, ignore_errors=True)


# -- provisioning --------------------------------------------------------------------------------------------

@dataclass
class Provisioned:
    root: Path
    health_port: int
    recaps: dict[str, dict[str, int]] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)


def playbook_env(root: Path, wheel: Path, *, endpoint: str, health_port: int) -> dict[str, str]:
    env = ansible_env(ansible_venv(), TEST_KIOSKD_ROOTFS=str(root), TEST_KIOSKD_WHEEL=str(wheel),
                      TEST_KIOSKD_API_KEY=TEST_KEY, TEST_KIOSKD_ENDPOINT=endpoint,
                      TEST_KIOSKD_HEALTH_PORT=str(health_port),
                      TEST_KIOSKD_PIP_ARGS=f"--no-index --find-links {TREE_WHEELHOUSE}")
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
    return run(["chroot", str(root), *CLEAN_ENV, *cmd], timeout_s=timeout_s).stdout.strip()


def check_tree(root: Path) -> dict[str, str]:
    """What the role left in the tree, read with the tree's own tools."""
    return {
        "is-enabled": in_root(root, "systemctl", "is-enabled", "kioskd.service"),
        "rig-enabled": in_root(root, "systemctl", "is-enabled", "kioskd-test-rig.service"),
        "groups": in_root(root, "id", "-nG", "kioskd"),
        "credential": in_root(root, "stat", "-c", "%a %U:%G", "/etc/credstore/kioskd.azure-openai-api-key"),
        "config_dir": in_root(root, "stat", "-c", "%a %U:%G", "/etc/kioskd"),
        "config": (root / "etc/kioskd/kioskd.toml").read_text(),
        "imports": in_root(
            root, VENV_PYTHON, "-c",
            "from systemd import daemon, journal; import sounddevice, websockets, openwakeword, kioskd.runtime; "
            "print('ok')",
        ),
        "verify": run(["chroot", str(root), *CLEAN_ENV, "systemd-analyze", "verify", "--man=no",
                       "/etc/systemd/system/kioskd.service"], timeout_s=120).stderr.strip() or "(silent)",
    }


def provision(work: Path, report: Report, *, endpoint: str, health_port: int) -> Provisioned:
    """A fresh tree from the pristine one, provisioned by the role (twice) with the audio rig installed first."""
    result = Provisioned(root=work / "rootfs", health_port=health_port)
    pristine = pristine_rootfs(report)
    report.step(f"copying {pristine} to {result.root}")
    run(["cp", "-a", "--reflink=auto", str(pristine), str(result.root)], timeout_s=600)
    add_host_ca_certificates(result.root)
    seed_apt_cache(result.root)
    wheel = build_wheel(work / "dist")
    fill_wheelhouse(wheel, report, result.root)
    env = playbook_env(result.root, wheel, endpoint=endpoint, health_port=health_port)
    report.step("bootstrap: python3, python3-apt, systemd")
    result.recaps["bootstrap"] = play("tests/chroot-bootstrap.yml", env)
    report.step("the test device's sound card: PulseAudio null sinks")
    result.recaps["audio-rig"] = play("tests/audio-rig.yml", env)
    report.step("site.yml, first run")
    result.recaps["first"] = play("site.yml", env)
    report.step("site.yml, second run (must change nothing)")
    result.recaps["second"] = play("site.yml", env)
    keep_apt_cache(result.root)
    result.checks = check_tree(result.root)
    return result


# -- the booted tree -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HttpAnswer:
    status: int | None
    body: Any


class Container:
    """The booted tree, reached from this machine: commands run in all its namespaces via ``nsenter``."""

    def __init__(self, root: Path, init_pid: int, health_port: int) -> None:
        self.root = root
        self.init_pid = init_pid
        self.health_port = health_port

    def run(self, *cmd: str, timeout_s: float = 60, check: bool = True,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return run(["nsenter", "-t", str(self.init_pid), "-a", *CLEAN_ENV, *cmd], timeout_s=timeout_s, check=check,
                   stdin=stdin)

    def show(self, *props: str, unit: str = "kioskd.service") -> dict[str, str]:
        """``systemctl show`` of ``props`` as a dict."""
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_unit(self, what: str, condition: Callable[[dict[str, str]], bool], *props: str,
                  timeout_s: float = 120, unit: str = "kioskd.service") -> dict[str, str]:
        """Wait until ``condition`` holds for the unit's ``props``; return them."""
        seen: dict[str, str] = {}

        def holds() -> bool:
            seen.clear()
            seen.update(self.show(*props, unit=unit))
            return condition(seen)

        wait_until(holds, timeout_s, lambda: f"{unit}: {what} (last seen: {seen})")
        return dict(seen)

    def wait_booted(self, timeout_s: float = 180) -> str:
        """Wait until the boot transaction is done (kioskd's start job included); return the system state."""
        deadline = time.monotonic() + timeout_s
        # PID 1 exists a moment before it listens: systemctl needs its private socket.
        wait_until(lambda: self.run("test", "-S", "/run/systemd/private", check=False).returncode == 0, timeout_s,
                   lambda: "the container's systemd to listen on /run/systemd/private", 0.1)
        state = self.run("systemctl", "is-system-running", "--wait", timeout_s=deadline - time.monotonic(),
                         check=False)
        return state.stdout.strip()

    def get(self, path: str) -> HttpAnswer:
        """GET from the health endpoint, from inside the container, with the device's own Python."""
        url = f"http://127.0.0.1:{self.health_port}{path}"
        answer = json.loads(self.run(VENV_PYTHON, "-c", HTTP_GET.read_text(), url).stdout)
        return HttpAnswer(answer.get("status"), answer.get("body", answer.get("error")))

    def journal(self, *match: str) -> list[dict[str, Any]]:
        """Journal entries (all fields, as journalctl's JSON) matching ``match``, e.g. ``-u kioskd.service``."""
        out = self.run("journalctl", "--no-pager", "-o", "json", *match, timeout_s=60).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def wait_event(self, event: str, timeout_s: float = 60) -> dict[str, Any]:
        """Wait for kioskd to log ``KIOSKD_EVENT=event`` (journald is asynchronous); return the latest such entry."""
        found: list[dict[str, Any]] = []

        def logged() -> bool:
            found[:] = self.journal("-u", "kioskd.service", f"KIOSKD_EVENT={event}")
            return bool(found)

        wait_until(logged, timeout_s, lambda: f"KIOSKD_EVENT={event} in kioskd's journal")
        return found[-1]

    def log_tail(self, unit: str = "kioskd.service", lines: int = 40) -> str:
        """The unit's last journal lines, for a failure message (the test key masked, should it be there)."""
        out = self.run("journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines), "-u", unit,
                       check=False).stdout
        return out.replace(TEST_KEY, "[test key]")

    def journal_raw(self) -> str:
        """The whole journal, every field of every entry, as text (to look for what must never be there)."""
        return self.run("journalctl", "--no-pager", "-o", "export", timeout_s=60).stdout

    def play_into_microphone(self, wav: bytes, timeout_s: float = 60) -> None:
        """Speak into the rig's microphone from inside: ``paplay`` reads the WAV from its stdin."""
        self.run("paplay", "-d", "rig_mic_in", timeout_s=timeout_s, stdin=wav)


def _descendants(pid: int, depth: int) -> Iterator[int]:
    if depth == 0:
        return
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            yield kid
            yield from _descendants(kid, depth - 1)


def _container_init(nspawn: subprocess.Popen[bytes]) -> int | None:
    for pid in _descendants(nspawn.pid, 3):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                return pid
        except OSError:
            continue
    return None


def _log_tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-3000:]


@contextmanager
def booted(root: Path, health_port: int, timeout_s: float = 60) -> Iterator[Container]:
    """``systemd-nspawn --boot`` of ``root``, in a private mount namespace; powered off on the way out.

    ``--register=no --keep-unit``: there is no host systemd to register with. The tmpfs on
    /run/systemd/nspawn keeps nspawn's propagation directory inside that namespace.
    """
    script = ('mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn && '
              'exec systemd-nspawn -D "$1" --register=no --keep-unit --boot --console=passive '
              '--machine=kioskd-test')
    with tempfile.TemporaryFile() as log:
        # setpriv --pdeathsig: should this process die without cleaning up, nspawn gets SIGTERM and powers off.
        nspawn = subprocess.Popen(["setpriv", "--pdeathsig", "TERM", "unshare", "-m", "--propagation", "private",
                                   "sh", "-c", script, "sh", str(root)],
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        init: int | None = None
        try:
            def up() -> bool:
                nonlocal init
                if nspawn.poll() is not None:
                    raise HarnessError(f"systemd-nspawn exited with {nspawn.returncode}:\n{_log_tail(log)}")
                init = _container_init(nspawn)
                return init is not None

            wait_until(up, timeout_s, lambda: f"the container's systemd to start:\n{_log_tail(log)}", 0.1)
            assert init is not None
            yield Container(root, init, health_port)
        finally:
            _power_off(nspawn, init)


def _power_off(nspawn: subprocess.Popen[bytes], init: int | None) -> None:
    """SIGTERM to nspawn shuts the container down cleanly; failing that, its PID 1 goes, and with it the rest."""
    if nspawn.poll() is None:
        os.kill(nspawn.pid, signal.SIGTERM)
        try:
            nspawn.wait(timeout=60)
            return
        except subprocess.TimeoutExpired:
            pass
        if init is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(init, signal.SIGKILL)  # PID 1 of the container's namespace: the kernel ends all the rest
        os.killpg(nspawn.pid, signal.SIGKILL)
        nspawn.wait(timeout=60)


# -- by hand -----------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    from kioskd.sim.options import SimOptions
    from kioskd.sim.server import SimServerThread

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="do not remove the provisioned tree")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("chroot harness: needs root (debootstrap, chroot, nspawn)", file=sys.stderr)
        return 2
    report = Report()
    try:
        with SimServerThread(SimOptions(api_key=TEST_KEY)) as sim, run_directory() as work:
            done = provision(work, report, endpoint=sim.url, health_port=free_port())
            report.step("systemd-nspawn --boot")
            with booted(done.root, done.health_port) as box:
                system = box.wait_booted()
                unit = box.show("ActiveState", "SubState", "StatusText", "NRestarts", "WatchdogUSec")
                readyz = box.get("/readyz")
            if args.keep:
                kept = CACHE / f"kept-{work.name}"
                done.root.rename(kept)
                report.step(f"tree kept in {kept}")
    except HarnessError as exc:
        print(f"chroot harness: {exc}", file=sys.stderr)
        return 1
    summary = {"recaps": done.recaps, "tree": {k: v for k, v in done.checks.items() if k != "config"},
               "system": system, "kioskd": unit, "readyz": {"status": readyz.status, "body": readyz.body}}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
