"""Pure ensemble-integration core: combiners, streaming integration, checks, stacking, report."""

from framework.ensemble.combiners import (METHODS, Combiner, HardVoteCombiner, MeanCombiner, SoftVoteCombiner,
                                          as_matrix, make_combiner, member_score)
from framework.ensemble.compat import check_compatibility, recorded_version
from framework.ensemble.evaluation import evaluate, format_report, write_report_json
from framework.ensemble.integrator import IntegrationResult, StreamingIntegrator
from framework.ensemble.specs import (FEATURES_KEY, EnsembleCompatibilityError, IntegrationError, MemberSpec,
                                      union_classes)
from framework.ensemble.stacking import (FittedStacking, FoldPlan, StackingCombiner, assemble_out_of_fold,
                                         cv_fit_predict, fit_final_estimator, fit_stacking_locally, load_stacking,
                                         plan_folds, resolve_stack_method, save_stacking, stack_features)

__all__ = [
    "METHODS", "Combiner", "HardVoteCombiner", "MeanCombiner", "SoftVoteCombiner", "as_matrix", "make_combiner",
    "member_score", "check_compatibility", "recorded_version", "evaluate",
    "format_report", "write_report_json", "IntegrationResult", "StreamingIntegrator", "FEATURES_KEY",
    "EnsembleCompatibilityError", "IntegrationError", "MemberSpec", "union_classes", "FittedStacking", "FoldPlan",
    "StackingCombiner", "assemble_out_of_fold", "cv_fit_predict", "fit_final_estimator", "fit_stacking_locally",
    "load_stacking", "plan_folds", "resolve_stack_method", "save_stacking", "stack_features",
]
