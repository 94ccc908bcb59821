"""Knowledge distillation as a MONAI ``SupervisedTrainer``: one teacher + student step per iteration."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from monai.utils import convert_to_tensor
from torch.optim import Optimizer

from kd_components.checkpoints.teacher import freeze
from kd_components.data.mixing import NUM_LABELLED_KEY
from kd_components.distributed import average_gradients
from kd_components.hooks import FeatureHooks
from kd_components.losses import DistillationInputs, DistillationLoss
from kd_components.losses.combined import LOSS_PREFIX
from kd_components.networks.utils import unwrap_module
from kd_components.transforms import brain_mask

__all__ = ["DistillationTrainer"]


class DistillationTrainer(SupervisedTrainer):
    """
    MONAI's :class:`~monai.engines.SupervisedTrainer` with a frozen teacher and a
    :class:`~kd_components.losses.DistillationLoss` (an open set of named, weighted terms).

    Each iteration runs the student on the batch ``image`` ``(B, 4, H, W, D)`` and, when an active term
    needs it (``loss_function.needs_teacher``), the teacher (eval mode, ``torch.no_grad()``) on the same
    batch. The feature maps at the module paths the active terms name (``student_paths``,
    ``teacher_paths``) are tapped with :class:`~kd_components.hooks.FeatureHooks` on both networks, so any
    eager network can be the student. The terms get a :class:`~kd_components.losses.DistillationInputs`:

    - ``label`` only for batches with one; a term that needs labels (the task term) is skipped for
      batches without (unlabelled scans, see :class:`~kd_components.data.mixing.MixedBatchLoader`); in a
      paired batch (``num_labelled`` = ``B_l``: labelled samples first, then unlabelled ones) it uses the
      first ``B_l`` samples and the other terms all of them;
    - ``mask``, when an active term needs it (the masked soft-target term): the batch's
      ``brain_mask_key`` entry ``(B, 1, H, W, D)`` when present (computed before intensity augmentation,
      see ``kd_components.transforms.BrainMaskd``), else :func:`~kd_components.transforms.brain_mask` of
      the image;
    - the tapped features by module path, and the teacher (e.g. for its learned scale weights).

    When no active term needs the teacher the teacher is not run at all: with the task term alone the
    step is exactly the supervised baseline. The teacher stays frozen (``requires_grad=False``) and in
    eval mode (re-set every iteration, after ``network.train()``), so its weights and buffers never change.

    The iteration follows ``SupervisedTrainer._iteration`` (``tests/test_library_contract.py`` checks that
    it still matches MONAI's): the same events fire (``IterationEvents.FORWARD_COMPLETED``,
    ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``, ``MODEL_COMPLETED``), AMP uses ``torch.autocast("cuda")``
    and the trainer's GradScaler when ``amp`` is true, and ``optim_set_to_none`` and
    ``accumulation_steps`` behave as there. So checkpoint, metric, stats and MLflow handlers work
    unchanged. ``engine.state.output`` holds ``image``, ``label`` (labelled batches only), ``pred``
    (student logits ``(B, 3, H, W, D)``), ``loss`` (the total) and every term's unweighted value under
    ``loss_<name>`` (detached scalars; 0 when not computed); :func:`~kd_components.handlers.loss_components`
    gives them to logging handlers.

    Give the optimizer the student's parameters and the loss's (the feature adapters).

    Multi-GPU: ``network`` may be the student wrapped in ``DistributedDataParallel`` (the teacher stays
    bare and frozen on each rank). Feature hooks go on the bare student (``network.module``), so the
    feature paths are the bare network's (``down_layers.1``, not ``module.down_layers.1``); the gradients
    of the loss's own parameters (the adapters, outside DDP) are averaged across ranks after each backward
    (:func:`~kd_components.distributed.average_gradients`), so every rank takes the same step.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable[Any],
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: DistillationLoss,
        teacher: nn.Module | None = None,
        brain_mask_key: str | None = "brain_mask",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            device: device of the iteration (the student, the loss and the teacher are moved there).
            max_epochs: number of epochs.
            train_data_loader: batches of ``{"image", "label"?, "brain_mask"?}`` (a DataLoader, or a
                :class:`~kd_components.data.MixedBatchLoader` of labelled and unlabelled ones).
            network: the student (an eager ``nn.Module``, possibly wrapped in ``DistributedDataParallel``).
            optimizer: optimiser over the student's parameters and ``loss_function.parameters()``.
            loss_function: the :class:`~kd_components.losses.DistillationLoss`.
            teacher: the trained teacher (e.g. from :func:`~kd_components.checkpoints.load_frozen_teacher`);
                frozen and put in eval mode here. Needed when an active term uses it; may be ``None`` otherwise.
            brain_mask_key: batch key of a precomputed brain mask ``(B, 1, H, W, D)``; when absent from a
                batch (or ``None``), the mask is ``image != 0`` in any channel. Defaults to "brain_mask".
            kwargs: other arguments of :class:`~monai.engines.SupervisedTrainer` (``inferer``,
                ``postprocessing``, ``key_train_metric``, ``train_handlers``, ``amp``, ``epoch_length``,
                ``optim_set_to_none``, ``accumulation_steps``, ...); ``iteration_update`` and ``compile``
                are not supported (the first replaces this step, the second the hooked modules).

        Raises:
            TypeError: if ``loss_function`` is not a ``DistillationLoss``.
            ValueError: for a missing teacher, networks that do not serve an active term (unknown feature
                paths, teacher scale weights without a teacher that has them: ``check_networks``), a
                teacher that shares parameters with the student, or an unsupported argument.
        """
        if not isinstance(loss_function, DistillationLoss):
            raise TypeError(f"loss_function must be a DistillationLoss, got {type(loss_function).__name__}")
        for unsupported in ("iteration_update", "compile"):
            if kwargs.get(unsupported):
                raise ValueError(f"DistillationTrainer does not support {unsupported}=...")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function.to(device),
            **kwargs,
        )
        self.loss_function: DistillationLoss
        if loss_function.needs_teacher and teacher is None:
            active = list(loss_function.active_terms())
            raise ValueError(f"DistillationTrainer: a teacher is needed by the active loss terms {active}")
        if teacher is not None:
            student_params = {id(p) for p in network.parameters()}
            if any(id(p) in student_params for p in teacher.parameters()):
                raise ValueError("DistillationTrainer: the teacher shares parameters with the student")
            teacher = freeze(teacher.to(device))
        self.teacher = teacher
        if callable(getattr(train_data_loader, "set_epoch", None)):  # e.g. MixedBatchLoader: reproducible on resume
            self.add_event_handler(
                Events.EPOCH_STARTED, lambda engine: train_data_loader.set_epoch(engine.state.epoch - 1)
            )
        self.brain_mask_key = brain_mask_key
        loss_function.check_networks(unwrap_module(network), teacher)  # fail now, not at the first iteration

    def _brain_mask(self, batchdata: Any, inputs: torch.Tensor) -> torch.Tensor:
        """The brain voxels of the batch ``(B, 1, H, W, D)``: the precomputed mask, else computed from the image."""
        key = self.brain_mask_key
        if key is not None and isinstance(batchdata, Mapping) and isinstance(batchdata.get(key), torch.Tensor):
            mask = batchdata[key].to(device=inputs.device, non_blocking=self.non_blocking)
        else:
            mask = brain_mask(inputs, channel_dim=1)
        return convert_to_tensor(mask, track_meta=False)

    def _accumulation_flags(self, engine: DistillationTrainer) -> tuple[bool, bool]:
        """``(zero the gradients before, step the optimiser after)`` this iteration, as in ``SupervisedTrainer``."""
        acc = engine.accumulation_steps
        if acc <= 1:
            return True, True
        epoch_length = engine.state.epoch_length
        if epoch_length is not None:
            local_iter = (engine.state.iteration - 1) % epoch_length
            return local_iter % acc == 0, (local_iter + 1) % acc == 0 or (local_iter + 1) == epoch_length
        local_iter = engine.state.iteration - 1
        return local_iter % acc == 0, (local_iter + 1) % acc == 0

    def _iteration(self, engine: DistillationTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """
        One distillation step (see the class docstring).

        Args:
            engine: this trainer.
            batchdata: a collated batch: ``image`` ``(B, C, H, W, D)``, optionally ``label``
                ``(B, 3, H, W, D)`` (``(B_l, 3, H, W, D)`` with ``num_labelled`` = ``B_l`` in a paired
                batch) and ``brain_mask`` ``(B, 1, H, W, D)``.

        Returns:
            ``engine.state.output`` (see the class docstring).

        Raises:
            ValueError: when ``batchdata`` is None.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) == 2:
            inputs, targets = batch
            args: tuple = ()
            kwargs: dict = {}
        else:
            inputs, targets, args, kwargs = batch
        mask = self._brain_mask(batchdata, inputs) if engine.loss_function.needs_mask else None
        num_labelled = batchdata.get(NUM_LABELLED_KEY) if isinstance(batchdata, Mapping) else None
        engine.state.output = {Keys.IMAGE: inputs}
        if targets is not None:
            engine.state.output[Keys.LABEL] = targets
        loss_fn = engine.loss_function
        student_paths, teacher_paths = loss_fn.student_paths, loss_fn.teacher_paths

        def _compute_pred_loss() -> None:
            teacher_logits = None
            with contextlib.ExitStack() as hooks:  # taps only during this forward: validation runs untapped
                s_hooks = t_hooks = None
                if student_paths:
                    s_hooks = hooks.enter_context(FeatureHooks(unwrap_module(engine.network), student_paths))
                if teacher_paths:
                    t_hooks = hooks.enter_context(FeatureHooks(self.teacher, teacher_paths, detach=True))
                if loss_fn.needs_teacher:
                    with torch.no_grad():
                        teacher_logits = engine.inferer(inputs, self.teacher, *args, **kwargs)
                engine.state.output[Keys.PRED] = engine.inferer(inputs, engine.network, *args, **kwargs)
                engine.fire_event(IterationEvents.FORWARD_COMPLETED)
                step = DistillationInputs(
                    student_logits=engine.state.output[Keys.PRED],
                    teacher_logits=teacher_logits,
                    label=targets,
                    num_labelled=num_labelled,
                    mask=mask,
                    student_features=dict(zip(student_paths, s_hooks.features(), strict=True)) if s_hooks else {},
                    teacher_features=dict(zip(teacher_paths, t_hooks.features(), strict=True)) if t_hooks else {},
                    teacher=self.teacher,
                    iteration=engine.state.iteration,
                )
            terms = loss_fn(step)
            engine.state.output[Keys.LOSS] = terms.pop(LOSS_PREFIX).mean()
            engine.state.output.update(terms)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        should_zero_grad, should_step = self._accumulation_flags(engine)
        acc = engine.accumulation_steps
        engine.network.train()
        loss_fn.train()
        if self.teacher is not None:
            self.teacher.eval()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                _compute_pred_loss()
            loss = engine.state.output[Keys.LOSS]
            engine.scaler.scale(loss / acc if acc > 1 else loss).backward()
            average_gradients(loss_fn.parameters())
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if should_step:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
        else:
            _compute_pred_loss()
            loss = engine.state.output[Keys.LOSS]
            (loss / acc if acc > 1 else loss).backward()
            average_gradients(loss_fn.parameters())
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if should_step:
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
