"""The web page (Gradio Blocks) for one run: an image run gets an editor to upload a picture and paint the
region to fill; an audio run an upload and the gap in seconds; a video run an upload and the frames to
keep. Each page picks the method, steps and seed, shows progress, and gives back the file to look at,
listen to or play, and to download. The work itself is session.AppRun's (no gradio there)."""
from __future__ import annotations

import os
import shutil
import signal

import numpy as np

from ..errors import UserError
from .session import MAX_STEPS, AppRun

PAINT = "#ff3b30"  # the brush: any paint marks the region to fill; red shows on black and on white pictures
# small pictures (a 16x16 digit) shown large, pixel for pixel
CSS = ".pixels img { image-rendering: pixelated; width: 100% !important; height: 100% !important; object-fit: contain; }"
NO_PHONE_HOME = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "GRADIO_SSR_MODE": "False"}


def import_gradio(upload_dir):
    """gradio, set to keep uploads in `upload_dir` (it reads that when first imported) and to call nowhere."""
    os.environ.setdefault("GRADIO_TEMP_DIR", str(upload_dir))
    for k, v in NO_PHONE_HOME.items():
        os.environ.setdefault(k, v)
    try:
        import gradio as gr
    except ModuleNotFoundError:
        raise UserError("multidiff app needs Gradio, the `app` extra: pip install -e '.[app]'") from None
    return gr


def painted(value) -> tuple[np.ndarray | None, np.ndarray | None]:
    """An ImageEditor value -> (the uploaded picture, the painted region: True where any layer has paint)."""
    if not value or value.get("background") is None:
        return None, None
    image = np.asarray(value["background"])
    layers = [np.asarray(layer) for layer in (value.get("layers") or []) if layer is not None]
    fill = np.zeros(image.shape[:2], dtype=bool)
    for layer in layers:
        if layer.shape[:2] != image.shape[:2]:
            continue
        fill |= (layer[..., 3] > 0) if layer.ndim == 3 and layer.shape[2] == 4 else (layer.reshape(*layer.shape[:2], -1).max(-1) > 0)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    return image, fill


