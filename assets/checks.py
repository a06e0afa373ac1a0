"""Dagster asset checks over the artifacts; the checking itself is plain Python in ``pipeline/checks.py``.

The checks are blocking: a failed one stops the run before anything downstream reads the bad artifact.
"""
from typing import Callable

from dagster import AssetCheckResult, AssetChecksDefinition, asset_check

from pipeline import checks

from .stages import Scope

# artifact stage -> (check name, what it guards, how: (scope, asset name) -> CheckOutcome)
CHECKS: dict[str, list[tuple[str, str, Callable]]] = {
    "images": [("shards_match_manifest", "Every manifest row is in the image shards, and nothing else.",
                lambda s, n: checks.images_match_manifest(s.plan[n].artifact.require()))],
    "features": [("finite", "Every feature is finite and there is one feature map per manifest row.",
                  lambda s, n: checks.features_are_finite(s.plan[n].artifact.require(),
                                                          s.plan["images"].artifact.require()))],
    "latents": [("standardized", "Latents are finite; each training channel has mean ~0 and std ~1.",
                 lambda s, n: checks.latents_are_standardized(s.plan[n].artifact.require())),
                ("shards_match_manifest", "Train and holdout latent shards hold exactly the manifest's splits.",
                 lambda s, n: checks.latents_match_manifest(s.plan[n].artifact.require(),
                                                            s.plan["images"].artifact.require()))],
    "models": [("checkpoint_loads", "The checkpoint loads and one denoising forward is finite and well shaped.",
                lambda s, n: checks.checkpoint_loads(s.cfg, s.plan, int(n.split("_")[1])))],
    "samples": [("complete", "All requested samples are in the shards and decode; their latents are finite.",
                 lambda s, n: checks.samples_are_complete(s.plan[n].artifact.require(), s.cfg.sampling.num_samples))],
    "evaluation": [("row_present", "The evaluation table has this evaluation's row, with a finite FID.",
                    lambda s, n: checks.evaluation_row_present(s.home, s.plan[n].fingerprint))],
}


def _check(scope: Scope, name: str, check_name: str, description: str, run: Callable) -> AssetChecksDefinition:
    @asset_check(asset=scope.keys[name], name=check_name, description=description, blocking=True)
    def _run() -> AssetCheckResult:
        outcome = run(scope, name)
        return AssetCheckResult(passed=outcome.passed, description=outcome.description, metadata=outcome.metadata)

    return _run


def asset_checks(scope: Scope, names: list[str]) -> list[AssetChecksDefinition]:
    return [_check(scope, name, *spec) for name in names for spec in CHECKS.get(scope.plan[name].artifact.stage, ())]
