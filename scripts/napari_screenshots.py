"""Makes the screenshots of docs/napari.md: the bundled fluorescence sample segmented from the
"Segment nuclei" widget, headless (QT_QPA_PLATFORM=offscreen).

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/napari_screenshots.py
"""

import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import napari  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from unetseg.napari import _io  # noqa: E402
from unetseg.napari._widget import SegmentWidget  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def main() -> None:
    viewer = napari.Viewer(show=False)
    viewer.window._qt_window.resize(1300, 850)
    data, meta, _ = _io.sample_fluorescence()[0]
    layer = viewer.add_image(data, **meta)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment nuclei", area="right")
    widget.image.value = layer
    widget.run()
    while not widget.run_button.enabled:  # the worker thread reports back through Qt's event loop
        QApplication.processEvents()
    labels = viewer.layers[f"{layer.name} nuclei"]
    labels.contour = 2
    viewer.window._qt_window.show()
    QApplication.processEvents()
    OUT.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(OUT / "napari_widget.png"), canvas_only=False)
    # The offscreen platform has no OpenGL canvas (it renders black): the labels' picture is drawn
    # from the layers' data instead, as napari shows them (outlines over the image).
    from unetseg.io import overlay, write_image

    write_image(OUT / "napari_labels.png", overlay(layer.data, labels.data))
    print(f"{widget.status.value}; wrote {OUT / 'napari_widget.png'} and {OUT / 'napari_labels.png'}")
    viewer.close()


if __name__ == "__main__":
    main()