def build(app: AppRun, gr):
    """The Blocks of `app`'s page."""

    def finished(complete):
        """What `complete()` made, or its user-caused failure as the page's one-line message."""
        try:
            return complete()
        except (UserError, ValueError, OSError) as e:
            raise gr.Error(" ".join(str(e).split()), print_exception=False) from None

    def file_outputs(result, kind: str):
        """The button, the result component, its download and the note under it (audio and video pages)."""
        run = gr.Button("Fill", variant="primary", elem_id="run")
        result = result(elem_id="result", interactive=False)
        return run, result, gr.File(label=f"download the {kind}", interactive=False, elem_id="download"), \
            gr.Markdown(elem_id="note")

    def settings():
        with gr.Row():
            method = gr.Dropdown(app.methods, value=app.default_method, label="method", elem_id="method")
            steps = gr.Slider(0, MAX_STEPS, value=0, step=1, label="steps (0: the run's setting for the method)",
                              elem_id="steps")
            seed = gr.Number(0, precision=0, minimum=0, label="seed", elem_id="seed")
        return method, steps, seed

    # (delete_cache: what the page received and returned is dropped after an hour, checked hourly)
    with gr.Blocks(title=f"multidiff: {app.run_dir.name}", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"### multidiff &middot; {app.describe()}")
        if app.page == "image":
            size = app.model_size()
            gr.Markdown("Upload a picture, paint the region to fill with the brush, pick a method and press **Fill**. "
                        f"The picture is center-cropped and resized to the model's {size}x{size} pixels, as "
                        "`multidiff inpaint` does; the pixels you do not paint are kept exactly.")
            with gr.Row():
                editor = gr.ImageEditor(type="numpy", image_mode="RGB", sources=["upload"], format="png",
                                        brush=gr.Brush(colors=[(PAINT, 0.75)], color_mode="fixed", default_size=3),
                                        eraser=gr.Eraser(default_size=3), layers=False, transforms=(),
                                        label="picture: upload, then paint what to fill", elem_id="editor")
                with gr.Column():
                    with gr.Row():
                        result = gr.Image(type="filepath", format="png", label="result", interactive=False,
                                          height=260, elem_id="result", elem_classes=["pixels"])
                        filled = gr.Image(type="filepath", format="png", label="filled (white), at the model's size",
                                          interactive=False, height=260, elem_id="mask", elem_classes=["pixels"])
                    download = gr.File(label="download the PNG", interactive=False, elem_id="download")
            method, steps, seed = settings()
            note = gr.Markdown(elem_id="note")
            run = gr.Button("Fill", variant="primary", elem_id="run")

            def fill_image(value, method, steps, seed, progress=gr.Progress()):
                image, fill = painted(value)
                r = finished(lambda: app.complete_image(image, fill, method, steps, seed,
                                                        progress=lambda f: progress(f)))
                return str(r.path), str(r.mask), str(r.path), f"{r.method}: {r.summary}"

            run.click(fill_image, [editor, method, steps, seed], [result, filled, download, note],
                      concurrency_limit=1)
        elif app.page == "audio":
            gr.Markdown("Upload a WAV (or FLAC), give the stretch to fill in seconds, pick a method and press "
                        "**Fill**; listen to the result and download it.")
            audio = gr.Audio(type="filepath", sources=["upload"], label="audio", elem_id="audio")
            with gr.Row():
                start = gr.Number(0.2, minimum=0, label="gap start (s)", elem_id="gap_start")
                end = gr.Number(0.4, minimum=0, label="gap end (s)", elem_id="gap_end")
            method, steps, seed = settings()
            run, result, download, note = file_outputs(lambda **kw: gr.Audio(type="filepath", label="result", **kw),
                                                       "WAV")

            def fill_audio(path, start, end, method, steps, seed, progress=gr.Progress()):
                r = finished(lambda: app.complete_audio(path, start, end, method, steps, seed,
                                                        progress=lambda f: progress(f), upload_root=gr_upload_root(gr)))
                return str(r.path), str(r.path), f"{r.method}: {r.summary}"

            run.click(fill_audio, [audio, start, end, method, steps, seed], [result, download, note],
                      concurrency_limit=1)
        else:
            gr.Markdown("Upload a clip, give the frames to keep (`0:4`: predict the rest from the first four; "
                        "`0,15`: fill in between), pick a method and press **Fill**; play the completion and "
                        "download it.")
            video = gr.Video(sources=["upload"], label="clip", elem_id="video")
            with gr.Row():
                known = gr.Textbox("0:4", label="frames to keep", elem_id="known_frames")
                frames = gr.Number(0, precision=0, minimum=0, label="frames (0: the run's clip length)",
                                   elem_id="frames")
            method, steps, seed = settings()
            run, result, download, note = file_outputs(
                lambda **kw: gr.Video(label="completion", autoplay=True, loop=True, **kw), "MP4")

            def fill_video(path, known, frames, method, steps, seed, progress=gr.Progress()):
                r = finished(lambda: app.complete_video(path, known, method, steps, seed, frames,
                                                        progress=lambda f: progress(f), upload_root=gr_upload_root(gr)))
                return str(r.path), str(r.path), f"{r.method}: {r.summary}"

            run.click(fill_video, [video, known, frames, method, steps, seed], [result, download, note],
                      concurrency_limit=1)
    return page


def gr_upload_root(gr) -> str:
    """Where this gradio keeps what the page uploads (GRADIO_TEMP_DIR, read when it was imported)."""
    return gr.utils.get_upload_folder()


def serve(run_dir, host: str = "127.0.0.1", port: int | None = None, max_upload_mb: float = 20.0,
          precision: str = "auto") -> None:
    """Open the run, then serve its page until interrupted."""
    app = AppRun(run_dir, max_upload_mb=max_upload_mb, precision=precision)
    gr = import_gradio(app.uploads)
    page = build(app, gr)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"multidiff app: serving on {host}: anyone who reaches this machine can use the page")
    print(f"multidiff app: {app.describe()}; uploads and results in {app.workdir} (removed on exit)", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it the way Ctrl-C does: the folder is removed
    try:
        page.queue(default_concurrency_limit=1, max_size=16).launch(
            server_name=host, server_port=port, share=False, inbrowser=False, max_file_size=app.max_bytes,
            show_error=True, ssr_mode=False, mcp_server=False, pwa=False, enable_monitoring=False, quiet=False,
            footer_links=[], allowed_paths=[str(app.outputs)], css=CSS)
    finally:
        shutil.rmtree(app.workdir, ignore_errors=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
