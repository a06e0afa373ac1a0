"""benchmarks/ablation_diagnostics.py's results file: a diagnosis of some runs adds to the earlier ones."""
import importlib.util

from pipeline.config import PROJECT_ROOT as ROOT


def diagnostics():
    spec = importlib.util.spec_from_file_location("ablation_diagnostics", ROOT / "benchmarks" / "ablation_diagnostics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_diagnosis_of_one_run_keeps_the_others_and_their_parts():
    merged = diagnostics().merged
    earlier = {"precision": "as configured", "command": "first",
               "runs": {"a": {"ladder": 1, "fid_run_seed": 70.0}, "b": {"ladder": 2}}}
    out = {"precision": "as configured", "command": "second", "runs": {"a": {"latents": 3, "fid_run_seed": 71.0}}}
    m = merged(earlier, out)
    assert m["runs"] == {"a": {"ladder": 1, "latents": 3, "fid_run_seed": 71.0}, "b": {"ladder": 2}}
    assert m["command"] == ["first", "second"]
    # another precision's measurements are not mixed with these: the new ones replace them
    assert merged({**earlier, "precision": "float32"}, out) == out
    assert merged(None, out) == out
