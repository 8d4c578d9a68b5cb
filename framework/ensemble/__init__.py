"""Pure ensemble-integration core: combiners, streaming integration, checks, stacking, report.

Layers, each importing only those before it: ``specs`` (members, classes) -> ``combiners``
(what a combiner is) and ``outputs`` (what a member says) -> ``registry`` (the integration
methods) -> ``stacking`` (fitting pieces) and ``methods`` (one module per method, registered
on import) -> ``compat``, ``integrator`` -> ``evaluation``. Nothing here knows Mesos, HTTP or
the job.
"""

from framework.ensemble import methods  # noqa: F401  (imports and registers every integration method)
from framework.ensemble.combiners import Combiner, MemberCombiner, as_matrix
from framework.ensemble.compat import check_compatibility, recorded_version
from framework.ensemble.evaluation import EvaluatingIntegrator as StreamingIntegrator
from framework.ensemble.evaluation import evaluate, evaluate_integration, format_report, write_report_json
from framework.ensemble.integrator import IntegrationResult, KeptOutputs
from framework.ensemble.methods.averaging import MeanCombiner
from framework.ensemble.methods.stacking import StackingCombiner
from framework.ensemble.methods.voting import HardVoteCombiner, SoftVoteCombiner
from framework.ensemble.outputs import member_column, member_score, member_view
from framework.ensemble.registry import (Evaluation, IntegrationMethod, make_combiner, method, method_names, register,
                                         unregister)
from framework.ensemble.specs import (FEATURES_KEY, KINDS, OUTPUTS, EnsembleCompatibilityError, IntegrationError, Kind,
                                      MemberSpec, Output, align_columns, union_classes)
from framework.ensemble.stacking import (FINAL_ESTIMATORS, STACK_METHODS, FittedStacking, FoldPlan, StackMethod,
                                         assemble_out_of_fold, cv_fit_predict, final_estimator, fit_final_estimator,
                                         fit_stacking_locally, load_stacking, plan_folds, resolve_stack_method,
                                         save_stacking, stack_features)

__all__ = [
    "Combiner", "MemberCombiner", "as_matrix", "check_compatibility", "recorded_version",
    "StreamingIntegrator", "evaluate", "evaluate_integration", "format_report", "write_report_json",
    "IntegrationResult", "KeptOutputs", "MeanCombiner", "StackingCombiner", "HardVoteCombiner", "SoftVoteCombiner",
    "member_column", "member_score", "member_view", "Evaluation", "IntegrationMethod", "make_combiner", "method",
    "method_names", "register", "unregister", "FEATURES_KEY", "KINDS", "OUTPUTS", "EnsembleCompatibilityError",
    "IntegrationError", "Kind", "MemberSpec", "Output", "align_columns", "union_classes", "FINAL_ESTIMATORS",
    "STACK_METHODS", "FittedStacking", "FoldPlan", "StackMethod", "assemble_out_of_fold", "cv_fit_predict",
    "final_estimator", "fit_final_estimator", "fit_stacking_locally", "load_stacking", "plan_folds",
    "resolve_stack_method", "save_stacking", "stack_features",
]
