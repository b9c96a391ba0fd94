"""A pretrained decoder on its own terms: new tokens train under a frozen decoder, every module's
train/eval mode is exact, generation stops on every EOS id, generation_config is kept."""

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from omnimodal.data.dataset import Collator, ConversationDataset
from omnimodal.data.records import Record, read_jsonl
from omnimodal.model import OmniModel
from omnimodal.templates import END_TOKEN
from omnimodal.training.module import OmniLightningModule, apply_stage, parameter_groups

from .chat_families import FAMILIES, make_decoder_dir
from .conftest import ROOT, tiny_vision_cfg

ALIGN = {"train_encoders": False, "train_projectors": True, "train_decoder": False, "train_new_tokens": True, "lr": 1e-2, "weight_decay": 0.1}
QA = [("What colour is the sky?", "blue"), ("How many shapes are there?", "two"), ("Is it a circle?", "yes")]


def _records(qa=QA):
    return [Record([{"role": "user", "content": [{"type": "text", "text": q}]}, {"role": "assistant", "content": [{"type": "text", "text": a}]}], f"mem:{i}")
            for i, (q, a) in enumerate(qa)]


def _model(path, modalities=None, **decoder) -> OmniModel:
    torch.manual_seed(0)
    return OmniModel.from_config({"decoder": {"kind": "pretrained", "path": str(path), **decoder}, "modalities": modalities or {}})


def _batch(model, records, mode="train"):
    ds = ConversationDataset(records, model.tokenizer, model.modalities, model.placeholder_ids, mode=mode)
    return Collator(model.modalities, model.tokenizer.pad_token_id, padding_side="left" if mode == "generate" else "right")([ds[i] for i in range(len(ds))])


