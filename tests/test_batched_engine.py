"""Batched optimisation, the pyramid, precision plumbing, memory estimates and the OOM fallback."""

import math

import pytest
import torch
from conftest import sample

from rvgen.engine import memory, precision
from rvgen.engine.fallback import group_by_size, iter_with_fallback, run_with_fallback
from rvgen.engine.lbfgs import batched_lbfgs
from rvgen.engine.objective import Objective, Term
from rvgen.engine.optimize import OptimizerConfig, Result, optimize_batch
from rvgen.engine.pyramid import pyramid
from rvgen.engine.synth import Synthesizer
from rvgen.errors import OptimizationError, OutOfMemory, RecipeError
from rvgen.losses import Loss, _Gram, gram_matrix
from rvgen.losses.builtin import ContentLoss, GramLoss
from rvgen.recipe import parse_recipe

LAYERS = ["relu1_1", "relu2_1", "relu3_1"]


def style_synth(size=32, iterations=8, **optimizer):
    recipe = parse_recipe({
        "task": {"name": "style", "style": "skimage:coffee", "style_layers": LAYERS, "content_layers": ["relu2_1"]},
        "optimizer": {"iterations": iterations, **optimizer},
        "output": {"size": size},
    })
    synth = recipe.build("cpu")
    synth.set_references({"style": sample("coffee", size)})
    return synth


def square(name, size):
    return sample(name, size * 2)[..., :size, :size].contiguous()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lbfgs", "adam"])
def test_an_image_optimised_in_a_batch_is_the_image_optimised_alone(name):
    # In float64 the backbone's rounding does not depend on the batch, so any coupling
    # between images (a shared history, step size or loss scale) would show.
    synth = style_synth()
    obj = synth.objective.double()
    synth.set_references({"style": sample("coffee", 32).double()})
    a, b = square("astronaut", 32).double(), square("chelsea", 32).double()
    config = OptimizerConfig(name=name, iterations=8)

    def run(images):
        x = torch.cat(images)
        obj.set_targets({"input": x})
        obj.reset_weights()
        obj.auto_weight(x)
        return optimize_batch(obj, x, config)

    (alone,) = run([a])
    with_b = run([a, b])[0]
    after_b = run([b, a])[1]
    for other in (with_b, after_b):
        assert other.loss == pytest.approx(alone.loss, rel=1e-6)
        assert torch.allclose(other.image, alone.image, atol=1e-6)
        assert other.evaluations == alone.evaluations


@pytest.mark.slow
def test_a_float32_batch_stays_close_to_single_runs():
    synth = style_synth(iterations=6)
    a, b = square("astronaut", 32), square("chelsea", 32)
    single = [synth.run(a), synth.run(b)]
    batched = synth.run_batch([a, b], [0, 0])
    for s, r in zip(single, batched):
        assert isinstance(r, Result)
        assert r.loss == pytest.approx(s.loss, rel=0.02)
        assert (r.image - s.image).abs().mean() < 0.01


def test_batched_lbfgs_follows_torch_lbfgs_on_each_image():
    torch.manual_seed(0)
    n = 12
    mats = torch.randn(2, n, n, dtype=torch.float64)

    def fun(x, k):
        return 10 * (x[1:] - x[:-1] ** 2).pow(2).sum() + (1 - x).pow(2).sum() + 0.1 * (mats[k] @ x).pow(2).sum()

    def evaluate(points, rows):
        points = points.detach().requires_grad_(True)
        rows = rows if rows is not None else range(points.shape[0])
        f = torch.stack([fun(p, k) for p, k in zip(points, rows)])
        (g,) = torch.autograd.grad(f.sum(), points)
        return f.detach(), g

    x0 = torch.randn(2, n, dtype=torch.float64)
    for line_search in (True, False):
        lr = 1.0 if line_search else 0.1
        x, states = batched_lbfgs(evaluate, x0, iterations=15, lr=lr, history=5, line_search=line_search)
        for k in range(2):
            ref = x0[k].clone().requires_grad_(True)
            opt = torch.optim.LBFGS([ref], lr=lr, max_iter=15, max_eval=31, history_size=5, tolerance_grad=0,
                                    tolerance_change=0, line_search_fn="strong_wolfe" if line_search else None)

            def closure():
                opt.zero_grad()
                loss = fun(ref, k)
                loss.backward()
                return loss

            opt.step(closure)
            assert torch.allclose(x[k], ref.detach(), atol=1e-9), (line_search, k)
            assert states[k].iterations == opt.state[ref]["n_iter"]


