"""Connecting to Ray (a cluster at an address, or a local instance started here) and resource checks."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import SubcellScreenError

if TYPE_CHECKING:  # pragma: no cover
    from ..config import RaySection

logger = logging.getLogger(__name__)

#: How to get the optional Ray dependency.
RAY_INSTALL_HINT = "pip install 'subcell_screen[ray]'"

_GIB = 1024 ** 3


class RayEngineError(SubcellScreenError):
    """The Ray engine cannot run: Ray missing, or the cluster lacks the resources the config asks for."""


def import_ray() -> Any:
    """``ray`` (with ``ray.data``), or :class:`RayEngineError` telling how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayEngineError(f"the Ray engine (--engine ray) needs the optional 'ray' extra, which is not "
                             f"installed ({exc}). Install it with: {RAY_INSTALL_HINT}") from exc
    return ray


def default_object_store_bytes() -> int:
    """Object-store size of a local instance: 25% of RAM, at least 512 MiB, at most 8 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        total = 8 * _GIB
    return int(min(max(total // 4, 512 * 1024 ** 2), 8 * _GIB))


@dataclass(frozen=True)
class RaySessionInfo:
    """The Ray instance a run uses.

    Attributes
    ----------
    address : str
        ``local`` for an instance started here, ``(already connected)``, or the cluster address.
    started : bool
        This process connected or started it (and disconnects or stops it at the end).
    resources : Mapping[str, float]
        ``ray.cluster_resources()`` at connection time (``CPU``, ``GPU``, ``memory``, ...).
    """

    address: str
    started: bool
    resources: Mapping[str, float]

    def describe(self) -> str:
        r = self.resources
        return (f"Ray {self.address}: {r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU, "
                f"{r.get('object_store_memory', 0) / _GIB:.1f} GiB object store")


@contextmanager
def ray_session(section: RaySection, *, address: str | None = None) -> Iterator[RaySessionInfo]:
    """Use Ray for the duration of a ``with`` block.

    * Already connected (``ray.is_initialized()``): use that instance, leave it running afterwards.
    * ``address`` (or ``[ray].address``) given: ``ray.init(address=...)``; disconnect at the end (the
      cluster keeps running).
    * Otherwise start a local instance with explicit ``num_cpus`` (``[ray].num_cpus``, default all cores)
      and ``object_store_memory`` (``[ray].object_store_memory``, default :func:`default_object_store_bytes`),
      no dashboard and token authentication disabled (``RAY_AUTH_MODE=disabled``); stop it at the end.

    Parameters
    ----------
    section
        The ``[ray]`` section of the run config.
    address
        Cluster address (``ray://host:10001``, ``host:6379`` or ``auto``); overrides ``[ray].address``.
    """
    ray = import_ray()
    address = address or section.address
    started = False
    saved_auth = os.environ.get("RAY_AUTH_MODE")
    if ray.is_initialized():
        where = "(already connected)"
        logger.info("using the Ray instance this process is already connected to")
    elif address:
        ray.init(address=address, logging_level=logging.WARNING)
        where, started = address, True
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        num_cpus = section.num_cpus or os.cpu_count() or 1
        store = section.object_store_memory or default_object_store_bytes()
        ray.init(num_cpus=num_cpus, object_store_memory=store, include_dashboard=False,
                 logging_level=logging.WARNING)
        where, started = "local", True
        logger.info("started a local Ray instance: %d CPUs, %.1f GiB object store", num_cpus, store / _GIB)
    try:
        yield RaySessionInfo(address=where, started=started, resources=dict(ray.cluster_resources()))
    finally:
        if started:
            ray.shutdown()
            if saved_auth is None:
                os.environ.pop("RAY_AUTH_MODE", None)


def _node_max(ray: Any, resource: str) -> float:
    """Largest amount of ``resource`` on one alive node (an actor must fit on a single node)."""
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive", n.get("alive", True))]
        return max((float(n.get("Resources", {}).get(resource, 0.0)) for n in nodes), default=0.0)
    except Exception:  # noqa: BLE001 - older/newer APIs: fall back to the cluster total
        return float(ray.cluster_resources().get(resource, 0.0))


def check_resources(resources: Mapping[str, float], section: RaySection, *, segment_gpu: bool,
                    embed_gpu: bool, segment_actors: bool, embed_actors: bool,
                    node_max: Mapping[str, float] | None = None, where: str = "") -> None:
    """Fail fast, before any work, when the ``[ray]`` settings cannot be scheduled on the cluster.

    Ray does not reject a request for GPUs a cluster lacks: the actors stay pending and the job hangs. So
    the requests are checked here against ``ray.cluster_resources()``.

    Parameters
    ----------
    resources
        ``ray.cluster_resources()``.
    section
        ``[ray]`` of the run config.
    segment_gpu, embed_gpu
        Whether the segment (Cellpose) / embed (SubCell) actors use a GPU when ``gpus_per_actor > 0``.
    segment_actors, embed_actors
        Whether the run has a segment / embed actor pool.
    node_max
        Largest ``CPU``/``GPU`` on one node (default: the cluster totals).
    where
        Cluster description for messages.

    Raises
    ------
    RayEngineError
        GPUs requested on a cluster without GPUs, more GPUs than the cluster has, an actor larger than any
        node, or actors that would hold every CPU (Ray Data would then stall: the load tasks never run).
    """
    g = float(section.gpus_per_actor)
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    node_max = dict(node_max or {"CPU": cpus, "GPU": gpus})
    where = f" ({where})" if where else ""
    n_seg = section.segment_actors if segment_actors else 0
    n_emb = section.embed_actors if embed_actors else 0
    need_gpu = g * (n_seg * bool(segment_gpu) + n_emb * bool(embed_gpu))
    if g > 0 and need_gpu == 0:
        logger.warning("[ray].gpus_per_actor = %g is not used: this run's segmentation and features run on "
                       "CPUs (only Cellpose and SubCell actors take GPUs)", g)
    if need_gpu > 0:
        if gpus <= 0:
            raise RayEngineError(
                f"[ray].gpus_per_actor = {g:g} asks for GPUs, but the Ray cluster{where} has none "
                f"(CPU = {cpus:g}, GPU = 0); requesting them would hang. Set [ray].gpus_per_actor = 0 to run "
                "on CPUs, or connect to a cluster with GPU nodes (--address / [ray].address).")
        if need_gpu > gpus + 1e-9:
            raise RayEngineError(
                f"the actor pools need {need_gpu:g} GPUs ([ray].segment_actors = {n_seg} and [ray].embed_actors "
                f"= {n_emb} using GPUs, x [ray].gpus_per_actor = {g:g}) but the Ray cluster{where} has {gpus:g}; "
                "lower [ray].segment_actors, [ray].embed_actors or [ray].gpus_per_actor.")
        if g > node_max.get("GPU", gpus) + 1e-9:
            raise RayEngineError(f"[ray].gpus_per_actor = {g:g} is more than any node of the Ray cluster{where} "
                                 f"has ({node_max.get('GPU', gpus):g} GPUs per node at most).")
    c = float(section.cpus_per_actor)
    if (n_seg or n_emb) and c > node_max.get("CPU", cpus) + 1e-9:
        raise RayEngineError(f"[ray].cpus_per_actor = {c:g} is more than any node of the Ray cluster{where} has "
                             f"({node_max.get('CPU', cpus):g} CPUs per node at most).")
    actor_cpus = c * (n_seg + n_emb)
    if cpus - actor_cpus < 1 - 1e-9:
        raise RayEngineError(
            f"the actors reserve {actor_cpus:g} of the Ray cluster's {cpus:g} CPUs{where} ([ray].segment_actors "
            f"= {n_seg} + [ray].embed_actors = {n_emb}, x [ray].cpus_per_actor = {c:g}), leaving less than one CPU "
            "for the load, crop and write tasks, so the pipeline would stall. Lower [ray].cpus_per_actor or the "
            "actor counts, or give Ray more CPUs ([ray].num_cpus for a local instance).")
