"""The distillation LightningModule: finite-difference gradients on a tiny NFNet, and guards."""

from dataclasses import replace

import pytest
import torch

from vldd_lightning.lit.distill import DistillModule, DistillSettings
from vldd_lightning.models.dual_encoder import DualEncoder, DualEncoderSpec
from vldd_lightning.models.image import BackboneSpec
from vldd_lightning.storage.trajectories import TrajectoryBuffer, expert_path, save_expert

TEXT_DIM = 8
IDENTITY = {"dataset": "test"}

SETTINGS = DistillSettings(
    iterations=4, syn_steps=2, expert_epochs=1, max_start_epoch=1, mini_batch_size=3,
    lr_image=10.0, lr_text=10.0, lr_lr=0.001, momentum=0.5, syn_lr_min=1e-4, syn_lr_max=1.0,
    image_weight=1.0, text_weight=1.0, augment="color_crop_flip", unroll="plain",
    hoist_frozen_features=True, inner_logit_scale=1 / 0.07, max_consecutive_skips=3, seed=0,
)


def tiny_student(trainable: str, arch: str = "test_nfnet") -> DualEncoder:
    torch.manual_seed(0)
    head = "none" if trainable == "all" else "mlp"
    spec = DualEncoderSpec(BackboneSpec(arch, "none", image_size=16), TEXT_DIM, trainable, 1, head,
                           None if head == "none" else 16, head_dropout=0.0)
    return DualEncoder(spec).double()


def write_buffer(folder, student: DualEncoder, experts: int = 1) -> TrajectoryBuffer:
    """Experts whose trajectories start at the student and take small random steps."""
    params = dict(student.named_parameters())
    image0 = student.image_layout.flatten(params).detach()
    text0 = student.text_layout.flatten(params).detach()
    for index in range(experts):
        generator = torch.Generator().manual_seed(1 + index)
        images, texts = [image0], [text0]
        for _ in range(2):
            images.append(images[-1] + 0.01 * torch.randn(image0.shape, generator=generator, dtype=image0.dtype))
            texts.append(texts[-1] + 0.01 * torch.randn(text0.shape, generator=generator, dtype=text0.dtype))
        save_expert(expert_path(folder, index), images, texts, IDENTITY,
                    student.image_layout, student.text_layout, "float32", {})
    return TrajectoryBuffer(folder, IDENTITY, student.image_layout, student.text_layout)


def make_module(tmp_path, trainable="all", settings=SETTINGS, n=4, arch="test_nfnet", experts=1):
    student = tiny_student(trainable, arch)
    buffer = write_buffer(tmp_path, student, experts)
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(n, 3, 16, 16, generator=generator, dtype=torch.float64)
    texts = torch.randn(n, TEXT_DIM, generator=generator, dtype=torch.float64)
    module = DistillModule(student, buffer, images, texts, 0.05, settings)
    module.double()
    module.setup("fit")
    return module


def finite_difference(module, tensor, index, eps=1e-6):
    original = tensor.data[index].item()
    values = []
    for shift in (eps, -eps):
        tensor.data[index] = original + shift
        values.append(module.compute_meta_gradient(0).loss.item())
    tensor.data[index] = original
    return (values[0] - values[1]) / (2 * eps)


@pytest.mark.parametrize(("arch", "trainable", "unroll"), [
    ("test_nfnet", "all", "plain"), ("test_nfnet", "all", "checkpointed"), ("test_nfnet", "none", "plain"),
    ("test_nfnet", "none", "tesla"), ("test_vit", "all", "plain"),
])
def test_meta_gradient_matches_finite_differences(tmp_path, arch, trainable, unroll):
    settings = replace(SETTINGS, unroll=unroll, syn_steps=1 if unroll == "tesla" else 2)
    module = make_module(tmp_path, trainable, settings, arch=arch)
    assert module.hoist == (trainable == "none")
    result = module.compute_meta_gradient(0)
    image_grad, text_grad = result.input_grads
    probes = [
        (module.image_syn, (0, 1, 5, 7), image_grad[0, 1, 5, 7]),
        (module.image_syn, (2, 0, 3, 12), image_grad[2, 0, 3, 12]),
        (module.text_syn, (1, 3), text_grad[1, 3]),
        (module.syn_lr_image, (), result.lr_image_grad),
        (module.syn_lr_text, (), result.lr_text_grad),
    ]
    for tensor, index, analytic in probes:
        numeric = finite_difference(module, tensor, index)
        assert analytic.item() == pytest.approx(numeric, rel=1e-4, abs=1e-8), (tensor.shape, index)


