"""Readers of the BLIP-style and Karpathy annotation formats, on small files in the real formats."""

import json
from pathlib import Path

import pytest
from PIL import Image

from vldd_lightning.data.captions import (
    check_disjoint,
    check_images_exist,
    check_split_size,
    read_blip_split,
    read_karpathy_file,
)
from vldd_lightning.data.images import load_rgb
from vldd_lightning.errors import DataError


def write_image(path: Path, color=(200, 10, 10), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 6), color).save(path)


@pytest.fixture
def blip_root(tmp_path: Path) -> Path:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / "flickr30k-images" / name)
    train = [
        {"image": "flickr30k-images/a.jpg", "caption": "a dog runs.", "image_id": "a"},
        {"image": "flickr30k-images/a.jpg", "caption": "a brown dog.", "image_id": "a"},
        {"image": "flickr30k-images/b.jpg", "caption": "two cats.", "image_id": "b"},
    ]
    test = [{"image": "flickr30k-images/c.jpg", "caption": ["a car.", "a red car.", "a parked car."]}]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "test.json").write_text(json.dumps(test))
    return tmp_path


def test_blip_train_groups_captions_by_image(blip_root):
    split = read_blip_split(blip_root / "train.json", "train", blip_root)
    assert split.num_images == 2
    assert split.captions == ["a dog runs.", "a brown dog.", "two cats."]
    assert split.caption_to_image == [0, 0, 1]
    assert split.image_ids == ["a", "b"]
    assert split.image_paths[0] == blip_root / "flickr30k-images/a.jpg"


def test_blip_test_entries_hold_caption_lists(blip_root):
    split = read_blip_split(blip_root / "test.json", "test", blip_root)
    assert split.num_images == 1
    assert split.num_captions == 3
    assert split.caption_to_image == [0, 0, 0]


def test_karpathy_file_with_restval(tmp_path):
    data = {"images": [
        {"filepath": "train2014", "filename": "x.jpg", "split": "train", "sentences": [{"raw": "one"}], "cocoid": 1},
        {"filepath": "val2014", "filename": "y.jpg", "split": "restval", "sentences": [{"raw": "two"}, {"raw": "three"}], "cocoid": 2},
        {"filepath": "val2014", "filename": "z.jpg", "split": "test", "sentences": [{"raw": "four"}], "cocoid": 3},
        {"filepath": "val2014", "filename": "w.jpg", "split": "val", "sentences": [{"raw": "five"}], "cocoid": 4},
    ]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    splits = read_karpathy_file(tmp_path / "dataset_coco.json", tmp_path)
    assert splits["train"].num_images == 2
    assert splits["train"].captions == ["one", "two", "three"]
    assert splits["train"].image_paths[1] == tmp_path / "val2014/y.jpg"
    assert splits["test"].image_ids == ["3"]
    assert splits["val"].num_captions == 1


def test_missing_annotation_file_names_path_and_key(tmp_path):
    with pytest.raises(DataError, match=r"annotation file not found: .*nope\.json; set dataset\.root"):
        read_blip_split(tmp_path / "nope.json", "train", tmp_path)


def test_invalid_json_is_reported(tmp_path):
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        read_blip_split(tmp_path / "bad.json", "train", tmp_path)


def test_entry_without_fields_is_reported(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps([{"file": "a.jpg"}]))
    with pytest.raises(DataError, match="entry 0 lacks the fields 'image' and 'caption'"):
        read_blip_split(tmp_path / "x.json", "train", tmp_path)
    (tmp_path / "y.json").write_text(json.dumps([{"image": "a.jpg", "caption": "a dog"}, {"image": "b.jpg"}]))
    with pytest.raises(DataError, match="entry 1 lacks the field 'caption' of"):
        read_blip_split(tmp_path / "y.json", "train", tmp_path)


def test_missing_image_is_reported(blip_root):
    (blip_root / "flickr30k-images/b.jpg").unlink()
    split = read_blip_split(blip_root / "train.json", "train", blip_root)
    with pytest.raises(DataError, match=r"1 of 2 images .* missing, first: .*b\.jpg"):
        check_images_exist(split)


def test_corrupt_image_is_reported(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg is unreadable or corrupt"):
        load_rgb(path)


def test_image_in_train_and_test_is_rejected(blip_root):
    (blip_root / "test.json").write_text(json.dumps([{"image": "flickr30k-images/a.jpg", "caption": ["x"]}]))
    splits = {name: read_blip_split(blip_root / f"{file}.json", name, blip_root)
              for name, file in (("train", "train"), ("val", "test"), ("test", "test"))}
    with pytest.raises(DataError, match="in both the train and val splits"):
        check_disjoint(splits)


def test_test_split_size_is_checked_unless_subset(blip_root):
    split = read_blip_split(blip_root / "test.json", "test", blip_root)
    with pytest.raises(DataError, match="has 1 images, but the Karpathy split has 1000"):
        check_split_size(split, 1000, 5000, 0.02, allow_subset=False, dataset="flickr30k")
    check_split_size(split, 1000, 5000, 0.02, allow_subset=True, dataset="flickr30k")
    with pytest.raises(DataError, match="has 3 captions"):
        check_split_size(split, 1, 5000, 0.02, allow_subset=False, dataset="flickr30k")


def test_transparency_is_composited_onto_background(tmp_path):
    path = tmp_path / "cutout.png"
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((1, 1), (255, 0, 0, 255))
    image.save(path)
    rgb = load_rgb(path, background=(10, 20, 30))
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (10, 20, 30)
    assert rgb.getpixel((1, 1)) == (255, 0, 0)
