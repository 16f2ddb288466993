import pytest
import torch

from vldd_lightning.core.retrieval import (
    image_retrieval_ranks,
    retrieval_metrics,
    text_retrieval_ranks,
)


def test_perfect_diagonal_gives_full_recall():
    metrics = retrieval_metrics(torch.eye(4), torch.arange(4))
    for key in ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "r_mean"):
        assert metrics[key] == 100.0


def test_hand_built_ranks_and_recalls():
    # 3 images; captions 0,1 -> image 0, caption 2 -> image 1, captions 3,4 -> image 2
    owners = torch.tensor([0, 0, 1, 2, 2])
    sim = torch.tensor([
        [0.1, 0.9, 0.8, 0.2, 0.0],  # image 0: own best is caption 1 at rank 0
        [0.5, 0.4, 0.3, 0.6, 0.7],  # image 1: own caption 2 (0.3) has 4 captions above
        [0.9, 0.1, 0.2, 0.3, 0.8],  # image 2: best own is caption 4 (0.8); caption 0 above
    ])
    assert text_retrieval_ranks(sim, owners).tolist() == [0, 4, 1]
    # caption 0: own 0.1, images 1 (0.5) and 2 (0.9) above -> 2; caption 1 -> 0;
    # caption 2: own 0.3, images 0 (0.8) above -> 1; caption 3: own 0.3, image 1 (0.6) -> 1;
    # caption 4: own 0.8 -> 0
    assert image_retrieval_ranks(sim, owners).tolist() == [2, 0, 1, 1, 0]
    metrics = retrieval_metrics(sim, owners, ks=(1, 2, 5))
    assert metrics["tr@1"] == pytest.approx(100 / 3)
    assert metrics["tr@2"] == pytest.approx(200 / 3)
    assert metrics["tr@5"] == pytest.approx(100.0)
    assert metrics["ir@1"] == pytest.approx(40.0)
    assert metrics["ir@2"] == pytest.approx(80.0)
    assert metrics["ir@5"] == pytest.approx(100.0)
    assert metrics["r_mean"] == pytest.approx((100 / 3 + 200 / 3 + 100 + 40 + 80 + 100) / 6)


def test_ties_never_favour_the_correct_item():
    # every score equal: the correct item is ranked after all others in both directions
    sim = torch.zeros(3, 3)
    assert text_retrieval_ranks(sim, torch.arange(3)).tolist() == [2, 2, 2]
    assert image_retrieval_ranks(sim, torch.arange(3)).tolist() == [2, 2, 2]
    metrics = retrieval_metrics(sim, torch.arange(3), ks=(1, 2, 3))
    assert metrics["tr@1"] == 0.0
    assert metrics["tr@2"] == 0.0
    assert metrics["tr@3"] == 100.0
    assert metrics["ir@1"] == 0.0


def test_tie_with_own_other_caption_is_not_penalised():
    # image 0 owns captions 0 and 1, tied at the top: its best own caption is at rank 0
    sim = torch.tensor([[0.9, 0.9, 0.1], [0.2, 0.2, 0.8]])
    owners = torch.tensor([0, 0, 1])
    assert text_retrieval_ranks(sim, owners).tolist() == [0, 0]


def test_partial_tie_counts_against_correct_image():
    # caption 0 belongs to image 0 but image 1 scores the same
    sim = torch.tensor([[0.5, 0.1], [0.5, 0.9]])
    assert image_retrieval_ranks(sim, torch.tensor([0, 1])).tolist() == [1, 0]


def test_chunking_gives_identical_ranks():
    torch.manual_seed(0)
    sim = torch.randn(37, 90)
    owners = torch.randint(0, 37, (90,))
    owners[:37] = torch.arange(37)  # every image has a caption
    assert torch.equal(text_retrieval_ranks(sim, owners, chunk=5), text_retrieval_ranks(sim, owners))
    assert torch.equal(image_retrieval_ranks(sim, owners, chunk=7), image_retrieval_ranks(sim, owners))


def test_image_without_caption_is_rejected():
    with pytest.raises(ValueError, match="image 1 has no caption"):
        retrieval_metrics(torch.zeros(2, 2), torch.tensor([0, 0]))


def test_nonfinite_similarity_is_rejected():
    sim = torch.eye(2)
    sim[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(sim, torch.arange(2))


def test_wrong_caption_index_shape_is_rejected():
    with pytest.raises(ValueError, match="one entry per caption"):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([0, 1]))
