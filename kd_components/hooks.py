"""Feature taps: forward hooks on submodules named by module path (torchdistill's way), and the channels they give."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from kd_components.constants import MODALITIES
from kd_components.networks.utils import parameter_device, unwrap_module

__all__ = ["FeatureHooks", "feature_channels", "resolve_module"]

_MAX_SUGGESTIONS = 8


def _suggestions(module: nn.Module, path: str) -> list[str]:
    """Valid module paths next to ``path``: the children of its deepest valid ancestor."""
    names = [name for name, _ in module.named_modules() if name]
    parts = path.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        prefix = ".".join(parts[:depth])
        prefix_dot = f"{prefix}." if prefix else ""
        children = [n for n in names if n.startswith(prefix_dot) and "." not in n[len(prefix_dot) :]]
        if children:
            return children[:_MAX_SUGGESTIONS]
    return names[:_MAX_SUGGESTIONS]


def resolve_module(module: nn.Module, path: str) -> nn.Module:
    """
    ``module.get_submodule(path)`` with a helpful error.

    Args:
        module: the network.
        path: a dotted module path, e.g. ``"down_layers.1"`` or ``"fusion.fuse.0"``.

    Returns:
        the submodule.

    Raises:
        ValueError: if no submodule has that path; the message lists valid paths sharing its prefix.
    """
    try:
        return module.get_submodule(path)
    except AttributeError:
        pass
    raise ValueError(
        f"{type(module).__name__} has no submodule {path!r}; valid paths nearby: {_suggestions(module, path)} "
        "(see module.named_modules() for all)"
    )


class FeatureHooks:
    """
    Captures the outputs of submodules, named by module path, with forward hooks.

    The network needs no special forward: any MONAI network (e.g. ``SegResNet`` paths ``down_layers.1``,
    ``up_layers.0``) or the :class:`~kd_components.networks.HybridTeacher` (``fusion.fuse.i``). After a
    forward of ``module``, :meth:`features` returns the outputs of the hooked submodules in the order of
    ``paths`` (the last call of each, if a submodule runs more than once).

    Only the last forward's outputs are kept: a forward pre-hook on ``module`` drops the previous ones
    when a new forward starts, and :meth:`clear` drops them at once (call it after the loss, so that the
    student's graph is not kept alive until the next iteration). Works under ``torch.no_grad()`` (for
    the teacher; ``detach=True`` also detaches outputs captured with gradients on). Hooks do not run in
    TorchScript: hook the eager network.

    Example::

        with FeatureHooks(teacher, teacher.feature_modules()) as t_hooks, FeatureHooks(student, paths) as s_hooks:
            with torch.no_grad():
                teacher_logits = teacher(x)
            student_logits = student(x)
            loss = feature_loss(s_hooks.features(), t_hooks.features())
    """

    def __init__(self, module: nn.Module, paths: Sequence[str], detach: bool = False) -> None:
        """
        Args:
            module: the (eager) network to tap.
            paths: module paths to capture, e.g. ``["down_layers.1", "down_layers.2"]``.
            detach: store detached outputs (no graph is kept). Defaults to False.

        Raises:
            TypeError: for a TorchScript module (hooks do not run there).
            ValueError: for an empty ``paths`` or an unknown path (the message lists valid paths nearby).
        """
        if isinstance(module, torch.jit.ScriptModule):
            raise TypeError("FeatureHooks needs an eager nn.Module: forward hooks do not run in TorchScript")
        if isinstance(paths, str) or not paths:
            raise ValueError(f"paths must be a non-empty sequence of module paths, got {paths!r}")
        self.module = module
        self.paths = list(paths)
        self.detach = detach
        self._outputs: dict[int, Any] = {}
        self._handles: list[RemovableHandle] = []
        submodules = [resolve_module(module, p) for p in self.paths]  # all resolved before any hook is added
        self._handles.append(module.register_forward_pre_hook(self._on_forward_start))
        for i, sub in enumerate(submodules):
            self._handles.append(sub.register_forward_hook(functools.partial(self._store, i)))

    def _on_forward_start(self, module: nn.Module, args: Any) -> None:
        self._outputs.clear()

    def _store(self, index: int, module: nn.Module, args: Any, output: Any) -> None:
        if self.detach and isinstance(output, torch.Tensor):
            output = output.detach()
        self._outputs[index] = output

    def features(self) -> list[torch.Tensor]:
        """
        The outputs captured in the last forward, in the order of ``paths`` (e.g. ``(B, C_i, H_i, W_i, D_i)``).

        Raises:
            RuntimeError: if a path did not run in the last forward (or after :meth:`clear`).
        """
        missing = [p for i, p in enumerate(self.paths) if i not in self._outputs]
        if missing:
            raise RuntimeError(
                f"no output captured for {missing}: run a forward of the hooked network first "
                "(and check that these modules run in its forward)"
            )
        return [self._outputs[i] for i in range(len(self.paths))]

    def clear(self) -> None:
        """Drop the captured outputs (and the graphs they keep alive)."""
        self._outputs.clear()

    def remove(self) -> None:
        """Remove the hooks and drop the captured outputs; the network runs untapped afterwards."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    @property
    def active(self) -> bool:
        """Whether the hooks are registered."""
        return bool(self._handles)

    def __enter__(self) -> FeatureHooks:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.remove()

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.module).__name__}, paths={self.paths}, active={self.active})"


def feature_channels(
    network: nn.Module,
    paths: Sequence[str],
    spatial_size: Sequence[int] = (32, 32, 32),
    in_channels: int = len(MODALITIES),
) -> list[int]:
    """
    Channels of the outputs of the submodules at ``paths`` (e.g. ``["down_layers.1", "down_layers.2"]``).

    A network with ``feature_modules()`` and ``feature_channels`` (the
    :class:`~kd_components.networks.HybridTeacher`) answers for its own feature modules without running;
    otherwise one forward of a zero input ``(1, in_channels, *spatial_size)`` is hooked, in eval mode
    under ``torch.no_grad()`` (the training mode is restored afterwards).

    Args:
        network: the (eager) network.
        paths: module paths.
        spatial_size: spatial size of the probe input (must suit the network). Defaults to 32^3.
        in_channels: channels of the probe input. Defaults to 4 (``[t1c, t1n, t2w, t2f]``).

    Raises:
        ValueError: for an unknown path (the message lists valid paths nearby).
    """
    network = unwrap_module(network)  # paths name the bare network's modules, also under DDP
    known = getattr(network, "feature_channels", None)
    modules = network.feature_modules() if callable(getattr(network, "feature_modules", None)) else None
    if known is not None and modules is not None and all(p in modules for p in paths):
        return [int(known[modules.index(p)]) for p in paths]
    was_training = network.training
    probe = torch.zeros(1, in_channels, *spatial_size, device=parameter_device(network))
    with FeatureHooks(network, list(paths), detach=True) as hooks, torch.no_grad():
        network.eval()
        try:
            network(probe)
            return [int(f.shape[1]) for f in hooks.features()]
        finally:
            network.train(was_training)
