"""The app's work without a browser (multidiff/app/session.py, and the page's reading of the painted editor):
completions from an uploaded picture and a painted mask, and the refusals -- a too-large upload, a path
outside the uploads, a bad method / steps / mask. The page itself: tests/test_app_browser.py."""
import numpy as np
import pytest
from PIL import Image

from multidiff.app import AppRun
from multidiff.app.server import painted
from multidiff.cli import main
from multidiff.errors import UserError

from helpers.tiny_runs import held_out_digit, tiny_image_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_image_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def app(run, tmp_path_factory):
    return AppRun(run, max_upload_mb=1, precision="fp32", workdir=tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module")
def digit(tmp_path_factory):
    return held_out_digit(tmp_path_factory.mktemp("digit") / "digit.png")


def stroke() -> np.ndarray:
    fill = np.zeros((16, 16), dtype=bool)
    fill[6:10, 3:13] = True
    return fill


def test_the_page_of_an_image_run_offers_its_methods(app):
    assert app.page == "image" and app.model_size() == 16
    assert app.methods == ["repaint", "replace", "reconstruction", "ddnm", "pigdm"]  # no conditioned model here
    assert app.default_method == "repaint" and "an image run" in app.describe()


@pytest.mark.parametrize("method", ["replace", "ddnm", "pigdm"])
def test_completing_a_painted_picture_keeps_every_unpainted_pixel(app, digit, method):
    seen = []
    r = app.complete_image(digit, stroke(), method, steps=3, seed=1, progress=seen.append)
    assert r.path.parent == app.outputs and r.path.suffix == ".png" and r.summary == "40 of 256 pixels filled"
    out = np.asarray(Image.open(r.path).convert("RGB"))
    assert out.shape == digit.shape
    assert np.array_equal(out[~stroke()], digit[~stroke()])
    assert (out[stroke()] != digit[stroke()]).any()
    assert np.array_equal(np.asarray(Image.open(r.mask)) > 127, stroke())  # the hole as the model saw it
    assert seen[-1] == 1.0 and len(seen) > 3 and seen == sorted(seen)  # progress, one report per model call


def test_a_picture_of_another_size_is_cropped_and_resized_like_the_command_line(app, digit):
    big = np.asarray(Image.fromarray(digit).resize((48, 32), Image.Resampling.NEAREST))
    fill = np.zeros((32, 48), dtype=bool)
    fill[12:20, :] = True
    r = app.complete_image(big, fill, "replace", steps=2)
    assert Image.open(r.path).size == (16, 16) and "of 256 pixels filled" in r.summary


@pytest.mark.parametrize("change,match", [
    (dict(method="conditioned"), "not one this run offers: choose one of repaint, replace"),
    (dict(method="nope"), "not one this run offers"),
    (dict(steps=1001), "steps must be a whole number from 1 to 1000"),
    (dict(steps=2.5), "steps must be a whole number"),
    (dict(seed=-1), "seed must be a whole number >= 0"),
    (dict(fill=np.zeros((16, 16), dtype=bool)), "nothing is painted"),
    (dict(fill=np.ones((16, 16), dtype=bool)), "the whole picture is painted"),
    (dict(fill=np.ones((8, 8), dtype=bool)), "paint the region to fill on the image"),
    (dict(image=None), "upload an image first"),
    (dict(image=np.zeros((16, 16, 2), dtype=np.uint8)), "give a grey, RGB or RGBA picture"),
])
def test_bad_requests_are_refused_with_a_message(app, digit, change, match):
    kw = {**dict(image=digit, fill=stroke(), method="replace", steps=2, seed=0), **change}
    with pytest.raises(UserError, match=match):
        app.complete_image(**kw)


def test_uploads_over_the_cap_are_refused(run, digit, tmp_path):
    small = AppRun(run, max_upload_mb=0.0001, workdir=tmp_path / "app")  # about 100 bytes
    with pytest.raises(UserError, match=r"this app takes uploads up to 0.0001 MB \(multidiff app --max-upload-mb\)"):
        small.complete_image(digit, stroke(), "replace", steps=2)
    big = small.uploads / "big.wav"
    big.write_bytes(b"\0" * 1000)
    with pytest.raises(UserError, match="'big.wav' is 1.0 KB; this app takes uploads up to 0.0001 MB"):
        small.uploaded(big)


def test_nothing_outside_the_uploads_is_read(app, tmp_path):
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"RIFF")
    for path in (outside, "/etc/hostname", app.uploads / ".." / ".." / "secret.wav"):
        with pytest.raises(UserError, match="is not an uploaded file: the app reads only what is uploaded to it"):
            app.uploaded(path)
    link = app.uploads / "link.wav"  # a link inside the uploads to a file outside them
    link.symlink_to(outside)
    with pytest.raises(UserError, match="is not an uploaded file"):
        app.uploaded(link)
    with pytest.raises(UserError, match="is not an uploaded file"):
        app.complete_audio(outside, 0.1, 0.2, "replace")
    with pytest.raises(UserError, match="upload a file first"):
        app.uploaded(None)


