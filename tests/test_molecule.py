"""The molecule plugin: RDKit parsing with clear errors, graph features, GINE encoder, demo data."""

from __future__ import annotations

import json
import logging
import random
import subprocess
from pathlib import Path

import pytest
import torch

from omnimodal.errors import ConfigError, DataError, MediaError

from ._require import require
from .conftest import PYTHON, ROOT, texts_of, tiny_decoder_cfg, tiny_vision_cfg

require("rdkit", "molecule")
require("torch_geometric", "molecule")

from rdkit import Chem  # noqa: E402


def tiny_molecule_cfg(projector: dict | None = None, **extra) -> dict:
    cfg = {
        "encoder": {"kind": "gine", "hidden_dim": 32, "num_layers": 2, "dropout": 0.0},
        "projector": projector or {"kind": "resampler", "num_queries": 4},
        "max_atoms": 64,
        "on_too_many_atoms": "error",
        "train_encoder": True,
    }
    cfg.update(extra)
    return cfg


def modality(cfg: dict | None = None):
    from omnimodal.plugins import get_registry
    from omnimodal.specs import import_object

    spec = get_registry().modality("molecule")
    return import_object(spec.impl)(spec, cfg if cfg is not None else tiny_molecule_cfg())


def column(name: str) -> int:
    from omnimodal_molecule.featurize import ATOM_FEATURES

    return [n for n, _ in ATOM_FEATURES].index(name)


def bond_column(name: str) -> int:
    from omnimodal_molecule.featurize import BOND_FEATURES

    return [n for n, _ in BOND_FEATURES].index(name)


# ---- plugin wiring ------------------------------------------------------------------------


def test_spec_projector_and_config_dir():
    from omnimodal.plugins import get_registry

    reg = get_registry()
    spec = reg.modality("molecule")
    assert (spec.part_type, spec.placeholder, spec.api_part_types) == ("molecule", "<molecule>", ("molecule",))
    assert spec.impl == "omnimodal_molecule.modality:MoleculeModality"
    assert spec.requires == ("rdkit", "torch_geometric")
    assert reg.projector("graph_pool").impl == "omnimodal_molecule.projectors:GraphPoolProjector"
    assert reg.demos["molecule"].builder == "omnimodal_molecule.demo:build"
    conf = Path(reg.plugin("molecule").config_dirs[0])
    assert (conf / "modalities/molecule.yaml").read_text().startswith("# @package modalities.molecule")
    assert (conf / "molecule/encoder/gine.yaml").is_file()


