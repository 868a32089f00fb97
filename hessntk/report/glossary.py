"""Short explanations of the terms a report shows (its glossary lists those that appear)."""

from __future__ import annotations

__all__ = ["GLOSSARY", "terms_in"]

#: term -> explanation. A term is listed in a report when it appears in the page.
GLOSSARY = {
    "Hessian": "second derivatives of the mean training loss with respect to the parameters; "
               "its eigenvalues are the curvature along each direction.",
    "GGN": "generalised Gauss-Newton matrix J^T (d^2 loss / d outputs^2) J: the Hessian without "
           "the terms in the residuals, positive semi-definite.",
    "eigsh": "restarted Lanczos for the largest eigenvalues; 'converged' means every residual "
             "norm is below --tol times the eigenvalue.",
    "trace": "sum of the eigenvalues, estimated from products with random probe vectors "
             "(XTrace), with its standard error.",
    "SLQ": "stochastic Lanczos quadrature: each probe gives a quadrature rule (nodes and "
           "weights) of the spectral density; more probes reduce noise, more steps resolve it.",
    "negative eigenvalues": "fraction of Hessian eigenvalues below zero, as a 95% interval: the "
                            "quadrature bracket widened by probe noise. The Gauss point "
                            "estimate inside it can be biased by up to the bracket.",
    "lower-tail exponent": "alpha in P(lambda <= x) ~ c x^alpha for small eigenvalues "
                           "(alpha - 1 is the density exponent), with its standard error.",
    "floor": "eigenvalues at or below it are zero at the precision of the computation "
             "(rounding of the Jacobians), not measured values.",
    "NTK": "neural tangent kernel Gram matrix J S J^T of the per-sample output Jacobians J "
           "(S: the prior variances), one row per (sample, output).",
    "IIC": "Interpolating Information Criterion (Hodgkinson et al. 2023): lower is better; "
           "theory-valid only for a model that interpolates with a non-singular kernel.",
    "K_H": "the kernel of the IIC, J H*^-1 J^T; (1/N) log det K_H is its sharpness term.",
    "log(R* - R0)": "regularization term of the IIC: the log of the prior penalty of the "
                    "trained parameters above the penalty's minimum.",
    "(1/N) log det": "sharpness term: mean log-eigenvalue of the kernel K_H.",
    "-log N": "the IIC's correction term, N the number of scalar constraints.",
    "regularization": "the IIC's log(R* - R0) term (see log(R* - R0)).",
    "sharpness": "the IIC's (1/N) log det K_H term: flatter interpolants have a smaller one.",
    "correction": "the IIC's -log N term.",
    "curvature": "the IIC's (1/N)(log det H* - log det H0): 0 for a Gaussian prior.",
    "g.dW": "gradient term g . dW of the second-order loss change of quantizing a layer.",
    "|dW|^2": "squared size of the quantization perturbation, ||Q(W) - W||^2.",
    "direct": "second-order prediction g . dW + 1/2 dW^T H dW of the loss increase of "
              "quantizing one layer, from one exact Hessian product.",
    "avg tr H": "Tr(H_ii) / n_i, the average curvature of a layer (HAWQ-v2).",
    "eigen": "1/2 lambda_max(H_ii) ||dW||^2: HAWQ-v1's bound on the quadratic term.",
    "Spearman rho": "rank correlation over layers between a predictor and the measured loss "
                    "increases (1: the same order).",
    "measured increase": "the training loss after quantizing minus before, computed exactly.",
    "Mixed-precision": "per-layer bit widths under a size budget, chosen on measured losses and "
                       "checked jointly against uniform quantization.",
    "valid": "whether the IIC's assumptions hold for this checkpoint (see its reasons).",
}


def terms_in(text: str) -> dict[str, str]:
    """The glossary entries whose term appears in ``text``.

    Examples
    --------
    >>> list(terms_in("the IIC of a model"))
    ['IIC']
    """
    return {term: meaning for term, meaning in GLOSSARY.items() if term in text}
