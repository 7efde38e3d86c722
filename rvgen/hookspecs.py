"""The plugin contract: every hook rvgen calls, in one place.

Each hook receives a ``register`` callback and calls it once per thing it provides, so the
core owns the registry and clashes are reported with both sources named::

    from rvgen import hookimpl

    @hookimpl
    def register_losses(register):
        register(MyLoss)

Built-in backbones, losses and tasks are registered through these same hooks.
"""

import pluggy

hookspec = pluggy.HookspecMarker("rvgen")
hookimpl = pluggy.HookimplMarker("rvgen")


@hookspec
def register_backbones(register):
    """Register feature networks: subclasses of :class:`rvgen.backbones.Backbone`."""


@hookspec
def register_losses(register):
    """Register losses: subclasses of :class:`rvgen.losses.Loss`."""


@hookspec
def register_tasks(register):
    """Register tasks: subclasses of :class:`rvgen.tasks.Task`."""
