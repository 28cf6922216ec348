"""Training as an ODE: the gradient flow `dtheta/dt = -grad L(theta)` of a loss, solved by
explicit and stiff solvers, as an optax optimizer (`gradient_flow`)."""

from .driver import FlowRun, run
from .losses import (
    AbstractOutputLoss,
    Classification,
    LeastSquares,
    classification,
    gauss_newton_matrix,
    least_squares,
)
from .pseudo_transient import PseudoTransientState, pseudo_transient
from .scipy_baseline import ScipyFlowResult, scipy_gradient_flow
from .transform import (
    FLOW_STAT_KEYS,
    MAX_DENSE_PARAMS,
    GradientFlowState,
    flow_solver,
    gradient_flow,
)
from .vector_field import (
    GradientFlowField,
    LossFn,
    dense_hessian,
    flat_loss,
    hessian,
    hessian_extremes,
    hessian_vector_product,
)

__all__ = [
    "AbstractOutputLoss",
    "Classification",
    "LeastSquares",
    "PseudoTransientState",
    "classification",
    "gauss_newton_matrix",
    "least_squares",
    "pseudo_transient",
    "FlowRun",
    "ScipyFlowResult",
    "run",
    "scipy_gradient_flow",
    "FLOW_STAT_KEYS",
    "MAX_DENSE_PARAMS",
    "GradientFlowField",
    "GradientFlowState",
    "LossFn",
    "dense_hessian",
    "flat_loss",
    "flow_solver",
    "gradient_flow",
    "hessian",
    "hessian_extremes",
    "hessian_vector_product",
]
