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
from kd_components.hooks import FeatureHooks, resolve_module
from kd_components.losses import DistillationLoss
from kd_components.networks.utils import unwrap_module
from kd_components.transforms import brain_mask

__all__ = ["SCALE_WEIGHT_SOURCES", "DistillationTrainer"]

#: Where the per-scale weights of the feature loss come from: the teacher's learned fusion weights
#: (``teacher.scale_weights()``, detached) or the feature loss's own fixed weights.
SCALE_WEIGHT_SOURCES: tuple[str, ...] = ("teacher", "fixed")


class DistillationTrainer(SupervisedTrainer):
    """
    MONAI's :class:`~monai.engines.SupervisedTrainer` with a frozen teacher and a
    :class:`~kd_components.losses.DistillationLoss`.

    Each iteration runs the teacher (eval mode, ``torch.no_grad()``) and the student on the same batch
    ``image`` ``(B, 4, H, W, D)``, taps the feature maps named in the loss's ``feature_loss.pairs`` with
    :class:`~kd_components.hooks.FeatureHooks` on both networks (so any eager network can be the
    student), and minimises ``task + alpha * soft + beta * feature``:

    - the task term (e.g. DiceCE on sigmoid) only for batches with a ``label``; batches without one
      (unlabelled scans, see :class:`~kd_components.data.MixedBatchLoader`) learn from the KD terms alone;
      in a paired batch (``num_labelled`` = ``B_l``: labelled samples first, then unlabelled ones) the
      task term uses the first ``B_l`` samples and the KD terms all of them;
    - the soft-target term over brain voxels: the batch's ``brain_mask_key`` entry ``(B, 1, H, W, D)``
      when present (computed before intensity augmentation, see ``kd_components.transforms.BrainMaskd``),
      else :func:`~kd_components.transforms.brain_mask` of the image;
    - the feature term weighted per scale by the teacher's learned fusion weights
      (``feature_scale_weights="teacher"``: ``teacher.scale_weights()`` detached, restricted to the tapped
      scales) or by the feature loss's fixed weights (``"fixed"``).

    When neither KD term is active (``alpha = beta = 0``) the teacher is not run at all: the step is
    exactly the supervised baseline. The teacher stays frozen (``requires_grad=False``) and in eval mode
    (re-set every iteration, after ``network.train()``), so its weights and buffers never change.

    The iteration follows ``SupervisedTrainer._iteration``: the same events fire
    (``IterationEvents.FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``,
    ``MODEL_COMPLETED``), AMP uses ``torch.autocast("cuda")`` and the trainer's GradScaler when ``amp``
    is true, and ``optim_set_to_none`` and ``accumulation_steps`` behave as there. So checkpoint, metric,
    stats and MLflow handlers work unchanged. ``engine.state.output`` holds ``image``, ``label`` (labelled
    batches only), ``pred`` (student logits ``(B, 3, H, W, D)``), ``loss`` (the total) and the
    unweighted terms ``loss_task``, ``loss_soft``, ``loss_feature`` (detached scalars; 0 when not
    computed); :func:`~kd_components.handlers.loss_components` gives them to logging handlers.

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
        feature_scale_weights: str = "teacher",
        brain_mask: bool = True,
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
                frozen and put in eval mode here. Needed when a KD term is active; may be ``None`` otherwise.
            feature_scale_weights: ``"teacher"`` or ``"fixed"`` (see the class docstring). Defaults to "teacher".
            brain_mask: restrict the soft-target term to brain voxels. Defaults to True.
            brain_mask_key: batch key of a precomputed brain mask ``(B, 1, H, W, D)``; when absent from a
                batch (or ``None``), the mask is ``image != 0`` in any channel. Defaults to "brain_mask".
            kwargs: other arguments of :class:`~monai.engines.SupervisedTrainer` (``inferer``,
                ``postprocessing``, ``key_train_metric``, ``train_handlers``, ``amp``, ``epoch_length``,
                ``optim_set_to_none``, ``accumulation_steps``, ...); ``iteration_update`` and ``compile``
                are not supported (the first replaces this step, the second the hooked modules).

        Raises:
            TypeError: if ``loss_function`` is not a ``DistillationLoss``.
            ValueError: for a missing teacher, unknown feature paths, an unknown ``feature_scale_weights``,
                a teacher without ``scale_weights()``/``feature_modules()`` with ``"teacher"`` weights, a
                teacher that shares parameters with the student, or an unsupported argument.
        """
        if not isinstance(loss_function, DistillationLoss):
            raise TypeError(f"loss_function must be a DistillationLoss, got {type(loss_function).__name__}")
        for unsupported in ("iteration_update", "compile"):
            if kwargs.get(unsupported):
                raise ValueError(f"DistillationTrainer does not support {unsupported}=...")
        if feature_scale_weights not in SCALE_WEIGHT_SOURCES:
            raise ValueError(
                f"feature_scale_weights must be one of {SCALE_WEIGHT_SOURCES}, got {feature_scale_weights!r}"
            )
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
        self.needs_teacher = loss_function.soft_active or loss_function.feature_active
        if self.needs_teacher and teacher is None:
            raise ValueError(
                "DistillationTrainer: a teacher is needed when alpha * soft_loss or beta * feature_loss is active"
            )
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
        self.feature_scale_weights = feature_scale_weights
        self.brain_mask = brain_mask
        self.brain_mask_key = brain_mask_key
        self._scale_index: list[int] | None = None
        if loss_function.feature_active:
            feature_loss = loss_function.feature_loss
            for path in feature_loss.student_paths:
                resolve_module(unwrap_module(network), path)  # fail now, not at the first iteration
            for path in feature_loss.teacher_paths:
                resolve_module(teacher, path)
            if feature_scale_weights == "teacher":
                self._scale_index = self._teacher_scale_index(teacher, feature_loss.teacher_paths)

    @staticmethod
    def _teacher_scale_index(teacher: nn.Module, paths: list[str]) -> list[int]:
        """Positions of ``paths`` among the teacher's fused scales (``teacher.feature_modules()``)."""
        has_scales = callable(getattr(teacher, "scale_weights", None))
        if not (has_scales and callable(getattr(teacher, "feature_modules", None))):
            raise ValueError(
                f'feature_scale_weights="teacher" needs a teacher with scale_weights() and feature_modules() '
                f'(a HybridTeacher); {type(teacher).__name__} has not: use "fixed"'
            )
        modules = list(teacher.feature_modules())
        unknown = [p for p in paths if p not in modules]
        if unknown:
            raise ValueError(
                f'feature_scale_weights="teacher": teacher paths {unknown} are not its weighted scales {modules}; '
                'tap those, or use "fixed"'
            )
        return [modules.index(p) for p in paths]

    def scale_weights(self) -> torch.Tensor | None:
        """Per-scale weights ``(num_pairs,)`` for the feature loss this iteration (``None``: the loss's fixed ones)."""
        if self._scale_index is None or self.teacher is None:
            return None
        with torch.no_grad():
            weights = self.teacher.scale_weights().detach().float()
        return weights[self._scale_index]

    def _soft_mask(self, batchdata: Any, inputs: torch.Tensor) -> torch.Tensor | None:
        """The voxels of the soft-target term ``(B, 1, H, W, D)``, or ``None`` for all voxels."""
        if not (self.brain_mask and self.loss_function.soft_active):
            return None
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
        mask = self._soft_mask(batchdata, inputs)
        num_labelled = batchdata.get(NUM_LABELLED_KEY) if isinstance(batchdata, Mapping) else None
        engine.state.output = {Keys.IMAGE: inputs}
        if targets is not None:
            engine.state.output[Keys.LABEL] = targets
        loss_fn = engine.loss_function
        feature_loss = loss_fn.feature_loss if loss_fn.feature_active else None

        def _compute_pred_loss() -> None:
            teacher_logits = teacher_feats = student_feats = None
            with contextlib.ExitStack() as hooks:  # taps only during this forward: validation runs untapped
                if feature_loss is not None:
                    s_hooks = hooks.enter_context(
                        FeatureHooks(unwrap_module(engine.network), feature_loss.student_paths)
                    )
                    t_hooks = hooks.enter_context(FeatureHooks(self.teacher, feature_loss.teacher_paths, detach=True))
                if self.needs_teacher:
                    with torch.no_grad():
                        teacher_logits = engine.inferer(inputs, self.teacher, *args, **kwargs)
                    teacher_feats = t_hooks.features() if feature_loss is not None else None
                engine.state.output[Keys.PRED] = engine.inferer(inputs, engine.network, *args, **kwargs)
                engine.fire_event(IterationEvents.FORWARD_COMPLETED)
                student_feats = s_hooks.features() if feature_loss is not None else None
            terms = loss_fn(
                engine.state.output[Keys.PRED],
                teacher_logits,
                targets,
                student_feats,
                teacher_feats,
                mask=mask,
                scale_weights=self.scale_weights() if feature_loss is not None else None,
                num_labelled=num_labelled,
            )
            engine.state.output[Keys.LOSS] = terms.pop("loss").mean()
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
