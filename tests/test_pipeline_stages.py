"""The stage runner: reuse when current, fresh start when changed, resume when interrupted, clear failures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kd_lab.stages import Stage, StageError, StageRunner


def _writer(path: Path, text: str) -> list[str]:
    """A command that appends ``text`` to ``path`` and records its arguments."""
    code = "import sys, pathlib; p = pathlib.Path(sys.argv[1]); p.parent.mkdir(parents=True, exist_ok=True); "
    code += "p.open('a').write(sys.argv[2] + ' ' + ' '.join(sys.argv[3:]) + '\\n')"
    return [sys.executable, "-c", code, str(path), text]


def _runner(tmp_path: Path, **kwargs) -> StageRunner:
    return StageRunner(tmp_path / ".stages", log=lambda line: None, **kwargs)


def test_current_stage_is_reused_and_changed_stage_replaces_its_folder(tmp_path: Path) -> None:
    out = tmp_path / "a" / "out.txt"
    stage = Stage("a", command=_writer(out, "one"), outputs=(out,), owned_dirs=(out.parent,))
    first, again = _runner(tmp_path), _runner(tmp_path)
    assert first.run(stage) == "ran"
    assert again.run(stage) == "reused"
    assert out.read_text() == "one \n"
    assert first.recorded["a"] == first.timings["a"] > 0
    assert again.timings == {"a": 0.0} and again.recorded["a"] == round(first.recorded["a"], 1)  # from the stamp
    changed = Stage("a", command=_writer(out, "two"), outputs=(out,), owned_dirs=(out.parent,))
    assert _runner(tmp_path).run(changed) == "ran"
    assert out.read_text() == "two \n"  # the folder was cleared: nothing of the first run is left
    assert _runner(tmp_path, fresh=True).run(changed) == "ran"


def test_missing_output_reruns_the_stage(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    stage = Stage("a", command=_writer(out, "x"), outputs=(out,))
    _runner(tmp_path).run(stage)
    out.unlink()
    assert _runner(tmp_path).run(stage) == "ran"
    assert out.exists()


def test_rerun_upstream_invalidates_downstream(tmp_path: Path) -> None:
    up, down = tmp_path / "up.txt", tmp_path / "down.txt"
    first = Stage("up", command=_writer(up, "u"), outputs=(up,))
    second = Stage("down", command=_writer(down, "d"), outputs=(down,), depends_on=("up",))
    runner = _runner(tmp_path)
    runner.run(first)
    runner.run(second)
    assert _runner(tmp_path).run(second) == "reused"
    _runner(tmp_path, fresh=True).run(first)
    assert _runner(tmp_path).run(second) == "ran"


def test_stage_needs_its_dependencies(tmp_path: Path) -> None:
    stage = Stage("down", command=_writer(tmp_path / "d", "d"), depends_on=("up",))
    with pytest.raises(StageError, match="needs stage 'up'"):
        _runner(tmp_path).run(stage)


def test_failed_stage_names_itself_and_is_not_marked_done(tmp_path: Path) -> None:
    failing = Stage("boom", command=[sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(StageError, match=r"(?s)stage .boom. failed with exit status 3.*run the same command again"):
        _runner(tmp_path).run(failing)
    assert _runner(tmp_path).read_stamp("boom")["status"] == "running"


def test_interrupted_training_resumes_from_latest_checkpoint(tmp_path: Path) -> None:
    models, log = tmp_path / "models", tmp_path / "calls.txt"
    done = models / "model.pt"
    stage = Stage("train", command=_writer(log, "train"), outputs=(done,), owned_dirs=(models,), resume_dir=models)
    with pytest.raises(StageError, match="did not write"):  # "killed" before model.pt: stamp stays "running"
        _runner(tmp_path).run(stage)
    models.mkdir()
    (models / "latest_checkpoint_epoch=3.pt").write_bytes(b"state")
    done.write_bytes(b"weights")  # what the resumed run would write
    assert _runner(tmp_path).run(stage) == "resumed"
    assert log.read_text().splitlines()[-1] == "train --resume_from latest"
    assert (models / "latest_checkpoint_epoch=3.pt").exists()  # resuming keeps the checkpoint folder


def test_stage_needs_exactly_one_of_command_and_action() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Stage("x")


def test_editing_an_input_file_reruns_the_stage(tmp_path: Path) -> None:
    config, out = tmp_path / "train.json", tmp_path / "out.txt"
    config.write_text('{"beta": 1.0}')
    stage = Stage("a", command=_writer(out, "x"), outputs=(out,), inputs=(config,))
    _runner(tmp_path).run(stage)
    assert _runner(tmp_path).run(stage) == "reused"
    config.write_text('{"beta": 0.1}')
    assert _runner(tmp_path).run(stage) == "ran"


def _timed_action(log: list[tuple[str, str, float]], name: str, seconds: float = 0.2):
    """An action that records when it started and ended."""
    import time

    def action() -> None:
        log.append((name, "start", time.perf_counter()))
        time.sleep(seconds)
        log.append((name, "end", time.perf_counter()))

    return action


def _timed_command(log: Path, name: str, seconds: float = 0.5) -> list[str]:
    """A command (a subprocess) that appends ``name start|end <time>`` lines to ``log``."""
    code = (
        "import sys, time\n"
        "def mark(event):\n"
        "    with open(sys.argv[1], 'a') as f:\n"
        "        f.write(f'{sys.argv[2]} {event} {time.time()}\\n')\n"
        "mark('start'); time.sleep(float(sys.argv[3])); mark('end')\n"
    )
    return [sys.executable, "-c", code, str(log), name, str(seconds)]


def test_run_all_overlaps_independent_commands_and_waits_for_dependencies(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    stages = [
        Stage("root", command=_timed_command(log, "root", 0.1)),
        Stage("left", command=_timed_command(log, "left"), depends_on=("root",)),
        Stage("right", command=_timed_command(log, "right"), depends_on=("root",)),
        Stage("join", command=_timed_command(log, "join", 0.1), depends_on=("left", "right")),
    ]
    _runner(tmp_path).run_all(stages, jobs=2)
    when = {(name, event): float(t) for name, event, t in (line.split() for line in log.read_text().splitlines())}
    assert when["root", "end"] <= min(when["left", "start"], when["right", "start"])
    assert when["join", "start"] >= max(when["left", "end"], when["right", "end"])
    assert when["left", "start"] < when["right", "end"] and when["right", "start"] < when["left", "end"]  # overlapped
    again = _runner(tmp_path)
    again.run_all(stages, jobs=2)
    assert set(again.timings.values()) == {0.0}  # every stage reused


def test_run_all_runs_actions_one_at_a_time_beside_commands(tmp_path: Path) -> None:
    """Actions run in this process's threads; what they call (torch.onnx.export in the false-positive probe) need not
    be thread-safe, so two are never run at once, while a command runs beside them."""
    log: list[tuple[str, str, float]] = []
    stages = [
        Stage("first", action=_timed_action(log, "first")),
        Stage("second", action=_timed_action(log, "second")),
        Stage("command", command=_timed_command(tmp_path / "log.txt", "command", 0.3)),
    ]
    _runner(tmp_path).run_all(stages, jobs=3)
    when = {(name, event): t for name, event, t in log}
    assert when["first", "end"] <= when["second", "start"] or when["second", "end"] <= when["first", "start"]
    assert (tmp_path / "log.txt").read_text().count("command end") == 1


def test_run_all_with_one_job_runs_in_order(tmp_path: Path) -> None:
    log: list[tuple[str, str, float]] = []
    stages = [Stage(name, action=_timed_action(log, name, 0.0)) for name in ("c", "a", "b")]
    _runner(tmp_path).run_all(stages, jobs=1)
    assert [name for name, event, _ in log if event == "start"] == ["c", "a", "b"]


def test_run_all_starts_nothing_after_a_failure_and_raises_it(tmp_path: Path) -> None:
    log: list[tuple[str, str, float]] = []
    stages = [
        Stage("slow", action=_timed_action(log, "slow", 1.0)),
        Stage("bad", command=[sys.executable, "-c", "raise SystemExit(3)"]),
        Stage("after_bad", action=_timed_action(log, "after_bad"), depends_on=("bad",)),
        Stage("later", action=_timed_action(log, "later"), depends_on=("slow",)),
    ]
    with pytest.raises(StageError, match="'bad' failed with exit status 3"):
        _runner(tmp_path).run_all(stages, jobs=2)
    names = {name for name, _, _ in log}
    assert names == {"slow"}  # the running stage finished; nothing new started
    assert _runner(tmp_path).read_stamp("slow")["status"] == "done"
    with pytest.raises(ValueError, match="jobs"):
        _runner(tmp_path).run_all(stages, jobs=0)
