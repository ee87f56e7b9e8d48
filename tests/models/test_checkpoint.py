"""The weights-file format every model reads: round trip, hash, and clear refusals."""
from __future__ import annotations

import hashlib

import pytest
import torch

from neuroread.models.checkpoint import load_checkpoint, save_checkpoint


def _save(path, **over):
    kw = dict(model="m", config={"width": 4}, labels=["any", "iph"], state_dict={"w": torch.arange(6.0).view(2, 3)},
              architecture={"name": "demo"}, training_data="phantoms seed 0", demo=True, metrics={"f1_macro": 0.9})
    kw.update(over)
    return save_checkpoint(path, **kw)


def test_round_trip_and_the_card_names_the_weights_hash(tmp_path):
    path = tmp_path / "w" / "m.pt"
    sha = _save(path)
    assert sha == _save(tmp_path / "again.pt") != hashlib.sha256(path.read_bytes()).hexdigest()  # tensors, not bytes
    assert (tmp_path / "again.pt").read_bytes() == path.read_bytes()  # and the files are equal too
    assert _save(tmp_path / "other.pt", state_dict={"w": torch.arange(6.0).view(3, 2)}) != sha  # shape counts
    ck = load_checkpoint(path, "m")
    assert ck.labels == ("any", "iph") and ck.config == {"width": 4}
    assert torch.equal(ck.state_dict["w"], torch.arange(6.0).view(2, 3))
    assert ck.card.weights_sha256 == sha and ck.card.demo and ck.card.metrics == {"f1_macro": 0.9}
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temporary file left
    assert load_checkpoint(tmp_path / "again.pt", "m").card.weights_sha256 == sha


def test_refusals_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt", "m")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(junk, "m")
    other = tmp_path / "other.pt"
    torch.save({"state": 1}, other)
    with pytest.raises(ValueError, match="not a neuroread-checkpoint/1 file"):
        load_checkpoint(other, "m")
    _save(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="for 'm', not 'ct-hemorrhage'"):
        load_checkpoint(tmp_path / "m.pt", "ct-hemorrhage")
