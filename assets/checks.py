"""Dagster asset checks over the artifacts; the checking itself is plain Python in ``pipeline/checks.py``.

The checks are blocking: a failed one stops the run before anything downstream reads the bad artifact.
Every asset has ``files_intact`` (each file's size and SHA-256 against its marker) besides its own checks.
"""
from typing import Callable

from dagster import AssetCheckResult, AssetChecksDefinition, asset_check

from pipeline import checks

from .factory import Scope

# stage kind -> (check name, what it guards, how: (scope, stage) -> CheckOutcome)
CHECKS: dict[str, list[tuple[str, str, Callable]]] = {
    "images": [("shards_match_manifest", "Every manifest row is in the image shards, and nothing else.",
                lambda s, st: checks.images_match_manifest(st.artifact.require()))],
    "features": [("finite", "Every feature is finite and there is one feature map per manifest row.",
                  lambda s, st: checks.features_are_finite(st.artifact.require(),
                                                          s.plan["images"].artifact.require()))],
    "latents": [("standardized", "Latents are finite; each training channel has mean ~0 and std ~1.",
                 lambda s, st: checks.latents_are_standardized(st.artifact.require())),
                ("shards_match_manifest", "Train and holdout latent shards hold exactly the manifest's splits.",
                 lambda s, st: checks.latents_match_manifest(st.artifact.require(),
                                                            s.plan["images"].artifact.require()))],
    "models": [("checkpoint_loads", "The checkpoint loads and one denoising forward is finite and well shaped.",
                lambda s, st: checks.checkpoint_loads(s.cfg, s.plan, st.level))],
    "samples": [("complete", "All requested samples are in the shards and decode; their latents are finite.",
                 lambda s, st: checks.samples_are_complete(st.artifact.require(), s.cfg.sampling.num_samples))],
    "svd": [("orthonormal", "The basis loads, is finite, orthonormal, one axis per feature channel, variances descending.",
             lambda s, st: checks.basis_is_orthonormal(st.artifact.require(),
                                                      s.plan["encoder_features"].artifact.metadata()["shape"][-1]))],
    "reference": [("consistent", "Inception features of every reference and held-out image, finite; mu is their mean.",
                   lambda s, st: checks.reference_is_consistent(st.artifact.require(),
                                                               st.artifact.metadata()["num_reference"],
                                                               st.artifact.metadata()["num_holdout"]))],
    "neighbours": [("complete", "k neighbours of every query under every level, and the picture decodes.",
                    lambda s, st: checks.neighbours_complete(st.artifact.require(), s.cfg.num_levels,
                                                            st.artifact.metadata()["k"]))],
    "variations": [("keeps_its_sources", "The kept levels of every variation are its source's own latents; all finite.",
                    lambda s, st: checks.variations_keep_their_sources(
                        st.artifact.require(), {level: s.plan[f"level_{level}_latents"].artifact.require()
                                                for level in range(1, s.cfg.num_levels)}))],
    "evaluation": [("row_present", "The evaluation table has this evaluation's row, with a finite FID.",
                    lambda s, st: checks.evaluation_row_present(s.home, st.fingerprint))],
}

INTACT = ("files_intact", "Every file is there with the size and SHA-256 its marker recorded when it was built.",
          lambda s, st: checks.files_intact(st.artifact))


def _check(scope: Scope, name: str, check_name: str, description: str, run: Callable) -> AssetChecksDefinition:
    @asset_check(asset=scope.keys[name], name=check_name, description=description, blocking=True)
    def _run() -> AssetCheckResult:
        try:
            outcome = run(scope, scope.plan[name])
        except Exception as e:  # a missing or damaged artifact fails its checks; it does not crash the run
            outcome = checks.CheckOutcome(False, " ".join(f"{type(e).__name__}: {e}".split()))
        return AssetCheckResult(passed=outcome.passed, description=outcome.description, metadata=outcome.metadata)

    return _run


def asset_checks(scope: Scope, names: list[str]) -> list[AssetChecksDefinition]:
    return [_check(scope, name, *spec) for name in names
            for spec in (*CHECKS.get(scope.plan[name].kind, ()), INTACT)]