def test_plugin_entry_module_is_light():
    code = (
        "import sys, omnimodal_molecule; "
        "heavy = [m for m in ('torch', 'torch_geometric', 'rdkit') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([PYTHON, "-c", code], check=True, timeout=60, cwd=ROOT)


def test_hydra_composes_molecule_with_vision_and_swaps():
    args = [
        "modalities=[vision,molecule]",
        "molecule/encoder@modalities.molecule.encoder=gine_small",
        "projector@modalities.molecule.projector=graph_pool",
        "--cfg",
        "job",
    ]
    out = subprocess.run(
        [PYTHON, "-m", "omnimodal.train", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    import yaml

    mods = yaml.safe_load(out.stdout)["modalities"]
    assert set(mods) == {"vision", "molecule"}
    mol = mods["molecule"]
    assert mol["encoder"]["hidden_dim"] == 128 and mol["projector"] == {"kind": "graph_pool", "pooling": "mean"}
    assert (mol["max_atoms"], mol["on_too_many_atoms"], mol["train_encoder"]) == (128, "error", True)
    assert modality(mol).num_tokens(20) == 1


def test_config_is_checked():
    with pytest.raises(ConfigError, match="on_too_many_atoms"):
        modality(tiny_molecule_cfg(on_too_many_atoms="drop"))
    with pytest.raises(ConfigError, match="max_atoms"):
        modality(tiny_molecule_cfg(max_atoms=0))
    with pytest.raises(ConfigError, match="encoder kind 'gcn'.*gine"):
        modality(tiny_molecule_cfg(encoder={"kind": "gcn"}))
    with pytest.raises(ConfigError, match="bad option"):
        modality(tiny_molecule_cfg(encoder={"kind": "gine", "widht": 3})).build_encoder()


# ---- featurisation --------------------------------------------------------------------------


def test_benzene_graph():
    g = modality().prepare("c1ccccc1", "benzene").features["graph"]
    assert g.num_nodes == 6 and g.x.dtype == torch.long
    assert g.edge_index.shape == (2, 12)  # 6 bonds, each as two directed edges
    assert g.x[:, column("aromatic")].tolist() == [1] * 6
    assert g.x[:, column("atomic_num")].tolist() == [6] * 6
    assert g.x[:, column("total_h")].tolist() == [1] * 6  # hydrogens implicit
    assert g.x[:, column("ring_size_6")].tolist() == [1] * 6
    assert g.x[:, column("ring_size_5")].tolist() == [0] * 6
    assert g.edge_attr[:, bond_column("bond_type")].tolist() == [3] * 12  # aromatic
    assert g.edge_attr[:, bond_column("in_ring")].tolist() == [1] * 12
    # each bond's two directions carry the same features
    src, dst = g.edge_index
    assert set(zip(src.tolist(), dst.tolist(), strict=True)) == set(zip(dst.tolist(), src.tolist(), strict=True))


def test_atom_features_of_a_charged_chiral_molecule():
    from omnimodal_molecule.featurize import ATOM_FEATURES, BOND_FEATURES

    g = modality().prepare("C[C@H](N)C(=O)[O-]", "alanine").features["graph"]  # L-alanine, anion
    x = g.x
    assert x.shape == (6, len(ATOM_FEATURES)) and g.edge_attr.shape == (10, len(BOND_FEATURES))
    assert x[1, column("chirality")].item() == 2  # S
    assert sorted(x[:, column("formal_charge")].tolist()).count(2) == 1  # one -1 charge (index 2)
    assert x[:, column("in_ring")].sum().item() == 0
    for name, size in ATOM_FEATURES:
        assert int(x[:, column(name)].max()) < size


def test_renumbered_molecule_gives_same_graph_embedding():
    from omnimodal.projectors import build_projector

    smiles = "CC(=O)Oc1ccccc1C(=O)O"  # aspirin
    mol = Chem.MolFromSmiles(smiles)
    perm = list(range(mol.GetNumAtoms()))
    random.Random(0).shuffle(perm)
    variants = [smiles, Chem.RenumberAtoms(mol, perm), "OC(=O)c1ccccc1OC(C)=O"]
    mod = modality()
    torch.manual_seed(0)
    enc = mod.build_encoder().eval()
    resampler = build_projector({"kind": "resampler", "num_queries": 4}, enc.out_dim, 16).eval()
    pool = build_projector({"kind": "graph_pool", "pooling": "mean_max"}, enc.out_dim, 16).eval()
    batch = mod.collate([mod.prepare(v, f"variant {i}").features for i, v in enumerate(variants)])
    with torch.no_grad():
        features, mask = enc(**batch)
        for proj in (resampler, pool):
            tokens, _ = proj(features, mask)
            assert torch.allclose(tokens[0], tokens[1], atol=1e-5)
            assert torch.allclose(tokens[0], tokens[2], atol=1e-5)
    # a renumbered chiral molecule keeps its stereo features (CIP labels, not CW/CCW tags)
    a = modality().prepare("F/C=C/[C@H](Cl)Br", "a").features["graph"]
    b = modality().prepare("Br[C@@H](Cl)/C=C/F", "b").features["graph"]
    assert sorted(map(tuple, a.x.tolist())) == sorted(map(tuple, b.x.tolist()))
    assert sorted(map(tuple, a.edge_attr.tolist())) == sorted(map(tuple, b.edge_attr.tolist()))


# ---- batching and token counts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("projector", "expected"),
    [
        ({"kind": "resampler", "num_queries": 4}, [4, 4, 4]),
        ({"kind": "mlp"}, [1, 6, 4]),
        ({"kind": "graph_pool"}, [1, 1, 1]),
        ({"kind": "pool", "stride": 10_000}, [1, 1, 1]),
    ],
)
def test_batch_of_different_sizes(projector, expected):
    from omnimodal.projectors import build_projector

    mod = modality(tiny_molecule_cfg(projector))
    items = [mod.prepare(s, f"item {i}") for i, s in enumerate(["[Na+]", "c1ccccc1", "CC(=O)O"])]
    assert [it.length for it in items] == [1, 6, 4]
    assert [it.num_tokens for it in items] == expected
    enc = mod.build_encoder()
    features, mask = enc(**mod.collate([it.features for it in items]))
    assert features.shape == (3, 6, enc.out_dim) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [1, 6, 4]
    assert not mask[0, 1:].any() and not mask[2, 4:].any()
    assert torch.all(features[~mask] == 0)
    tokens, tmask = build_projector(projector, enc.out_dim, 8)(features, mask)
    assert tmask.sum(1).tolist() == expected  # the core's count agrees with the forward pass
    assert torch.isfinite(tokens).all()


@pytest.mark.parametrize(
    "options",
    [{}, {"virtual_node": False, "readout": True}, {"virtual_node": True, "readout": False}],
)
def test_one_atom_molecule_alone_trains(options):
    encoder = dict(tiny_molecule_cfg()["encoder"], **options)
    mod = modality(tiny_molecule_cfg(encoder=encoder))
    enc = mod.build_encoder().train()
    features, mask = enc(**mod.collate([mod.prepare("C", "methane").features]))
    assert features.shape == (1, 1, enc.out_dim) and mask.tolist() == [[True]]
    assert torch.isfinite(features).all()
    features.sum().backward()


def test_readout_gives_every_atom_the_molecule_summary():
    """With ``readout``, an atom's features depend on atoms beyond its message-passing reach."""
    encoder = dict(tiny_molecule_cfg()["encoder"], num_layers=1, virtual_node=False)
    with_readout = modality(tiny_molecule_cfg(encoder=dict(encoder, readout=True)))
    without = modality(tiny_molecule_cfg(encoder=dict(encoder, readout=False)))
    for mod, reaches in ((with_readout, True), (without, False)):
        torch.manual_seed(0)
        enc = mod.build_encoder().eval()
        # the first carbon is 1 bond from its neighbour, 5 from the far end, which differs
        batch = mod.collate([mod.prepare(s, s).features for s in ("CCCCCC", "CCCCCCl")])
        with torch.no_grad():
            features, _ = enc(**batch)
        assert torch.allclose(features[0, 0], features[1, 0], atol=1e-6) != reaches


# ---- max atoms ---------------------------------------------------------------------------------


def test_too_many_atoms_is_an_error_naming_the_item():
    mod = modality(tiny_molecule_cfg(max_atoms=5))
    with pytest.raises(MediaError, match=r"data.jsonl:4: molecule has 8 heavy atoms, more than max_atoms=5"):
        mod.prepare("c1ccccc1CC", "data.jsonl:4")


def test_truncation_is_counted_and_logged(caplog):
    mod = modality(tiny_molecule_cfg({"kind": "mlp"}, max_atoms=5, on_too_many_atoms="truncate"))
    with caplog.at_level(logging.WARNING, logger="omnimodal.molecule"):
        item = mod.prepare("c1ccccc1CC", "data.jsonl:4")
    g = item.features["graph"]
    assert item.length == 5 and item.num_tokens == 5 and g.num_nodes == 5
    assert int(g.edge_index.max()) < 5 and g.edge_index.shape[1] == 8  # 4 of benzene's bonds kept
    assert mod.counters == {"molecules_truncated": 1}
    assert "data.jsonl:4" in caplog.text and "truncated from 8" in caplog.text
    mod.prepare("CCO", "small")
    assert mod.counters == {"molecules_truncated": 1}


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("C1CC(", r"invalid SMILES 'C1CC\(' \(RDKit: syntax error"),
        ("CC[Xx]", r"invalid SMILES.*syntax error"),
        ("C(C)(C)(C)(C)C", r"not a valid molecule \(RDKit: AtomValenceException: Explicit valence for atom # 0 C, 5"),
        ("c1cccc1", r"KekulizeException"),
        ("", r"empty SMILES"),
        ("   ", r"empty SMILES"),
        (3.5, r"cannot load a molecule from float"),
    ],
)
def test_bad_input_names_the_item_and_rdkits_reason(raw, reason):
    with pytest.raises(MediaError, match=r"^train.jsonl:12: message 0 part 0 .*" + reason):
        modality().prepare(raw, "train.jsonl:12: message 0 part 0 (molecule)")


