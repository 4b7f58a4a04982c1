"""The on-disk supernet: a manifest plus one safetensors file per stored (unit, level).

Layout::

    DIR/manifest.json                  format, model and calibration fingerprints, config,
                                       per unit its levels (sparsity, params, kept, file, sha256)
    DIR/variants/L003.attn.lv02.safetensors   kept indices and the refit output projection

A variant file holds only what differs from the dense model (see :mod:`sparsearch.supernet.variants`);
the dense level and the removed level have no file. A build can share files with earlier
supernets of the same model (Týr's rounds): a variant whose bytes equal an earlier file is a
hard link to it. Every write is atomic (temp file + rename),
and the manifest is rewritten after each finished unit, so a killed build resumes at the first
unit not yet recorded. Before a run, :meth:`SupernetStore.check_files` checks every file's size
and SHA-256; the hashes it verified are remembered in ``DIR/verified.json`` by (size, mtime,
ctime, inode), so an unchanged 50 GB supernet is hashed once, not at every start (a file changed
in place and given back its mtime has a new ctime, which no user can set, and is hashed again).

The manifest is checked when it is read: its keys and their types, and every variant ``file``
is a path inside ``DIR`` (no ``..``, no absolute path, no symbolic link out of it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import save as st_save

from sparsearch.base.atomic import atomic_write, atomic_write_json, read_json_object
from sparsearch.base.errors import SparsearchError
from sparsearch.base.rundir import contained, is_empty
from sparsearch.base.tensorfiles import read_tensors
from sparsearch.search.space import SearchSpace, Unit
from sparsearch.supernet.variants import Variant

FORMAT = "sparsearch-supernet/2"  # 1: variants held the kept q/k/v/gate/up rows too
MANIFEST = "manifest.json"
CALIBRATION = "calibration.safetensors"
VERIFIED = "verified.json"


FIRST_ATTENTION = "L000.attn"


class SupernetStore:
    """A supernet directory: read by stitching and search, written by the builder."""

    def __init__(self, path: str | os.PathLike, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self._verified: set[str] = set()
        self._shared: dict[str, Path] = {}  # sha256 -> a file of another supernet with those bytes

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, model_fingerprint: str | None = None) -> "SupernetStore":
        """Open a finished supernet; refuse a missing, unfinished or foreign one."""
        manifest = cls._read_manifest(Path(path))
        if manifest is None:
            raise SparsearchError(f"no supernet at {path} (missing {MANIFEST})")
        if not manifest.get("complete"):
            raise SparsearchError(f"supernet at {path} is unfinished; rerun the build with the same --out to resume it")
        store = cls(path, manifest)
        if model_fingerprint is not None:
            store.check_model(model_fingerprint)
        return store

    @classmethod
    def is_complete(cls, path: str | os.PathLike) -> bool:
        """Whether ``path`` holds a finished supernet (a partial one may be resumed)."""
        manifest = cls._read_manifest(Path(path))
        return bool(manifest and manifest.get("complete"))

    @classmethod
    def partial(cls, path: str | os.PathLike) -> "SupernetStore | None":
        """The unfinished build at ``path``, if there is one (to resume it)."""
        manifest = cls._read_manifest(Path(path))
        return cls(path, manifest) if manifest and not manifest.get("complete") else None

    @classmethod
    def create_or_resume(
        cls, path: str | os.PathLike, header: Mapping[str, Any], *, share: Sequence[str | os.PathLike] = ()
    ) -> "SupernetStore":
        """Start a build at ``path``, or resume one whose header matches ``header`` exactly.
        Variant files whose bytes equal a file of a supernet in ``share`` are hard links to it."""
        path = Path(path)
        manifest = cls._read_manifest(path)
        if manifest is not None:
            for key in ("model", "calibration", "config"):
                if manifest.get(key) != header.get(key):
                    raise SparsearchError(
                        f"supernet at {path} was built with a different {key}; use another --out or delete it"
                    )
            store = cls(path, manifest)
        else:
            if path.exists() and not is_empty(path):
                raise SparsearchError(f"{path} exists and is not a supernet; choose an empty or new --out")
            store = cls(path, {"format": FORMAT, **header, "units": {}, "complete": False})
            store._save()
        for other in share:
            m = cls._read_manifest(Path(other))
            for unit in (m or {}).get("units", {}).values():
                for e in unit["levels"]:
                    if e["file"] is not None:
                        store._shared.setdefault(e["sha256"], contained(other, e["file"], f"{Path(other) / MANIFEST}"))
        return store

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any] | None:
        f = path / MANIFEST
        if not f.is_file():
            return None
        manifest = read_json_object(f, "corrupt supernet manifest")
        fmt = manifest.get("format")
        if isinstance(fmt, str) and fmt.startswith("sparsearch-supernet/") and fmt != FORMAT:
            raise SparsearchError(f"supernet at {path} is in the older format {fmt}; rebuild it (this version reads {FORMAT})")
        if fmt != FORMAT:
            raise SparsearchError(f"{f} is not a {FORMAT} manifest (format {fmt!r})")
        problem = _manifest_problem(path, manifest)
        if problem:
            raise SparsearchError(f"corrupt supernet manifest {f}: {problem}; rebuild the supernet")
        return manifest

    def check_model(self, fingerprint: str) -> None:
        if self.manifest["model"]["fingerprint"] != fingerprint:
            raise SparsearchError(
                f"supernet at {self.path} was built for another model "
                f"({self.manifest['model'].get('name')}, fingerprint {self.manifest['model']['fingerprint'][:12]}), "
                f"not this one ({fingerprint[:12]})"
            )

    def require_settings(self, fingerprint: str, config: Mapping[str, Any], calibration: Mapping[str, Any]) -> None:
        """Refuse to reuse this finished supernet for another model, other build settings
        (``SupernetConfig.identity()``) or other calibration, naming the first difference."""
        self.check_model(fingerprint)
        for kind, stored, asked in (("config", self.manifest.get("config", {}), config),
                                    ("calibration", self.manifest.get("calibration", {}), calibration)):
            for key in sorted(asked):
                if stored.get(key) != asked[key]:
                    raise SparsearchError(
                        f"supernet at {self.path} was built with {kind} {key}={json.dumps(stored.get(key))}, not "
                        f"{json.dumps(asked[key])}; use another supernet directory, or delete it to rebuild"
                    )

    # -- writing ------------------------------------------------------------------------------
    def has_unit(self, unit: Unit) -> bool:
        return unit.name in self.manifest["units"]

    def write_unit(self, unit: Unit, variants: list[Variant]) -> None:
        levels = []
        for i, v in enumerate(variants):
            entry: dict[str, Any] = {"sparsity": v.sparsity, "params": v.params, "kept": v.kept, "file": None}
            if v.tensors is not None:
                data = st_save({k: t.detach().contiguous().cpu() for k, t in v.tensors.items()})
                rel = f"variants/{unit.name}.lv{i:02d}.safetensors"
                sha = hashlib.sha256(data).hexdigest()
                linked = sha in self._shared and _link(self._shared[sha], self.path / rel)
                if not linked:
                    atomic_write(self.path / rel, data)
                    self._shared.setdefault(sha, self.path / rel)  # a later level with the same bytes links
                entry.update(file=rel, sha256=sha, bytes=len(data), **({"linked": True} if linked else {}))
            levels.append(entry)
        self.manifest["units"][unit.name] = {"levels": levels}
        self._save()

    def write_calibration(self, tokens: torch.Tensor) -> None:
        """Keep the calibration tokens with the supernet (rebuilds and resumes reuse them)."""
        atomic_write(self.path / CALIBRATION, st_save({"tokens": tokens.detach().cpu().to(torch.int64).contiguous()}))

    def calibration(self) -> torch.Tensor | None:
        """The stored calibration tokens, if they match the manifest's fingerprint."""
        from sparsearch.supernet.fingerprint import tokens_fingerprint

        f = self.path / CALIBRATION
        if not f.is_file():
            return None
        tokens = read_tensors(f, "supernet calibration", f"delete it (or rebuild the supernet)", need=["tokens"])[0]["tokens"]
        if tokens.dim() != 2 or tokens.dtype != torch.int64:
            raise SparsearchError(f"supernet calibration {f} holds no token ids; delete it (or rebuild the supernet)")
        return tokens if tokens_fingerprint(tokens) == self.manifest["calibration"]["fingerprint"] else None

    def finish(self, **extra: Any) -> None:
        self.manifest.update(extra, complete=True)
        self._save()

    def _save(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest)

    # -- reading ------------------------------------------------------------------------------
    def levels(self, unit: Unit) -> list[dict[str, Any]]:
        try:
            return self.manifest["units"][unit.name]["levels"]
        except KeyError:
            raise SparsearchError(f"supernet at {self.path} has no unit {unit.name}") from None

    def read(self, unit: Unit, level: int) -> dict[str, torch.Tensor] | None:
        """The stored tensors of ``unit`` at ``level`` (``None`` for dense and removed levels)."""
        entry = self.levels(unit)[level]
        if entry["file"] is None:
            return None
        f = contained(self.path, entry["file"], str(self.path / MANIFEST))
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            raise SparsearchError(f"supernet file missing: {f}") from None
        if entry["file"] not in self._verified:
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise SparsearchError(f"supernet file {f} fails its SHA-256 check (corrupt or modified)")
            self._verified.add(entry["file"])
        return read_tensors(f, "supernet file", "rebuild the supernet", data=data)[0]

    def read_variants(self, unit: Unit) -> list[Variant]:
        return [
            Variant(e["sparsity"], e["params"], dict(e["kept"]), self.read(unit, i))
            for i, e in enumerate(self.levels(unit))
        ]

    def space(self) -> SearchSpace:
        """The search space of the stored levels. A ``servable`` supernet keeps the first layer's
        attention: vLLM's DeciLM cannot run a model whose first non-empty layer has no attention
        (:mod:`~sparsearch.supernet.nemotron_nas`), and a kept first attention rules that out."""
        space = SearchSpace.from_manifest(self.manifest)
        return space.keep_dense([FIRST_ATTENTION]) if self.manifest["config"].get("servable") else space

    def verify(self) -> None:
        """Check every stored file against its SHA-256."""
        for name in self.manifest["units"]:
            unit = Unit.parse(name)
            for i in range(len(self.levels(unit))):
                self.read(unit, i)

    def check_files(self) -> int:
        """Check that every variant file is present, of its recorded size and SHA-256, before a
        run reads any; returns how many files were hashed (files verified before and unchanged
        since, by size, mtime, ctime and inode, are not hashed again)."""
        remembered = self._remembered()
        hashed, record = 0, {}
        self.calibration()  # a damaged calibration file is found here too, not by a start that needs it
        for unit in self.manifest["units"].values():
            for e in unit["levels"]:
                if e["file"] is None or e["file"] in record:
                    continue
                f = contained(self.path, e["file"], str(self.path / MANIFEST))
                try:
                    st = f.stat()
                except FileNotFoundError:
                    raise SparsearchError(f"supernet file missing: {f}; rebuild the supernet") from None
                if st.st_size != e["bytes"]:
                    raise SparsearchError(f"supernet file {f} has {st.st_size} bytes, not {e['bytes']} "
                                          "(truncated or replaced); rebuild the supernet")
                stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, e["sha256"]]
                if remembered.get(e["file"]) != stamp:
                    sha = _sha256(f)
                    hashed += 1
                    if sha != e["sha256"]:
                        raise SparsearchError(f"supernet file {f} fails its SHA-256 check (corrupt or modified); "
                                              "rebuild the supernet")
                record[e["file"]] = stamp
                self._verified.add(e["file"])
        if hashed:
            try:
                atomic_write_json(self.path / VERIFIED, record)
            except SparsearchError:  # a read-only supernet (atomic writes raise this): verified again next time
                pass
        return hashed

    def _remembered(self) -> dict[str, list]:
        """The stamps of ``verified.json``: a cache, so anything unreadable there (another
        file in its place included) only means every file is hashed again."""
        f = self.path / VERIFIED
        try:
            if f.is_symlink():
                return {}
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def fingerprint(self) -> str:
        """A hash of what the supernet holds: its model, calibration, config and every variant file."""
        keys = ("model", "calibration", "config", "units")
        blob = json.dumps({k: self.manifest.get(k) for k in keys}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def size_bytes(self) -> int:
        """Bytes of every variant file (hard-linked ones included)."""
        return sum(e.get("bytes", 0) for u in self.manifest["units"].values() for e in u["levels"])

    @property
    def new_bytes(self) -> int:
        """Bytes this supernet adds on disk (hard links to other supernets' files excluded)."""
        return sum(e.get("bytes", 0) for u in self.manifest["units"].values() for e in u["levels"]
                   if not e.get("linked"))


_UNIT = re.compile(r"L[0-9]{3,}\.(attn|mlp)")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _manifest_problem(root: Path, m: dict[str, Any]) -> str | None:
    """What is wrong with the manifest ``m`` of the supernet at ``root`` (None: nothing)."""
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    def count(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    for key in ("model", "calibration", "config", "units"):
        if not isinstance(m.get(key), dict):
            return f"{key} is not an object"
    if not isinstance(m.get("complete"), bool):
        return "complete is not true or false"
    model = m["model"]
    if not isinstance(model.get("fingerprint"), str) or not isinstance(model.get("name", ""), str):
        return "model has no fingerprint"
    if not isinstance(model.get("shape"), dict) or not count(model["shape"].get("head_dim")):
        return "model has no shape"
    if not isinstance(m["calibration"].get("fingerprint"), str):
        return "calibration has no fingerprint"
    for name, unit in m["units"].items():
        if not _UNIT.fullmatch(name):
            return f"{name!r} is not a unit name"
        levels = unit.get("levels") if isinstance(unit, dict) else None
        if not isinstance(levels, list) or not levels:
            return f"unit {name} has no levels"
        for i, e in enumerate(levels):
            where = f"unit {name} level {i}"
            if not isinstance(e, dict) or not number(e.get("sparsity")) or not count(e.get("params")):
                return f"{where} has no sparsity or params"
            kept = e.get("kept")
            if not isinstance(kept, dict) or not all(isinstance(k, str) and count(v) for k, v in kept.items()):
                return f"{where} has no kept counts"
            if e.get("file") is None:
                continue
            if not isinstance(e.get("sha256"), str) or not _SHA256.fullmatch(e["sha256"]) or not count(e.get("bytes")):
                return f"{where} has no sha256 or bytes"
            try:
                contained(root, e["file"], f"{where} file")
            except SparsearchError as err:
                return str(err)
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _link(source: Path, target: Path) -> bool:
    """Hard-link ``target`` to ``source`` atomically; False where the file system refuses."""
    tmp = target.with_name(f".{target.name}.link")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, target)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
