"""The README's Configuration and Error codes tables say what the code does (issue 16 item 5)."""

from __future__ import annotations

import re
from pathlib import Path

import server.errors as errors

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
VARIABLE = re.compile(r"\bVOICE_[A-Z0-9_]*[A-Z0-9]\b")


def section(title: str) -> str:
    """The README text from the ``## <title>`` heading to the next ``## `` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_every_setting_the_code_reads_is_in_the_configuration_table() -> None:
    read = set(VARIABLE.findall((ROOT / "server" / "settings.py").read_text()))
    documented = set(VARIABLE.findall(section("Configuration")))
    missing = sorted(read - documented)
    assert not missing, f"read by server/settings.py, missing from the README: {missing}"
    assert not documented - read, f"in the README's table, read by nothing: {sorted(documented - read)}"


def test_nothing_outside_settings_reads_the_environment() -> None:
    readers = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "server").rglob("*.py")
        if path.name != "settings.py" and re.search(r"os\.environ|os\.getenv", path.read_text())
    ]
    # The test kit runs in the user's pytest process, not in the server: its plugin reads its
    # own VOICE_TEST_* options (README "Use it in your tests"), and it hands its environment on
    # to the server it boots.
    assert sorted(readers) == ["server/testkit/plugin.py", "server/testkit/process.py"], readers


def test_every_error_in_the_tree_is_in_the_error_codes_section() -> None:
    text = section("Error codes")
    leaves = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.VoiceError)]
    missing = [
        f"{cls.__name__} ({cls.code} / {cls.frame_code})"
        for cls in leaves
        if f"`{cls.code}`" not in text and f"`{cls.frame_code}`" not in text
    ]
    assert not missing, missing