# ---- new tokens under a frozen decoder --------------------------------------------------------
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_new_token_rows_train_and_every_other_row_stays_bitwise(tmp_path, tie):
    dec = make_decoder_dir(tmp_path / "dec", FAMILIES["chatml"], template=False, tie=tie)
    original = load_file(dec / "model.safetensors")
    model = _model(dec, {"vision": tiny_vision_cfg()})
    new = model.new_token_ids
    assert model.tokenizer.convert_ids_to_tokens(new) == ["<|system|>", "<|user|>", "<|assistant|>", END_TOKEN, "<image>"]
    apply_stage(model, ALIGN, {})
    emb = model.decoder.get_input_embeddings().weight
    init_rows = emb[new].detach().clone()
    groups = parameter_groups(model, ALIGN["weight_decay"], ALIGN)
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    assert all(id(p) not in in_optimizer for p in model.decoder.parameters())  # frozen rows: never decayed
    d = emb.shape[1]
    n_rows = sum(p.numel() for p in model.new_tokens.parameters())
    assert n_rows == len(new) * d * (1 if tie else 2)  # optimizer state for the new rows only
    opt = torch.optim.AdamW(groups, lr=1e-2)
    batch = _batch(model, _records())
    for _ in range(3):
        loss = model(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    live = model(batch["input_ids"], batch["attention_mask"]).logits.detach()
    assert not torch.equal(model.new_tokens.embed.detach(), init_rows)
    model.save_pretrained(tmp_path / "saved")
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert not any(k.startswith("new_tokens") for k in saved)
    # a tied matrix is stored once, under either name
    saved_emb = saved.get("decoder.model.embed_tokens.weight", saved.get("decoder.lm_head.weight"))
    n_old = original["model.embed_tokens.weight"].shape[0]
    assert torch.equal(saved_emb[:n_old], original["model.embed_tokens.weight"])
    assert torch.equal(saved_emb[new], model.new_tokens.embed.detach())
    if not tie:
        assert torch.equal(saved["decoder.lm_head.weight"][:n_old], original["lm_head.weight"])
        assert torch.equal(saved["decoder.lm_head.weight"][new], model.new_tokens.head.detach())
    for key, value in original.items():  # every other decoder weight: bitwise the pretrained one
        if key not in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(saved[f"decoder.{key}"], value), key
    loaded = OmniModel.from_pretrained(tmp_path / "saved")
    # same outputs as the live model (the hook's separate matmul for the new ids rounds differently)
    torch.testing.assert_close(loaded(batch["input_ids"], batch["attention_mask"]).logits.detach(), live, rtol=1e-5, atol=1e-5)


def _train_align(model, records, steps: int, train_new_tokens: bool, lr: float = 2e-2) -> None:
    """``steps`` AdamW steps of the align stage on batches of 8 records (fixed order)."""
    stage = {**ALIGN, "lr": lr, "train_new_tokens": train_new_tokens}
    apply_stage(model, stage, {"vision": {"train_encoder": False}})
    opt = torch.optim.AdamW(parameter_groups(model, 0.0, stage), lr=lr)
    ds = ConversationDataset(records, model.tokenizer, model.modalities, model.placeholder_ids)
    samples = [ds[i] for i in range(len(ds))]  # images preprocessed once
    collate = Collator(model.modalities, model.tokenizer.pad_token_id)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = collate([samples[i] for i in torch.randint(len(ds), (8,), generator=g).tolist()])
        loss = model(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["media"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.slow
@pytest.mark.parametrize("train_new_tokens", [True, False], ids=["new-rows-train", "negative-control"])
def test_align_stage_learns_to_emit_a_new_end_of_turn_token_and_stop(tmp_path, vision_demo, train_new_tokens):
    """A base decoder gets omnimodal's template, so its end-of-turn token <|end|> is new. Under
    ``align`` (decoder frozen, projector training) the model learns to emit it and stops; with
    those rows frozen (negative control) it never emits it. The decoder here is random, not
    pretrained, so the answer words themselves cannot be learned with it frozen."""
    from omnimodal.inference import Pipeline

    dec = make_decoder_dir(tmp_path / "dec", FAMILIES["chatml"], template=False)
    model = _model(dec, {"vision": tiny_vision_cfg()})
    end = model.tokenizer.convert_tokens_to_ids(END_TOKEN)
    assert end in model.eos_token_ids and end in model.new_token_ids
    records = read_jsonl(vision_demo["train"], {"image": "vision"})
    _train_align(model, records, steps=40, train_new_tokens=train_new_tokens)
    pipe = Pipeline(model, device="cpu")
    base = vision_demo["train"].parent
    prompts = [pipe.prepare(r.messages[:-1], base, f"r{i}") for i, r in enumerate(records[:6])]
    outs = pipe.generate_prompts(prompts, max_new_tokens=6)
    batch = pipe.collate(prompts)
    raw = model.generate(batch["input_ids"], batch["attention_mask"], batch["media"], max_new_tokens=6)
    emitted = [end in row for row in raw.tolist()]
    if train_new_tokens:
        assert all(emitted) and all(o.finish_reason == "stop" for o in outs), raw.tolist()
    else:
        assert not any(emitted), raw.tolist()


# ---- exact train/eval modes ---------------------------------------------------------------------
def _stage(name: str) -> dict:
    from omegaconf import OmegaConf

    stage = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "stage" / f"{name}.yaml"))
    if stage.get("lora"):
        stage["lora"]["r"] = 4
    return stage


def _expected_mode(name: str, stage: str) -> bool:
    if name == "" or name.startswith("projectors") or name.startswith("new_tokens"):
        return True
    if name.startswith("encoders"):
        return stage == "full"
    assert name.startswith("decoder"), name
    if stage == "lora":
        return "lora_" in name
    return stage in ("full", "sft")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["full", "sft", "align", "lora"])
def test_every_module_mode_is_exact_from_first_step_after_validation_and_resume(tmp_path, vision_demo, stage):
    from omnimodal.training.datamodule import OmniDataModule

    dec = make_decoder_dir(tmp_path / "dec", FAMILIES["chatml"], dropout=0.1)
    files = {"train": [vision_demo["train"]], "val": [vision_demo["val"]], "test": []}
    cfg = _stage(stage)
    seen: list[tuple[str, dict[str, bool]]] = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((f"step {trainer.global_step}", {n: m.training for n, m in pl_module.model.named_modules()}))

    def fit(max_steps, ckpt_path=None):
        model = _model(dec, {"vision": tiny_vision_cfg()})
        assert not model.decoder.training  # a pretrained decoder arrives in eval mode
        dm = OmniDataModule({"batch_size": 4, "num_workers": 0, "max_length": 128}, files, model.tokenizer, model.modalities, model.placeholder_ids)
        module = OmniLightningModule(model, cfg, {"vision": tiny_vision_cfg()})
        trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=1, default_root_dir=tmp_path,
                            callbacks=[Spy(), L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)

    fit(4)  # steps 0-1, validation, steps 2-3 (after validation)
    fit(6, str(tmp_path / "ckpt" / "last.ckpt"))  # steps 4-5 after a resume
    assert [s for s, _ in seen] == [f"step {i}" for i in range(6)]
    for step, modes in seen:
        wrong = [n for n, mode in modes.items() if mode != _expected_mode(n, stage)]
        assert not wrong, f"{stage} {step}: wrong mode for {wrong[:8]}"
    if stage == "lora":
        assert any("lora_dropout" in n and mode for n, mode in seen[0][1].items())


