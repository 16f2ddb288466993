"""The embedded default data set: splitting, compositing, and the real Debian package."""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from vldd_lightning.data.captions import read_blip_split
from vldd_lightning.data.tuxpaint import (
    TuxpaintSettings,
    collect_stamps,
    locate_stamps,
    normalise_caption,
    prepare_tuxpaint,
    split_by_caption_group,
)


def test_normalised_caption_ignores_case_and_punctuation():
    assert normalise_caption("A flower.") == normalise_caption("a  Flower") == "aflower"


def test_images_sharing_a_caption_stay_in_train():
    captions = ["A flower.", "a flower", "A dog.", "A cat.", "A cow.", "A hen.", "A pig.", "A flower!"]
    splits = split_by_caption_group(captions, val_images=1, test_images=2, seed=0)
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == list(range(8))
    for index in (0, 1, 7):
        assert index in splits["train"]
    assert len(splits["val"]) == 1
    assert len(splits["test"]) == 2


def test_split_is_seeded():
    captions = [f"caption {i}" for i in range(30)]
    assert split_by_caption_group(captions, 5, 5, seed=1) == split_by_caption_group(captions, 5, 5, seed=1)
    assert split_by_caption_group(captions, 5, 5, seed=1) != split_by_caption_group(captions, 5, 5, seed=2)


def make_stamps(folder: Path, count: int) -> None:
    for i in range(count):
        category = "symbols" if i == 0 else "animals"
        png = folder / category / f"thing{i}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
        image.putpixel((10, 5), (0, 0, 255, 255))
        image.save(png)
        png.with_suffix(".txt").write_text(f"Thing number {i}.\nfr.utf8=Chose {i}.\n")
    (folder / "animals" / "uncaptioned.png").write_bytes((folder / "animals" / "thing1.png").read_bytes())


def test_prepare_from_a_stamps_folder(tmp_path):
    stamps = tmp_path / "stamps"
    make_stamps(stamps, 12)
    assert len(collect_stamps(stamps, ("symbols",))) == 11  # symbols and the uncaptioned stamp are skipped
    settings = TuxpaintSettings(root=tmp_path / "out", stamps_dir=stamps, image_size=16, val_images=2, test_images=3)
    root = prepare_tuxpaint(settings)
    record = json.loads((root / "prepared.json").read_text())
    assert record["split_images"] == {"train": 6, "val": 2, "test": 3}
    test = read_blip_split(root / "tuxpaint_test.json", "test", root)
    image = Image.open(test.image_paths[0])
    assert image.size == (16, 16)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent corner on the white background
    assert image.getpixel((0, 8)) == (255, 255, 255)  # square padding


def test_prepare_resumes_and_reuses(tmp_path):
    stamps = tmp_path / "stamps"
    make_stamps(stamps, 12)
    settings = TuxpaintSettings(root=tmp_path / "out", stamps_dir=stamps, image_size=16, val_images=2, test_images=3)
    root = prepare_tuxpaint(settings)
    first = {p.name: p.read_bytes() for p in root.glob("*.json")}
    # an interrupted preparation: the marker and one image are missing
    (root / "prepared.json").unlink()
    next(iter((root / "images").rglob("*.png"))).unlink()
    prepare_tuxpaint(settings)
    assert {p.name: p.read_bytes() for p in root.glob("*.json")} == first
    stamp = (root / "prepared.json").stat().st_mtime_ns
    prepare_tuxpaint(settings)  # complete: nothing is rewritten
    assert (root / "prepared.json").stat().st_mtime_ns == stamp


def test_real_package_is_prepared(tuxpaint_root):
    record = json.loads((tuxpaint_root / "prepared.json").read_text())
    assert record["split_images"]["val"] == 60
    assert record["split_images"]["test"] == 120
    assert record["split_images"]["train"] > 300
    splits = {name: read_blip_split(tuxpaint_root / f"tuxpaint_{name}.json", name, tuxpaint_root) for name in ("train", "val", "test")}
    test_captions = {normalise_caption(c) for c in splits["test"].captions}
    train_captions = {normalise_caption(c) for c in splits["train"].captions}
    assert len(test_captions) == splits["test"].num_captions  # every test caption names one image
    assert not test_captions & train_captions
    train_content = {hashlib.sha256(p.read_bytes()).digest() for p in splits["train"].image_paths}
    for path in splits["test"].image_paths + splits["val"].image_paths:
        assert hashlib.sha256(path.read_bytes()).digest() not in train_content, path


@pytest.mark.slow
def test_download_falls_back_to_private_package_lists(tmp_path, monkeypatch):
    # an apt configuration whose package lists are empty, as on a fresh machine
    empty = tmp_path / "empty-lists"
    (empty / "partial").mkdir(parents=True)
    config = tmp_path / "apt.conf"
    config.write_text(f'Dir::State::Lists "{empty}";\n')
    monkeypatch.setenv("APT_CONFIG", str(config))
    failed = subprocess.run(["apt-get", "download", "tuxpaint-stamps-default"], cwd=tmp_path, capture_output=True)
    assert failed.returncode != 0  # the plain download really fails under this configuration

    stamps = locate_stamps(TuxpaintSettings(root=tmp_path / "tuxpaint", stamps_dir=None))
    assert stamps == tmp_path / "tuxpaint/package/usr/share/tuxpaint/stamps"
    assert len(collect_stamps(stamps, ("symbols",))) > 500
    assert list((tmp_path / "tuxpaint/apt/lists").glob("*Packages*"))
