"""The ``omnimodal`` command's start-up: no cyclic GC while it loads, GC on for training, a frozen heap at exit."""

import gc
import json
import subprocess

from omnimodal import startup

from .conftest import PYTHON, cli_env
from .test_training import TINY

SPY = """
import atexit, gc, json, sys
import lightning.pytorch as pl
import omnimodal.api as api

seen = {}
atexit.register(lambda: print("SEEN", json.dumps({**seen, "frozen_at_exit": gc.get_freeze_count()})))  # runs last
fit, trainer_fit = api.fit, pl.Trainer.fit

def spy_fit(*args, **kwargs):
    seen["gc_during_startup"] = gc.isenabled()
    return fit(*args, **kwargs)

def spy_trainer_fit(self, *args, **kwargs):
    seen["gc_during_training"] = gc.isenabled()
    seen["frozen_before_training"] = gc.get_freeze_count()
    return trainer_fit(self, *args, **kwargs)

api.fit, pl.Trainer.fit = spy_fit, spy_trainer_fit
from omnimodal.cli import main

code = main(["train", *sys.argv[1:]])
seen["gc_after"] = gc.isenabled()
seen["frozen_after"] = gc.get_freeze_count()
sys.exit(code)
"""


def test_cli_train_loads_without_the_collector_and_trains_with_it(tmp_path, vision_demo):
    data = [f"data.{split}={vision_demo[split]}" for split in ("train", "val", "test")]
    out = subprocess.run(
        [PYTHON, "-c", SPY, *TINY, *data, "trainer.max_steps=2", "evaluate=false", "save_model=false",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=cli_env(),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    seen = json.loads(out.stdout.rsplit("SEEN ", 1)[1])
    assert seen["gc_during_startup"] is False  # imports, config, model: no collector passes
    assert seen["gc_during_training"] is True  # training's garbage is collected as usual
    assert seen["frozen_before_training"] > 100_000  # torch, transformers, Lightning: frozen, never walked again
    assert seen["gc_after"] is True
    assert seen["frozen_at_exit"] > seen["frozen_after"]  # the atexit freeze: the final collection skips it all


def test_library_code_leaves_the_collector_alone():
    frozen = gc.get_freeze_count()
    startup.resume()  # what omnimodal.fit calls: nothing, unless the CLI paused the collector
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    gc.disable()
    try:
        startup.pause()  # a collector the user turned off stays off
        startup.resume()
        assert not gc.isenabled() and gc.get_freeze_count() == frozen
    finally:
        gc.enable()
