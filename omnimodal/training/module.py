"""LightningModule around OmniModel: stages decide what trains; frozen parts stay in eval mode."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch

from omnimodal.model import OmniModel, label_token_count


def apply_stage(model: OmniModel, stage: dict[str, Any], modality_cfgs: dict[str, dict[str, Any]]) -> None:
    """Set requires_grad and the exact train/eval mode of every module per the stage.

    A ``lora`` entry in the stage wraps the decoder with PEFT adapters: then only the adapters
    train in the decoder (their modules in train mode, the frozen base in eval mode). Under a
    frozen decoder (``align``, ``lora``) the tokens omnimodal added get trainable rows in the
    input embeddings and the LM head unless ``stage.train_new_tokens`` is false. Ends with
    ``model.train()``: a pretrained decoder arrives in eval mode, and Lightning keeps each
    module's mode as it finds it (and restores it after validation).
    """
    lora = stage.get("lora")
    if lora and not model.has_lora:
        model.apply_lora(**lora)
    train_decoder = bool(stage.get("train_decoder", True)) and not lora
    model.set_trainable("decoder", train_decoder)
    if lora:
        for name, p in model.decoder.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
    model.train_new_tokens(not train_decoder and bool(stage.get("train_new_tokens", True)))
    for name in model.modalities:
        if (modality_cfgs.get(name) or {}).get("shared_with") or model.modalities[name].cfg.get("shared_with"):
            continue  # it runs its owner's encoder and projector: their settings apply
        own = bool((modality_cfgs.get(name) or {}).get("train_encoder", True))
        model.set_trainable(f"encoders.{name}", bool(stage.get("train_encoders", True)) and own)
        model.set_trainable(f"projectors.{name}", bool(stage.get("train_projectors", True)))
    model.train()


def component_of(param_name: str) -> str:
    """``encoders.vision.x.y`` -> ``encoders.vision``; ``decoder.model...`` -> ``decoder``."""
    parts = param_name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("encoders", "projectors") else parts[0]


def component_lr(component: str, stage: dict[str, Any]) -> float:
    """The learning rate of one component: ``<kind>_lr`` in the stage, else ``lr``."""
    base = float(stage.get("lr", 5e-4))
    kind = {"encoders": "encoder_lr", "projectors": "projector_lr", "decoder": "decoder_lr", "new_tokens": "decoder_lr"}[component.split(".")[0]]
    value = stage.get(kind)
    return base if value is None else float(value)


def parameter_groups(model: OmniModel, weight_decay: float, stage: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Trainable parameters grouped per component (own learning rate), no decay on biases and norms."""
    stage = stage or {}
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((component_of(name), p.ndim >= 2), []).append(p)
    return [
        {"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": component_lr(comp, stage), "name": f"{comp}{'' if decay else '/no_decay'}"}
        for (comp, decay), ps in sorted(groups.items())
    ]


def parameter_table(model: OmniModel, stage: dict[str, Any]) -> str:
    """A table of trainable vs frozen parameters (and learning rate) per component."""
    rows: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        row = rows.setdefault(component_of(name), [0, 0])
        row[0 if p.requires_grad else 1] += p.numel()
    lines = [f"{'component':<24} {'trainable':>12} {'frozen':>12} {'lr':>9} {'mode':>6}", "-" * 67]
    for comp, (train, frozen) in sorted(rows.items()):
        lr = f"{component_lr(comp, stage):.1e}" if train else "-"
        mode = "train" if model.get_submodule(comp).training else "eval"
        lines.append(f"{comp:<24} {train:>12,} {frozen:>12,} {lr:>9} {mode:>6}")
    total_t = sum(r[0] for r in rows.values())
    total_f = sum(r[1] for r in rows.values())
    lines.append(f"{'total':<24} {total_t:>12,} {total_f:>12,}")
    return "\n".join(lines)


