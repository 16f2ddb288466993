import pytest
import torch

from vldd_lightning.core.coresets import (
    pair_embeddings,
    record_presentation,
    select_forgetting,
    select_herding,
    select_k_center,
    select_random,
)


def test_herding_hand_built_picks():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, 2.0]])
    # mean (0.875, 0.875): pick 2 is closest; then (1.25, 1.25) - x_i is smallest for 3;
    # then images 0 and 1 tie at (0.125, 0.125) and the lower index wins
    assert select_herding(x, 3).tolist() == [2, 3, 0]


def test_herding_running_mean_approaches_data_mean():
    torch.manual_seed(0)
    x = torch.randn(500, 16)
    picks = select_herding(x, 40)
    assert len(set(picks.tolist())) == 40
    herded_error = (x[picks].mean(0) - x.mean(0)).norm()
    random_error = (x[torch.randperm(500)[:40]].mean(0) - x.mean(0)).norm()
    assert herded_error < 0.25 * random_error


def test_herding_chunking_does_not_change_picks():
    torch.manual_seed(1)
    x = torch.randn(200, 8)
    assert torch.equal(select_herding(x, 20, chunk=7), select_herding(x, 20))


def test_k_center_hand_built_picks():
    points = torch.tensor([[0.0], [1.0], [3.0], [10.0], [11.0]])
    picks = select_k_center(points, 3, seed=0).tolist()
    first = int(torch.randint(5, (1,), generator=torch.Generator().manual_seed(0)))
    assert picks[0] == first
    expected = {0: [0, 4, 2], 1: [1, 4, 2], 2: [2, 4, 0], 3: [3, 0, 2], 4: [4, 0, 2]}[first]
    assert picks == expected


def test_k_center_each_pick_is_farthest_from_chosen():
    torch.manual_seed(2)
    x = torch.randn(300, 5)
    picks = select_k_center(x, 15, seed=3, chunk=64).tolist()
    assert len(set(picks)) == 15
    for t in range(1, 15):
        distance = torch.cdist(x.double(), x[picks[:t]].double()).min(dim=1).values
        assert distance[picks[t]] == pytest.approx(distance.max().item(), rel=1e-9)


def test_random_selection_is_seeded_and_without_replacement():
    first = select_random(100, 30, seed=5)
    assert torch.equal(first, select_random(100, 30, seed=5))
    assert len(set(first.tolist())) == 30
    assert not torch.equal(first, select_random(100, 30, seed=6))


def test_forgetting_counts_from_scripted_outcomes():
    n = 4
    last = torch.zeros(n, dtype=torch.bool)
    events = torch.zeros(n, dtype=torch.int32)
    ever = torch.zeros(n, dtype=torch.bool)
    script = [  # (pairs presented, their in-batch retrieval outcome)
        ([0, 1, 2], [True, True, False]),
        ([0, 1, 3], [False, True, False]),  # pair 0 forgotten
        ([0, 1, 2], [True, False, False]),  # pair 1 forgotten
        ([0, 1, 2], [False, True, False]),  # pair 0 forgotten again
        ([1, 3], [False, False]),  # pair 1 forgotten again
    ]
    for indices, correct in script:
        record_presentation(last, events, ever, torch.tensor(indices), torch.tensor(correct))
    assert events.tolist() == [2, 2, 0, 0]
    assert ever.tolist() == [True, True, False, False]


def test_forgetting_selection_order():
    events = torch.tensor([0, 3, 1, 3, 0, 2])
    learned = torch.tensor([True, True, True, True, False, True])
    picks = select_forgetting(events, learned, 4, seed=0).tolist()
    assert picks[0] == 4  # never learned ranks first
    assert sorted(picks[1:3]) == [1, 3]  # the two pairs forgotten 3 times, in seeded order
    assert picks[3] == 5


def test_pair_embeddings_weigh_modalities_equally():
    embeddings = pair_embeddings(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 10.0, 0.0]]))
    assert torch.allclose(embeddings, torch.tensor([[0.6, 0.8, 0.0, 1.0, 0.0]]))


@pytest.mark.parametrize("budget", [0, 11])
def test_budget_outside_population_is_rejected(budget):
    with pytest.raises(ValueError, match="cannot select"):
        select_random(10, budget, seed=0)
    with pytest.raises(ValueError, match="cannot select"):
        select_herding(torch.randn(10, 2), budget)
