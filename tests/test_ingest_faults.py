"""Corrupt ingest inputs: a failing ingest names the file and exits cleanly with its error, every time."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fuserank.cli import main
from tests.test_ingest import COMPLETE, FIX, write

RUNS = 200


def test_a_header_only_anime_file_fails_naming_it(tmp_path, capsys):
    anime = write(tmp_path, "anime_header.csv", [(FIX / "anime_reduced.csv").read_text().splitlines()[0]])
    rc = main(["ingest", "--ratings", str(COMPLETE), "--anime", str(anime), "--out", str(tmp_path / "out"),
               "--min-user-ratings", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{anime}, line 2: no anime rows after the header" in err
    assert not (tmp_path / "out").exists()


def test_a_header_only_ratings_file_fails_naming_it(tmp_path, capsys):
    ratings = write(tmp_path, "ratings_header.csv", ["user_id,anime_id,rating"])
    rc = main(["ingest", "--ratings", str(ratings), "--out", str(tmp_path / "out"), "--min-user-ratings", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{ratings}, line 2: no rating rows after the header" in err


BLOCK = 4096


def _ratings_with_a_bad_row(path, rows: int, bad_line: int, bad_row: str) -> None:
    """A ratings file many reader blocks long with one bad row, so Arrow is still reading ahead when the
    parse fails."""
    rng = np.random.default_rng(0)
    body = np.column_stack([rng.integers(1, 5000, rows), rng.integers(1, 3000, rows), rng.integers(1, 11, rows)])
    lines = [",".join(map(str, r)) for r in body.tolist()]
    lines[bad_line - 2] = bad_row
    path.write_text("user_id,anime_id,rating\n" + "\n".join(lines) + "\n")


@pytest.mark.slow
def test_a_failing_ingest_exits_with_its_error_every_time(tmp_path):
    """``RUNS`` failing reads of the ingest's ratings reader, each in a process forked from one that imported
    everything once (a run costs the read, not the imports) and leaving as the CLI does on an error: the
    message, then the interpreter's normal shutdown. Small blocks keep a run short while Arrow still reads
    ahead. Before the fix 15 of 200 runs aborted (SIGABRT, "terminate called without an active
    exception")."""
    cases = []
    for i, (line, row) in enumerate([(2, "5,x,9"), (3, "1,2"), (4, "-4,5,5")]):
        path = tmp_path / f"bad{i}.csv"
        _ratings_with_a_bad_row(path, 60_000, line, row)
        cases.append((str(path), line))
    script = textwrap.dedent(f"""
        import json, os, sys
        from fuserank.errors import FuseRankError
        from fuserank.training import readers
        cases, out, statuses = {cases!r}, {str(tmp_path / 'err')!r}, []
        for run in range({RUNS}):
            path, line = cases[run % len(cases)]
            pid = os.fork()
            if pid == 0:
                os.dup2(os.open(out + f".{{run}}", os.O_WRONLY | os.O_CREAT), 2)
                try:
                    readers.read_ratings(path, block_bytes={BLOCK})
                except FuseRankError as exc:
                    print(f"fuserank ingest: error: {{exc}}", file=sys.stderr)
                    sys.exit(2)
                sys.exit(0)
            statuses.append((run, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])))
        print(json.dumps(statuses))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(statuses) == RUNS
    bad = [(run, code) for run, code in statuses if code != 2]
    assert not bad, f"{len(bad)} of {RUNS} failing reads did not exit 2: {bad[:10]}"
    for run in range(RUNS):
        path, line = cases[run % len(cases)]
        err = (tmp_path / f"err.{run}").read_text()
        assert f"{path}, line {line}" in err and "terminate called" not in err, err[-500:]
