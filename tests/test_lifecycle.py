"""Training lifecycle: exact resume after a kill at any point, stage chaining, LoRA save/merge, bad inputs."""

import json
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from omnimodal.errors import ConfigError
from omnimodal.model import OmniModel
from omnimodal.training.checkpoint import EXIT_CODE

from .conftest import PYTHON, cli_env
from .test_training import TINY


def data_overrides(vision_demo, val=False):
    out = [f"data.train={vision_demo['train']}", f"data.test={vision_demo['test']}"]
    if val:
        out.append(f"data.val={vision_demo['val']}")
    return out


def train_cmd(run, *extra):
    return [PYTHON, "-m", "omnimodal.cli", "train", *TINY, f"hydra.run.dir={run}", *extra]


def run_train(run, *extra, check=True, timeout=300):
    out = subprocess.run(train_cmd(run, *extra), capture_output=True, text=True, timeout=timeout, env=cli_env())
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


# ---- exact resume: a deterministic kill matrix -------------------------------------------------
#
# A test-only hook (OMNIMODAL_TEST_EXIT_AT=<point>:<step>, see training/checkpoint.py) hard-exits
# the run while last.ckpt of global step <step> is saved: "after_write" (the checkpoint is in
# place) or "before_rename" (written to its temporary file only: the previous checkpoint stays
# the last one). The run is then resumed with ckpt_path=last, once, and its final weights must be
# bitwise equal to those of an uninterrupted run. 40 conversations in batches of 8 make 5 steps
# per epoch, 3 epochs: step 5 ends epoch 0, steps 6, 8 and 10 are the first, a middle and the
# last batch of epoch 1.

MATRIX = ["trainer.max_epochs=3", "trainer.deterministic=true", "trainer.log_every_n_steps=1", "evaluate=false",
          "stage.warmup_ratio=0.2"]
DROPOUT = ["modalities.vision.encoder.dropout=0.1"]
EVERY_STEP = ["checkpoint.every_n_train_steps=1"]


@pytest.fixture(scope="module")
def train40(vision_demo):
    """40 training conversations (5 steps of 8 per epoch), beside the demo's images."""
    path = vision_demo["train"].parent / "train40.jsonl"
    path.write_text("".join(vision_demo["train"].read_text().splitlines(keepends=True)[:40]))
    return f"data.train={path}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory, train40):
    """Final weights of uninterrupted runs, one per set of overrides (each run once per module)."""
    runs: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}

    def get(*extra: str) -> dict[str, torch.Tensor]:
        if extra not in runs:
            run = tmp_path_factory.mktemp("straight")
            run_train(run, train40, *MATRIX, *extra)
            runs[extra] = _final_weights(run)
        return runs[extra]

    return get


def kill_and_resume(run, exit_at: str, *extra: str, timeout: int = 300) -> str:
    """Run until the hook exits at ``exit_at``, then resume once; return the resumed run's output."""
    out = subprocess.run(train_cmd(run, *MATRIX, *extra), capture_output=True, text=True, timeout=timeout,
                         env=cli_env(OMNIMODAL_TEST_EXIT_AT=exit_at))
    assert out.returncode == EXIT_CODE, f"the run did not stop at {exit_at}: " + out.stdout[-2000:] + out.stderr[-2000:]
    assert not (run / "model").exists()
    out = run_train(run, *MATRIX, *extra, "ckpt_path=last", timeout=timeout)
    log = out.stdout + out.stderr
    assert "Restored all states" in log or "Restoring states from the checkpoint" in log
    return log


def assert_same_weights(want: dict[str, torch.Tensor], run) -> None:
    have = _final_weights(run)
    assert want.keys() == have.keys()
    different = [k for k in want if not torch.equal(want[k], have[k])]
    assert not different, f"{len(different)} of {len(want)} tensors differ after the resume, e.g. {different[:3]}"


