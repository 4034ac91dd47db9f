"""What this node agrees to run: its owner's bounds on any job's model and recipe.

A node accepts only declarative models (``ModelSpec``) and recipes, and only
within the bounds of its ``NodeCatalogue``: which model kinds, losses and
optimizers, activations and learning-rate schedules, how much dropout, how
many parameters, how wide and deep, how many local epochs, how large a batch,
how many records. The spec and recipe themselves refuse what no node could
run (an unknown activation, dropout of 1 or more: ``ConfigError`` naming the
field, as a job document is parsed); the catalogue narrows what this node
will. ``check`` runs before anything is sent to the sandbox (and again inside
it), so a job outside the catalogue costs the node nothing but the refusal,
and the refusal names the field at fault.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tessera.errors import ConfigError
from tessera.sandbox.errors import SandboxRefused

if TYPE_CHECKING:
    from tessera.training.recipe import Recipe
    from tessera.training.spec import ModelSpec

Count = Annotated[int, Field(gt=0, strict=True)]
Kind = Literal["linear", "mlp", "cnn"]
Loss = Literal["cross_entropy", "mse"]
Optimizer = Literal["sgd", "adam"]
Activation = Literal["relu", "tanh", "gelu"]
Schedule = Literal["constant", "cosine", "step"]


class NodeCatalogue(BaseModel):
    """Bounds a job must fit; build one with ``from_dict`` from a TOML section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: tuple[Kind, ...] = ("linear", "mlp", "cnn")
    losses: tuple[Loss, ...] = ("cross_entropy", "mse")
    optimizers: tuple[Optimizer, ...] = ("sgd", "adam")
    activations: tuple[Activation, ...] = ("relu", "tanh", "gelu")
    lr_schedules: tuple[Schedule, ...] = ("constant", "cosine", "step")
    max_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.9
    max_parameters: Count = 5_000_000
    max_input_features: Count = 100_000
    max_hidden_width: Count = 4096
    max_hidden_layers: Count = 8
    max_channels: Count = 256
    max_conv_layers: Count = 4
    max_local_epochs: Count = 20
    max_batch_size: Count = 1024
    max_records: Count = 1_000_000

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> NodeCatalogue:
        """Validate a ``[catalogue]`` section; a mistake is a ``ConfigError`` naming the field."""
        try:
            return cls.model_validate(dict(raw))
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(["catalogue", *(str(p) for p in first["loc"][:1])])
            message = first["msg"]
            if first["type"] == "extra_forbidden":
                message = "unknown field (check its spelling)"
            raise ConfigError(field, message) from None

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> NodeCatalogue:
        try:
            return cls.model_validate_json(text)
        except ValidationError as err:
            raise ConfigError("catalogue", str(err)) from None

    def check(self, spec: ModelSpec, recipe: Recipe, n_records: int) -> None:
        """Raise ``SandboxRefused`` naming the first field outside the catalogue."""
        for reason in self._refusals(spec, recipe, n_records):
            raise SandboxRefused(reason)

    def _refusals(self, spec: ModelSpec, recipe: Recipe, n_records: int) -> Iterator[str]:
        yield from _not_listed("model.kind", spec.kind, self.kinds)
        yield from _not_listed("model.activation", spec.activation, self.activations)
        if not 0 <= spec.dropout <= self.max_dropout:
            yield f"model.dropout is {spec.dropout}; this node accepts at most {self.max_dropout}"
        features = math.prod(spec.input_shape)
        if features > self.max_input_features:
            yield (
                f"model.input_shape {spec.input_shape} has {features:,} features per record; "
                f"this node accepts at most {self.max_input_features:,}"
            )
        yield from _layers(
            "model.hidden", spec.hidden, "width {:,}", self.max_hidden_width, self.max_hidden_layers
        )
        if spec.kind == "cnn":
            yield from _layers(
                "model.channels",
                spec.channels,
                "{:,} channels",
                self.max_channels,
                self.max_conv_layers,
            )
        # From the spec's shapes: the node agent never imports torch (its sandbox does).
        from tessera.training.spec import parameter_count

        n_params = parameter_count(spec)
        if n_params > self.max_parameters:
            yield (
                f"model has {n_params:,} parameters; "
                f"this node accepts at most {self.max_parameters:,}"
            )
        yield from _not_listed("recipe.loss", recipe.loss, self.losses)
        yield from _not_listed("recipe.optimizer", recipe.optimizer, self.optimizers)
        yield from _not_listed("recipe.lr_schedule", recipe.lr_schedule, self.lr_schedules)
        for field, value, bound in (
            ("recipe.local_epochs", recipe.local_epochs, self.max_local_epochs),
            ("recipe.batch_size", recipe.batch_size, self.max_batch_size),
        ):
            if value > bound:
                yield f"{field} is {value:,}; this node accepts at most {bound:,}"
        if n_records > self.max_records:
            yield (
                f"the job would train on {n_records:,} records; "
                f"this node accepts at most {self.max_records:,}"
            )


def _not_listed(field: str, value: str, allowed: tuple[str, ...]) -> Iterator[str]:
    if value not in allowed:
        yield f"{field} {value!r} is not in this node's catalogue ({', '.join(allowed)})"


def _layers(
    field: str, widths: tuple[int, ...], size: str, max_width: int, max_layers: int
) -> Iterator[str]:
    """Refusals for too many layers or one too wide; ``size`` formats a width."""
    if len(widths) > max_layers:
        yield f"{field} has {len(widths)} layers; this node accepts at most {max_layers}"
    widest = max(widths, default=0)
    if widest > max_width:
        yield (
            f"{field} has a layer of {size.format(widest)}; "
            f"this node accepts at most {size.format(max_width)}"
        )


#: A laptop-sized default: small tabular and image models, minutes of CPU.
DEFAULT_CATALOGUE = NodeCatalogue()
