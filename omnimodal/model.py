"""OmniModel: per-modality encoders and projectors around one Hugging Face causal LM.

Forward pass, top to bottom::

    embeds = decoder.embed(input_ids)
    for each modality in the batch (one encoder call per modality):
        features, mask = encoder(**media[modality])          # [N, L, d_enc]
        tokens, mask = projector(features, mask)             # [N, M, d_model]
        embeds[input_ids == placeholder] = tokens[mask]      # one masked_scatter
    decoder(inputs_embeds=embeds, ...)

State-dict keys are stable (see ``docs`` in README): ``decoder.<HF keys>``,
``encoders.<modality>.<...>``, ``projectors.<modality>.<...>``.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omnimodal.compat import check_torch_stack, require_extra

check_torch_stack()  # a clear error for a torch/torchaudio pair that cannot import together

import torch  # noqa: E402
from torch import nn  # noqa: E402

from omnimodal.decoder import (  # noqa: E402
    add_placeholders,
    build_decoder,
    decoder_from_config,
    load_tokenizer,
    new_token_rows,
    train_bpe_tokenizer,
)
from omnimodal.errors import ConfigError, PluginError, SpliceError  # noqa: E402
from omnimodal.modality import Modality, build_encoder_checked  # noqa: E402
from omnimodal.projectors import build_projector  # noqa: E402
from omnimodal.templates import ChatFormat, chat_format, merge_eos, set_chat_format  # noqa: E402

FORMAT_VERSION = 1
CONFIG_NAME = "omnimodal.json"
WEIGHTS_NAME = "model.safetensors"


def build_modalities(cfg: dict[str, dict[str, Any]]) -> dict[str, Modality]:
    """Instantiate each configured modality through the plugin registry."""
    from omnimodal.plugins import get_registry
    from omnimodal.specs import import_object

    registry = get_registry()
    out = {}
    for name, mcfg in cfg.items():
        spec = registry.modality(name)
        out[name] = import_object(spec.impl)(spec, dict(mcfg or {}))
    link_shared(out)
    return out


def link_shared(modalities: dict[str, Modality]) -> None:
    """Resolve ``shared_with: <owner>`` in a modality's config: it will run the owner's encoder
    and projector (one parameter set). The sharer takes the owner's projector config (so its
    token counts match) and adopts the owner's input settings through ``share_from``."""
    import copy
    import logging

    for name, modality in modalities.items():
        owner = modality.cfg.get("shared_with")
        if not owner:
            continue
        if owner == name or owner not in modalities:
            active = ", ".join(n for n in modalities if n != name) or "none"
            raise ConfigError(f"modalities.{name}.shared_with={owner!r}: it must name another active modality (active: {active})")
        if modalities[owner].cfg.get("shared_with"):
            raise ConfigError(f"modalities.{name}.shared_with={owner!r}: {owner!r} itself shares {modalities[owner].cfg['shared_with']!r}; share with the owner directly")
        own, theirs = _plain(modality.cfg.get("projector")), _plain(modalities[owner].cfg.get("projector") or {"kind": "mlp"})
        if own and own != theirs:
            logging.getLogger(__name__).warning("modalities.%s.projector %s is not used: it shares %s's projector %s", name, own, owner, theirs)
        modality.cfg["projector"] = copy.deepcopy(theirs)
        modality.share_from(modalities[owner])


def build_parts(modalities: dict[str, Modality], d_model: int, load_weights: bool = True) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """Each modality's encoder and projector; a modality with ``shared_with`` gets its owner's
    modules (the encoder wrapped by ``wrap_shared_encoder``). Owners come first in the dicts, so
    ``named_parameters`` names shared parameters after the owner."""
    encoders: dict[str, nn.Module] = {}
    projectors: dict[str, nn.Module] = {}
    for name in sorted(modalities, key=lambda n: bool(modalities[n].cfg.get("shared_with"))):
        modality = modalities[name]
        owner = modality.cfg.get("shared_with")
        if owner:
            encoders[name] = modality.wrap_shared_encoder(encoders[owner])
            projectors[name] = projectors[owner]
        else:
            encoders[name] = build_encoder_checked(modality, load_weights=load_weights)
            projectors[name] = build_projector(_projector_cfg(modality), encoders[name].out_dim, d_model)
    return encoders, projectors