class OmniLightningModule(L.LightningModule):
    """Trains an :class:`OmniModel` with AdamW, warmup and cosine decay.

    Pass the model itself, or a ``build`` function: then the model is built in
    ``configure_model`` (so strategies such as FSDP can shard a large decoder as it is made).
    """

    def __init__(self, model: OmniModel | Callable[[], OmniModel], stage: dict[str, Any], modality_cfgs: dict[str, Any] | None = None, model_signature: dict[str, Any] | None = None, skip_nonfinite: bool = False, compile: bool | dict[str, Any] = False, pretrain_encoders: dict[str, Any] | None = None):
        super().__init__()
        self.compile_options = compile_options(compile)
        # Encoder pre-training before the first step (omnimodal.training.encoder_pretraining).
        self.pretrain_encoders = dict(pretrain_encoders or {})
        self.pretrain_summary: dict[str, Any] = {}
        self.frozen_after_pretraining: list[str] = []  # encoders frozen once pre-trained (kept in checkpoints)
        self.stage = dict(stage)
        self.modality_cfgs = dict(modality_cfgs or {})
        self.data_events: dict[str, int] = {}  # e.g. {"audio.clips_cut": 3} over the first epoch
        self.skip_nonfinite = bool(skip_nonfinite)
        self.nonfinite_skipped: list[str] = []  # "step s, epoch e, batch b: sources" per skipped batch
        self._window_tokens = torch.zeros((), dtype=torch.long)
        self._window_bad = False
        self._build = None if isinstance(model, torch.nn.Module) else model
        self.model = model if isinstance(model, torch.nn.Module) else None
        if self.model is not None:
            apply_stage(self.model, self.stage, self.modality_cfgs)
        # Plain containers only: an OmegaConf object here breaks weights_only checkpoint loading.
        self.save_hyperparameters({"stage": self.stage, "model_signature": model_signature or {}}, logger=False)

    def configure_model(self) -> None:
        if self.model is None:
            self.model = self._build()
            apply_stage(self.model, self.stage, self.modality_cfgs)
        if int(self.pretrain_encoders.get("epochs") or 0) > 0 and not self.pretrain_summary and self.trainer.state.fn == "fit":
            self._pretrain_encoders()
        if self.compile_options is not None:
            # In place (nn.Module.compile): parameter names and checkpoints stay as they are.
            self.model.decoder.compile(**self.compile_options)

    def _pretrain_encoders(self) -> None:
        """Here, before the strategy wraps the model: under DDP every rank pre-trains and DDP
        then starts every rank from rank 0's weights."""
        from omnimodal.training.encoder_pretraining import pretrain_encoders

        dm = self.trainer.datamodule
        with outside_torch_function_modes():
            self.pretrain_summary = pretrain_encoders(
                self.model, dm.load_records()["train"], self.pretrain_encoders, seed=int(dm.cfg.get("seed", 0)),
                num_workers=dm.num_workers(), device=self.trainer.strategy.root_device,
                on_error=dm.on_error, report=dm.report,
            )
        if self.pretrain_encoders.get("freeze_encoders"):
            self._freeze_encoders(sorted(self.pretrain_summary))
            for name in self.frozen_after_pretraining:
                self.pretrain_summary[name]["encoder_frozen_after"] = True

    def _freeze_encoders(self, names: list[str]) -> None:
        """Freeze these modalities' encoders (their projectors train on) for the language model's
        training: it then starts from what pre-training learned and does not unlearn it."""
        for name in names:
            if any(p.requires_grad for p in self.model.encoders[name].parameters()):
                self.model.set_trainable(f"encoders.{name}", False)
                self.frozen_after_pretraining.append(name)

    def on_fit_end(self) -> None:
        """Back to the eager decoder: generation after training (evaluation, chat) feeds it
        cache-dependent shapes that would only recompile."""
        if self.compile_options is not None and self.model is not None:
            self.model.decoder._compiled_call_impl = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep every rank's random generator states (dropout) so a resumed run continues them exactly."""
        from omnimodal.training.rng import gather_rng_states

        checkpoint["omnimodal_rng_per_rank"] = gather_rng_states()  # a collective: every rank dumps
        checkpoint["omnimodal_frozen_after_pretraining"] = list(self.frozen_after_pretraining)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume with another model, tokenizer or data; restore this rank's RNG states."""
        from omnimodal.errors import ConfigError
        from omnimodal.training.rng import restore_rank_state
        from omnimodal.training.signature import signature_changes

        saved = checkpoint.get("hyper_parameters", {}).get("model_signature")
        current = self.hparams.get("model_signature")
        changes = signature_changes(saved or {}, current or {})
        if changes:
            raise ConfigError("cannot resume: changed since the checkpoint was written:\n  " + "\n  ".join(changes))
        # Before the optimizer is built (Lightning restores modules first): the same parameters train.
        self._freeze_encoders(list(checkpoint.get("omnimodal_frozen_after_pretraining", [])))
        states = checkpoint.get("omnimodal_rng_per_rank")
        if states:
            trainer = self._trainer
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            restore_rank_state(states, rank, world)

    def on_train_start(self) -> None:
        """Exact modes from the first step (also after a resume: Lightning calls no ``train()``),
        and Lightning's extra epoch count undone when resuming from an end-of-epoch checkpoint.

        Under ``max_steps`` Lightning restarts such a checkpoint by replaying the finished epoch's
        end (no batches), which counts the epoch as processed a second time. The count then
        stays one ahead for the rest of the run: ``set_epoch`` hands every later epoch the next
        epoch's data order, and ``max_epochs`` stops the run an epoch early. Without
        ``max_steps`` Lightning does not replay, and this does nothing.
        """
        self.train()
        fit_loop = self.trainer.fit_loop
        if fit_loop.restarted_on_epoch_end:
            fit_loop.epoch_progress.current.processed -= 1
            fit_loop.epoch_progress.total.processed -= 1

    def train(self, mode: bool = True):
        super().train(mode)
        if self.model is not None:
            self.model.train(mode)  # re-applies eval() to frozen parts
        return self

    def _step(self, batch: dict[str, Any], reduction: str = "mean") -> torch.Tensor:
        out = self.model(**batch, loss_reduction=reduction)
        loss = out.loss
        if self.training and self.trainer.world_size > 1:
            loss = loss + self._touch_idle(batch)
        return loss

    def _touch_idle(self, batch: dict[str, Any]) -> torch.Tensor:
        """Zero-weight touch of modalities absent from this batch, so DDP sees every parameter used.

        DDP's gradient all-reduce waits for every parameter; a modality missing from one rank's
        batch would otherwise hang or crash it (``find_unused_parameters`` costs a graph walk
        per step instead).
        """
        idle = [part for name in self.model.modalities if name not in batch["media"]
                for part in (self.model.encoders[name], self.model.projectors[name])]
        return self._zero_touch(p for part in idle for p in part.parameters())

    def _zero_touch(self, params) -> torch.Tensor:
        """A zero loss that each trainable parameter of ``params`` takes part in (so DDP's
        gradient all-reduce counts them used; finite even where the batch's loss is not)."""
        total = torch.zeros((), device=self.device)
        for p in params:
            if p.requires_grad:
                total = total + p.sum() * 0.0
        return total

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        """This micro-batch's loss, so that the step's gradient is the mean over its label tokens.

        The loss of an optimizer step is the sum of the token losses of all its label tokens
        divided by their count, across accumulated micro-batches and DDP ranks, so long and
        short answers weigh the same wherever they land: accumulation 4 x batch 4 gives the
        gradients of batch 16. Without accumulation the step's token count is known here (all
        ranks' counts summed): the summed loss is divided by it (times the world size, since DDP
        averages gradients) and the gradients need no pass. With accumulation the summed loss is
        returned and :meth:`on_before_optimizer_step` divides the gradients.
        """
        if self.current_epoch == 0:  # one pass over the data: report each item's events once
            for key, n in (batch.get("events") or {}).items():
                self.data_events[key] = self.data_events.get(key, 0) + n
        loss_sum = self._step(batch, reduction="sum")
        tokens = label_token_count(batch["labels"])
        whole_step = self.trainer.accumulate_grad_batches == 1
        finite, step_tokens = self._finite_and_tokens(loss_sum, tokens if whole_step else None)
        if not finite:
            return self._nonfinite(batch, batch_idx, loss_sum)
        n = batch["input_ids"].shape[0]
        self.log("train/loss", loss_sum.detach() / tokens.clamp(min=1), prog_bar=True, batch_size=n)
        if whole_step:
            return loss_sum * (self.trainer.world_size / step_tokens.clamp(min=1)).to(loss_sum.dtype)
        self._window_tokens = self._window_tokens.to(tokens.device) + tokens.detach()
        return loss_sum

    def _finite_and_tokens(self, loss: torch.Tensor, tokens: torch.Tensor | None) -> tuple[bool, torch.Tensor | None]:
        """Is the loss finite on every rank (all ranks must agree to skip or stop together), and
        the label tokens summed over ranks (float64: exact) when ``tokens`` is given; one
        all-reduce for both under DDP."""
        bad = (~torch.isfinite(loss.detach())).to(torch.float64)
        total = tokens.to(torch.float64) if tokens is not None else None
        if self.trainer.world_size > 1:
            both = self.trainer.strategy.reduce(torch.stack([bad, total if total is not None else torch.zeros_like(bad)]), reduce_op="sum")
            bad, total = both[0], (both[1] if total is not None else None)
        return not bool(bad), total

    def _nonfinite(self, batch: dict[str, Any], batch_idx: int, loss: torch.Tensor) -> torch.Tensor | None:
        """Stop naming the batch's records, or (``trainer.skip_nonfinite``) skip the whole step:
        ``None`` (no backward), or under DDP a zero loss that every rank backpropagates."""
        from omnimodal.errors import NonFiniteLossError

        sources = self._nonfinite_sources(batch, loss)
        where = f"step {self.global_step}, epoch {self.current_epoch}, batch {batch_idx}"
        if not self.skip_nonfinite:
            raise NonFiniteLossError(
                f"non-finite training loss at {where}; the batch's records: "
                f"{sources}. Set trainer.skip_nonfinite=true to skip such steps instead (counted and "
                "reported)."
            )
        self._window_bad = True
        self.nonfinite_skipped.append(f"{where}: {sources}")
        if self.trainer.world_size > 1:
            # Lightning refuses a skipped (None) step under DDP, and every rank must join the
            # gradient all-reduce: backpropagate a zero (finite, unlike 0 * NaN) through every
            # trainable parameter; on_before_optimizer_step then drops the gradients.
            return self._zero_touch(self.model.parameters())
        return None

    def _nonfinite_sources(self, batch: dict[str, Any], loss: torch.Tensor) -> str:
        """The records of the batch whose loss is non-finite (the loss value with them); under
        DDP, of every rank whose loss is, gathered (all ranks are here together: they agreed)."""
        sources = ", ".join(batch.get("sources") or []) or "(sources unknown)"
        value = float(loss.detach())
        if self.trainer.world_size == 1:
            return f"{sources} (loss {value})"
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.trainer.world_size
        dist.all_gather_object(gathered, (value, sources))
        return "; ".join(f"rank {r}: {s} (loss {v})" for r, (v, s) in enumerate(gathered) if not math.isfinite(v))

    def on_before_optimizer_step(self, optimizer) -> None:
        """Drop a step holding a non-finite loss; under accumulation, divide the gradients by the
        label tokens of the whole optimizer step.

        A dropped step has every gradient set to None, so the optimizer changes nothing. Under
        accumulation each micro-batch returned its *summed* token loss; Lightning divided it by
        ``accumulate_grad_batches`` and DDP averaged over ranks, so multiplying by
        ``accumulate * world_size / tokens`` (tokens all-reduced over ranks) leaves
        sum(token losses) / tokens. Without accumulation :meth:`training_step` already divided
        the loss and nothing here touches the gradients.
        """
        bad = self._window_bad
        self._window_bad = False
        if bad:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self._window_tokens = torch.zeros((), dtype=torch.long, device=self.device)
            self.log("train/skipped_nonfinite", float(len(self.nonfinite_skipped)), batch_size=1)
            return
        accumulate = self.trainer.accumulate_grad_batches
        if accumulate == 1:
            return
        tokens = self._window_tokens
        self._window_tokens = torch.zeros((), dtype=torch.long, device=self.device)
        if self.trainer.world_size > 1:
            tokens = self.trainer.strategy.reduce(tokens.to(self.device), reduce_op="sum")
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            scale = (accumulate * self.trainer.world_size) / tokens.clamp(min=1).to(torch.float32)
            torch._foreach_mul_(grads, scale.to(grads[0].device))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        return loss

    def _total_steps(self) -> int:
        """Optimizer steps in the run, for the schedule.

        Not ``trainer.estimated_stepping_batches``: called here it builds the train loader before
        a checkpoint's loop state is restored, and Lightning then skips restoring the loader's
        position, so a resumed run would replay the epoch from its start.
        """
        from omnimodal.training.datamodule import batches_per_epoch

        trainer = self.trainer
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        dm = trainer.datamodule
        n = len(dm.train_set) if dm is not None and hasattr(dm, "train_set") else 0
        if not n or trainer.max_epochs is None or trainer.max_epochs < 0:
            return max_steps or max(1, int(trainer.estimated_stepping_batches))
        # The loader's own count (one function with the sampler's arithmetic): length grouping and
        # packing change which conversations share a batch, never how many batches there are.
        batches = batches_per_epoch(n, int(dm.cfg.get("batch_size", 32)), trainer.world_size)
        if isinstance(trainer.limit_train_batches, int):
            batches = min(batches, trainer.limit_train_batches)
        elif trainer.limit_train_batches is not None:
            batches = int(batches * trainer.limit_train_batches)
        by_epochs = max(1, math.ceil(batches / trainer.accumulate_grad_batches) * trainer.max_epochs)
        # Whichever limit binds first ends the run (max_steps above the epochs' steps never comes).
        return min(max_steps, by_epochs) if max_steps else by_epochs

    def configure_optimizers(self):
        groups = parameter_groups(self.model, float(self.stage.get("weight_decay", 0.0)), self.stage)
        # Lightning refuses gradient clipping with a fused optimizer under mixed precision (the kernel
        # would unscale 16-bit gradients itself): there, AdamW's default implementation.
        mixed = "mixed" in str(getattr(self._trainer, "precision", ""))
        opt = adamw(groups, fused=not mixed, lr=float(self.stage.get("lr", 5e-4)), betas=tuple(self.stage.get("betas", (0.9, 0.999))))
        total = self._total_steps()
        warmup = int(total * float(self.stage.get("warmup_ratio", 0.0)))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / max(1, warmup)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@contextmanager
