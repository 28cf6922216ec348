"""Stiffness of neural networks: layer Jacobians and stiffness proxies.

The Jacobian of a ResNet layer's rate of change is `J_n(x) = diag(sigma'(W_n x_{n-1} + b_n)) W_n`
(`layer_jacobians`); any vector field's comes from autodiff (`vector_field_jacobian`) or as a
matrix-free product (`vector_field_jvp`, `layer_matvec`). The proxies act on the last two
axes of a stack of square matrices: `stiffness_ratio`, `modulus_ratio`, `singular_ratio`,
`spectral_radius_power`, `spectral_radius_gelfand`, `frobenius`; `aggregate` sums, averages
or maximises them over layers and samples. `layer_frobenius` and `amortised_spectral_radius`
use the structure `diag(s) W` and never form `J`. `lanczos_extremes` gives the extreme
eigenvalues of a symmetric operator (a Hessian) from its products with vectors.
"""

from .amortised import (
    PowerVectors,
    amortised_power_init,
    amortised_spectral_radius,
    layer_frobenius,
)
from .jacobians import (
    activation_slopes,
    forward_with_slopes,
    layer_jacobians,
    layer_matvec,
    layer_slopes,
    vector_field_jacobian,
    vector_field_jvp,
)
from .lanczos import KrylovBasis, lanczos_basis, lanczos_extremes, shifted_solve
from .proxies import (
    PROXIES,
    aggregate,
    check_square_stack,
    frobenius,
    get_proxy,
    modulus_ratio,
    orthonormalise_pair,
    ritz_radius,
    singular_ratio,
    spectral_radius_gelfand,
    spectral_radius_power,
    start_vectors,
    stiffness_ratio,
)

__all__ = [
    "PROXIES",
    "KrylovBasis",
    "PowerVectors",
    "activation_slopes",
    "aggregate",
    "amortised_power_init",
    "amortised_spectral_radius",
    "check_square_stack",
    "forward_with_slopes",
    "frobenius",
    "get_proxy",
    "lanczos_basis",
    "lanczos_extremes",
    "layer_frobenius",
    "layer_jacobians",
    "layer_matvec",
    "layer_slopes",
    "modulus_ratio",
    "orthonormalise_pair",
    "ritz_radius",
    "shifted_solve",
    "singular_ratio",
    "spectral_radius_gelfand",
    "spectral_radius_power",
    "start_vectors",
    "stiffness_ratio",
    "vector_field_jacobian",
    "vector_field_jvp",
]
