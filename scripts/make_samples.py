"""Generate the files in samples/: a short clip with a soundtrack, and a style image.

Everything is synthesised here (no third-party media), so the samples may ship with the project:
    samples/harbour.mp4   3 s, 320x180, 12 fps, H.264 + AAC: a procedural harbour scene (sky, sun,
                          hills, boats on water) under a slow camera pan, with a two-note melody.
    samples/swirls.png    256x256 style image: bold brush-like swirls in a warm/cool palette.

Run from the repository root:  python scripts/make_samples.py
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parent.parent / "samples"
WIDTH, HEIGHT, FPS, SECONDS = 320, 180, 12, 3
SAMPLE_RATE = 44100


def scene(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A wide panorama (2x the frame width) that the camera pans across."""
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    horizon = int(height * 0.55)
    for y in range(horizon):  # sky: deep blue to warm near the horizon
        t = y / horizon
        draw.line([(0, y), (width, y)], fill=(int(40 + 200 * t), int(90 + 100 * t), int(200 - 60 * t)))
    draw.ellipse([width * 0.62, horizon * 0.25, width * 0.62 + 60, horizon * 0.25 + 60], fill=(255, 214, 90))
    for k, colour in enumerate([(40, 85, 60), (70, 110, 80)]):  # two ranges of hills
        pts = [(0, horizon)]
        for x in range(0, width + 40, 40):
            pts.append((x, horizon - int(12 + 10 * k + 8 * np.sin(x / (90 + 40 * k) + k) + rng.integers(0, 5))))
        pts.append((width, horizon))
        draw.polygon(pts, fill=colour)
    for y in range(horizon, height):  # water with ripples
        t = (y - horizon) / (height - horizon)
        draw.line([(0, y), (width, y)], fill=(int(30 + 40 * t), int(80 + 40 * t), int(140 + 30 * t)))
    for _ in range(220):
        x, y = rng.integers(0, width), rng.integers(horizon + 3, height)
        draw.line([(x, y), (x + rng.integers(6, 20), y)], fill=(200, 220, 240))
    for x0 in range(60, width, 150):  # boats
        y0 = horizon + 25 + int(rng.integers(0, 30))
        draw.polygon([(x0, y0), (x0 + 50, y0), (x0 + 40, y0 + 12), (x0 + 8, y0 + 12)], fill=(120, 50, 30))
        draw.polygon([(x0 + 25, y0 - 45), (x0 + 25, y0 - 2), (x0 + 48, y0 - 4)], fill=(245, 240, 225))
    return img.filter(ImageFilter.SMOOTH)


def melody(seconds: float) -> np.ndarray:
    """Mono float32 in [-1, 1]: alternating A4 and E5 notes of 0.5 s with soft attack/release."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    freq = np.where((t // 0.5) % 2 == 0, 440.0, 659.25)
    envelope = np.minimum(1.0, np.minimum((t % 0.5) / 0.02, (0.5 - t % 0.5) / 0.05))
    return (0.3 * envelope * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_clip(path: Path, rng: np.random.Generator) -> None:
    panorama = np.asarray(scene(WIDTH * 2, HEIGHT, rng))
    n_frames = FPS * SECONDS
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS, options={"crf": "20", "preset": "slow"})
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        for i in range(n_frames):  # pan right at a constant speed
            x = int(round(i * (WIDTH - 1) / (n_frames - 1)))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(panorama[:, x:x + WIDTH]), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(video.encode(frame))
        samples = melody(SECONDS)
        for start in range(0, len(samples), 1024):
            chunk = samples[start:start + 1024]
            frame = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, start
            out.mux(audio.encode(frame))
        out.mux(video.encode())
        out.mux(audio.encode())


def write_style(path: Path, rng: np.random.Generator, size: int = 256) -> None:
    img = Image.new("RGB", (size, size), (20, 30, 70))
    draw = ImageDraw.Draw(img)
    palette = [(255, 200, 40), (250, 120, 30), (40, 120, 220), (240, 240, 200), (20, 60, 150), (200, 40, 60)]
    for _ in range(160):  # short curved strokes along a swirling field
        x, y = rng.uniform(0, size, 2)
        colour = palette[rng.integers(len(palette))]
        for _ in range(14):
            angle = np.sin(x / 30.0) * 2 + np.cos(y / 25.0) * 2
            nx, ny = x + 6 * np.cos(angle), y + 6 * np.sin(angle)
            draw.line([(x, y), (nx, ny)], fill=colour, width=int(rng.integers(3, 7)))
            x, y = nx, ny
    img.filter(ImageFilter.SMOOTH).save(path)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = np.random.default_rng(2026)
    write_clip(OUT / "harbour.mp4", rng)
    write_style(OUT / "swirls.png", rng)
    print(f"wrote {OUT / 'harbour.mp4'} and {OUT / 'swirls.png'}")


if __name__ == "__main__":
    main()