def test_files_by_path(tmp_path):
    mod = modality()
    mol = Chem.MolFromSmiles("c1ccccc1O")
    (tmp_path / "phenol.mol").write_text(Chem.MolToMolBlock(mol))
    (tmp_path / "phenol.sdf").write_text(Chem.MolToMolBlock(mol) + "$$$$\n")
    for name in ("phenol.mol", "phenol.sdf"):
        raw = mod.item_from_part({"type": "molecule", "path": name}, tmp_path)
        assert raw == tmp_path / name
        assert mod.prepare(raw, name).length == 7
    block = mod.item_from_part({"type": "molecule", "molblock": Chem.MolToMolBlock(mol)}, None)
    assert mod.prepare(block, "inline").length == 7
    # explicit hydrogens in a file become implicit
    (tmp_path / "h.mol").write_text(Chem.MolToMolBlock(Chem.AddHs(mol)))
    assert mod.prepare(tmp_path / "h.mol", "h").length == 7


def test_unreadable_files_name_the_item(tmp_path):
    mod = modality()
    mol = Chem.MolToMolBlock(Chem.MolFromSmiles("CCO"))
    (tmp_path / "garbage.mol").write_text("not\na\nmol\nfile\n")
    (tmp_path / "empty.sdf").write_text("")
    (tmp_path / "two.sdf").write_text(mol + "$$$$\n" + mol + "$$$$\n")
    (tmp_path / "binary.mol").write_bytes(b"\xff\xfe\x00\x81" * 10)
    (tmp_path / "x.png").write_bytes(b"png")
    cases = {
        "missing.mol": "molecule file not found",
        "garbage.mol": r"not a valid MOL block \(RDKit: .+\)",
        "empty.sdf": "is empty",
        "two.sdf": "holds 2 molecules",
        "binary.mol": "cannot read molecule file",
        "x.png": r"must be \.mol, \.sdf",
    }
    for name, reason in cases.items():
        with pytest.raises(MediaError, match=r"^rec:3: .*" + reason):
            mod.prepare(tmp_path / name, "rec:3")