def test_auto_weights_and_loss_scales_are_per_image():
    synth = style_synth()
    obj = synth.objective
    a, b = square("astronaut", 32), square("rocket", 32)
    weights = []
    for x in (a, b, torch.cat([a, b])):
        obj.set_targets({"input": x})
        obj.reset_weights()
        obj.auto_weight(x)
        weights.append({layer: w.clone() for layer, w in obj.layer_weights[1].items()})
    for layer in LAYERS:
        pair = weights[2][layer]
        assert pair.shape == (2,)
        assert pair[0].item() == pytest.approx(weights[0][layer].item(), rel=1e-4)
        assert pair[1].item() == pytest.approx(weights[1][layer].item(), rel=1e-4)
    assert not torch.allclose(weights[2]["relu1_1"][0], weights[2]["relu1_1"][1], rtol=1e-3)
    for loss in (ContentLoss(), GramLoss()):  # targets prepared together equal targets prepared alone
        f = torch.rand(2, 4, 5, 5) * torch.tensor([1.0, 1e3]).view(2, 1, 1, 1)
        together = loss.prepare(f)
        for i in range(2):
            alone = loss.prepare(f[i : i + 1])
            for t, s in zip(together, alone):
                assert torch.allclose(t[i : i + 1], s, rtol=1e-5)


def test_a_loss_that_is_not_batched_is_prepared_and_evaluated_image_by_image():
    class BatchMean(Loss):  # takes a statistic over the whole batch: wrong unless run image by image
        name = "batch-mean"

        def prepare(self, features):
            return features.mean()

        def forward(self, features, target):
            return (features.mean() - target).pow(2).expand(features.shape[0])

    synth = style_synth()
    obj = Objective(synth.objective.backbone, [Term("m", "batch-mean", ("relu1_1",))], [BatchMean()])
    a, b = square("astronaut", 32), square("rocket", 32)
    obj.set_targets({"input": torch.cat([a, b])})
    losses, _ = obj(torch.cat([a, b]))
    assert losses.tolist() == [0.0, 0.0]


def test_a_failing_image_does_not_stop_its_batch_mates():
    class Poison(Loss):  # NaN for images whose top-left pixel is black, else pulls pixels to 0.5
        name = "poison"
        batched = True

        def forward(self, features, target):
            marker = features[:, 0, 0, 0] == 0
            value = (features.float() - 0.5).pow(2).flatten(1).mean(1)
            return torch.where(marker, torch.full_like(value, math.nan), value)

    synth = style_synth()
    obj = Objective(synth.objective.backbone, [Term("p", "poison", ("pixels",), target=None)], [Poison()])
    good = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    bad = good.clone()
    bad[:, :, 0, 0] = 0
    for name in ("lbfgs", "adam"):
        outcomes = optimize_batch(obj, torch.cat([good, bad, good]), OptimizerConfig(name=name, iterations=4))
        assert isinstance(outcomes[0], Result) and isinstance(outcomes[2], Result)
        assert isinstance(outcomes[1], OptimizationError) and "nan" in str(outcomes[1])
        assert outcomes[0].loss < outcomes[0].initial_loss


def test_the_pyramid_halves_down_to_the_minimum_size():
    assert pyramid((256, 200), 1, 64) == [1.0]
    assert pyramid((256, 200), 3, 64) == [0.25, 0.5, 1.0]
    assert pyramid((256, 200), 5, 64) == [0.25, 0.5, 1.0]
    assert pyramid((100, 60), 3, 64) == [1.0]


@pytest.mark.slow
def test_the_pyramid_carries_its_coarse_result_up_and_keeps_up_with_single_scale():
    # Texture from noise at 64 px. One iteration at 32 px costs about a quarter of one at
    # 64 px, so 16 coarse + 12 fine iterations cost about as much as 16 fine ones. Which of
    # the two ends lower varies with the thread count (0.0041 to 0.0062 for the pyramid
    # against 0.0055 single), so the test asserts what does not: the full-size level starts
    # from the upsampled coarse result, well below where noise starts (0.29 against 0.41).
    recipe = {"task": {"name": "texture", "layers": LAYERS}, "output": {"size": 64}}
    exemplar = square("brick", 64)
    losses, starts = {}, {}
    for label, optimizer in {"single": {"iterations": 16},
                             "pyramid": {"iterations": 12, "scales": 2, "min_size": 32, "scale_iterations": 16}}.items():
        synth = parse_recipe({**recipe, "optimizer": optimizer}).build("cpu")
        synth.set_references({})
        progress = []
        result = synth.run(exemplar, 0, progress.append)
        losses[label], starts[label] = result.loss, result.initial_loss
        assert progress[-1].iterations == result.iterations == sum(
            [optimizer["iterations"], optimizer.get("scale_iterations", 0)])
        assert result.image.shape[-2:] == (64, 64)
    assert starts["pyramid"] < 0.8 * starts["single"], starts
    assert losses["pyramid"] < 1.5 * losses["single"], losses


