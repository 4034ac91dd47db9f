"""Model options (issue 12): activations, dropout, learning-rate schedules, weight decay.

Every option must train the same in the batched trainer (the simulator, many
nodes at once) as a node alone (the sandbox's path) and as plain torch (the
``train_one`` reference); dropout is a training-time, seeded thing only; a
schedule is a pure function of the recipe and the round.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.errors import ConfigError
from tessera.ids import Task
from tessera.training import BatchedTrainer, ModelSpec, Recipe, evaluate, init_weights, layout
from tessera.training.evaluate import predict
from tessera.training.shuffle import dropout_keep

TrainOne = Callable[..., tuple[np.ndarray, float]]
SIZES = np.array([7, 0, 1, 12, 4, 9, 2])
ACTIVATIONS = ("relu", "tanh", "gelu")


def _data(spec: ModelSpec, loss: str, sizes: np.ndarray) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    n = int(sizes.sum())
    x = rng.normal(size=(n, *spec.input_shape)).astype(np.float32)
    if loss == "cross_entropy":
        y = rng.integers(0, spec.n_outputs, n)
    else:
        y = rng.normal(size=(n, spec.n_outputs)).astype(np.float32)
    return x, y, np.concatenate([[0], np.cumsum(sizes)])


def _weights(spec: ModelSpec) -> np.ndarray:
    return layout(spec).flatten(init_weights(spec, 3))


def _against_reference(
    train_one: TrainOne,
    spec: ModelSpec,
    recipe: Recipe,
    *,
    engine: str = "auto",
    round: int = 0,
    sizes: np.ndarray = SIZES,
) -> np.ndarray:
    """Batched deltas (node order), checked node by node against plain torch."""
    x, y, off = _data(spec, recipe.loss, sizes)
    g = _weights(spec)
    trainer = BatchedTrainer(spec, recipe, x, y, off, engine=engine)  # type: ignore[arg-type]
    res = trainer.train(g, np.arange(len(sizes)), seed=11, round=round)
    for node in range(len(sizes)):
        lo, hi = off[node], off[node + 1]
        if lo == hi:
            assert not res.deltas[node].any()
            continue
        delta, loss = train_one(
            spec,
            recipe=recipe,
            x=x[lo:hi],
            y=y[lo:hi],
            global_weights=g,
            node=node,
            seed=11,
            round=round,
        )
        np.testing.assert_allclose(res.deltas[node], delta, rtol=1e-4, atol=2e-6)
        assert res.loss[node] == pytest.approx(loss, rel=1e-4, abs=1e-6)
    assert np.isfinite(res.deltas).all()
    return res.deltas


# -- activations ---------------------------------------------------------------


@pytest.mark.parametrize("engine", ["dense", "vmap"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_trains_as_plain_torch(
    train_one: TrainOne, activation: str, engine: str
) -> None:
    spec = ModelSpec("mlp", (3,), 4, hidden=(8, 5), activation=activation)  # type: ignore[arg-type]
    recipe = Recipe("cross_entropy", lr=0.3, batch_size=4, local_epochs=2, momentum=0.5)
    deltas = _against_reference(train_one, spec, recipe, engine=engine)
    relu = ModelSpec("mlp", (3,), 4, hidden=(8, 5))
    if activation != "relu":  # the option reaches the trainer
        assert not np.allclose(deltas, _against_reference(train_one, relu, recipe, engine=engine))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_trains_a_cnn_as_plain_torch(train_one: TrainOne, activation: str) -> None:
    spec = ModelSpec(
        "cnn",
        (1, 6, 6),
        3,
        channels=(3,),
        hidden=(5,),
        activation=activation,  # type: ignore[arg-type]
        dropout=0.25,
    )
    recipe = Recipe("cross_entropy", optimizer="adam", lr=0.01, batch_size=4)
    _against_reference(train_one, spec, recipe, sizes=np.array([9, 3, 0, 5]))


def test_regression_with_tanh_and_weight_decay_trains_as_plain_torch(train_one: TrainOne) -> None:
    spec = ModelSpec("mlp", (3,), 1, hidden=(6,), activation="tanh", dropout=0.1)
    for optimizer in ("sgd", "adam"):
        recipe = Recipe("mse", optimizer=optimizer, lr=0.05, batch_size=3, weight_decay=0.2)
        with_decay = _against_reference(train_one, spec, recipe)
        without = _against_reference(
            train_one, spec, Recipe("mse", optimizer=optimizer, lr=0.05, batch_size=3)
        )
        assert not np.allclose(with_decay, without)  # weight decay reaches both paths


def test_the_built_module_uses_the_activation() -> None:
    import torch

    from tessera.training import build_module

    for activation, kind in (("relu", "ReLU"), ("tanh", "Tanh"), ("gelu", "GELU")):
        spec = ModelSpec("mlp", (2,), 2, hidden=(3,), activation=activation)  # type: ignore[arg-type]
        module = build_module(spec)
        assert type(module.get_submodule("act0")).__name__ == kind
        assert not any(isinstance(m, torch.nn.Dropout) for m in module.modules())


# -- dropout ---------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["dense", "vmap"])
def test_dropout_trains_as_plain_torch_with_the_same_masks(
    train_one: TrainOne, engine: str
) -> None:
    spec = ModelSpec("mlp", (3,), 4, hidden=(8, 5), activation="gelu", dropout=0.4)
    recipe = Recipe("cross_entropy", lr=0.2, batch_size=4, local_epochs=2)
    dropped = _against_reference(train_one, spec, recipe, engine=engine)
    plain = ModelSpec("mlp", (3,), 4, hidden=(8, 5), activation="gelu")
    assert not np.allclose(dropped, _against_reference(train_one, plain, recipe, engine=engine))


def test_dropout_is_deterministic_and_independent_of_chunking() -> None:
    spec = ModelSpec("mlp", (3,), 4, hidden=(16,), dropout=0.5)
    recipe = Recipe("cross_entropy", optimizer="adam", lr=0.01, batch_size=5, local_epochs=2)
    sizes = np.random.default_rng(5).integers(0, 30, 10)
    x, y, off = _data(spec, recipe.loss, sizes)
    g = _weights(spec)
    trainer = BatchedTrainer(spec, recipe, x, y, off)
    together = trainer.train(g, np.arange(10), seed=4)
    again = BatchedTrainer(spec, recipe, x, y, off).train(g, np.arange(10), seed=4)
    np.testing.assert_array_equal(together.deltas, again.deltas)
    tiny = BatchedTrainer(spec, recipe, x, y, off, max_chunk_elements=1)
    alone = tiny.train(g, np.arange(10)[::-1], seed=4)
    np.testing.assert_allclose(together.deltas, alone.deltas[::-1], rtol=1e-5, atol=1e-7)
    # A deployed node trains alone under its federation index: the very same update.
    node = int(np.argmax(sizes))
    lo, hi = off[node], off[node + 1]
    single = BatchedTrainer(
        spec, recipe, x[lo:hi], y[lo:hi], np.array([0, hi - lo]), shuffle_ids=np.array([node])
    ).train(g, [0], seed=4)
    np.testing.assert_array_equal(single.deltas[0], tiny.train(g, [node], seed=4).deltas[0])
    other_seed = trainer.train(g, np.arange(10), seed=5)
    assert not np.allclose(together.deltas, other_seed.deltas)


def test_dropout_is_off_at_evaluation() -> None:
    plain = ModelSpec("mlp", (3,), 4, hidden=(8,))
    dropped = ModelSpec("mlp", (3,), 4, hidden=(8,), dropout=0.7)
    w = _weights(plain)
    x = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 4, 50)
    np.testing.assert_array_equal(predict(dropped, w, x), predict(plain, w, x))
    assert evaluate(dropped, w, x, y, Task.CLASSIFICATION) == evaluate(
        plain, w, x, y, Task.CLASSIFICATION
    )


@settings(max_examples=25, deadline=None)
@given(
    p=st.sampled_from([0.05, 0.3, 0.5, 0.9]),
    seed=st.integers(0, 2**40),
    nodes=st.lists(st.integers(0, 10**6), min_size=1, max_size=5),
    epoch=st.integers(0, 50),
    layer=st.integers(0, 7),
)
def test_dropout_masks_keep_one_minus_p_and_depend_on_each_node_alone(
    p: float, seed: int, nodes: list[int], epoch: int, layer: int
) -> None:
    positions = np.arange(40, 240)
    keep = dropout_keep(seed, nodes, epoch, layer=layer, positions=positions, width=64, p=p)
    assert keep.shape == (len(nodes), 200, 64)
    # 12,800 draws per node: the kept share is within 5 standard deviations of 1 - p
    sd = math.sqrt(p * (1 - p) / keep[0].size)
    assert abs(keep[0].mean() - (1 - p)) < 5 * sd
    for i, node in enumerate(nodes):  # a node's masks do not depend on its company
        alone = dropout_keep(
            seed, [node], epoch, layer=layer, positions=positions[5:9], width=64, p=p
        )
        np.testing.assert_array_equal(alone[0], keep[i, 5:9])
    other_layer = dropout_keep(
        seed, nodes[:1], epoch, layer=layer + 1, positions=positions, width=64, p=p
    )
    assert not np.array_equal(other_layer[0], keep[0])


def test_no_dropout_keeps_everything_and_dropout_needs_a_hidden_layer() -> None:
    assert dropout_keep(1, [0], 0, layer=0, positions=np.arange(10), width=8, p=0.0).all()
    with pytest.raises(ConfigError) as exc:
        ModelSpec("linear", (3,), 2, dropout=0.1)
    assert exc.value.field == "model.dropout"
    with pytest.raises(ConfigError) as exc:
        ModelSpec("cnn", (1, 4, 4), 2, channels=(2,), dropout=0.1)
    assert exc.value.field == "model.dropout"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"activation": "swish"}, "model.activation"),
        ({"activation": None}, "model.activation"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"dropout": -0.1}, "model.dropout"),
        ({"dropout": "0.2"}, "model.dropout"),
        ({"dropout": True}, "model.dropout"),
    ],
)
def test_bad_model_options_name_their_field(changes: dict[str, object], field: str) -> None:
    doc = {**json.loads(ModelSpec("mlp", (3,), 2, hidden=(4,)).to_json()), **changes}
    with pytest.raises(ConfigError) as exc:
        ModelSpec.from_json(json.dumps(doc))
    assert exc.value.field == field


def test_older_specs_mean_relu_without_dropout_and_keep_their_bytes() -> None:
    old = '{"channels":[16,32],"hidden":[4],"input_shape":[3],"kind":"mlp","n_outputs":2}'
    spec = ModelSpec.from_json(old)
    assert (spec.activation, spec.dropout) == ("relu", 0.0)
    assert spec.to_json() == old  # a spec without the new options writes what it always did
    new = ModelSpec("mlp", (3,), 2, hidden=(4,), activation="tanh", dropout=0.25)
    assert json.loads(new.to_json())["activation"] == "tanh"
    assert ModelSpec.from_json(new.to_json()) == new
    assert layout(new) == layout(spec)  # the options change no parameter


# -- learning-rate schedules -------------------------------------------------------


def test_constant_is_the_default_and_keeps_older_recipes() -> None:
    old = (
        '{"batch_size":32,"clip_norm":null,"local_epochs":1,"loss":"mse","lr":0.05,'
        '"momentum":0.0,"optimizer":"sgd","prox_mu":0.0,"weight_decay":0.0}'
    )
    recipe = Recipe.from_json(old)
    assert recipe.lr_schedule == "constant"
    assert recipe.to_json() == old
    assert {recipe.lr_at(r) for r in (0, 1, 99)} == {0.05}


def test_cosine_runs_from_lr_to_its_floor_and_step_halves() -> None:
    cosine = Recipe("mse", lr=0.2, lr_schedule="cosine", lr_min_fraction=0.1, lr_rounds=11)
    assert cosine.lr_at(0) == 0.2
    assert cosine.lr_at(5) == pytest.approx(0.2 * (0.1 + 0.9 * 0.5))  # half way: the mean
    assert cosine.lr_at(10) == pytest.approx(0.02)
    assert cosine.lr_at(50) == cosine.lr_at(10)  # after the last round: the floor
    assert Recipe("mse", lr=0.2, lr_schedule="cosine", lr_rounds=1).lr_at(0) == 0.2
    step = Recipe("mse", lr=0.4, lr_schedule="step", lr_step_every=3, lr_gamma=0.5)
    assert [step.lr_at(r) for r in range(7)] == [0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.1]
    assert Recipe.from_json(cosine.to_json()) == cosine
    assert Recipe.from_json(step.to_json()) == step
    with pytest.raises(ValueError, match="round"):
        step.lr_at(-1)


@settings(max_examples=60, deadline=None)
@given(
    lr=st.floats(1e-4, 10.0),
    fraction=st.floats(0.0, 1.0),
    rounds=st.integers(1, 500),
    every=st.integers(1, 50),
    gamma=st.floats(0.01, 1.0),
)
def test_schedules_start_at_lr_and_never_rise(
    lr: float, fraction: float, rounds: int, every: int, gamma: float
) -> None:
    cosine = Recipe("mse", lr=lr, lr_schedule="cosine", lr_min_fraction=fraction, lr_rounds=rounds)
    step = Recipe("mse", lr=lr, lr_schedule="step", lr_step_every=every, lr_gamma=gamma)
    for recipe in (cosine, step):
        rates = [recipe.lr_at(r) for r in range(rounds + 2)]
        assert rates[0] == lr
        assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(rates))
    assert min(cosine.lr_at(r) for r in range(rounds + 2)) >= lr * fraction - 1e-12 * lr
    if rounds > 1:
        assert cosine.lr_at(rounds - 1) == pytest.approx(lr * fraction, abs=1e-12 * lr)
    assert step.lr_at(every * 3) == pytest.approx(lr * gamma**3)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lr_schedule": "warmup"}, "recipe.lr_schedule"),
        ({"lr_schedule": "cosine"}, "recipe.lr_rounds"),
        (
            {"lr_schedule": "cosine", "lr_rounds": 5, "lr_min_fraction": 1.5},
            "recipe.lr_min_fraction",
        ),
        ({"lr_schedule": "step", "lr_gamma": 0.0}, "recipe.lr_gamma"),
        ({"lr_schedule": "step", "lr_gamma": 1.5}, "recipe.lr_gamma"),
        ({"lr_schedule": "step", "lr_step_every": 0}, "recipe.lr_step_every"),
        ({"lr_gamma": 0.1}, "recipe.lr_gamma"),  # constant takes no gamma
        ({"lr_schedule": "step", "lr_rounds": 5}, "recipe.lr_rounds"),
        ({"lr_schedule": "cosine", "lr_rounds": 5, "lr_step_every": 2}, "recipe.lr_step_every"),
    ],
)
def test_bad_schedules_name_their_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Recipe("mse", **kwargs)  # type: ignore[arg-type]
    assert exc.value.field == field


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_round_trains_at_the_schedules_rate(train_one: TrainOne, optimizer: str) -> None:
    spec = ModelSpec("mlp", (3,), 4, hidden=(6,), activation="tanh")
    recipe = Recipe(
        "cross_entropy",
        optimizer=optimizer,  # type: ignore[arg-type]
        lr=0.1,
        batch_size=4,
        lr_schedule="cosine",
        lr_min_fraction=0.1,
        lr_rounds=4,
    )
    x, y, off = _data(spec, recipe.loss, SIZES)
    g, nodes = _weights(spec), np.arange(len(SIZES))
    for round_ in (1, 3):
        got = BatchedTrainer(spec, recipe, x, y, off).train(g, nodes, 2, round=round_)
        fixed = Recipe("cross_entropy", optimizer=optimizer, lr=recipe.lr_at(round_), batch_size=4)  # type: ignore[arg-type]
        want = BatchedTrainer(spec, fixed, x, y, off).train(g, nodes, 2)
        np.testing.assert_array_equal(got.deltas, want.deltas)
    _against_reference(train_one, spec, recipe, round=3)
