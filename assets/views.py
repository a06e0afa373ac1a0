"""How every kind of stage looks in the graph, declared once per kind: its View (group, kinds, description, the
metadata its asset shows, its step pod's resources under k8s, and how its asset runs). The kinds themselves (their
settings, build functions and checks) are pipeline/stages.py's; adding one is an entry there and one here.
"""
from .data import FEATURES, IMAGES, LATENTS, SVD, VAE_LATENTS
from .evaluation import EVALUATION, NEIGHBOURS, REFERENCE, SAMPLES, VARIATIONS
from .factory import View
from .training import MODELS

VIEWS: dict[str, View] = {
    "images": IMAGES, "vae_latents": VAE_LATENTS, "features": FEATURES, "svd": SVD, "latents": LATENTS, "models": MODELS, "samples": SAMPLES,
    "reference": REFERENCE, "evaluation": EVALUATION, "neighbours": NEIGHBOURS, "variations": VARIATIONS,
}


def view_of(kind: str) -> View:
    if kind not in VIEWS:
        raise KeyError(f"no View for stage kind '{kind}': declare one in assets/views.py VIEWS")
    return VIEWS[kind]
