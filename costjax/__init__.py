"""costjax: cost-sensitive classification losses and decisions for JAX.

A cost matrix ``C`` has shape ``(K, K)``; ``C[i, j]`` is the cost of predicting
class ``j`` when the true class is ``i`` (rows true, columns predicted, as in
``sklearn.metrics.confusion_matrix``). Every loss takes ``(logits, labels,
cost_matrix)`` with integer or probability labels, returns one value per
example, and is safe under ``jax.jit``, ``jax.grad``, ``jax.vmap`` and
sharding.
"""

from costjax._calibration import VectorScaling as VectorScaling
from costjax._calibration import fit_temperature as fit_temperature
from costjax._calibration import fit_vector_scaling as fit_vector_scaling
from costjax._cdw_cross_entropy import (
    class_distance_weighted_cross_entropy as class_distance_weighted_cross_entropy,
)
from costjax._cdw_cross_entropy import log1m_softmax as log1m_softmax
from costjax._checks import check_cost_matrix as check_cost_matrix
from costjax._checks import checked as checked
from costjax._checks import checks_enabled as checks_enabled
from costjax._conformal import calibrate_cost_sets as calibrate_cost_sets
from costjax._conformal import cost_sets as cost_sets
from costjax._conformal import set_cost as set_cost
from costjax._cost_matrices import hierarchy_cost_matrix as hierarchy_cost_matrix
from costjax._cost_matrices import ordinal_cost_matrix as ordinal_cost_matrix
from costjax._decisions import bayes_decision as bayes_decision
from costjax._decisions import confusion_matrix as confusion_matrix
from costjax._decisions import decision_costs as decision_costs
from costjax._decisions import mean_cost as mean_cost
from costjax._decisions import quadratic_weighted_kappa as quadratic_weighted_kappa
from costjax._decisions import savings_score as savings_score
from costjax._expected_cost import (
    cost_regularized_cross_entropy as cost_regularized_cross_entropy,
)
from costjax._expected_cost import expected_cost as expected_cost
from costjax._linear import (
    linear_cost_regularized_cross_entropy as linear_cost_regularized_cross_entropy,
)
from costjax._linear import linear_cross_entropy as linear_cross_entropy
from costjax._linear import linear_expected_cost as linear_expected_cost
from costjax._linear import linear_soft_label_cross_entropy as linear_soft_label_cross_entropy
from costjax._ordinal import ordinal_emd as ordinal_emd
from costjax._sinkhorn import SinkhornOutput as SinkhornOutput
from costjax._sinkhorn import sinkhorn_loss as sinkhorn_loss
from costjax._sinkhorn import sinkhorn_solve as sinkhorn_solve
from costjax._soft_labels import cost_soft_labels as cost_soft_labels
from costjax._soft_labels import soft_label_cross_entropy as soft_label_cross_entropy
from costjax._structures import CostStructure as CostStructure
from costjax._structures import EmbeddingCost as EmbeddingCost
from costjax._structures import OrdinalCost as OrdinalCost
from costjax._structures import TreeCost as TreeCost
from costjax._structures import check_cost_structure as check_cost_structure
from costjax._tree_wasserstein import tree_wasserstein as tree_wasserstein
from costjax._weighted_cross_entropy import cost_class_weights as cost_class_weights
from costjax._weighted_cross_entropy import weighted_cross_entropy as weighted_cross_entropy

__version__ = "0.1.0"

__all__ = (
    "CostStructure",
    "EmbeddingCost",
    "OrdinalCost",
    "TreeCost",
    "check_cost_structure",
    "SinkhornOutput",
    "VectorScaling",
    "bayes_decision",
    "calibrate_cost_sets",
    "check_cost_matrix",
    "checked",
    "checks_enabled",
    "class_distance_weighted_cross_entropy",
    "confusion_matrix",
    "cost_class_weights",
    "cost_regularized_cross_entropy",
    "cost_sets",
    "cost_soft_labels",
    "decision_costs",
    "expected_cost",
    "fit_temperature",
    "fit_vector_scaling",
    "hierarchy_cost_matrix",
    "linear_cost_regularized_cross_entropy",
    "linear_cross_entropy",
    "linear_expected_cost",
    "linear_soft_label_cross_entropy",
    "log1m_softmax",
    "mean_cost",
    "ordinal_cost_matrix",
    "ordinal_emd",
    "quadratic_weighted_kappa",
    "savings_score",
    "set_cost",
    "sinkhorn_loss",
    "sinkhorn_solve",
    "soft_label_cross_entropy",
    "tree_wasserstein",
    "weighted_cross_entropy",
)