def test_iteration_draws_are_reproducible(tmp_path):
    module = make_module(tmp_path)
    first = module.compute_meta_gradient(3)
    second = module.compute_meta_gradient(3)
    other = module.compute_meta_gradient(4)
    assert torch.equal(first.input_grads[0], second.input_grads[0])
    assert not torch.equal(first.input_grads[0], other.input_grads[0])


def test_augmentation_is_applied_when_on(tmp_path):
    with_augment = make_module(tmp_path / "a").compute_meta_gradient(0)
    without = make_module(tmp_path / "b", settings=replace(SETTINGS, augment="")).compute_meta_gradient(0)
    assert with_augment.loss.item() != pytest.approx(without.loss.item(), rel=1e-6)


def fit(module, iterations):
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    module.settings = replace(module.settings, iterations=iterations)
    trainer.fit(module)
    return trainer


class InfiniteGradientAt(DistillModule):
    """Inject an infinite image gradient at one iteration."""

    bad_iteration = 1

    def compute_meta_gradient(self, iteration):
        result = super().compute_meta_gradient(iteration)
        if iteration == self.bad_iteration:
            result.input_grads[0] = result.input_grads[0].clone()
            result.input_grads[0][0, 0, 0, 0] = float("inf")
        return result


def test_infinite_gradient_is_skipped_and_counted(tmp_path):
    module = make_module(tmp_path, "none")
    module.__class__ = InfiniteGradientAt
    states = []
    fit(module, 1)
    states.append(module.image_syn.detach().clone())
    fit(module, 2)  # iteration 1: the injected step
    assert int(module.skipped_steps) == 1
    assert torch.equal(module.image_syn.detach(), states[0])  # nothing moved
    fit(module, 4)  # training goes on after the bad step
    assert int(module.iteration) == 4
    assert int(module.skipped_steps) == 1
    assert int(module.consecutive_skips) == 0
    assert not torch.equal(module.image_syn.detach(), states[0])
    assert torch.isfinite(module.image_syn).all()


def test_many_nonfinite_steps_stop_with_advice(tmp_path):
    module = make_module(tmp_path, "none", replace(SETTINGS, max_consecutive_skips=2))
    with torch.no_grad():
        module.text_syn[0, 0] = float("nan")
    from vldd_lightning.errors import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"2 distillation steps in a row .* lower distill\.lr_image"):
        fit(module, 4)
    assert int(module.skipped_steps) == 2


def test_huge_pixel_learning_rate_is_caught(tmp_path):
    module = make_module(tmp_path, "all", replace(SETTINGS, lr_image=1e30, max_consecutive_skips=2))
    from vldd_lightning.errors import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"lower distill\.lr_image \(now 1e\+30\)"):
        fit(module, 6)
    assert int(module.skipped_steps) == 2
    assert torch.isfinite(module.image_syn).all()


def test_learning_rate_step_below_zero_is_clamped(tmp_path):
    module = make_module(tmp_path, "none", replace(SETTINGS, lr_lr=1e6))
    fit(module, 2)
    assert int(module.lr_clamps) >= 1
    for lr in (module.syn_lr_image, module.syn_lr_text):
        assert SETTINGS.syn_lr_min <= float(lr) <= SETTINGS.syn_lr_max


@pytest.mark.parametrize("trainable", ["all", "none"])
def test_bfloat16_autocast_meta_gradient_is_close_to_float32(tmp_path, trainable):
    module = make_module(tmp_path, trainable)
    module.float()
    module.student.float()
    module.setup("fit")
    reference = module.compute_meta_gradient(0)
    module.settings = replace(module.settings, autocast_dtype=torch.bfloat16)
    low = module.compute_meta_gradient(0)
    pairs = zip([*reference.input_grads, reference.lr_image_grad, reference.lr_text_grad],
                [*low.input_grads, low.lr_image_grad, low.lr_text_grad], strict=True)
    for exact, approximate in pairs:
        exact, approximate = exact.flatten().double(), approximate.flatten().double()
        assert torch.isfinite(approximate).all()
        assert torch.nn.functional.cosine_similarity(exact, approximate, dim=0) > 0.98
        assert (exact - approximate).norm() / exact.norm() < 0.2


@pytest.mark.parametrize(("momentum", "nesterov", "weight_decay"), [(0.0, False, 0.0), (0.5, False, 0.0), (0.9, True, 0.01)])
def test_sgd_preview_matches_the_step(momentum, nesterov, weight_decay):
    from vldd_lightning.lit.distill import preview_sgd_step

    p = torch.nn.Parameter(torch.randn(5))
    optimizer = torch.optim.SGD([p], lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    for _ in range(3):  # several steps, so the momentum buffer takes part
        p.grad = torch.randn(5)
        (preview,) = preview_sgd_step(optimizer)
        before = p.detach().clone()
        optimizer.step()
        assert torch.allclose(preview, p.detach())
        assert not torch.equal(before, p.detach())
