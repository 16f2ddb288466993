"""Atomic writes, safetensors files with metadata, trajectories and pair sets."""

import os
from pathlib import Path

import pytest
import torch

from vldd_lightning.core.params import ParamLayout
from vldd_lightning.errors import ArtifactError
from vldd_lightning.storage.pairset import (
    PairSet,
    check_pairset_identity,
    load_pairset,
    save_pairset,
)
from vldd_lightning.storage.tensors import load_tensors, read_metadata, save_tensors
from vldd_lightning.storage.trajectories import TrajectoryBuffer, expert_path, save_expert
from vldd_lightning.utils.atomic import atomic_path, atomic_write_json, read_json

IMAGE_LAYOUT = ParamLayout(("image_head.weight",), ((2, 3),))
TEXT_LAYOUT = ParamLayout(("text_head.weight", "text_head.bias"), ((2, 2), (2,)))
IDENTITY = {"dataset": "tuxpaint", "arch": "efficientnet_lite0", "image_size": 8, "text_dim": 4}


def test_atomic_write_keeps_previous_file_on_error(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_json(path, {"value": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash in the middle")
    assert read_json(path, "results") == {"value": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_read_only_disk_fails_clearly_and_keeps_old_file(tiny_disk):
    atomic_write_json(tiny_disk.path / "old.json", {"kept": True})
    tiny_disk.make_read_only()
    with pytest.raises(ArtifactError, match=r"failed to write .*new\.json.*writable"):
        atomic_write_json(tiny_disk.path / "new.json", {"value": 1})
    assert read_json(tiny_disk.path / "old.json", "old") == {"kept": True}


def test_full_disk_fails_clearly_and_keeps_old_file(tiny_disk):
    path = tiny_disk.path / "features.safetensors"
    save_tensors(path, {"features": torch.zeros(100)}, {"version": 1})
    with pytest.raises(ArtifactError, match=r"failed to write .*features\.safetensors.*free disk space"):
        save_tensors(path, {"features": torch.zeros(200_000)}, {"version": 2})
    assert read_metadata(path, "features") == {"version": 1}
    assert [p.name for p in tiny_disk.path.iterdir()] == ["features.safetensors"]


def test_written_files_get_the_usual_mode(tmp_path):
    save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)}, {})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "t.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_truncated_safetensors_is_detected(tmp_path):
    path = tmp_path / "features.safetensors"
    save_tensors(path, {"features": torch.randn(10, 4)}, {"key": "k"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"features\.safetensors is corrupt or truncated.*delete it"):
        load_tensors(path, "feature cache")


def test_nonfinite_tensors_are_never_saved(tmp_path):
    with pytest.raises(ArtifactError, match="NaN or infinite"):
        save_tensors(tmp_path / "x.safetensors", {"x": torch.tensor([1.0, float("inf")])}, {})
    assert not (tmp_path / "x.safetensors").exists()


def test_file_without_our_metadata_is_rejected(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ArtifactError, match="not written by vldd_lightning"):
        read_metadata(tmp_path / "foreign.safetensors", "trajectory")


def write_expert(folder: Path, index: int, identity=IDENTITY, dtype="float32"):
    generator = torch.Generator().manual_seed(index)
    image = [torch.randn(IMAGE_LAYOUT.numel, generator=generator) for _ in range(4)]
    text = [torch.randn(TEXT_LAYOUT.numel, generator=generator) for _ in range(4)]
    forgetting = {"forgetting_events": torch.tensor([0, 2, 1], dtype=torch.int32),
                  "ever_correct": torch.tensor([True, True, False])}
    save_expert(expert_path(folder, index), image, text, identity, IMAGE_LAYOUT, TEXT_LAYOUT, dtype,
                {"expert": index}, forgetting)
    return image, text


def test_trajectory_round_trip_and_segments(tmp_path):
    image, text = write_expert(tmp_path, 0)
    write_expert(tmp_path, 1)
    buffer = TrajectoryBuffer(tmp_path, IDENTITY, IMAGE_LAYOUT, TEXT_LAYOUT)
    assert len(buffer) == 2
    assert buffer.min_snapshots == 4
    segment = buffer.segment(0, 1, 2)
    assert torch.equal(segment.image_start, image[1])
    assert torch.equal(segment.image_target, image[3])
    assert torch.equal(segment.text_target, text[3])
    events, learned = buffer.forgetting_statistics()
    assert events.tolist() == [0, 4, 2]
    assert learned.tolist() == [True, True, False]


def test_bfloat16_storage_halves_size_and_loads_as_float32(tmp_path):
    write_expert(tmp_path / "f32", 0)
    write_expert(tmp_path / "bf16", 0, dtype="bfloat16")
    buffer = TrajectoryBuffer(tmp_path / "bf16", IDENTITY, IMAGE_LAYOUT, TEXT_LAYOUT)
    assert buffer.segment(0, 0, 1).image_start.dtype == torch.float32
    reference = TrajectoryBuffer(tmp_path / "f32", IDENTITY, IMAGE_LAYOUT, TEXT_LAYOUT).segment(0, 0, 1)
    assert torch.allclose(buffer.segment(0, 0, 1).image_start, reference.image_start, rtol=1e-2)


def test_segment_beyond_trajectory_is_rejected(tmp_path):
    write_expert(tmp_path, 0)
    buffer = TrajectoryBuffer(tmp_path, IDENTITY, IMAGE_LAYOUT, TEXT_LAYOUT)
    with pytest.raises(ArtifactError, match="beyond its end"):
        buffer.segment(0, 2, 2)


def test_trajectories_of_another_configuration_are_refused(tmp_path):
    write_expert(tmp_path, 0)
    other = {**IDENTITY, "arch": "nfnet_l0"}
    with pytest.raises(ArtifactError, match="arch: this run has 'nfnet_l0', the file has 'efficientnet_lite0'"):
        TrajectoryBuffer(tmp_path, other, IMAGE_LAYOUT, TEXT_LAYOUT)
    with pytest.raises(ArtifactError, match="image parameter layout"):
        TrajectoryBuffer(tmp_path, IDENTITY, ParamLayout(("w",), ((6,),)), TEXT_LAYOUT)


def test_empty_buffer_folder_is_reported(tmp_path):
    with pytest.raises(ArtifactError, match="run stage=buffer first"):
        TrajectoryBuffer(tmp_path, IDENTITY, IMAGE_LAYOUT, TEXT_LAYOUT)


def make_pairs(identity=IDENTITY, size=8, lr=0.05):
    metadata = {"kind": "distilled", "identity": identity, "protocol": {"epochs": 2}}
    return PairSet(torch.randn(3, 3, size, size), torch.randn(3, 4), lr, 0.2, metadata)


def test_pairset_round_trip(tmp_path):
    pairs = make_pairs()
    save_pairset(tmp_path / "distilled.safetensors", pairs)
    loaded = load_pairset(tmp_path / "distilled.safetensors")
    assert torch.equal(loaded.images, pairs.images)
    assert torch.equal(loaded.text_embeddings, pairs.text_embeddings)
    assert loaded.lr_image == pytest.approx(0.05)
    assert loaded.metadata["num_pairs"] == 3
    check_pairset_identity(loaded, IDENTITY, tmp_path)


@pytest.mark.parametrize(("key", "value"), [("image_size", 16), ("dataset", "coco"), ("text_dim", 768)])
def test_pairset_for_another_configuration_is_refused(tmp_path, key, value):
    save_pairset(tmp_path / "p.safetensors", make_pairs())
    with pytest.raises(ArtifactError, match=f"{key}: this run has"):
        check_pairset_identity(load_pairset(tmp_path / "p.safetensors"), {**IDENTITY, key: value}, tmp_path)


def test_pairset_with_nonpositive_learning_rate_is_refused(tmp_path):
    save_pairset(tmp_path / "p.safetensors", make_pairs(lr=-0.1))
    with pytest.raises(ArtifactError, match="learning rates must be positive"):
        load_pairset(tmp_path / "p.safetensors")
