"""The Ansible role and playbooks: lint (production profile), syntax, and what the templates render to."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kioskd.config import load_settings
from tests.ops.ansible_tools import ANSIBLE_DIR, ansible_venv, run_ansible
from tests.ops.test_unit import UNIT, unit_settings

INVENTORIES = ("inventories/production/hosts.yml", "inventories/test/hosts.yml")
PLAYBOOKS = ("site.yml", "fleet.yml", "tests/chroot-bootstrap.yml", "tests/render.yml", "tests/audio-rig.yml")


@pytest.fixture(scope="module")
def ansible_bin() -> Path:
    return ansible_venv()


def test_ansible_lint_production_profile_passes(ansible_bin: Path) -> None:
    lint = run_ansible(ansible_bin, "ansible-lint", timeout_s=600)
    output = lint.stdout + lint.stderr
    assert lint.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output


def test_ansible_lint_does_catch_a_careless_task(ansible_bin: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ansible"
    shutil.copytree(ANSIBLE_DIR, copy, ignore=shutil.ignore_patterns(".ansible"))
    with open(copy / "roles/kioskd/tasks/install.yml", "a") as tasks:
        tasks.write("\n- shell: curl -s https://example.invalid/get | sh\n")
    lint = run_ansible(ansible_bin, "ansible-lint", cwd=copy, timeout_s=600)
    assert lint.returncode != 0
    for rule in ("name[missing]", "fqcn[action-core]", "no-changed-when"):
        assert rule in lint.stdout + lint.stderr


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_playbooks_pass_syntax_check(ansible_bin: Path, inventory: str) -> None:
    check = run_ansible(ansible_bin, "ansible-playbook", "--syntax-check", "-i", inventory, *PLAYBOOKS)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("playbook: ") == len(PLAYBOOKS)


def render(ansible_bin: Path, out: Path, *extra_vars: str) -> tuple[str, str]:
    args = [arg for value in extra_vars for arg in ("-e", value)]
    done = run_ansible(ansible_bin, "ansible-playbook", "tests/render.yml",
                       "-e", "kioskd_endpoint=https://contoso-kiosk.openai.azure.com", "-e", f"kioskd_render_dir={out}",
                       *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return (out / "kioskd.service").read_text(), (out / "kioskd.toml").read_text()


def test_the_role_installs_the_unit_that_ci_verifies(ansible_bin: Path, tmp_path: Path) -> None:
    unit, _ = render(ansible_bin, tmp_path)
    assert unit.startswith("# Ansible managed")
    assert unit_settings(unit) == unit_settings(UNIT.read_text()), "role template and systemd/ have drifted"


def test_the_rendered_config_is_what_kioskd_accepts(ansible_bin: Path, tmp_path: Path) -> None:
    host_vars = ANSIBLE_DIR / "inventories/production/host_vars/kiosk-a-001.yml"
    extra = '{"kioskd_extra_settings": {"audio": {"block_ms": 40}, "budget": {"prices": {"audio_out": 80.0}}},' \
            ' "kioskd_instructions": "Say \\"welcome\\".\\nThen answer briefly."}'
    _, toml = render(ansible_bin, tmp_path, f"@{host_vars}", extra)
    settings = load_settings(tmp_path / "kioskd.toml", environ={"AZURE_OPENAI_API_KEY": "placeholder-key"})
    assert "api_key" not in toml, "the key goes through the credential, never the config file"
    assert settings.audio.input_device == "plughw:CARD=seeed4micvoicec,DEV=0"
    assert (settings.audio.input_channels, settings.audio.use_channels, settings.audio.block_ms) == (4, [0, 1], 40)
    assert settings.wake.threshold == 0.6
    assert settings.realtime.instructions == 'Say "welcome".\nThen answer briefly.'
    assert settings.budget.prices.audio_out == 80.0 and settings.budget.prices.audio_in == 32.0
    assert settings.health.host == "127.0.0.1" and settings.health.port == 8787
    assert str(settings.budget.state_dir) == "/var/lib/kioskd"
