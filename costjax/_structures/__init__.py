"""Cost structures: costs read through one interface, and those that never form ``K x K``.

* ``interface`` -- :class:`CostStructure` (the public extension point) and the
  operations every function reads a cost through, dense or structured
  (``check_cost``, ``rows``, ``vecmat``, ``entries``...), plus
  :func:`check_cost_structure`, which validates a structure's leaves eagerly
  through the structure's own hook.
* ``topology`` -- NumPy layout of class trees: parent-array parsing, the level
  layout, segment-sum plans.
* ``tree``, ``ordinal``, ``embedding`` -- :class:`TreeCost`,
  :class:`OrdinalCost`, :class:`EmbeddingCost`, one module each.

Adding a structure means adding one module: a :class:`CostStructure` subclass
(registered as a pytree) with its own ``check_values`` (checked mode) and
``_leaves_to_check`` (eager validation) hooks. The rest of costjax imports this
package (``from costjax import _structures``) and uses the names below.
"""

from costjax._structures.embedding import EmbeddingCost as EmbeddingCost
from costjax._structures.interface import CostStructure as CostStructure
from costjax._structures.interface import Transform as Transform
from costjax._structures.interface import check_cost as check_cost
from costjax._structures.interface import check_cost_structure as check_cost_structure
from costjax._structures.interface import check_values as check_values
from costjax._structures.interface import dense as dense
from costjax._structures.interface import entries as entries
from costjax._structures.interface import is_structure as is_structure
from costjax._structures.interface import max_cost as max_cost
from costjax._structures.interface import num_classes as num_classes
from costjax._structures.interface import per_example as per_example
from costjax._structures.interface import rows as rows
from costjax._structures.interface import vecmat as vecmat
from costjax._structures.interface import zero_diagonal as zero_diagonal
from costjax._structures.ordinal import OrdinalCost as OrdinalCost
from costjax._structures.topology import Tree as Tree
from costjax._structures.topology import ancestor_matrix as ancestor_matrix
from costjax._structures.topology import parse_tree as parse_tree
from costjax._structures.tree import TreeCost as TreeCost
