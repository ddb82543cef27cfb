"""The "Segment nuclei" and "Segment slide" dock widgets.

Segmentation runs in a worker thread (``napari.qt.threading``), plane by plane, so the viewer never
freezes; the progress bar counts planes and Cancel stops after the current one. The result is a
Labels layer named after the image, scaled and translated like it, whose ``features`` table is the
object table (napari's layer-features tools show it); running again updates that layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ..ops import LABELLING_CHOICES
from ._io import _features


def _planes(data: np.ndarray, rgb: bool) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """The leading (stack) shape of an image layer's data and the index of every 2-D plane in it: a
    z or time stack is segmented plane by plane (RGB(A) layers keep their last axis as colour)."""
    lead = data.shape[: data.ndim - (3 if rgb else 2)]
    return lead, [tuple(i) for i in np.ndindex(*lead)] if lead else [()]


class SegmentWidget(Container):
    """Segment nuclei in an image layer with a unetseg model (the bundled one by default)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self._runners: dict = {}
        self.image = ComboBox(label="image", choices=self._image_layers)
        self.model = FileEdit(label="model (empty: bundled)", mode="r", filter="*.pt", nullable=True)
        self.channel = SpinBox(
            label="nuclear channel",
            value=-1,
            min=-1,
            max=63,
            tooltip="RGB(A) layers: the channel holding the nuclei (-1: the whole colour image)",
        )
        self.auto_diameter = CheckBox(text="estimate nucleus diameter", value=True)
        self.diameter = FloatSpinBox(label="diameter (px)", value=20.0, min=1.0, max=2000.0, step=1.0)
        self.labelling = ComboBox(label="labelling", choices=list(LABELLING_CHOICES), value="auto")
        self.model_defaults = CheckBox(text="model's thresholds and min area", value=True)
        self.threshold = FloatSpinBox(label="threshold", value=0.5, min=0.0, max=1.0, step=0.05)
        self.boundary_threshold = FloatSpinBox(label="boundary threshold", value=0.5, min=0.0, max=1.0, step=0.05)
        # pixels at the model's canonical diameter (the runner scales it to each image's nuclei)
        self.min_area = SpinBox(label="min area (px at model scale)", value=40, min=0, max=100000)
        self.precision = ComboBox(label="precision", choices=["auto", "float32", "bfloat16"], value="auto")
        self.tta = CheckBox(text="test-time augmentation (8x slower)", value=False)
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="")
        self.extend(
            [
                self.image,
                self.model,
                self.channel,
                self.auto_diameter,
                self.diameter,
                self.labelling,
                self.model_defaults,
                self.threshold,
                self.boundary_threshold,
                self.min_area,
                self.precision,
                self.tta,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
            ]
        )
        self.auto_diameter.changed.connect(lambda v: setattr(self.diameter, "enabled", not v))
        self.diameter.enabled = False
        for w in (self.threshold, self.boundary_threshold, self.min_area):
            w.enabled = False
        self.model_defaults.changed.connect(
            lambda v: [setattr(w, "enabled", not v) for w in (self.threshold, self.boundary_threshold, self.min_area)]
        )
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(lambda e: self.image.reset_choices())
        self.viewer.layers.events.removed.connect(lambda e: self.image.reset_choices())

    def _image_layers(self, _widget=None) -> list:
        import napari

        return [layer for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)]

    def runner(self):
        """The Runner of the chosen model and precision (loaded once, reused)."""
        from ..segment import Runner

        model = str(self.model.value) if self.model.value not in (None, Path("."), Path("")) else None
        key = (model, self.precision.value)
        if key not in self._runners:
            self._runners[key] = Runner(model, precision=self.precision.value)
        return self._runners[key]

    def options(self) -> dict:
        options = {
            "labelling": self.labelling.value,
            "tta": self.tta.value,
            "diameter": "auto" if self.auto_diameter.value else float(self.diameter.value),
        }
        if not self.model_defaults.value:
            options.update(
                threshold=self.threshold.value,
                boundary_threshold=self.boundary_threshold.value,
                min_area=int(self.min_area.value),
            )
        if self.channel.value >= 0:
            options["channel"] = int(self.channel.value)
        return options

    def run(self, _=None):
        """Starts segmenting the chosen layer in a worker thread."""
        from napari.qt.threading import thread_worker
        from napari.utils.notifications import show_error

        layer = self.image.value
        if layer is None:
            show_error("unetseg: open an image first (File > Open Sample > unetseg for one)")
            return
        try:
            runner, options = self.runner(), self.options()
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            show_error(f"unetseg: {e}")
            return
        data = np.asarray(layer.data)
        lead, planes = _planes(data, layer.rgb)

        @thread_worker(progress={"total": len(planes)})
        def work():
            results = []
            for i, index in enumerate(planes):
                results.append(runner.segment([data[index]], **options)[0])
                yield i + 1
            return results

        self.worker = work()
        self.progress.max, self.progress.value = len(planes), 0
        self.status.value = f"segmenting {layer.name}: {len(planes)} plane(s)"
        self.worker.yielded.connect(lambda done: setattr(self.progress, "value", done))
        self.worker.returned.connect(lambda results: self._show(layer, lead, planes, results))
        self.worker.errored.connect(lambda e: show_error(f"unetseg: {e}"))
        self.worker.finished.connect(self._finished)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.worker.start()

    def cancel(self, _=None):
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "cancelled"

    def _finished(self):
        self.run_button.enabled, self.cancel_button.enabled = True, False

    def _show(self, layer, lead, planes, results):
        """The Labels layer of `layer`'s segmentation (added, or updated when it exists)."""
        import pandas as pd

        shape = results[0].labels.shape
        labels = np.zeros((*lead, *shape), np.int32)
        tables = []
        for index, seg in zip(planes, results):
            labels[index] = seg.labels
            table = seg.objects.to_pandas()
            if lead:
                table.insert(0, "plane", np.ravel_multi_index(index, lead))
            tables.append(table)
        features = _features(pd.concat(tables, ignore_index=True)) if lead == () else pd.concat(tables)
        name = f"{layer.name} nuclei"
        scale, translate = layer.scale[: labels.ndim], layer.translate[: labels.ndim]
        if name in self.viewer.layers:
            target = self.viewer.layers[name]
            target.data, target.features = labels, features
            target.scale, target.translate = scale, translate
        else:
            self.viewer.add_labels(labels, name=name, features=features, scale=scale, translate=translate)
        count = sum(r.count for r in results)
        diameters = sorted({round(r.diameter, 1) for r in results})
        self.status.value = f"{count} nuclei in {layer.name}" + (
            f" (diameter {', '.join(map(str, diameters))} px)" if diameters != [0.0] else ""
        )


