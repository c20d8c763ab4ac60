"""What a user installs and copies: the wheel (`pipx run build --wheel` then `pipx install
dist/rolebroker-*.whl`) builds offline from a copy of this checkout, holds the whole package
and nothing else, installs into a fresh virtualenv, and its ``rolebroker`` command runs and
completes in bash, zsh and fish; docs/config.example.toml names every setting with its
default, as the real settings loader reads it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pytest

import rolebroker
from rolebroker.config import Settings, load_settings
from tests.support.ci import skip_or_fail
from tests.support.daemon import REPO

pytestmark = pytest.mark.xdist_group("packaging")  # one wheel build, on one worker

# What a checkout holds that a build must not see: environments, caches, earlier builds.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)
COMMANDS = ("serve", "env", "exec", "status", "doctor", "creds", "token", "mfa", "reload", "demo")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    home: Path

    @property
    def command(self) -> Path:
        return self.venv / "bin" / "rolebroker"

    def env(self, **extra: str) -> dict[str, str]:
        """A user's shell: only the venv's bin and the system on PATH, nothing of this checkout."""
        path = f"{self.venv / 'bin'}:/usr/bin:/bin"
        return {"PATH": path, "HOME": str(self.home), "LANG": "C.UTF-8", **extra}

    def run(self, *argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.env(**extra), capture_output=True, text=True, timeout=60)


def _run(*argv: str | Path) -> None:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{argv}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES, symlinks=True)
    dist = root / "dist"
    # No build isolation: the test extra has setuptools and build, so no index is needed.
    _run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, source)
    (wheel,) = dist.glob("rolebroker-*.whl")

    venv = root / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    # The dependencies come from the test venv: a .pth line adds its site-packages after the
    # fresh venv's own, so the wheel's rolebroker wins and the checkout's editable install
    # (a .pth inside that directory, which is not processed this way) stays invisible.
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout.strip()
    outer = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(site) / "outer-test-venv.pth").write_text("".join(f"{path}\n" for path in outer))
    home = root / "home"
    home.mkdir()
    yield Installed(wheel=wheel, venv=venv, home=home)


def test_wheel_holds_the_package_and_nothing_else(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"rolebroker-{rolebroker.__version__}.dist-info/METADATA").decode()
    package = REPO / "src" / "rolebroker"
    sources = {
        f"rolebroker/{path.relative_to(package).as_posix()}"
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed")
    }
    assert "rolebroker/py.typed" in sources
    assert sources <= names, f"missing from the wheel: {sorted(sources - names)}"
    dist_info = f"rolebroker-{rolebroker.__version__}.dist-info/"
    extra = {n for n in names - sources if not n.startswith(dist_info)}
    assert not extra, f"the wheel carries files that are not the package: {sorted(extra)}"
    assert f"{dist_info}licenses/LICENSE" in names
    assert "License-Expression: MIT" in metadata
    assert "Requires-Python: >=3.11" in metadata
    assert "Provides-Extra: demo" in metadata
    assert "Classifier: License ::" not in metadata  # PyPI rejects them next to License-Expression


def test_installed_command_runs_from_the_wheel(installed: Installed) -> None:
    where = installed.run(
        str(installed.venv / "bin" / "python"), "-c", "import rolebroker; print(rolebroker.__file__)"
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.venv), where.stdout

    version = installed.run(str(installed.command), "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"rolebroker, version {rolebroker.__version__}"

    usage = installed.run("rolebroker", "--help")
    assert usage.returncode == 0, usage.stderr
    for command in COMMANDS:
        assert f"\n  {command} " in usage.stdout, f"{command} missing from --help:\n{usage.stdout}"
    assert "Traceback" not in usage.stderr


def _shell(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed")
    return path


def test_bash_completion_as_documented(installed: Installed) -> None:
    script = (
        'eval "$(_ROLEBROKER_COMPLETE=bash_source rolebroker)"\n'
        "COMP_WORDS=(rolebroker st); COMP_CWORD=1; _rolebroker_completion rolebroker st rolebroker\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = installed.run(_shell("bash"), "--norc", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["status"], result.stdout + result.stderr


def test_zsh_completion_as_documented(installed: Installed) -> None:
    script = (
        "autoload -Uz compinit && compinit -u -D\n"
        'eval "$(_ROLEBROKER_COMPLETE=zsh_source rolebroker)"\n'
        'print -r -- "$_comps[rolebroker]"\n'
    )
    result = installed.run(_shell("zsh"), "-f", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "_rolebroker_completion", result.stdout + result.stderr
    # What that function asks the command for, and what the command answers.
    answer = installed.run(
        "rolebroker", _ROLEBROKER_COMPLETE="zsh_complete", COMP_WORDS="rolebroker doct", COMP_CWORD="1"
    )
    assert answer.stdout.splitlines()[:2] == ["plain", "doctor"], answer.stdout + answer.stderr


def test_fish_completion_as_documented(installed: Installed) -> None:
    script = '_ROLEBROKER_COMPLETE=fish_source rolebroker | source; complete -C "rolebroker rel"'
    result = installed.run(_shell("fish"), "--no-config", "-c", script, XDG_CONFIG_HOME=str(installed.home))
    assert result.returncode == 0, result.stderr
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["reload"], result.stdout


CONFIG_EXAMPLE = REPO / "docs" / "config.example.toml"
# Not file settings: the default profile comes from AWS_PROFILE, config_file is where the file is.
NOT_IN_THE_FILE = {"default_profile", "config_file"}


def test_config_example_names_every_setting_with_its_default(tmp_path: Path) -> None:
    text = CONFIG_EXAMPLE.read_text()
    commented = re.findall(r"^# (\w+) = ", text, flags=re.MULTILINE)
    settings = {f.name for f in fields(Settings)} - NOT_IN_THE_FILE
    assert sorted(commented) == sorted(settings), "each setting once, as '# name = default'"

    # As shipped everything is commented out; uncommented, it must change nothing. With no
    # XDG_RUNTIME_DIR (an empty environment) the token file's default is the one it shows.
    environ: dict[str, str] = {}
    as_shipped, uncommented = tmp_path / "shipped.toml", tmp_path / "uncommented.toml"
    as_shipped.write_text(text)
    uncommented.write_text(re.sub(r"^# (\w+ = )", r"\1", text, flags=re.MULTILINE))
    defaults = load_settings(environ={**environ, "ROLEBROKER_CONFIG": str(tmp_path / "none.toml")})
    for path in (as_shipped, uncommented):
        loaded = load_settings(environ={**environ, "ROLEBROKER_CONFIG": str(path)})
        assert loaded.config_file == path
        assert replace(loaded, config_file=None) == defaults
