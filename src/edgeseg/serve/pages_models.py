"""New Model (DIGITS' form: dataset, architecture with its params and MACs, the usual
hyperparameters, or a pasted YAML config) and New Recipe (``edgeseg run``) pages."""

from __future__ import annotations

from functools import lru_cache

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from edgeseg.errors import EdgesegError
from edgeseg.serve import forms


@lru_cache(maxsize=64)
def architecture_profile(name: str, num_classes: int, height: int, width: int) -> dict:
    """Parameters and MACs of a registry architecture at one input size."""
    from edgeseg.models.profile import profile_model
    from edgeseg.models.zoo import create_model

    model = create_model(name, num_classes)
    profile = profile_model(model.eval(), (height, width))
    return {"name": name, "params": profile.params, "macs": profile.macs, "input_size": [height, width],
            "num_classes": num_classes}


def add_routes(app: FastAPI, server) -> None:
    def architectures() -> list[str]:
        from edgeseg.models.zoo import list_models

        return list_models()

    def render(form: dict, errors: dict, status: int = 200):
        return server.page("model_new.html", status=status, form=form, errors=errors, datasets=server.datasets.names(),
                           architectures=architectures(), optimizers=forms.OPTIMIZERS, schedules=forms.SCHEDULES,
                           class_weights=forms.CLASS_WEIGHTS)

    @app.get("/models/new", response_class=HTMLResponse)
    def new_model(dataset: str = ""):
        return render({**forms.form_defaults(), "dataset": dataset}, {})

    @app.post("/models/new", response_class=HTMLResponse)
    async def create_model_job(request: Request):
        form = {k: str(v) for k, v in (await request.form()).items()}
        try:
            spec = server.datasets.spec(form["dataset"]) if form.get("dataset") else None
            if spec is None and not form.get("yaml", "").strip():
                raise forms.FormErrors({"dataset": "choose a dataset (or paste a YAML config with data.spec)"})
            data = forms.config_from_form(form, spec)
            config = forms.validate_train(data, server.guard, server.check_spec)
        except forms.FormErrors as err:
            return render(form, err.errors, status=400)
        except EdgesegError as err:
            return render(form, {"": str(err)}, status=400)
        text = yaml.safe_dump(config.model_dump(mode="json", exclude={"runs_dir", "history"}), sort_keys=False)
        job = server.jobs.create("train", f"train {config.name} ({config.model.name})", {"config.yaml": text},
                                 dataset=form.get("dataset") or None)
        return RedirectResponse(f"/jobs/{job['id']}", status_code=303)

    @app.get("/api/architectures/{name}")
    def architecture(name: str, num_classes: int = 11, height: int = 192, width: int = 256):
        if name not in architectures():
            return {"error": f"unknown architecture '{name}'"}
        if not (1 <= num_classes <= 255 and 16 <= height <= 4096 and 16 <= width <= 4096):
            return {"error": "classes 1..255, height and width 16..4096"}
        return architecture_profile(name, num_classes, height, width)

    @app.get("/recipes/new", response_class=HTMLResponse)
    def new_recipe():
        return server.page("recipe_new.html", recipe="", errors={})

    @app.post("/recipes/new", response_class=HTMLResponse)
    async def create_recipe_job(request: Request):
        text = str((await request.form()).get("recipe", ""))
        try:
            raw = forms.validate_recipe(text, server.guard, server.check_spec)
        except forms.FormErrors as err:
            return server.page("recipe_new.html", status=400, recipe=text, errors=err.errors)
        raw.pop("out_dir", None)
        job = server.jobs.create("recipe", f"recipe {raw.get('name', 'pipeline')}",
                                 {"recipe.yaml": yaml.safe_dump(raw, sort_keys=False)})
        return RedirectResponse(f"/jobs/{job['id']}", status_code=303)