class SlideWidget(Container):
    """Segment a whole slide file into a folder (streamed, memory flat), then open its labels lazily
    over the slide."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.slide = FileEdit(label="slide", mode="r")
        self.output = FileEdit(label="output folder", mode="d")
        self.resume = CheckBox(text="resume an interrupted run", value=False)
        self.run_button = PushButton(text="Segment slide")
        self.status = Label(value="")
        self.extend([self.slide, self.output, self.resume, self.run_button, self.status])
        self.run_button.changed.connect(self.run)

    def run(self, _=None):
        from napari.qt.threading import thread_worker
        from napari.utils.notifications import show_error

        from ..slide import segment_slide
        from ._io import _read_slide_output

        slide, output = Path(self.slide.value), Path(self.output.value)

        @thread_worker
        def work():
            return segment_slide(slide, output, resume=self.resume.value, progress=True)

        def opened(result):
            self.status.value = f"{result.count} nuclei; outputs in {output}"
            if not any(layer.name == slide.stem for layer in self.viewer.layers):
                from ..slide.readers import open_slide, thumbnail_step

                with open_slide(slide) as reader:  # a subsample under the labels, at the slide's scale
                    step = thumbnail_step(*reader.shape)
                    self.viewer.add_image(
                        reader.thumbnail(), name=slide.stem, scale=(step, step), rgb=reader.channels == 3
                    )
            for data, meta, _ in _read_slide_output(output):
                self.viewer.add_labels(data, **meta)

        self.worker = work()
        self.worker.returned.connect(opened)
        self.worker.errored.connect(lambda e: show_error(f"unetseg: {e}"))
        self.status.value = f"segmenting {slide.name} (progress in the terminal)"
        self.worker.start()