def test_gradient_checkpointing_stays_on_under_a_frozen_decoder(tmp_path):
    """transformers checkpoints a layer only in train mode: the frozen decoder's checkpointed
    layers keep their own flag set, everything inside them stays in eval mode."""
    dec = make_decoder_dir(tmp_path / "dec", FAMILIES["chatml"], template=False, dropout=0.1)
    model = _model(dec)
    model.decoder.gradient_checkpointing_enable()
    apply_stage(model, ALIGN, {})
    layers = model.decoder.model.layers
    assert all(layer.training for layer in layers)
    assert not any(m.training for layer in layers for m in layer.modules() if m is not layer)
    assert not model.decoder.model.training
    batch = _batch(model, _records())
    model(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss.backward()
    assert model.new_tokens.embed.grad is not None and model.new_tokens.embed.grad.abs().sum() > 0


# ---- generation stops on every EOS id -----------------------------------------------------------
def _force(model, word: int, eos: int):
    """Make the LM head pick ``word``, then ``eos`` (then ``word`` again): generation must stop."""
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        out = output.clone()
        out[..., eos if calls["n"] == 2 else word] += 1e4
        return out

    handle = model.decoder.get_output_embeddings().register_forward_hook(hook)
    return calls, handle


@pytest.mark.parametrize("eos_token", ["<|eot_id|>", "<|end_of_text|>"])
def test_generation_stops_on_every_id_of_the_eos_list(tmp_path, eos_token):
    from omnimodal.eval.heldout import predict
    from omnimodal.inference import Pipeline

    dec = make_decoder_dir(tmp_path / "dec", FAMILIES["llama3"])
    model = _model(dec, chat_template_kwargs={"date_string": "26 Jul 2024"})
    tok = model.tokenizer
    eot, eot_text = tok.convert_tokens_to_ids("<|eot_id|>"), tok.convert_tokens_to_ids("<|end_of_text|>")
    assert tok.eos_token_id == eot and set(model.eos_token_ids) == {eot, eot_text}
    eos = tok.convert_tokens_to_ids(eos_token)
    word = tok.encode("blue", add_special_tokens=False)[0]
    pipe = Pipeline(model, device="cpu")
    calls, handle = _force(model, word, eos)
    try:
        done = pipe.generate_prompts([pipe.prepare("What colour is the sky?")], max_new_tokens=6)[0]  # chat, generate, server
        assert (done.text, done.finish_reason, done.completion_tokens) == (tok.decode([word]), "stop", 2)
        calls["n"] = 0
        stream = pipe.stream("What colour is the sky?", max_new_tokens=6)  # streamed chat and server
        assert stream.text == tok.decode([word]) and stream.finish_reason == "stop"
        calls["n"] = 0
        assert predict(model, _records(QA[:1]), max_new_tokens=6, progress=False) == [tok.decode([word])]  # evaluation
    finally:
        handle.remove()


def test_saved_model_and_export_keep_generation_config(tmp_path):
    from transformers import GenerationConfig

    from omnimodal.export import export

    dec = make_decoder_dir(tmp_path / "dec", FAMILIES["gemma"])
    model = _model(dec)
    tok = model.tokenizer
    want = tok.convert_tokens_to_ids(["<eos>", "<end_of_turn>"])
    assert model.eos_token_ids == want  # the tokenizer's EOS and the generation_config's end of turn
    model.save_pretrained(tmp_path / "saved")
    assert GenerationConfig.from_pretrained(tmp_path / "saved").eos_token_id == want
    loaded = OmniModel.from_pretrained(tmp_path / "saved")
    assert loaded.eos_token_ids == want and loaded.decoder.generation_config.eos_token_id == want
    export(tmp_path / "saved", "omnimodal", tmp_path / "exported")
    assert GenerationConfig.from_pretrained(tmp_path / "exported").eos_token_id == want


def test_llava_export_keeps_the_eos_list(tmp_path):
    from omnimodal_vision.llava import to_llava

    from omnimodal.templates import chat_format

    from .test_llava import _model as llava_model

    model = llava_model(tmp_path)
    extra = model.tokenizer.convert_tokens_to_ids("<|pad|>")
    chat_format(model.tokenizer).eos_ids = [model.tokenizer.eos_token_id, extra]
    assert to_llava(model).generation_config.eos_token_id == [model.tokenizer.eos_token_id, extra]