@pytest.mark.slow
def test_precision_resolves_per_device_and_bf16_keeps_losses_in_float32():
    native = precision.cpu_native_bf16()
    assert precision.resolve("auto", "cpu") == precision.Numerics("bf16" if native else "fp32", channels_last=True)
    assert not precision.resolve("auto", "cpu", "contiguous").channels_last
    assert precision.resolve("bf16", "cpu").autocast is torch.bfloat16
    assert precision.resolve("fp32", "cuda").channels_last
    with pytest.raises(ValueError, match="unknown precision"):
        precision.resolve("fp16", "cpu")
    with pytest.raises(RecipeError, match="optimizer.precision"):
        parse_recipe({"task": {"name": "texture"}, "optimizer": {"precision": "fp16"}})
    single, half = style_synth(iterations=6), style_synth(iterations=6, precision="bf16")
    assert single.objective.autocast is None and half.objective.autocast is torch.bfloat16
    content = square("astronaut", 32)
    half.objective.set_targets({"input": content})
    feats = half.objective.features(content, ["relu2_1"])
    assert feats["relu2_1"].dtype == torch.bfloat16
    x = content.clone().requires_grad_(True)
    total, _ = half.objective(x)
    (grad,) = torch.autograd.grad(total.sum(), x)
    assert total.dtype == torch.float32 and grad.dtype == torch.float32
    a, b = single.run(content), half.run(content)
    assert b.loss == pytest.approx(a.loss, rel=0.15)
    assert (a.image - b.image).abs().mean() < 0.02


def test_channels_last_gives_the_same_objective():
    synth = style_synth()
    content = square("astronaut", 32)
    obj = synth.objective
    obj.set_targets({"input": content})
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = obj(x)[0]
    precision.apply(obj, precision.Numerics("fp32", channels_last=True))
    after = obj(x)[0]
    assert torch.allclose(before, after, rtol=1e-4)


def test_the_gram_matrix_backward_is_the_exact_gradient_in_both_layouts():
    f = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _Gram.apply(t.reshape(2, 4, 15), False), (f,))
    assert torch.autograd.gradcheck(lambda t: _Gram.apply(t.permute(0, 2, 3, 1).reshape(2, 15, 4), True), (f,))
    g = torch.randn(2, 4, 3, 5)
    assert torch.allclose(gram_matrix(g), gram_matrix(g.contiguous(memory_format=torch.channels_last)))


def test_memory_estimate_grows_with_size_and_batch_and_counts_the_saved_activations():
    synth = style_synth()
    fp32 = precision.Numerics("fp32", False)
    config = synth.optimizer
    small = memory.estimate(synth.objective, (32, 32), config, fp32)
    large = memory.estimate(synth.objective, (64, 64), config, fp32)
    assert large.per_image > 3 * small.per_image and large.total(2) > large.total(1)
    half = memory.estimate(synth.objective, (64, 64), config, precision.Numerics("bf16", False))
    assert half.activations * 2 == large.activations
    # The meta-device count equals what autograd really saves on the CPU.
    saved = {}
    weights = {p.data_ptr() for p in synth.objective.parameters()} | {b.data_ptr() for b in synth.objective.buffers()}

    def pack(t):
        if t.data_ptr() not in weights:
            saved[t.data_ptr()] = t.numel() * t.element_size()
        return t

    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        synth.objective.backbone(x, synth.objective.layers)
    assert large.activations == pytest.approx(sum(saved.values()), rel=0.05)
    assert large.activations < large.per_image < 10 * large.activations + 3 * 64 * 64 * 4 * 110
    assert synth.batch_size((64, 64), jobs=10) == 1  # on a CPU one image at a time, unless the recipe says
    assert style_synth(batch_size=8).batch_size((64, 64), jobs=3) == 3
    assert memory.choose_batch_size(large, "cpu", jobs=10, free=int(large.total(2) / memory.HEADROOM) + 1) == 2
    assert memory.choose_batch_size(large, "cpu", jobs=10, free=0) == 1


