"""pyproject.toml and environment.yml pin the same packages; `make test` gets what the suite needs by itself."""
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    out = {}
    for line in lines:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)", line.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip) == wanted


def test_ci_calls_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_extra_is_in_dev_and_the_harness_task_is_package_data():
    """CI installs `.[dev]`, so what an extra adds must be there too; the task's YAML must reach a wheel."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    dev = _pins(extras["dev"])
    for name, pins in extras.items():
        assert _pins(pins).items() <= dev.items(), name
    assert project["project"]["license"] == "MIT"  # the SPDX string: a table is deprecated in setuptools
    patterns = project["tool"]["setuptools"]["package-data"]["medcore"]
    shipped = {p.relative_to(ROOT / "medcore").as_posix() for pat in patterns for p in (ROOT / "medcore").glob(pat)}
    assert "harness/medcore_medmcqa.yaml" in shipped


def _fake_bin(tmp_path, uid: int, apt_status: int = 0, tools=()):
    """A PATH holding only a fake `id`, `apt-get` (logs its arguments) and the named tools; `make` runs through it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    scripts = {"id": f"echo {uid}", "apt-get": f'echo "$*" >> {log}; exit {apt_status}',
               "env": 'while [ "${1#*=}" != "$1" ]; do export "$1"; shift; done; exec "$@"'}
    scripts.update({tool: "exit 0" for tool in tools} if not isinstance(tools, dict) else tools)
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir, log


def _make_browser(bin_dir):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    done = subprocess.run([make, "-s", "-C", str(ROOT), "browser"], env={"PATH": str(bin_dir)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("uid,tools", [(0, {}), (1000, {"sudo": '[ "$1" = -n ] && shift; exec "$@"', "true": "exit 0"})])
def test_make_test_installs_chromium_from_the_system_packages_when_allowed(tmp_path, uid, tools):
    bin_dir, log = _fake_bin(tmp_path, uid=uid, tools=tools)
    out = _make_browser(bin_dir)
    assert out == "make: installing Chromium for the browser test (apt-get install chromium)"
    assert log.read_text().splitlines() == ["update -qq", "install -y -qq chromium"]


@pytest.mark.parametrize("uid,apt_status,expected,calls", [
    (1000, 0, "make: the browser test needs Chromium: install it (Debian/Ubuntu: sudo apt-get install chromium) "
              "and rerun", []),  # not root, no sudo: nothing is tried
    (0, 100, "make: installing Chromium for the browser test (apt-get install chromium)\n"
             "make: apt-get install chromium failed; the browser test needs Chromium: install it and rerun",
     ["update -qq"]),
])
def test_make_test_says_in_one_line_what_to_install_when_it_cannot(tmp_path, uid, apt_status, expected, calls):
    bin_dir, log = _fake_bin(tmp_path, uid=uid, apt_status=apt_status)
    assert _make_browser(bin_dir) == expected
    assert (log.read_text().splitlines() if log.exists() else []) == calls


def test_make_test_leaves_an_installed_chromium_alone(tmp_path):
    bin_dir, log = _fake_bin(tmp_path, uid=0, tools=["chromium"])
    assert _make_browser(bin_dir) == "" and not log.exists()


def test_make_test_is_the_whole_ci_script_and_depends_on_the_browser():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', "make test"]
    assert re.search(r"^test: \$\(STAMP\) browser$", (ROOT / "Makefile").read_text(), re.M)


def test_the_unused_bitsandbytes_cpu_kernel_warning_is_dropped_and_nothing_else(caplog):
    import logging

    import medcore  # noqa: F401 - installs the filter

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")  # where bitsandbytes 0.50 logs it, at import
    with caplog.at_level(logging.WARNING):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                    "`pip install kernels` and the kernels >= 0.11.1", "No module named 'kernels'")
        log.warning("another warning")
    assert [r.getMessage() for r in caplog.records] == ["another warning"]