def outside_torch_function_modes() -> Iterator[None]:
    """Run the block with no ``TorchFunctionMode`` active, and restore the modes after it.

    Lightning calls ``configure_model`` inside its tensor-init context: ``torch.device(...)`` and
    its ``_EmptyInit``, two modes that route *every* torch call through Python. Fine for building
    a model; encoder pre-training makes ~0.9M torch calls (the molecule demo's, 4 epochs on the
    2-core CPU: 38.4 s inside the modes, 28.7 s outside). It passes its device explicitly, so it
    needs neither.
    """
    try:  # private to torch, stable since 2.0; tests/test_encoder_pretraining.py checks them
        from torch.overrides import _len_torch_function_stack, _pop_mode, _push_mode
    except ImportError:  # a torch without them: the block runs inside the modes, only slower
        yield
        return
    modes = [_pop_mode() for _ in range(_len_torch_function_stack())]
    try:
        yield
    finally:
        for mode in reversed(modes):
            _push_mode(mode)


def adamw(groups: list[Any], fused: bool = True, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW with PyTorch's fused kernel (one kernel for all parameters) where the parameters'
    device has one (CPU, CUDA, ...) and ``fused``, else the default implementation. On the CPU the
    default is a Python loop over the parameters: ~16 ms a step for a 4M-parameter decoder against
    ~4 ms fused."""
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except RuntimeError:  # a device or dtype without the fused kernel
            pass
    return torch.optim.AdamW(groups, **kwargs)


def compile_options(compile: bool | dict[str, Any] | None) -> dict[str, Any] | None:
    """``trainer.compile``: false (eager), true (``torch.compile`` defaults) or ``torch.compile``'s
    keyword arguments (e.g. ``{mode: max-autotune, dynamic: true}``); ``None`` means eager."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return {}
    if isinstance(compile, dict):
        return dict(compile)
    from omnimodal.errors import ConfigError

    raise ConfigError(f"trainer.compile must be true, false or a mapping of torch.compile arguments, not {compile!r}")


def trained_model(trainer: L.Trainer, module: OmniLightningModule, rebuild: Callable[[], OmniModel]) -> OmniModel | None:
    """The trained model as a plain, whole :class:`OmniModel` on rank 0 (``None`` on other ranks).

    Under FSDP each rank holds only its shard of ``module.model``'s parameters (on one device
    too, the parameters are views into FSDP's flat buffers), so the full state dict is gathered
    (a collective: every rank must call this) and loaded into a model from ``rebuild`` on
    rank 0. Other strategies hold the whole model on every rank and it is returned as it is.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return module.model if trainer.global_rank == 0 else None
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    wrapped = trainer.strategy.model
    if FSDP.fsdp_modules(wrapped):
        config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, config):
            state = wrapped.state_dict()
    else:  # nothing was wrapped: the plain state dict is already whole
        state = wrapped.state_dict()
    if trainer.global_rank != 0:
        return None
    model = rebuild()
    apply_stage(model, module.stage, module.modality_cfgs)
    prefix = "model."
    model.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    model.extra = dict(module.model.extra)
    return model


class FSDPLightningModule(OmniLightningModule):
    """The module used under ``strategy=fsdp``: the same, with gradient clipping through FSDP.

    A subclass, so that other strategies keep Lightning's own clipping hook untouched.
    """

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by norm through FSDP itself (Lightning's own clipping refuses norm under FSDP).

        ``FullyShardedDataParallel.clip_grad_norm_`` takes the norm over every rank's shard, so
        the result is the same as clipping the whole model's gradients in one process.
        """
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
