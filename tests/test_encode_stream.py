"""The output is encoded while frames are made (videostyle.media.encode_stream), from journaled frames only."""

from __future__ import annotations

import logging
import time

import av
import numpy as np
import pytest
from common import make_clip
from PIL import Image

from videostyle.media import encode_stream
from videostyle import step
from videostyle.cli.main import main
from videostyle.errors import OutputError

N_FRAMES = 6
FAST = ["--weights", "untrained", "--size", "32", "--iters", "3,2", "--content-layers", "relu2_1",
        "--style-layers", "relu1_1,relu2_1", "-q", "--keep-workdir"]


@pytest.fixture
def job(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", n_frames=N_FRAMES, fps=12)
    style = tmp_path / "style.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(style)
    return clip, style, ["stylize", str(clip), "--style", str(style), "-o", str(tmp_path / "out.mp4"), *FAST]


def _pts(path) -> list[int]:
    with av.open(str(path)) as container:
        return [frame.pts for frame in container.decode(video=0)]


def _pulled_frames(monkeypatch) -> list[int]:
    """Make the streaming encoder record each frame's pts as it takes it; returns the record."""
    pulled: list[int] = []
    real = encode_stream.encode_video

    def recording(frames, **kwargs):
        def tap():
            for rgb, pts in frames:
                pulled.append(pts)
                yield rgb, pts
        return real(tap(), **kwargs)

    monkeypatch.setattr(encode_stream, "encode_video", recording)
    return pulled


@pytest.mark.slow
def test_frames_are_encoded_while_later_frames_are_optimised(job, monkeypatch, tmp_path):
    """Frame n is optimised only once the encoder has taken frame n-2: were the encoding left until
    after the last frame, the run would wait here in vain."""
    clip, _, argv = job
    pulled = _pulled_frames(monkeypatch)
    real_stylise = step.Stylizer.stylize
    calls, waited_in_vain = [], []

    def stylise(self, *args, **kwargs):
        n = len(calls)
        calls.append(n)
        deadline = time.monotonic() + 30
        while len(pulled) < n - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        if len(pulled) < n - 1:
            waited_in_vain.append(n)
        return real_stylise(self, *args, **kwargs)

    monkeypatch.setattr(step.Stylizer, "stylize", stylise)
    assert main(argv) == 0
    assert waited_in_vain == [] and len(calls) == N_FRAMES
    assert pulled == _pts(clip) == _pts(tmp_path / "out.mp4")
    # Each encoded frame is its own journaled frame (nearest of all; H.264 at crf 18 on upscaled
    # 32 px noise-like texture is far from lossless).
    with av.open(str(tmp_path / "out.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24").astype(np.float32) for f in container.decode(video=0)]
    work = tmp_path / "out.mp4.videostyle-work" / "frames"
    saved = [np.asarray(Image.open(work / f"{i:06d}.png").resize(decoded[0].shape[1::-1], Image.BICUBIC),
                        dtype=np.float32) for i in range(N_FRAMES)]
    for i, rgb in enumerate(decoded):
        errors = [float(np.abs(rgb - s).mean()) for s in saved]
        assert int(np.argmin(errors)) == i, (i, errors)


def test_an_encoder_failure_mid_run_is_mended_from_the_journal(job, monkeypatch, tmp_path, caplog):
    """The streaming encoder dies after two frames (a full disk that is then freed): the run goes on,
    and the output is encoded again from the journaled frames, complete."""
    clip, _, argv = job
    real = encode_stream.encode_video
    calls = []

    def failing(frames, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # the disk was freed: the encode from the journal works
            return real(frames, **kwargs)

        def two():
            for i, frame in enumerate(frames):
                if i == 2:
                    raise OutputError("disk full while writing the output")
                yield frame
        return real(two(), **kwargs)

    monkeypatch.setattr(encode_stream, "encode_video", failing)
    with caplog.at_level(logging.INFO, logger="videostyle.run.chain"):
        assert main(argv) == 0
    assert len(calls) == 2 and _pts(tmp_path / "out.mp4") == _pts(clip)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    assert (f"encoding while stylising failed (disk full while writing the output); encoding the "
            f"{N_FRAMES} journaled frames again") in caplog.messages


def test_ctrl_c_while_waiting_for_the_encoder_leaves_no_output(tmp_path):
    """Ctrl-C during finish() (the last frames still encoding) aborts the encoder: neither the output nor
    its temp file is left, and the interrupt goes on."""
    from videostyle.store.workdir import WorkDir
    from videostyle.media.decode import iter_frames
    from videostyle.media.probe import probe_video

    info = probe_video(make_clip(tmp_path / "in.mp4", n_frames=12, audio=None))
    work = WorkDir.open(tmp_path / "w", {"config_hash": "x"})
    for frame in iter_frames(info):
        work.write_frame(frame.index, frame.pts, frame.rgb)
    out = tmp_path / "out.mp4"
    encoder = encode_stream.StreamingEncoder(work, info, out, (64, 48), crf=18, preset="ultrafast",
                                             before_frame=lambda index: time.sleep(0.05))
    real_join, joins = encoder._thread.join, []

    def interrupted_join(*args):
        joins.append(1)
        if len(joins) == 1:
            raise KeyboardInterrupt
        real_join(*args)

    encoder._thread.join = interrupted_join
    with pytest.raises(KeyboardInterrupt):
        encoder.finish()
    assert not encoder._thread.is_alive() and encoder.error is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "w"]
