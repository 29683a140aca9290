"""The Gradio web app: ``build_app()`` makes the Blocks, ``launch(host, port)`` serves them.

Tabs: "Restore" (one method, before/after slider, download), "Compare methods" (several methods on the same
input, PSNR/SSIM against a ground truth), "Models" (model cards and whether their weights are here).
"""

from __future__ import annotations

import os

from ..errors import RestoreKitError
from ..limits import LIMITS
from . import core

TITLE = "restorekit"


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise RestoreKitError("the web UI needs Gradio: pip install 'restorekit[ui]'") from None
    return gr


def _error(msg: str) -> str:
    return f"**Error:** {msg}"


def _degradation_widgets(gr, prefix: str):
    """Widgets of :class:`core.Degradation`, in its field order (returned as a list), and the ground-truth upload."""
    degrade = gr.Checkbox(True, label="Degrade the upload synthetically (the upload is then the ground truth)",
                          elem_id=f"{prefix}-degrade")
    with gr.Row():
        kernel = gr.Dropdown(["gaussian", "motion"], value="gaussian", label="Blur kernel (deblur)")
        kernel_std = gr.Number(0, label="Gaussian kernel std (0: DiffPIR's random 3(1+2U))", minimum=0)
    with gr.Row():
        scale = gr.Number(4, label="SR factor", precision=0, minimum=1, maximum=LIMITS["scale"]["hi"])
        sr_mode = gr.Dropdown(["bicubic", "blur", "realesrgan"], value="bicubic", label="SR degradation")
    with gr.Row():
        mask = gr.Dropdown(["random", "box", "half"], value="random", label="Inpainting mask")
        mask_prob = gr.Number(0.5, label="Fraction of pixels dropped (random mask)", minimum=0, maximum=0.999)
        box_size = gr.Number(128, label="Box side in px (box mask)", precision=0, minimum=1)
    noise = gr.Textbox("", label="Noise σ on [0,1] images", placeholder="empty: the task's default (0.05 deblur/sr)",
                       elem_id=f"{prefix}-noise")
    with gr.Accordion("Files for an upload that is already degraded", open=False):
        kernel_file = gr.File(label="Blur kernel (.npy or image)", type="filepath", height=90)
        mask_file = gr.File(label="Mask (white = known pixels)", type="filepath", height=90)
        ground_truth = gr.File(label="Ground truth (for PSNR/SSIM)", type="filepath", height=90,
                               elem_id=f"{prefix}-gt")
    return ([degrade, kernel, kernel_std, kernel_file, scale, sr_mode, mask, mask_prob, box_size, mask_file, noise],
            ground_truth)


def _make_degradation(degrade, kernel, kernel_std, kernel_file, scale, sr_mode, mask, mask_prob, box_size,
                      mask_file, noise) -> core.Degradation:
    return core.Degradation(degrade=bool(degrade), kernel=kernel or "gaussian",
                            kernel_std=float(kernel_std) if kernel_std and kernel_std > 0 else None,
                            kernel_file=kernel_file or None, scale=int(scale or 4), sr_mode=sr_mode or "bicubic",
                            mask=mask or "random", mask_prob=float(0.5 if mask_prob is None else mask_prob),
                            box_size=int(box_size or 128), mask_file=mask_file or None,
                            noise=_float_or_none(noise, "noise σ"))


def _float_or_none(v, what: str):
    """A text field holding an optional number: empty -> None."""
    if v is None or str(v).strip() == "":
        return None
    try:
        f = float(str(v).strip())
    except ValueError:
        raise RestoreKitError(f"{what}: expected a number, got {v!r}") from None
    import math

    if not math.isfinite(f):
        raise RestoreKitError(f"{what}: expected a finite number, got {v!r}")
    return f


def _int_or_none(v):
    """A number field where 0 or empty means "the default"."""
    if v in (None, "") or v == 0:
        return None
    if float(v) != int(v):
        raise RestoreKitError(f"expected a whole number, got {v}")
    return int(v)


def _scores(m: dict) -> str:
    """'PSNR | SSIM' table cells; a score that was not computed is a dash."""
    ps, ss = m.get("psnr"), m.get("ssim")
    return f"{'–' if ps is None else f'{ps:.2f}'} | {'–' if ss is None else f'{ss:.4f}'}"


