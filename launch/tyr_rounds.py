"""Týr's supernet rounds (:mod:`sparsearch.search.tyr` is the engine; this module builds its
supernets, so it needs torch): registered as the ``tyr`` engine's extras in
:data:`sparsearch.search.registry.ENGINES`."""

from __future__ import annotations

import dataclasses
from typing import Any

from sparsearch.base.errors import SparsearchError
from sparsearch.launch.evaluators import OpenFitness
from sparsearch.launch.session import Session
from sparsearch.search.space import Ladder, SearchSpace
from sparsearch.supernet.build import build_supernet
from sparsearch.supernet.config import SupernetConfig
from sparsearch.supernet.store import SupernetStore


def tyr_extras(session: Session) -> dict[str, Any]:
    """:class:`~sparsearch.search.tyr.TyrEngine`'s ``rebuild`` and ``make_budget``."""
    return {"rebuild": TyrRounds(session), "make_budget": session.make_budget}


class TyrRounds:
    """Týr's ``rebuild(round, ladders)``: the round's supernet, built once in ``R/tyr/roundN`` on
    the first supernet's calibration tokens and with its settings, and its fitness (the previous
    round's is closed); the session moves to them."""

    def __init__(self, session: Session):
        self.session, self.first = session, session.store
        self.supernet_cfg = SupernetConfig.from_dict(self.first.manifest["config"])
        self.built = [self.first]  # supernets whose identical variant files later rounds hard-link
        if self.supernet_cfg.servable:
            raise SparsearchError("tyr refines every unit's ladder, attention's included; a servable supernet keeps "
                                  "attention whole or removed: search it with another engine")
        self.tokens = self.first.calibration()
        if self.tokens is None:
            raise SparsearchError(f"supernet at {self.first.path} keeps no calibration tokens; rebuild it for tyr")

    def __call__(self, round_index: int, ladders: dict[str, Ladder]) -> tuple[SearchSpace, OpenFitness]:
        s = self.session
        s.fitness.close()  # the model is dense again: the next round prunes it anew
        out = s.run_dir / "tyr" / f"round{round_index}"
        s.log(f"tyr round {round_index}: supernet in {out}")
        if SupernetStore.is_complete(out):
            store = SupernetStore.open(out)
        else:
            store = build_supernet(s.model, self.tokens, str(out),
                                   dataclasses.replace(self.supernet_cfg, unit_ladders=ladders),
                                   model_name=self.first.manifest["model"]["name"],
                                   calibration=self.first.manifest["calibration"], progress=s.progress,
                                   share=[str(b.path) for b in self.built])
        self.built.append(store)
        s.store, s.fitness = store, s.factory.open(store)
        return store.space(), s.fitness
