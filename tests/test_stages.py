"""Every stage end to end on the real tuxpaint data with tiny settings and real Lightning trainers."""

import json

import pytest
import torch

from vldd_lightning.app import run
from vldd_lightning.errors import ArtifactError, ConfigError
from vldd_lightning.storage.pairset import load_pairset
from vldd_lightning.storage.tensors import read_metadata

pytestmark = pytest.mark.usefixtures("tuxpaint_root")


def read_results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_prepare_writes_run_record(make_config, tmp_path):
    record = run(make_config("stage=prepare"), tmp_path / "run")
    assert record["splits"]["test"] == {"images": 120, "captions": 120, "text_dim": 384}
    assert (tmp_path / "run" / "config.yaml").is_file()
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["git"]["revision"] is None or len(info["git"]["revision"]) == 40
    assert info["environment"]["packages"]["torch"].startswith("2.")
    assert read_results(tmp_path / "run")["stage"] == "prepare"


def test_train_full_beats_chance(make_config, tmp_path):
    record = run(make_config("stage=train_full", "train_full.epochs=10", "train_full.val_every=5",
                             "evaluate.num_eval=1"), tmp_path / "run")
    (full,) = record["evaluations"]
    assert full["method"] == "full"
    assert full["num_pairs"] == 358
    # chance: R@1 = 1/120, R@10 = 10/120, mean of the six recalls about 4.4%
    assert full["mean"]["r_mean"] > 20.0
    assert full["best_epochs"][0] in (4, 9)
    (val_score,) = full["val_r_mean"]  # the validation mean recall that selected the epoch
    assert 4.4 < val_score <= 100.0


def test_buffer_distill_evaluate_and_reuse(make_config, tmp_path):
    cfg = make_config("stage=all", "all.methods=[distilled,random]")
    record = run(cfg, tmp_path / "run1")
    buffer_dir = record["buffer"]["buffer_dir"]
    experts = sorted(p.name for p in (tmp_path / "artifacts").glob("buffers/*/expert_*.safetensors"))
    assert experts == ["expert_000.safetensors", "expert_001.safetensors"]
    metadata = read_metadata(f"{buffer_dir}/expert_000.safetensors", "expert")
    assert metadata["snapshots"] == 3  # before training and after each of 2 epochs
    assert metadata["identity"]["dataset"] == "tuxpaint"

    pairs = load_pairset(record["distill"]["distilled"])
    assert pairs.images.shape == (6, 3, 96, 96)
    assert pairs.text_embeddings.shape == (6, 384)
    assert pairs.metadata["protocol"]["lr_image"] == pytest.approx(pairs.lr_image)
    assert pairs.metadata["iterations_done"] == 4
    assert (tmp_path / "artifacts").glob("distilled/*/distilled.png")

    methods = [e["method"] for e in record["evaluations"]]
    assert methods == ["distilled", "random"]
    for evaluation in record["evaluations"]:
        assert len(evaluation["per_seed"]) == 2
        assert evaluation["std"]["r_mean"] >= 0

    # a rerun reuses the trajectories and the distilled set
    again = run(cfg, tmp_path / "run2")
    assert again["buffer"]["trained_now"] == 0
    assert again["distill"]["reused"] is True


def test_coreset_stage_writes_pair_set(make_config, tmp_path):
    for method in ("random", "herding", "k_center"):
        record = run(make_config("stage=coreset", f"coreset={method}", "num_pairs=5"), tmp_path / method)
        pairs = load_pairset(record["coreset"])
        assert pairs.num_pairs == 5
        assert pairs.metadata["kind"] == "coreset"
        assert pairs.metadata["method"] == method
        assert len(set(pairs.metadata["selected_indices"])) == 5


def test_forgetting_needs_a_buffer(make_config, tmp_path):
    with pytest.raises(ArtifactError, match="run stage=buffer"):
        run(make_config("stage=coreset", "coreset=forgetting"), tmp_path / "run")
    run(make_config("stage=buffer"), tmp_path / "buffer")
    record = run(make_config("stage=coreset", "coreset=forgetting"), tmp_path / "run")
    assert load_pairset(record["coreset"]).num_pairs == 6


def test_evaluate_a_pair_set_file(make_config, tmp_path):
    record = run(make_config("stage=coreset", "coreset=herding"), tmp_path / "select")
    result = run(make_config("stage=evaluate", f"evaluate.pairs={record['coreset']}"), tmp_path / "evaluate")
    (evaluation,) = result["evaluations"]
    assert evaluation["method"] == "herding"
    assert evaluation["pair_files"] == [record["coreset"]]


def test_pair_set_of_another_encoder_is_refused(make_config, tmp_path):
    record = run(make_config("stage=coreset"), tmp_path / "select")
    with pytest.raises(ArtifactError, match=r"image_size: this run has 64, the file has 96"):
        run(make_config("stage=evaluate", f"evaluate.pairs={record['coreset']}", "encoder.image_size=64"), tmp_path / "eval")


def test_trajectories_of_another_encoder_are_refused(make_config, tmp_path):
    run(make_config("stage=buffer"), tmp_path / "buffer")
    buffer_dir = next((tmp_path / "artifacts" / "buffers").iterdir())
    with pytest.raises(ArtifactError, match="embed_dim: this run has 128, the file has 256"):
        run(make_config("stage=distill", f"buffer.dir={buffer_dir}", "encoder.embed_dim=128"), tmp_path / "distill")


def test_unknown_evaluation_method_fails_before_training(make_config, tmp_path):
    with pytest.raises(ConfigError, match="evaluation method 'randm' is invalid"):
        run(make_config("stage=evaluate", "evaluate.methods=[random,randm]"), tmp_path / "run")
    assert not (tmp_path / "artifacts" / "coresets").exists()


def test_random_multiple_uses_larger_budget(make_config, tmp_path):
    record = run(make_config("stage=evaluate", "evaluate.methods=[random_x3]", "evaluate.num_eval=1"), tmp_path / "run")
    assert record["evaluations"][0]["num_pairs"] == 18
    assert torch.tensor(record["evaluations"][0]["mean"]["r_mean"]).isfinite()
