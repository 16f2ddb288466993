"""The meta-gradient of the matching loss: finite differences, and the three unroll schemes."""

import itertools

import pytest
import torch

from vldd_lightning.core.contrastive import clip_loss
from vldd_lightning.core.matching import MatchingWeights, TrajectorySegment, matching_loss
from vldd_lightning.core.unroll import matching_meta_gradient

DTYPE = torch.float64
N, IMAGE_DIM, TEXT_DIM, EMBED = 6, 5, 4, 3


def make_problem(seed: int = 0, lr: float = 0.3):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(N, IMAGE_DIM, dtype=DTYPE, generator=generator).requires_grad_(True)
    texts = torch.randn(N, TEXT_DIM, dtype=DTYPE, generator=generator).requires_grad_(True)
    lr_image = torch.tensor(lr, dtype=DTYPE, requires_grad=True)
    lr_text = torch.tensor(0.7 * lr, dtype=DTYPE, requires_grad=True)

    def rand(size):
        return torch.randn(size, dtype=DTYPE, generator=generator)

    segment = TrajectorySegment(rand(IMAGE_DIM * EMBED), rand(IMAGE_DIM * EMBED), rand(TEXT_DIM * EMBED), rand(TEXT_DIM * EMBED))
    batches = [torch.tensor([0, 1, 2, 3]), torch.tensor([2, 3, 4, 5]), torch.tensor([0, 2, 4, 5])]

    def step_loss(theta, phi, j):
        index = batches[j % len(batches)]
        image_emb = torch.tanh(images[index] @ theta.view(IMAGE_DIM, EMBED))  # nonlinear student
        text_emb = texts[index] @ phi.view(TEXT_DIM, EMBED)
        return clip_loss(image_emb, text_emb, 3.0)

    return images, texts, lr_image, lr_text, segment, step_loss


def all_grads(result):
    return [*result.input_grads, result.lr_image_grad, result.lr_text_grad]


@pytest.mark.parametrize("mode", ["plain", "checkpointed"])
def test_meta_gradient_matches_finite_differences(mode):
    images, texts, lr_image, lr_text, segment, step_loss = make_problem()
    weights = MatchingWeights(1.0, 0.5)
    result = matching_meta_gradient(step_loss, segment, [images, texts], lr_image, lr_text, 3, weights, mode)

    def loss_value():
        return matching_meta_gradient(step_loss, segment, [images, texts], lr_image, lr_text, 3, weights, "plain").loss.item()

    eps = 1e-6
    probes = [(images, (1, 2), result.input_grads[0][1, 2]), (images, (4, 0), result.input_grads[0][4, 0]),
              (texts, (0, 3), result.input_grads[1][0, 3]), (texts, (5, 1), result.input_grads[1][5, 1]),
              (lr_image, (), result.lr_image_grad), (lr_text, (), result.lr_text_grad)]
    for tensor, index, analytic in probes:
        original = tensor.data[index].item()
        tensor.data[index] = original + eps
        plus = loss_value()
        tensor.data[index] = original - eps
        minus = loss_value()
        tensor.data[index] = original
        numeric = (plus - minus) / (2 * eps)
        assert analytic.item() == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_checkpointed_equals_plain():
    images, texts, lr_image, lr_text, segment, step_loss = make_problem(seed=3)
    plain = matching_meta_gradient(step_loss, segment, [images, texts], lr_image, lr_text, 5, mode="plain")
    checkpointed = matching_meta_gradient(step_loss, segment, [images, texts], lr_image, lr_text, 5, mode="checkpointed")
    assert checkpointed.loss.item() == pytest.approx(plain.loss.item(), rel=1e-12)
    for a, b in zip(all_grads(plain), all_grads(checkpointed), strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_tesla_is_exact_for_one_step():
    images, texts, lr_image, lr_text, segment, step_loss = make_problem(seed=4)
    plain = matching_meta_gradient(step_loss, segment, [images, texts], lr_image, lr_text, 1, mode="plain")
    tesla = matching_meta_gradient(step_loss, segment, [images, texts], lr_image, lr_text, 1, mode="tesla")
    for a, b in zip(all_grads(plain), all_grads(tesla), strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def relative_error(reference, approximation):
    ref = torch.cat([g.reshape(-1) for g in all_grads(reference)])
    app = torch.cat([g.reshape(-1) for g in all_grads(approximation)])
    return ((app - ref).norm() / ref.norm()).item()


def test_tesla_error_is_first_order_in_learning_rate():
    # the dropped terms carry a factor lr * Hessian, so halving the rates halves the error
    errors = []
    for lr in (0.2, 0.1, 0.05, 0.025):
        images, texts, lr_image, lr_text, segment, step_loss = make_problem(seed=5, lr=lr)
        args = (step_loss, segment, [images, texts], lr_image, lr_text, 3)
        errors.append(relative_error(matching_meta_gradient(*args, mode="plain"), matching_meta_gradient(*args, mode="tesla")))
    assert errors[0] > 1e-4  # the scheme is not exact for several steps
    for larger, smaller in itertools.pairwise(errors):
        assert 0.4 < smaller / larger < 0.6
    assert errors[-1] < 0.05


def test_tesla_loss_value_is_exact():
    images, texts, lr_image, lr_text, segment, step_loss = make_problem(seed=6)
    args = (step_loss, segment, [images, texts], lr_image, lr_text, 4)
    assert matching_meta_gradient(*args, mode="tesla").loss.item() == pytest.approx(
        matching_meta_gradient(*args, mode="plain").loss.item(), rel=1e-12)


def test_matching_loss_golden_value():
    segment = TrajectorySegment(
        image_start=torch.tensor([0.0, 0.0]), image_target=torch.tensor([2.0, 0.0]),
        text_start=torch.tensor([1.0]), text_target=torch.tensor([3.0]),
    )
    total, image_term, text_term = matching_loss(torch.tensor([1.0, 1.0]), torch.tensor([2.0]), segment, MatchingWeights(1.0, 2.0))
    assert image_term.item() == pytest.approx(2 / 4)  # ||(1,1)-(2,0)||^2 / ||(0,0)-(2,0)||^2
    assert text_term.item() == pytest.approx(1 / 4)
    assert total.item() == pytest.approx(2 / 4 + 2 * 1 / 4)


def test_zero_weight_skips_a_term_that_did_not_move():
    segment = TrajectorySegment(torch.zeros(2), torch.ones(2), torch.zeros(1), torch.zeros(1))
    total, _, text_term = matching_loss(torch.zeros(2), torch.zeros(1), segment, MatchingWeights(1.0, 0.0))
    assert text_term.item() == 0.0
    assert total.item() == pytest.approx(1.0)


def test_expert_that_did_not_move_is_reported():
    segment = TrajectorySegment(torch.zeros(2), torch.zeros(2), torch.zeros(1), torch.ones(1))
    with pytest.raises(ValueError, match="image parameters did not move"):
        matching_loss(torch.zeros(2), torch.zeros(1), segment, MatchingWeights())


def test_invalid_mode_and_steps_are_rejected():
    images, texts, lr_image, lr_text, segment, step_loss = make_problem()
    with pytest.raises(ValueError, match="unknown unroll mode"):
        matching_meta_gradient(step_loss, segment, [images, texts], lr_image, lr_text, 2, mode="reverse")
    with pytest.raises(ValueError, match="at least 1"):
        matching_meta_gradient(step_loss, segment, [images, texts], lr_image, lr_text, 0)