def test_killed_right_after_an_epoch_end_checkpoint_resumes_exactly(tmp_path, train40, straight):
    """The default run: checkpoints only at epoch ends, no max_steps (Lightning does not restore
    the loader there, so the sampler must already hold the next epoch)."""
    want = straight()
    kill_and_resume(tmp_path / "r", "after_write:5", train40)
    assert_same_weights(want, tmp_path / "r")
    # The resumption logs beside the killed run's logs (never over them); the plot covers both.
    assert (tmp_path / "r" / "logs" / "resumed-1" / "metrics.csv").is_file()
    assert (tmp_path / "r" / "loss.png").stat().st_size > 1000


def test_killed_mid_epoch_with_dropout_resumes_exactly(tmp_path, train40, straight):
    """ViT dropout 0.1: the generators must continue exactly (the data loader must not draw its
    seed from the restored global generator)."""
    want = straight(*DROPOUT)
    kill_and_resume(tmp_path / "r", "after_write:8", train40, *DROPOUT, *EVERY_STEP)
    assert_same_weights(want, tmp_path / "r")


def test_killed_run_with_encoders_frozen_after_pretraining_resumes_exactly(tmp_path, train40, straight):
    """pretrain_encoders.freeze_encoders: the resumed run does not pre-train again, but freezes
    the same encoders (from the checkpoint) before its optimizer is built."""
    extra = ["pretrain_encoders.epochs=1", "pretrain_encoders.modalities=[vision]", "pretrain_encoders.freeze_encoders=true"]
    want = straight(*extra)
    log = kill_and_resume(tmp_path / "r", "after_write:8", train40, *extra, *EVERY_STEP)
    assert "encoder pre-training, vision" not in log
    assert_same_weights(want, tmp_path / "r")


GROUPED = ["data.group_by_length=true", "data.group_window=2"]


@pytest.mark.slow
def test_killed_mid_epoch_with_length_grouping_and_packing_resumes_exactly(tmp_path, train40, straight):
    """data.group_by_length (with packing): the batch order is rebuilt from (seed, epoch) and the
    loader's position, so a run killed mid-epoch continues with the very next grouped batch."""
    extra = [*GROUPED, "data.packing=true"]
    want = straight(*extra)
    log = kill_and_resume(tmp_path / "r", "after_write:8", train40, *extra, *EVERY_STEP)
    assert "group_by_length: estimated the lengths of 40 conversations" in log
    assert_same_weights(want, tmp_path / "r")


@pytest.mark.slow
@pytest.mark.parametrize(("exit_at", "extra"), [
    pytest.param("after_write:6", EVERY_STEP, id="first-batch-of-epoch"),
    pytest.param("after_write:8", EVERY_STEP, id="middle-batch-of-epoch"),
    pytest.param("after_write:10", EVERY_STEP, id="last-batch-of-epoch"),
    pytest.param("before_rename:8", EVERY_STEP, id="mid-write"),
    # Under max_steps Lightning replays the finished epoch's end on resume: the run must neither
    # take the next epoch's data order nor stop an epoch early (max_epochs=3 binds as well).
    pytest.param("after_write:5", ["trainer.max_steps=15"], id="epoch-end-under-max-steps"),
])
def test_kill_matrix_resumes_exactly(tmp_path, train40, straight, exit_at, extra):
    """Each kill point of the base run, one strict try each, against the same uninterrupted run
    (how often checkpoints are written changes nothing in training)."""
    want = straight()
    run = tmp_path / "r"
    kill_and_resume(run, exit_at, train40, *extra)
    if exit_at.startswith("before_rename"):
        # The run died between the temporary write and the rename: the torn file never became
        # last.ckpt, and the previous checkpoint (step 7) was the one resumed.
        assert list((run / "checkpoints").glob(".last.ckpt.tmp-*"))
    assert_same_weights(want, run)


@pytest.mark.slow
def test_killed_run_with_two_loader_workers_resumes_exactly(tmp_path, train40, straight):
    """data.num_workers=2 with dropout: worker processes, prefetched indices and their seeds
    (drawn from the loader's own generator) change nothing, before or after the kill."""
    want = straight(*DROPOUT)
    kill_and_resume(tmp_path / "r", "after_write:8", train40, *DROPOUT, *EVERY_STEP, "data.num_workers=2")
    assert_same_weights(want, tmp_path / "r")


