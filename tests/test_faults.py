"""Bad files and hostile settings at the stage level: reported with the path and the fix."""

import pytest
import torch

from vldd_lightning.app import run
from vldd_lightning.errors import ArtifactError, NonFiniteError
from vldd_lightning.storage.pairset import load_pairset

pytestmark = pytest.mark.usefixtures("tuxpaint_root")


def test_huge_text_learning_rate_stops_without_saving(make_config, tmp_path, shared_buffer):
    # a runaway text update: 1e30 times the gradient
    cfg = make_config("stage=distill", f"buffer.dir={shared_buffer}", "distill.lr_text=1e30", "distill.max_consecutive_skips=2",
                      "distill.iterations=8", "distill.checkpoint_every=1")
    with pytest.raises(NonFiniteError, match=r"2 distillation steps in a row were skipped .*beyond 1000.*distill\.lr_text \(now 1e\+30\)"):
        run(cfg, tmp_path / "run")
    assert not list((tmp_path / "artifacts").glob("distilled/*/distilled.safetensors"))
    (checkpoint,) = (tmp_path / "artifacts").glob("distilled/*/last.ckpt")
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert torch.isfinite(state["text_syn"]).all()  # skipped steps never reach the saved state
    assert state["skipped_steps"] == 1  # the second skip raised before the next checkpoint


def test_corrupt_distill_checkpoint_is_reported(make_config, tmp_path, shared_buffer):
    cfg = make_config("stage=distill", f"buffer.dir={shared_buffer}")
    run(cfg, tmp_path / "first")
    (output,) = (tmp_path / "artifacts").glob("distilled/*/distilled.safetensors")
    folder = output.parent
    output.unlink()  # as if the run had been killed after its last checkpoint
    checkpoint = folder / "last.ckpt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"last\.ckpt is corrupt or truncated.*delete it"):
        run(cfg, tmp_path / "second")


def test_corrupt_expert_file_is_reported(make_config, tmp_path):
    run(make_config("stage=buffer"), tmp_path / "first")
    (expert,) = (tmp_path / "artifacts").glob("buffers/*/expert_001.safetensors")
    expert.write_bytes(expert.read_bytes()[:5000])
    with pytest.raises(ArtifactError, match=r"expert_001\.safetensors is corrupt or truncated"):
        run(make_config("stage=buffer"), tmp_path / "second")


def test_corrupt_cache_is_recomputed(make_config, tmp_path, caplog):
    from vldd_lightning.context import ExperimentContext

    cfg = make_config("paths.cache_dir=" + str(tmp_path / "cache"))
    first = ExperimentContext(cfg).text_embeddings("test")
    (cache,) = (tmp_path / "cache" / "text").glob("tuxpaint-test-*.safetensors")
    cache.write_bytes(b"garbage")
    again = ExperimentContext(cfg).text_embeddings("test")
    assert torch.equal(first, again)
    assert "is corrupt or truncated" in caplog.text
    assert "recomputing it" in caplog.text


def test_full_disk_fails_stage_and_keeps_finished_files(make_config, tiny_disk, tmp_path):
    small = run(make_config("stage=coreset", "num_pairs=2", f"paths.artifacts_dir={tiny_disk.path}",
                            f"paths.cache_dir={tmp_path / 'cache'}"), tmp_path / "small")
    with pytest.raises(ArtifactError, match=r"No space left on device.*free disk space"):
        run(make_config("stage=coreset", "num_pairs=100", f"paths.artifacts_dir={tiny_disk.path}",
                        f"paths.cache_dir={tmp_path / 'cache'}"), tmp_path / "large")
    assert load_pairset(small["coreset"]).num_pairs == 2
    assert not [p for p in tiny_disk.path.rglob("*") if p.name.endswith(".tmp")]


def test_read_only_artifacts_fail_clearly(make_config, tiny_disk, tmp_path):
    run(make_config("stage=coreset", "num_pairs=2", f"paths.artifacts_dir={tiny_disk.path}",
                    f"paths.cache_dir={tmp_path / 'cache'}"), tmp_path / "first")
    tiny_disk.make_read_only()
    with pytest.raises(ArtifactError, match=r"failed to write .*writable"):
        run(make_config("stage=coreset", "num_pairs=3", f"paths.artifacts_dir={tiny_disk.path}",
                        f"paths.cache_dir={tmp_path / 'cache'}"), tmp_path / "second")


def test_same_seed_gives_identical_distilled_set(make_config, tmp_path, shared_buffer):
    def distil(seed: int, artifacts: str):
        cfg = make_config("stage=distill", f"seed={seed}", f"paths.artifacts_dir={tmp_path / artifacts}",
                          f"buffer.dir={shared_buffer}")
        return load_pairset(run(cfg, tmp_path / f"run-{artifacts}")["distilled"])

    first, second, other = distil(3, "a"), distil(3, "b"), distil(4, "c")
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.text_embeddings, second.text_embeddings)
    assert first.lr_image == second.lr_image
    assert not torch.equal(first.images, other.images)
