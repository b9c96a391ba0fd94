"""``omnimodal export --format llava``: the vision plugin's export to a Hugging Face Llava dir.

Contributed through the ``omnimodal_export_formats`` hook, so the core names no modality.
A Llava model is exactly one vision modality: a CLIP/SigLIP tower, one hidden-state layer
(CLS dropped or kept), a Linear -> GELU -> Linear projector whose hidden width is the decoder's,
and a causal LM. An OmniModel of that shape maps onto it weight for weight::

    decoder.<base_model_prefix>.*     -> model.language_model.*
    decoder.lm_head.*                 -> lm_head.*
    encoders.<m>.model.*              -> model.vision_tower.*
    projectors.<m>.linear_{1,2}.*     -> model.multi_modal_projector.linear_{1,2}.*

and ``encoder.feature_layer`` -> ``vision_feature_layer``; ``features: patch`` on CLIP ->
``vision_feature_select_strategy: default`` (drop CLS), ``cls_patch`` or a SigLIP tower (no
CLS) -> ``full``; the placeholder token id -> ``image_token_id``. SigLIP2 towers (variable
resolution) have no Llava counterpart and are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from omnimodal.errors import ConfigError
from omnimodal.export import merged_decoder

_LLAVA_TOWERS = ("clip_vision_model", "siglip_vision_model")


def llava_parts(model) -> tuple[str, Any, nn.Module, nn.Module]:
    """``(modality name, modality, tower, projector)``, or a ConfigError naming what Llava cannot hold."""
    from omnimodal.projectors import MLPProjector
    from omnimodal_vision.encoders import HFVisionTower

    names = list(model.modalities)
    if len(names) != 1:
        raise ConfigError(f"cannot export as Llava: Llava holds exactly one image modality, this model has {len(names)} ({', '.join(names) or 'none'})")
    name = names[0]
    modality, encoder, projector = model.modalities[name], model.encoders[name], model.projectors[name]
    if modality.part_type != "image":
        raise ConfigError(f"cannot export as Llava: modality {name!r} carries {modality.part_type!r} parts; Llava takes images only")
    tower = getattr(encoder, "model", None)
    model_type = getattr(getattr(tower, "config", None), "model_type", None)
    if not isinstance(encoder, HFVisionTower) or model_type is None:
        kind = (modality.cfg.get("encoder") or {}).get("kind", type(encoder).__name__)
        raise ConfigError(
            f"cannot export as Llava: the {name} encoder ({type(encoder).__name__}, encoder kind {kind!r}) is not a "
            "Hugging Face vision tower; Llava needs a pretrained CLIP or SigLIP tower (encoder kind 'hf')"
        )
    if model_type not in _LLAVA_TOWERS:
        raise ConfigError(f"cannot export as Llava: vision tower type {model_type!r} is not supported by Llava's forward (supported: clip, siglip)")
    if not isinstance(encoder.feature_layer, int):
        raise ConfigError(f"cannot export as Llava: feature_layer must be one int, got {encoder.feature_layer!r}")
    kind = (modality.cfg.get("projector") or {}).get("kind", type(projector).__name__)
    if type(projector) is not MLPProjector:
        raise ConfigError(
            f"cannot export as Llava: the {name} projector (kind {kind!r}, {type(projector).__name__}) is not "
            "expressible as Llava's multi_modal_projector (Linear -> GELU -> Linear per patch); use projector kind 'mlp'"
        )
    d_model = merged_decoder(model).config.hidden_size
    if projector.linear_1.out_features != d_model:
        raise ConfigError(
            f"cannot export as Llava: the mlp projector's hidden width is {projector.linear_1.out_features}, but Llava's "
            f"is the decoder width {d_model} (train with projector.hidden_dim unset)"
        )
    if getattr(projector.act, "approximate", "none") != "none":
        raise ConfigError("cannot export as Llava: the projector uses tanh-approximated GELU; Llava's 'gelu' is exact")
    if (projector.linear_1.bias is None) != (projector.linear_2.bias is None):
        raise ConfigError("cannot export as Llava: the projector has a bias on one linear layer only")
    return name, modality, encoder, projector


def llava_config(model):
    """The ``LlavaConfig`` for an exportable OmniModel (see :func:`llava_parts`)."""
    from transformers import LlavaConfig

    name, _, tower, projector = llava_parts(model)
    vision = tower.model.config
    decoder = merged_decoder(model)
    side = vision.image_size // vision.patch_size
    vision_dict, text_dict = vision.to_dict(), decoder.config.to_dict()
    for d in (vision_dict, text_dict):
        d.pop("_name_or_path", None)
    return LlavaConfig(
        vision_config=vision_dict,
        text_config=text_dict,
        image_token_id=model.modality_token[name],
        image_seq_length=side * side + (1 if tower.keep_cls else 0),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default" if tower.has_cls and not tower.keep_cls else "full",
        vision_feature_layer=tower.feature_layer,
        multimodal_projector_bias=projector.linear_1.bias is not None,
        tie_word_embeddings=bool(getattr(decoder.config, "tie_word_embeddings", False)),
    )


def llava_state_dict(model) -> dict[str, Any]:
    """OmniModel weights renamed to ``LlavaForConditionalGeneration`` keys (tensors shared, not copied)."""
    name, _, tower, projector = llava_parts(model)
    decoder = merged_decoder(model)
    base = decoder.base_model_prefix
    out: dict[str, Any] = {}
    for key, value in decoder.state_dict().items():
        out[f"model.language_model.{key[len(base) + 1:]}" if key.startswith(base + ".") else key] = value
    for key, value in tower.model.state_dict().items():
        out[f"model.vision_tower.{key}"] = value
    for key, value in projector.state_dict().items():
        out[f"model.multi_modal_projector.{key}"] = value
    return out


def to_llava(model):
    """An in-memory ``LlavaForConditionalGeneration`` holding the OmniModel's weights (eval mode)."""
    from transformers import GenerationConfig, LlavaForConditionalGeneration
    from transformers.initialization import no_init_weights

    config = llava_config(model)
    dtype = next(merged_decoder(model).parameters()).dtype
    with no_init_weights():
        llava = LlavaForConditionalGeneration(config).to(dtype)
    state = llava_state_dict(model)
    missing, unexpected = llava.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ConfigError(f"cannot export as Llava: weights do not map onto Llava (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    if config.tie_word_embeddings:
        llava.tie_weights()
    gen = GenerationConfig.from_dict(merged_decoder(model).generation_config.to_dict())
    tok = model.tokenizer
    eos = getattr(model, "eos_token_ids", None) or ([tok.eos_token_id] if tok.eos_token_id is not None else [])
    if eos:  # every id of the EOS list (Llama 3: <|eot_id|> and <|end_of_text|>)
        gen.eos_token_id = eos if len(eos) > 1 else eos[0]
    if tok.pad_token_id is not None:
        gen.pad_token_id = tok.pad_token_id
    gen.do_sample = False
    llava.generation_config = gen
    return llava.eval()


def llava_chat_template(model, placeholder: str) -> str | None:
    """The tokenizer's chat template, preceded by a step that flattens list contents the way
    omnimodal does (image parts -> ``placeholder``, parts joined by newlines)."""
    template = model.tokenizer.chat_template
    if not template:
        return None
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    flatten = (
        "{%- set ns = namespace(msgs=[]) -%}"
        "{%- for message in messages -%}"
        "{%- if message['content'] is string -%}{%- set ns.msgs = ns.msgs + [message] -%}"
        "{%- else -%}{%- set parts = namespace(items=[]) -%}"
        "{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'text' -%}{%- set parts.items = parts.items + [part['text']] -%}"
        "{%- elif part['type'] == 'image' -%}{%- set parts.items = parts.items + ['" + placeholder + "'] -%}"
        "{%- endif -%}{%- endfor -%}"
        "{%- set ns.msgs = ns.msgs + [{'role': message['role'], 'content': parts.items | join('\\n')}] -%}"
        "{%- endif -%}{%- endfor -%}"
        "{%- set messages = ns.msgs -%}"
    )
    return flatten + template


def llava_processor(model):
    """A ``LlavaProcessor`` (the tower's image processor, the tokenizer, the chat template)."""
    import copy

    from transformers import LlavaProcessor

    name, modality, tower, _ = llava_parts(model)
    image_processor = modality.processor
    if image_processor is None:
        raise ConfigError(f"cannot export as Llava: the {name} modality has no image processor (the tower's preprocessor_config.json)")
    tokenizer = copy.deepcopy(model.tokenizer)
    template = llava_chat_template(model, modality.placeholder)
    tokenizer.chat_template = template
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=tower.model.config.patch_size,
        vision_feature_select_strategy="default" if tower.has_cls and not tower.keep_cls else "full",
        chat_template=template,
        image_token=modality.placeholder,
        num_additional_image_tokens=1 if tower.has_cls else 0,
    )


def export_llava(model, out_dir: str | Path) -> Path:
    """Write ``model`` as a ``LlavaForConditionalGeneration`` dir (weights, config, processor, template)."""
    out = Path(out_dir)
    llava = to_llava(model)
    processor = llava_processor(model)
    out.mkdir(parents=True, exist_ok=True)
    llava.save_pretrained(out)
    processor.save_pretrained(out)
    return out
