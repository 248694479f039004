import numpy as np
from clips import make_clip
from PIL import Image

from videostyle.cli import main
from videostyle.evaluate import evaluate_frames, read_frames


def _textured_pan(n, shift=2, size=(64, 48)):
    """A smooth texture panned right by ``shift`` px per frame: real motion the flow can measure."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (size[1] // 4 + 2, (size[0] + n * shift) // 4 + 2, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(coarse).resize(((size[0] + n * shift), size[1]), Image.BICUBIC))
    return [np.ascontiguousarray(big[:, i * shift:i * shift + size[0]]) for i in range(n)]


def test_static_clip_scores_near_zero_and_shuffled_frames_score_higher():
    frames = _textured_pan(6)
    ordered = evaluate_frames(frames, frames).mean_temporal_error
    static = evaluate_frames([frames[0]] * 6, [frames[0]] * 6).mean_temporal_error
    shuffled = evaluate_frames([frames[i] for i in (3, 0, 5, 1, 4, 2)], frames).mean_temporal_error
    assert static < 1e-6
    assert ordered < 0.2 * shuffled


def test_cli_prints_table_with_losses_and_writes_plot(tmp_path, capsys):
    src = make_clip(tmp_path / "in.mp4", n_frames=4, audio=None)
    style = tmp_path / "style.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(style)
    plot = tmp_path / "plot.png"
    assert main(["evaluate", str(src), "--source", str(src), "--style", str(style), "--weights", "untrained",
                 "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["frame", "temporal_error", "content", "style"]
    assert [line.split()[0] for line in lines[1:6]] == ["0", "1", "2", "3", "mean"]
    assert float(lines[5].split()[1]) < 2e-3  # only the clip's own brightness ramp remains
    assert float(lines[5].split()[2]) < 1e-6  # ... and carries all of its content
    assert Image.open(plot).size == (640, 320)


def test_warm_start_and_temporal_loss_flicker_less_than_independent_frames(tmp_path):
    src = tmp_path / "pan.mp4"
    import av
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=12, options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i, rgb in enumerate(_textured_pan(5)):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    style = tmp_path / "style.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(style)
    errors = {}
    for name, extra in {"independent": ["--init", "content", "--temporal-weight", "0"],
                        "temporal": ["--init", "prev-warped", "--temporal-weight", "200"]}.items():
        out = tmp_path / f"{name}.mp4"
        assert main(["stylize", str(src), "--style", str(style), "-o", str(out), "--weights", "untrained",
                     "--size", "64", "--iters", "15", "-q", "--crf", "0", *extra]) == 0
        errors[name] = evaluate_frames(read_frames(out), read_frames(src)).mean_temporal_error
    assert errors["temporal"] < 0.5 * errors["independent"]
