"""Demo data: molecule QA on real molecules (RDKit's bundled NCI ``first_5K.smi``).

Every answer is computed by RDKit. Each question's answers are balanced by subsampling, so
the blind baseline (the most frequent training answer per question) is ``1 / #answers``.
The split is by molecule (canonical SMILES): no molecule appears in two splits. Molecules
the plugin's parser rejects (a few valence errors in the NCI file), salts/mixtures and molecules outside
3-40 heavy atoms are left out of the pool.

Why 900 training records per question (6,300 in all, about half of the default demo's steps):
the from-scratch GINE learns the yes/no *presence* features (halogen, hydroxyl, acid,
nitrogen) far more slowly than counts under the LLM's gradient. With 300 per question the
joint demo stayed near chance on them (molecules 69%); with 900 (and smaller vision/audio
sets, same wall time) it reached 92%.

Every record asks one question. ``build(..., multi_turn=True)`` instead groups the balanced
training picks per molecule: one conversation asks a molecule all the questions it was picked
for (in a random order), so the answers stay exactly as balanced; a molecule picked twice for
one question (reuse, above) gets a second conversation. Validation and test are unchanged. It
is not the default (see the vision demo's note).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from rdkit import Chem, RDConfig, rdBase
from rdkit.Chem import rdMolDescriptors

from omnimodal.demo import conversation_record, qa_record, write_jsonl
from omnimodal.errors import DataError, MediaError
from omnimodal_molecule.chem import mol_from_smiles

SOURCE = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
MIN_ATOMS, MAX_ATOMS = 3, 40
#: Fraction of the molecules that go to each split (train / val / test), before balancing.
POOL_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}

_HYDROXYL = Chem.MolFromSmarts("[OX2H1]")
_ACID = Chem.MolFromSmarts("[CX3](=O)[OX2H1,OX1H0-]")
_HALOGEN = Chem.MolFromSmarts("[F,Cl,Br,I]")


def _count_words(n: int) -> str:
    return ("none", "one", "two")[n] if n < 3 else "three or more"


def _size(n: int) -> str:
    return "fewer than 12" if n < 12 else ("12 to 19" if n < 20 else "20 or more")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


#: kind -> (question, answer values, answer function of an RDKit molecule)
QUESTIONS: dict[str, tuple[str, tuple[str, ...], Callable[[Chem.Mol], str]]] = {
    "rings": (
        "How many rings does this molecule have?",
        ("none", "one", "two", "three or more"),
        lambda m: _count_words(rdMolDescriptors.CalcNumRings(m)),
    ),
    "aromatic_rings": (
        "How many aromatic rings does it have?",
        ("none", "one", "two", "three or more"),
        lambda m: _count_words(rdMolDescriptors.CalcNumAromaticRings(m)),
    ),
    "size": (
        "How many heavy atoms does it have?",
        ("fewer than 12", "12 to 19", "20 or more"),
        lambda m: _size(m.GetNumHeavyAtoms()),
    ),
    "nitrogen": ("Does it contain nitrogen?", ("yes", "no"), lambda m: _yes(any(a.GetAtomicNum() == 7 for a in m.GetAtoms()))),
    "halogen": ("Does it contain a halogen?", ("yes", "no"), lambda m: _yes(m.HasSubstructMatch(_HALOGEN))),
    "hydroxyl": ("Does it have a hydroxyl group?", ("yes", "no"), lambda m: _yes(m.HasSubstructMatch(_HYDROXYL))),
    "acid": ("Does it have a carboxylic acid group?", ("yes", "no"), lambda m: _yes(m.HasSubstructMatch(_ACID))),
}

#: Records per question per split (divided evenly among its answers). Where a training answer
#: has fewer molecules than that (carboxylic acids: ~350), its molecules are used again.
RECORDS_PER_QUESTION = {"train": 900, "val": 20, "test": 48}


def load_molecules(source: Path = SOURCE) -> list[tuple[str, str, Chem.Mol]]:
    """``(smiles as written, canonical smiles, mol)`` for each usable, distinct molecule in ``source``."""
    if not source.is_file():
        raise DataError(f"molecule demo: RDKit's bundled molecule set is missing ({source})")
    seen: set[str] = set()
    out = []
    block = rdBase.BlockLogs()  # a few NCI entries fail sanitisation; they are left out on purpose
    for line in source.read_text().splitlines():
        if not line.strip():
            continue
        smiles = line.split()[0]
        if "." in smiles:  # salts and mixtures: not one molecule
            continue
        try:  # the plugin's own parser, so every demo molecule is one the modality accepts
            mol = mol_from_smiles(smiles, str(source))
        except MediaError:
            continue
        if not MIN_ATOMS <= mol.GetNumHeavyAtoms() <= MAX_ATOMS:
            continue
        canonical = Chem.MolToSmiles(mol)
        if canonical in seen:
            continue
        seen.add(canonical)
        out.append((smiles, canonical, mol))
    del block
    return out


def _record(smiles: str, kind: str, answer: str) -> dict:
    return qa_record({"type": "molecule", "smiles": smiles}, QUESTIONS[kind][0], answer, kind)


def split_molecules(molecules: list, seed: int) -> dict[str, list]:
    """Shuffle deterministically and cut into train/val/test pools of distinct molecules."""
    order = list(molecules)
    random.Random(f"{seed}-molecule-split").shuffle(order)
    n = len(order)
    n_train = int(n * POOL_FRACTIONS["train"])
    n_val = int(n * POOL_FRACTIONS["val"])
    return {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}


def group_by_molecule(picks: list[tuple[str, str, str]], rng: random.Random) -> list[dict]:
    """Multi-turn records from ``(smiles, kind, answer)`` picks: one conversation per molecule
    with each question it was picked for (shuffled); the n-th pick of one molecule for one
    question goes to its n-th conversation. Every pick is asked exactly once."""
    conversations: dict[tuple[str, int], list[tuple[str, str]]] = {}
    seen: dict[tuple[str, str], int] = {}
    for smiles, kind, answer in picks:
        n = seen.get((smiles, kind), 0)
        seen[(smiles, kind)] = n + 1
        conversations.setdefault((smiles, n), []).append((kind, answer))
    records = []
    for (smiles, _), turns in conversations.items():
        rng.shuffle(turns)
        records.append(conversation_record({"type": "molecule", "smiles": smiles}, [(QUESTIONS[k][0], a) for k, a in turns]))
    return records


def build(root: Path, seed: int = 0, sizes: dict[str, int] | None = None, multi_turn: bool = False) -> dict[str, Path]:
    """Write ``{train,val,test}.jsonl`` under ``root``; return the paths.

    ``sizes`` overrides ``RECORDS_PER_QUESTION`` (records per question kind per split).
    ``multi_turn``: training picks grouped per molecule (:func:`group_by_molecule`); ``False``:
    one training record per question (as validation and test always are).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    per_question = dict(RECORDS_PER_QUESTION, **(sizes or {}))
    pools = split_molecules(load_molecules(), seed)
    out: dict[str, Path] = {}
    for split in ("train", "val", "test"):
        rng = random.Random(f"{seed}-molecule-{split}")
        picks: list[tuple[str, str, str]] = []
        for kind, (_, answers, answer_of) in QUESTIONS.items():
            by_answer: dict[str, list[str]] = {a: [] for a in answers}
            for smiles, _, mol in pools[split]:
                by_answer[answer_of(mol)].append(smiles)
            per_answer = max(1, per_question[split] // len(answers))
            for answer in answers:
                group = by_answer[answer]
                if not group or (split != "train" and len(group) < per_answer):  # val/test: no reuse
                    raise DataError(
                        f"molecule demo: only {len(group)} {split} molecules answer {answer!r} to "
                        f"{kind!r}, {per_answer} needed"
                    )
                picked: list[str] = []
                while len(picked) < per_answer:  # train: all molecules once before any twice
                    picked += rng.sample(group, min(len(group), per_answer - len(picked)))
                picks += [(s, kind, answer) for s in picked]
        if multi_turn and split == "train":
            records = group_by_molecule(picks, rng)
        else:
            records = [_record(s, kind, answer) for s, kind, answer in picks]
        rng.shuffle(records)
        path = root / f"{split}.jsonl"
        write_jsonl(path, records)
        out[split] = path
    return out
