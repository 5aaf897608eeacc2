"""The benchmark harness in quick mode on a tiny home: the results file's structure, never timings.

The peer rows need supervisord and circus in bench/.peers-venv (`python -m bench.peers --install`,
which .ci/run does). Without that venv the benchmark measures hermesd alone, and only the tests
of the peer rows are skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import supervisor
from bench import __main__ as bench_main
from bench import peers_venv
from bench.peers import parse_ready_time, peers_available

REPOSITORY = Path(__file__).resolve().parents[1]
PEER_KEYS = ("supervisord-startsecs1", "supervisord-startsecs0", "circus")
STEADY_PEER_KEYS = ("supervisord-startsecs1", "circus")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    results_dir = tmp_path_factory.mktemp("bench-results")
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "startup,status,idle,fds",
         "--results-dir", str(results_dir)],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=110, stdin=subprocess.DEVNULL)
    assert completed.returncode == 0, f"bench failed:\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
    assert "Measurement" in completed.stdout, completed.stdout
    files = sorted(results_dir.glob("*-quick.json"))
    assert len(files) == 1, files
    assert files[0].with_suffix(".md").exists()
    return json.loads(files[0].read_text())


def require_peers(results: dict[str, Any]) -> None:
    if results["peers_skipped"]:
        reasons = "; ".join(f"{peer}: {reason}" for peer, reason in results["peers_skipped"].items())
        pytest.skip(f"the benchmark skipped the peer supervisors, so there are no peer rows ({reasons})")


def test_results_record_machine_and_command(results: dict[str, Any]) -> None:
    assert results["quick"] is True
    assert results["command"].startswith("python -m bench --quick")
    assert results["machine"]["cores"] >= 1
    assert results["machine"]["cpu_model"]
    assert results["machine"]["python"].startswith("3.")
    assert results["date"]


def test_sections_ran_without_errors(results: dict[str, Any]) -> None:
    assert set(results["sections"]) == {"startup", "status", "idle", "fds"}
    for name, section in results["sections"].items():
        assert "error" not in section, f"{name}: {section.get('error')}"


def test_hermesd_rows(results: dict[str, Any]) -> None:
    startup = results["sections"]["startup"]["sizes"][0]["supervisors"]["hermesd"]
    assert startup["errors"] == []
    assert startup["ready"]["n"] == 1
    assert startup["own_ready"]["median"] is not None

    status = results["sections"]["status"]["configs"][0]["supervisors"]["hermesd"]
    assert status["exit_codes"] == [0]
    assert status["seconds"]["n"] == 3

    idle = results["sections"]["idle"]["configs"][0]["supervisors"]["hermesd"]
    assert idle["cpu_seconds"] >= 0
    assert idle["rss_mb"]["median"] > 0
    assert idle["gateways"] == 2


def test_hermesd_board_fds_only_in_leader(results: dict[str, Any]) -> None:
    fds = results["sections"]["fds"]
    assert fds["hermesd"]["processes_holding_boards"] == 1
    assert fds["hermesd"]["board_fds"] == fds["boards"] * 3
    assert fds["every_gateway_computed"] == fds["profiles"] * fds["boards"] * 3
    assert fds["every_gateway_measured"]["board_fds"] == fds["every_gateway_computed"]


def test_peer_rows(results: dict[str, Any]) -> None:
    require_peers(results)
    sizes = results["sections"]["startup"]["sizes"][0]["supervisors"]
    for key in PEER_KEYS:
        assert sizes[key]["errors"] == [], key
        assert sizes[key]["ready"]["n"] == 1, key
    for key in STEADY_PEER_KEYS:
        status = results["sections"]["status"]["configs"][0]["supervisors"][key]
        assert status["exit_codes"] == [0], key
        assert results["sections"]["idle"]["configs"][0]["supervisors"][key]["gateways"] == 2, key


def test_table_rows_have_ratios(results: dict[str, Any]) -> None:
    require_peers(results)
    names = [row["name"] for row in results["rows"]]
    assert any(name.startswith("Start-up, 2 profiles") for name in names), names
    assert any(name.startswith("Status call") for name in names), names
    assert any(name.startswith("Board fds") for name in names), names
    for row in results["rows"]:
        assert set(row["ratios"]) == set(PEER_KEYS), row["name"]


def test_missing_section_module_is_recorded() -> None:
    section = bench_main.run_section("absent", lambda: bench_main.run_other("no_such_benchmark", True))
    assert "error" not in section
    assert "bench.no_such_benchmark does not exist" in section["skipped"]


def test_failing_section_is_recorded() -> None:
    def fail() -> dict[str, Any]:
        raise ValueError("broken on purpose")

    section = bench_main.run_section("broken", fail)
    assert section["error"] == "ValueError: broken on purpose"


def test_ready_line_parsing() -> None:
    line = ("2026-12-04 20:02:28,694 INFO gateway[profile-01:4941] gateway: gateway profile-01 started "
            "(pid 4941, dispatch_in_gateway=true)")
    parsed = parse_ready_time(line)
    assert parsed is not None
    assert parsed[0] == "profile-01"
    assert parsed[1] % 1 == pytest.approx(0.694, abs=1e-6)
    assert parse_ready_time(line.replace("started", "stopped")) is None


def test_peers_available_reports_reasons() -> None:
    for peer, reason in peers_available().items():
        assert peer in ("supervisord", "circus")
        assert reason is None or "install" in reason or "cannot be imported" in reason


def test_peers_venv_missing_names_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = tmp_path / ".peers-venv"
    monkeypatch.setattr(peers_venv, "VENV_DIR", venv)
    monkeypatch.setattr(peers_venv, "STAMP", venv / "installed-requirements.sha256")
    reason = peers_venv.missing_reason()
    assert reason is not None
    assert peers_venv.INSTALL_COMMAND in reason


def test_peers_venv_stale_stamp_is_not_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = tmp_path / ".peers-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    stamp = venv / "installed-requirements.sha256"
    monkeypatch.setattr(peers_venv, "VENV_DIR", venv)
    monkeypatch.setattr(peers_venv, "STAMP", stamp)

    stamp.write_text("0" * 64 + "\n")
    assert not peers_venv.is_current()
    assert "reinstall" in (peers_venv.missing_reason() or "")

    stamp.write_text(peers_venv.requirements_hash() + "\n")
    assert peers_venv.is_current()
    assert peers_venv.missing_reason() is None


def test_supervisor_import_is_hermesd() -> None:
    # supervisord lives in bench/.peers-venv; in hermesd's environment `supervisor` is hermesd.
    assert Path(supervisor.__file__).resolve().parent == REPOSITORY / "supervisor"