def build_tokenizer(decoder_cfg: dict[str, Any], texts: list[str] | None = None):
    """A scratch decoder's BPE tokenizer (trained on ``texts``) or a pretrained one by path."""
    kwargs = dict(decoder_cfg.get("chat_template_kwargs") or {})
    if decoder_cfg.get("kind") == "scratch":
        if not texts:
            raise ConfigError("a scratch decoder needs training texts to build its tokenizer")
        tcfg = decoder_cfg.get("tokenizer") or {}
        tok = train_bpe_tokenizer(texts, int(tcfg.get("vocab_size", 600)))
        chat_format(tok).template_kwargs = kwargs
        return tok
    return load_tokenizer(decoder_cfg.get("path"), decoder_cfg.get("chat_template", "auto"), kwargs)


class OmniModel(nn.Module):
    """Encoders + projectors per modality, spliced into one causal LM's input embeddings."""

    def __init__(self, decoder: nn.Module, tokenizer, modalities: dict[str, Modality], encoders: dict[str, nn.Module], projectors: dict[str, nn.Module], decoder_cfg: dict[str, Any] | None = None):
        super().__init__()
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.modalities = modalities
        self.encoders = nn.ModuleDict(encoders)
        self.projectors = nn.ModuleDict(projectors)
        self.decoder_cfg = dict(decoder_cfg or {})
        fmt = chat_format(tokenizer)  # before placeholders: its base vocabulary excludes them
        self.placeholder_ids = add_placeholders(tokenizer, [m.placeholder for m in modalities.values()])
        if decoder.get_input_embeddings().num_embeddings < len(tokenizer):
            # Placeholders added after the decoder was built: give them embedding rows.
            decoder.resize_token_embeddings(len(tokenizer))
        self.modality_token = {name: self.placeholder_ids[m.placeholder] for name, m in modalities.items()}
        # Generation stops on every EOS id: the tokenizer's, the decoder's generation_config's
        # (a list for Llama 3) and omnimodal's end-of-turn token when its template is used.
        gen = getattr(decoder, "generation_config", None)
        fmt.eos_ids = merge_eos(fmt.eos_ids, getattr(gen, "eos_token_id", None))
        if gen is not None:
            gen.eos_token_id = list(fmt.eos_ids) if len(fmt.eos_ids) > 1 else (fmt.eos_ids[0] if fmt.eos_ids else None)
            if tokenizer.pad_token_id is not None:
                gen.pad_token_id = tokenizer.pad_token_id
        self.new_token_ids: list[int] = list(range(fmt.base_vocab_size or len(tokenizer), len(tokenizer)))
        self.new_tokens: nn.Module | None = None
        self.frozen: set[str] = set()
        self.extra: dict[str, Any] = {}
        self._splice_checked: set[str] = set()  # modalities whose projector mask matched the declared counts once

    # ---- construction ----------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: dict[str, Any], tokenizer=None, texts: list[str] | None = None, modalities: dict[str, Modality] | None = None) -> OmniModel:
        """Build from ``{"decoder": ..., "modalities": {...}}``; a scratch decoder's tokenizer is
        trained on ``texts`` unless given. Pre-built ``modalities`` are reused (data workers and
        model then share one preprocessing setup)."""
        dcfg = dict(cfg["decoder"])
        if modalities is None:
            modalities = build_modalities(cfg.get("modalities") or {})
        if tokenizer is None:
            tokenizer = build_tokenizer(dcfg, texts)
        add_placeholders(tokenizer, [m.placeholder for m in modalities.values()])
        decoder = build_decoder(dcfg, tokenizer)
        encoders, projectors = build_parts(modalities, decoder.config.hidden_size, load_weights=True)
        return cls(decoder, tokenizer, modalities, encoders, projectors, dcfg)

    # ---- the splice ------------------------------------------------------------------
    def encode_media(self, name: str, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """encoder -> projector for one modality's batch: ``(tokens [N, M, d], mask [N, M])``.

        A batch from a feature-cached modality (see :mod:`omnimodal.data.feature_cache`) carries
        item keys instead of collated inputs: cached items skip the encoder.
        """
        from omnimodal.data.feature_cache import CACHE_KEY

        if CACHE_KEY in batch:
            cache = getattr(self, "feature_caches", {}).get(name)
            if cache is None:
                raise ConfigError(f"{name}: the batch carries feature-cache keys but the model has no feature cache attached")
            param = next(iter(self.projectors[name].parameters()), None)
            out_dtype = param.dtype if param is not None else torch.float32
            features, mask = cache.encode(self.encoders[name], self.modalities[name].collate, batch, out_dtype)
        else:
            features, mask = self.encoders[name](**batch)
        return self.projectors[name](features, mask)

    def embed(self, input_ids: torch.Tensor, media: dict[str, dict[str, Any]] | None = None, sources: dict[str, list[str]] | None = None,
              splice: dict[str, dict[str, Any]] | None = None) -> torch.Tensor:
        """Text embeddings with each modality's pseudo-tokens scattered into its placeholder slots.

        With ``splice`` (the collator's indices, see :func:`omnimodal.data.dataset.splice_index`)
        the pseudo-tokens are gathered and scattered by index: no data-dependent shape and no
        read of a device value, so no host-device sync per step. Without it (a batch built by
        hand, generation) the placeholder mask is computed here and checked against the
        projector's mask.
        """
        media = media or {}
        unknown = set(media) - set(self.modality_token)
        if unknown:
            raise SpliceError(f"batch has media for modalities this model lacks: {sorted(unknown)}")
        embeds = self.decoder.get_input_embeddings()(input_ids)
        if splice is not None:
            return self._splice_indexed(embeds, media, splice, sources)
        for name, token_id in self.modality_token.items():
            slots = input_ids == token_id
            n_slots = int(slots.sum())
            if name not in media:
                if n_slots:
                    raise SpliceError(f"{n_slots} {self.modalities[name].placeholder} placeholder(s) but no {name} items in the batch")
                continue
            tokens, mask = self.encode_media(name, media[name])
            flat = tokens[mask]
            if flat.shape[0] != n_slots:
                raise SpliceError(self._mismatch(name, input_ids, slots, mask, sources))
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), flat.to(embeds.dtype))
        return embeds

    def _splice_indexed(self, embeds: torch.Tensor, media: dict[str, dict[str, Any]], splice: dict[str, dict[str, Any]], sources: dict[str, list[str]] | None) -> torch.Tensor:
        """The splice by the collator's indices: ``index_select`` from the pseudo-tokens,
        ``index_copy`` into the flat embeddings (the same values and gradients as the mask path).

        Checks that need no device read run every time (item count, longest item vs the
        projector's width); the projector's mask is compared with the declared counts once per
        modality (one sync, the first time), since the plugin contract
        (:func:`omnimodal.testing.check_modality`) asks for valid tokens first in each row.
        """
        b, length, d = embeds.shape
        flat = embeds.reshape(b * length, d)
        for name in self.modality_token:
            index = splice.get(name)
            if name not in media:
                if index is not None and index["slots"].numel():
                    raise SpliceError(f"{index['slots'].numel()} {self.modalities[name].placeholder} placeholder(s) but no {name} items in the batch")
                continue
            counts = index["tokens"] if index is not None else []
            tokens, mask = self.encode_media(name, media[name])
            n, m = tokens.shape[:2]
            if index is None or n != len(counts) or max(counts, default=0) > m:
                raise SpliceError(f"{name}: the batch's splice index covers {len(counts)} item(s) (pseudo-tokens per item: {counts}) "
                                  f"but the projector gave {n} item(s) of at most {m} pseudo-tokens.{_items(name, sources)}")
            if name not in self._splice_checked:
                expected = torch.arange(m)[None, :] < torch.tensor(counts)[:, None]
                if not torch.equal(mask.detach().cpu(), expected):
                    raise SpliceError(f"{name}: the projector's mask does not hold the declared pseudo-tokens first in each row "
                                      f"(declared per item: {counts}; valid per item: {mask.sum(1).tolist()}).{_items(name, sources)}")
                self._splice_checked.add(name)
            gather = index["item"].to(tokens.device, non_blocking=True) * m + index["pos"].to(tokens.device, non_blocking=True)
            source = tokens.reshape(n * m, d).index_select(0, gather)
            flat = flat.index_copy(0, index["slots"].to(flat.device, non_blocking=True), source.to(flat.dtype))
        return flat.view(b, length, d)

    def _mismatch(self, name, input_ids, slots, mask, sources) -> str:
        per_sample = slots.sum(1).tolist()
        per_item = mask.sum(1).tolist()
        where = _items(name, sources)
        return (
            f"{name}: {int(slots.sum())} placeholder tokens in the batch (per sample: {per_sample}) but "
            f"{int(mask.sum())} pseudo-tokens from {len(per_item)} item(s) (per item: {per_item}).{where}"
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None, media: dict[str, Any] | None = None, position_ids: torch.Tensor | None = None, media_sources: dict[str, list[str]] | None = None, loss_reduction: str = "mean", segment_ids: torch.Tensor | None = None,
                splice: dict[str, dict[str, Any]] | None = None, label_positions: torch.Tensor | None = None,
                label_targets: torch.Tensor | None = None, **_: Any):
        """Loss and logits of the decoder on text + spliced pseudo-tokens (HF output object).

        ``loss_reduction="sum"`` returns the summed token loss (training divides it by the label
        tokens of the whole optimizer step); ``"mean"`` the mean over this batch's label tokens.
        ``label_positions`` / ``label_targets`` (``[B, K]``, from :func:`~omnimodal.data.dataset.loss_positions`;
        the training collator puts them in the batch) compute logits only where the loss needs them:
        ``out.logits`` is then ``[B, K, vocab]`` instead of ``[B, L, vocab]`` and the loss the same.
        ``segment_ids`` (packed rows, see :mod:`omnimodal.data.packing`) replace the attention
        mask by a block-diagonal causal one (a dense 4-D mask, or a flex-attention block mask:
        :meth:`packed_attention`), so packed conversations never see each other.
        """
        embeds = self.embed(input_ids, media, media_sources, splice)
        implementation = None
        if segment_ids is not None:
            from omnimodal.data.packing import block_causal_mask, flex_block_mask

            if self.packed_attention(embeds.device) == "flex":
                attention_mask, implementation = flex_block_mask(segment_ids), "flex_attention"
            else:
                attention_mask = block_causal_mask(segment_ids, embeds.dtype)
        kept = labels is not None and label_positions is not None and label_targets is not None and keeps_logits(self.decoder)
        extra = {"logits_to_keep": label_positions.to(embeds.device)} if kept else {}
        with attention_implementation(self.decoder, implementation):
            out = self.decoder(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, **extra)
        if kept:
            out.loss = token_loss(out.logits, label_targets, loss_reduction)
        elif labels is not None:
            out.loss = causal_lm_loss(out.logits, labels, loss_reduction)
        return out

    def packed_attention(self, device: torch.device) -> str:
        """How packed rows attend (``decoder.packed_attention``): ``mask`` (a dense 4-D mask
        through SDPA: any backend, pays every ``L x L`` position of a row), ``flex`` (PyTorch's flex
        attention with a block mask: skips the blocks between conversations; its backward needs
        CUDA) or ``auto`` (flex on CUDA where the decoder supports it, else mask)."""
        choice = self.decoder_cfg.get("packed_attention") or "auto"
        if choice not in ("auto", "mask", "flex"):
            raise ConfigError(f"decoder.packed_attention must be auto, mask or flex, not {choice!r}")
        if choice == "auto":
            flex_ok = device.type == "cuda" and bool(getattr(self.decoder, "_supports_flex_attn", False))
            choice = "flex" if flex_ok else "mask"
        return choice

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, media: dict[str, Any] | None = None, **kwargs: Any) -> torch.Tensor:
        """Generate with the decoder's own ``generate`` (KV cache); returns new token ids only.

        Batches must be left-padded.
        """
        embeds = self.embed(input_ids, media)
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        kwargs.setdefault("eos_token_id", self.eos_token_ids)
        kwargs.setdefault("do_sample", False)
        return self.decoder.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends an answer (generation stops on any of them)."""
        return list(chat_format(self.tokenizer).eos_ids)

    def cut_at_eos(self, rows: torch.Tensor | list[list[int]]) -> list[list[int]]:
        """Each row of generated ids up to (not including) its first EOS id."""
        eos = set(self.eos_token_ids)
        out = []
        for row in rows.tolist() if isinstance(rows, torch.Tensor) else rows:
            n = next((i for i, t in enumerate(row) if t in eos), len(row))
            out.append(row[:n])
        return out

    # ---- new tokens under a frozen decoder ---------------------------------------------------
    def train_new_tokens(self, enable: bool = True) -> None:
        """Give the tokens omnimodal added (placeholders; role and end-of-turn tokens of its
        template) trainable rows in the input embeddings and the LM head while the rest of the
        decoder stays frozen (see :func:`omnimodal.decoder.new_token_rows`). ``enable=False``
        merges the rows into the weights and removes them."""
        if self.new_tokens is not None:
            self.new_tokens.remove()
            self.new_tokens = None
        if enable and self.new_token_ids:
            self.new_tokens = new_token_rows(self.decoder, self.new_token_ids)

    def merge_new_tokens(self) -> None:
        """Write trained new-token rows into the decoder's weights (outputs do not change)."""
        if self.new_tokens is not None:
            self.new_tokens.merge()

    # ---- LoRA ------------------------------------------------------------------------------
    @property
    def has_lora(self) -> bool:
        """Whether the decoder carries PEFT LoRA adapters."""
        return hasattr(self.decoder, "peft_config")

    def apply_lora(self, r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: list[str] | str = "all-linear") -> None:
        """Wrap the decoder with PEFT LoRA adapters (only the adapters train in the decoder)."""
        require_extra("lora", ("peft",), "LoRA (stage=lora)")
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM")
        try:
            self.decoder = get_peft_model(self.decoder, config)
        except ValueError as exc:
            names = sorted({n.rsplit(".", 1)[-1] for n, m in self.decoder.named_modules() if isinstance(m, nn.Linear)})
            raise ConfigError(f"stage.lora.target_modules={target_modules!r} matches nothing usable in the decoder ({exc}). Linear layers there: {', '.join(names)}.") from exc
        self.extra["lora"] = {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": target_modules}

    def _plain_decoder(self, lora: str):
        """The decoder to write as ``decoder.*`` weights: LoRA merged in, or the base without it."""
        import copy

        if not self.has_lora:
            return self.decoder
        clone = copy.deepcopy(self.decoder)
        return clone.merge_and_unload() if lora == "merge" else clone.unload()

    @property
    def shared(self) -> dict[str, str]:
        """Modalities that run another's encoder and projector: ``{sharer: owner}``."""
        return {n: m.cfg["shared_with"] for n, m in self.modalities.items() if m.cfg.get("shared_with")}

    # ---- freezing ----------------------------------------------------------------------
    def set_trainable(self, component: str, trainable: bool) -> None:
        """Freeze or unfreeze ``decoder``, ``encoders.<m>`` or ``projectors.<m>``."""
        module = self.get_submodule(component)
        module.requires_grad_(trainable)
        if trainable:
            self.frozen.discard(component)
        else:
            self.frozen.add(component)
            module.eval()

    def train(self, mode: bool = True) -> OmniModel:
        """Like ``nn.Module.train`` but frozen components stay in eval mode (dropout, norms).

        A frozen decoder carrying LoRA adapters is in eval mode except its ``lora_*`` modules
        (their dropout is active).
        """
        super().train(mode)
        for component in self.frozen:
            self.get_submodule(component).eval()
        if mode and self.has_lora and "decoder" in self.frozen:
            for name, module in self.decoder.named_modules():
                if "lora_" in name:
                    module.train()
        if mode and "decoder" in self.frozen:
            _keep_checkpointing(self.decoder)
        for group in (self.encoders, self.projectors):  # a container is in train mode iff a member is
            group.training = mode and any(m.training for m in group.children())
        return self

    # ---- saving and loading --------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, lora: str = "merge") -> Path:
        """Write config, safetensors weights, tokenizer and modality assets to ``directory``.

        With LoRA adapters, ``lora="merge"`` folds them into the decoder weights;
        ``lora="separate"`` writes the base weights plus the adapters alone under ``adapter/``.
        """
        if lora not in ("merge", "separate"):
            raise ConfigError(f"lora must be 'merge' or 'separate', got {lora!r}")
        from safetensors.torch import save_file

        from omnimodal.plugins import get_registry

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        registry = get_registry()
        mods = {}
        for name, modality in self.modalities.items():
            owner = registry.modality_owner.get(name, "?")
            info = next((p for p in registry.plugins if p.name == owner), None)
            mods[name] = {
                "plugin": owner,
                "distribution": info.distribution if info else "?",
                "version": info.version if info else "?",
                "config": _plain(modality.cfg),
            }
            assets = directory / "assets" / name
            modality.save_assets(assets)
        config = {
            "format_version": FORMAT_VERSION,
            "modalities": mods,
            "decoder": {"config": _plain(self.decoder_cfg), "hf_config": self.decoder.config.to_dict()},
            "placeholders": {name: m.placeholder for name, m in self.modalities.items()},
            "shared_with": self.shared,  # sharer -> owner: shared weights are stored under the owner's keys
            "extra": self.extra,
        }
        self.merge_new_tokens()
        fmt = chat_format(self.tokenizer)
        config["decoder"]["chat_format"] = {**fmt.to_dict(), "base_vocab_size": len(self.tokenizer) - len(self.new_token_ids)}
        if self.has_lora and lora == "separate":
            self.decoder.save_pretrained(directory / "adapter")
            config["adapter"] = "adapter"
        plain = self._plain_decoder(lora)
        config["decoder"]["hf_config"] = plain.config.to_dict()
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str))
        live, self.decoder = self.decoder, plain
        rows = self._modules.pop("new_tokens", None)  # merged above; not part of the format
        try:
            state, metadata = _weights_to_save(self)
            _atomic(directory / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata=metadata))
        finally:
            self.decoder = live
            self.new_tokens = rows
        if getattr(plain, "generation_config", None) is not None:
            plain.generation_config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> OmniModel:
        """Load a directory written by :meth:`save_pretrained` (no training config, no pickle)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_model
        from transformers import AutoTokenizer

        from omnimodal.plugins import get_registry

        directory = Path(directory)
        cfg_path = directory / CONFIG_NAME
        if not cfg_path.is_file():
            raise ConfigError(f"{directory}: not an omnimodal model directory (no {CONFIG_NAME})")
        config = json.loads(cfg_path.read_text())
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise ConfigError(f"{cfg_path}: format_version {version} is not supported (this omnimodal reads {FORMAT_VERSION})")
        registry = get_registry()
        for name, entry in config["modalities"].items():
            if name not in registry.modalities:
                raise PluginError(
                    f"{directory}: the model uses modality {name!r} from plugin {entry['plugin']!r}, which is "
                    f"not available here; install the distribution {entry['distribution']!r} "
                    f"(version {entry['version']}). {registry.unavailable.get(name, '')}".strip()
                )
        modalities = build_modalities({n: e["config"] for n, e in config["modalities"].items()})
        for name, modality in modalities.items():
            modality.load_assets(directory / "assets" / name)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        saved_fmt = config["decoder"].get("chat_format")
        if saved_fmt:
            set_chat_format(tokenizer, ChatFormat.from_dict(saved_fmt))
        decoder = decoder_from_config(config["decoder"]["hf_config"])
        if (directory / "generation_config.json").is_file():
            from transformers import GenerationConfig

            decoder.generation_config = GenerationConfig.from_pretrained(directory)
        encoders, projectors = build_parts(modalities, decoder.config.hidden_size, load_weights=False)
        model = cls(decoder, tokenizer, modalities, encoders, projectors, config["decoder"]["config"])
        model.extra = config.get("extra", {})
        try:
            missing, unexpected = load_model(model, str(directory / WEIGHTS_NAME), strict=False)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ConfigError(f"{directory / WEIGHTS_NAME}: cannot read weights ({exc})") from exc
        if missing or unexpected:
            raise ConfigError(f"{directory / WEIGHTS_NAME}: weights do not match the config (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
        if config.get("adapter"):
            require_extra("lora", ("peft",), f"{directory}: a model saved with LoRA adapters")
            from peft import PeftModel

            model.decoder = PeftModel.from_pretrained(model.decoder, directory / config["adapter"])
        return model.eval()


def _items(name: str, sources: dict[str, list[str]] | None) -> str:
    """`` Items: [...].`` naming a modality's items in a splice error (empty when unknown)."""
    return f" Items: {sources[name]}." if sources and name in sources else ""


