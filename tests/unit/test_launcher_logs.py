"""The launcher's logs: one file per process and run, bounded, and a crash report that shows
the process's own lines of its last run only."""

from __future__ import annotations

from services.localsystem import bound_log, exit_text, last_lines, rotate_logs, start_log


def test_a_run_starts_a_fresh_log_and_keeps_the_one_before(tmp_path):
    log = tmp_path / "room-0.log"
    start_log(log, "room-0 started")
    log.open("a").write("first run\n")
    rotate_logs(tmp_path)
    start_log(log, "room-0 started")
    log.open("a").write("second run\n")
    assert "first run" in (tmp_path / "room-0.log.1").read_text()
    assert "first run" not in log.read_text() and "second run" in log.read_text()


def test_the_crash_report_shows_the_last_start_only(tmp_path):
    log = tmp_path / "gateway.log"
    start_log(log, "gateway started")
    log.open("a").write("old line\n")
    start_log(log, "gateway restarted (restart 1)")
    log.open("a").write("".join(f"line {n}\n" for n in range(100)))
    assert last_lines(log, 3) == ["line 97", "line 98", "line 99"]
    assert "old line" not in last_lines(log, 500)
    assert last_lines(tmp_path / "missing.log") == []


def test_a_log_is_kept_under_its_bound(tmp_path):
    log = tmp_path / "projector.log"
    log.write_text("".join(f"line {n:06}\n" for n in range(20_000)))  # 240 KB
    assert bound_log(log, limit=64 * 1024)
    text = log.read_text()
    assert log.stat().st_size <= 64 * 1024 and "older lines dropped" in text
    assert text.endswith("line 019999\n")
    assert not bound_log(log, limit=64 * 1024)


def test_an_exit_reads_as_a_code_or_a_signal():
    assert exit_text(1) == "exit code 1"
    assert exit_text(-9) == "killed by SIGKILL"
    assert exit_text(None) == "still running"
