"""Deadline rounds: how much local work each simulated device does in time.

``[deadline] seconds`` gives every selected node that many virtual seconds of
local work from when the round's request reaches it. The device model
(``DeviceModel.training_seconds``: a fixed start, then records at the node's
speed) says how long its whole work (``local_epochs`` over its records)
takes. If that fits, nothing changes. If not, with ``partial_work`` the node
does the most minibatch steps whose records fit, in the order it would have
trained them (whole epochs, then the first minibatches of the next), and its
update is that partial work (``BatchedTrainer``'s ``max_steps``); without
``partial_work``, or when not one minibatch fits, it is a straggler: it
declines at once, so nobody waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.runtime.sim.devices import DeviceModel


@dataclass(frozen=True)
class Work:
    """A node's local work this round: ``steps`` caps it (None: all of it), in ``seconds``."""

    steps: int | None
    seconds: float


@dataclass(frozen=True)
class Deadline:
    seconds: float  # of local work per node, from the request's arrival
    batch_size: int  # the recipe's: one local step is one minibatch
    partial_work: bool = True

    def work(self, devices: DeviceModel, node: int, samples: int, epochs: int) -> Work | None:
        """Node ``node``'s work before the deadline; None: it cannot do one step in time."""
        full = devices.training_seconds(node, samples, epochs)
        if full <= self.seconds:
            return Work(None, full)
        if not self.partial_work or samples <= 0:
            return None
        rate = devices.records_per_second(node)
        records = (self.seconds - devices.training_seconds(node, 0, epochs)) * rate
        per_epoch = -(-samples // self.batch_size)
        epochs_done = min(int(records // samples), epochs)
        if epochs_done == epochs:  # rounding: the whole work fits after all
            return Work(None, full)
        partial = min(int((records - epochs_done * samples) // self.batch_size), per_epoch - 1)
        steps = epochs_done * per_epoch + partial
        if steps < 1:
            return None
        seen = epochs_done * samples + partial * self.batch_size  # records its steps used
        seconds = devices.training_seconds(node, 0, epochs) + seen / rate
        return Work(steps, min(seconds, self.seconds))