@contextmanager
def attention_implementation(decoder: nn.Module, name: str | None):
    """Run ``decoder`` with another attention implementation (e.g. ``"flex_attention"``) for the
    block; its layers read ``config._attn_implementation`` at every call. ``None``: unchanged."""
    if name is None:
        yield
        return
    config = decoder.config
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


def label_token_count(labels: torch.Tensor) -> torch.Tensor:
    """How many tokens carry a loss: labels after the causal shift that are not ignored."""
    return (labels[:, 1:] != -100).sum()


def keeps_logits(decoder: nn.Module) -> bool:
    """Does ``decoder`` take per-row ``logits_to_keep`` positions (``[B, K]``)? transformers'
    causal LMs do since they slice with ``slice_logits_to_keep``; others get the full logits."""
    base = decoder.get_base_model() if hasattr(decoder, "get_base_model") else decoder  # a LoRA-wrapped decoder
    module = sys.modules.get(type(base).__module__)
    return hasattr(module, "slice_logits_to_keep")


def token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits ``[B, K, V]`` against their targets ``[B, K]`` (``-100`` ignored), in
    float32: :func:`causal_lm_loss` for logits already taken at
    :func:`~omnimodal.data.dataset.loss_positions`."""
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"loss_reduction must be 'mean' or 'sum', got {reduction!r}")
    flat = targets.reshape(-1).to(logits.device)
    total = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat, ignore_index=-100, reduction="sum")
    if reduction == "sum":
        return total
    return total / (flat != -100).sum().clamp(min=1)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over the label tokens (``-100`` ignored), in float32.

    ``reduction="sum"`` gives the summed token loss, ``"mean"`` the mean over this batch's label
    tokens (0 when there are none, instead of NaN).
    """
    # Shift the labels, not the logits: slicing the logits would copy all of them (batch x length
    # x vocabulary) every step; the last position gets an ignored label instead.
    return token_loss(logits, torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100), reduction)