def _algorithms(task: str) -> list[str]:
    from ..methods.classical.restorer import ALGORITHMS

    return list(ALGORITHMS.get(task, ()))


def build_app(device: str | None = None):
    """The Gradio Blocks of the web UI (not launched)."""
    gr = _gradio()
    from ..samplers import SAMPLER_NAMES

    # delete_cache: Gradio's copies of uploads and results older than a day are removed every hour
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown("# restorekit\nDiffPIR, DiffIR, DiffBIR and classical baselines. The bundled `*-demo` models "
                    "are tiny and **demo quality**; official weights give real results (see the Models tab).")
        with gr.Tabs():
            # ------------------------------------------------------------------------------ restore
            with gr.Tab("Restore", id="restore"):
                with gr.Row():
                    with gr.Column(scale=1):
                        upload = gr.File(label="Image (PNG / JPEG / TIFF / ...; gray, RGB, RGBA; 8 or 16 bit)",
                                         type="filepath", height=120, elem_id="rk-input")
                        preview = gr.Image(label="Upload", interactive=False, format="png", height=160,
                                           elem_id="rk-preview")
                        method = gr.Dropdown(list(core.METHODS), value="diffpir", label="Method",
                                             elem_id="rk-method")
                        task = gr.Dropdown(list(core.method_tasks("diffpir")), value="deblur", label="Task",
                                           elem_id="rk-task")
                        model = gr.Dropdown(core.model_choices("diffpir"), label="Model", elem_id="rk-model",
                                            value=core.default_model("diffpir", "deblur"))
                        weights = gr.Textbox("", label="Weights file or folder (optional: replaces the model)",
                                             elem_id="rk-weights")
                        allow_dl = gr.Checkbox(False, label="Allow downloads of missing weights")
                        with gr.Row():
                            steps = gr.Number(0, label="Steps (0: the method's default)", precision=0,
                                              minimum=0, maximum=LIMITS["steps"]["hi"], elem_id="rk-steps")
                            seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="rk-seed")
                        max_side = gr.Number(0, label="Downscale the upload to at most N px on its longer side "
                                                      "(0: keep its size)", precision=0, minimum=0,
                                             elem_id="rk-max-side")
                        with gr.Accordion("Degradation", open=True):
                            deg, ground_truth = _degradation_widgets(gr, "rk")
                        with gr.Accordion("DiffPIR options", open=False, visible=True) as acc_diffpir:
                            with gr.Row():
                                lam = gr.Textbox("", label="λ", placeholder="empty: the task's default")
                                zeta = gr.Textbox("", label="ζ", placeholder="empty: the task's default")
                        with gr.Accordion("DiffBIR options", open=False, visible=False) as acc_diffbir:
                            sampler = gr.Dropdown([""] + list(SAMPLER_NAMES), value="",
                                                  label="Sampler (empty: the version's default)")
                            cfg_scale = gr.Textbox("", label="CFG scale", placeholder="empty: the version's default")
                            tiled = gr.Checkbox(False, label="Tiled (large images in bounded memory)")
                        with gr.Accordion("Classical options", open=False, visible=False) as acc_classical:
                            algorithm = gr.Dropdown([""] + _algorithms("deblur"), value="",
                                                    label="Algorithm (empty: the task's default)")
                        run = gr.Button("Restore", variant="primary", elem_id="rk-run")
                    with gr.Column(scale=2):
                        status = gr.Markdown("Upload an image, pick a method and press Restore.",
                                             elem_id="rk-status")
                        slider = gr.ImageSlider(label="Before / after", type="pil", format="png",
                                                interactive=False, elem_id="rk-slider", max_height=640)
                        download = gr.File(label="Download the result", interactive=False, elem_id="rk-download")
                        metrics = gr.Markdown("", elem_id="rk-metrics")

            # ------------------------------------------------------------------------------ compare
            with gr.Tab("Compare methods", id="compare"):
                with gr.Row():
                    with gr.Column(scale=1):
                        c_upload = gr.File(label="Image", type="filepath", height=120, elem_id="rk-c-input")
                        c_methods = gr.CheckboxGroup(list(core.METHODS), value=["diffpir", "classical"],
                                                     label="Methods (each with its default model for the task)",
                                                     elem_id="rk-c-methods")
                        c_task = gr.Dropdown(["deblur", "sr", "inpaint", "denoise"], value="deblur", label="Task",
                                             elem_id="rk-c-task")
                        with gr.Row():
                            c_steps = gr.Number(0, label="Steps (0: each method's default)", precision=0,
                                                minimum=0, maximum=LIMITS["steps"]["hi"],
                                                elem_id="rk-c-steps")
                            c_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                        c_max_side = gr.Number(0, label="Downscale the upload to at most N px (0: keep)",
                                               precision=0, minimum=0, elem_id="rk-c-max-side")
                        with gr.Accordion("Degradation", open=True):
                            c_deg, c_gt = _degradation_widgets(gr, "rk-c")
                        c_run = gr.Button("Compare", variant="primary", elem_id="rk-c-run")
                    with gr.Column(scale=2):
                        c_status = gr.Markdown("Pick two or more methods.", elem_id="rk-c-status")
                        c_gallery = gr.Gallery(label="Results", columns=3, format="png", elem_id="rk-c-gallery")
                        c_table = gr.Markdown("", elem_id="rk-c-table")

            # ------------------------------------------------------------------------------ models
            with gr.Tab("Models", id="models"):
                models_md = gr.Markdown(core.models_markdown(), elem_id="rk-models")
                refresh = gr.Button("Refresh")

        # ---------------------------------------------------------------------------------- events
        def on_upload(path):
            if not path:
                return None, "Upload an image, pick a method and press Restore."
            try:
                x, info = core.load_input(path)
            except Exception as e:  # noqa: BLE001 - shown on the page
                return None, _error(core.friendly_error(e))
            kind = {1: "gray", 2: "gray + alpha", 3: "RGB", 4: "RGBA"}.get(info.channels, "")
            return core.to_pil(x), (f"Loaded `{os.path.basename(path)}`: {x.shape[-1]}x{x.shape[-2]} {kind}, "
                                    f"{info.bit_depth}-bit.")

        upload.change(on_upload, [upload], [preview, status])

        def on_method(m, t):
            tasks = list(core.method_tasks(m))
            t = t if t in tasks else tasks[0]
            return (gr.update(choices=tasks, value=t),
                    gr.update(choices=core.model_choices(m), value=core.default_model(m, t)),
                    gr.update(visible=m == "diffpir"), gr.update(visible=m == "diffbir"),
                    gr.update(visible=m == "classical"),
                    gr.update(choices=[""] + _algorithms(t), value=""))

        method.change(on_method, [method, task], [task, model, acc_diffpir, acc_diffbir, acc_classical, algorithm])

        def on_task(m, t):
            if t not in core.method_tasks(m):
                return gr.update(), gr.update()
            return (gr.update(value=core.default_model(m, t)),
                    gr.update(choices=[""] + _algorithms(t), value=""))

        task.input(on_task, [method, task], [model, algorithm])

        def on_run(path, m, t, mdl, wpath, allow, n_steps, s, side, *rest, progress=gr.Progress()):
            d_args, (gt, lam_v, zeta_v, samp, cfg_v, tiled_v, algo) = rest[:11], rest[11:]
            try:
                d = _make_degradation(*d_args)
                chosen = wpath.strip() if wpath and wpath.strip() else mdl
                opts = {"lambda_": _float_or_none(lam_v, "λ"), "zeta": _float_or_none(zeta_v, "ζ"), "sampler": samp,
                        "cfg_scale": _float_or_none(cfg_v, "CFG scale"),
                        "tiled": bool(tiled_v) or None, "algorithm": algo}
                progress(0, desc="loading the model")
                o = core.restore(path, m, t, chosen, steps=_int_or_none(n_steps), seed=_int_or_none(s) or 0,
                                 degradation=d, options=opts, max_side=_int_or_none(side), ground_truth=gt,
                                 device=device, download=bool(allow),
                                 progress=lambda i, n: progress((i, n), desc=f"{m} {t}", unit="steps"))
            except Exception as e:  # noqa: BLE001 - shown on the page
                return _error(core.friendly_error(e)), None, None, ""
            h, w = o.result.shape[-2:]
            msg = (f"Restored with **{o.method}** (model `{o.model}`, task {o.task}"
                   f"{'' if not n_steps else f', {int(n_steps)} steps'}, seed {int(s or 0)}) "
                   f"in {o.seconds:.1f} s: {w}x{h}.")
            if o.notes:
                msg += "\n\n" + "\n".join(f"- {n}" for n in o.notes)
            return msg, (core.to_pil(o.before), core.to_pil(o.result)), str(o.output_path), core.metrics_markdown(o)

        run.click(on_run, [upload, method, task, model, weights, allow_dl, steps, seed, max_side, *deg, ground_truth,
                           lam, zeta, sampler, cfg_scale, tiled, algorithm], [status, slider, download, metrics],
                  concurrency_limit=1)

        def on_compare(path, methods, t, n_steps, s, side, *rest, progress=gr.Progress()):
            d_args, gt = rest[:11], rest[11]
            try:
                methods = [m for m in core.METHODS if m in (methods or [])]
                if len(methods) < 1:
                    raise RestoreKitError("pick at least one method (two or more to compare)")
                d = _make_degradation(*d_args)
                steps_v, seed_v = _int_or_none(n_steps), _int_or_none(s) or 0
                x, _ = core.load_input(path, _int_or_none(side))
                prepared = None
                if d.degrade:  # one observation for every method
                    noise = d.noise if d.noise is not None else (0.0 if t == "inpaint" else 12.75 / 255)
                    prepared = core.observe(x, t, d, seed_v, noise, blind=False)
            except Exception as e:  # noqa: BLE001
                return _error(core.friendly_error(e)), None, ""
            gallery, rows, errors = [], [], []
            has_ref = d.degrade or bool(gt)
            for k, m in enumerate(methods):
                progress((k, len(methods)), desc=f"{m} ({k + 1} of {len(methods)})", unit="methods")
                try:
                    from ..registry import get_method

                    if t not in get_method(m).tasks:
                        raise RestoreKitError(f"{m} does not do task {t!r}")
                    o = core.restore(path, m, t, core.default_model(m, t), steps=steps_v, seed=seed_v,
                                     degradation=d, max_side=_int_or_none(side), ground_truth=gt, device=device,
                                     prepared=prepared)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"- **{m}**: {core.friendly_error(e)}")
                    rows.append(f"| {m} | – | – | – | failed |")
                    continue
                if not gallery:
                    gallery.append((core.to_pil(o.before), "input" if not d.degrade else
                                    ("degraded (bicubic)" if t == "sr" else "degraded")))
                    if has_ref and o.metrics_before:
                        rows.append(f"| {'bicubic' if t == 'sr' else 'degraded input'} | "
                                    f"{_scores(o.metrics_before)} | – | |")
                gallery.append((core.to_pil(o.result), f"{m} ({o.model})"))
                rows.append(f"| {m} (`{o.model}`) | {_scores(o.metrics_after)} | {o.seconds:.1f} | "
                            f"{'demo model' if o.demo else ''} |")
            table = "| method | PSNR (dB) | SSIM | time (s) | note |\n|---|---|---|---|---|\n" + "\n".join(rows)
            if not has_ref:
                table += "\n\nNo ground truth: tick 'degrade' or upload a ground truth for PSNR/SSIM."
            done = len(methods) - len(errors)
            msg = f"{done} of {len(methods)} methods finished."
            if errors:
                msg += "\n\n" + "\n".join(errors)
            return msg, gallery or None, table

        c_run.click(on_compare, [c_upload, c_methods, c_task, c_steps, c_seed, c_max_side, *c_deg, c_gt],
                    [c_status, c_gallery, c_table], concurrency_limit=1)

        refresh.click(lambda: core.models_markdown(), None, [models_md])
        demo.load(lambda: (core.models_markdown(), gr.update(choices=core.model_choices("diffpir"))), None,
                  [models_md, model])

    return demo


def launch(host: str = "127.0.0.1", port: int = 7860, device: str | None = None, block: bool = True, **kwargs):
    """Serve the app on ``host:port`` (no share link); ``block=False`` returns the running Blocks."""
    demo = build_app(device=device)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                prevent_thread_lock=not block, show_error=True, quiet=not block, **kwargs)
    return demo