@pytest.mark.slow
def test_killed_lora_run_resumes_exactly(tmp_path, train40, straight):
    """stage=lora: adapters with LoRA dropout 0.05 on a frozen decoder."""
    lora = ["stage=lora", "stage.lora.r=4", "stage.lora.alpha=8"]
    want = straight(*lora)
    kill_and_resume(tmp_path / "r", "after_write:8", train40, *lora, *EVERY_STEP)
    assert_same_weights(want, tmp_path / "r")


@pytest.mark.slow
def test_killed_ddp_run_resumes_exactly(tmp_path, train40, straight):
    """trainer=ddp_cpu (2 processes, gloo) with dropout: each rank restores its own generators.
    20 conversations per rank in batches of 8: 3 steps per epoch; step 4 is epoch 1's first."""
    ddp = ["trainer=ddp_cpu", *DROPOUT]
    want = straight(*ddp)
    kill_and_resume(tmp_path / "r", "after_write:4", train40, *ddp, *EVERY_STEP, timeout=400)
    assert_same_weights(want, tmp_path / "r")


@pytest.mark.slow
def test_resume_refuses_a_changed_data_file_tokenizer_or_model_config(tmp_path, vision_demo, train40):
    """Each change is named; the unchanged run resumes."""
    from omnimodal.decoder import train_bpe_tokenizer

    run = tmp_path / "r"
    data = tmp_path / "train.jsonl"
    images = f'"{vision_demo["train"].parent}/images/'
    lines = [line.replace('"images/', images) for line in vision_demo["train"].read_text().splitlines(keepends=True)[:16]]
    data.write_text("".join(lines))
    common = [f"data.train={data}", "trainer.max_steps=2", "evaluate=false", "save_model=false"]
    run_train(run, *common)
    assert (run / "tokenizer" / "tokenizer.json").is_file()

    def refused(*extra):
        out = run_train(run, *common[:1], "trainer.max_steps=4", *common[2:], "ckpt_path=last", *extra, check=False)
        assert out.returncode != 0
        return out.stdout + out.stderr

    log = refused("modalities.vision.encoder.depth=2")
    assert "changed since the checkpoint" in log and "modalities.vision: the model configuration differs" in log

    data.write_text("".join(lines[:-1]))  # one conversation fewer
    log = refused()
    assert f"data.train: data file changed: {data}" in log
    data.write_text("".join(lines))

    saved = run / "tokenizer"
    train_bpe_tokenizer(["some other text entirely"], 300).save_pretrained(saved)
    log = refused()
    assert "tokenizer: a different vocabulary or chat template" in log


@pytest.mark.slow
def test_stage_chaining_and_lora(tmp_path, vision_demo):
    data = data_overrides(vision_demo)
    align = tmp_path / "align"
    run_train(align, *data, "stage=align", "trainer.max_steps=3", "evaluate=false")
    lora = tmp_path / "lora"
    out = run_train(lora, *data, "stage=lora", f"init_from={align}", "trainer.max_steps=3", "evaluate=false", "save_lora=separate")
    table = out.stdout
    assert "decoder" in table and "trainable" in table and "frozen" in table
    # The align run's weights were the starting point: encoders (frozen in both) are unchanged.
    a = load_file(align / "model" / "model.safetensors")
    b = load_file(lora / "model" / "model.safetensors")
    enc = [k for k in a if k.startswith("encoders.")]
    assert enc and all(torch.equal(a[k], b[k]) for k in enc)
    assert (lora / "model" / "adapter" / "adapter_config.json").is_file()
    model = OmniModel.from_pretrained(lora / "model")
    assert model.has_lora