def _keep_checkpointing(decoder: nn.Module) -> None:
    """Under a frozen decoder, gradient checkpointing stays on: transformers checkpoints a layer
    only while that layer's own ``training`` flag is set. Only that flag is set (not the layer's
    submodules), so dropout inside stays off."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # pragma: no cover - older transformers
        return
    for module in decoder.modules():
        if isinstance(module, GradientCheckpointingLayer) and getattr(module, "gradient_checkpointing", False):
            module.training = True


def _atomic(path: Path, write) -> None:
    """Write through a temporary file and rename, so a kill mid-write never leaves a bad file."""
    import os

    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _weights_to_save(model: OmniModel) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with every shared tensor once, and safetensors metadata naming the dropped keys.

    safetensors keeps one name per shared tensor; this keeps the owner's (a key outside any
    ``shared_with`` modality's ``encoders.<m>.`` / ``projectors.<m>.``), else the first in sort
    order (as ``safetensors.torch.save_model`` does, e.g. for tied decoder embeddings).
    """
    sharer_prefixes = tuple(f"{part}.{name}." for name in model.shared for part in ("encoders", "projectors"))
    state = model.state_dict()
    groups: dict[tuple[str, int], list[str]] = {}
    for key, tensor in state.items():
        if tensor.numel():
            groups.setdefault((str(tensor.device), tensor.untyped_storage().data_ptr()), []).append(key)
    metadata = {"format": "pt"}
    for keys in groups.values():
        if len(keys) < 2:
            continue
        whole = [k for k in keys if state[k].data_ptr() == state[k].untyped_storage().data_ptr() and state[k].nbytes == state[k].untyped_storage().nbytes()]
        if not whole:
            raise ConfigError(f"cannot save weights: tensors {sorted(keys)} share storage and none covers all of it")
        keep = min(whole, key=lambda k: (k.startswith(sharer_prefixes), k))
        for key in keys:
            if key != keep:
                del state[key]
                metadata[key] = keep
    return {k: v.contiguous() for k, v in state.items()}, metadata


def _projector_cfg(modality: Modality) -> dict[str, Any]:
    cfg = dict(modality.cfg.get("projector") or {"kind": "mlp"})
    return {k: v for k, v in cfg.items() if v is not None}


def _plain(obj: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:
        pass
    return json.loads(json.dumps(obj, default=str))
