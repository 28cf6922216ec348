"""A wrapper around a diffrax solver that forwards everything but `step`."""

import diffrax
from equinox import AbstractVar


class AbstractDelegatingSolver(diffrax.AbstractWrappedSolver):
    """`self.solver`, seen through: every attribute diffrax reads (term structure,
    interpolation, orders, root finder, `init`, `func`) is the wrapped solver's. Subclasses
    override `step`."""

    solver: AbstractVar[diffrax.AbstractSolver]

    @property
    def root_finder(self):
        return self.solver.root_finder

    @property
    def root_find_max_steps(self):
        return self.solver.root_find_max_steps

    @property
    def tableau(self):
        return self.solver.tableau

    @property
    def scan_kind(self):
        """The wrapped Runge-Kutta solver's. diffrax's adjoints and `ForwardMode` set it (to
        a stage loop without `custom_vjp`, so that `jax.jvp` works) on any solver that is an
        `AbstractRungeKutta` instance, as a wrapper of one is; `eqx.tree_at` follows this
        property to the wrapped solver's field."""
        return self.solver.scan_kind

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):
        return self.solver.interpolation_cls

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)
