"""The library's entry points, and the only place that chooses how a video run is carried out:

- ``opts.ray`` set: segments of the video as Ray tasks (:mod:`videostyle.run.distributed`);
- otherwise the chain in this process (:mod:`videostyle.run.chain`), followed by
  :func:`videostyle.run.passes.run_passes` when ``cfg.passes > 1``.

The test kill points (:mod:`videostyle.faults`) are handed down from here too.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable

from videostyle import faults, images
from videostyle.config import RunOptions, StyleConfig
from videostyle.errors import InputError, ResumeError
from videostyle.paths import style_inputs
from videostyle.run import chain
from videostyle.run.plan import ProgressFactory, RunSummary, check_image_output, plan_run, snapshot_writer
from videostyle.step import check_image_shape, pick_device, still_iterations, stylize_still
from videostyle.store.snapshots import check_snapshots_not_inputs
from videostyle.store.workdir import WorkDir


def stylize_video(source: str | os.PathLike, output: str | os.PathLike, cfg: StyleConfig,
                  opts: RunOptions = RunOptions(), *, progress: ProgressFactory | None = None) -> RunSummary:
    """Stylise ``source`` into ``output`` (MP4/MOV/MKV), resuming from the work dir when possible.

    Args:
        progress: optional ``tqdm``-like factory called as ``progress(total=..., initial=...)``; the
            returned object gets ``update(1)``, ``set_postfix_str(str)`` and ``close()``.
    """
    if opts.ray is not None:  # many workers: segments of the video as Ray tasks
        if opts.start or opts.duration is not None:
            raise InputError("--start/--duration do not work with --ray yet: stylise the part in one process "
                             "(drop --ray) or cut the video first")
        from videostyle.run.distributed import stylize_video_ray
        return stylize_video_ray(source, output, cfg, opts, progress=progress, kill_at=faults.armed())
    plan = plan_run(source, output, cfg, opts)
    later = None
    if plan.cfg.passes > 1:
        from videostyle.run.passes import run_passes as later
    return chain.stylize_local(plan, opts, progress=progress, later_passes=later, kill_point=faults.kill_point)


def resume_video(workdir: str | os.PathLike, *, device: str | None = None,
                 progress: ProgressFactory | None = None) -> RunSummary:
    """Resume the run whose work dir is ``workdir``, from its manifest alone."""
    manifest = WorkDir.read_manifest(workdir)
    try:
        cfg = StyleConfig.from_dict(manifest["config"])
        opts = RunOptions(**manifest["run_options"])
        source, output = manifest["source"], manifest["output"]
    except (KeyError, TypeError) as exc:
        raise ResumeError(f"work dir {str(workdir)!r} has an incomplete manifest (missing {exc}); "
                          f"rerun the original stylize command instead") from exc
    opts = replace(opts, workdir=str(workdir), device=device or opts.device)
    return stylize_video(source, output, cfg, opts, progress=progress)


def stylize_image(source: str | os.PathLike, output: str | os.PathLike, cfg: StyleConfig,
                  opts: RunOptions = RunOptions(), *, refine_iters: int = 20,
                  progress: Callable | None = None) -> dict[str, float]:
    """Stylise one image; writes a PNG (or any format Pillow knows by extension) at the source's size
    (``opts.output_size == "source"``: the working-size result refined at 2x steps by ``refine_iters``
    iterations each, :mod:`videostyle.model.upscale`) or at the working size.

    ``progress``: a ``tqdm``-like factory called as ``progress(total=iterations)``; the bar gets
    ``update(1)`` per iteration and ``close()``. Returns the working-size result's final loss terms.
    """
    inputs = [("input image", source), *style_inputs(cfg)]
    output = check_image_output(output, inputs=inputs)
    check_snapshots_not_inputs(output, opts.save_every, inputs)
    rgb = images.load_image(source)
    check_image_shape("image", source, (rgb.shape[1], rgb.shape[0]), cfg.size, cfg)
    upscale = refine_iters if opts.output_size == "source" else None
    bar = progress(total=still_iterations(rgb, cfg, refine_iters=upscale)) if progress else None
    try:
        out, losses = stylize_still(rgb, cfg, device=pick_device(opts.device),
                                    snapshots=snapshot_writer(output, opts.save_every), precision=opts.precision,
                                    tile=opts.tile, max_memory=opts.max_memory, refine_iters=upscale,
                                    on_step=(lambda: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    images.save_image_atomic(out, output)
    return losses