def test_runs_the_app_cannot_serve_are_refused(tmp_path, capsys):
    assert main(["app", str(tmp_path / "missing")]) == 2
    assert "is not a run directory: give the --out folder" in capsys.readouterr().err
    assert main(["app", str(tmp_path), "--max-upload-mb", "0"]) == 2
    assert "argument --max-upload-mb: must be > 0, got 0" in capsys.readouterr().err
    assert main(["app", str(tmp_path), "--port", "70000"]) == 2
    assert "must be between 1 and 65535" in capsys.readouterr().err


def test_the_painted_layers_of_the_editor_are_the_mask():
    background = np.zeros((5, 6, 4), dtype=np.uint8)
    background[..., 3] = 255
    layer = np.zeros((5, 6, 4), dtype=np.uint8)
    layer[1:3, 2:4] = (255, 59, 48, 191)  # the red brush, 75% opaque
    image, fill = painted({"background": background, "layers": [layer], "composite": background})
    assert image.shape == (5, 6, 3) and fill.sum() == 4 and fill[1:3, 2:4].all()
    assert painted(None) == (None, None) and painted({"background": None, "layers": []}) == (None, None)


@pytest.mark.parametrize("method", ["ddnm", "pigdm"])
def test_the_new_methods_through_the_inpaint_command(run, tmp_path, method, digit):
    Image.fromarray(digit).save(tmp_path / "in.png")
    mask = Image.fromarray((stroke() * 255).astype(np.uint8))
    mask.save(tmp_path / "mask.png")
    assert main(["inpaint", str(run), "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
                 "--method", method, "--steps", "3", "--out", str(tmp_path / "out.png")]) == 0
    out = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    assert np.array_equal(out[~stroke()], digit[~stroke()])


def test_audio_and_video_requests_reach_the_modality_as_the_command_line_gives_them(run, tmp_path, monkeypatch):
    """An audio run's page sends the upload and the gap, a video run's the upload and the frames to keep:
    they reach read_known as `multidiff inpaint --input X --gap A:B` / `--known-frames K --frames N` would
    (the modalities' own tests cover those), with every other option off."""
    app = AppRun(run, workdir=tmp_path / "app")
    seen = []
    monkeypatch.setattr(app, "_complete", lambda request, *rest: seen.append((request, rest)))
    clip = app.uploads / "upload" / "speech.wav"
    clip.parent.mkdir()
    clip.write_bytes(b"RIFF....")
    app.complete_audio(clip, 0.25, "0.5", "replace", steps=4, seed=3)
    request, rest = seen[-1]
    assert (request.input, request.gap, request.seed, request.mask, request.crop_to_mask) == (
        str(clip.resolve()), "0.25:0.5", 3, None, None)
    assert rest[:3] == ("replace", 4, 3)
    app.complete_video(clip, " 0,15 ", "repaint", frames=16)
    request, rest = seen[-1]
    assert (request.known_frames, request.frames, rest[:2]) == ("0,15", 16, ("repaint", None))
    for call, match in ((lambda: app.complete_audio(clip, 0.5, 0.25, "replace"), "not a stretch"),
                        (lambda: app.complete_audio(clip, "a", 1, "replace"), "start and end in seconds"),
                        (lambda: app.complete_video(clip, "", "replace"), "give the frames to keep"),
                        (lambda: app.complete_video(clip, "0:4", "replace", frames=2000), "frames must be"),
                        (lambda: app.complete_video(None, "0:4", "replace"), "upload a file first")):
        with pytest.raises(UserError, match=match):
            call()


@pytest.mark.parametrize("page", ["image", "audio", "video"])
def test_every_page_builds(run, tmp_path, page, monkeypatch):
    from multidiff.app.server import NO_PHONE_HOME, build, import_gradio

    for k, v in {**NO_PHONE_HOME, "GRADIO_TEMP_DIR": str(tmp_path / "uploads")}.items():
        monkeypatch.setenv(k, v)  # (set here, so that they leave with the test)
    app = AppRun(run, workdir=tmp_path / "app")
    app.page = page
    gr = import_gradio(app.uploads)
    blocks = build(app, gr)
    ids = {getattr(c, "elem_id", None) for c in blocks.blocks.values()}
    assert {"run", "result", "download", "method", "steps", "seed", "note"} <= ids
    assert {"image": "editor", "audio": "audio", "video": "video"}[page] in ids


def test_without_gradio_the_app_names_the_extra(tmp_path, monkeypatch):
    import sys

    from multidiff.app.server import import_gradio

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    with pytest.raises(UserError, match=r"multidiff app needs Gradio, the `app` extra: pip install -e '.\[app\]'"):
        import_gradio(tmp_path)