def test_lora_merge_gives_same_logits_and_stable_keys(tiny_model, tmp_path):
    from omnimodal.training.module import apply_stage

    apply_stage(tiny_model, {"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}, "train_encoders": False}, {})
    with torch.no_grad():  # make the adapters non-trivial
        for name, p in tiny_model.decoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    assert all(("lora_" in n) == p.requires_grad for n, p in tiny_model.decoder.named_parameters())
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    tiny_model.eval()
    before = tiny_model(input_ids=ids).logits
    tiny_model.save_pretrained(tmp_path / "merged", lora="merge")
    tiny_model.save_pretrained(tmp_path / "separate", lora="separate")
    merged = OmniModel.from_pretrained(tmp_path / "merged")
    separate = OmniModel.from_pretrained(tmp_path / "separate")
    assert not merged.has_lora and separate.has_lora
    assert torch.allclose(merged(input_ids=ids).logits, before, atol=1e-5)
    assert torch.allclose(separate(input_ids=ids).logits, before, atol=1e-5)
    keys = load_file(tmp_path / "merged" / "model.safetensors").keys()
    assert "decoder.model.layers.0.self_attn.q_proj.weight" in keys
    assert not any("lora" in k for k in keys)


def test_lora_targets_that_match_nothing(tiny_model):
    with pytest.raises(ConfigError, match=r"matches nothing.*q_proj"):
        tiny_model.apply_lora(target_modules=["query_key_value"])


def test_corrupted_or_truncated_weights_are_refused(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConfigError, match="model.safetensors: cannot read weights"):
        OmniModel.from_pretrained(tmp_path / "m")


def test_missing_plugin_names_plugin_and_distribution(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    cfg_path = tmp_path / "m" / "omnimodal.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["modalities"]["lidar"] = {"plugin": "lidar", "distribution": "omnimodal-lidar", "version": "2.1", "config": {}}
    cfg_path.write_text(json.dumps(cfg))
    from omnimodal.errors import PluginError

    with pytest.raises(PluginError, match=r"modality 'lidar' from plugin 'lidar'.*install the distribution 'omnimodal-lidar'"):
        OmniModel.from_pretrained(tmp_path / "m")


def test_init_from_errors(tmp_path, tiny_model):
    from omnimodal.train import load_init

    from .conftest import tiny_decoder_cfg, tiny_vision_cfg

    with pytest.raises(ConfigError, match="no saved model there"):
        load_init({"init_from": str(tmp_path / "nothing"), "modalities": {}, "decoder": {}})
    tiny_model.save_pretrained(tmp_path / "m")
    with pytest.raises(ConfigError, match=r"has modalities \['vision'\] but this run selects \['audio', 'vision'\]"):
        load_init({"init_from": str(tmp_path / "m"), "modalities": {"vision": tiny_vision_cfg(), "audio": {}}, "decoder": tiny_decoder_cfg()})
    with pytest.raises(ConfigError, match="decoder.hidden_size is 64 in the saved model but 128"):
        load_init({"init_from": str(tmp_path / "m"), "modalities": {"vision": tiny_vision_cfg()}, "decoder": {**tiny_decoder_cfg(), "hidden_size": 128}})


def _final_weights(run):
    return load_file(run / "model" / "model.safetensors")


@pytest.mark.slow
def test_ddp_on_cpu_matches_single_process_and_survives_absent_modalities(tmp_path, vision_demo):
    """Real 2-process DDP (gloo) through the CLI vs one process on the same global batch.

    Each rank takes every other sample of the same permutation, so the two ranks' batches of 4
    together are exactly the single process's batch of 8. The results are not bitwise equal:
    Hugging Face's loss is a mean over each rank's labelled tokens, and DDP averages the two
    ranks' gradients, whereas one process takes the mean over all tokens at once; the batches'
    answers differ in token count, so the gradients differ slightly. Hence a tolerance.

    The data mixes image-only and audio-only conversations one by one, so most steps leave one
    modality absent on one rank: DDP must neither hang nor crash (a zero-weight touch of idle
    branches keeps every parameter in the graph).
    """
    from omnimodal_audio.demo import build as build_audio

    audio = build_audio(tmp_path / "audio", seed=0, sizes={"train": 12, "val": 2, "test": 2})
    mixed = tmp_path / "mixed.jsonl"
    vis = [json.loads(line) for line in vision_demo["train"].read_text().splitlines()][:32]
    aud = [json.loads(line) for line in audio["train"].read_text().splitlines()][:32]
    for r in vis:
        r["messages"][0]["content"][0]["path"] = str(vision_demo["train"].parent / r["messages"][0]["content"][0]["path"])
    for r in aud:
        r["messages"][0]["content"][0]["path"] = str(audio["train"].parent / r["messages"][0]["content"][0]["path"])
    mixed.write_text("".join(json.dumps(r) + "\n" for pair in zip(vis, aud) for r in pair))
    # The patchify ViT: the conv stem's BatchNorm normalises by each rank's own images under DDP
    # (as BatchNorm does without trainer.sync_batchnorm), which one process cannot reproduce.
    common = [
        "modalities=[vision,audio]", "modalities.vision.encoder.stem=patch",
        "modalities.audio.encoder.width=32", "modalities.audio.encoder.depth=1",
        f"data.train={mixed}", "trainer.max_steps=6", "trainer.max_epochs=10", "evaluate=false",
        "stage.warmup_ratio=0", "stage.lr=1e-3", "trainer.deterministic=true", "trainer.log_every_n_steps=1",
    ]
    TINY_NO_BATCH = [o for o in TINY if not o.startswith("data.batch_size")]
    single = tmp_path / "single"
    ddp = tmp_path / "ddp"
    out = subprocess.run([PYTHON, "-m", "omnimodal.cli", "train", *TINY_NO_BATCH, f"hydra.run.dir={single}", *common, "data.batch_size=8"],
                         capture_output=True, text=True, timeout=300, env=cli_env())
    assert out.returncode == 0, out.stderr[-3000:]
    out = subprocess.run([PYTHON, "-m", "omnimodal.cli", "train", *TINY_NO_BATCH, f"hydra.run.dir={ddp}", *common, "data.batch_size=4", "trainer=ddp_cpu"],
                         capture_output=True, text=True, timeout=400, env=cli_env(), cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "world_size: 2" in out.stderr + out.stdout or "distributed_backend=gloo" in out.stderr + out.stdout
    assert not list(tmp_path.glob("outputs")), "ranks must share the Hydra run dir"
    a, b = _final_weights(single), _final_weights(ddp)
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    # Adam normalises each parameter's step, so a near-zero gradient that differs slightly can
    # move a weight by up to lr per step: 6 steps x 1e-3 bounds the worst element; the typical
    # element must agree far more closely.
    assert diffs.max() < 6 * 1e-3, f"worst weight difference {diffs.max():.2e}"
    assert diffs.median() < 5e-5, f"median weight difference {diffs.median():.2e}"


def test_epoch_sampler_splits_one_permutation_across_ranks_and_resumes():
    from omnimodal.training.datamodule import EpochShuffleSampler

    data = list(range(21))
    single = EpochShuffleSampler(data, 1, 0, seed=5)
    ranks = [EpochShuffleSampler(data, 2, r, seed=5) for r in (0, 1)]
    for epoch in (0, 1):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        order = list(single)
        assert sorted(order) == data
        r0, r1 = list(ranks[0]), list(ranks[1])
        assert r0[:10] == order[0:20:2] and r1[:10] == order[1:20:2]
    epoch1 = list(single)
    single.set_epoch(0)
    assert list(single) != epoch1  # each epoch has its own permutation
    it = iter(single)
    head = [next(it) for _ in range(7)]
    state = it.state_dict()
    again = iter(EpochShuffleSampler(data, 1, 0, seed=5))
    again.load_state_dict(state)
    assert head + list(again) == list(single)


@pytest.mark.slow
def test_multirun_sweep_gives_one_run_dir_each(tmp_path, vision_demo):
    out = subprocess.run(
        [PYTHON, "-m", "omnimodal.cli", "train", "-m", *TINY, *data_overrides(vision_demo), "trainer.max_steps=2",
         "evaluate=false", "save_model=false", "trainer.log_every_n_steps=1", "stage.lr=1e-3,3e-4", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True, text=True, timeout=300, env=cli_env(), cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert runs == ["0", "1"]
    for run in runs:
        assert (tmp_path / "sweep" / run / "checkpoints" / "last.ckpt").is_file()
        assert (tmp_path / "sweep" / run / "loss.png").is_file()


@pytest.mark.slow
def test_bf16_mixed_precision_and_gradient_checkpointing_from_config(tmp_path, vision_demo):
    run = tmp_path / "bf16"
    out = run_train(run, *data_overrides(vision_demo), "trainer.max_steps=3", "evaluate=false",
                    "trainer.precision=bf16-mixed", "decoder.gradient_checkpointing=true")
    assert "bf16" in out.stdout + out.stderr
    weights = load_file(run / "model" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_trained_model_under_fsdp_is_rebuilt_whole_from_the_gathered_state(tiny_model, vision_demo):
    """Under FSDP rank 0 must save and evaluate a whole model, not its shard's views.

    FSDP needs a GPU, so the strategy here wraps nothing and the plain state dict stands in for
    the full gather (which gives rank 0 the same keys, without FSDP's prefixes); the real gather
    was run on one H100. What is checked is the rebuild: a fresh model (LoRA applied by the
    stage) gets exactly the trained weights and ``extra``.
    """
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from omnimodal.training.module import OmniLightningModule, trained_model

    from .conftest import texts_of, tiny_decoder_cfg, tiny_vision_cfg

    stage = {"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}}
    module = OmniLightningModule(tiny_model, stage, {})
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    tiny_model.extra["data"] = {"train": ["x.jsonl"]}

    def rebuild():
        torch.manual_seed(1)
        cfg = {"decoder": tiny_decoder_cfg(), "modalities": {"vision": tiny_vision_cfg()}}
        return OmniModel.from_config(cfg, texts=texts_of([vision_demo["train"]]))

    strategy = FSDPStrategy()
    strategy.model = module
    model = trained_model(SimpleNamespace(strategy=strategy, global_rank=0), module, rebuild)
    assert model is not tiny_model and model.has_lora
    want, have = tiny_model.state_dict(), model.state_dict()
    assert want.keys() == have.keys()
    assert all(torch.equal(want[k], have[k]) for k in want)
    assert model.extra["data"] == {"train": ["x.jsonl"]}
    assert trained_model(SimpleNamespace(strategy=strategy, global_rank=1), module, rebuild) is None
    # Other strategies hold the whole model: it is used as it is.
    plain = SimpleNamespace(strategy=SimpleNamespace(), global_rank=0)
    assert trained_model(plain, module, rebuild) is tiny_model


def test_throughput_summary_leaves_out_warmup_and_reports_rates():
    from types import SimpleNamespace

    from omnimodal.training.throughput import ThroughputLogger

    logged = {}
    pl_module = SimpleNamespace(device=torch.device("cpu"), log=lambda k, v, **kw: logged.__setitem__(k, v))
    cb = ThroughputLogger(window=2)
    cb.on_train_epoch_start(None, pl_module)
    batch = {"input_ids": torch.zeros(4, 6), "attention_mask": torch.tensor([[1] * 5 + [0]] * 4)}
    for i in range(5):
        time.sleep(0.01)
        cb.on_train_batch_end(None, pl_module, None, batch, i)
    cb.on_train_end(None, pl_module)
    s = cb.summary
    assert s["steps"] == 4 and s["seconds"] > 0
    assert s["tokens_per_sec"] == pytest.approx(5 * s["samples_per_sec"], rel=1e-3)
    assert "peak_gpu_memory_gib" not in s
    assert logged["train/tokens_per_sec"] > 0
    assert "samples/s" in cb.describe()


def test_gradient_clipping_under_fsdp_goes_through_fsdp(tiny_model):
    """Lightning's FSDP precision plugin refuses clipping by norm; FSDP's own clip_grad_norm_ does it."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from omnimodal.training.module import FSDPLightningModule, OmniLightningModule

    assert "configure_gradient_clipping" not in vars(OmniLightningModule)  # other strategies: Lightning's hook
    calls = []
    strategy = FSDPStrategy()
    strategy.model = SimpleNamespace(clip_grad_norm_=calls.append)
    module = FSDPLightningModule(tiny_model, {}, {})
    module._trainer = SimpleNamespace(strategy=strategy)
    module.configure_gradient_clipping(None, 1.0, "norm")
    assert calls == [1.0]


def test_training_keeps_attention_off_cudnn_on_a_gpu_and_restores_it(monkeypatch):
    """cuDNN attention re-plans for every new shape (measured 3x slower audio training on an H100)."""
    from omnimodal.train import no_cudnn_attention

    before = torch.backends.cuda.cudnn_sdp_enabled()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        with no_cudnn_attention():
            assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_an_exhausted_epoch_state_resumes_at_the_next_epoch():
    """A checkpoint on an epoch's last batch stores (epoch, position=end); Lightning then iterates
    the restored iterator for the next epoch, which must give that epoch's order, not nothing."""
    from omnimodal.training.datamodule import EpochShuffleSampler

    data = list(range(13))
    sampler = EpochShuffleSampler(data, 1, 0, seed=3)
    it = iter(sampler)
    assert sorted(it) == data
    state = it.state_dict()
    assert state == {"epoch": 0, "position": 13}
    fresh = EpochShuffleSampler(data, 1, 0, seed=3)
    again = iter(fresh)
    again.load_state_dict(state)
    assert list(again) == fresh.indices(1) != fresh.indices(0)


def test_rng_state_continues_every_generator_including_numpys_cached_gaussian():
    import random

    import numpy as np

    from omnimodal.training.rng import rng_state, set_rng_state

    np.random.standard_normal()  # Box-Muller draws two: one is cached for the next call
    state = rng_state()
    assert state["numpy"][3] == 1  # the cached Gaussian is part of the state

    def draws():
        return (torch.rand(3).tolist(), torch.nn.functional.dropout(torch.ones(8), 0.5).tolist(),
                random.random(), np.random.standard_normal(), np.random.rand())

    first = draws()
    set_rng_state(rng_state())  # restoring the current state changes nothing
    set_rng_state(state)
    assert draws() == first
    # Plain containers and tensors: loadable with torch.load(weights_only=True).
    import io

    buf = io.BytesIO()
    torch.save({"rng": [state]}, buf)
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True)["rng"][0])
    assert draws() == first


def test_signature_changes_name_the_file_the_tokenizer_and_the_model_part(tmp_path):
    from omnimodal.decoder import train_bpe_tokenizer
    from omnimodal.training.signature import data_signature, signature_changes, tokenizer_hash

    data = tmp_path / "train.jsonl"
    data.write_text('{"a": 1}\n')
    tok = train_bpe_tokenizer(["red circle", "blue square"], 300)
    before = {"decoder": "x", "modalities.vision": "v", "tokenizer": tokenizer_hash(tok), **data_signature({"train": [data]})}
    assert signature_changes(before, dict(before)) == []
    tok.save_pretrained(tmp_path / "tok")
    from transformers import AutoTokenizer

    assert tokenizer_hash(AutoTokenizer.from_pretrained(tmp_path / "tok")) == before["tokenizer"]  # survives a save

    data.write_text('{"a": 2}\n')
    moved = tmp_path / "moved.jsonl"
    moved.write_text('{"a": 1}\n')
    other = train_bpe_tokenizer(["green triangle"], 300)
    after = {"decoder": "x", "modalities.vision": "w", "modalities.audio": "a", "tokenizer": tokenizer_hash(other),
             **data_signature({"train": [data]})}
    changes = "\n".join(signature_changes(before, after))
    assert f"data.train: data file changed: {data.resolve()}" in changes
    assert "tokenizer: a different vocabulary" in changes
    assert "modalities.vision: the model configuration differs" in changes
    assert "modalities.audio: not in the checkpoint" in changes
    # The same content at another path is the same data; an older checkpoint without tokenizer
    # and data entries is compared on what it has.
    assert signature_changes(before, {**before, **data_signature({"train": [moved]})}) == []
    assert signature_changes({"decoder": "x", "modalities.vision": "v"}, before) == []


def test_exit_hook_refuses_a_malformed_value():
    from omnimodal.training.checkpoint import _exit_point

    assert _exit_point(None) is None
    assert _exit_point("before_rename:12") == ("before_rename", 12)
    with pytest.raises(ValueError, match="OMNIMODAL_TEST_EXIT_AT='after:3'"):
        _exit_point("after:3")


def _worsening_module():
    """A one-layer LightningModule whose validation loss rises every epoch."""
    import lightning as L

    class Worsening(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", float(self.current_epoch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Worsening()


@pytest.mark.parametrize("monitor", ["val/loss", None])
def test_last_checkpoint_is_the_last_step_even_when_validation_gets_worse(tmp_path, monitor):
    import lightning as L

    from omnimodal.training import kit

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = L.Trainer(max_epochs=3, callbacks=kit.checkpoint_callbacks(tmp_path, monitor=monitor), logger=False,
                        plugins=[kit.checkpoint_io()], enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_worsening_module(), data, data if monitor else None)
    steps = {p.name: torch.load(p, weights_only=False)["global_step"] for p in tmp_path.iterdir()}
    # 2 steps per epoch: last.ckpt is the end of epoch 3, the best (by a rising loss) epoch 1's
    assert steps == ({"last.ckpt": 6, "epoch=0-step=2.ckpt": 2} if monitor else {"last.ckpt": 6})


def test_a_run_stopped_before_its_first_validation_keeps_last_ckpt_without_a_monitor_warning(tmp_path):
    """max_steps inside the first epoch: no validation has run, so there is no best checkpoint to
    judge; Lightning warned "could not find the monitored key" when the best-by-val/loss callback
    tried to save at the epoch's end."""
    import warnings

    import lightning as L

    from omnimodal.training import kit

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 2)), batch_size=4)
    trainer = L.Trainer(max_steps=2, callbacks=kit.checkpoint_callbacks(tmp_path, monitor="val/loss"), logger=False,
                        plugins=[kit.checkpoint_io()], enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_worsening_module(), data, data)
    assert not [w for w in caught if "monitored key" in str(w.message)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 2


def test_checkpoint_io_writes_a_loadable_file_in_place_of_the_old_one(tmp_path):
    from omnimodal.training.checkpoint import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"  # the folder does not exist yet
    first = {"global_step": 1, "state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "loops": {"epoch": 0}}
    io.save_checkpoint(first, path)
    second = {"global_step": 2, "state_dict": {"w": torch.ones(2, 3, dtype=torch.bfloat16)}}
    io.save_checkpoint(second, path)
    back = io.load_checkpoint(path)
    assert back["global_step"] == 2 and back["state_dict"]["w"].dtype == torch.bfloat16
    assert torch.equal(back["state_dict"]["w"], second["state_dict"]["w"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint(first, path, storage_options={"x": 1})


@pytest.mark.slow
@pytest.mark.parametrize("exit_at", ["after_write:8", "after_write:5"], ids=["mid-epoch", "epoch-end"])
def test_killed_run_with_the_feature_cache_resumes_exactly(tmp_path, train40, exit_at):
    """stage=align with data.feature_cache: epoch 1 reads the entries written at the end of
    epoch 0; the resumed run must read the same snapshot and end bitwise equal."""
    extra = ["stage=align", *EVERY_STEP]
    run_train(tmp_path / "s", train40, *MATRIX, *extra, f"data.feature_cache={tmp_path / 'cache-s'}")
    log = kill_and_resume(tmp_path / "r", exit_at, train40, *extra, f"data.feature_cache={tmp_path / 'cache-r'}")
    assert "feature cache" in log.lower()
    assert_same_weights(_final_weights(tmp_path / "s"), tmp_path / "r")


def test_loss_plot_without_matplotlib_leaves_the_run_alone(tmp_path, monkeypatch, caplog):
    """matplotlib comes with the ``plot`` extra; a base install still finishes its run (the model
    is saved after the plot) and says where the losses are."""
    import sys

    from omnimodal.training.plot import plot_losses

    csv = tmp_path / "logs" / "metrics.csv"
    csv.parent.mkdir()
    csv.write_text("epoch,step,train/loss,val/loss\n0,9,2.5,\n0,19,1.5,\n0,19,,1.7\n")
    assert plot_losses([csv], tmp_path / "loss.png") == tmp_path / "loss.png"
    assert (tmp_path / "loss.png").stat().st_size > 1000

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with caplog.at_level("INFO", logger="omnimodal.training.plot"):
        assert plot_losses([csv], tmp_path / "again.png") is None
    assert not (tmp_path / "again.png").exists()
    assert "matplotlib is not installed" in caplog.text and str(csv) in caplog.text
