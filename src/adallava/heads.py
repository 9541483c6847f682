"""Temporary alias of the old path (issue 13's move)."""

from adallava.core.geometry import UnitGeometry, geometry_of, mlp_group_sizes  # noqa: F401
from adallava.modules.gates import UnitGates  # noqa: F401
from adallava.modules.sliced import SliceCache, SlicedLayer, weights_fingerprint  # noqa: F401
