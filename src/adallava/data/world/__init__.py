"""The synthetic world: seeded scenes of shapes and letter cards on a 3x3 grid, questions in the
families of the paper's benchmarks, written as LLaVA training JSON and in each benchmark's official
format. See docs/world.md."""

from adallava.data.world.generate import (
    BENCHMARKS,
    HeldoutQuestion,
    generate_world,
    load_heldout,
    read_manifest,
    shared_layouts,
    world_scenes,
)
from adallava.data.world.questions import FAMILIES, FAMILY, QA, Family
from adallava.data.world.render import render
from adallava.data.world.scene import Scene, WorldObject, sample_scene, stream
from adallava.data.world.vocabulary import world_vocabulary

__all__ = [
    "BENCHMARKS",
    "FAMILIES",
    "FAMILY",
    "QA",
    "Family",
    "HeldoutQuestion",
    "Scene",
    "WorldObject",
    "generate_world",
    "load_heldout",
    "read_manifest",
    "render",
    "sample_scene",
    "shared_layouts",
    "stream",
    "world_scenes",
    "world_vocabulary",
]
