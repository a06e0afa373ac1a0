"""Dagster asset checks over the artifacts: the checks each kind of stage declares (pipeline/stages.py, their logic
plain Python in ``pipeline/checks.py``), and every asset's ``files_intact`` (each file's size and SHA-256 against
its marker).

The checks are blocking: a failed one stops the run before anything downstream reads the bad artifact.
"""
from dagster import AssetCheckResult, AssetChecksDefinition, asset_check

from pipeline.checks import CheckOutcome
from pipeline.stage import Check
from pipeline.stages import FILES_INTACT, KINDS

from .factory import Scope


def _check(scope: Scope, name: str, check: Check) -> AssetChecksDefinition:
    @asset_check(asset=scope.keys[name], name=check.name, description=check.description, blocking=True)
    def _run() -> AssetCheckResult:
        try:
            outcome = check.run(scope.cfg, scope.plan, scope.plan[name])
        except Exception as e:  # a missing or damaged artifact fails its checks; it does not crash the run
            outcome = CheckOutcome(False, " ".join(f"{type(e).__name__}: {e}".split()))
        return AssetCheckResult(passed=outcome.passed, description=outcome.description, metadata=outcome.metadata)

    return _run


def asset_checks(scope: Scope, names: list[str]) -> list[AssetChecksDefinition]:
    return [_check(scope, name, check) for name in names
            for check in (*KINDS[scope.plan[name].kind].checks, FILES_INTACT)]