def test_parts_and_api_parts():
    mod = modality()
    assert mod.item_from_part({"type": "molecule", "smiles": "CCO"}, Path("/data")) == "CCO"
    with pytest.raises(DataError, match="exactly one of 'smiles', 'molblock' or 'path'"):
        mod.item_from_part({"type": "molecule", "smiles": "CCO", "path": "x.mol"}, None)
    with pytest.raises(DataError, match="exactly one of"):
        mod.item_from_part({"type": "molecule"}, None)
    with pytest.raises(DataError, match="must be a string"):
        mod.item_from_part({"type": "molecule", "smiles": 5}, None)
    assert mod.item_from_api_part({"type": "molecule", "smiles": "CCO"}) == "CCO"
    with pytest.raises(DataError, match="not a server-side 'path'"):
        mod.item_from_api_part({"type": "molecule", "path": "/etc/passwd"})
    with pytest.raises(DataError, match="accepts no API part of type 'image_url'"):
        mod.item_from_api_part({"type": "image_url", "image_url": {"url": "x"}})
    assert mod.prepare(Chem.MolFromSmiles("CCO"), "mol object").length == 3


# ---- demo data ------------------------------------------------------------------------------

SMALL = {"train": 24, "val": 12, "test": 12}


@pytest.fixture(scope="module")
def molecule_demo(tmp_path_factory) -> dict[str, Path]:
    from omnimodal_molecule.demo import build

    return build(tmp_path_factory.mktemp("molecule_demo"), seed=0, sizes=SMALL)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _turns(records: list[dict]) -> list[tuple[str, str, str]]:
    """``(smiles, kind, answer)`` per question asked, checking each record's shape: the
    molecule opens the first user turn only, then user and assistant turns alternate."""
    from omnimodal_molecule.demo import QUESTIONS

    kind_of = {question: kind for kind, (question, _, _) in QUESTIONS.items()}
    out = []
    for r in records:
        messages = r["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        molecule = messages[0]["content"][0]
        assert molecule["type"] == "molecule"
        kinds = []
        for i in range(0, len(messages), 2):
            *media, question = messages[i]["content"]
            assert media == ([molecule] if i == 0 else []) and question["type"] == "text"
            kinds.append(kind_of[question["text"]])
            out.append((molecule["smiles"], kinds[-1], messages[i + 1]["content"][0]["text"]))
        assert len(set(kinds)) == len(kinds)  # one question once per conversation
        if "kind" in r:
            assert len(kinds) == 1 and r["kind"] == kinds[0]
    return out


def test_demo_is_deterministic_balanced_and_split_by_molecule(molecule_demo, tmp_path):
    from omnimodal_molecule.demo import QUESTIONS, build

    again = build(tmp_path, seed=0, sizes=SMALL)
    for split in ("train", "val", "test"):
        assert molecule_demo[split].read_bytes() == again[split].read_bytes()
    molecules = {}
    for split, path in molecule_demo.items():
        recs = _records(path)
        turns = _turns(recs)
        if split != "train":  # held-out records ask one question each
            assert all(len(r["messages"]) == 2 and "kind" in r for r in recs)
        molecules[split] = {Chem.MolToSmiles(Chem.MolFromSmiles(smiles)) for smiles, _, _ in turns}
        for kind, (_, answers, answer_of) in QUESTIONS.items():
            mine = [(smiles, answer) for smiles, k, answer in turns if k == kind]
            got = [answer for _, answer in mine]
            assert {a: got.count(a) for a in answers} == {a: SMALL[split] // len(answers) for a in answers}
            for smiles, answer in mine:  # answers are RDKit's
                assert answer_of(Chem.MolFromSmiles(smiles)) == answer
    assert not molecules["train"] & molecules["test"]
    assert not molecules["train"] & molecules["val"]
    assert not molecules["val"] & molecules["test"]


def test_demo_parts_load_through_the_modality(molecule_demo):
    mod = modality()
    for r in _records(molecule_demo["test"])[:10]:
        part = r["messages"][0]["content"][0]
        assert mod.prepare(mod.item_from_part(part, molecule_demo["test"].parent), "demo").length >= 3


def test_demo_pool_holds_only_molecules_the_modality_accepts():
    """The NCI file has SMILES that RDKit's default parse accepts but our stricter check refuses
    (a ferrocene's carbons); the demo pool must leave them out, or training would stop on them."""
    from omnimodal_molecule.chem import mol_from_smiles
    from omnimodal_molecule.demo import load_molecules

    ferrocene = "CN(C)C[C-]12C3=C4C5=C1[Fe++]23456789[C-]%10C6=C7C8=C9%10"
    assert Chem.MolFromSmiles(ferrocene) is not None
    with pytest.raises(MediaError, match="valence"):
        mol_from_smiles(ferrocene, "x")
    written = {s for s, _, _ in load_molecules()}
    assert ferrocene not in written and len(written) > 4000


def test_demo_train_answers_stay_balanced_when_molecules_run_short(tmp_path):
    """Carboxylic acids are rare (~350 training molecules): asking for more acid 'yes' records
    than that reuses molecules (train only) instead of unbalancing the answers."""
    from collections import Counter

    from omnimodal_molecule.demo import build

    paths = build(tmp_path, seed=0, sizes={"train": 800, "val": 2, "test": 2})
    acid = [(smiles, answer) for smiles, kind, answer in _turns(_records(paths["train"])) if kind == "acid"]
    assert Counter(answer for _, answer in acid) == {"yes": 400, "no": 400}
    uses = Counter(smiles for smiles, answer in acid if answer == "yes")
    assert len(uses) < 400 and max(uses.values()) == 2  # every molecule once before any twice


def test_demo_training_conversations_ask_each_molecule_its_balanced_picks_at_once(molecule_demo, tmp_path):
    """``multi_turn=True`` training records hold exactly the default build's picks (so answers
    stay balanced), grouped per molecule; validation and test are byte-identical either way."""
    from collections import Counter

    from omnimodal_molecule.demo import build

    multi = build(tmp_path, seed=0, sizes=SMALL, multi_turn=True)
    for split in ("val", "test"):
        assert multi[split].read_bytes() == molecule_demo[split].read_bytes()
    flat, grouped = _records(molecule_demo["train"]), _records(multi["train"])
    assert all(len(r["messages"]) == 2 for r in flat)
    assert Counter(_turns(grouped)) == Counter(_turns(flat))
    assert len(grouped) < len(flat)  # molecules picked for several questions are encoded once
    opened = Counter(r["messages"][0]["content"][0]["smiles"] for r in grouped)
    picks = Counter((smiles, kind) for smiles, kind, _ in _turns(flat))
    most: dict[str, int] = {}  # a molecule's conversations: its most picks for one question
    for (smiles, _), n in picks.items():
        most[smiles] = max(most.get(smiles, 0), n)
    assert opened == most


def test_demo_default_sizes():
    from omnimodal_molecule.demo import QUESTIONS, RECORDS_PER_QUESTION

    assert 5000 <= len(QUESTIONS) * RECORDS_PER_QUESTION["train"] <= 7000
    assert 100 <= len(QUESTIONS) * RECORDS_PER_QUESTION["val"] <= 200
    assert 250 <= len(QUESTIONS) * RECORDS_PER_QUESTION["test"] <= 400


# ---- a training step with molecules and images in one batch ----------------------------------------


def test_training_step_mixes_molecules_and_images(vision_demo, molecule_demo):
    from omnimodal.data.dataset import Collator, ConversationDataset
    from omnimodal.data.records import Record
    from omnimodal.model import OmniModel

    torch.manual_seed(0)
    cfg = {"decoder": tiny_decoder_cfg(), "modalities": {"vision": tiny_vision_cfg(), "molecule": tiny_molecule_cfg()}}
    texts = texts_of([vision_demo["train"]]) + [
        part.get("text", "") for r in _records(molecule_demo["train"]) for m in r["messages"] for part in m["content"]
    ]
    model = OmniModel.from_config(cfg, texts=texts).train()
    image = str(vision_demo["train"].parent / "images/train/00000.png")

    def record(parts, answer, source):
        msgs = [{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        return Record(msgs, source)

    recs = [
        record([{"type": "image", "path": image}, {"type": "molecule", "smiles": "c1ccccc1O"},
                {"type": "text", "text": "Same colour?"}], "no", "mem:1"),
        record([{"type": "molecule", "smiles": "CC(=O)O"}, {"type": "text", "text": "Does it have a carboxylic acid group?"}], "yes", "mem:2"),
        record([{"type": "image", "path": image}, {"type": "text", "text": "What shape are they?"}], "circle", "mem:3"),
        record([{"type": "molecule", "smiles": "[Na+]"}, {"type": "text", "text": "How many rings?"}], "none", "mem:4"),
    ]
    ds = ConversationDataset(recs, model.tokenizer, model.modalities, model.placeholder_ids)
    batch = Collator(model.modalities, model.tokenizer.pad_token_id)([ds[i] for i in range(len(recs))])
    assert batch["media_tokens"] == {"vision": [16, 16], "molecule": [4, 4, 4]}
    assert batch["media"]["molecule"]["num_atoms"].tolist() == [7, 4, 1]
    slots = batch["input_ids"] == model.modality_token["molecule"]
    assert slots.sum(1).tolist() == [4, 4, 0, 4]
    out = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels", "position_ids", "media", "media_sources")})
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name in ("encoders.molecule", "projectors.molecule", "encoders.vision"):
        grads = [p.grad for p in model.get_submodule(name).parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_command_line_value_is_a_smiles_or_a_mol_file(tmp_path):
    mod = modality()
    (tmp_path / "phenol.sdf").write_text(Chem.MolToMolBlock(Chem.MolFromSmiles("c1ccccc1O")) + "$$$$\n")
    for value, atoms in (("CCO", 3), (str(tmp_path / "phenol.sdf"), 7)):
        part = mod.cli_part(value)
        assert mod.prepare(mod.item_from_part(part, None), value).length == atoms
    with pytest.raises(MediaError, match="invalid SMILES 'missing.sdf'"):  # not a file: taken as a SMILES, and refused
        mod.prepare(mod.item_from_part(mod.cli_part("missing.sdf"), None), "cli")
