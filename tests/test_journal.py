import json

import numpy as np
import pytest

from videostyle.errors import ResumeError
from videostyle.store.workdir import JOURNAL, WorkDir

MANIFEST = {"config_hash": "abc", "source_fingerprint": "src", "weights_id": "w", "working_size": [4, 2]}


def _frame(value):
    return np.full((2, 4, 3), value, np.uint8)


def test_frames_roundtrip_and_resume_keeps_finished_frames(tmp_path):
    work = WorkDir.open(tmp_path / "w", MANIFEST)
    for i in range(3):
        work.write_frame(i, pts=i * 100, rgb=_frame(i * 10))
    work.close()  # the lock: one open work dir at a time
    again = WorkDir.open(tmp_path / "w", MANIFEST)
    assert again.finished_count == 3
    assert [again.entries[i].pts for i in range(3)] == [0, 100, 200]
    np.testing.assert_array_equal(again.read_frame(2), _frame(20))
    assert not list((tmp_path / "w" / "frames").glob("*.tmp"))


def test_truncated_frame_file_is_detected_and_redone_from_there(tmp_path):
    work = WorkDir.open(tmp_path / "w", MANIFEST)
    for i in range(4):
        work.write_frame(i, pts=i, rgb=_frame(i))
    path = work.frame_path(2)
    path.write_bytes(path.read_bytes()[:20])
    work.close()
    again = WorkDir.open(tmp_path / "w", MANIFEST)
    assert again.finished_count == 2
    lines = (tmp_path / "w" / JOURNAL).read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1]


def test_torn_journal_line_is_ignored(tmp_path):
    work = WorkDir.open(tmp_path / "w", MANIFEST)
    work.write_frame(0, pts=0, rgb=_frame(1))
    with open(tmp_path / "w" / JOURNAL, "a") as fh:
        fh.write('{"index": 1, "pts": 1, "sha')
    work.close()
    assert WorkDir.open(tmp_path / "w", MANIFEST).finished_count == 1


def test_resume_with_other_config_is_refused_naming_what_differs(tmp_path):
    WorkDir.open(tmp_path / "w", MANIFEST).write_frame(0, 0, _frame(0))
    other = {**MANIFEST, "config_hash": "xyz", "weights_id": "v"}
    with pytest.raises(ResumeError) as err:
        WorkDir.open(tmp_path / "w", other)
    assert str(err.value) == (f"work dir {str(tmp_path / 'w')!r} belongs to another run (the style settings, "
                              f"the VGG-19 weights differ: weights w -> v); use --restart to start over (the old dir is kept "
                              f"aside) or --workdir DIR")


def test_restart_keeps_the_old_dir_aside(tmp_path):
    WorkDir.open(tmp_path / "w", MANIFEST).write_frame(0, 0, _frame(0))
    fresh = WorkDir.open(tmp_path / "w", {**MANIFEST, "config_hash": "new"}, restart=True)
    assert fresh.finished_count == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("w.old-")]
    assert len(aside) == 1 and (aside[0] / "frames" / "000000.png").exists()


def test_frames_must_be_written_in_order(tmp_path):
    work = WorkDir.open(tmp_path / "w", MANIFEST)
    with pytest.raises(ValueError, match="expected 0, got 1"):
        work.write_frame(1, 0, _frame(0))


def test_a_read_only_view_makes_the_checks_open_makes(tmp_path):
    """WorkDir.view (the Ray driver reading a finished segment) verifies like open: a corrupt frame ends
    the trusted prefix, a link inside is refused, and nothing is written."""
    with WorkDir.open(tmp_path / "w", MANIFEST) as work:
        for i in range(3):
            work.write_frame(i, i, _frame(10 * i))
    journal = (tmp_path / "w" / JOURNAL).read_bytes()
    (tmp_path / "w" / "frames" / "000001.png").write_bytes(b"not the frame")
    view = WorkDir.view(tmp_path / "w")
    assert view.finished_count == 1
    assert (tmp_path / "w" / JOURNAL).read_bytes() == journal  # a view writes nothing
    (tmp_path / "w" / JOURNAL).unlink()
    (tmp_path / "w" / JOURNAL).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Exception, match="link"):
        WorkDir.view(tmp_path / "w")
