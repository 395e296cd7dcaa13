"""The launch object without launching: one process (it writes, its share is everything, every
collective step is the identity), what a launcher's variables make of it before it joins, and the
one check where a command is dispatched. Processes that really share work are launched in
tests/launch/ (test_calibrate.py, test_faults.py and test_train.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from svdadapt import backend
from svdadapt.backend.processes import Group
from svdadapt.backend.scheduling import LayerJob, LayerPool, SharedLayerPool
from svdadapt.commands import COMMANDS, Command
from svdadapt.errors import SvdadaptError


@pytest.fixture
def alone(monkeypatch):
    for variable in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def second_of_two(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")


def test_one_process_writes_takes_everything_and_its_steps_are_the_identity(alone):
    with backend.launch("cpu") as launch:
        assert launch.size == 1 and launch.writer
        batches = [{"input_ids": torch.ones(2, 3)} for _ in range(3)]
        assert launch.share(batches) is batches
        sums = [torch.arange(4.0), torch.ones(2, 2)]  # (4,), (2, 2)
        before = [t.clone() for t in sums]
        launch.sum(sums)
        assert all(torch.equal(a, b) for a, b in zip(sums, before))
        assert launch.from_writer({"stage": "built"}, patient=True) == {"stage": "built"}
        launch.barrier()
        launch.barrier(patient=True)
        assert launch.gathered([("q", 1)]) == [("q", 1)]
        launch.check_shares(1)
        launch.require_alone("never said in one process")
        with launch.layer_pool(2) as pool:
            assert type(pool) is LayerPool
            jobs = [LayerJob(name, (4, 4), lambda name=name: name.upper()) for name in ("a", "b")]
            assert dict(pool.map(jobs)) == {"a": "A", "b": "B"}
    assert not dist.is_initialized()  # one process joins nothing


def test_a_launchers_variables_say_who_writes_before_anything_is_joined(second_of_two):
    launch = backend.launch("cpu")
    assert isinstance(launch, Group) and launch.size == 2 and not launch.writer
    assert not dist.is_initialized()  # joined only inside its `with`
    assert list(launch.share(list(range(5)))) == [1, 3]  # every second batch, from its own
    with pytest.raises(SvdadaptError, match="2 processes were launched for 1 calibration batch,"):
        launch.share([0])
    assert isinstance(launch.layer_pool(1), SharedLayerPool)
    with pytest.raises(SvdadaptError, match="^spectra runs in one process"):
        launch.require_alone("spectra runs in one process")


def test_a_command_row_says_whether_it_runs_under_a_launcher(second_of_two):
    one = Command("spectra", object, lambda options, progress: "ran")
    with pytest.raises(SvdadaptError, match="^spectra runs in one process; run it without a multi-process launcher$"):
        one.start(None)
    every = Command("calibrate", object, lambda options, progress: "ran", launchable=lambda _o: True)
    assert every.start(None) == "ran"
    fixed = [name for name, c in COMMANDS.items() if name != "train" and c.launchable(None)]
    assert fixed == ["calibrate", "build"]  # train: with some options (below), the others never
    train = COMMANDS["train"]
    in_place = SimpleNamespace(run="runs/kpa", out=None, training=SimpleNamespace(resume=False))
    assert train.launchable(in_place)
    for building in (SimpleNamespace(run="runs/kpa", out="copy", training=in_place.training),
                     SimpleNamespace(run=None, out="new", training=in_place.training)):  # fmt: skip
        assert not train.launchable(building)
        with pytest.raises(SvdadaptError, match="train an existing run"):
            train.start(building)


def test_in_one_process_every_command_is_dispatched(alone):
    one = Command("spectra", object, lambda options, progress: "ran")
    assert one.start(None) == "ran"