@pytest.mark.slow
def test_out_of_memory_halves_the_batch_then_reports_the_image_that_never_fits(monkeypatch):
    synth = style_synth(iterations=2, batch_size=4)
    contents = [square(n, 32) for n in ("astronaut", "chelsea", "rocket", "coffee")] + [sample("camera", 24)]
    real = Synthesizer.run_batch
    sizes = []

    def fake(self, batch, variations, callback=None):
        sizes.append(len(batch))
        if len(batch) > 2 or any(c is contents[3] for c in batch):  # too big, or an image that never fits
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(self, batch, variations, callback)

    monkeypatch.setattr(Synthesizer, "run_batch", fake)
    seen = []
    outcomes = run_with_fallback(synth, contents, callback=lambda i, p: seen.append(i))
    # 4 fails; [0,1] runs; [2,3] fails; 2 runs; 3 fails alone, then in tiles of 16, 8 and 4 px
    # (the network's stride); the 24 px group
    assert sizes == [4, 2, 2, 1, 1, 1, 1, 1, 1]
    assert [type(o).__name__ for o in outcomes] == ["Result", "Result", "Result", "OutOfMemory", "Result"]
    assert "out of memory on cpu at 32x32 px even alone in tiles of 4 px" in str(outcomes[3])
    assert set(seen) == {0, 1, 2, 4}
    assert isinstance(outcomes[3], OutOfMemory)
    assert [i for i, _ in iter_with_fallback(synth, contents[:2], batch_size=1)] == [0, 1]


def test_a_batch_must_be_one_size_and_groups_keep_their_order():
    synth = style_synth(iterations=1)
    with pytest.raises(ValueError, match="one size"):
        synth.run_batch([square("astronaut", 32), square("astronaut", 24)])
    shapes = [torch.zeros(1, 3, h, 8) for h in (8, 16, 8, 24, 16)]
    assert group_by_size(shapes) == [[0, 2], [1, 4], [3]]


def test_a_subset_of_the_batch_is_evaluated_with_its_own_targets_and_weights():
    synth = style_synth()
    obj = synth.objective
    x = torch.cat([square(n, 32) for n in ("astronaut", "chelsea", "rocket")])
    obj.set_targets({"input": x})
    obj.reset_weights()
    obj.auto_weight(x)
    start = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    full, _ = obj(start)
    with obj.subset([2, 0]):
        part, _ = obj(start[[2, 0]])
    assert torch.allclose(part, full[[2, 0]], rtol=1e-5)
    again, _ = obj(start)  # leaving the block restores the whole batch
    assert torch.equal(again, full)


def test_an_image_already_at_the_optimum_is_returned_unchanged():
    # Style image = content image: the loss and its gradient are zero from the start.
    synth = style_synth(iterations=5)
    coffee = sample("coffee", 32)
    (outcome,) = synth.run_batch([coffee])
    assert isinstance(outcome, Result) and outcome.iterations == 0
    assert outcome.loss == pytest.approx(0.0, abs=1e-9)
    assert torch.allclose(outcome.image, coffee)


def test_the_lbfgs_loss_is_the_function_its_gradient_is_of_outside_the_box_too():
    # A line search given one function's value and another's gradient fails: the loss
    # L-BFGS sees must include the pull that brings out-of-range pixels back. It matters
    # near the optimum, where the pull is all there is: without it a relu1_1 reconstruction
    # of chelsea at 128 px stopped after 15 iterations at 32 dB. Here the clamped image is
    # the content itself (loss 0) and only the pixels pushed past 1 pull.
    from rvgen.engine.optimize import evaluator

    recipe = parse_recipe({"task": {"name": "reconstruct", "layer": "relu1_1"}, "output": {"size": 24}})
    synth = recipe.build("cpu")
    synth.objective.double()
    content = (square("astronaut", 24).double() * 1.5).clamp(0, 1)  # saturated highlights
    synth.objective.set_targets({"input": content})
    evaluate = evaluator(synth.objective, content.shape)
    x = torch.where(content == 1, content + 0.2, content).reshape(1, -1)
    assert (x > 1).float().mean() > 0.05
    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f, g = evaluate(x, None)
    eps = 1e-4
    slope = float(evaluate(x + eps * d, None)[0] - evaluate(x - eps * d, None)[0]) / (2 * eps)
    assert float(f) > 0 and float((g * d).sum()) != 0
    assert slope == pytest.approx(float((g * d).sum()), rel=1e-2)


@pytest.mark.slow
def test_a_reconstruction_from_relu1_1_runs_its_iterations_and_is_exact():
    recipe = parse_recipe({"task": {"name": "reconstruct", "layer": "relu1_1"}, "optimizer": {"iterations": 60},
                           "output": {"size": 48}})
    synth = recipe.build("cpu")
    synth.set_references({})
    content = sample("chelsea", 48)
    result = synth.run(content)
    assert result.iterations == 60
    mse = float((result.image - content).pow(2).mean())
    assert mse == 0 or 10 * math.log10(1 / mse) > 60
